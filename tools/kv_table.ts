/**
 * stories260K KV-cache table: TinyStories perplexity (FP / KIVI-4 / KIVI-2 / KVQuant-4/3/2-bit-1%;
 * prefill_with_quant false) both token by token through the cache (`kvChunk` 1) and with one
 * prefill per window (the reference's eval protocol), cache bytes at the model's context; a
 * weight + KV row (GPTQ-4 weights with the FP, KIVI-2 and KVQuant-2 caches); the needle grid (mean
 * answer log-probability and exact match, FP vs KIVI-2 vs KVQuant-2-1%, prefill_with_quant true
 * as in the seed); the Llama-2-7B-shaped cache memory from the same accounting; decode speed.
 *
 * `deno run -A tools/kv_table.ts [--nsamples 4] [--calib-nsamples 16] [--html out/plots/needle_kv.html]
 *   [--no-decode]`
 * KIVI runs with the reference's group 32 / R 128 for K; V's groups are 8 channels (the head size).
 * KVQuant's quantizers are calibrated on `--calib-nsamples` (default 16, the reference's) TinyStories
 * train windows of 512 tokens, uniform k-means weights, one codebook per layer, 1% outliers, the
 * first token kept in full precision, keys before RoPE.
 * @module
 */
import { parseArgs } from "node:util";
import { loadModel } from "../src/models/load.ts";
import type { Model } from "../src/models/model.ts";
import { perplexity } from "../src/eval/perplexity.ts";
import { needleEval } from "../src/eval/needle.ts";
import { cacheBytes, denseCacheBytes, kvLabel, type KVSpec } from "../src/quant/kv/cache.ts";
import { calibrateKvQuant } from "../src/quant/pipeline/kv_calibration.ts";
import { calibrationSet } from "../src/quant/pipeline/calibration.ts";
import { quantize } from "../src/quant/pipeline/pipeline.ts";
import { gptq } from "../src/quant/weight_only/gptq.ts";
import { needleHeatmap } from "../src/viz/needle_heatmap.ts";
import { show } from "../src/viz/display.ts";

const { values: o } = parseArgs({
  args: Deno.args,
  options: {
    nsamples: { type: "string" },
    "calib-nsamples": { type: "string" },
    html: { type: "string" },
    model: { type: "string" },
    "no-decode": { type: "boolean" },
  },
});
const m = await loadModel(
  o.model ?? new URL("../../shared/data/models/stories260K-hf", import.meta.url).pathname,
);
const nsamples = Number(o.nsamples ?? 4);
const calibN = Number(o["calib-nsamples"] ?? 16);
const t0 = performance.now();
const secs = () => ((performance.now() - t0) / 1000).toFixed(0) + " s";

/** KVQuant-`bits`-1% of `model`, calibrated on TinyStories. */
async function kvquant(model: Model, bits: number): Promise<KVSpec> {
  const quantizer = await calibrateKvQuant(model, {
    bits,
    dataset: "tinystories",
    nsamples: calibN,
  });
  return { method: "kvquant", quantizer };
}

const specs: KVSpec[] = [
  { method: "fp" },
  { method: "kivi", bits: 4, vGroupSize: 8 },
  { method: "kivi", bits: 2, vGroupSize: 8 },
  await kvquant(m, 4),
  await kvquant(m, 3),
  await kvquant(m, 2),
];
console.log(`(calibrated in ${secs()})`);
const n = m.config.maxPositions;

async function row(model: Model, kv: KVSpec, prefix = "") {
  const q = kv.method === "fp" ? undefined : kv;
  const a = await perplexity(model, "tinystories", { nsamples, kv: q ?? { method: "fp" } });
  const b = await perplexity(model, "tinystories", { nsamples, kv: q, kvChunk: n });
  const by = cacheBytes(model.config, kv, n);
  console.log(
    `| ${prefix}${kvLabel(kv)} | ${a.ppl.toFixed(4)} | ${b.ppl.toFixed(4)} | ${by.toFixed(0)} | ${
      (by / n / model.config.numLayers).toFixed(1)
    } |`,
  );
}

