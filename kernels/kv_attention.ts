/**
 * Decode-time attention over a KIVI-packed KV cache: one query token per head (grouped-query
 * heads), keys and values dequantized tile by tile as they are read — no f32 copy of the cache.
 *
 * The query sits at position `pos` and sees keys 0..pos. Keys [0, qk) come from the packed K,
 * keys [qk, pos] from the full-precision K window; values [0, qv) from the packed V, the rest
 * from the full-precision V window. Every code is `bits` bits (2..8), packed `⌊32 / bits⌋` to a
 * u32 word from bit 0 upwards (code i of a word at bit `i · bits`), and dequantizes as
 * `code · scale + min` (f32). With `kw = nKV · hd`:
 *
 * - packed K (per-channel groups of `G` consecutive tokens, stored by blocks of `R` tokens, the
 *   KIVI block layout): key s, channel c lies in block `b = ⌊s / R⌋`, group `g = ⌊(s mod R) / G⌋`,
 *   index `j = s mod G`; with `ng = R / G` the group id is `(b · kw + c) · ng + g`, its words
 *   `kCodes[id · wpgK ..]` (`wpgK = ⌈G / ⌊32/bits⌋⌉`) and its (scale, min) `kPar[id]`;
 * - packed V (per-token groups of `Gv` consecutive channels): value s, channel c is group
 *   `id = s · (kw / Gv) + ⌊c / Gv⌋`, index `c mod Gv`, words `vCodes[id · wpgV ..]`, `vPar[id]`;
 * - full-precision windows as rings in one buffer `res` [2R + 1, kw]: key s at row `s mod R`,
 *   value s at row `R + (s mod (R + 1))` (a decode query reads at most R full keys and R + 1 full
 *   values, so the rows it reads are distinct).
 *
 * One 256-thread workgroup per query head streams the visible keys in blocks of 256 with an
 * online softmax (running max subtracted before `exp`, earlier sums rescaled by
 * `exp(m_old − m_new)`): each thread dequantizes and scores one key, the block's max and sum are
 * workgroup reductions, and `⌊256 / hd⌋` lanes of `hd` threads accumulate `p · V`, dequantizing
 * each value as they read it; the lanes are summed at the end.
 *
 * Binding layout: 0 = uniforms {nH, nKV, pos, qk, qv, R, G, Gv, bits, wpgK, wpgV, scale (f32)},
 * 1 = Q [nH, hd], 2 = kCodes (u32), 3 = kPar (vec2 f32: scale, min), 4 = vCodes, 5 = vPar,
 * 6 = res (the full-precision rings), 7 = O [nH, hd] (seven storage buffers, within WebGPU's
 * default limit of eight per stage). Dispatch: nH workgroups. hd (1..256) is a compile-time constant.
 *
 * {@linkcode kvAttentionRef} is the CPU reference: it unpacks every code into f32 K/V (its own
 * bit extraction, independent of `src/quant/kv/`), then runs plain max-subtracted softmax
 * attention in float64.
 * @module
 */
import { decodeAttentionWGSL } from "./_decode_attention.ts";

/** Threads per workgroup of the packed-KV attention kernel. */
export const KV_ATTENTION_WG = 256;

/** WGSL of the packed-KV decode attention for head dimension `headDim`. */
export function kvAttentionWGSL(opts: { headDim: number }): string {
  const HD = opts.headDim;
  return decodeAttentionWGSL("kvAttentionWGSL", {
    headDim: HD,
    uniforms: `qk: u32, qv: u32, R: u32, G: u32, Gv: u32,
  bits: u32, wpgK: u32, wpgV: u32,`,
    bindings: `@group(0) @binding(2) var<storage, read> kCodes: array<u32>;
@group(0) @binding(3) var<storage, read> kPar: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> vCodes: array<u32>;
@group(0) @binding(5) var<storage, read> vPar: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read> res: array<f32>;`,
    functions: "",
    setup: `  let ng = p.R / p.G;
  // This thread's V channel: its group, word and shift are the same for every token.
  let cv = c0 + d;
  let ngv = kw / p.Gv;
  let vg = cv / p.Gv;
  let vw = (cv % p.Gv) / per;
  let vsh = ((cv % p.Gv) % per) * p.bits;`,
    key: `      var dot = 0.0;
      if (s < p.qk) {
        // Key s: block s / R, group (s mod R) / G, code s mod G; channel c0 + i is group
        // id0 + i·ng (the groups of one block are channel-major).
        let id0 = ((s / p.R) * kw + c0) * ng + (s % p.R) / p.G;
        let j = s % p.G;
        let sh = (j % per) * p.bits;
        let wstep = ng * p.wpgK;
        var wi = id0 * p.wpgK + j / per;
        var pi = id0;
        for (var i = 0u; i < ${HD}u; i = i + 1u) {
          let sm = kPar[pi];
          let code = (kCodes[wi] >> sh) & msk;
          dot = dot + qs[i] * (f32(code) * sm.x + sm.y);
          wi = wi + wstep;
          pi = pi + ng;
        }
      } else {
        let r = (s % p.R) * kw + c0;
        for (var i = 0u; i < ${HD}u; i = i + 1u) { dot = dot + qs[i] * res[r + i]; }
      }`,
    value: `        if (sj < p.qv) {
          let id = sj * ngv + vg;
          let sm = vPar[id];
          val = f32((vCodes[id * p.wpgV + vw] >> vsh) & msk) * sm.x + sm.y;
        } else {
          val = res[(p.R + sj % (p.R + 1u)) * kw + cv];
        }`,
  });
}

