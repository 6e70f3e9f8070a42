/**
 * Task-evaluator speed on stories260K (CPU backend): PIQA's 3,676 log-likelihood requests
 * (1,838 items × 2 solutions) through the onnxruntime engine and the TypeScript forward, each
 * with and without shared-prefix reuse (onnxruntime: one pass per distinct input; TypeScript:
 * the KV cache), all in the same run, as requests/s and as ratios to the TypeScript forward with
 * reuse (the engine before the onnxruntime path); then the time of a full MMLU 5-shot pass
 * (57 subjects, 14,042 questions × 4 letters) on the default engine. Every mode must give the
 * same accuracy (the scores agree to float32 rounding).
 *
 * Run: `deno run -A bench/eval_tasks.ts [--model PATH] [--no-mmlu] [--limit N]`
 * @module
 */
import { evaluate } from "../src/eval/evaluate.ts";
import { loadModel } from "../src/models/load.ts";

const arg = (k: string) => {
  const i = Deno.args.indexOf(k);
  return i >= 0 ? Deno.args[i + 1] : undefined;
};
const modelPath = arg("--model") ??
  new URL("../../shared/data/models/stories260K", import.meta.url).pathname;
const limit = arg("--limit") ? Number(arg("--limit")) : undefined;
const model = await loadModel(modelPath);
const load = () => {
  try {
    return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
  } catch {
    return "?";
  }
};
console.log(`model ${modelPath}, ${navigator.hardwareConcurrency} cores, loadavg ${load()}`);
const modes = [
  { ort: false, reuse: true },
  { ort: false, reuse: false },
  { ort: true, reuse: true },
  { ort: true, reuse: false },
];
let base = NaN, acc0: number | undefined;
for (const m of modes) {
  const [r] = await evaluate(model, ["piqa"], { ...m, limit, progress: false });
  const acc = r.metrics.find((x) => x.metric === "acc")!;
  const rate = r.requests / r.seconds;
  if (m.ort === false && m.reuse) base = rate;
  acc0 ??= acc.value;
  console.log(
    `piqa ${r.protocol.engine?.engine} reuse=${m.reuse}: ${r.requests} requests in ` +
      `${r.seconds.toFixed(1)} s = ${rate.toFixed(1)} req/s (×${(rate / base).toFixed(2)} vs ` +
      `typescript reuse); acc ${acc.value.toFixed(4)} ± ${acc.stderr.toFixed(4)} (truncated ` +
      `continuations ${r.truncated})${acc.value === acc0 ? "" : " ACCURACY DIFFERS"}`,
  );
}
if (!Deno.args.includes("--no-mmlu")) {
  const t0 = performance.now();
  const rs = await evaluate(model, ["mmlu"], { limit, progress: false });
  const g = rs.at(-1)!;
  console.log(
    `mmlu 5-shot (${g.protocol.engine?.engine}): ${g.requests} requests, ` +
      `${g.protocol.docs.evaluated} questions in ` +
      `${((performance.now() - t0) / 1000).toFixed(1)} s; acc ${g.metrics[0].value.toFixed(4)} ± ` +
      `${g.metrics[0].stderr.toFixed(4)} (macro ${g.metrics[1].value.toFixed(4)})`,
  );
}
console.log(`loadavg at end ${load()}`);
