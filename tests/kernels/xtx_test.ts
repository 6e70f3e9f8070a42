import { assertLess } from "@std/assert";
import { getWebGPU, gpuXtx, webgpuAvailable } from "../../src/backend/webgpu.ts";
import { randomArray, scaledErr } from "../../src/backend/_webgpu_check.ts";
import { xtxRef } from "../../kernels/xtx.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("xtx_test: SKIPPED — no WebGPU adapter");
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

Deno.test({
  name: "XᵀX accumulation H = beta·H + alpha·XᵀX matches the CPU reference (tol 1e-5)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    for (const [n, d] of [[1, 3], [50, 150], [300, 257], [2048, 64]]) {
      const x = randomArray(n * d, { seed: n + d });
      const h0 = xtxRef(randomArray(n * d, { seed: 7 }), new Float32Array(d * d), {
        n,
        d,
        alpha: 1 / n,
      });
      const o = { n, d, alpha: 2 / n, beta: 0.5 };
      const got = await gpuXtx(ctx, x, h0, o);
      const err = scaledErr(got, xtxRef(x, h0, o));
      assertLess(err, 1e-5, `n=${n} d=${d}: ${err}`);
      // symmetric to the bit (mirror writes)
      for (let i = 0; i < d; i++) {
        for (let j = 0; j < i; j++) assertLess(Math.abs(got[i * d + j] - got[j * d + i]), 1e-30);
      }
    }
  },
});
