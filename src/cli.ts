/**
 * The command-line interface, built from one {@linkcode COMMANDS} table: each command has a
 * one-line summary, its flags (with defaults and one-line descriptions, printed by
 * `cli <command> --help`) and a handler; `sweep` is delegated to `./ledger/sweep_cli.ts`.
 *
 * ```sh
 * deno task cli --help
 * deno task cli quantize --help
 * deno task cli generate --prompt "Once upon a time" --max-new-tokens 64
 * deno task cli ppl --dataset tinystories --windows 64
 * deno task cli quantize --method gptq --bits 3 --group-size 32 --act-order --windows 64
 * ```
 *
 * Every quantizer option has a flag; a bad value is reported as the error class and the flag the
 * user typed (`error: OptionError: --group-size: ...`), exit code 2 for usage errors (unknown
 * command or flag, a value that does not parse, a rejected option), 1 for failures while running.
 * `ppl` and `quantize` go through `src/api.ts` (results ledger: `--force`, `--no-ledger`).
 * @module
 */
import { defaultModelPath } from "./_paths.ts";
import { OptionError, QuantlabError } from "./errors.ts";
import type { WeightQuantizer } from "./quant/core/types.ts";
import type { Model } from "./models/model.ts";

/** How a flag's value is read. */
export type FlagKind = "string" | "int" | "number" | "bool";

/** One flag of a command. */
export interface FlagSpec {
  /** Name without the leading `--`. */
  name: string;
  /** Value type; "bool" flags take no value. */
  kind: FlagKind;
  /** One-line description for `--help`. */
  desc: string;
  /** Default shown in `--help` (the quantizer's own default for quantizer options). */
  default?: string;
  /** Placeholder of the value in `--help` (e.g. "N", "DIR"). */
  arg?: string;
  /** Older names still accepted. */
  aliases?: string[];
  /** The quantizer option this flag sets (`quantize`); nested options as "admm.rho". */
  option?: string;
  /** Methods the flag applies to (`quantize`); absent: a general flag. */
  methods?: string[];
  /** Converts the parsed value into the option's value (e.g. `--no-incoh` → false). */
  value?: (v: string | boolean | number) => unknown;
}

/** Parsed flag values by canonical name, and the spelling the user typed. */
export interface ParsedFlags {
  /** Values (strings for string flags, numbers for int/number, true for bool). */
  values: Record<string, string | number | boolean>;
  /** The flag as typed (`--nsamples` for an alias), for error messages. */
  typed: Record<string, string>;
  /** Positional arguments. */
  positionals: string[];
}

/** One command of the CLI. */
export interface Command {
  /** Command name. */
  name: string;
  /** One-line summary. */
  summary: string;
  /** Usage line after `deno task cli`. */
  usage: string;
  /** Flags (empty for delegated commands, which parse their own). */
  flags: FlagSpec[];
  /** Runs the command on parsed flags; returns the exit code. */
  run?: (f: ParsedFlags) => Promise<number>;
  /** A command that parses its own arguments (loaded on use). */
  delegate?: () => Promise<(args: string[]) => Promise<number>>;
}

/** The known name closest to `name` (edit distance ≤ 2, or a case/dash-insensitive match). */
function didYouMean(name: string, known: string[]): string | undefined {
  const norm = (x: string) => x.toLowerCase().replace(/[-_]/g, "");
  const exact = known.find((k) => norm(k) === norm(name));
  if (exact) return exact;
  let best: string | undefined, bd = 3;
  for (const k of known) {
    const d = Array.from({ length: k.length + 1 }, (_, j) => j);
    for (let i = 1; i <= name.length; i++) {
      let prev = d[0];
      d[0] = i;
      for (let j = 1; j <= k.length; j++) {
        const t = d[j];
        d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (name[i - 1] === k[j - 1] ? 0 : 1));
        prev = t;
      }
    }
    if (d[k.length] < bd) [best, bd] = [k, d[k.length]];
  }
  return best;
}

/** A usage error (bad flag or value): exit code 2. */
class UsageError extends OptionError {}

const METHODS = ["rtn", "gptq", "quantease", "quip", "framequant", "spqr", "oa", "bcq"];
const GRID = ["rtn", "gptq", "quantease", "framequant"];
const GPTQ_LIKE = ["gptq", "quantease", "framequant"];

const MODEL_FLAGS: FlagSpec[] = [
  {
    name: "model",
    kind: "string",
    arg: "PATH",
    desc: "model folder, GGUF file or hub id",
    default: "stories260K (../shared/data, else the hub)",
  },
  { name: "tokenizer", kind: "string", arg: "PATH", desc: "tokenizer (default: the model's)" },
];

const LEDGER_FLAGS: FlagSpec[] = [
  { name: "force", kind: "bool", desc: "recompute even if an identical run is in the ledger" },
  { name: "no-ledger", kind: "bool", desc: "do not record this run in the results ledger" },
];

