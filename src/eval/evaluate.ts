/**
 * `evaluate(model, tasks, opts)`: lm-evaluation-harness task evaluation on any model object.
 * Builds each task's requests with lm-eval's prompt assembly (description, few-shot examples
 * joined by "\n\n", `target_delimiter` " "), scores them with the log-likelihood engine
 * (`loglikelihood.ts`) or greedy generation, and aggregates lm-eval's metrics with its standard
 * errors (`mean_stderr`; bootstrap for perplexity; pooled for the MMLU group). Results are plain
 * JSON records describing their protocol (task version, shots, sampler and seed, normalisation,
 * the sha256 of every data file read).
 * @module
 */
import { OptionError } from "../errors.ts";
import { getTokenizer } from "../models/load.ts";
import type { Model } from "../models/model.ts";
import { progress } from "../viz/progress.ts";
import { PyRandom } from "./_pyrandom.ts";
import { bootstrapStderr, mean, meanStderr, perplexityAgg } from "./_stats.ts";
import {
  greedyUntil,
  loglikelihood,
  type LoglikelihoodEngine,
  loglikelihoodEngine,
  type LoglikelihoodRequest,
} from "./loglikelihood.ts";
import {
  type Doc,
  expandTasks,
  getTask,
  gsm8kExtract,
  gsm8kNormalize,
  loadFewshotDocs,
  loadTaskDocs,
  targetText,
  TASK_GROUPS,
  type TaskDef,
  type TaskFile,
} from "./tasks.ts";

/** Options of {@linkcode evaluate} (plain JSON apart from `onProgress`). */
export interface EvaluateOptions {
  /** Evaluate only the first `limit` documents of each task (lm-eval `--limit` as a count). */
  limit?: number;
  /**
   * Skip the first `offset` documents (default 0; with `limit`, documents
   * [offset, offset + limit)), to split a long task into resumable slices that
   * {@linkcode mergeSlices} joins. Each document keeps the few-shot examples it gets in a full run.
   */
  offset?: number;
  /** Few-shot examples per prompt (default: the task's, e.g. 5 for mmlu and gsm8k, else 0). */
  numFewshot?: number;
  /** Seed of the few-shot sampler (lm-eval `fewshot_random_seed`, default 1234). */
  seed?: number;
  /** Data root holding `datasets/...`. */
  root?: string;
  /** Per-task (or dataset-folder) local folders overriding the root. */
  paths?: Record<string, string>;
  /** Longest model input in tokens (default: the model's context). */
  maxLength?: number;
  /** Requests per forward when `reuse` is off (default 8). */
  batch?: number;
  /** Share each document's prompt through the KV cache (default true). */
  reuse?: boolean;
  /**
   * Score log-likelihood requests through the onnxruntime forward graph where it applies
   * (default true: CPU backend, no hooks or quantization points; see `loglikelihood.ts`).
   */
  ort?: boolean;
  /** Prepend BOS (default: the tokenizer's own default, as lm-eval's HFLM). */
  addBos?: boolean;
  /** Keep per-document samples (lm-eval `--log_samples`). */
  logSamples?: boolean;
  /** Bootstrap resamples for perplexity's standard error (lm-eval default 100,000). */
  bootstrapIters?: number;
  /** Tokens generated at most per gsm8k item (default the task's, 256). */
  maxGenToks?: number;
  /** Draw progress bars (default true; silent outside terminals and notebooks). */
  progress?: boolean;
  /** Progress callback: requests done / total of the current task. */
  onProgress?: (e: { task: string; done: number; total: number }) => void;
}

/** One metric of a result. */
export interface MetricValue {
  /** Metric name (acc, acc_norm, perplexity, exact_match, acc_macro). */
  metric: string;
  /** lm-eval filter name ("none", "strict-match", "flexible-extract"). */
  filter: string;
  /** Value. */
  value: number;
  /** Standard error as lm-eval computes it (NaN when undefined). */
  stderr: number;
  /** True when higher is better. */
  higherIsBetter: boolean;
}

