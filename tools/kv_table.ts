/**
 * stories260K KV-cache table: TinyStories perplexity (FP / KIVI-4 / KIVI-2; prefill_with_quant
 * false) both token by token through the cache (`kvChunk` 1) and with one prefill per window (the
 * reference's eval protocol), cache bytes at the model's context, and the needle grid (mean answer
 * log-probability and exact match, FP vs KIVI-2, prefill_with_quant true as in the seed).
 *
 * `deno run -A tools/kv_table.ts [--nsamples 4] [--html out/plots/needle_kv.html]`
 * KIVI runs with the reference's group 32 / R 128 for K; V's groups are 8 channels (the head size).
 * @module
 */
import { parseArgs } from "node:util";
import { loadModel } from "../src/models/load.ts";
import { perplexity } from "../src/eval/perplexity.ts";
import { needleEval } from "../src/eval/needle.ts";
import { cacheBytes, denseCacheBytes, kvLabel, type KVSpec } from "../src/quant/kv/cache.ts";
import { needleHeatmap } from "../src/viz/needle_heatmap.ts";
import { show } from "../src/viz/display.ts";

const { values: o } = parseArgs({
  args: Deno.args,
  options: { nsamples: { type: "string" }, html: { type: "string" }, model: { type: "string" } },
});
const m = await loadModel(
  o.model ?? new URL("../../shared/data/models/stories260K-hf", import.meta.url).pathname,
);
const nsamples = Number(o.nsamples ?? 4);
const specs: KVSpec[] = [
  { method: "fp" },
  { method: "kivi", bits: 4, vGroupSize: 8 },
  { method: "kivi", bits: 2, vGroupSize: 8 },
];
const n = m.config.maxPositions;
console.log(
  `| Method | ppl (decode, kvChunk 1) | ppl (one prefill) | bytes @${n} | B/token/layer |`,
);
console.log("|---|---|---|---|---|");
for (const kv of specs) {
  const q = kv.method === "fp" ? undefined : kv;
  const a = await perplexity(m, "tinystories", { nsamples, kv: q ?? { method: "fp" } });
  const b = await perplexity(m, "tinystories", { nsamples, kv: q, kvChunk: n });
  const by = cacheBytes(m.config, kv, n);
  console.log(
    `| ${kvLabel(kv)} | ${a.ppl.toFixed(4)} | ${b.ppl.toFixed(4)} | ${by} | ${
      (by / n / m.config.numLayers).toFixed(1)
    } |`,
  );
}
console.log(`f16 cache @${n}: ${denseCacheBytes(m.config, n, 2)} B`);
const grids = [];
for (const kv of [specs[0], { ...specs[2], prefillWithQuant: true } as KVSpec]) {
  const r = await needleEval(m, { kv: kv.method === "fp" ? undefined : kv });
  grids.push({ ...r, label: kvLabel(kv) });
  console.log(`needle ${kvLabel(kv)}: depths ${r.depths.join(" ")}`);
  r.contextLengths.forEach((c, i) =>
    console.log(
      `  ${c}: logp ${r.logProb[i].map((x) => x.toFixed(3)).join(" ")} | acc ${
        r.accuracy[i].join(" ")
      }`,
    )
  );
}
if (o.html) await show(needleHeatmap(grids, { metric: "logProb" }), { file: o.html });

// Cache memory of a Llama-2-7B-shaped config (32 layers, 32 KV heads × 128, fp16 as the
// reference runs it), from the same accounting.
const llama7b = { ...m.config, numLayers: 32, numKvHeads: 32, numHeads: 32, headDim: 128 };
const GiB = 2 ** 30;
console.log("| Llama-2-7B cache (fp16) | 4k | 32k | 128k |");
console.log("|---|---|---|---|");
for (const kv of [specs[0], { method: "kivi", bits: 4 }, { method: "kivi", bits: 2 }] as KVSpec[]) {
  const row = [4096, 32768, 131072].map((c) =>
    (cacheBytes(llama7b, kv, c, { floatBytes: 2 }) / GiB).toFixed(3) + " GiB"
  );
  console.log(`| ${kvLabel(kv)} | ${row.join(" | ")} |`);
}

// Decode speed at context 512 (host forward, CPU): 256 prompt tokens, 255 greedy new tokens.
const { generate } = await import("../src/eval/generate.ts");
const prompt = [1, ...Array.from({ length: 255 }, (_, i) => 3 + ((i * 37) % 500))];
for (const kv of specs) {
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
