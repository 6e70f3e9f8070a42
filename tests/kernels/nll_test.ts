/**
 * The row NLL kernel (`kernels/nll.ts`) against its float64 reference: vocabularies from 5 to
 * 128,256 (Llama 3) and logits spread over ±30, target anywhere in the row. Tolerance 2e-5
 * absolute (an f32 log-sum-exp over 10⁵ terms; NLLs are O(1–10)). The greedy argmax kernel
 * (`kernels/argmax.ts`) against the first-index argmax, exactly.
 */
import { assertEquals, assertLess } from "@std/assert";
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
import { argmaxRef, argmaxWGSL } from "../../kernels/argmax.ts";

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

Deno.test({
  name: "argmax kernel: the first index of the maximum (ties, one element, 128k vocab)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const cases: Float32Array[] = [
      Float32Array.of(3),
      Float32Array.of(1, 5, 5, 2), // tie: index 1
      new Float32Array(300).fill(-7), // all equal: index 0
      randomArray(32000, { seed: 1, lo: -20, hi: 20 }),
      randomArray(128256, { seed: 2, lo: -20, hi: 20 }),
    ];
    const big = randomArray(50000, { seed: 3 });
    big[777] = 9, big[40000] = 9; // tie between two strided slices
    cases.push(big);
    for (const [k, x] of cases.entries()) {
      const pipe = pipeline(ctx, argmaxWGSL());
      const xb = upload(ctx, x), ib = upload(ctx, new Uint32Array(4));
      const tb = upload(ctx, new Uint32Array(8));
      await runAndRead(
        ctx,
        [{
          pipeline: pipe,
          bindGroup: bindGroup(ctx, pipe, [uniforms(ctx, [x.length, 5, 0, 0]), xb, ib, tb]),
          workgroups: [1, 1, 1],
        }],
        tb,
        32,
      );
      const ids = new Uint32Array(await runAndRead(ctx, [], ib, 4));
      const toks = new Uint32Array(await runAndRead(ctx, [], tb, 32));
      ctx.pool.release(xb, ib, tb);
      assertEquals(ids[0], argmaxRef(x), `case ${k}`);
      assertEquals(toks[5], argmaxRef(x), `case ${k} tokens[k]`);
    }
  },
});
