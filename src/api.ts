/**
 * The public entry points with progress and the results ledger attached: `perplexity`,
 * `quantize`, `evaluate` and `exportModel` are recorded in the ledger; `perplexity` and `quantize` report progress in Jupyter (one live display) or on a terminal's stderr, unless
 * `{ progress: false }`, and record each run in the ledger (`src/ledger/`): an identical
 * perplexity already recorded is returned from it unless `{ force: true }`; `{ ledger: false }`
 * records nothing.
 * @module
 */
import {
  evalTokens,
  perplexity as perplexityCore,
  type PerplexityOptions,
  type PerplexityResult,
} from "./eval/perplexity.ts";
import { getTokenizer } from "./models/load.ts";
import type { Model } from "./models/model.ts";
import { quantize as quantizeCore, type QuantizeOptions } from "./quant/pipeline/pipeline.ts";
import { type Recipe, toRecipe } from "./quant/core/recipe.ts";
import type { WeightQuantizer } from "./quant/core/types.ts";
import { canonicalJson, modelIdentity, NotCanonicalError } from "./ledger/hash.ts";
import {
  deviceName,
  idsDigest,
  type LedgerSwitch,
  type RunInfo,
  tracked,
} from "./ledger/tracked.ts";
import { progressCallback } from "./viz/progress.ts";
import {
  type EvalResult,
  evaluate as evaluateCore,
  type EvaluateOptions,
} from "./eval/evaluate.ts";
import { expandTasks, getTask, taskFiles } from "./eval/tasks.ts";
import {
  type ExportableModel,
  exportModel as exportModelCore,
  type ExportOptions,
  type ExportReport,
} from "./io/export.ts";

/** Progress switch shared by the wrapped entry points. */
export interface ProgressSwitch {
  /** true: always show; false: never; default: in Jupyter or on a terminal. */
  progress?: boolean;
}

function hooksCacheable(hooks: unknown): boolean {
  if (hooks === undefined) return true;
  try {
    canonicalJson(hooks);
    return true;
  } catch (e) {
    if (e instanceof NotCanonicalError) return false;
    throw e;
  }
}

/**
 * Perplexity with the GPTQ protocol (see `src/eval/perplexity.ts`), with a progress bar over the
 * evaluation windows, recorded in the ledger (identity: the model's files and quantized tensors,
 * the evaluated token stream, the protocol options and the device).
 */
export function perplexity(
  model: Model,
  dataset: string,
  opts: PerplexityOptions & ProgressSwitch & LedgerSwitch = {},
): Promise<PerplexityResult & { run?: RunInfo }> {
  const onProgress = opts.onProgress ??
    (opts.progress === false
      ? undefined
      : progressCallback(`perplexity ${dataset}`, { enabled: opts.progress }));
  return tracked({
    kind: "perplexity",
    identity: async () => {
      const m = await modelIdentity(model);
      const tok = await getTokenizer(model);
      const data = await evalTokens(tok, dataset, { root: opts.root, path: opts.path });
      const { root: _r, path: _p, onProgress: _o, ...protocol } = opts;
      return {
        identity: {
          model: { hash: m.hash, parts: m.parts },
          config: { evaluator: "perplexity", dataset },
          data: { tokens: idsDigest(data.ids), count: data.ids.length },
          protocol: JSON.parse(canonicalJson(protocol)),
          device: deviceName(),
        },
        cacheable: m.cacheable && hooksCacheable(opts.hooks),
      };
    },
    run: () => perplexityCore(model, dataset, { ...opts, onProgress }),
    record: (r) => ({
      metrics: { ppl: r.ppl, nll: r.nll, tokens: r.tokens, windows: r.windows },
      result: r,
    }),
    revive: (s) => s as PerplexityResult,
  }, opts);
}

/**
 * Layer-wise quantization (see `src/quant/pipeline/pipeline.ts`), with a progress bar over the blocks that
 * names the layer being quantized, recorded in the ledger (identity: the model, the recipe with
 * every option, the calibration token ids, the pipeline options and the device; metrics: bits
 * per weight, mean relative error; the per-layer report). A quantized model is not stored in the
 * ledger: a repeated call recomputes (the pipeline's `workdir` resume is the way to reuse blocks).
 */