/** Per-document record (lm-eval `--log_samples`). */
export interface EvalSample {
  /** Document index in the split. */
  docId: number;
  /** Gold choice index or target text. */
  target: number | string;
  /** Requests: (context, continuation) pairs, or (context) for generation. */
  arguments: string[][];
  /** Per request [logprob, isGreedy], or the generated text. */
  resps: (number | boolean)[][] | string[];
  /** Filtered responses (generation: extracted answers per filter). */
  filtered?: Record<string, string>;
  /** Per-document metric values. */
  metrics: Record<string, number>;
  /** Continuation head dropped by truncation (see loglikelihood.ts). */
  truncated?: boolean;
}

/** The protocol a result was measured under. */
export interface EvalProtocol {
  /** Dataset and split in lm-eval's words. */
  dataset: string;
  /** lm-eval output type. */
  outputType: string;
  /** Few-shot examples. */
  numFewshot: number;
  /** Few-shot sampler and seed. */
  fewshot: { sampler: string; seed: number } | null;
  /** target_delimiter / fewshot_delimiter. */
  targetDelimiter: string;
  /** Between few-shot examples. */
  fewshotDelimiter: string;
  /** Description header, if any. */
  description: string;
  /** acc_norm definition. */
  normalisation: string;
  /** Files read and their sha256. */
  files: TaskFile[];
  /** sha256 over the files' hashes (one string for the whole data). */
  dataChecksum: string;
  /** Tokenization: tokenizer name, BOS rule, max length. */
  tokenization: { tokenizer: string; addBos: boolean; bosId: number | null; maxLength: number };
  /** The forward that scored the requests, and why not onnxruntime (`loglikelihoodEngine`). */
  engine?: LoglikelihoodEngine;
  /** Generation settings (generate_until). */
  generation?: { until: string[]; maxGenToks: number; greedy: true };
  /** Documents in the split, and evaluated. */
  docs: { total: number; evaluated: number };
  /** Known deviations from lm-eval. */
  deviations: string[];
}

/** A task result. */
export interface EvalResult {
  /** Task name. */
  task: string;
  /** lm-eval task version. */
  version: number;
  /** Metrics with standard errors. */
  metrics: MetricValue[];
  /** The protocol. */
  protocol: EvalProtocol;
  /** Requests scored (log-likelihood) or prompts generated. */
  requests: number;
  /** Requests whose continuation was truncated. */
  truncated: number;
  /** Wall time, seconds. */
  seconds: number;
  /** Per-document samples (with `logSamples`). */
  samples?: EvalSample[];
  /** Member tasks (groups). */
  subtasks?: string[];
}

async function sha256Text(s: string): Promise<string> {
  const h = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s) as BufferSource),
  );
  return Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A document's prompts, as lm-eval builds them. */
export interface BuiltDoc {
  /** The document. */
  doc: Doc;
  /** Log-likelihood requests (empty for generation). */
  requests: LoglikelihoodRequest[];
  /** Generation prompt (generate_until). */
  prompt?: string;
  /** Gold choice index or target text. */
  target: number | string;
  /** Choices (for acc_norm lengths). */
  choices: string[];
}

/**
 * The requests of a task's documents, with lm-eval's prompt assembly. `fewshot` are the
 * few-shot split's documents. Throws {@linkcode OptionError} when `numFewshot` is negative,
 * larger than the few-shot split, or asked of a task without one.
 */
