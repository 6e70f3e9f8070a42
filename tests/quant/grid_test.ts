import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  bitsPerWeight,
  dequantize,
  findParams,
  maxqOf,
  packCodes,
  quantize,
  quantizeCode,
  resolveMse,
  roundHalfEven,
  unpackCodes,
  validateBits,
} from "../../src/quant/core/grid.ts";
import { rtnQuantize } from "../../src/quant/weight_only/rtn.ts";
import type { QuantMeta } from "../../src/quant/core/types.ts";
import { OptionError } from "../../src/errors.ts";
import { mulberry32, randnArray } from "../../src/rng.ts";

const f = Math.fround;

/** Plain closed-form min-max oracle for one row (written independently of grid.ts). */
function oracleRow(x: ArrayLike<number>, bits: number, sym: boolean) {
  const maxq = 2 ** bits - 1;
  let lo = Math.min(0, ...Array.from(x)), hi = Math.max(0, ...Array.from(x));
  if (sym) {
    hi = Math.max(-lo, hi);
    if (lo < 0) lo = -hi;
  }
  if (lo === 0 && hi === 0) [lo, hi] = [-1, 1];
  const scale = f(f(hi - lo) / maxq);
  const rhe = (v: number) => {
    const fl = Math.floor(v), frac = v - fl;
    return frac > 0.5 ? fl + 1 : frac < 0.5 ? fl : fl % 2 === 0 ? fl : fl + 1;
  };
  const zero = sym ? 2 ** (bits - 1) : rhe(f(-lo / scale));
  const codes = Array.from(x, (v) => Math.min(maxq, Math.max(0, rhe(f(v / scale)) + zero)));
  return { scale, zero, codes, values: codes.map((c) => f(scale * (c - zero))), lo, hi };
}

Deno.test("roundHalfEven matches torch.round on ties and non-ties", () => {
  const cases: [number, number][] = [
    [0.5, 0],
    [1.5, 2],
    [2.5, 2],
    [-0.5, -0],
    [-1.5, -2],
    [-2.5, -2],
    [2.4999, 2],
    [-2.5001, -3],
    [3, 3],
    [7.5, 8],
  ];
  for (const [x, want] of cases) assertEquals(roundHalfEven(x), want, `round(${x})`);
});

Deno.test("findParams + quantize match the closed-form min-max oracle (asym and sym, 2–8 bits)", () => {
  const rng = mulberry32(10);
  for (const bits of [2, 3, 4, 5, 8]) {
    for (const sym of [false, true]) {
      const rows = 7, cols = 33;
      const data = randnArray(rng, rows * cols, { scale: 0.1 });
      data.fill(0, 0, cols); // an all-zero row → range [−1, 1]
      for (let j = 0; j < cols; j++) data[cols + j] = Math.abs(data[cols + j]); // non-negative row
      const W = { shape: [rows, cols], data };
      const p = findParams(W, { bits, sym });
      assertEquals(p.maxq, maxqOf(bits));
      for (let r = 0; r < rows; r++) {
        const row = data.subarray(r * cols, r * cols + cols);
        const o = oracleRow(row, bits, sym);
        assertEquals(p.scale[r], o.scale);
        assertEquals(p.zero[r], o.zero);
        const grid = { scale: p.scale[r], zero: p.zero[r], maxq: p.maxq };
        for (let j = 0; j < cols; j++) {
          assertEquals(quantizeCode(row[j], grid), o.codes[j]);
          const q = quantize(row[j], grid);
          assertEquals(q, o.values[j]);
          // Idempotent, and on the grid.
          assertEquals(quantize(q, grid), q);
          // Within half a step when inside the representable range.
          const gmin = p.scale[r] * -p.zero[r], gmax = p.scale[r] * (p.maxq - p.zero[r]);
          if (row[j] >= gmin && row[j] <= gmax) {
            assert(
              Math.abs(q - row[j]) <= p.scale[r] / 2 + 1e-6 * Math.abs(row[j]),
              `${bits} ${sym} r${r} x=${row[j]} q=${q} s=${p.scale[r]} z=${p.zero[r]}`,
            );
          }
        }
      }
    }
  }
});

Deno.test("rtn → dequantize(meta) reproduces Wq bit-exactly; packed codes unpack to codes", () => {
  const rng = mulberry32(11);
  for (
    const o of [
      { bits: 4 },
      { bits: 3, groupSize: 16 },
      { bits: 2, sym: true, groupSize: 8 },
      { bits: 8, perChannel: false },
      { bits: 4, mse: true, groupSize: 32 },
    ]
  ) {
    const W = { shape: [5, 64], data: randnArray(rng, 5 * 64) };
    const { Wq, meta } = rtnQuantize(W, o);
    const D = dequantize(meta);
    for (let i = 0; i < Wq.data.length; i++) assert(D.data[i] === Wq.data[i], `element ${i}`);
    assertEquals(unpackCodes(meta.packed!, { bits: meta.bits, count: 5 * 64 }), meta.codes);
    const D2 = dequantize({ ...meta, codes: undefined as unknown as Uint8Array });
    assertEquals(D2.data, Wq.data);
  }
});

Deno.test("per-tensor grid: one scale and zero shared by every row", () => {
  const rng = mulberry32(12);
  const W = { shape: [4, 10], data: randnArray(rng, 40) };
  const p = findParams(W, { bits: 4, perChannel: false });
  const o = oracleRow(W.data, 4, false);
  for (let r = 0; r < 4; r++) {
    assertEquals(p.scale[r], o.scale);
    assertEquals(p.zero[r], o.zero);
  }
});

