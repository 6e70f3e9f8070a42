/**
 * quantlab's CPU forward beside llama.cpp (node-llama-cpp 3.21.1, prebuilt, CPU) on the same
 * weights, same run: each model is exported to GGUF by quantlab and run by both runtimes.
 * Rows: stories260K FP (F32 GGUF) and RTN 8-bit g32 sym with f16 scales (Q8_0, bit-exact where
 * rows are multiples of 32; the 172-wide down_proj stays F32), and a TinyLlama-shaped synthetic
 * checkpoint (`--layers` blocks of the real shapes, stories260K's 512-token vocabulary, F32). For each: prompt + greedy decode
 * (tokens/s over prompt + new tokens, and the new tokens alone) and a teacher-forced pass (the
 * log-prob of each next token: the perplexity work), with the largest |Δ log p| between the two.
 * llama.cpp runs with `--threads` threads (default 1: on this 2-core machine its default thread
 * count is several times slower); quantlab with onnxruntime's defaults. Ratios are quantlab ÷ llama.cpp
 * time (< 1: quantlab faster). Needs `cd tools/llama_peer && npm ci`.
 *
 * Usage: `deno run -A bench/llama_peer_bench.ts [--layers 2] [--threads 2] [--new 64]`
 * @module
 */
import { parseArgs } from "node:util";
import { dataRoot } from "../src/_paths.ts";
import { exportModel } from "../src/io/export.ts";
import { generate } from "../src/eval/generate.ts";
import { evalTokens } from "../src/eval/perplexity.ts";
import { forward } from "../src/models/decoder.ts";
import { getTokenizer, loadModel } from "../src/models/load.ts";
import type { Model } from "../src/models/model.ts";
import { withF16Scales } from "../src/quant/core/f16_grid.ts";
import { quantize } from "../src/quant/pipeline/pipeline.ts";
import { rtn } from "../src/quant/weight_only/rtn.ts";
import { PRESETS, writeSyntheticCheckpoint } from "../tools/synthetic_checkpoint.ts";
import { peerInstalled, runPeer } from "../tools/llama_peer/run.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    layers: { type: "string", default: "2" },
    threads: { type: "string", default: "1" },
    new: { type: "string", default: "64" },
  },
});
if (!(await peerInstalled())) {
  console.log("node-llama-cpp is not installed: cd tools/llama_peer && npm ci");
  Deno.exit(0);
}
const threads = Number(flags.threads), nNew = Number(flags.new);

const root = await Deno.makeTempDir({ prefix: "quantlab_peer_bench_" });
const stories = await loadModel(`${dataRoot()}/models/stories260K-hf`);
const ids = (await evalTokens(await getTokenizer(stories), "tinystories")).ids;
const prompt = ids.slice(0, 64), teacher = ids.slice(64, 64 + 192);

async function row(name: string, model: Model, dir: string): Promise<void> {
  await exportModel(model, dir, { format: "gguf" });
  const out = await runPeer({
    model: `${dir}/model.gguf`,
    prompt,
    n: nNew,
    teacher,
    kvF32: true,
    threads,
    ignoreEos: true,
  });
  await generate(model, prompt.slice(0, 8), { maxNewTokens: 2, addBos: false }); // warm-up
  let t = performance.now();
  const g = await generate(model, prompt, { maxNewTokens: nNew, addBos: false, stopAtEos: false });
  const qGen = (performance.now() - t) / 1000;
  t = performance.now();
  const logits = await forward(model, [...prompt, ...teacher.slice(0, -1)]);
  const qTeacher = (performance.now() - t) / 1000;
  const V = model.config.vocabSize;
  let maxDiff = 0;
  for (let i = 0; i < teacher.length; i++) {
    const row = logits.data.subarray((prompt.length - 1 + i) * V, (prompt.length + i) * V);
    let m = -Infinity, z = 0;
    for (const v of row) m = Math.max(m, v);
    for (const v of row) z += Math.exp(v - m);
    const lp = row[teacher[i]] - m - Math.log(z);
    maxDiff = Math.max(maxDiff, Math.abs(lp - out.logprobs[i]));
  }
  let same = 0;
  while (same < nNew && g.ids[same] === out.greedy[same]) same++;
  const tps = (s: number) => ((prompt.length + nNew) / s).toFixed(0);
  console.log(
    `${name}: generate ${prompt.length}+${nNew} tokens: quantlab ${qGen.toFixed(2)} s ` +
      `(${tps(qGen)} tok/s), llama.cpp ${out.genSeconds.toFixed(2)} s (${
        tps(out.genSeconds)
      } tok/s)` +
      ` → ratio ${(qGen / out.genSeconds).toFixed(2)}; llama.cpp made ${out.greedy.length} ` +
      `tokens, greedy agree on the first ${same}`,
  );
  console.log(
    `${name}: teacher-forced ${prompt.length + teacher.length - 1} tokens: quantlab ` +
      `${qTeacher.toFixed(3)} s, llama.cpp ${out.teacherSeconds!.toFixed(3)} s → ratio ${
        (qTeacher / out.teacherSeconds!).toFixed(2)
      }; max |Δ log p| ${maxDiff.toExponential(2)}`,
  );
}

try {
  await row("stories260K F32", stories, `${root}/s_f32`);
  const q8 = await quantize(
    stories,
    withF16Scales(rtn({ bits: 8, groupSize: 32, sym: true, partialGroups: true })),
    {},
  );
  await row("stories260K Q8_0 (RTN w8 g32, f16 scales)", q8, `${root}/s_q8`);
  const syn = await writeSyntheticCheckpoint(`${root}/tinyllama`, {
    // TinyLlama's shapes with stories260K's 512-token vocabulary (the GGUF carries tok512.bin)
    preset: { ...PRESETS["tinyllama-1.1b"], vocab_size: 512 },
    layers: Number(flags.layers),
    dtype: "f32",
  });
  const tl = await loadModel(syn.dir, { tokenizer: `${dataRoot()}/models/stories260K/tok512.bin` });
  await row(`TinyLlama-shaped ${flags.layers} blocks F32`, tl, `${root}/tl_f32`);
} finally {
  await Deno.remove(root, { recursive: true });
}
