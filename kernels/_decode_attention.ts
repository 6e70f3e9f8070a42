/**
 * The one-query decode attention shell shared by the packed-cache kernels (`kv_attention.ts`:
 * KIVI, `kvquant_attention.ts`: KVQuant): one workgroup of 256 threads per query head; each
 * thread scores one key of a 256-key tile, the tile's softmax is folded into a running max/sum
 * (online softmax), and `L = ⌊256 / headDim⌋` lanes of `headDim` threads accumulate the weighted
 * values, summed at the end. A kernel supplies only what reads its cache: its uniforms (after the
 * shared `nH, nKV, pos` and before `scale`), bindings 2..6, helper functions, per-thread setup,
 * the code that leaves key `s`'s dot product with `qs` in `dot`, and the code that leaves token
 * `sj`'s value at channel `cv` in `val`.
 * @module
 */
import { reduceWGSL } from "./_reduce.ts";

/** What a packed-cache kernel plugs into {@linkcode decodeAttentionWGSL} (WGSL fragments). */
export interface DecodeAttentionParts {
  /** Uniform fields between `nH, nKV, pos` and `scale` (WGSL, each followed by a comma). */
  uniforms: string;
  /** `@group(0) @binding(2..6)` declarations, one per line. */
  bindings: string;
  /** WGSL functions placed before `main` (each followed by a blank line), or "". */
  functions: string;
  /** Per-thread setup lines after `per`/`msk` (the V channel `cv = c0 + d` is declared here). */
  setup: string;
  /** Body for a visible key `s`: ends with the dot product of `qs` and key `s` in `dot`. */
  key: string;
  /** Body for token `sj`: assigns its value at channel `cv` to `val`. */
  value: string;
}

/** WGSL of a decode attention for head dimension `headDim` (see the module doc); `name` for errors. */
export function decodeAttentionWGSL(
  name: string,
  opts: { headDim: number } & DecodeAttentionParts,
): string {
  const HD = opts.headDim;
  if (!Number.isInteger(HD) || HD < 1 || HD > 256) {
    throw new Error(`${name}: headDim ${HD} must be an integer in 1..256`);
  }
  const L = Math.floor(256 / HD);
  const k = opts;
  return `
struct P {
  nH: u32, nKV: u32, pos: u32, ${k.uniforms} scale: f32,
};
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> Q: array<f32>;
${k.bindings}
@group(0) @binding(7) var<storage, read_write> O: array<f32>;
var<workgroup> qs: array<f32, ${HD}>;
var<workgroup> prob: array<f32, 256>;
var<workgroup> lane: array<f32, ${L * HD}>;
${reduceWGSL()}

${k.functions}@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let h = wid.x;
  if (h >= p.nH) { return; }
  let tid = lid.x;
  let kw = p.nKV * ${HD}u;
  let c0 = (h / (p.nH / p.nKV)) * ${HD}u;
  let nvis = p.pos + 1u;
  for (var i = tid; i < ${HD}u; i = i + 256u) { qs[i] = Q[h * ${HD}u + i]; }
  workgroupBarrier();
  let ln = tid / ${HD}u;
  let d = tid % ${HD}u;
  let per = 32u / p.bits;
  let msk = (1u << p.bits) - 1u;
${k.setup}
  var mrun = -3.0e38;
  var lrun = 0.0;
  var acc = 0.0;
  for (var b = 0u; b < nvis; b = b + 256u) {
    let s = b + tid;
    var score = -3.0e38;
    if (s < nvis) {
${k.key}
      score = dot * p.scale;
    }
    let mnew = max(mrun, wg_max(score, tid));
    var e = 0.0;
    if (s < nvis) { e = exp(score - mnew); }
    prob[tid] = e;
    let alpha = exp(mrun - mnew);
    lrun = lrun * alpha + wg_sum(e, tid);
    mrun = mnew;
    acc = acc * alpha;
    if (ln < ${L}u) {
      let nb = min(256u, nvis - b);
      for (var j = ln; j < nb; j = j + ${L}u) {
        let sj = b + j;
        var val = 0.0;
${k.value}
        acc = acc + prob[j] * val;
      }
    }
    workgroupBarrier();
  }
  if (ln < ${L}u) { lane[tid] = acc; }
  workgroupBarrier();
  for (var i = tid; i < ${HD}u; i = i + 256u) {
    var tot = 0.0;
    for (var l = 0u; l < ${L}u; l = l + 1u) { tot = tot + lane[l * ${HD}u + i]; }
    O[h * ${HD}u + i] = tot / lrun;
  }
}
`;
}
