import { assert, assertEquals, assertLessOrEqual, assertRejects, assertThrows } from "@std/assert";
import {
  bf16,
  dequantizeOa,
  fromBf16Bits,
  oa,
  type OaMeta,
  oaQuantize,
  toBf16Bits,
} from "../../src/quant/weight_only/oa.ts";
import { dequantizeMeta } from "../../src/quant/dequantize.ts";
import { OptionError, QuantlabError } from "../../src/errors.ts";
import { mulberry32, randnArray } from "../../src/rng.ts";
import { proxyLoss, randomH } from "./_oracles.ts";

/** Reference float32 → bfloat16: the nearest of the two bf16 neighbours, ties to even (float64). */
function refBf16(x: number): number {
  const f = new Float32Array([x]), u = new Uint32Array(f.buffer);
  const lo = u[0] & 0xffff0000;
  const a = new Float32Array(new Uint32Array([lo]).buffer)[0];
  const b = new Float32Array(new Uint32Array([lo + 0x10000]).buffer)[0];
  // Past the largest bf16 the upper neighbour is ±2^128 for the distance (IEEE overflow rule).
  const bd = Number.isFinite(b) ? b : Math.sign(b) * 2 ** 128;
  const da = Math.abs(x - a), db = Math.abs(bd - x);
  if (da < db) return a;
  if (db < da) return b;
  return ((lo >>> 16) & 1) === 0 ? a : b;
}

Deno.test("oa: BF16 rounding matches a reference conversion (random, ties, extremes)", () => {
  const rng = mulberry32(1811);
  const xs: number[] = [0, -0, 1, -1, 3.4e38, -3.4e38, 1e-40, 65504, 1 / 3];
  for (let i = 0; i < 20000; i++) xs.push(Math.fround((rng() - 0.5) * 10 ** (rng() * 8 - 4)));
  // exact ties: float32 values whose low 16 bits are 0x8000
  for (let i = 0; i < 200; i++) {
    const u = new Uint32Array([((Math.floor(rng() * 0x7f00) + 0x100) << 16) | 0x8000]);
    xs.push(new Float32Array(u.buffer)[0]);
  }
  for (const x of xs) {
    const got = bf16(x), want = refBf16(x);
    assert(Object.is(got, want) || (got === 0 && want === 0), `${x}: ${got} vs ${want}`);
    assertEquals(fromBf16Bits(toBf16Bits(x)), got);
  }
});

function setup(seed: number) {
  const rng = mulberry32(seed);
  const rows = 32, cols = 128;
  const data = randnArray(rng, rows * cols, { scale: 0.05 });
  for (let k = 0; k < 30; k++) data[Math.floor(rng() * rows * cols)] *= 10;
  const W = { shape: [rows, cols], data };
  const H = randomH(rng, cols, { n: 300, k: 16, damp: 0.01 });
  return { W, H, rows, cols };
}

function popcount(v: number): number {
  let n = 0;
  for (; v; v >>= 1) n += v & 1;
  return n;
}

Deno.test("oa: the offset lowers the 1 bits and leaves the dequantized weight bit-identical", async () => {
  const { W, H, rows, cols } = setup(1812);
  for (const outlierMode of [false, true]) {
    const base = { wbits: 4, sym: true, perOutDim: true, blockSize: 32, outlierMode };
    const a = await oaQuantize(W, { H, nsamples: 300 }, base);
    const b = await oaQuantize(W, { H, nsamples: 300 }, { ...base, offsetMode: true });
    assertEquals(b.Wq.data, a.Wq.data);
    const ma = a.meta as OaMeta, mb = b.meta as OaMeta;
    // Recount the 1 bits in the stored codes independently; brute-force the best offset per row.
    let ones = 0, onesBest = 0;
    for (let r = 0; r < rows; r++) {
      let best = Infinity;
      for (let off = 0; off < 16; off++) {
        let n = 0;
        for (let j = 0; j < cols; j++) {
          const i = r * cols + j;
          if (mb.outlierMask?.[i]) continue;
          const signed = mb.codes[i] - 8; // symmetric zero 8
          n += popcount((signed - off + 32) % 16);
        }
        best = Math.min(best, n);
      }
      onesBest += best;
      for (let j = 0; j < cols; j++) {
        if (!mb.outlierMask?.[r * cols + j]) ones += popcount(mb.stored![r * cols + j]);
      }
    }
    assertEquals(ones, mb.onesAfter);
    assertEquals(onesBest, mb.onesAfter);
    assertEquals(ma.onesAfter, ma.onesBefore);
    assertEquals(mb.onesBefore, ma.onesBefore);
    assert(mb.onesAfter! < mb.onesBefore!, `${mb.onesAfter} < ${mb.onesBefore}`);
    for (const m of [ma, mb]) {
      const D = dequantizeOa(m);
      for (let i = 0; i < D.data.length; i++) assert(Object.is(D.data[i], a.Wq.data[i]), `${i}`);
    }
    assertEquals((await dequantizeMeta(mb)).data, b.Wq.data);
    // offsets cost wbits per row
    assertEquals(b.bitsPerWeight - a.bitsPerWeight, (4 * rows) / (rows * cols));
  }
});

