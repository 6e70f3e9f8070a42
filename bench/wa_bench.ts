/**
 * Fake-quant overhead per forward (issue 14's speed item) on stories260K: host-forward tokens/s
 * of one batch of `--batch` × 512 tokens for FP, W8A8 per-token specs at every linear input
 * (`QuantPoints`), QRazor W4A4KV4 hooks (host), LLM.int8() (int8 product hook) — same run,
 * best of `--reps`. With `--webgpu` (and an adapter) the resident decoder's perplexity windows
 * are timed with and without the W8A8 specs too. Timings are indicative on shared cores.
 *
 * Measured (4 × 512 tokens, best of 5, 2 shared cores, indicative): FP32 18,688 tokens/s, W8A8
 * specs 9,447, QRazor A4KV4 hooks 16,807, LLM.int8() 21,094 (stories260K's products are tiny:
 * the JS int8 loop beats the backend call); LKD step of a TinyLlama-shaped block at 64 tokens
 * 6.9 s (forward, backward and Adam; products on the CPU backend). No WebGPU adapter here.
 *
 * `--lkd-tokens N` times one LKD step (forward, backward, Adam) of a TinyLlama-shaped block.
 *
 * Usage: `deno run -A --unstable-webgpu bench/wa_bench.ts [--batch N] [--reps N] [--webgpu]
 * [--lkd-tokens N]`.
 * @module
 */
import { parseArgs } from "node:util";
import { defaultModelPath } from "../src/_paths.ts";
import { forward } from "../src/models/decoder.ts";
import { loadModel } from "../src/models/load.ts";
import type { Model } from "../src/models/model.ts";
import { perplexity } from "../src/eval/perplexity.ts";
import { applyQllmConfig, resolveQllmConfig } from "../src/quant/pipeline/qllm_config.ts";

const { values: f } = parseArgs({
  args: Deno.args,
  options: {
    batch: { type: "string", default: "4" },
    reps: { type: "string", default: "3" },
    webgpu: { type: "boolean", default: false },
    "lkd-tokens": { type: "string" },
  },
});
const B = Number(f.batch), reps = Number(f.reps), T = 512;
const model = await loadModel(await defaultModelPath());
const ids = Array.from({ length: B * T }, (_, i) => (i * 37 + 5) % model.config.vocabSize);
const variants: [string, Record<string, unknown>][] = [
  ["FP32", {}],
  ["W8A8 specs (per-token A8 at every linear)", { bits_a: 8 }],
  ["QRazor A4KV4 hooks (g16)", {
    a_qrazor: true,
    a_qrazor_bits: 4,
    a_qrazor_group: 16,
    bits_k: 8,
    k_qrazor: true,
    bits_v: 8,
    v_qrazor: true,
  }],
  ["LLM.int8() product hook", { llm_int8: true }],
];
await forward(model, ids, { batch: B }); // warm-up (JIT, weight loading)
for (const [name, cfg] of variants) {
  const m: Model = (await applyQllmConfig(model, resolveQllmConfig(cfg))).model;
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    await forward(m, ids, { batch: B });
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  console.log(
    `cpu  ${name}: ${(B * T / best).toFixed(0)} tokens/s (${best.toFixed(3)} s per ${B}×${T})`,
  );
}
if (f.webgpu) {
  const { setBackend } = await import("../src/backend/device.ts");
  const { webgpuBackend } = await import("../src/backend/webgpu.ts");
  setBackend(await webgpuBackend());
  for (const [name, cfg] of variants.slice(0, 2)) {
    const m = (await applyQllmConfig(model, resolveQllmConfig(cfg))).model;
    const r = await perplexity(m, "tinystories", { nsamples: 8, seqlen: T });
    console.log(
      `webgpu ${name}: ${(8 * T / r.seconds).toFixed(0)} tokens/s (resident ${r.resident})`,
    );
  }
}

// LKD seconds per step for a TinyLlama-shaped block (hidden 2048, 32/4 heads, ff 5632), one
// sequence of `--lkd-tokens` tokens, products on the CPU backend (float32), element-wise float64.
if (f["lkd-tokens"]) {
  const { blockForward, blockBackward, Adam, LKD_LINEARS } = await import(
    "../src/quant/weight_activation/lkd.ts"
  );
  const { cpuBackend } = await import("../src/backend/cpu.ts");
  const Tn = Number(f["lkd-tokens"]), d = 2048, nH = 32, nKV = 4, hd = 64, ff = 5632;
  const rnd = (n: number, s: number) =>
    Float64Array.from({ length: n }, () => (Math.random() - 0.5) * s);
  const shapes: Record<string, [number, number]> = {
    q: [nH * hd, d],
    k: [nKV * hd, d],
    v: [nKV * hd, d],
    o: [d, nH * hd],
    gate: [ff, d],
    up: [ff, d],
    down: [d, ff],
  };
  const W = Object.fromEntries(
    Object.entries(shapes).map(([k, [r, c]]) => [k, { data: rnd(r * c, 0.04), rows: r, cols: c }]),
  );
  // deno-lint-ignore no-explicit-any
  const P = { W: W as any, g1: new Float64Array(d).fill(1), g2: new Float64Array(d).fill(1) };
  const inv = Float64Array.from({ length: hd / 2 }, (_, i) => 1 / 10000 ** ((2 * i) / hd));
  const dims = { B: 1, T: Tn, d, nH, nKV, hd, eps: 1e-5, invFreq: inv };
  const h = rnd(Tn * d, 2);
  const adam = new Adam(1e-5);
  const be = cpuBackend;
  const t0 = performance.now();
  const tape = await blockForward(P, h, dims, { backend: be });
  const { dW } = await blockBackward(P, tape, rnd(Tn * d, 1e-3), dims);
  adam.step(Object.fromEntries(LKD_LINEARS.map((k) => [k, P.W[k].data])), dW);
  console.log(
    `LKD TinyLlama-shaped block, ${Tn} tokens: ${
      ((performance.now() - t0) / 1000).toFixed(2)
    } s per step`,
  );
}
