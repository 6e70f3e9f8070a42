/**
 * Fake-quant overhead per forward (issue 14's speed item) on stories260K, with and without
 * activation specs in the same run: CPU host-forward tokens/s of one batch of `--batch` × 512
 * tokens, and (when a WebGPU adapter exists, lavapipe included; `--cpu-only` skips it) the
 * GPU-resident decoder's tokens/s for a 512-token prefill — FP, A8 per-token specs at every
 * linear input, ZeroQuant's A8 (`grid: "deepspeed"` per token), QRazor A4KV4 g16 (INT16 per-tensor
 * activations and INT8 per-tensor K/V razored to 4 bits), LLM.int8() (`linearProduct` spec),
 * and QRazor through the host hooks (the escape hatch: CPU only). Best of `--reps`; each row's
 * ratio is against FP on the same backend. Timings are indicative on shared cores.
 *
 * Measured (2 × 512 tokens, best of 3, 2 cores shared with 7 other jobs, lavapipe): CPU FP
 * 1,855 tokens/s, A8 specs 1,219 (1.52× FP's time), ZeroQuant A8 1,129 (1.64×), QRazor A4KV4
 * 969 (1.91×), LLM.int8() spec 1,724 (1.08×), QRazor as hooks 799 (2.32×); WebGPU resident FP
 * 63 tokens/s, A8 specs 58 (1.08×), ZeroQuant A8 48 (1.30×), QRazor A4KV4 55 (1.14×),
 * LLM.int8() 62 (1.01×); the hooks model is not resident. The CPU overhead is the TypeScript
 * fake-quant reference itself (~180 ns per element). An earlier revision timed hook models
 * without their hooks (`forward` applies `model.hooks` only when passed, as evaluators do).
 *
 * `--lkd-tokens N` times one LKD step (forward, backward, Adam) of a TinyLlama-shaped block
 * (hidden 2048, 32/4 heads, ff 5632; products on the CPU backend in float32, the rest float64).
 * Measured at 64 tokens: 73 s per step with the test suite running on the same 2 shared cores
 * (an earlier, quieter revision measured 6.9 s), so the number mostly says how loaded the
 * machine was.
 *
 * Usage: `deno run -A --unstable-webgpu bench/wa_bench.ts [--batch N] [--reps N] [--cpu-only]
 * [--lkd-tokens N]`.
 * @module
 */
import { parseArgs } from "node:util";
import { defaultModelPath } from "../src/_paths.ts";
import { cpuBackend } from "../src/backend/cpu.ts";
import { forward } from "../src/models/decoder.ts";
import { loadModel } from "../src/models/load.ts";
import type { Model } from "../src/models/model.ts";
import { applyQllmConfig, resolveQllmConfig } from "../src/quant/pipeline/qllm_config.ts";

const { values: f } = parseArgs({
  args: Deno.args,
  options: {
    batch: { type: "string", default: "4" },
    reps: { type: "string", default: "3" },
    "cpu-only": { type: "boolean", default: false },
    "lkd-tokens": { type: "string" },
  },
});
const B = Number(f.batch), reps = Number(f.reps), T = 512;
const model = await loadModel(await defaultModelPath());
const ids = Array.from({ length: B * T }, (_, i) => (i * 37 + 5) % model.config.vocabSize);
const QRAZOR = {
  a_per_tensor: true,
  a_per_token: false,
  a_qrazor: true,
  a_qrazor_bits: 4,
  a_qrazor_group: 16,
  bits_k: 8,
  k_qrazor: true,
  k_qrazor_group: 16,
  bits_v: 8,
  v_qrazor: true,
  v_qrazor_group: 16,
};
const variants: [string, Record<string, unknown>, { hostHooks?: boolean }?][] = [
  ["FP32 (no specs)", {}],
  ["A8 per-token specs at every linear", { bits_a: 8 }],
  ["ZeroQuant A8 (deepspeed grid per token)", { zeroquant: true, bits_a: 8 }],
  ["QRazor A4KV4 g16 (INT16/INT8 bases, SDR)", QRAZOR],
  ["LLM.int8() product spec (threshold 6)", { llm_int8: true }],
  ["QRazor A4KV4 g16 as host hooks (escape hatch)", QRAZOR, { hostHooks: true }],
];
const models: Model[] = [];
for (const [, cfg, o] of variants) {
  models.push((await applyQllmConfig(model, resolveQllmConfig(cfg), o ?? {})).model);
}

async function best(run: () => Promise<void>): Promise<number> {
  let b = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    await run();
    b = Math.min(b, (performance.now() - t0) / 1000);
  }
  return b;
}

await forward(model, ids, { batch: B, backend: cpuBackend }); // warm-up (JIT, weight loading)
const rows: string[] = [];
let fpCpu = 0;
for (let v = 0; v < variants.length; v++) {
  const s = await best(async () => {
    // model.hooks apply only when passed (as the evaluators do)
    await forward(models[v], ids, { batch: B, backend: cpuBackend, hooks: models[v].hooks });
  });
  const tps = (B * T) / s;
  if (v === 0) fpCpu = tps;
  rows.push(
    `cpu    ${variants[v][0]}: ${tps.toFixed(0)} tokens/s (${(fpCpu / tps).toFixed(2)}× FP's time)`,
  );
  console.log(rows[rows.length - 1]);
}

const { webgpuAvailable } = await import("../src/backend/webgpu.ts");
if (!f["cpu-only"] && (await webgpuAvailable({ allowFallback: true }))) {
  const { webgpuBackend } = await import("../src/backend/webgpu.ts");
  const { residentDecoder, residentUnsupported } = await import("../src/models/resident.ts");
  const gpu = await webgpuBackend({ allowFallback: true });
  let fpGpu = 0;
  for (let v = 0; v < variants.length; v++) {
    const why = residentUnsupported(models[v], gpu, { capacity: T });
    if (why) {
      console.log(`webgpu ${variants[v][0]}: not resident (${why})`);
      continue;
    }
    // one resident prefill of T tokens per rep (a fresh cache), the decoder built outside the timing
    const w = await residentDecoder(models[v], gpu, { capacity: T });
    await w.step(ids.slice(0, T));
    w.release();
    let b = Infinity;
    for (let r = 0; r < reps; r++) {
      const dec = await residentDecoder(models[v], gpu, { capacity: T });
      const t0 = performance.now();
      await dec.step(ids.slice(0, T));
      b = Math.min(b, (performance.now() - t0) / 1000);
      dec.release();
    }
    const tps = T / b;
    if (v === 0) fpGpu = tps;
    console.log(
      `webgpu ${variants[v][0]}: ${tps.toFixed(0)} tokens/s resident (${
        (fpGpu / tps).toFixed(2)
      }× FP's time)`,
    );
  }
} else console.log("webgpu: skipped (no adapter or --cpu-only)");

// LKD seconds per step for a TinyLlama-shaped block (hidden 2048, 32/4 heads, ff 5632), one
// sequence of `--lkd-tokens` tokens, products on the CPU backend (float32), element-wise float64.
if (f["lkd-tokens"]) {
  const { blockForward, blockBackward, Adam, LKD_LINEARS } = await import(
    "../src/quant/weight_activation/lkd.ts"
  );
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