Deno.test("oa: one BF16 outlier per row per block, counted as 16 bits; outliers lower the loss", async () => {
  const { W, H, rows, cols } = setup(1813);
  for (const nearest of [false, true]) {
    const opts = { wbits: 4, sym: true, perOutDim: true, blockSize: 32, nearest };
    const plain = await oaQuantize(W, { H, nsamples: 300 }, opts);
    const res = await oaQuantize(W, { H, nsamples: 300 }, { ...opts, outlierMode: true });
    const m = res.meta as OaMeta;
    let k = 0;
    for (let r = 0; r < rows; r++) {
      for (let b = 0; b < cols / 32; b++) {
        let n = 0;
        for (let j = b * 32; j < b * 32 + 32; j++) {
          const i = r * cols + j;
          if (!m.outlierMask![i]) continue;
          n++;
          const v = res.Wq.data[i];
          assertEquals(bf16(v), v); // a bfloat16 value
          assertEquals(toBf16Bits(v), m.outlierBf16![k++]);
        }
        assertEquals(n, 1, `row ${r} block ${b}`);
      }
    }
    assertEquals(m.maxOutliersPerBlock, 1);
    assertEquals(m.outliers, rows * cols / 32);
    // bits: 4 + per-row-block 16-bit scale + outlier (16 − 4) + 5-bit index per row-block
    assertEquals(plain.bitsPerWeight, 4 + 16 / 32);
    assertEquals(res.bitsPerWeight, 4 + 16 / 32 + 12 / 32 + 5 / 32);
    assertLessOrEqual(proxyLoss(W, res.Wq, H), proxyLoss(W, plain.Wq, H));
    const D = dequantizeOa(m);
    for (let i = 0; i < D.data.length; i++) assert(Object.is(D.data[i], res.Wq.data[i]));
  }
});

Deno.test("oa: second-level stats, baseline, and nearest without H", async () => {
  const { W, H } = setup(1814);
  const q = await oaQuantize(W, { H, nsamples: 300 }, {
    wbits: 3,
    perOutDim: true,
    blockSize: 32,
    qqScaleBits: 4,
    qqZeroBits: 4,
    outlierMode: true,
  });
  const m = q.meta as OaMeta;
  assert(m.qqScale && m.qqZero);
  const D = dequantizeOa(m);
  for (let i = 0; i < D.data.length; i++) assert(Object.is(D.data[i], q.Wq.data[i]));
  const b = await oa({ baseline: true }).quantizeWeight(W, { nsamples: 0 });
  for (let i = 0; i < W.data.length; i++) assertEquals(b.Wq.data[i], refBf16(W.data[i]));
  assertEquals(b.bitsPerWeight, 16);
  assertEquals((await dequantizeMeta(b.meta)).data, b.Wq.data);
  assertEquals(oa({}).options.baseline, true); // wbits default 16 = BF16 base model
  const n = await oa({ wbits: 4, nearest: true, blockSize: 32 }).quantizeWeight(W, { nsamples: 0 });
  assertEquals(n.Wq.data.length, W.data.length);
  await assertRejects(
    () => oa({ wbits: 4 }).quantizeWeight(W, { nsamples: 0 }),
    QuantlabError,
    "stats.H",
  );
});

Deno.test("oa: bad combinations are rejected naming the option", () => {
  assertThrows(() => oa({ wbits: 4, offsetMode: true }), OptionError, "offsetMode");
  assertThrows(() => oa({ wbits: 4, sym: false, offsetMode: true }), OptionError, "symmetric");
  assertThrows(() => oa({ wbits: 4, outlierMode: true }), OptionError, "blockSize");
  assertThrows(() => oa({ wbits: 1 }), OptionError, "wbits");
  assertThrows(() => oa({ wbits: 4, blockSize: 1 }), OptionError, "blockSize");
  assertThrows(() => oa({ baseline: true, outlierMode: true, blockSize: 8 }), OptionError);
});
