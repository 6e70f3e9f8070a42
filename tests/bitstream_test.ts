/**
 * The one code bitstream (1–16 bits) against a bit-by-bit reference written here, and its
 * errors; `grid.ts`'s `packCodes`/`unpackCodes` are the same words.
 */
import { assertEquals, assertThrows } from "@std/assert";
import { packBits, unpackBits } from "../src/bitstream.ts";
import { packCodes, unpackCodes } from "../src/quant/core/grid.ts";
import { mulberry32 } from "../src/rng.ts";

/** Stream bit `b` is bit `b % 32` of word `⌊b/32⌋`; code `k` is bits `[k·bits, (k+1)·bits)`. */
function referencePack(codes: number[], bits: number): Uint32Array {
  const stream: number[] = [];
  for (const c of codes) for (let i = 0; i < bits; i++) stream.push((c >> i) & 1);
  const out = new Uint32Array(Math.ceil(stream.length / 32));
  stream.forEach((bit, b) => out[b >> 5] = (out[b >> 5] | (bit << (b & 31))) >>> 0);
  return out;
}

Deno.test("bitstream: 1–16 bits, odd lengths, equal to the bit-by-bit reference", () => {
  const rand = mulberry32(7);
  for (let bits = 1; bits <= 16; bits++) {
    for (const n of [1, 31, 32, 33, 97]) {
      const codes = Array.from({ length: n }, () => Math.floor(rand() * 2 ** bits));
      codes[0] = 2 ** bits - 1; // the largest code
      const words = packBits(codes, bits);
      assertEquals(words, referencePack(codes, bits), `${bits} bits, ${n} codes`);
      const out = bits > 8 ? new Uint16Array(n) : new Uint8Array(n);
      assertEquals(Array.from(unpackBits(words, { bits, out })), codes);
      if (bits <= 8) {
        assertEquals(packCodes(Uint8Array.from(codes), bits), words);
        assertEquals(Array.from(unpackCodes(words, { bits, count: n })), codes);
      }
    }
  }
});

Deno.test("bitstream: codes that do not fit, bad widths and short input are RangeErrors", () => {
  assertThrows(() => packBits([16], 4), RangeError, "does not fit");
  assertThrows(() => packBits([-1], 4), RangeError, "does not fit");
  assertThrows(() => packBits([0], 17), RangeError, "1–16");
  assertThrows(
    () => unpackBits(new Uint32Array(1), { bits: 9, out: new Uint16Array(4) }),
    RangeError,
  );
});
