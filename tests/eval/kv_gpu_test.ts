/**
 * KIVI on the WebGPU backend: the cache mirrors its packed groups on the device and decode
 * attention reads them there (`kernels/kv_attention.ts`). Oracle: the same cache on the CPU
 * backend (host dequantize-then-attend, `kivi.ts` unchanged) — greedy stories260K generation
 * gives the same tokens, and the logits of the first steps agree within 1e-4. The bus counter is
 * checked against a closed form of what each step uploads and reads back.
 */
import { assert, assertEquals, assertLess } from "@std/assert";
import { cpuBackend } from "../../src/backend/cpu.ts";
import { getBackend, setBackend } from "../../src/backend/device.ts";
import { webgpuAvailable, type WebGPUBackend, webgpuBackend } from "../../src/backend/webgpu.ts";
import type { Backend } from "../../src/backend/backend.ts";
import { forward } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import { KiviCache, type KiviOptions } from "../../src/quant/kv/kivi.ts";
import { generate } from "../../src/eval/generate.ts";
import { perplexity } from "../../src/eval/perplexity.ts";
import { wordsPerGroup } from "../../src/quant/kv/packing.ts";

const MODEL = new URL("../../../shared/data/models/stories260K-hf", import.meta.url).pathname;
let skip = "";
if (!(await webgpuAvailable({ allowFallback: true }))) skip = "no WebGPU adapter";
else {
  try {
    await Deno.stat(`${MODEL}/config.json`);
  } catch {
    skip = `no stories260K at ${MODEL}`;
  }
}
if (skip) console.log(`kv_gpu_test: SKIPPED — ${skip}`);
const opts = { ignore: skip !== "", sanitizeResources: false, sanitizeOps: false };

let model: Model | undefined;
const getModel = async () => model ??= await loadModel(MODEL);
let gpu: WebGPUBackend | undefined;
const gpuBe = async () => gpu ??= await webgpuBackend({ allowFallback: true });

/** Greedy decode through `forward` with a KIVI cache on `backend`: tokens and every logits row. */
async function greedy(
  m: Model,
  prompt: number[],
  steps: number,
  kivi: KiviOptions,
  backend: Backend,
): Promise<{ ids: number[]; logits: Float32Array[]; cache: KiviCache }> {
  const V = m.config.vocabSize;
  const cache = new KiviCache(m.config, kivi, prompt.length + steps);
  let last: Float32Array = (await forward(m, prompt, { cache, backend })).data.slice(-V);
  const ids: number[] = [], logits: Float32Array[] = [last];
  for (let i = 0; i < steps; i++) {
    let best = 0;
    for (let j = 1; j < V; j++) if (last[j] > last[best]) best = j;
    ids.push(best);
    last = (await forward(m, [best], { cache, backend })).data;
    logits.push(last);
  }
  return { ids, logits, cache };
}

const PROMPT = [1, 403, 407, 261, 378, 429, 285, 271, 263, 400, 299, 263, 395, 268, 269, 304];

for (const bits of [2, 4]) {
  Deno.test({
    name: `KIVI-${bits} greedy decode on WebGPU (packed device cache) equals the CPU path`,
    ...opts,
    fn: async () => {
      const m = await getModel();
      const cfg = m.config;
      // R = 8 < prompt − 1: the prefill packs 2 K blocks and 8 V rows and only its last R + 1
      // rows go to the device rings; the decode crosses 6 more blocks. G 4 → 2 groups per block.
      const kivi = { bits, groupSize: 4, vGroupSize: 8, residualLength: 8 };
      const steps = 48;
      const cpu = await greedy(m, PROMPT, steps, kivi, cpuBackend);
      const dev = await greedy(m, PROMPT, steps, kivi, await gpuBe());
      assertEquals(dev.ids, cpu.ids);
      let worst = 0;
      for (let i = 0; i < 16; i++) {
        let err = 0;
        for (let j = 0; j < cfg.vocabSize; j++) {
          err = Math.max(err, Math.abs(dev.logits[i][j] - cpu.logits[i][j]));
        }
        assertLess(err, 1e-4, `step ${i}: max |Δ logit| ${err}`);
        worst = Math.max(worst, err);
      }
      console.log(`KIVI-${bits}: max |Δ logit| over the first 16 steps ${worst.toExponential(2)}`);
      // The device copy ran (the CPU backend has none) and moved what the closed form says.
      assertEquals(cpu.cache.deviceTraffic(), undefined);
      const t = dev.cache.deviceTraffic()!;
      assert(t, "the WebGPU run has a device copy");
      const kw = cfg.numKvHeads * cfg.headDim, qw = cfg.numHeads * cfg.headDim;
      const n = PROMPT.length + steps, R = 8;
      const kBlock = kw * (R / 4) * (wordsPerGroup(4, bits) * 4 + 8);
      const vRow = (kw / 8) * (wordsPerGroup(8, bits) * 4 + 8);
      const rows = Math.min(PROMPT.length, R + 1) + steps; // prefill's last R + 1 rows, then one per step
      const perLayer = rows * 2 * kw * 4 + // full-precision K/V rows
        Math.floor(n / R) * kBlock + Math.max(0, n - R) * vRow + // packed groups, once each
        steps * (qw * 4 + 48); // query + uniforms per decode step
      assertEquals(t.up, cfg.numLayers * perLayer);
      assertEquals(t.down, cfg.numLayers * steps * qw * 4);
      dev.cache.release();
      assertEquals(dev.cache.deviceTraffic(), undefined);
    },
  });
}

