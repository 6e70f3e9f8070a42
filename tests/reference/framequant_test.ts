import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  frameMatrix,
  framequant,
  framequantQuantize,
  frameSeeds,
  referenceFrame,
} from "../../src/quant/weight_only/framequant.ts";
import { randomSigns } from "../../src/quant/core/hadamard.ts";
import { mulberry32 } from "../../src/rng.ts";
import { OptionError } from "../../src/errors.ts";
import { fixture } from "./_fixtures.ts";
import { frameQuantGridRow, referenceFrameMatrix } from "./_oracles.ts";

function signsOf(seed: number, d: number): Float64Array {
  let d2 = 1;
  while (d % (d2 * 2) === 0) d2 *= 2;
  return randomSigns(mulberry32(seed), d2);
}

Deno.test("FrameQuant frames reference = the transcribed construct_real_tff + tff_project", () => {
  for (const d of [32, 64, 96, 128]) {
    const seed = 1234 + d;
    const A = frameMatrix(referenceFrame(d, seed));
    const B = referenceFrameMatrix(d, signsOf(seed, d));
    let worst = 0;
    for (let i = 0; i < A.length; i++) worst = Math.max(worst, Math.abs(A[i] - B[i]));
    assert(worst < 1e-12, `d ${d}: max |A − oracle| ${worst}`);
    // orthogonal at r = 1: AᵀA = I
    for (let i = 0; i < d; i += 7) {
      for (let j = 0; j < d; j += 5) {
        let s = 0;
        for (let k = 0; k < d; k++) s += A[k * d + i] * A[k * d + j];
        assertAlmostEquals(s, i === j ? 1 : 0, 1e-12);
      }
    }
  }
});

Deno.test("FrameQuant frames reference: r ≠ 1 or a dimension not a multiple of 32 is refused", () => {
  assertThrows(() => framequant({ bits: 2, frames: "reference", r: 1.1 }), OptionError, "frames");
  assertThrows(() => referenceFrame(48, 1), OptionError, "multiple of 32");
});

// gridFit "reference": per channel, the grid of each frame row is mean ± 2σ of the UNCLIPPED
// frame row (the reference fits before its clip); the frame weight is the oracle's dense
// A_r W A_cᵀ. Codes then come from GPTQ on the clipped rows with those grids.
Deno.test("FrameQuant gridFit reference: per-row grids = find_params_FrameQuant of the frame rows", async () => {
  const fx = fixture(1904, 32, 64);
  for (const bits of [2, 3]) {
    const res = await framequantQuantize({ shape: [fx.rows, fx.cols], data: fx.W }, {
      H: Float32Array.from(fx.H),
      nsamples: 96,
    }, { bits, frames: "reference", gridFit: "reference" });
    const { colSeed, rowSeed } = frameSeeds(0);
    const Ac = referenceFrameMatrix(fx.cols, signsOf(colSeed, fx.cols));
    const Ar = referenceFrameMatrix(fx.rows, signsOf(rowSeed, fx.rows));
    // C = Ar W Acᵀ
    const WA = new Float64Array(fx.rows * fx.cols);
    for (let r = 0; r < fx.rows; r++) {
      for (let k = 0; k < fx.cols; k++) {
        let s = 0;
        for (let x = 0; x < fx.cols; x++) s += fx.W[r * fx.cols + x] * Ac[k * fx.cols + x];
        WA[r * fx.cols + k] = s;
      }
    }
    let zerosDiffer = 0;
    for (let i = 0; i < fx.rows; i++) {
      const row = new Float64Array(fx.cols);
      for (let k = 0; k < fx.cols; k++) {
        let s = 0;
        for (let r = 0; r < fx.rows; r++) s += Ar[i * fx.rows + r] * WA[r * fx.cols + k];
        row[k] = Math.fround(s);
      }
      const g = frameQuantGridRow(row, bits, 2);
      assertAlmostEquals(res.meta.scales[i], g.scale, 1e-6 * g.scale, `row ${i} scale`);
      if (res.meta.zeros[i] !== g.zero) zerosDiffer++;
    }
    assertEquals(zerosDiffer, 0, `${bits}-bit: zeros differ in ${zerosDiffer} rows`);
    assertEquals(res.meta.frames, "reference");
    assertEquals(res.meta.gridFit, "reference");
  }
});

Deno.test("FrameQuant frames reference round-trips through dequantizeFramequant (bit-exact)", async () => {
  const fx = fixture(1905, 32, 64);
  const q = framequant({ bits: 4, frames: "reference", gridFit: "reference", groupSize: 16 });
  const res = await q.quantizeWeight({ shape: [fx.rows, fx.cols], data: fx.W }, {
    H: Float32Array.from(fx.H),
    nsamples: 96,
  });
  const { dequantizeFramequant } = await import("../../src/quant/weight_only/framequant.ts");
  assertEquals(dequantizeFramequant(res.meta).data, res.Wq.data);
});
