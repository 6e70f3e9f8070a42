/**
 * Strict option checking shared by every quantizer: unknown keys are refused with the list of
 * known ones and a "did you mean" (`groupsize` → `groupSize`), every value's type is checked (a
 * boolean must be a boolean: `actOrder: "false"` is an error, not act-order on) and every size or
 * count is bounded, so no option can make a loop run for hours (`mse: { grid: Infinity }`).
 * Error texts show the value's type (`bits: "4"` → `got string "4"`).
 *
 * Each method keeps its own semantic checks (e.g. `groupSize` ≠ 0, `init` with `numIter`); this
 * module checks keys, types and bounds first.
 * @module
 */
import { OptionError } from "../../errors.ts";

/** What one option may hold. */
export type OptionSpec =
  | { type: "boolean" }
  | { type: "int"; min: number; max: number }
  | { type: "number"; min?: number; max?: number; gt?: number; lt?: number }
  | { type: "enum"; values: readonly (string | number | boolean)[] }
  | {
    type: "object";
    spec: Record<string, OptionSpec>;
    /** Errors name the nested path ("admm.rho"); default: the top-level option ("mse"). */
    path?: boolean;
  }
  | { type: "oneOf"; of: readonly OptionSpec[]; want: string };

/** Largest lazy-batch / block size accepted. */
export const MAX_BLOCKSIZE = 2 ** 20;
/** Largest group size accepted. */
export const MAX_GROUP = 2 ** 24;
/** Largest iteration / pass count accepted (QuantEase `numIter`, QuIP `npasses`, ADMM `niters`). */
export const MAX_ITERS = 100_000;
/** Largest MSE-search `grid` accepted: candidates `⌊maxshrink · grid⌋`, each a pass over the slice. */
export const MAX_MSE_GRID = 10_000;

/** The MSE clipping-search option (`true`/`false` or `{ norm, grid, maxshrink }`). */
export const MSE_SPEC: OptionSpec = {
  type: "oneOf",
  want: "true, false or { norm, grid, maxshrink }",
  of: [
    { type: "boolean" },
    {
      type: "object",
      spec: {
        norm: { type: "number", gt: 0, max: 1000 },
        grid: { type: "int", min: 1, max: MAX_MSE_GRID },
        maxshrink: { type: "number", gt: 0, max: 1 },
      },
    },
  ],
};

/** Options every uniform-grid method shares (bits, groups, symmetry, MSE search). */
export const GRID_SPECS: Record<string, OptionSpec> = {
  bits: { type: "int", min: 1, max: 16 },
  groupSize: { type: "int", min: -1, max: MAX_GROUP },
  sym: { type: "boolean" },
  mse: MSE_SPEC,
  partialGroups: { type: "boolean" },
};

/** GPTQ-family options (dampening, lazy batch, act-order, static groups). */
export const GPTQ_SPECS: Record<string, OptionSpec> = {
  ...GRID_SPECS,
  percdamp: { type: "number", gt: 0, max: 1e6 },
  blocksize: { type: "int", min: 1, max: MAX_BLOCKSIZE },
  actOrder: { type: "boolean" },
  staticGroups: { type: "boolean" },
};

/** A value in words: `string "4"`, `number NaN`, `null`, `an array`, `an object`. */
export function describeValue(v: unknown): string {
  if (v === null) return "null";
  if (v === undefined) return "undefined";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") {
    const s = JSON.stringify(v);
    return `string ${s.length > 80 ? s.slice(0, 80) + '…"' : s}`;
  }
  if (typeof v === "object") return "an object";
  if (typeof v === "function") return "a function";
  return `${typeof v} ${String(v)}`;
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0];
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const t = d[j];
      d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = t;
    }
  }
  return d[b.length];
}

/** The known key closest to `key` (case-insensitive match first, then edit distance ≤ 2). */
export function didYouMean(key: string, known: readonly string[]): string | undefined {
  const lower = key.toLowerCase().replace(/[_-]/g, "");
  const ci = known.find((k) => k.toLowerCase() === lower);
  if (ci) return ci;
  let best: string | undefined, bd = 3;
  for (const k of known) {
    const dd = editDistance(key.toLowerCase(), k.toLowerCase());
    if (dd < bd) [best, bd] = [k, dd];
  }
  return best;
}