const EVAL_FLAGS: FlagSpec[] = [
  {
    name: "windows",
    kind: "int",
    arg: "N",
    aliases: ["nsamples"],
    desc: "evaluate on the first N windows (0 = all)",
    default: "64",
  },
  {
    name: "seqlen",
    kind: "int",
    arg: "N",
    aliases: ["eval-seqlen"],
    desc: "tokens per evaluation window",
    default: "the model's context, at most 2048",
  },
  { name: "data-path", kind: "string", arg: "FILE", desc: "read the dataset from this file" },
];

/** Quantizer flags: every option of every method (see each quantizer's JSDoc). */
export const QUANT_FLAGS: FlagSpec[] = [
  {
    name: "bits",
    kind: "int",
    arg: "B",
    option: "bits",
    methods: METHODS,
    desc: "bits per weight code",
    default: "4",
  },
  {
    name: "group-size",
    kind: "int",
    arg: "G",
    option: "groupSize",
    methods: [...GRID, "spqr", "bcq"],
    desc: "columns per group; -1 = one grid per output channel",
    default: "-1",
  },
  {
    name: "sym",
    kind: "bool",
    option: "sym",
    methods: [...GRID, "spqr", "oa"],
    desc: "symmetric grid (oa: offset mode's sym)",
  },
  {
    name: "mse",
    kind: "bool",
    option: "mse",
    methods: GRID,
    desc: "MSE clipping search of the grids",
  },
  {
    name: "partial-groups",
    kind: "bool",
    option: "partialGroups",
    methods: GRID,
    desc: "allow a group size that does not divide the columns (shorter last group)",
  },
  {
    name: "per-tensor",
    kind: "bool",
    option: "perChannel",
    methods: ["rtn"],
    value: () => false,
    desc: "rtn: one grid for the whole tensor (no groups)",
  },
  {
    name: "percdamp",
    kind: "number",
    arg: "D",
    option: "percdamp",
    methods: [...GPTQ_LIKE, "quip", "spqr", "oa"],
    desc: "dampening, a fraction of the mean Hessian diagonal",
    default: "0.01",
  },
  {
    name: "blocksize",
    kind: "int",
    arg: "N",
    option: "blocksize",
    methods: [...GPTQ_LIKE, "quip"],
    desc: "columns per lazy batch",
    default: "128",
  },
  {
    name: "act-order",
    kind: "bool",
    option: "actOrder",
    methods: [...GPTQ_LIKE, "spqr"],
    desc: "columns in descending diag(H) order (spqr: permutation act_order)",
  },
  {
    name: "static-groups",
    kind: "bool",
    option: "staticGroups",
    methods: GPTQ_LIKE,
    desc: "fit group grids up front in the original column order",
  },
  // quantease
  {
    name: "num-iter",
    kind: "int",
    arg: "N",
    option: "numIter",
    methods: ["quantease"],
    desc: "coordinate-descent sweeps",
    default: "30",
  },
  {
    name: "init",
    kind: "string",
    arg: "weight|rtn|gptq",
    option: "init",
    methods: ["quantease"],
    desc: "starting point (reference: weight)",
    default: "weight",
  },
  {
    name: "relax",
    kind: "bool",
    option: "relax",
    methods: ["quantease"],
    desc: "skip rounding in iterations 1, 4, …, 25 (the reference's; default on)",
  },
  {
    name: "no-relax",
    kind: "bool",
    option: "relax",
    methods: ["quantease"],
    value: () => false,
    desc: "round in every sweep (monotone objective)",
  },
  {
    name: "outlier",
    kind: "number",
    arg: "F",
    option: "outlier",
    methods: ["quantease"],
    desc: "fraction of weights kept in full precision",
    default: "0",
  },
  {
    name: "structure-outlier",
    kind: "bool",
    option: "structureOutlier",
    methods: ["quantease"],
    desc: "outliers as whole input columns",
  },
  {
    name: "alpha",
    kind: "number",
    arg: "A",
    option: "alpha",
    methods: ["quantease"],
    desc: "step multiplier of the outlier IHT step",
    default: "1",
  },
  // quip
  {
    name: "quip-method",
    kind: "string",
    arg: "ldlq|ldlqRG|allbal|ldlbal_admm",
    option: "method",
    methods: ["quip"],
    desc: "rounding method",
    default: "ldlq",
  },
  {
    name: "npasses",
    kind: "int",
    arg: "N",
    option: "npasses",
    methods: ["quip"],
    desc: "greedy passes after rounding",
    default: "0",
  },
  {
    name: "no-incoh",
    kind: "bool",
    option: "incoh",
    methods: ["quip"],
    value: () => false,
    desc: "no incoherence processing (qfn a, no rescale/rotation/GPTQ H)",
  },
  {
    name: "pre-gptqh",
    kind: "bool",
    option: "preGptqH",
    methods: ["quip"],
    desc: "GPTQ's dead-input handling and dampening of H (default: with incoh)",
  },
  {
    name: "no-pre-gptqh",
    kind: "bool",
    option: "preGptqH",
    methods: ["quip"],
    value: () => false,
    desc: "turn --pre-gptqh off",
  },
  {
    name: "pre-rescale",
    kind: "bool",
    option: "preRescale",
    methods: ["quip"],
    desc: "diagonal rescaling of W and H (default: with incoh)",
  },
  {
    name: "no-pre-rescale",
    kind: "bool",
    option: "preRescale",
    methods: ["quip"],
    value: () => false,
    desc: "turn --pre-rescale off",
  },
  {
    name: "pre-proj",
    kind: "bool",
    option: "preProj",
    methods: ["quip"],
    desc: "random orthogonal rotations (default: with incoh)",
  },
  {
    name: "no-pre-proj",
    kind: "bool",
    option: "preProj",
    methods: ["quip"],
    value: () => false,
    desc: "turn --pre-proj off",
  },
  {
    name: "proj",
    kind: "string",
    arg: "kron|hadamard",
    option: "proj",
    methods: ["quip"],
    desc: "rotation kind",
    default: "kron",
  },
  {
    name: "qfn",
    kind: "string",
    arg: "a|b",
    option: "qfn",
    methods: ["quip"],
    desc: "grid after pre-processing",
    default: "b with incoh, else a",
  },
  {
    name: "quip-seed",
    kind: "int",
    arg: "S",
    option: "seed",
    methods: ["quip"],
    desc: "seed of the rotations",
    default: "0",
  },
  {
    name: "unbiased",
    kind: "bool",
    option: "unbiased",
    methods: ["quip"],
    desc: "stochastic rounding",
  },
  {
    name: "no-lazy-batch",
    kind: "bool",
    option: "lazyBatch",
    methods: ["quip"],
    value: () => false,
    desc: "no lazy-batch updates (same result up to rounding)",
  },
  {
    name: "admm-rho",
    kind: "number",
    arg: "R",
    option: "admm.rho",
    methods: ["quip"],
    desc: "ldlbal_admm's ADMM penalty",
    default: "0.1",
  },
  {
    name: "admm-niters",
    kind: "int",
    arg: "N",
    option: "admm.niters",
    methods: ["quip"],
    desc: "ldlbal_admm's ADMM iterations",
    default: "100",
  },
  {
    name: "column-order",
    kind: "string",
    arg: "gptq|reference",
    option: "columnOrder",
    methods: ["quip"],
    desc: "ldlq/ldlqRG column order (reference: last to first)",
    default: "gptq",
  },
  {
    name: "qfna-clamp",
    kind: "bool",
    option: "qfnaClamp",
    methods: ["quip"],
    desc: "qfn a: clamp W/scale + zero before rounding (the reference's)",
  },
  {
    name: "greedy-clamp",
    kind: "string",
    arg: "step|pass",
    option: "greedyClamp",
    methods: ["quip"],
    desc: "greedy passes clamp per step, or after each pass (the reference's)",
    default: "step",
  },
  // framequant
  {
    name: "redundancy",
    kind: "number",
    arg: "R",
    option: "r",
    methods: ["framequant"],
    desc: "input-side frame redundancy",
    default: "1",
  },
  {
    name: "row-redundancy",
    kind: "number",
    arg: "R",
    option: "rowR",
    methods: ["framequant"],
    desc: "output-side frame redundancy",
    default: "--redundancy",
  },
  {
    name: "frame-seed",
    kind: "int",
    arg: "S",
    option: "seed",
    methods: ["framequant"],
    desc: "seed of the frames' random signs",
    default: "0",
  },
  {
    name: "clip-sigma",
    kind: "string",
    arg: "S|off",
    option: "clipSigma",
    methods: ["framequant"],
    value: (v) => v === "off" ? false : Number(v),
    desc: "clip frame rows to mean ± S·σ (off: no clip)",
    default: "2",
  },
  {
    name: "norm-damp",
    kind: "number",
    arg: "D",
    option: "normDamp",
    methods: ["framequant"],
    desc: "added to the trace-normalized H's diagonal",
    default: "0.01",
  },
  {
    name: "frames",
    kind: "string",
    arg: "hadamard|reference",
    option: "frames",
    methods: ["framequant"],
    desc: "frame construction (reference: r = 1 fusion frames)",
    default: "hadamard",
  },
  {
    name: "grid-fit",
    kind: "string",
    arg: "minmax|reference",
    option: "gridFit",
    methods: ["framequant"],
    desc: "grid rule (reference: mean ± x_sigma·σ)",
    default: "minmax",
  },
  // spqr
  {
    name: "qq-scale-bits",
    kind: "int",
    arg: "B",
    option: "qqScaleBits",
    methods: ["spqr", "oa"],
    desc: "bits of the second-level scale quantization",
  },
  {
    name: "qq-zero-bits",
    kind: "int",
    arg: "B",
    option: "qqZeroBits",
    methods: ["spqr", "oa"],
    desc: "bits of the second-level zero quantization",
  },
  {
    name: "qq-group-size",
    kind: "int",
    arg: "G",
    option: "qqGroupSize",
    methods: ["spqr", "oa"],
    desc: "group size of the second-level statistics",
  },
  {
    name: "qq-zero-sym",
    kind: "bool",
    option: "qqZeroSym",
    methods: ["spqr", "oa"],
    desc: "symmetric second-level zero quantization",
  },
  {
    name: "round-zero",
    kind: "bool",
    option: "roundZero",
    methods: ["spqr"],
    desc: "round zero points to integers",
  },
  {
    name: "outlier-threshold",
    kind: "number",
    arg: "T",
    option: "outlierRelativeThreshold",
    methods: ["spqr"],
    desc: "relative outlier threshold",
  },
  {
    name: "simplified-outliers",
    kind: "bool",
    option: "simplifiedOutliers",
    methods: ["spqr"],
    desc: "the simplified outlier criterion",
  },
  // oa
  {
    name: "per-out-dim",
    kind: "bool",
    option: "perOutDim",
    methods: ["oa"],
    desc: "statistics per output dimension",
  },
  {
    name: "block-size",
    kind: "int",
    arg: "N",
    option: "blockSize",
    methods: ["oa"],
    desc: "OA block size",
  },
  {
    name: "outlier-mode",
    kind: "bool",
    option: "outlierMode",
    methods: ["oa"],
    desc: "outlier mode",
  },
  { name: "offset-mode", kind: "bool", option: "offsetMode", methods: ["oa"], desc: "offset mode" },
  {
    name: "nearest",
    kind: "bool",
    option: "nearest",
    methods: ["oa"],
    desc: "round to nearest (no error feedback)",
  },
  {
    name: "baseline",
    kind: "bool",
    option: "baseline",
    methods: ["oa"],
    desc: "the baseline variant",
  },
  // bcq
  {
    name: "rounds",
    kind: "int",
    arg: "N",
    option: "rounds",
    methods: ["bcq"],
    desc: "alternating rounds",
    default: "30",
  },
  {
    name: "no-bst",
    kind: "bool",
    option: "useBst",
    methods: ["bcq"],
    value: () => false,
    desc: "no binary-search-tree code search",
  },
];

