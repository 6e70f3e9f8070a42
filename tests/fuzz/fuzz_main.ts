/**
 * `deno task fuzz`: the long fuzz/fault run of issue 13. Prints the outcome classes of each part
 * and exits 1 when any case lands in a failure class.
 *
 * 1. safetensors: ≥ 10,000 seeded mutations judged by the independent oracle of
 *    `_safetensors_fuzz.ts`.
 * 2. config.json: every field of stories260K's config (and the fields the forward reads when
 *    present) set to odd values, plus odd model types and roots. An independent oracle (below)
 *    says whether the config is valid *for this checkpoint*; a valid one must load and give the
 *    reference perplexity (or, for fields that legitimately change the numbers, load); an invalid
 *    one must be a typed error.
 * 3. options: every option of every quantizer set to odd values; a value of the wrong type must be
 *    an OptionError; anything accepted must quantize a small layer to finite values in < 5 s.
 * 4. resume: SIGKILL of a pipeline child at ≥ 10 random moments, each resumed to the end and
 *    compared bit for bit with an uninterrupted run; and every corruption kind of
 *    `_corruptions.ts` (recomputed to the same weights, or refused with a ResumeError).
 *
 * Flags: `--safetensors N` (10000), `--kills K` (10), `--seed S` (1), `--only part,...`.
 */
import { parseArgs } from "node:util";
import { ResumeError } from "../../src/errors.ts";
import { loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { CORRUPTIONS } from "./_corruptions.ts";
import { KILL_FAILURES, killAndResume, sameMaps } from "./_kill.ts";
import { FAILURES, fuzzSafetensors } from "./_safetensors_fuzz.ts";
import { configSweep, optionSweep } from "./_sweeps.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    safetensors: { type: "string", default: "10000" },
    kills: { type: "string", default: "10" },
    seed: { type: "string", default: "1" },
    only: { type: "string", default: "safetensors,config,options,kill,corrupt" },
  },
});
const SEED = Number(args.seed);
const parts = new Set(args.only!.split(","));
const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K-hf`;
let failed = 0;

function report(title: string, counts: Record<string, number>, bad: Set<string>, ex: string[]) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  console.log(`\n== ${title}: ${total} cases`);
  for (const [k, v] of Object.entries(counts).sort()) {
    console.log(`  ${bad.has(k) ? "FAIL " : "     "}${k.padEnd(28)} ${v}`);
    if (bad.has(k)) failed += v;
  }
  for (const e of ex) console.log(`  e.g. ${e}`);
}

// ---------------------------------------------------------------- 1. safetensors
if (parts.has("safetensors")) {
  const t0 = performance.now();
  const { counts, examples } = await fuzzSafetensors(Number(args.safetensors), SEED);
  report(
    `safetensors mutations (seed ${SEED}, ${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    counts,
    FAILURES as Set<string>,
    examples,
  );
}

// ---------------------------------------------------------------- 2, 3. config and options
for (
  const [part, run] of [["config", () => configSweep()], [
    "options",
    () => optionSweep(SEED),
  ]] as const
) {
  if (!parts.has(part)) continue;
  const r = await run();
  report(r.title, r.counts, r.failures, r.examples);
}

// ---------------------------------------------------------------- 4. resume
if (parts.has("kill")) {
  const { counts, examples } = await killAndResume(Number(args.kills), SEED + 7);
  report("SIGKILL + resume", counts, KILL_FAILURES, examples);
}

if (parts.has("corrupt")) {
  const m: Model = await loadModel(MODEL);
  const calib = await calibrationSet(m, "tinystories", { nsamples: 4, seqlen: 32, seed: 2 });
  const recipe = () => gptq({ bits: 3, groupSize: 4, actOrder: true });
  const weights = (q: Model) => new Map([...q.weights.overrides()].map(([k, v]) => [k, v.data]));
  const oracle = weights(await quantize(m, recipe(), { calib }));
  const counts: Record<string, number> = {};
  const ex: string[] = [];
  for (const [kind, corrupt] of Object.entries(CORRUPTIONS)) {
    const dir = await Deno.makeTempDir({ prefix: "quantlab_fuzzcor_" });
    let o: string;
    try {
      await quantize(m, recipe(), { calib, workdir: dir });
      const want = await corrupt(dir);
      const q = want === "refuse-other-recipe" ? gptq({ bits: 2 }) : recipe();
      try {
        const res = await quantize(m, q, { calib, workdir: dir });
        o = want === "recompute" && sameMaps(oracle, weights(res))
          ? "recomputed, identical"
          : "different result";
      } catch (e) {
        o = e instanceof ResumeError ? "refused (ResumeError)" : "untyped";
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    counts[o] = (counts[o] ?? 0) + 1;
    ex.push(`${kind}: ${o}`);
  }
  report("workdir corruption kinds", counts, new Set(["different result", "untyped"]), ex);
}

console.log(failed ? `\n${failed} failing case(s)` : "\nno failing case");
Deno.exit(failed ? 1 : 0);