export function buildRequests(
  task: TaskDef,
  docs: Doc[],
  fewshot: Doc[],
  opts: { numFewshot?: number; seed?: number } = {},
): BuiltDoc[] {
  const n = opts.numFewshot ?? task.defaultShots;
  if (!(Number.isInteger(n) && n >= 0)) {
    throw new OptionError("numFewshot", `must be an integer ≥ 0, got ${n}`);
  }
  if (n > 0 && fewshot.length === 0) {
    throw new OptionError(
      "numFewshot",
      `${n} shots asked of task ${task.name}, which has no few-shot split in the local data`,
    );
  }
  if (n > fewshot.length) {
    throw new OptionError(
      "numFewshot",
      `${n} shots asked of task ${task.name}, but its few-shot split (${
        task.fewshotFiles?.join(", ")
      }) has only ${fewshot.length} documents`,
    );
  }
  const td = task.targetDelimiter ?? " ";
  const fd = task.fewshotDelimiter ?? "\n\n";
  const rnd = new PyRandom(opts.seed ?? 1234);
  const shotText = (s: Doc) =>
    task.multipleInputs
      ? task.docToChoice!(s)[task.gold!(s)] + td + task.docToTarget(s)
      : task.docToText(s) + td + targetText(task, s);
  return docs.map((doc, i) => {
    let prefix = task.description ?? "";
    if (n > 0) {
      const shots = task.sampler === "first_n" ? fewshot.slice(0, n) : rnd.sample(fewshot, n);
      prefix += shots.map(shotText).join(fd) + fd;
    }
    if (task.outputType === "generate_until") {
      return {
        doc,
        requests: [],
        prompt: prefix + task.docToText(doc),
        target: task.docToTarget(doc),
        choices: [],
      };
    }
    if (task.outputType === "loglikelihood") {
      const cont = task.docToTarget(doc) as string;
      return {
        doc,
        requests: [{ context: prefix + task.docToText(doc), continuation: cont, group: i }],
        target: cont,
        choices: [cont],
      };
    }
    const choices = task.docToChoice!(doc);
    if (task.multipleInputs) {
      const cont = td + task.docToTarget(doc);
      return {
        doc,
        requests: choices.map((c) => ({ context: prefix + c, continuation: cont, group: i })),
        target: task.gold!(doc),
        choices,
      };
    }
    const ctx = prefix + task.docToText(doc);
    return {
      doc,
      requests: choices.map((c) => ({ context: ctx, continuation: td + c, group: i })),
      target: task.docToTarget(doc) as number,
      choices,
    };
  });
}

function argmax(xs: number[]): number {
  let b = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[b]) b = i;
  return b;
}

/**
 * lm-eval's multiple-choice metrics of one document: `acc` = argmax of the log-likelihoods is
 * the gold index; `acc_norm` = argmax of log-likelihood / len(choice) in characters (the
 * choice text without the target delimiter) is the gold index. First index wins ties (numpy).
 */
export function multipleChoiceMetrics(
  lls: number[],
  choices: string[],
  gold: number,
): { acc: number; acc_norm: number } {
  return {
    acc: argmax(lls) === gold ? 1 : 0,
    acc_norm: argmax(lls.map((l, i) => l / choices[i].length)) === gold ? 1 : 0,
  };
}

