import { assertLess } from "@std/assert";
import { getWebGPU, gpuAttention, gpuRope, webgpuAvailable } from "../../src/backend/webgpu.ts";
import { randomArray, scaledErr } from "../../src/backend/_webgpu_check.ts";
import { type AttentionOptions, attentionRef } from "../../kernels/attention.ts";
import { ropeRef, ropeTables } from "../../kernels/rope.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("attention_test: SKIPPED — no WebGPU adapter");
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

Deno.test({
  name: "RoPE (HF rotate-half, position offset) matches the CPU reference (tol 1e-6)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    for (
      const [T, heads, headDim, posOffset, theta] of [[1, 1, 8, 0, 10000], [5, 3, 64, 590, 10000], [
        17,
        2,
        128,
        3,
        500000,
      ]]
    ) {
      const tabs = ropeTables({ headDim, maxPos: posOffset + T, theta });
      const x = randomArray(T * heads * headDim, { seed: T + headDim });
      const o = { T, heads, headDim, posOffset };
      assertLess(scaledErr(await gpuRope(ctx, x, tabs, o), ropeRef(x, tabs, o)), 1e-6);
    }
    // a batch of 3 sequences of 4 rows: positions restart every `period` rows
    const tabs = ropeTables({ headDim: 16, maxPos: 4, theta: 10000 });
    const x = randomArray(12 * 2 * 16, { seed: 3 });
    const o = { T: 12, heads: 2, headDim: 16, posOffset: 0, period: 4 };
    const y = await gpuRope(ctx, x, tabs, o);
    assertLess(scaledErr(y, ropeRef(x, tabs, o)), 1e-6);
    const first = ropeRef(x.subarray(0, 4 * 32), tabs, { ...o, T: 4, period: 0 });
    assertLess(scaledErr(y.subarray(0, 4 * 32), first), 1e-6);
  },
});

Deno.test({
  name:
    "causal GQA attention over a KV cache, and over batches, matches the CPU reference (tol 1e-5)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const cases: AttentionOptions[] = [
      { T: 1, S: 300, nH: 4, nKV: 2, headDim: 64, posOffset: 299 }, // decode, 2 key blocks
      { T: 7, S: 20, nH: 6, nKV: 2, headDim: 32, posOffset: 13 }, // prefill on a cache
      { T: 3, S: 600, nH: 2, nKV: 1, headDim: 128, posOffset: 100 }, // S beyond the visible keys
      { T: 1, S: 1, nH: 1, nKV: 1, headDim: 4, posOffset: 0 },
      // calibration batches: sequences never attend to each other
      { T: 5, S: 5, nH: 4, nKV: 2, headDim: 16, posOffset: 0, batch: 3 },
      { T: 300, S: 300, nH: 2, nKV: 1, headDim: 8, posOffset: 0, batch: 2 },
    ];
    for (const a of cases) {
      const B = a.batch ?? 1;
      const q = randomArray(B * a.T * a.nH * a.headDim, { seed: 5 });
      const k = randomArray(B * a.S * a.nKV * a.headDim, { seed: 6, lo: -2, hi: 2 });
      const v = randomArray(B * a.S * a.nKV * a.headDim, { seed: 7 });
      const err = scaledErr(await gpuAttention(ctx, { q, k, v }, a), attentionRef(q, k, v, a));
      assertLess(err, 1e-5, `${JSON.stringify(a)}: ${err}`);
    }
  },
});
