/**
 * Sweeps: a grid of quantization configurations (methods × options × seeds) expanded into tasks,
 * each task = quantize → perplexity, recorded in the ledger as a `sweep-task` run. Tasks run
 * locally in N worker processes (all recording into one ledger file) or on Slurm as a job array
 * (each array task writing its own ledger shard, merged by {@linkcode collectSweep}). A task whose
 * identical run is already recorded as done is skipped, so a killed sweep continues where it
 * stopped and a failed task can be resubmitted alone.
 *
 * ```json
 * { "name": "g1", "model": "../shared/data/models/stories260K-hf",
 *   "grid": { "method": ["rtn", "gptq"], "bits": [4, 3], "groupSize": [-1, 32] },
 *   "calib": { "dataset": "tinystories", "nsamples": 16, "seqlen": 256 },
 *   "eval": { "dataset": "tinystories", "nsamples": 8 } }
 * ```
 * @module
 */
import { OptionError, QuantlabError } from "../errors.ts";
import { perplexity, quantize } from "../api.ts";
import { loadModel } from "../models/load.ts";
import { calibrationSet } from "../quant/pipeline/calibration.ts";
import { framequant, type FramequantOptions } from "../quant/weight_only/framequant.ts";
import { gptq, type GptqOptions } from "../quant/weight_only/gptq.ts";
import { quantease, type QuantEaseOptions } from "../quant/weight_only/quantease.ts";
import { quip, type QuipOptions } from "../quant/weight_only/quip.ts";
import { rtn, type RtnOptions } from "../quant/weight_only/rtn.ts";
import type { WeightQuantizer } from "../quant/core/types.ts";
import { canonicalJson, sha256Hex, sourceChecksums } from "./hash.ts";
import { Ledger, type RunRecord } from "./ledger.ts";
import { tracked } from "./tracked.ts";

/** Slurm settings of a sweep (how to point it at a real cluster). */
export interface SlurmOptions {
  /** `--partition`. */
  partition?: string;
  /** `--account`. */
  account?: string;
  /** `--time` (e.g. "02:00:00"). */
  time?: string;
  /** `--gpus-per-task`. */
  gpusPerTask?: number;
  /** `--cpus-per-task`. */
  cpusPerTask?: number;
  /** `--mem` (e.g. "16G"). */
  mem?: string;
  /** At most this many array tasks at once (`--array=0-N%K`); default: no limit. */
  maxParallel?: number;
  /** Extra `#SBATCH` lines, verbatim (e.g. "--qos=short"). */
  extra?: string[];
}

/** A sweep specification (plain JSON). */
export interface SweepSpec {
  /** Name (ledger rows carry it; the default output folder is `out/sweeps/<name>`). */
  name: string;
  /** Model folder, file or hub name. */
  model: string;
  /** Axes: `method` (required) and quantizer options or `seed`; tasks are their product, the first axis slowest. */
  grid: Record<string, unknown[]>;
  /** Options every task gets (a grid axis overrides). */
  base?: Record<string, unknown>;
  /** Calibration set (for methods that need a Hessian). */
  calib?: { dataset?: string; nsamples?: number; seqlen?: number };
  /** Evaluation. */
  eval?: { dataset?: string; nsamples?: number; seqlen?: number };
  /** Ledger file for local runs and collected shards (default `<dir>/ledger.sqlite`). */
  ledger?: string;
  /** Output folder: shards, logs, the batch script (default `out/sweeps/<name>`). */
  dir?: string;
  /** Slurm settings. */
  slurm?: SlurmOptions;
}

/** One task of a sweep. */
export interface SweepTask {
  /** Index in the expanded grid. */
  index: number;
  /** Method name. */
  method: string;
  /** Quantizer options. */
  options: Record<string, unknown>;
  /** Calibration seed. */
  seed: number;
}

/** The result of one task. */
export interface SweepTaskResult {
  /** The task. */
  task: SweepTask;
  /** Perplexity of the quantized model. */
  ppl: number;
  /** Bits per weight. */
  bitsPerWeight: number;
  /** Seconds spent quantizing. */
  quantizeSeconds: number;
}

