/**
 * Full-split task evaluation of stories260K (or `--model`), FP or a fake-quantized copy, for the
 * report and notebook 05: every task of the suite on its whole split, results as JSON
 * (`--out`, written after each task) and an lm-eval-style table.
 *
 * Run: `deno run -A tools/eval_full.ts --tasks piqa,arc_easy,... [--method gptq|rtn --bits B]
 *   [--out out/eval_fp.json] [--limit N]`
 * @module
 */
import { type EvalResult, evaluate, resultsMarkdown } from "../src/eval/evaluate.ts";
import { loadModel } from "../src/models/load.ts";
import { calibrationSet } from "../src/quant/pipeline/calibration.ts";
import { gptq } from "../src/quant/weight_only/gptq.ts";
import { quantize } from "../src/quant/pipeline/pipeline.ts";
import { rtn } from "../src/quant/weight_only/rtn.ts";

const arg = (k: string) => {
  const i = Deno.args.indexOf(k);
  return i >= 0 ? Deno.args[i + 1] : undefined;
};
const ALL = "piqa,arc_easy,arc_challenge,hellaswag,winogrande,boolq,openbookqa,lambada_openai," +
  "mmlu,gsm8k";
const tasks = (arg("--tasks") ?? ALL).split(",");
const modelPath = arg("--model") ??
  new URL("../../shared/data/models/stories260K", import.meta.url).pathname;
let model = await loadModel(modelPath);
const method = arg("--method");
const bits = Number(arg("--bits") ?? 3);
if (method === "gptq") {
  const calib = await calibrationSet(model, "tinystories", { nsamples: 128, seqlen: 256, seed: 0 });
  model = await quantize(model, gptq({ bits }), { calib });
} else if (method === "rtn") model = await quantize(model, rtn({ bits }), {});
const out = arg("--out");
const limit = arg("--limit") ? Number(arg("--limit")) : undefined;
const results: EvalResult[] = [];
const start = performance.now();
for (const t of tasks) {
  let shown0 = 0;
  const rs = await evaluate(model, [t], {
    limit,
    progress: false,
    // A line per ~10% of each (sub)task, with the time since the start, for long background runs.
    onProgress: ({ task, done, total }) => {
      if (done === total || done - shown0 >= total / 10 || done < shown0) {
        shown0 = done;
        console.error(
          `${task} ${done}/${total} at ${((performance.now() - start) / 1000).toFixed(0)} s`,
        );
      }
    },
  });
  results.push(...rs);
  const shown = rs.length > 1 ? rs.slice(-1) : rs;
  console.log(resultsMarkdown(shown));
  console.log(`${t}: ${shown[0].requests} requests in ${shown[0].seconds.toFixed(1)} s`);
  if (out) await Deno.writeTextFile(out, JSON.stringify(results, null, 1));
}
console.log(
  `total ${((performance.now() - start) / 1000).toFixed(1)} s (after loading/quantizing)`,
);