const QUANTIZE_FLAGS: FlagSpec[] = [
  ...MODEL_FLAGS,
  {
    name: "method",
    kind: "string",
    arg: METHODS.join("|"),
    desc: "quantization method",
    default: "gptq",
  },
  ...QUANT_FLAGS,
  {
    name: "calib",
    kind: "string",
    arg: "NAME",
    desc: "calibration dataset",
    default: "tinystories",
  },
  {
    name: "calib-samples",
    kind: "int",
    arg: "N",
    aliases: ["calib-nsamples"],
    desc: "calibration sequences",
    default: "128",
  },
  {
    name: "calib-seqlen",
    kind: "int",
    arg: "N",
    desc: "tokens per calibration sequence",
    default: "min(256, context)",
  },
  { name: "seed", kind: "int", arg: "S", desc: "calibration sampling seed", default: "0" },
  {
    name: "no-true-sequential",
    kind: "bool",
    desc: "collect each block's statistics once (not after each sub-layer)",
  },
  { name: "workdir", kind: "string", arg: "DIR", desc: "resume folder (finished blocks are kept)" },
  {
    name: "stream",
    kind: "bool",
    desc: "stream blocks through --workdir (memory bounded by one block; layer-wise perplexity)",
  },
  {
    name: "eval",
    kind: "string",
    arg: "NAME|none",
    desc: "evaluate FP and quantized perplexity on the same windows",
    default: "tinystories",
  },
  ...EVAL_FLAGS,
  {
    name: "save",
    kind: "string",
    arg: "DIR",
    desc: "export the quantized model (see --format)",
  },
  {
    name: "format",
    kind: "string",
    arg: "gguf|gptq|onnx",
    desc: "export format (onnx: MatMulNBits for 4-bit grids, onnxruntime / transformers.js)",
    default: "gguf",
  },
  { name: "external-data", kind: "bool", desc: "onnx: weights in onnx/model.onnx_data" },
  {
    name: "gguf-type",
    kind: "string",
    arg: "auto|f32|f16|q8_0|q4_0|q4_1",
    desc: "GGUF tensor type",
    default: "auto",
  },
  { name: "f16-scales", kind: "bool", desc: "round scales/zeros to fp16 (as exported formats do)" },
  { name: "overwrite", kind: "bool", desc: "replace an existing --save folder" },
  ...LEDGER_FLAGS,
];

