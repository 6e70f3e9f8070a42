import { assertAlmostEquals, assertLess } from "@std/assert";
import {
  getWebGPU,
  gpuLayernorm,
  gpuRmsnorm,
  gpuSoftmax,
  webgpuAvailable,
} from "../../src/backend/webgpu.ts";
import { maxRelErr, randomArray, scaledErr } from "../../src/backend/_webgpu_check.ts";
import { rmsnormRef } from "../../kernels/rmsnorm.ts";
import { layernormRef } from "../../kernels/layernorm.ts";
import { softmaxRef } from "../../kernels/softmax.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("norm_test: SKIPPED — no WebGPU adapter");
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };
const SHAPES = [[1, 5], [7, 300], [3, 4096], [65, 257]];

Deno.test({
  name: "RMSNorm and LayerNorm match the CPU reference (tol 1e-5 of max|y|)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    for (const [rows, d] of SHAPES) {
      const x = randomArray(rows * d, { seed: d, lo: -3, hi: 3 });
      const w = randomArray(d, { seed: 2 }), b = randomArray(d, { seed: 3 });
      const o = { rows, d, eps: 1e-6 };
      assertLess(scaledErr(await gpuRmsnorm(ctx, x, w, o), rmsnormRef(x, w, o)), 1e-5);
      const y = await gpuLayernorm(ctx, x, { weight: w, bias: b }, o);
      assertLess(scaledErr(y, layernormRef(x, w, b, o)), 1e-5);
    }
  },
});

Deno.test({
  name: "row softmax matches the CPU reference (relative tol 1e-5) and sums to 1",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    for (const [rows, d] of SHAPES) {
      const x = randomArray(rows * d, { seed: d + 1, lo: -8, hi: 8 });
      const y = await gpuSoftmax(ctx, x, { rows, d });
      assertLess(maxRelErr(y, softmaxRef(x, { rows, d }), 0), 1e-5);
      let s = 0;
      for (let i = 0; i < d; i++) s += y[i];
      assertAlmostEquals(s, 1, 1e-5);
    }
  },
});
