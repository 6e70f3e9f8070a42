/**
 * Bit packing and the asymmetric min–max group quantizer shared by the KV-cache quantizers.
 *
 * Codes of `bits` bits are packed `⌊32 / bits⌋` per 32-bit word, code `i` of a word at bit
 * `i · bits` (KIVI's `_pack_along_last_dim`: `element << (i * bits)` OR-ed into an int32). A group
 * of `n` codes takes `⌈n / ⌊32 / bits⌋⌉` words.
 *
 * The group quantizer is KIVI's `triton_quantize_and_pack_along_last_dim` (jy-yuan/KIVI
 * `quant/new_pack.py`): `mn = min(group)`, `mx = max(group)`, `scale = (mx − mn) / (2^bits − 1)`,
 * `q = round(clamp((x − mn) / scale, 0, 2^bits − 1))` with round-half-to-even (torch `round_`),
 * and the dequantized value `q · scale + mn`. Every step is rounded to f32 (the model's dtype here;
 * the reference runs it in the model's fp16). Deviation, measured: for a constant group
 * (mx = mn) the reference divides 0 by 0 and stores NaN-derived codes; here the codes are 0 and the
 * group dequantizes to `mn`, i.e. exactly.
 * @module
 */

/** Codes per 32-bit word at `bits` bits. */
export function codesPerWord(bits: number): number {
  return Math.floor(32 / bits);
}

/** Words taken by a group of `n` codes at `bits` bits. */
export function wordsPerGroup(n: number, bits: number): number {
  return Math.ceil(n / codesPerWord(bits));
}

/** Round half to even (torch.round). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

/**
 * Quantizes the `n` values `x[o + i·stride]` (i < n) as one group: writes the packed codes to
 * `codes` from word `w0`, and the group's scale and minimum to `scale[si]`, `mn[si]`.
 */
export function quantizeGroup(
  x: Float32Array,
  at: { o: number; stride: number; n: number; bits: number },
  out: { codes: Uint32Array; w0: number; scale: Float32Array; mn: Float32Array; si: number },
): void {
  const f = Math.fround;
  const { o, stride, n, bits } = at;
  const maxq = 2 ** bits - 1;
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = x[o + i * stride];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const s = f(f(hi - lo) / maxq);
  out.scale[out.si] = s;
  out.mn[out.si] = lo;
  const cpw = codesPerWord(bits);
  const words = wordsPerGroup(n, bits);
  out.codes.fill(0, out.w0, out.w0 + words);
  if (s === 0) return;
  for (let i = 0; i < n; i++) {
    let t = f(f(x[o + i * stride] - lo) / s);
    t = t < 0 ? 0 : t > maxq ? maxq : t;
    const q = roundHalfEven(t);
    out.codes[out.w0 + Math.floor(i / cpw)] |= q << ((i % cpw) * bits);
  }
  // `|=` on a Uint32Array stores the low 32 bits of the (signed) result: the packed word.
}

/**
 * Dequantizes one group packed by {@linkcode quantizeGroup} into `y[o + i·stride]` (i < n):
 * `q · scale + mn`, each step rounded to f32.
 */
export function dequantizeGroup(
  src: { codes: Uint32Array; w0: number; scale: number; mn: number },
  at: { o: number; stride: number; n: number; bits: number },
  y: Float32Array,
): void {
  const f = Math.fround;
  const { o, stride, n, bits } = at;
  const cpw = codesPerWord(bits);
  const mask = 2 ** bits - 1;
  for (let i = 0; i < n; i++) {
    const q = (src.codes[src.w0 + Math.floor(i / cpw)] >>> ((i % cpw) * bits)) & mask;
    y[o + i * stride] = f(f(q * src.scale) + src.mn);
  }
}