function flagLine(f: FlagSpec): string {
  const head = `--${f.name}${f.kind === "bool" ? "" : ` ${f.arg ?? "V"}`}`;
  const alias = f.aliases?.length ? ` (also --${f.aliases.join(", --")})` : "";
  const dflt = f.default !== undefined ? ` [default: ${f.default}]` : "";
  return `  ${head.padEnd(34)} ${f.desc}${dflt}${alias}`;
}

/** The `--help` text of a command. */
export function commandHelp(c: Command): string {
  const lines = [`usage: deno task cli ${c.usage}`, "", c.summary];
  if (c.name === "quantize") {
    const general = c.flags.filter((f) => !f.methods);
    const shared = c.flags.filter((f) => f.methods && f.methods.length > 1);
    lines.push("", "general:", ...general.map(flagLine));
    lines.push("", "quantizer options shared by several methods:");
    for (const f of shared) lines.push(`${flagLine(f)}  (${f.methods!.join(", ")})`);
    for (const m of METHODS) {
      const own = c.flags.filter((f) => f.methods?.length === 1 && f.methods[0] === m);
      if (own.length) lines.push("", `${m}:`, ...own.map(flagLine));
    }
  } else if (c.flags.length) {
    lines.push("", "flags:", ...c.flags.map(flagLine));
  }
  lines.push("  --help".padEnd(37) + "show this help");
  return lines.join("\n");
}

