import { assert, assertLess, assertThrows } from "@std/assert";
import { getWebGPU, webgpuAvailable } from "../../src/backend/webgpu.ts";
import { scaledErr } from "../../src/backend/_webgpu_check.ts";
import { gpuLutGemv, releaseLut, uploadLut } from "../../src/backend/_webgpu_lut.ts";
import { lutGemvRef } from "../../kernels/lut_gemv.ts";
import { bcqFromUniform, bcqQuantize, dequantizeBcq } from "../../src/quant/weight_only/bcq.ts";
import { rtnQuantize } from "../../src/quant/weight_only/rtn.ts";
import { OptionError } from "../../src/errors.ts";
import { mulberry32, randnArray } from "../../src/rng.ts";

Deno.test("lut_gemv reference equals dequantized W times x (float64 oracle)", () => {
  const rng = mulberry32(1831);
  const rows = 20, cols = 96, m = 2;
  const W = { shape: [rows, cols], data: randnArray(rng, rows * cols) };
  const res = bcqQuantize(W, { bits: 3, groupSize: 32, rounds: 3 });
  const meta = res.meta as ReturnType<typeof bcqFromUniform>;
  const x = randnArray(rng, m * cols);
  const y = lutGemvRef(x, meta, { rows, cols, q: 3, groupSize: 32, m });
  const D = dequantizeBcq(meta).data;
  for (let b = 0; b < m; b++) {
    for (let n = 0; n < rows; n++) {
      let s = 0;
      for (let k = 0; k < cols; k++) s += D[n * cols + k] * x[b * cols + k];
      assert(Math.abs(s - y[b * rows + n]) <= 1e-5 * (1 + Math.abs(s)), `${b} ${n}`);
    }
  }
});

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("lut_gemv_test: SKIPPED — no WebGPU adapter");

Deno.test({
  name: "LUT-GEMV on WebGPU matches its CPU reference across shapes, batches, groups, offsets",
  ignore: !available,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const rng = mulberry32(1832);
    const cases: [number, number, number, number, number, boolean][] = [
      // rows, cols, q, groupSize, m, from a uniform grid (offsets)
      [1, 32, 1, -1, 1, false],
      [7, 64, 2, 32, 1, false],
      [300, 256, 3, 128, 1, false],
      [257, 96, 4, 32, 2, false],
      [512, 2048, 4, 128, 1, false],
      [64, 160, 3, -1, 3, false],
      [130, 128, 4, 64, 1, true],
      [33, 192, 3, -1, 2, true],
    ];
    for (const [rows, cols, q, gs, m, uniform] of cases) {
      const W = { shape: [rows, cols], data: randnArray(rng, rows * cols, { scale: 0.05 }) };
      const meta = uniform
        ? bcqFromUniform(rtnQuantize(W, { bits: q, groupSize: gs }).meta)
        : bcqQuantize(W, { bits: q, groupSize: gs, rounds: 2 }).meta as ReturnType<
          typeof bcqFromUniform
        >;
      const x = randnArray(rng, m * cols);
      const g = uploadLut(ctx, meta);
      try {
        const got = await gpuLutGemv(ctx, x, g, m);
        const want = lutGemvRef(x, meta, {
          rows,
          cols,
          q,
          groupSize: gs > 0 ? gs : cols,
          m,
        });
        const err = scaledErr(got, want);
        assertLess(err, 1e-5, `rows ${rows} cols ${cols} q ${q} g ${gs} m ${m}: ${err}`);
      } finally {
        releaseLut(ctx, g);
      }
    }
    const bad = bcqQuantize({ shape: [4, 48], data: randnArray(rng, 192) }, { bits: 2 }).meta;
    assertThrows(
      () => uploadLut(ctx, bad as ReturnType<typeof bcqFromUniform>),
      OptionError,
      "multiples of 32",
    );
  },
});
