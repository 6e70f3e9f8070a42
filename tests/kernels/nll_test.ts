/**
 * The row NLL kernel (`kernels/nll.ts`) against its float64 reference: vocabularies from 5 to
 * 128,256 (Llama 3) and logits spread over ±30, target anywhere in the row. Tolerance 2e-5
 * absolute (an f32 log-sum-exp over 10⁵ terms; NLLs are O(1–10)).
 */
import { assertLess } from "@std/assert";
import {
  bindGroup,
  getWebGPU,
  grid,
  pipeline,
  runAndRead,
  scratch,
  uniforms,
  upload,
  webgpuAvailable,
} from "../../src/backend/webgpu.ts";
import { randomArray } from "../../src/backend/_webgpu_check.ts";
import { nllRef, nllWGSL } from "../../kernels/nll.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("nll_test: SKIPPED — no WebGPU adapter");
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

Deno.test({
  name: "row NLL kernel matches the float64 reference (abs tol 2e-5)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    for (const [rows, d] of [[1, 5], [7, 512], [3, 32000], [2, 128256]]) {
      const x = randomArray(rows * d, { seed: d, lo: -30, hi: 30 });
      const targets = Uint32Array.from({ length: rows }, (_, r) => (r * 7919 + 3) % d);
      const pipe = pipeline(ctx, nllWGSL());
      const yb = scratch(ctx, rows * 4);
      const xb = upload(ctx, x), tb = upload(ctx, targets);
      const y = new Float32Array(
        await runAndRead(
          ctx,
          [{
            pipeline: pipe,
            bindGroup: bindGroup(ctx, pipe, [uniforms(ctx, [rows, d, 0, 0]), xb, tb, yb]),
            workgroups: grid(ctx, rows),
          }],
          yb,
          rows * 4,
        ),
      );
      ctx.pool.release(xb, tb, yb);
      const ref = nllRef(x, targets, { rows, d });
      let worst = 0;
      for (let r = 0; r < rows; r++) worst = Math.max(worst, Math.abs(y[r] - ref[r]));
      assertLess(worst, 2e-5, `${rows}x${d}: ${worst}`);
    }
  },
});
