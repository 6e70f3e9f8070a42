/**
 * The one code bitstream of the library: integer codes of 1–16 bits packed LSB-first into 32-bit
 * words. Code `k` occupies stream bits `[k·bits, (k+1)·bits)`, bit `b` of the stream being bit
 * `b % 32` of word `⌊b/32⌋`; a code may straddle two words (3, 5, 6, 7 and 9–15 bits). For 2/4/8
 * bits this is GPTQ's `qweight` order (lowest code in the lowest bits), for 3 bits GPTQ's 3-word
 * layout. Quantizers write it (`grid.ts` `packCodes`), checkpoints store it and the GPU dequant
 * kernels read the same words.
 * @module
 */

/** Packs `codes` (each `< 2^bits`, `bits` in 1–16) into LSB-first 32-bit words. */
export function packBits(codes: ArrayLike<number>, bits: number): Uint32Array {
  if (!(Number.isInteger(bits) && bits >= 1 && bits <= 16)) {
    throw new RangeError(`packBits: bits must be an integer in 1–16, got ${bits}`);
  }
  const out = new Uint32Array(Math.ceil((codes.length * bits) / 32));
  const limit = 2 ** bits;
  for (let k = 0, pos = 0; k < codes.length; k++, pos += bits) {
    const c = codes[k];
    if (!(c >= 0 && c < limit)) {
      throw new RangeError(`packBits: code ${c} at ${k} does not fit ${bits} bits`);
    }
    const w = pos >>> 5, off = pos & 31;
    out[w] |= c << off;
    if (off + bits > 32) out[w + 1] |= c >>> (32 - off);
  }
  return out;
}

/**
 * Inverse of {@linkcode packBits}: fills `options.out` with the first `out.length` codes of
 * `options.bits` bits (1–16; `out` a `Uint16Array` above 8 bits) and returns it. RangeError when
 * `packed` is short.
 */
export function unpackBits<T extends Uint8Array | Uint16Array>(
  packed: Uint32Array,
  options: { bits: number; out: T },
): T {
  const { bits, out } = options;
  if (!(Number.isInteger(bits) && bits >= 1 && bits <= 16)) {
    throw new RangeError(`unpackBits: bits must be an integer in 1–16, got ${bits}`);
  }
  const count = out.length;
  if (packed.length * 32 < count * bits) {
    throw new RangeError(`unpackBits: ${packed.length} words hold fewer than ${count} codes`);
  }
  const mask = 2 ** bits - 1;
  for (let k = 0, pos = 0; k < count; k++, pos += bits) {
    const w = pos >>> 5, off = pos & 31;
    let c = packed[w] >>> off;
    if (off + bits > 32) c |= packed[w + 1] << (32 - off);
    out[k] = c & mask;
  }
  return out;
}