function want(s: OptionSpec): string {
  switch (s.type) {
    case "boolean":
      return "true or false";
    case "int":
      return `an integer in ${s.min}–${s.max}`;
    case "number": {
      const lo = s.gt !== undefined ? `> ${s.gt}` : s.min !== undefined ? `≥ ${s.min}` : "";
      const hi = s.lt !== undefined ? `< ${s.lt}` : s.max !== undefined ? `≤ ${s.max}` : "";
      return `a finite number${lo ? " " + lo : ""}${lo && hi ? " and" : ""}${hi ? " " + hi : ""}`;
    }
    case "enum":
      return `one of ${s.values.map((v) => JSON.stringify(v)).join(", ")}`;
    case "object":
      return `an object with keys ${Object.keys(s.spec).join(", ")}`;
    case "oneOf":
      return s.want;
  }
}

function matches(v: unknown, s: OptionSpec, name: string): boolean {
  switch (s.type) {
    case "boolean":
      return typeof v === "boolean";
    case "int":
      return typeof v === "number" && Number.isInteger(v) && v >= s.min && v <= s.max;
    case "number":
      return typeof v === "number" && Number.isFinite(v) &&
        (s.gt === undefined || v > s.gt) && (s.min === undefined || v >= s.min) &&
        (s.lt === undefined || v < s.lt) && (s.max === undefined || v <= s.max);
    case "enum":
      return s.values.includes(v as string);
    case "object":
      if (v === null || typeof v !== "object" || Array.isArray(v)) return false;
      checkOptions(name, v, s.spec, {
        prefix: `${name}.`,
        owner: s.path ? undefined : name.split(".")[0],
      });
      return true;
    case "oneOf":
      return s.of.some((o) => matches(v, o, name));
  }
}

/**
 * Checks `opts` of `method` against `spec`: an object; no key outside `spec` (OptionError naming
 * the key, the known keys and the closest one); each present value (undefined counts as absent)
 * of its type and in its bounds (OptionError naming the option, what it must be, and the value
 * with its type). `prefix` names nested objects in errors (`mse.grid`, reported on the option
 * `mse`). `unknown: "ignore"` skips the unknown-key check: the synchronous cores
 * (`gptqQuantize`, ...) take the context keys `layer`/`backend` and callers' supersets; the public
 * factories (`gptq()`, ...) refuse unknown keys.
 */
export function checkOptions(
  method: string,
  opts: unknown,
  spec: Record<string, OptionSpec>,
  options: { prefix?: string; owner?: string; unknown?: "refuse" | "ignore" } = {},
): void {
  const prefix = options.prefix ?? "";
  // Errors inside a nested object are reported on its top-level option (`mse`), naming the key.
  const err = (key: string, msg: string) =>
    options.owner ? new OptionError(options.owner, `${key}: ${msg}`) : new OptionError(key, msg);
  if (opts === null || typeof opts !== "object" || Array.isArray(opts)) {
    throw new OptionError(
      prefix ? prefix.slice(0, -1) : "options",
      `${method} needs an options object, got ${describeValue(opts)}`,
    );
  }
  const known = Object.keys(spec);
  for (const k of options.unknown === "ignore" ? [] : Object.keys(opts)) {
    if (!Object.hasOwn(spec, k)) {
      const near = didYouMean(k, known);
      throw err(
        `${prefix}${k}`,
        `unknown ${prefix ? `${prefix.slice(0, -1)} ` : `${method} `}option${
          near ? ` (did you mean "${near}"?)` : ""
        }; known: ${known.join(", ")}`,
      );
    }
  }
  for (const k of known) {
    const v = (opts as Record<string, unknown>)[k];
    if (v === undefined) continue;
    const s = spec[k];
    // A nested object's own check throws its own OptionError (e.g. "mse.grid").
    if (!matches(v, s, `${prefix}${k}`)) {
      throw err(`${prefix}${k}`, `must be ${want(s)}, got ${describeValue(v)}`);
    }
  }
}

/** The entries of `opts` whose keys are in `spec` (e.g. GPTQ's options out of FrameQuant's). */
export function pickOptions<T extends object>(
  opts: T,
  spec: Record<string, OptionSpec>,
): Partial<T> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(opts)) if (Object.hasOwn(spec, k)) out[k] = v;
  return out as Partial<T>;
}

// --- Weight-activation quantization (issue 14): qllm-infer knobs, QRazor, SmoothQuant, ---
// --- LLM.int8(), ZeroQuant. ---

/** Options of `qrazorWeight` (`src/quant/weight_activation/qrazor.ts`). */
export const QRAZOR_WEIGHT_SPECS: Record<string, OptionSpec> = {
  bits: { type: "int", min: 2, max: 8 },
  sym: { type: "boolean" },
  groupSize: { type: "int", min: -1, max: MAX_GROUP },
  perChannel: { type: "boolean" },
  qrazorBits: { type: "int", min: 2, max: 8 },
  qrazorGroup: { type: "int", min: 1, max: MAX_GROUP },
};

