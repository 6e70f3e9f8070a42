/**
 * Decode-time attention over a KVQuant-packed KV cache: one query token per head (grouped-query
 * heads), keys and values dequantized as they are read — no f32 copy of the cache.
 *
 * The cache is the layout of `src/quant/kv/kvquant.ts` (Hooper et al. 2024): each quantized token
 * holds `bits`-bit codebook indices for its K row and its V row (`⌊32 / bits⌋` codes per u32 word
 * from bit 0 upwards, `wpr = ⌈kw / ⌊32/bits⌋⌉` words per row, `kw = nKV · hd`), V's per-token
 * offset and range, and a sorted list of sparse full-precision outliers (K's then V's). With
 * `nc = 2^bits`:
 *
 * - key s, channel c (s ≥ nraw): `code = (tok[s·ts + ⌊c/per⌋] >> (c mod per)·bits) & (nc − 1)`,
 *   `k = kLut[code (+ c·nc per channel)] · kRng[c] + kOff[c]` (per-channel static normalization;
 *   `kLut` the non-uniform k-means codebook); then the token's K outliers overwrite their channels;
 *   then, when `rotate` (keys stored before RoPE), the head's K is rotated at position s
 *   (rotate-half, `rope[s][i] = (cos, sin)` as the host rounds them);
 * - value s, channel c: `v = vLut[code] · vRng_s + vOff_s` from the V words, unless the token's V
 *   outliers hold channel c (binary search in the sorted list);
 * - tokens s < nraw (the `first_few_fp16` attention sinks) come unquantized from `raw`.
 *
 * Binding layout: 0 = uniforms {nH, nKV, pos, nraw, bits, wpr, nc, perCh, rotate, scale (f32)},
 * 1 = Q [nH, hd], 2 = tok (u32, `ts = 2·wpr + 4` words per token: K words, V words, vOff and vRng
 * as f32 bits, the token's first outlier entry, `kN | vN << 16`), 3 = sp (u32 pairs: channel,
 * f32 bits of the value), 4 = par (f32: kOff [kw], kRng [kw], vLut [nc], kLut [nc or kw·nc]),
 * 5 = raw (f32 [first-few rows, 2·kw]: K then V), 6 = rope (f32 [positions, hd/2, 2]),
 * 7 = O [nH, hd] (seven storage buffers, within WebGPU's default eight per stage).
 * Dispatch: nH workgroups of 256 threads; hd (1..256, even when rotating) is a compile-time
 * constant.
 *
 * One workgroup per query head streams the visible keys in blocks of 256 with an online softmax,
 * as `kv_attention.ts` does: each thread dequantizes, patches, rotates and scores one key, and
 * `⌊256 / hd⌋` lanes of `hd` threads accumulate `p · V`.
 *
 * {@linkcode kvquantAttentionRef} is the CPU reference: it decodes every token into f32 K/V with
 * its own bit extraction (by division) and a linear outlier scan, rotates in float64 and rounds
 * to f32 (as the host's `applyRope` stores it), then runs max-subtracted softmax attention in
 * float64.
 * @module
 */
import { decodeAttentionWGSL } from "./_decode_attention.ts";