/** The top-level `--help` text. */
export function mainHelp(): string {
  const w = Math.max(...COMMANDS.map((c) => c.name.length)) + 2;
  return [
    "usage: deno task cli <command> [flags]   (deno task cli <command> --help for its flags)",
    "",
    "commands:",
    ...COMMANDS.map((c) => `  ${c.name.padEnd(w)} ${c.summary}`),
  ].join("\n");
}

/** Parses `args` against `flags`: `--name value`, `--name=value`, bool flags without a value. */
export function parseFlags(cmd: string, args: string[], flags: FlagSpec[]): ParsedFlags {
  const byName = new Map<string, FlagSpec>();
  for (const f of flags) {
    byName.set(f.name, f);
    for (const a of f.aliases ?? []) byName.set(a, f);
  }
  const out: ParsedFlags = { values: {}, typed: {}, positionals: [] };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith("--")) {
      out.positionals.push(a);
      continue;
    }
    const eq = a.indexOf("=");
    const name = a.slice(2, eq < 0 ? undefined : eq);
    const f = byName.get(name);
    if (!f) {
      const near = didYouMean(name, [...byName.keys()]);
      throw new UsageError(
        `--${name}`,
        `unknown flag for ${cmd}${
          near ? ` (did you mean --${near}?)` : ""
        }; see: deno task cli ${cmd} --help`,
      );
    }
    const typed = `--${name}`;
    let raw: string | boolean;
    if (f.kind === "bool") {
      if (eq >= 0) throw new UsageError(typed, `takes no value, got "${a.slice(eq + 1)}"`);
      raw = true;
    } else if (eq >= 0) raw = a.slice(eq + 1);
    else {
      if (i + 1 >= args.length) throw new UsageError(typed, `needs a value (${f.arg ?? "V"})`);
      raw = args[++i];
    }
    let v: string | number | boolean = raw;
    if (f.kind === "int" || f.kind === "number") {
      const n = Number(raw);
      if (raw === "" || !Number.isFinite(n) || (f.kind === "int" && !Number.isInteger(n))) {
        throw new UsageError(
          typed,
          `expected ${f.kind === "int" ? "an integer" : "a number"}, got "${raw}"`,
        );
      }
      v = n;
    }
    // Several flags may set one option (--relax / --no-relax): keyed by flag name.
    out.values[f.name] = v;
    out.typed[f.name] = typed;
  }
  return out;
}

/** Builds `method`'s options object from the parsed quantizer flags. */
export function quantizerOptions(method: string, p: ParsedFlags): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const f of QUANT_FLAGS) {
    if (!(f.name in p.values)) continue;
    if (!f.methods!.includes(method)) {
      throw new UsageError(
        p.typed[f.name],
        `does not apply to --method ${method} (it applies to ${f.methods!.join(", ")})`,
      );
    }
    const v = f.value ? f.value(p.values[f.name]) : p.values[f.name];
    const [a, b] = f.option!.split(".");
    if (b) o[a] = { ...(o[a] as object ?? {}), [b]: v };
    else o[a] = v;
  }
  return o;
}

/** The flag (as typed, else its name) that sets quantizer option `option` for `method`. */
function flagOf(option: string, method: string, p: ParsedFlags): string | undefined {
  const cands = QUANT_FLAGS.filter((f) =>
    f.methods!.includes(method) && (f.option === option || f.option === option.split(".")[0])
  );
  const given = cands.find((f) => f.name in p.values);
  return given ? p.typed[given.name] : cands[0] ? `--${cands[0].name}` : undefined;
}