/** Runs one task. */
async function runTask(
  model: Model,
  name: string,
  opts: EvaluateOptions,
): Promise<EvalResult> {
  const t0 = performance.now();
  const task = getTask(name);
  const tok = await getTokenizer(model);
  const data = { root: opts.root, paths: opts.paths };
  const { docs: all, files } = await loadTaskDocs(task, data);
  const numFewshot = opts.numFewshot ?? task.defaultShots;
  const few = numFewshot > 0 ? await loadFewshotDocs(task, data) : { docs: [], files: [] };
  if (opts.limit !== undefined && !(Number.isInteger(opts.limit) && opts.limit >= 1)) {
    throw new OptionError("limit", `must be an integer ≥ 1, got ${opts.limit}`);
  }
  const offset = opts.offset ?? 0;
  if (!(Number.isInteger(offset) && offset >= 0 && offset < all.length)) {
    throw new OptionError("offset", `must be an integer in 0..${all.length - 1}, got ${offset}`);
  }
  const end = opts.limit !== undefined ? Math.min(all.length, offset + opts.limit) : all.length;
  const docs = all.slice(offset, end);
  // Prompts of the documents before `offset` are built too (and dropped): the few-shot sampler
  // draws for every document in order, so a document gets the same shots in any slice.
  const built = buildRequests(task, all.slice(0, end), few.docs, { numFewshot, seed: opts.seed })
    .slice(offset);
  const maxLength = opts.maxLength ?? model.config.maxPositions;
  const addBos = opts.addBos ?? tok.bosId !== null;
  const bar = opts.progress === false ? undefined : progress(
    name,
    task.outputType === "generate_until" ? built.length : built.reduce(
      (s, b) => s + b.requests.length,
      0,
    ),
  );
  const report = (done: number, total: number) => {
    opts.onProgress?.({ task: name, done, total });
  };
  const per: Record<string, number>[] = [];
  const samples: EvalSample[] = [];
  let requests = 0, truncated = 0;
  const lls: number[] = [];
  if (task.outputType === "generate_until") {
    const gen = task.generation!;
    const maxGenToks = opts.maxGenToks ?? gen.maxGenToks;
    for (let i = 0; i < built.length; i++) {
      const b = built[i];
      const r = await greedyUntil(model, b.prompt!, {
        until: gen.until,
        maxGenToks,
        maxLength,
        addBos,
        tokenizer: tok,
      });
      const gold = gsm8kNormalize(b.target as string);
      const filtered: Record<string, string> = {};
      const m: Record<string, number> = {};
      for (const f of ["strict-match", "flexible-extract"] as const) {
        filtered[f] = gsm8kExtract(r.text, f);
        m[`exact_match,${f}`] = gsm8kNormalize(filtered[f]) === gold ? 1 : 0;
      }
      per.push(m);
      requests++;
      if (opts.logSamples) {
        samples.push({
          docId: offset + i,
          target: b.target,
          arguments: [[b.prompt!]],
          resps: [r.text],
          filtered,
          metrics: m,
        });
      }
      bar?.tick(1);
      report(i + 1, built.length);
    }
  } else {
    const reqs = built.flatMap((b) => b.requests);
    const res = await loglikelihood(model, reqs, {
      tokenizer: tok,
      maxLength,
      batch: opts.batch,
      reuse: opts.reuse,
      ort: opts.ort,
      addBos,
      onProgress: (d, t) => {
        bar?.tick(d - requests);
        requests = d;
        report(d, t);
      },
    });
    requests = reqs.length;
    let k = 0;
    built.forEach((b, i) => {
      const rs = res.slice(k, k + b.requests.length);
      k += b.requests.length;
      const tr = rs.some((r) => r.truncated);
      if (tr) truncated += rs.filter((r) => r.truncated).length;
      let m: Record<string, number>;
      if (task.outputType === "loglikelihood") {
        lls.push(rs[0].logprob);
        m = { perplexity: rs[0].logprob, acc: rs[0].isGreedy ? 1 : 0 };
      } else {
        const mc = multipleChoiceMetrics(rs.map((r) => r.logprob), b.choices, b.target as number);
        m = task.metrics.includes("acc_norm") ? mc : { acc: mc.acc };
      }
      per.push(m);
      if (opts.logSamples) {
        samples.push({
          docId: offset + i,
          target: b.target,
          arguments: b.requests.map((r) => [r.context, r.continuation]),
          resps: rs.map((r) => [r.logprob, r.isGreedy]),
          metrics: m,
          ...(tr ? { truncated: true } : {}),
        });
      }
    });
  }
  await bar?.done();
  const metrics: MetricValue[] = task.metrics.map((key) => {
    const [metric, filter = "none"] = key.split(",");
    const xs = per.map((m) => m[key]);
    if (metric === "perplexity") {
      return {
        metric,
        filter,
        value: perplexityAgg(lls),
        stderr: bootstrapStderr(perplexityAgg, lls, opts.bootstrapIters ?? 100000),
        higherIsBetter: false,
      };
    }
    return { metric, filter, value: mean(xs), stderr: meanStderr(xs), higherIsBetter: true };
  });
  const allFiles = [...files, ...few.files];
  const deviations: string[] = [];
  if (task.name === "hellaswag") {
    deviations.push(
      "contexts from llama.cpp's text layout: ctx_b not capitalize()d as lm-eval does",
    );
  }
  if (truncated > 0) {
    deviations.push(
      `${truncated} continuations longer than maxLength ${maxLength}: only their last ` +
        `${maxLength} tokens scored (lm-eval asserts)`,
    );
  }
  return {
    task: name,
    version: task.version,
    metrics,
    protocol: {
      dataset: task.dataset,
      outputType: task.outputType,
      numFewshot,
      fewshot: numFewshot > 0
        ? { sampler: task.sampler ?? "default", seed: opts.seed ?? 1234 }
        : null,
      targetDelimiter: task.targetDelimiter ?? " ",
      fewshotDelimiter: task.fewshotDelimiter ?? "\n\n",
      description: task.description ?? "",
      normalisation: task.metrics.includes("acc_norm")
        ? "acc_norm: argmax of loglikelihood / len(choice) in characters (lm-eval)"
        : "none",
      files: allFiles,
      dataChecksum: await sha256Text(allFiles.map((f) => f.sha256).join("\n")),
      tokenization: { tokenizer: tok.name, addBos, bosId: tok.bosId, maxLength },
      engine: task.outputType === "generate_until"
        ? { engine: "typescript", fallback: "generation runs the TypeScript forward's KV cache" }
        : await loglikelihoodEngine(model, { ort: opts.ort }),
      ...(task.generation
        ? {
          generation: {
            until: task.generation.until,
            maxGenToks: opts.maxGenToks ?? task.generation.maxGenToks,
            greedy: true as const,
          },
        }
        : {}),
      docs: { total: all.length, evaluated: docs.length },
      deviations,
    },
    requests,
    truncated,
    seconds: (performance.now() - t0) / 1000,
    ...(opts.logSamples ? { samples } : {}),
  };
}