Deno.test("MSE search: never worse than min-max in Σ|q−x|^2.4, scale shrinks", () => {
  const rng = mulberry32(13);
  for (const sym of [false, true]) {
    const rows = 6, cols = 128;
    const data = randnArray(rng, rows * cols);
    data[5] = 12; // an outlier makes clipping worthwhile
    const W = { shape: [rows, cols], data };
    const mm = findParams(W, { bits: 3, sym });
    const ms = findParams(W, { bits: 3, sym, mse: true });
    for (let r = 0; r < rows; r++) {
      let emm = 0, ems = 0;
      for (let j = 0; j < cols; j++) {
        const x = data[r * cols + j];
        emm += Math.abs(quantize(x, { scale: mm.scale[r], zero: mm.zero[r], maxq: 7 }) - x) ** 2.4;
        ems += Math.abs(quantize(x, { scale: ms.scale[r], zero: ms.zero[r], maxq: 7 }) - x) ** 2.4;
      }
      assert(ems <= emm * (1 + 1e-9), `row ${r}: mse ${ems} > minmax ${emm}`);
      assert(ms.scale[r] <= mm.scale[r]);
      if (sym) assertEquals(ms.zero[r], 4);
    }
  }
  assertEquals(resolveMse(true), { norm: 2.4, grid: 100, maxshrink: 0.8 });
  assertThrows(() => resolveMse({ maxshrink: 0 }), OptionError, "mse");
});

Deno.test("packCodes/unpackCodes round trip for 1–8 bits and odd lengths", () => {
  const rng = mulberry32(14);
  for (const bits of [1, 2, 3, 4, 5, 6, 7, 8]) {
    for (const n of [1, 10, 11, 31, 32, 33, 96, 1000]) {
      const codes = Uint8Array.from({ length: n }, () => Math.floor(rng() * 2 ** bits));
      const packed = packCodes(codes, bits);
      assertEquals(packed.length, Math.ceil((n * bits) / 32));
      assertEquals(unpackCodes(packed, { bits, count: n }), codes);
    }
  }
  assertThrows(() => packCodes(Uint8Array.of(8), 3), RangeError);
});

Deno.test("pack layout: 4-bit nibbles LSB first; 3-bit matches GPTQ's straddling layout", () => {
  assertEquals(packCodes(Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8), 4)[0], 0x87654321);
  assertEquals(packCodes(Uint8Array.of(0xab, 0xcd, 0xef, 0x01), 8)[0], 0x01efcdab);
  assertEquals(
    packCodes(Uint8Array.of(1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0), 2)[0],
    0x39393939,
  );
  // GPTQ 3-bit: 32 codes → 3 words; code 10 = bits 30–31 of word 0 + bit 0 of word 1, code 21 =
  // bit 31 of word 1 + bits 0–1 of word 2 (gptq.py QuantLinear.pack).
  const codes = new Uint8Array(32);
  codes[10] = 0b101;
  codes[21] = 0b011;
  codes[0] = 7;
  codes[31] = 6;
  const p = packCodes(codes, 3);
  assertEquals(p.length, 3);
  assertEquals(p[0], (7 | ((0b101 << 30) >>> 0)) >>> 0);
  assertEquals(p[1], ((0b101 >> 2) & 1 | ((0b011 << 31) >>> 0)) >>> 0);
  assertEquals(p[2], ((0b011 >> 1) & 0x3 | (6 << 29)) >>> 0);
});

function metaOf(over: Partial<QuantMeta>): QuantMeta {
  const rows = over.shape?.[0] ?? 4096, cols = over.shape?.[1] ?? 4096;
  const groupSize = over.groupSize ?? -1;
  const ng = groupSize > 0 ? cols / groupSize : 1;
  return {
    method: "x",
    bits: 4,
    groupSize,
    sym: false,
    shape: [rows, cols],
    codes: new Uint8Array(0),
    scales: new Float32Array(rows * ng),
    zeros: new Float32Array(rows * ng),
    ...over,
  };
}

Deno.test("bitsPerWeight: scales, zeros, per-tensor and g_idx overhead", () => {
  assertAlmostEquals(bitsPerWeight(metaOf({ groupSize: 128 })), 4.25, 1e-12);
  assertAlmostEquals(bitsPerWeight(metaOf({ groupSize: 128, sym: true })), 4.125, 1e-12);
  assertAlmostEquals(bitsPerWeight(metaOf({ bits: 3, groupSize: 64 })), 3.5, 1e-12);
  assertAlmostEquals(bitsPerWeight(metaOf({})), 4 + 32 / 4096, 1e-12);
  assertAlmostEquals(bitsPerWeight(metaOf({ shape: [768, 3072] })), 4 + 32 / 3072, 1e-12);
  assertAlmostEquals(bitsPerWeight(metaOf({ perTensor: true })), 4 + 32 / 4096 ** 2, 1e-12);
  // act-order without static groups stores g_idx: 32 bits per column over `rows` weights.
  assertAlmostEquals(
    bitsPerWeight(metaOf({ shape: [1024, 4096], groupSize: 128, gIdxStored: true })),
    4.25 + 32 / 1024,
    1e-12,
  );
  assertAlmostEquals(
    bitsPerWeight(metaOf({ groupSize: 128 }), { scaleBits: 16, zeroBits: 4, indexBits: 0 }),
    4 + 20 / 128,
    1e-12,
  );
});

Deno.test("validateBits bounds", () => {
  for (const b of [2, 3, 8]) assertEquals(validateBits(b), b);
  assertEquals(validateBits(1, { min: 1 }), 1);
  for (const b of [1, 9, 0, 2.5, NaN]) assertThrows(() => validateBits(b), OptionError, "bits");
  assertThrows(
    () => findParams({ shape: [1, 2], data: new Float32Array(2) }, { bits: 9 }),
    OptionError,
  );
});
