/**
 * Full-split task evaluation of stories260K (or `--model`), FP or a fake-quantized copy, for the
 * report and notebook 05: every task of the suite on its whole split, results as JSON
 * (`--out`, written after each task and after each member of a group such as mmlu's 57
 * subjects) and an lm-eval-style table. Generation tasks (gsm8k) run in slices of `--slice`
 * documents saved to `<out>.slices.json` and merged (`mergeSlices`). `--resume` keeps the tasks
 * (and slices) an existing `--out` already holds (same model and method assumed) and runs the
 * rest.
 *
 * Run: `deno run -A tools/eval_full.ts --tasks piqa,arc_easy,... [--method gptq|rtn --bits B]
 *   [--out out/eval_fp.json] [--resume] [--limit N] [--slice 50]`
 * @module
 */
import {
  type EvalResult,
  evaluate,
  groupResult,
  mergeSlices,
  resultsMarkdown,
} from "../src/eval/evaluate.ts";
import { getTask, TASK_GROUPS } from "../src/eval/tasks.ts";
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
if (out && Deno.args.includes("--resume")) {
  try {
    results.push(...JSON.parse(await Deno.readTextFile(out)));
    console.log(`resuming: ${results.length} results in ${out}`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}
const start = performance.now();
// Generation tasks run in slices of `--slice` documents (default 50), each saved to
// `<out>.slices.json` as it ends, so a long gsm8k run keeps its progress and can be resumed.
const sliceSize = Number(arg("--slice") ?? 50);
const slicesFile = out?.replace(/(\.json)?$/, ".slices.json");
const slices: EvalResult[] = [];
if (slicesFile && Deno.args.includes("--resume")) {
  try {
    slices.push(...JSON.parse(await Deno.readTextFile(slicesFile)));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}
/** A generation task slice by slice (see above), merged. */
async function sliced(t: string): Promise<EvalResult> {
  const mine = slices.filter((r) => r.task === t);
  let offset = mine.reduce((s, r) => s + r.protocol.docs.evaluated, 0);
  const total = mine[0]?.protocol.docs.total ?? Infinity;
  const stop = Math.min(total, limit ?? Infinity);
  while (offset < stop) {
    const [r] = await evaluate(model, [t], {
      offset,
      limit: Math.min(sliceSize, stop - offset),
      logSamples: true,
      progress: false,
    });
    mine.push(r);
    slices.push(r);
    offset += r.protocol.docs.evaluated;
    if (slicesFile) await Deno.writeTextFile(slicesFile, JSON.stringify(slices));
    const m = mergeSlices(mine);
    console.error(
      `${t} ${offset}/${r.protocol.docs.total} at ${
        ((performance.now() - start) / 1000).toFixed(0)
      } s: ` +
        m.metrics.map((x) => `${x.metric},${x.filter} ${x.value.toFixed(4)}`).join(", "),
    );
    if (offset >= r.protocol.docs.total) break;
  }
  const merged = mergeSlices(mine);
  delete merged.samples;
  return merged;
}
/** Runs one task (not a group), or returns its stored result. */
async function one(t: string): Promise<EvalResult> {
  const have = results.find((r) => r.task === t);
  if (have) return have;
  if (getTask(t).outputType === "generate_until") {
    const r = await sliced(t);
    results.push(r);
    if (out) await Deno.writeTextFile(out, JSON.stringify(results, null, 1));
    return r;
  }
  let shown = 0;
  const [r] = await evaluate(model, [t], {
    limit,
    progress: false,
    // A line per ~10% of each task, with the time since the start, for long background runs.
    onProgress: ({ task, done, total }) => {
      if (done === total || done - shown >= total / 10) {
        shown = done;
        console.error(
          `${task} ${done}/${total} at ${((performance.now() - start) / 1000).toFixed(0)} s`,
        );
      }
    },
  });
  results.push(r);
  if (out) await Deno.writeTextFile(out, JSON.stringify(results, null, 1));
  return r;
}
for (const t of tasks) {
  const members = TASK_GROUPS[t];
  let shown: EvalResult;
  if (members) {
    const rs: EvalResult[] = [];
    for (const m of members) rs.push(await one(m));
    // The group's time: the sum of its members' (they may come from a resumed file).
    shown = await groupResult(t, rs, rs.reduce((s, r) => s + r.seconds, 0));
    const at = results.findIndex((r) => r.task === t);
    if (at >= 0) results[at] = shown;
    else results.push(shown);
    if (out) await Deno.writeTextFile(out, JSON.stringify(results, null, 1));
  } else shown = await one(t);
  console.log(resultsMarkdown([shown]));
  console.log(`${t}: ${shown.requests} requests in ${shown.seconds.toFixed(1)} s`);
}
console.log(
  `total ${((performance.now() - start) / 1000).toFixed(1)} s (after loading/quantizing)`,
);