/** Makes the quantizer of `method` (options checked strictly by the method's factory). */
export async function makeQuantizer(method: string, p: ParsedFlags): Promise<WeightQuantizer> {
  const o = quantizerOptions(method, p);
  o.bits ??= 4;
  const q = {
    ...(await import("./quant/weight_only/rtn.ts")),
    ...(await import("./quant/weight_only/gptq.ts")),
    ...(await import("./quant/weight_only/quantease.ts")),
    ...(await import("./quant/weight_only/quip.ts")),
    ...(await import("./quant/weight_only/framequant.ts")),
    ...(await import("./quant/weight_only/spqr.ts")),
    ...(await import("./quant/weight_only/oa.ts")),
    ...(await import("./quant/weight_only/bcq.ts")),
  };
  try {
    switch (method) {
      case "rtn":
        return q.rtn(o as never);
      case "gptq":
        return q.gptq(o as never);
      case "quantease":
        return q.quantease(o as never);
      case "quip":
        return q.quip(o as never);
      case "framequant":
        return q.framequant(o as never);
      case "spqr": {
        const { actOrder, ...rest } = o;
        return q.spqr({
          ...rest,
          permutationOrder: actOrder ? "act_order" : "identity",
        } as never);
      }
      case "oa": {
        const { bits, ...rest } = o;
        return q.oa({
          ...rest,
          wbits: bits,
          trueSequential: !p.values["no-true-sequential"],
        } as never);
      }
      case "bcq":
        return q.bcq({ partialGroups: true, ...o } as never);
    }
  } catch (e) {
    if (e instanceof OptionError && !(e instanceof UsageError)) {
      const key = method === "oa" && e.option === "wbits" ? "bits" : e.option;
      const flag = flagOf(key, method, p) ?? e.option;
      const msg = e.message.replace(/^option [^:]+: /, "");
      throw new UsageError(flag, `${msg} (option ${e.option} of ${method})`);
    }
    throw e;
  }
  throw new UsageError(
    p.typed.method ?? "--method",
    `unknown method "${method}" (one of ${METHODS.join(", ")})`,
  );
}

function str(p: ParsedFlags, name: string): string | undefined {
  const v = p.values[name];
  return v === undefined ? undefined : String(v);
}

function int(p: ParsedFlags, name: string): number | undefined {
  const v = p.values[name];
  return v === undefined ? undefined : Number(v);
}

const num = int;

async function openModel(p: ParsedFlags): Promise<Model> {
  const { loadModel } = await import("./models/load.ts");
  return await loadModel(str(p, "model") ?? (await defaultModelPath()), {
    tokenizer: str(p, "tokenizer"),
  });
}

/** A progress callback over evaluation windows that also shows tokens/s (ETA is the bar's). */
async function evalProgress(label: string, seqlen: number) {
  const { progressCallback } = await import("./viz/progress.ts");
  const cb = progressCallback(label);
  const t0 = performance.now();
  return (done: number, total: number) => {
    const s = (performance.now() - t0) / 1000;
    cb({ done, total, info: s > 0 ? `${((done * seqlen) / s).toFixed(0)} tok/s` : undefined });
  };
}

async function evalPpl(
  model: Model,
  dataset: string,
  p: ParsedFlags,
  label: string,
  base: Model,
) {
  const { perplexity } = await import("./api.ts");
  const windows = int(p, "windows") ?? 64;
  const seqlen = int(p, "seqlen") ?? Math.min(2048, base.config.maxPositions);
  return await perplexity(model, dataset, {
    seqlen,
    nsamples: windows === 0 ? undefined : windows,
    path: str(p, "data-path"),
    force: p.values.force === true,
    ledger: p.values["no-ledger"] ? false : undefined,
    onProgress: await evalProgress(label, seqlen),
    ...(model.report?.streamedFrom || p.values.stream ? { layerwise: true } : {}),
  });
}

function pplLine(
  r: {
    dataset: string;
    ppl: number;
    windows: number;
    seqlen: number;
    tokens: number;
    seconds: number;
    run?: { cached: boolean };
  },
): string {
  const how = r.run?.cached ? "from the ledger" : `${r.seconds.toFixed(1)} s`;
  return `${r.dataset}: ppl ${
    r.ppl.toFixed(4)
  } (${r.windows} windows × ${r.seqlen} of ${r.tokens} tokens, ${how})`;
}

async function runGenerate(p: ParsedFlags): Promise<number> {
  const model = await openModel(p);
  const { generate } = await import("./eval/generate.ts");
  const r = await generate(model, str(p, "prompt") ?? "Once upon a time", {
    maxNewTokens: int(p, "max-new-tokens") ?? 64,
    temperature: num(p, "temperature") ?? 0,
    topP: num(p, "top-p") ?? 1,
    seed: int(p, "seed") ?? 0,
  });
  console.log(r.text);
  console.error(`(${r.ids.length} tokens, ${r.tokensPerSecond.toFixed(1)} tokens/s)`);
  return 0;
}