/**
 * lm-eval's `pooled_sample_stderr`: the standard error of a group mean from its members'
 * standard errors and sizes.
 */
export function pooledStderr(stderrs: number[], sizes: number[]): number {
  let num = 0, n = 0;
  for (let i = 0; i < sizes.length; i++) {
    num += (sizes[i] - 1) * stderrs[i] ** 2 * sizes[i];
    n += sizes[i];
  }
  return Math.sqrt(num / (n - sizes.length) / n);
}

/**
 * Evaluates `model` on lm-eval tasks (names as lm-eval's, e.g. "piqa", "arc_easy", "mmlu",
 * "mmlu_anatomy", "gsm8k"). Returns one result per task; a group ("mmlu") adds a record with
 * the size-weighted (micro) accuracy as lm-eval reports it, `acc_macro` (mean over subjects),
 * and lm-eval's pooled standard error. Unknown names throw {@linkcode OptionError} listing the
 * tasks before anything runs.
 */
export async function evaluate(
  model: Model,
  tasks: readonly string[],
  opts: EvaluateOptions = {},
): Promise<EvalResult[]> {
  if (!Array.isArray(tasks) || tasks.length === 0) {
    throw new OptionError("tasks", "give at least one task name");
  }
  expandTasks(tasks); // validates every name first
  const out: EvalResult[] = [];
  for (const name of tasks) {
    const members = TASK_GROUPS[name];
    if (!members) {
      out.push(await runTask(model, name, opts));
      continue;
    }
    const t0 = performance.now();
    const rs: EvalResult[] = [];
    for (const m of members) rs.push(await runTask(model, m, opts));
    out.push(...rs, await groupResult(name, rs, (performance.now() - t0) / 1000));
  }
  return out;
}

/**
 * The record of a task group (e.g. "mmlu") from its members' results, as {@linkcode evaluate}
 * adds it: size-weighted (micro) `acc`, lm-eval's pooled standard error, and `acc_macro`.
 * `seconds` is the group's wall time.
 */
export async function groupResult(
  name: string,
  rs: EvalResult[],
  seconds: number,
): Promise<EvalResult> {
  const sizes = rs.map((r) => r.protocol.docs.evaluated);
  const accs = rs.map((r) => r.metrics.find((m) => m.metric === "acc")!);
  const N = sizes.reduce((a, b) => a + b, 0);
  const micro = accs.reduce((s, a, i) => s + a.value * sizes[i], 0) / N;
  const files = rs.flatMap((r) => r.protocol.files);
  return {
    task: name,
    version: rs[0].version,
    metrics: [
      {
        metric: "acc",
        filter: "none",
        value: micro,
        stderr: pooledStderr(accs.map((a) => a.stderr), sizes),
        higherIsBetter: true,
      },
      {
        metric: "acc_macro",
        filter: "none",
        value: mean(accs.map((a) => a.value)),
        stderr: NaN,
        higherIsBetter: true,
      },
    ],
    protocol: {
      ...rs[0].protocol,
      dataset: `${name} group (${rs.length} tasks, weight_by_size)`,
      description: "per subject",
      files,
      dataChecksum: await sha256Text(files.map((f) => f.sha256).join("\n")),
      docs: { total: rs.reduce((s, r) => s + r.protocol.docs.total, 0), evaluated: N },
    },
    requests: rs.reduce((s, r) => s + r.requests, 0),
    truncated: rs.reduce((s, r) => s + r.truncated, 0),
    seconds,
    subtasks: rs.map((r) => r.task),
  };
}