Deno.test({
  name: "generate(model, { kv: kivi }) on WebGPU gives the CPU's greedy tokens",
  ...opts,
  fn: async () => {
    const m = await getModel();
    const prev = getBackend();
    const kv = { method: "kivi" as const, bits: 2, vGroupSize: 8, residualLength: 32 };
    // (default groupSize 32; vGroupSize 8 because stories260K's heads have 8 channels)
    try {
      setBackend(cpuBackend);
      const a = await generate(m, "Once upon a time", { maxNewTokens: 40, kv });
      setBackend(await gpuBe());
      const b = await generate(m, "Once upon a time", { maxNewTokens: 40, kv });
      assertEquals(b.ids, a.ids);
      assert(a.ids.length > 32, `${a.ids.length} tokens`);
    } finally {
      setBackend(prev);
    }
  },
});

Deno.test({
  name: "perplexity with KIVI token by token on WebGPU equals the CPU's; device copies are freed",
  ...opts,
  fn: async () => {
    const m = await getModel();
    const prev = getBackend();
    const o = {
      seqlen: 32,
      nsamples: 1,
      kv: { method: "kivi" as const, bits: 2, groupSize: 4, vGroupSize: 8, residualLength: 8 },
    };
    try {
      setBackend(cpuBackend);
      const a = await perplexity(m, "tinystories", o);
      const be = await gpuBe();
      setBackend(be);
      const live0 = be.memory().liveBytes;
      const b = await perplexity(m, "tinystories", o);
      assertLess(Math.abs(b.ppl - a.ppl), 1e-4 * a.ppl, `${b.ppl} vs ${a.ppl}`);
      assertEquals(be.memory().liveBytes, live0, "GPU bytes not returned to the pool");
    } finally {
      setBackend(prev);
    }
  },
});

Deno.test({
  name: "a KIVI cache moved to another backend mid-sequence drops its device copy and stays exact",
  ...opts,
  fn: async () => {
    const m = await getModel();
    const kivi = { bits: 2, groupSize: 4, vGroupSize: 8, residualLength: 8 };
    const ids = PROMPT.slice(0, 12);
    const order: Backend[] = [await gpuBe(), await gpuBe(), cpuBackend, await gpuBe()];
    const ref = new KiviCache(m.config, kivi, 32), mixed = new KiviCache(m.config, kivi, 32);
    await forward(m, ids, { cache: ref, backend: cpuBackend });
    await forward(m, ids, { cache: mixed, backend: order[0] });
    for (let i = 1; i < order.length; i++) {
      const a = (await forward(m, [ids[i]], { cache: ref, backend: cpuBackend })).data;
      const b = (await forward(m, [ids[i]], { cache: mixed, backend: order[i] })).data;
      let err = 0;
      for (let j = 0; j < a.length; j++) err = Math.max(err, Math.abs(a[j] - b[j]));
      assertLess(err, 1e-4, `step ${i}`);
      assertEquals(mixed.deviceTraffic() !== undefined, i < 2, `device copy at step ${i}`);
    }
  },
});