async function runPpl(p: ParsedFlags): Promise<number> {
  const model = await openModel(p);
  const r = await evalPpl(model, str(p, "dataset") ?? "tinystories", p, "ppl", model);
  console.log(pplLine(r));
  return 0;
}

/** Input-column counts of a model's linear layers (for the static group-size check). */
function linearInputs(model: Model): Map<number, string> {
  const c = model.config;
  const out = new Map<number, string>();
  const add = (n: number, name: string) => out.set(n, out.has(n) ? `${out.get(n)}/${name}` : name);
  add(c.hiddenSize, "q/k/v/gate/up_proj");
  add(c.numHeads * c.headDim, "o_proj");
  add(c.intermediateSize, "down_proj");
  return out;
}

async function runQuantize(p: ParsedFlags): Promise<number> {
  const method = str(p, "method") ?? "gptq";
  if (!METHODS.includes(method)) {
    throw new UsageError(
      p.typed.method ?? "--method",
      `unknown method "${method}" (one of ${METHODS.join(", ")})`,
    );
  }
  // Static checks first: options, workdir, export flags, group sizes — before calibration.
  let q = await makeQuantizer(method, p);
  if (p.values["f16-scales"]) {
    const { withF16Scales } = await import("./quant/core/f16_grid.ts");
    q = withF16Scales(q);
  }
  const format = str(p, "format") ?? "gguf";
  if (format !== "gguf" && format !== "gptq" && format !== "onnx") {
    throw new UsageError(p.typed.format, `must be gguf, gptq or onnx, got "${format}"`);
  }
  const workdir = str(p, "workdir");
  if (workdir !== undefined) {
    try {
      await Deno.mkdir(workdir, { recursive: true });
    } catch (e) {
      throw new UsageError(
        p.typed.workdir,
        `cannot create "${workdir}": ${(e as Error).message}`,
      );
    }
  }
  if (p.values.stream && workdir === undefined) {
    throw new UsageError(p.typed.stream ?? "--stream", "needs --workdir (the blocks go there)");
  }
  const model = await openModel(p);
  // The quantizer's own group-size rule, before calibration (methods without one check nothing).
  for (const [cols, names] of linearInputs(model)) {
    try {
      q.checkColumns?.(cols, names);
    } catch (e) {
      if (!(e instanceof OptionError)) throw e;
      throw new UsageError(
        p.typed["group-size"] ?? "--group-size",
        `${e.message.replace(/^option \w+: /, "").replace(/ \(pass partialGroups.*$/, "")}; ` +
          "pass --partial-groups for a shorter last group",
      );
    }
  }
  const evalSet = str(p, "eval") ?? "tinystories";
  const doEval = evalSet !== "none";
  let fp;
  if (doEval) {
    fp = await evalPpl(model, evalSet, p, "FP ppl", model);
    console.log(`FP    ${pplLine(fp)}`);
  }
  let calib;
  if (q.needsHessian) {
    const { calibrationSet } = await import("./quant/pipeline/calibration.ts");
    calib = await calibrationSet(model, str(p, "calib") ?? "tinystories", {
      nsamples: int(p, "calib-samples") ?? 128,
      seqlen: int(p, "calib-seqlen") ?? Math.min(256, model.config.maxPositions),
      seed: int(p, "seed") ?? 0,
    });
  }
  const api = await import("./api.ts");
  const qm = await api.quantize(model, q, {
    calib,
    workdir,
    trueSequential: !p.values["no-true-sequential"],
    ...(p.values.stream ? { stream: true } : {}),
    force: p.values.force === true,
    ledger: p.values["no-ledger"] ? false : undefined,
  });
  const rep = qm.report;
  console.log(
    `${q.name}: ${rep.layers.length} layers, ${rep.bitsPerWeight.toFixed(3)} bits/weight, ${
      rep.seconds.toFixed(1)
    } s, peak RSS ${rep.peakRssMiB.toFixed(0)} MiB`,
  );
  if (doEval && fp) {
    const r = await evalPpl(qm, evalSet, p, `${q.name} ppl`, model);
    console.log(`${q.name.padEnd(5)} ${pplLine(r)}`);
    const rel = (r.ppl / fp.ppl - 1) * 100;
    console.log(
      `${evalSet} perplexity on the same ${r.windows} windows: FP ${
        fp.ppl.toFixed(4)
      } → ${q.name} ${r.ppl.toFixed(4)} (${rel >= 0 ? "+" : ""}${rel.toFixed(2)}%)`,
    );
  }
  const save = str(p, "save");
  if (save) {
    const ex = await api.exportModel(qm, save, {
      format: format as "gguf" | "gptq" | "onnx",
      type: (str(p, "gguf-type") ?? "auto") as "auto",
      overwrite: p.values.overwrite === true,
      ...(p.values["external-data"] ? { externalData: true } : {}),
      ledger: p.values["no-ledger"] ? false : undefined,
    });
    console.log(`saved ${ex.format} to ${ex.dir} (${ex.files.join(", ")})`);
    for (const n of ex.notes) console.log(`  note: ${n}`);
  }
  return 0;
}