console.log(
  `| Method | ppl (decode, kvChunk 1) | ppl (one prefill) | bytes @${n} | B/token/layer |`,
);
console.log("|---|---|---|---|---|");
for (const kv of specs) await row(m, kv);
console.log(`f16 cache @${n}: ${denseCacheBytes(m.config, n, 2)} B  (${secs()})`);

// Weights and KV cache in one run: GPTQ-4 (128 TinyStories windows of 256) + each cache; the
// KVQuant quantizer is calibrated on the quantized model.
const calib = await calibrationSet(m, "tinystories", { nsamples: 128, seqlen: 256, seed: 0 });
const w4 = await quantize(m, gptq({ bits: 4 }), { calib });
for (const kv of [specs[0], specs[2], await kvquant(w4, 2)]) await row(w4, kv, "GPTQ-4 + ");
console.log(`(${secs()})`);

const grids = [];
for (
  const kv of [
    specs[0],
    { ...specs[2], prefillWithQuant: true },
    { ...specs[5], prefillWithQuant: true },
  ] as KVSpec[]
) {
  const r = await needleEval(m, { kv: kv.method === "fp" ? undefined : kv });
  grids.push({ ...r, label: kvLabel(kv) });
  const acc = r.accuracy.flat().reduce((a, b) => a + b, 0) / r.accuracy.flat().length;
  const lp = r.logProb.flat().reduce((a, b) => a + b, 0) / r.logProb.flat().length;
  console.log(
    `needle ${kvLabel(kv)}: depths ${r.depths.join(" ")}; mean exact ${acc.toFixed(3)}, ` +
      `mean logp ${lp.toFixed(3)}`,
  );
  r.contextLengths.forEach((c, i) =>
    console.log(
      `  ${c}: logp ${r.logProb[i].map((x) => x.toFixed(3)).join(" ")} | acc ${
        r.accuracy[i].join(" ")
      }`,
    )
  );
}
console.log(`(${secs()})`);
if (o.html) await show(needleHeatmap(grids, { metric: "logProb" }), { file: o.html });

// Cache memory of a Llama-2-7B-shaped config (32 layers, 32 KV heads × 128, fp16 as the
// reference runs it), from the same accounting (KVQuant: the expected 1% of K outliers and the
// quantile rule's 42 of 4096 per V row).
const llama7b = { ...m.config, numLayers: 32, numKvHeads: 32, numHeads: 32, headDim: 128 };
const GiB = 2 ** 30;
console.log("| Llama-2-7B cache (fp16) | 4k | 32k | 128k | B/token/layer |");
console.log("|---|---|---|---|---|");
const big: KVSpec[] = [
  specs[0],
  { method: "kivi", bits: 4 },
  { method: "kivi", bits: 2 },
  { method: "kvquant", bits: 4 },
  { method: "kvquant", bits: 3 },
  { method: "kvquant", bits: 2 },
];
for (const kv of big) {
  const row = [4096, 32768, 131072].map((c) =>
    (cacheBytes(llama7b, kv, c, { floatBytes: 2 }) / GiB).toFixed(3) + " GiB"
  );
  const c = 131072;
  const per = cacheBytes(llama7b, kv, c, { floatBytes: 2 }) / c / 32;
  console.log(`| ${kvLabel(kv)} | ${row.join(" | ")} | ${per.toFixed(1)} |`);
}

if (!o["no-decode"]) {
  // Decode speed at context 512 (host forward, CPU): 256 prompt tokens, 255 greedy new tokens.
  const { generate } = await import("../src/eval/generate.ts");
  const prompt = [1, ...Array.from({ length: 255 }, (_, i) => 3 + ((i * 37) % 500))];
  for (const kv of [specs[0], specs[2], specs[5]]) {
    const g = await generate(m, prompt, {
      maxNewTokens: 255,
      stopAtEos: false,
      resident: false,
      kv: kv.method === "fp" ? undefined : kv,
    });
    console.log(
      `decode ${kvLabel(kv)}: ${g.tokensPerSecond.toFixed(1)} tok/s (${g.ids.length} tokens)`,
    );
  }
}