export function quantize(
  model: Model,
  recipe: Recipe | WeightQuantizer,
  opts: QuantizeOptions & ProgressSwitch & LedgerSwitch = {},
): Promise<Model> {
  const onProgress = opts.onProgress ??
    (opts.progress === false
      ? undefined
      : progressCallback("quantize", { enabled: opts.progress }));
  return tracked({
    kind: "quantize",
    identity: async () => {
      const m = await modelIdentity(model);
      const r = toRecipe(recipe);
      const config = Object.fromEntries(
        Object.entries(r).map(([k, q]) => [k, { method: q.name, options: q.options }]),
      );
      const c = opts.calib;
      return {
        identity: {
          model: { hash: m.hash, parts: m.parts },
          config: JSON.parse(canonicalJson({ recipe: config })),
          data: c
            ? {
              dataset: c.dataset,
              ids: idsDigest(c.ids),
              nsamples: c.ids.length,
              seqlen: c.seqlen,
            }
            : null,
          seed: c?.seed,
          protocol: {
            trueSequential: opts.trueSequential ?? true,
            chunk: opts.chunk ?? 8,
            residentBlocks: opts.residentBlocks ?? true,
          },
          device: opts.backend ? `${opts.backend.name}: ${opts.backend.description}` : deviceName(),
        },
        cacheable: false,
      };
    },
    run: () => quantizeCore(model, recipe, { ...opts, onProgress }),
    record: (qm) => {
      const rep = qm.report as { bitsPerWeight: number; layers: { relErr: number }[] };
      const errs = rep.layers.map((l) => l.relErr).filter((x) => Number.isFinite(x));
      return {
        metrics: {
          bitsPerWeight: rep.bitsPerWeight,
          meanRelErr: errs.length ? errs.reduce((a, b) => a + b, 0) / errs.length : NaN,
          layers: rep.layers.length,
        },
        report: rep,
      };
    },
  }, opts);
}

/**
 * Export (see `src/io/export.ts`: GGUF or GPTQ safetensors), recorded in the ledger (identity:
 * the model's files and quantized tensors, the format options and the output folder; metrics:
 * tensors written, bytes on disk, how many tensors are bit-exact and the largest decode error).
 * Never answered from the ledger: an export always writes its files.
 */
export function exportModel(
  model: ExportableModel & Model,
  dir: string,
  opts: ExportOptions & LedgerSwitch,
): Promise<ExportReport & { run?: RunInfo }> {
  const { ledger: _l, force: _f, label: _b, ...options } = opts;
  return tracked({
    kind: "export",
    identity: async () => {
      const m = await modelIdentity(model);
      return {
        identity: {
          model: { hash: m.hash, parts: m.parts },
          config: JSON.parse(canonicalJson({ export: options, dir })),
          data: null,
          protocol: {},
          device: deviceName(),
        },
        cacheable: false,
      };
    },
    run: () => exportModelCore(model, dir, options),
    record: (r) => {
      let bytes = 0;
      for (const f of r.files) {
        try {
          bytes += Deno.statSync(`${r.dir}/${f}`).size;
        } catch { /* a file the report names but a later step moved: not counted */ }
      }
      const errs = r.tensors.map((t) => t.maxAbsErr).filter((x) => Number.isFinite(x));
      return {
        metrics: {
          tensors: r.tensors.length,
          bytes,
          exact: r.tensors.filter((t) => t.maxAbsErr === 0).length,
          maxAbsErr: errs.length ? Math.max(...errs) : 0,
        },
        result: r,
      };
    },
    revive: (s) => s as ExportReport,
  }, opts);
}

/**
 * Task evaluation with lm-evaluation-harness protocols (see `src/eval/evaluate.ts`), recorded in
 * the ledger (identity: the model, the task names, the sha256 of every data file the tasks read,
 * the protocol options and the device; metrics: each task's metrics and standard errors). An
 * identical evaluation already recorded is returned from the ledger unless `{ force: true }`.
 */
export function evaluate(
  model: Model,
  tasks: readonly string[],
  opts: EvaluateOptions & LedgerSwitch = {},
): Promise<EvalResult[] & { run?: RunInfo }> {
  const { ledger: _l, force: _f, label: _b, ...options } = opts;
  return tracked({
    kind: "evaluate",
    identity: async () => {
      const m = await modelIdentity(model);
      const files: Record<string, string[]> = {};
      for (const name of expandTasks(tasks)) {
        const data = { root: options.root, paths: options.paths };
        files[name] = (await taskFiles(getTask(name), data)).map((f) => f.sha256);
      }
      const { root: _r, paths: _p, onProgress: _o, progress: _g, ...protocol } = options;
      return {
        identity: {
          model: { hash: m.hash, parts: m.parts },
          config: { evaluator: "tasks", tasks: [...tasks] },
          data: files,
          protocol: JSON.parse(canonicalJson(protocol)),
          device: deviceName(),
        },
        cacheable: m.cacheable && hooksCacheable(model.hooks),
      };
    },
    run: () => evaluateCore(model, tasks, options),
    record: (r) => {
      const metrics: Record<string, number> = {};
      for (const t of r) {
        for (const v of t.metrics) {
          const k = `${t.task}/${v.metric}${v.filter === "none" ? "" : `,${v.filter}`}`;
          metrics[k] = v.value;
          metrics[`${k}_stderr`] = v.stderr;
        }
      }
      return { metrics, result: r };
    },
    revive: (s) => s as EvalResult[],
  }, opts);
}