/** The commands, in `--help` order. */
export const COMMANDS: Command[] = [
  {
    name: "generate",
    summary: "greedy or sampled continuation of a prompt",
    usage: "generate [--prompt TEXT] [--max-new-tokens N] [flags]",
    flags: [
      ...MODEL_FLAGS,
      { name: "prompt", kind: "string", arg: "TEXT", desc: "prompt", default: "Once upon a time" },
      { name: "max-new-tokens", kind: "int", arg: "N", desc: "tokens to generate", default: "64" },
      {
        name: "temperature",
        kind: "number",
        arg: "T",
        desc: "sampling temperature (0 = greedy)",
        default: "0",
      },
      { name: "top-p", kind: "number", arg: "P", desc: "nucleus sampling mass", default: "1" },
      { name: "seed", kind: "int", arg: "S", desc: "sampling seed", default: "0" },
    ],
    run: runGenerate,
  },
  {
    name: "ppl",
    summary: "perplexity with the GPTQ protocol (recorded in the results ledger)",
    usage: "ppl [--dataset NAME] [--windows N] [flags]",
    flags: [
      ...MODEL_FLAGS,
      {
        name: "dataset",
        kind: "string",
        arg: "NAME",
        desc: "tinystories, wikitext2, c4, ...",
        default: "tinystories",
      },
      ...EVAL_FLAGS,
      ...LEDGER_FLAGS,
    ],
    run: runPpl,
  },
  {
    name: "quantize",
    summary: "quantize a model (FP and quantized perplexity on the same windows; --save exports)",
    usage: "quantize --method METHOD --bits B [flags]",
    flags: QUANTIZE_FLAGS,
    run: runQuantize,
  },
  {
    name: "sweep",
    summary: "run, submit, inspect and collect sweeps (see: sweep --help)",
    usage: "sweep run|submit|status|collect SPEC.json [flags]",
    flags: [],
    delegate: async () => (await import("./ledger/sweep_cli.ts")).sweepCommand,
  },
  {
    name: "wa",
    summary: "weight-activation quantization with the qllm-infer knobs (see: wa --help)",
    usage: "wa [--bits_w B --bits_a B ...] [--config FILE] [flags]",
    flags: [],
    delegate: async () => (await import("./cli_wa.ts")).waCommand,
  },
  {
    name: "kv",
    summary:
      "KV-cache quantization: perplexity, cache bytes, needle-in-a-haystack (see: kv --help)",
    usage: "kv ppl|bytes|needle [MODEL] --kv kivi|kvquant --kv-bits B [flags]",
    flags: [],
    delegate: async () => (await import("./cli_kv.ts")).kvCommand,
  },
  {
    name: "eval",
    summary: "evaluate a model on tasks (see: eval --help)",
    usage: "eval [flags]",
    flags: [],
    delegate: async () => (await import("./cli_eval.ts")).evalCommand,
  },
  {
    name: "chat",
    summary: "chat with a model (see: chat --help)",
    usage: "chat [flags]",
    flags: [],
    delegate: async () => (await import("./cli_eval.ts")).chatCommand,
  },
];

/**
 * Runs the CLI with `args` and returns the exit code: 0 ok (and `--help`), 2 usage errors
 * (unknown command or flag, bad value, rejected option), 1 other quantlab errors; messages go to
 * stderr as `error: <ErrorClass>: <message>`. Unexpected errors are rethrown.
 */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(mainHelp());
    return name === undefined ? 2 : 0;
  }
  const cmd = COMMANDS.find((c) => c.name === name);
  try {
    if (!cmd) {
      const near = didYouMean(name, COMMANDS.map((c) => c.name));
      throw new UsageError(
        "command",
        `unknown command "${name}"${
          near ? ` (did you mean ${near}?)` : ""
        }; see: deno task cli --help`,
      );
    }
    if (cmd.delegate) return await (await cmd.delegate())(rest);
    if (rest.includes("--help") || rest.includes("-h")) {
      console.log(commandHelp(cmd));
      return 0;
    }
    const parsed = parseFlags(cmd.name, rest, cmd.flags);
    if (parsed.positionals.length) {
      throw new UsageError(
        "arguments",
        `${cmd.name} takes no positional arguments, got ${parsed.positionals.join(" ")}`,
      );
    }
    return await cmd.run!(parsed);
  } catch (e) {
    if (e instanceof QuantlabError) {
      const msg = e instanceof UsageError ? e.message.replace(/^option /, "") : e.message;
      const cls = e instanceof UsageError ? "OptionError" : e.name;
      console.error(`error: ${cls}: ${msg}`);
      return e instanceof UsageError || e instanceof OptionError ? 2 : 1;
    }
    throw e;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