type Factory = (o: Record<string, unknown>) => WeightQuantizer;
/** Quantizer factories by method name. */
export const METHODS: Record<string, Factory> = {
  rtn: (o) => rtn(o as unknown as RtnOptions),
  gptq: (o) => gptq(o as unknown as GptqOptions),
  quantease: (o) => quantease(o as unknown as QuantEaseOptions),
  quip: (o) => quip(o as unknown as QuipOptions),
  framequant: (o) => framequant(o as unknown as FramequantOptions),
};

const SPEC_KEYS = new Set([
  "name",
  "model",
  "grid",
  "base",
  "calib",
  "eval",
  "ledger",
  "dir",
  "slurm",
]);

/** Checks a spec's shape; a {@linkcode OptionError} names the offending key. */
export function validateSpec(spec: SweepSpec): SweepSpec {
  if (spec === null || typeof spec !== "object") {
    throw new OptionError("spec", "a sweep spec must be an object");
  }
  for (const k of Object.keys(spec)) {
    if (!SPEC_KEYS.has(k)) {
      throw new OptionError(k, `unknown sweep spec key (known: ${[...SPEC_KEYS].join(", ")})`);
    }
  }
  if (typeof spec.name !== "string" || !/^[\w.-]+$/.test(spec.name)) {
    throw new OptionError("name", `must be a name of letters, digits, "_", "-", "."`);
  }
  if (typeof spec.model !== "string" || !spec.model) {
    throw new OptionError("model", "must be a model path or hub name");
  }
  if (!spec.grid || typeof spec.grid !== "object") {
    throw new OptionError("grid", "must be an object of axes (arrays)");
  }
  for (const [k, v] of Object.entries(spec.grid)) {
    if (!Array.isArray(v) || v.length === 0) {
      throw new OptionError(`grid.${k}`, "must be a non-empty array");
    }
  }
  const methods = spec.grid.method ?? (spec.base?.method !== undefined ? [spec.base.method] : []);
  if (!methods.length) throw new OptionError("grid.method", "is required");
  for (const m of methods) {
    if (typeof m !== "string" || !Object.hasOwn(METHODS, m)) {
      throw new OptionError(
        "grid.method",
        `unknown method ${JSON.stringify(m)} (known: ${Object.keys(METHODS).join(", ")})`,
      );
    }
  }
  return spec;
}

/** The tasks of a sweep, in index order (the first grid axis varies slowest). */
export function expandSweep(spec: SweepSpec): SweepTask[] {
  validateSpec(spec);
  const axes = Object.entries(spec.grid);
  const out: SweepTask[] = [];
  const rec = (i: number, acc: Record<string, unknown>) => {
    if (i === axes.length) {
      const all = { ...(spec.base ?? {}), ...acc };
      const { method, seed, ...options } = all;
      out.push({
        index: out.length,
        method: method as string,
        options,
        seed: seed === undefined ? 0 : Number(seed),
      });
      return;
    }
    const [k, vs] = axes[i];
    for (const v of vs) rec(i + 1, { ...acc, [k]: v });
  };
  rec(0, {});
  return out;
}

/** The output folder of a sweep. */
export function sweepDir(spec: SweepSpec): string {
  return spec.dir ?? `out/sweeps/${spec.name}`;
}

/** The ledger file of a sweep. */
export function sweepLedgerPath(spec: SweepSpec): string {
  return spec.ledger ?? `${sweepDir(spec)}/ledger.sqlite`;
}

/** Reads and validates a spec file. */
export async function readSweepSpec(path: string): Promise<SweepSpec> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new OptionError("spec", `cannot read ${path}: ${(e as Error).message}`);
  }
  let spec: SweepSpec;
  try {
    spec = JSON.parse(text);
  } catch (e) {
    throw new OptionError("spec", `${path} is not JSON: ${(e as Error).message}`);
  }
  return validateSpec(spec);
}

/**
 * Runs task `index` of `spec` in this process, recording into `ledger` (a path or an open
 * ledger). A task already recorded as done (same identity) is returned from the ledger
 * (`run.cached` true) and not recomputed.
 */
