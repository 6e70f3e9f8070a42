/**
 * Causal attention of T new queries over a KV cache, with grouped-query heads:
 * q [T, nH, hd], k/v cache [S, nKV, hd] (the new tokens' keys already written at positions
 * posOffset..posOffset+T−1), output [T, nH, hd]. Query t sits at position posOffset + t and sees
 * keys 0..posOffset+t; head h reads KV head `floor(h / (nH / nKV))`. With `B` > 1 sequences
 * (a calibration batch, no cache), q/o are [B, T, nH, hd] and k/v [B, S, nKV, hd]: sequence b's
 * queries see only its own keys.
 *
 * One workgroup (256 threads) per (t, h), streaming the visible keys in blocks of 256 with an
 * online softmax (flash-attention style, no scratch): each thread scores one key of the block,
 * the block's max and sum are workgroup reductions, and `floor(256 / hd)` groups of `hd` threads
 * accumulate `p · V` with a rescale by `exp(m_old − m_new)`; the groups are summed at the end.
 * hd must be a multiple of 4 and at most 256 (compile-time constant).
 *
 * Binding layout: 0 = uniforms {T, S, nH, nKV, posOffset, scale (f32), B (0 = 1)}, 1 = Q,
 * 2 = K, 3 = V, 4 = O. Dispatch: B·T·nH workgroups as an (x, y) grid.
 * @module
 */
import { reduceWGSL } from "./_reduce.ts";

/** WGSL of the attention kernel for head dimension `headDim`. */
export function attentionWGSL(opts: { headDim: number }): string {
  const HD = opts.headDim;
  if (HD % 4 !== 0 || HD > 256 || HD < 4) {
    throw new Error(`attentionWGSL: headDim ${HD} must be a multiple of 4 in 4..256`);
  }
  const G = Math.floor(256 / HD);
  const H4 = HD / 4;
  return `
struct P { T: u32, S: u32, nH: u32, nKV: u32, pos0: u32, scale: f32, B: u32, p1: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> K: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> V: array<f32>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;
var<workgroup> qs: array<vec4<f32>, ${H4}>;
var<workgroup> sc: array<f32, 256>;
var<workgroup> part: array<f32, ${G * HD}>;
${reduceWGSL()}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let id = wid.x + wid.y * nwg.x;
  if (id >= max(p.B, 1u) * p.T * p.nH) { return; }
  let tid = lid.x;
  let seq = id / (p.T * p.nH);
  let t = (id % (p.T * p.nH)) / p.nH;
  let h = id % p.nH;
  let kv0 = seq * p.S;
  let kvh = h / (p.nH / p.nKV);
  let svis = min(p.S, p.pos0 + t + 1u);
  if (tid < ${H4}u) { qs[tid] = Q[id * ${H4}u + tid]; }
  workgroupBarrier();
  let g = tid / ${HD}u;
  let d = tid % ${HD}u;
  var mrun = -3.0e38;
  var lrun = 0.0;
  var acc = 0.0;
  for (var b = 0u; b < svis; b = b + 256u) {
    let s = b + tid;
    var score = -3.0e38;
    if (s < svis) {
      let kb = ((kv0 + s) * p.nKV + kvh) * ${H4}u;
      var dd = vec4<f32>(0.0);
      for (var i = 0u; i < ${H4}u; i = i + 1u) { dd = fma(qs[i], K[kb + i], dd); }
      score = (dd.x + dd.y + dd.z + dd.w) * p.scale;
    }
    let mnew = max(mrun, wg_max(score, tid));
    var pr = 0.0;
    if (s < svis) { pr = exp(score - mnew); }
    sc[tid] = pr;
    let alpha = exp(mrun - mnew);
    lrun = lrun * alpha + wg_sum(pr, tid);
    mrun = mnew;
    acc = acc * alpha;
    if (g < ${G}u) {
      let nb = min(256u, svis - b);
      for (var j = g; j < nb; j = j + ${G}u) {
        acc = fma(sc[j], V[((kv0 + b + j) * p.nKV + kvh) * ${HD}u + d], acc);
      }
    }
    workgroupBarrier();
  }
  if (g < ${G}u) { part[tid] = acc; }
  workgroupBarrier();
  if (tid < ${HD}u) {
    var tot = 0.0;
    for (var i = 0u; i < ${G}u; i = i + 1u) { tot = tot + part[i * ${HD}u + tid]; }
    O[id * ${HD}u + tid] = tot / lrun;
  }
}
`;
}

/** Options of {@linkcode attentionRef}. */
export interface AttentionOptions {
  /** New query tokens. */
  T: number;
  /** Cache length (keys/values present). */
  S: number;
  /** Query heads. */
  nH: number;
  /** KV heads (divides nH). */
  nKV: number;
  /** Head dimension. */
  headDim: number;
  /** Absolute position of query 0. */
  posOffset: number;
  /** Score scale (default 1/sqrt(headDim)). */
  scale?: number;
  /** Independent sequences (default 1): q/o [B, T, nH, hd], k/v [B, S, nKV, hd]. */
  batch?: number;
}

/** CPU reference of causal GQA attention over the cache (float64). */
export function attentionRef(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  o: AttentionOptions,
): Float32Array {
  const { T, S, nH, nKV, headDim: hd, posOffset } = o;
  const B = o.batch ?? 1;
  if (B > 1) {
    const out = new Float32Array(B * T * nH * hd);
    const qn = T * nH * hd, kn = S * nKV * hd;
    for (let b = 0; b < B; b++) {
      const part = attentionRef(
        q.subarray(b * qn, (b + 1) * qn),
        k.subarray(b * kn, (b + 1) * kn),
        v.subarray(b * kn, (b + 1) * kn),
        { ...o, batch: 1 },
      );
      out.set(part, b * qn);
    }
    return out;
  }
  const scale = o.scale ?? 1 / Math.sqrt(hd);
  const out = new Float32Array(T * nH * hd);
  const rep = nH / nKV;
  for (let t = 0; t < T; t++) {
    const svis = Math.min(S, posOffset + t + 1);
    for (let h = 0; h < nH; h++) {
      const kvh = Math.floor(h / rep);
      const qb = (t * nH + h) * hd;
      const sc = new Float64Array(svis);
      let m = -Infinity;
      for (let s = 0; s < svis; s++) {
        let d = 0;
        for (let i = 0; i < hd; i++) d += q[qb + i] * k[(s * nKV + kvh) * hd + i];
        sc[s] = d * scale;
        m = Math.max(m, sc[s]);
      }
      let sum = 0;
      for (let s = 0; s < svis; s++) sum += sc[s] = Math.exp(sc[s] - m);
      for (let i = 0; i < hd; i++) {
        let a = 0;
        for (let s = 0; s < svis; s++) a += sc[s] * v[(s * nKV + kvh) * hd + i];
        out[qb + i] = a / sum;
      }
    }
  }
  return out;
}