/** WGSL of the KVQuant decode attention for head dimension `headDim`. */
export function kvquantAttentionWGSL(opts: { headDim: number }): string {
  const HD = opts.headDim;
  const HALF = Math.floor(HD / 2);
  return decodeAttentionWGSL("kvquantAttentionWGSL", {
    headDim: HD,
    uniforms: `nraw: u32, bits: u32, wpr: u32, nc: u32, perCh: u32,
  rotate: u32,`,
    bindings: `@group(0) @binding(2) var<storage, read> tok: array<u32>;
@group(0) @binding(3) var<storage, read> sp: array<u32>;
@group(0) @binding(4) var<storage, read> par: array<f32>;
@group(0) @binding(5) var<storage, read> raw: array<f32>;
@group(0) @binding(6) var<storage, read> rope: array<f32>;`,
    functions: `// First outlier entry in [a, b) whose channel is >= c (entries sorted by channel).
fn lower_bound(a: u32, b: u32, c: u32) -> u32 {
  var lo = a;
  var hi = b;
  loop {
    if (lo >= hi) { break; }
    let mid = (lo + hi) / 2u;
    if (sp[2u * mid] < c) { lo = mid + 1u; } else { hi = mid; }
  }
  return lo;
}

`,
    setup: `  let ts = 2u * p.wpr + 4u;
  let vLut0 = 2u * kw;
  let kLut0 = 2u * kw + p.nc;
  // This thread's V channel: its word and shift are the same for every token.
  let cv = c0 + d;
  let vw = p.wpr + cv / per;
  let vsh = (cv % per) * p.bits;`,
    key: `      var kk: array<f32, ${HD}>;
      if (s < p.nraw) {
        let r = s * 2u * kw + c0;
        for (var i = 0u; i < ${HD}u; i = i + 1u) { kk[i] = raw[r + i]; }
      } else {
        let base = s * ts;
        for (var i = 0u; i < ${HD}u; i = i + 1u) {
          let c = c0 + i;
          let code = (tok[base + c / per] >> ((c % per) * p.bits)) & msk;
          var li = kLut0 + code;
          if (p.perCh == 1u) { li = li + c * p.nc; }
          kk[i] = par[li] * par[kw + c] + par[c];
        }
        let st = tok[base + 2u * p.wpr + 2u];
        let kend = st + (tok[base + 2u * p.wpr + 3u] & 0xffffu);
        var j = lower_bound(st, kend, c0);
        loop {
          if (j >= kend) { break; }
          let ch = sp[2u * j];
          if (ch >= c0 + ${HD}u) { break; }
          kk[ch - c0] = bitcast<f32>(sp[2u * j + 1u]);
          j = j + 1u;
        }
      }
      var dot = 0.0;
      if (p.rotate == 1u) {
        let rb = s * ${2 * HALF}u;
        for (var i = 0u; i < ${HALF}u; i = i + 1u) {
          let cs = rope[rb + 2u * i];
          let sn = rope[rb + 2u * i + 1u];
          let x1 = kk[i];
          let x2 = kk[i + ${HALF}u];
          dot = dot + qs[i] * (x1 * cs - x2 * sn) + qs[i + ${HALF}u] * (x2 * cs + x1 * sn);
        }
      } else {
        for (var i = 0u; i < ${HD}u; i = i + 1u) { dot = dot + qs[i] * kk[i]; }
      }`,
    value: `        if (sj < p.nraw) {
          val = raw[sj * 2u * kw + kw + cv];
        } else {
          let base = sj * ts;
          let code = (tok[base + vw] >> vsh) & msk;
          let vOff = bitcast<f32>(tok[base + 2u * p.wpr]);
          let vRng = bitcast<f32>(tok[base + 2u * p.wpr + 1u]);
          val = par[vLut0 + code] * vRng + vOff;
          let cnt = tok[base + 2u * p.wpr + 3u];
          let a = tok[base + 2u * p.wpr + 2u] + (cnt & 0xffffu);
          let e2 = a + (cnt >> 16u);
          let o = lower_bound(a, e2, cv);
          if (o < e2 && sp[2u * o] == cv) { val = bitcast<f32>(sp[2u * o + 1u]); }
        }`,
  });
}

/** Shape and state of one KVQuant attention call (see the module doc for the layout). */
export interface KvQuantAttentionOptions {
  /** Query heads. */
  nH: number;
  /** KV heads (divides nH). */
  nKV: number;
  /** Head dimension. */
  headDim: number;
  /** Position of the query; it sees tokens 0..pos. */
  pos: number;
  /** Tokens [0, nraw) are unquantized rows of `raw` (the first-few tokens held so far). */
  nraw: number;
  /** Bits per code, 2..5 (KVQuant's). */
  bits: number;
  /** One key codebook per channel (else one for the layer). */
  perChannel: boolean;
  /** Keys are stored before RoPE: rotate after dequantizing (needs the rope table). */
  rotate: boolean;
  /** Score scale (default 1/sqrt(headDim)). */
  scale?: number;
}

/** The cache of one layer in the kernel's layout (see the module doc). */
export interface KvQuantAttentionCache {
  /** Per-token words: K codes, V codes, vOff, vRng (f32 bits), first outlier, kN | vN << 16. */
  tok: Uint32Array;
  /** Outlier entries: (channel, f32 bits of the value) pairs. */
  sp: Uint32Array;
  /** kOff [kw], kRng [kw], vLut [nc], kLut [nc or kw·nc]. */
  par: Float32Array;
  /** Unquantized rows [nraw, 2·kw] (K then V). */
  raw: Float32Array;
  /** RoPE table [positions, hd/2, 2] of (cos, sin) (unused without `rotate`). */
  rope: Float32Array;
}

/** Words of one row of `kw` codes at `bits` bits (`⌈kw / ⌊32 / bits⌋⌉`). */
export function kvquantRowWords(kw: number, bits: number): number {
  return Math.ceil(kw / Math.floor(32 / bits));
}

/** Words of one token in `tok`: both rows of codes and four words of parameters. */
export function kvquantTokenWords(kw: number, bits: number): number {
  return 2 * kvquantRowWords(kw, bits) + 4;
}

/** The uniform fields of the kernel (binding 0), in order. */
export function kvquantAttentionUniforms(o: KvQuantAttentionOptions): (number | { f: number })[] {
  return [
    o.nH,
    o.nKV,
    o.pos,
    o.nraw,
    o.bits,
    kvquantRowWords(o.nKV * o.headDim, o.bits),
    2 ** o.bits,
    o.perChannel ? 1 : 0,
    o.rotate ? 1 : 0,
    { f: o.scale ?? 1 / Math.sqrt(o.headDim) },
  ];
}

