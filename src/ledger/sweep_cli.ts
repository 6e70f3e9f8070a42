/**
 * `deno task cli sweep ...`: run, submit, collect and inspect sweeps (see `sweep.ts`).
 *
 * ```sh
 * deno task cli sweep run spec.json --workers 2        # locally, resumable
 * deno task cli sweep run spec.json --index 3          # one task (what each Slurm array task runs)
 * deno task cli sweep submit spec.json [--only 3,5]    # Slurm job array (sbatch)
 * deno task cli sweep status spec.json                 # done / running / pending / failed per task
 * deno task cli sweep collect spec.json                # merge the array tasks' ledger shards
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { OptionError } from "../errors.ts";
import {
  collectSweep,
  expandSweep,
  readSweepSpec,
  runSweepLocal,
  runSweepTask,
  submitSweep,
  sweepLedgerPath,
  sweepStatus,
} from "./sweep.ts";

/** Usage text of `cli sweep`. */
export const SWEEP_USAGE =
  `usage: deno task cli sweep <run|submit|status|collect> SPEC.json [options]
  run SPEC [--workers N] [--only I,J,...]  run the not-yet-done tasks locally (default 2 workers)
  run SPEC --index I [--shard DIR | --ledger FILE]
                                           run task I in this process (Slurm array tasks do this)
  submit SPEC [--only I,J,...]             submit the grid (or chosen tasks) as a Slurm job array
  status SPEC                              per-task state from the ledgers and squeue
  collect SPEC                             merge the shards into the sweep ledger
A task already recorded as done is skipped; a killed sweep continues where it stopped.`;

function intList(s: string | undefined, flag: string): number[] | undefined {
  if (s === undefined) return undefined;
  const v = s.split(",").map((x) => Number(x.trim()));
  if (v.some((x) => !Number.isInteger(x) || x < 0)) {
    throw new OptionError(flag, `expected task indices like 3,5, got "${s}"`);
  }
  return v;
}

/** Runs `cli sweep` with `args` (after the word "sweep"); returns the exit code. */
export async function sweepCommand(args: string[]): Promise<number> {
  const { values: o, positionals } = parseArgs({
    args,
    options: {
      workers: { type: "string" },
      only: { type: "string" },
      index: { type: "string" },
      shard: { type: "string" },
      ledger: { type: "string" },
      help: { type: "boolean", default: false },
    },
    allowPositionals: true,
  });
  const [sub, specPath] = positionals;
  if (o.help || !sub) {
    console.log(SWEEP_USAGE);
    return 0;
  }
  if (!specPath) throw new OptionError("SPEC", "a sweep spec file is required");
  switch (sub) {
    case "run": {
      if (o.index !== undefined) {
        const spec = await readSweepSpec(specPath);
        const i = Number(o.index);
        if (!Number.isInteger(i)) throw new OptionError("--index", `not an integer: ${o.index}`);
        const ledger = o.shard ? `${o.shard}/task-${i}.sqlite` : o.ledger ?? sweepLedgerPath(spec);
        const r = await runSweepTask(spec, i, { ledger });
        console.log(
          `task ${i} ${r.task.method} ${JSON.stringify(r.task.options)} seed ${r.task.seed}: ` +
            `ppl ${r.ppl.toFixed(4)}, ${r.bitsPerWeight.toFixed(3)} bits/weight` +
            (r.run?.cached ? " (already done: from the ledger)" : ""),
        );
        return 0;
      }
      const workers = o.workers === undefined ? undefined : Number(o.workers);
      const res = await runSweepLocal(specPath, {
        workers,
        only: intList(o.only, "--only"),
        onTask: (i, ok) => console.error(`task ${i} ${ok ? "done" : "FAILED"}`),
      });
      console.log(
        `done ${res.done.length}, skipped (already done) ${res.skipped.length}, failed ` +
          `${res.failed.length}${res.failed.length ? ` (${res.failed.join(",")})` : ""}`,
      );
      return res.failed.length ? 1 : 0;
    }
    case "submit": {
      const r = await submitSweep(specPath, { only: intList(o.only, "--only") });
      console.log(`submitted job ${r.jobId}: ${r.tasks.length} array tasks (${r.script})`);
      return 0;
    }
    case "collect": {
      const n = await collectSweep(specPath);
      console.log(`merged ${n} rows into ${sweepLedgerPath(await readSweepSpec(specPath))}`);
      return 0;
    }
    case "status": {
      const spec = await readSweepSpec(specPath);
      const st = await sweepStatus(specPath);
      const tasks = expandSweep(spec);
      for (const s of st) {
        const t = tasks[s.index];
        console.log(
          `${String(s.index).padStart(4)}  ${s.state.padEnd(11)} ${t.method} ` +
            `${JSON.stringify(t.options)} seed ${t.seed}` +
            (s.ppl !== undefined ? `  ppl ${s.ppl.toFixed(4)}` : "") +
            (s.error ? `  ${s.error}` : ""),
        );
      }
      const count = (k: string) => st.filter((s) => s.state === k).length;
      console.log(
        `done ${count("done")}, running ${count("running")}, pending ${count("pending")}, ` +
          `failed ${count("failed")}, not started ${count("not started")}`,
      );
      return 0;
    }
    default:
      throw new OptionError("sweep", `unknown subcommand "${sub}" (run, submit, status, collect)`);
  }
}