/** Options of `smoothQuant` (`src/quant/weight_activation/smoothquant.ts`). */
export const SMOOTHQUANT_SPECS: Record<string, OptionSpec> = {
  alpha: { type: "number", min: 0, max: 1 },
};

/** Options of `llmInt8` (`src/quant/llm_int8.ts`); `threshold` may be Infinity (no outliers). */
export const LLM_INT8_SPECS: Record<string, OptionSpec> = {
  threshold: {
    type: "oneOf",
    want: "a number ≥ 0 or Infinity",
    of: [{ type: "number", min: 0 }, { type: "enum", values: [Infinity] }],
  },
};

/** Options of `zeroquantWeight` (`src/quant/weight_activation/zeroquant.ts`). */
export const ZEROQUANT_WEIGHT_SPECS: Record<string, OptionSpec> = {
  bits: { type: "int", min: 2, max: 8 },
  numberOfGroups: { type: "int", min: -1, max: MAX_GROUP },
};

const QLLM_DATASETS = ["pile", "wikitext2", "c4", "ptb", "tinystories"] as const;

function qllmTensorKeys(x: string, qrazor: boolean): Record<string, OptionSpec> {
  const out: Record<string, OptionSpec> = {
    [`bits_${x}`]: { type: "int", min: 2, max: 16 },
    [`sym_${x}`]: { type: "boolean" },
    [`groupsize_${x}`]: { type: "int", min: -1, max: MAX_GROUP },
  };
  if (x === "w") out.w_per_channel = { type: "boolean" };
  else {
    out[`${x}_per_tensor`] = { type: "boolean" };
    out[`${x}_per_token`] = { type: "boolean" };
  }
  if (qrazor) {
    out[`${x}_qrazor`] = { type: "boolean" };
    out[`${x}_qrazor_bits`] = { type: "int", min: 2, max: 16 };
    out[`${x}_qrazor_group`] = { type: "int", min: 1, max: MAX_GROUP };
  }
  return out;
}

/**
 * The qllm-infer configuration keys (seed 003's script variables), as `src/quant/pipeline/qllm_config.ts`
 * accepts them: per tensor `w`, `a`, `q`, `k`, `v`, `s` the bits / sym / groupsize / granularity
 * / QRazor switches, `k_pre_RoPE_quant`, the SmoothQuant and GPTQ blocks, the evaluation and
 * analysis switches, and this library's `llm_int8*` / `zeroquant*` keys.
 */
export const QLLM_CONFIG_SPECS: Record<string, OptionSpec> = {
  eval_ppl: { type: "boolean" },
  eval_ppl_seqlen: { type: "int", min: 2, max: 1 << 20 },
  use_cuda_graph: { type: "boolean" },
  seed: { type: "int", min: 0, max: 2 ** 31 - 1 },
  chat: { type: "boolean" },
  analyze_stats: { type: "boolean" },
  get_layerwise_distance: { type: "boolean" },
  ...qllmTensorKeys("a", true),
  ...qllmTensorKeys("w", true),
  ...qllmTensorKeys("q", true),
  ...qllmTensorKeys("k", true),
  ...qllmTensorKeys("v", true),
  ...qllmTensorKeys("s", true),
  k_pre_RoPE_quant: { type: "boolean" },
  smoothquant: { type: "boolean" },
  smoothquant_alpha: { type: "number", min: 0, max: 1 },
  smoothquant_dataset: { type: "enum", values: QLLM_DATASETS },
  smoothquant_nsamples: { type: "int", min: 1, max: 100_000 },
  smoothquant_seqlen: { type: "int", min: 2, max: 1 << 20 },
  gptq: { type: "boolean" },
  gptq_dataset: { type: "enum", values: QLLM_DATASETS },
  gptq_nsamples: { type: "int", min: 1, max: 100_000 },
  gptq_seqlen: { type: "int", min: 2, max: 1 << 20 },
  gptq_true_sequential: { type: "boolean" },
  gptq_percdamp: { type: "number", gt: 0, max: 1e6 },
  gptq_act_order: { type: "boolean" },
  gptq_static_groups: { type: "boolean" },
  llm_int8: { type: "boolean" },
  llm_int8_threshold: LLM_INT8_SPECS.threshold,
  zeroquant: { type: "boolean" },
  zeroquant_number_of_groups: { type: "int", min: -1, max: MAX_GROUP },
  zeroquant_ffn_bits: { type: "int", min: 2, max: 16 },
};