export async function runSweepTask(
  spec: SweepSpec,
  index: number,
  opts: { ledger: string | Ledger },
): Promise<SweepTaskResult & { run?: { id: number; cached: boolean } }> {
  const tasks = expandSweep(spec);
  const task = tasks[index];
  if (!task) {
    throw new OptionError("index", `${index} is outside 0..${tasks.length - 1} for ${spec.name}`);
  }
  const ledger = typeof opts.ledger === "string" ? await Ledger.open(opts.ledger) : opts.ledger;
  const quantizer = METHODS[task.method](task.options);
  const files = await sourceChecksums(spec.model);
  const modelHash = sha256Hex(canonicalJson(files ?? { source: spec.model }));
  return await tracked<SweepTaskResult>({
    kind: "sweep-task",
    sweep: { name: spec.name, task: index },
    identity: () =>
      Promise.resolve({
        identity: {
          model: { hash: modelHash },
          config: JSON.parse(canonicalJson({
            method: task.method,
            options: quantizer.options,
          })),
          seed: task.seed,
          protocol: JSON.parse(canonicalJson({ calib: spec.calib ?? {}, eval: spec.eval ?? {} })),
        },
        cacheable: true,
      }),
    run: async () => {
      const model = await loadModel(spec.model);
      const calib = quantizer.needsHessian
        ? await calibrationSet(model, spec.calib?.dataset ?? "tinystories", {
          nsamples: spec.calib?.nsamples ?? 16,
          seqlen: spec.calib?.seqlen,
          seed: task.seed,
        })
        : undefined;
      const qm = await quantize(model, quantizer, { calib, ledger, progress: false });
      const ev = spec.eval ?? {};
      const p = await perplexity(qm, ev.dataset ?? "tinystories", {
        nsamples: ev.nsamples,
        seqlen: ev.seqlen,
        ledger,
        progress: false,
      });
      return {
        task,
        ppl: p.ppl,
        bitsPerWeight: qm.report.bitsPerWeight,
        quantizeSeconds: qm.report.seconds,
      };
    },
    record: (r) => ({
      metrics: { ppl: r.ppl, bitsPerWeight: r.bitsPerWeight, quantizeSeconds: r.quantizeSeconds },
      result: r,
    }),
    revive: (s) => s as SweepTaskResult,
  }, { ledger });
}

/** Whether process `pid` is alive on this host (a zombie, unreaped after a kill, is not). */
function alive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/**
 * Marks this host's `running` rows of a sweep whose process is gone as failed ("interrupted"),
 * so a restarted sweep's ledger says which task was cut off. Returns how many were marked.
 */
export function markInterrupted(ledger: Ledger, sweep: string): number {
  let host: string | null = null;
  try {
    host = Deno.hostname();
  } catch { /* no permission */ }
  let n = 0;
  for (const r of ledger.runs({ sweep, status: "running" })) {
    if (r.host === host && r.pid !== null && !alive(r.pid)) {
      ledger.fail(r.id, new QuantlabError(`interrupted: process ${r.pid} is gone`));
      n++;
    }
  }
  return n;
}

/** What the done tasks of a sweep look like in a ledger: the latest done row per task. */
export function sweepRows(ledger: Ledger, sweep: string): Map<number, RunRecord> {
  const out = new Map<number, RunRecord>();
  for (const r of ledger.runs({ sweep, kind: "sweep-task", status: "done" })) {
    if (r.task !== null && !out.has(r.task)) out.set(r.task, r);
  }
  return out;
}

/** The command that runs one task (used by local workers and the Slurm batch script). */
export function taskCommand(specPath: string, index: string, extra: string[] = []): string[] {
  const cli = new URL("../cli.ts", import.meta.url).pathname;
  return [
    Deno.execPath(),
    "run",
    "-A",
    "--unstable-webgpu",
    cli,
    "sweep",
    "run",
    specPath,
    "--index",
    index,
    ...extra,
  ];
}

/** Options of {@linkcode runSweepLocal}. */
export interface LocalSweepOptions {
  /** Worker processes at once (default 2). */
  workers?: number;
  /** Only these task indices (default all). */
  only?: number[];
  /** Called after each task ends (index, exit success). */
  onTask?: (index: number, ok: boolean) => void;
}

/**
 * Runs a sweep locally: each not-yet-done task in its own worker process, `workers` at once, all
 * recording into the sweep's ledger. Returns the indices that failed.
 */