/**
 * One result from results of consecutive slices of one task (`offset`/`limit`, each run with
 * `logSamples`): samples concatenated, mean metrics (acc, acc_norm, exact_match) and their
 * standard errors recomputed over all documents, times and request counts summed. Throws
 * {@linkcode OptionError} for slices of different tasks, without samples, that are not
 * consecutive, or with a perplexity metric (its bootstrap needs the whole run).
 */
export function mergeSlices(slices: readonly EvalResult[]): EvalResult {
  if (slices.length === 0) throw new OptionError("slices", "give at least one result");
  const first = slices[0];
  const samples: EvalSample[] = [];
  for (const r of slices) {
    if (r.task !== first.task) {
      throw new OptionError("slices", `mixes tasks ${first.task} and ${r.task}`);
    }
    if (!r.samples) throw new OptionError("slices", `a ${r.task} slice has no samples`);
    for (const x of r.samples) {
      const want = samples.length === 0 ? first.samples![0]?.docId ?? 0 : samples.at(-1)!.docId + 1;
      if (x.docId !== want) {
        throw new OptionError(
          "slices",
          `document ${x.docId} follows ${want - 1} (not consecutive)`,
        );
      }
      samples.push(x);
    }
  }
  const metrics = first.metrics.map((m) => {
    if (m.metric === "perplexity") {
      throw new OptionError("slices", "perplexity cannot be merged from slices");
    }
    const key = m.filter === "none" ? m.metric : `${m.metric},${m.filter}`;
    const xs = samples.map((x) => x.metrics[key]);
    return { ...m, value: mean(xs), stderr: meanStderr(xs) };
  });
  return {
    ...first,
    metrics,
    protocol: {
      ...first.protocol,
      docs: { total: first.protocol.docs.total, evaluated: samples.length },
      deviations: [...new Set(slices.flatMap((r) => r.protocol.deviations))],
    },
    requests: slices.reduce((s, r) => s + r.requests, 0),
    truncated: slices.reduce((s, r) => s + r.truncated, 0),
    seconds: slices.reduce((s, r) => s + r.seconds, 0),
    samples,
  };
}

/** An lm-eval-style Markdown table of results (`|Tasks|Version|Filter|n-shot|Metric|…|`). */
export function resultsMarkdown(results: readonly EvalResult[]): string {
  const rows = [["Tasks", "Version", "Filter", "n-shot", "Metric", "", "Value", "", "Stderr"]];
  for (const r of results) {
    r.metrics.forEach((m, i) => {
      rows.push([
        i === 0 ? r.task : "",
        i === 0 ? String(r.version) : "",
        m.filter,
        i === 0 ? String(r.protocol.numFewshot) : "",
        m.metric,
        m.higherIsBetter ? "↑" : "↓",
        m.value.toFixed(4),
        "±",
        Number.isFinite(m.stderr) ? m.stderr.toFixed(4) : "N/A",
      ]);
    });
  }
  const w = rows[0].map((_, j) => Math.max(...rows.map((r) => r[j].length)));
  const right = new Set([1, 3, 6, 8]);
  const line = (r: string[]) =>
    "|" + r.map((c, j) => right.has(j) ? c.padStart(w[j]) : c.padEnd(w[j])).join("|") + "|";
  const sep = "|" + w.map((n, j) => right.has(j) ? "-".repeat(n - 1) + ":" : "-".repeat(n))
    .join("|") +
    "|";
  return [line(rows[0]), sep, ...rows.slice(1).map(line)].join("\n");
}