/** Checks the options' consistency (an Error naming the field). */
export function checkKvQuantAttention(o: KvQuantAttentionOptions): void {
  const bad = (m: string) => {
    throw new Error(`kvquant_attention: ${m}`);
  };
  if (!(Number.isInteger(o.bits) && o.bits >= 2 && o.bits <= 8)) bad(`bits ${o.bits} not in 2..8`);
  if (o.nH % o.nKV !== 0) bad(`nH ${o.nH} not a multiple of nKV ${o.nKV}`);
  if (o.rotate && o.headDim % 2 !== 0) bad(`rotate needs an even headDim, got ${o.headDim}`);
  if (!(o.pos >= 0 && o.nraw >= 0 && o.nraw <= o.pos + 1)) {
    bad(`nraw ${o.nraw} must be in 0..pos + 1 (pos ${o.pos})`);
  }
  if (o.nKV * o.headDim > 65535) bad(`K/V width ${o.nKV * o.headDim} over the u16 outlier counts`);
}

/**
 * CPU reference: decodes tokens 0..pos of `cache` into f32 K/V (codes by division, outliers by a
 * linear scan, keys rotated in float64 and rounded to f32 when `rotate`), then max-subtracted
 * softmax attention in float64. q [nH, hd] → [nH, hd].
 */
export function kvquantAttentionRef(
  q: Float32Array,
  cache: KvQuantAttentionCache,
  o: KvQuantAttentionOptions,
): Float32Array {
  checkKvQuantAttention(o);
  const f = Math.fround;
  const { nH, nKV, headDim: hd, pos, nraw, bits } = o;
  const kw = nKV * hd;
  const S = pos + 1;
  const per = Math.floor(32 / bits);
  const nc = 2 ** bits;
  const wpr = kvquantRowWords(kw, bits);
  const ts = 2 * wpr + 4;
  const code = (w0: number, c: number) =>
    Math.floor(cache.tok[w0 + Math.floor(c / per)] / 2 ** ((c % per) * bits)) % nc;
  const asF32 = (u: number) => new Float32Array(Uint32Array.of(u).buffer)[0];
  const { par } = cache;
  const K = new Float32Array(S * kw), V = new Float32Array(S * kw);
  for (let s = 0; s < S; s++) {
    if (s < nraw) {
      K.set(cache.raw.subarray(s * 2 * kw, s * 2 * kw + kw), s * kw);
      V.set(cache.raw.subarray(s * 2 * kw + kw, (s + 1) * 2 * kw), s * kw);
      continue;
    }
    const base = s * ts;
    const vOff = asF32(cache.tok[base + 2 * wpr]), vRng = asF32(cache.tok[base + 2 * wpr + 1]);
    for (let c = 0; c < kw; c++) {
      const kc = code(base, c), vc = code(base + wpr, c);
      const lut = par[2 * kw + nc + (o.perChannel ? c * nc : 0) + kc];
      K[s * kw + c] = f(f(lut * par[kw + c]) + par[c]);
      V[s * kw + c] = f(f(par[2 * kw + vc] * vRng) + vOff);
    }
    const st = cache.tok[base + 2 * wpr + 2], cnt = cache.tok[base + 2 * wpr + 3];
    const kn = cnt % 65536, vn = Math.floor(cnt / 65536);
    for (let j = st; j < st + kn + vn; j++) {
      (j < st + kn ? K : V)[s * kw + cache.sp[2 * j]] = asF32(cache.sp[2 * j + 1]);
    }
  }
  if (o.rotate) {
    const half = hd / 2;
    for (let s = 0; s < S; s++) {
      for (let g = 0; g < nKV; g++) {
        const r = s * kw + g * hd;
        for (let i = 0; i < half; i++) {
          const cs = cache.rope[(s * half + i) * 2], sn = cache.rope[(s * half + i) * 2 + 1];
          const x1 = K[r + i], x2 = K[r + i + half];
          K[r + i] = x1 * cs - x2 * sn;
          K[r + i + half] = x2 * cs + x1 * sn;
        }
      }
    }
  }
  const scale = o.scale ?? 1 / Math.sqrt(hd);
  const out = new Float32Array(nH * hd);
  const sc = new Float64Array(S);
  for (let h = 0; h < nH; h++) {
    const c0 = Math.floor(h / (nH / nKV)) * hd;
    let m = -Infinity;
    for (let s = 0; s < S; s++) {
      let dot = 0;
      for (let i = 0; i < hd; i++) dot += q[h * hd + i] * K[s * kw + c0 + i];
      sc[s] = dot * scale;
      if (sc[s] > m) m = sc[s];
    }
    let sum = 0;
    for (let s = 0; s < S; s++) sum += sc[s] = Math.exp(sc[s] - m);
    for (let i = 0; i < hd; i++) {
      let a = 0;
      for (let s = 0; s < S; s++) a += sc[s] * V[s * kw + c0 + i];
      out[h * hd + i] = a / sum;
    }
  }
  return out;
}