export async function runSweepLocal(
  specPath: string,
  opts: LocalSweepOptions = {},
): Promise<{ done: number[]; failed: number[]; skipped: number[] }> {
  const spec = await readSweepSpec(specPath);
  const tasks = expandSweep(spec);
  const workers = opts.workers ?? 2;
  if (!(Number.isInteger(workers) && workers >= 1)) {
    throw new OptionError("workers", `must be an integer ≥ 1, got ${workers}`);
  }
  const ledgerPath = sweepLedgerPath(spec);
  const ledger = await Ledger.open(ledgerPath);
  markInterrupted(ledger, spec.name);
  const doneBefore = sweepRows(ledger, spec.name);
  ledger.close();
  const want = (opts.only ?? tasks.map((t) => t.index)).filter((i) => !doneBefore.has(i));
  const skipped = [...doneBefore.keys()].filter((i) => !opts.only || opts.only.includes(i));
  const done: number[] = [], failed: number[] = [];
  let next = 0;
  const worker = async () => {
    while (next < want.length) {
      const i = want[next++];
      const [cmd, ...args] = taskCommand(specPath, String(i), ["--ledger", ledgerPath]);
      const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
      (out.success ? done : failed).push(i);
      opts.onTask?.(i, out.success);
      if (!out.success) {
        const msg = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join("\n");
        console.error(`sweep ${spec.name}: task ${i} failed:\n${msg}`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(workers, want.length) }, worker));
  return { done: done.sort((a, b) => a - b), failed: failed.sort((a, b) => a - b), skipped };
}

/** The `#SBATCH` script of a sweep's job array. */
export function slurmScript(
  spec: SweepSpec,
  specPath: string,
  opts: { only?: number[] } = {},
): string {
  const n = expandSweep(spec).length;
  const dir = sweepDir(spec);
  const s = spec.slurm ?? {};
  const range = opts.only?.length ? opts.only.join(",") : `0-${n - 1}`;
  const lines = [
    "#!/bin/bash",
    `#SBATCH --job-name=quantlab-${spec.name}`,
    `#SBATCH --array=${range}${s.maxParallel ? `%${s.maxParallel}` : ""}`,
    `#SBATCH --output=${dir}/logs/task-%a.out`,
  ];
  if (s.partition) lines.push(`#SBATCH --partition=${s.partition}`);
  if (s.account) lines.push(`#SBATCH --account=${s.account}`);
  if (s.time) lines.push(`#SBATCH --time=${s.time}`);
  if (s.gpusPerTask) lines.push(`#SBATCH --gpus-per-task=${s.gpusPerTask}`);
  if (s.cpusPerTask) lines.push(`#SBATCH --cpus-per-task=${s.cpusPerTask}`);
  if (s.mem) lines.push(`#SBATCH --mem=${s.mem}`);
  for (const e of s.extra ?? []) lines.push(`#SBATCH ${e}`);
  const cmd = taskCommand(specPath, "$SLURM_ARRAY_TASK_ID", [
    "--shard",
    `${dir}/shards`,
  ]).map((a) => a.startsWith("$") ? `"${a}"` : `'${a.replaceAll("'", "'\\''")}'`);
  lines.push(`cd '${Deno.cwd()}'`, `exec ${cmd.join(" ")}`, "");
  return lines.join("\n");
}

async function run(cmd: string, args: string[]): Promise<string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    throw new QuantlabError(`${cmd} cannot be run (is Slurm installed?): ${(e as Error).message}`);
  }
  if (!out.success) {
    throw new QuantlabError(
      `${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

/**
 * Submits a sweep to Slurm as a job array (`sbatch --parsable`), writing the batch script to
 * `<dir>/sweep.sbatch` and the job id to `<dir>/slurm.json`. `only` resubmits chosen tasks.
 */
export async function submitSweep(
  specPath: string,
  opts: { only?: number[] } = {},
): Promise<{ jobId: string; script: string; tasks: number[] }> {
  const spec = await readSweepSpec(specPath);
  const dir = sweepDir(spec);
  await Deno.mkdir(`${dir}/logs`, { recursive: true });
  await Deno.mkdir(`${dir}/shards`, { recursive: true });
  const script = `${dir}/sweep.sbatch`;
  await Deno.writeTextFile(`${script}.tmp`, slurmScript(spec, specPath, opts));
  await Deno.rename(`${script}.tmp`, script);
  const jobId = (await run("sbatch", ["--parsable", script])).trim().split(";")[0];
  const tasks = opts.only ?? expandSweep(spec).map((t) => t.index);
  let jobs: { jobId: string; tasks: number[] }[] = [];
  try {
    jobs = JSON.parse(await Deno.readTextFile(`${dir}/slurm.json`)).jobs ?? [];
  } catch { /* first submission */ }
  jobs.push({ jobId, tasks });
  await Deno.writeTextFile(`${dir}/slurm.json.tmp`, JSON.stringify({ jobs }, null, 1));
  await Deno.rename(`${dir}/slurm.json.tmp`, `${dir}/slurm.json`);
  return { jobId, script, tasks };
}

/** Folds every shard of a sweep into its ledger; returns rows merged. */
export async function collectSweep(specPath: string): Promise<number> {
  const spec = await readSweepSpec(specPath);
  const ledger = await Ledger.open(sweepLedgerPath(spec));
  let n = 0;
  try {
    const dir = `${sweepDir(spec)}/shards`;
    const names: string[] = [];
    try {
      for await (const e of Deno.readDir(dir)) {
        if (e.isFile && e.name.endsWith(".sqlite")) names.push(e.name);
      }
    } catch { /* no shards yet */ }
    for (const f of names.sort()) n += ledger.merge(`${dir}/${f}`);
  } finally {
    ledger.close();
  }
  return n;
}

/** One task's state in {@linkcode sweepStatus}. */
export interface TaskState {
  /** Index. */
  index: number;
  /** done / failed / running / pending (from squeue or the ledgers) / not started. */
  state: "done" | "failed" | "running" | "pending" | "not started";
  /** Perplexity when done. */
  ppl?: number;
  /** Error when failed. */
  error?: string;
}

/**
 * Per-task state of a sweep: the sweep ledger and its shards (done / failed / running), and for
 * submitted sweeps `squeue` (pending / running array tasks).
 */
export async function sweepStatus(specPath: string): Promise<TaskState[]> {
  const spec = await readSweepSpec(specPath);
  const tasks = expandSweep(spec);
  const state = new Map<number, TaskState>();
  const files = [sweepLedgerPath(spec)];
  try {
    for await (const e of Deno.readDir(`${sweepDir(spec)}/shards`)) {
      if (e.isFile && e.name.endsWith(".sqlite")) files.push(`${sweepDir(spec)}/shards/${e.name}`);
    }
  } catch { /* none */ }
  const rank = { "not started": 0, pending: 1, running: 2, failed: 3, done: 4 } as const;
  const put = (s: TaskState) => {
    const o = state.get(s.index);
    if (!o || rank[s.state] > rank[o.state]) state.set(s.index, s);
  };
  for (const f of files) {
    try {
      await Deno.stat(f);
    } catch {
      continue;
    }
    const l = await Ledger.open(f);
    try {
      for (const r of l.runs({ sweep: spec.name, kind: "sweep-task" })) {
        if (r.task === null) continue;
        if (r.status === "done") put({ index: r.task, state: "done", ppl: r.metrics.ppl });
        else if (r.status === "failed") {
          put({ index: r.task, state: "failed", error: r.error ?? undefined });
        } else put({ index: r.task, state: "running" });
      }
    } finally {
      l.close();
    }
  }
  let jobs: { jobId: string }[] = [];
  try {
    jobs = JSON.parse(await Deno.readTextFile(`${sweepDir(spec)}/slurm.json`)).jobs ?? [];
  } catch { /* not submitted */ }
  for (const j of jobs) {
    let out = "";
    try {
      out = await run("squeue", ["-h", "-r", "-j", j.jobId, "-o", "%K %T"]);
    } catch { /* job gone from the queue */ }
    for (const line of out.trim().split("\n").filter(Boolean)) {
      const [k, t] = line.trim().split(/\s+/);
      const st = t === "PENDING" ? "pending" : t === "RUNNING" ? "running" : undefined;
      if (st && state.get(Number(k))?.state !== "done") {
        state.set(Number(k), { index: Number(k), state: st });
      }
    }
  }
  return tasks.map((t) => state.get(t.index) ?? { index: t.index, state: "not started" });
}