/** Shape and state of one packed-KV attention call (see the module doc for the layout). */
export interface KvAttentionOptions {
  /** Query heads. */
  nH: number;
  /** KV heads (divides nH). */
  nKV: number;
  /** Head dimension. */
  headDim: number;
  /** Position of the query; it sees keys 0..pos. */
  pos: number;
  /** Keys [0, qk) are packed (a multiple of R). */
  qk: number;
  /** Values [0, qv) are packed. */
  qv: number;
  /** R: K block length and full-precision K ring size (a multiple of G). */
  R: number;
  /** Tokens per K group. */
  G: number;
  /** Channels per V group (divides nKV · headDim). */
  Gv: number;
  /** Bits per code, 2..8. */
  bits: number;
  /** Score scale (default 1/sqrt(headDim)). */
  scale?: number;
}

/** The packed cache of one layer in the kernel's layout (see the module doc). */
export interface KvAttentionCache {
  /** Packed K words. */
  kCodes: Uint32Array;
  /** K (scale, min) pairs. */
  kPar: Float32Array;
  /** Packed V words. */
  vCodes: Uint32Array;
  /** V (scale, min) pairs. */
  vPar: Float32Array;
  /** Full-precision rings [2R + 1, nKV · headDim]: K rows 0..R−1, V rows R..2R. */
  res: Float32Array;
}

/** Words of a group of `n` codes at `bits` bits (`⌈n / ⌊32 / bits⌋⌉`). */
export function kvGroupWords(n: number, bits: number): number {
  return Math.ceil(n / Math.floor(32 / bits));
}

/** The uniform fields of the kernel (binding 0), in order. */
export function kvAttentionUniforms(o: KvAttentionOptions): (number | { f: number })[] {
  return [
    o.nH,
    o.nKV,
    o.pos,
    o.qk,
    o.qv,
    o.R,
    o.G,
    o.Gv,
    o.bits,
    kvGroupWords(o.G, o.bits),
    kvGroupWords(o.Gv, o.bits),
    { f: o.scale ?? 1 / Math.sqrt(o.headDim) },
  ];
}

/** Checks the options' consistency (an Error naming the field). */
export function checkKvAttention(o: KvAttentionOptions): void {
  const bad = (m: string) => {
    throw new Error(`kv_attention: ${m}`);
  };
  if (!(o.bits >= 2 && o.bits <= 8)) bad(`bits ${o.bits} not in 2..8`);
  if (o.nH % o.nKV !== 0) bad(`nH ${o.nH} not a multiple of nKV ${o.nKV}`);
  if (o.R % o.G !== 0) bad(`R ${o.R} not a multiple of G ${o.G}`);
  if ((o.nKV * o.headDim) % o.Gv !== 0) bad(`Gv ${o.Gv} does not divide ${o.nKV * o.headDim}`);
  if (o.qk % o.R !== 0 || o.qk > o.pos + 1 || o.pos + 1 - o.qk > o.R) {
    bad(`qk ${o.qk} must be a multiple of R ${o.R} with pos + 1 − qk in 0..R (pos ${o.pos})`);
  }
  if (o.qv > o.pos + 1 || o.pos + 1 - o.qv > o.R + 1) {
    bad(`qv ${o.qv} must leave 0..R + 1 full values (pos ${o.pos}, R ${o.R})`);
  }
}

/**
 * CPU reference: unpacks keys [0, qk) and values [0, qv) to f32 (each code `c · scale + min`,
 * rounded to f32 per step), takes the rest from the rings, then runs max-subtracted softmax
 * attention in float64. q [nH, hd] → [nH, hd].
 */
export function kvAttentionRef(
  q: Float32Array,
  cache: KvAttentionCache,
  o: KvAttentionOptions,
): Float32Array {
  checkKvAttention(o);
  const f = Math.fround;
  const { nH, nKV, headDim: hd, pos, qk, qv, R, G, Gv, bits } = o;
  const kw = nKV * hd;
  const S = pos + 1;
  const per = Math.floor(32 / bits);
  const mask = 2 ** bits - 1;
  const wpgK = kvGroupWords(G, bits), wpgV = kvGroupWords(Gv, bits);
  const unpack = (words: Uint32Array, w0: number, j: number) =>
    Math.floor(words[w0 + Math.floor(j / per)] / 2 ** ((j % per) * bits)) & mask;
  const K = new Float32Array(S * kw), V = new Float32Array(S * kw);
  const ng = R / G;
  for (let s = 0; s < S; s++) {
    for (let c = 0; c < kw; c++) {
      if (s < qk) {
        const id = (Math.floor(s / R) * kw + c) * ng + Math.floor((s % R) / G);
        const code = unpack(cache.kCodes, id * wpgK, s % G);
        K[s * kw + c] = f(f(code * cache.kPar[2 * id]) + cache.kPar[2 * id + 1]);
      } else K[s * kw + c] = cache.res[(s % R) * kw + c];
      if (s < qv) {
        const id = s * (kw / Gv) + Math.floor(c / Gv);
        const code = unpack(cache.vCodes, id * wpgV, c % Gv);
        V[s * kw + c] = f(f(code * cache.vPar[2 * id]) + cache.vPar[2 * id + 1]);
      } else V[s * kw + c] = cache.res[(R + (s % (R + 1))) * kw + c];
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
