/**
 * The qllm-infer configuration space (seed 003), named as the seed names it: for each of `w`
 * (weights), `a` (linear inputs), `q`, `k`, `v` and `s` (attention probabilities) the knobs
 * `bits_*` (2–16; 16 = off), `sym_*`, `groupsize_*` (-1 = none), the granularity switches
 * (`w_per_channel`; `*_per_tensor` / `*_per_token`), `*_qrazor` / `*_qrazor_bits` /
 * `*_qrazor_group`, plus `k_pre_RoPE_quant`, the SmoothQuant and GPTQ blocks and this library's
 * `llm_int8*` / `zeroquant*` keys. One plain object ({@linkcode QllmConfig}), parsed from the
 * seed's shell-variable form (`bits_a=8` lines, {@linkcode parseQllmShell}) or CLI flags
 * ({@linkcode parseQllmFlags}), checked strictly ({@linkcode resolveQllmConfig}: unknown keys and
 * impossible combinations are {@linkcode OptionError}s naming the key) and mapped onto the
 * forward's quantization points and weight quantizers ({@linkcode qllmPlan}).
 *
 * Granularity, as qllm-infer's `Quantizer.find_params` reads the switches:
 * - `*_per_tensor = true`: one scale for the tensor (spec granularity "tensor");
 * - else `*_per_token = true`: one scale per row — per token for `a` (groups of `groupsize_a`
 *   when > 0), per token *and head* for `q`/`v` (the reference reshapes to [..., head_dim]);
 * - else per channel (one scale per column).
 * - K is the exception the seed's scripts document (`k_per_token=true   #true = per-channel
 *   quant`): the reference quantizes `Kᵀ`, so its rows are K's channels — `k_per_token = true`
 *   is per-channel K here, `false` per token (and head).
 * - `s` (probabilities) supports only per-token rows (`s_per_token = true`) when `bits_s < 16`.
 * Weights: `w_per_channel` one grid per output channel (groups of `groupsize_w` columns), else
 * per tensor; qllm-infer's grid (symmetric: `max|w| / (2^(b−1) − 1)`, clamp ±maxq).
 *
 * Where each knob runs: every `a`/`q`/`k`/`v`/`s` knob becomes a {@linkcode QuantPoints} spec
 * executed by both backends (`s`, the attention probabilities, by the host forward only): QRazor
 * as the spec's `qrazor: { bits, group }` (`q_qrazor` at the post-RoPE Q point, `s_qrazor` at
 * the probabilities point, razored per row of one query's probabilities), ZeroQuant's
 * token-wise activations as `grid: "deepspeed"` per token, LLM.int8() as a `linearProduct` spec
 * on every block linear. `hostHooks` keeps the former JS hooks as a host-only escape hatch.
 * With `*_qrazor`, `bits_* = 16` is an INT16 base grid (the seed's activations go INT16 → INT8 /
 * INT4), not "off". Defaults: every
 * tensor off (16 bits), `sym_*` true except `sym_s` false, `a_per_token` / `w_per_channel` true,
 * `q|k|v|s_per_tensor` true (the seed's scripts), QRazor 4 bits in groups of 8.
 * @module
 */
import type { ModelConfig } from "../../models/config.ts";
import type { QuantPoints, QuantSpec } from "../../models/points.ts";
import type { ForwardHooks } from "../../models/decoder.ts";
import { familyOf } from "../../models/family.ts";
import { FormatError, OptionError } from "../../errors.ts";
import { checkOptions, didYouMean, QLLM_CONFIG_SPECS } from "../core/options.ts";
import { type QllmUnit, qrazorWeight } from "../weight_activation/qrazor.ts";
import { fakeQuant } from "../../models/points.ts";
import type { Recipe } from "../core/recipe.ts";
import type { WeightQuantizer } from "../core/types.ts";
import { zeroquantActHooks, zeroquantRecipe } from "../weight_activation/zeroquant.ts";
import type { Model } from "../../models/model.ts";
import type { Backend } from "../../backend/backend.ts";
import { calibrationSet } from "./calibration.ts";
import { quantize } from "./pipeline.ts";
import { gptq } from "../weight_only/gptq.ts";
import { gptqQrazor } from "../weight_activation/gptq_qrazor.ts";
import { smoothQuant, smoothQuantStats } from "../weight_activation/smoothquant.ts";
import { llmInt8, type LlmInt8Report } from "../weight_activation/llm_int8.ts";

/** Every qllm-infer key this module accepts (the seed's names). */
export const QLLM_KEYS: readonly string[] = Object.keys(QLLM_CONFIG_SPECS);

/** The key of `known` closest to `key` ("did you mean"), if any. */
export function nearestKey(key: string, known: readonly string[]): string | undefined {
  return didYouMean(key, known);
}

/** A value of a qllm-infer key. */
export type QllmValue = boolean | number | string;

/** The resolved configuration: every key of `QLLM_CONFIG_SPECS` (see the module doc). */
export type QllmConfig = { [K in keyof typeof QLLM_DEFAULTS]: (typeof QLLM_DEFAULTS)[K] };

/** The tensors with quantizer knobs. */
export const QLLM_TENSORS = ["w", "a", "q", "k", "v", "s"] as const;

/** Defaults of every key (see the module doc). */
export const QLLM_DEFAULTS = {
  eval_ppl: true,
  eval_ppl_seqlen: 2048,
  use_cuda_graph: false,
  seed: 0,
  chat: false,
  analyze_stats: false,
  get_layerwise_distance: false,
  bits_a: 16,
  sym_a: true,
  groupsize_a: -1,
  a_per_tensor: false,
  a_per_token: true,
  a_qrazor: false,
  a_qrazor_bits: 4,
  a_qrazor_group: 8,
  bits_w: 16,
  sym_w: true,
  groupsize_w: -1,
  w_per_channel: true,
  w_qrazor: false,
  w_qrazor_bits: 4,
  w_qrazor_group: 8,
  bits_q: 16,
  sym_q: true,
  groupsize_q: -1,
  q_per_tensor: true,
  q_per_token: false,
  q_qrazor: false,
  q_qrazor_bits: 4,
  q_qrazor_group: 8,
  bits_k: 16,
  sym_k: true,
  groupsize_k: -1,
  k_per_tensor: true,
  k_per_token: false,
  k_qrazor: false,
  k_qrazor_bits: 4,
  k_qrazor_group: 8,
  bits_v: 16,
  sym_v: true,
  groupsize_v: -1,
  v_per_tensor: true,
  v_per_token: false,
  v_qrazor: false,
  v_qrazor_bits: 4,
  v_qrazor_group: 8,
  bits_s: 16,
  sym_s: false,
  groupsize_s: -1,
  s_per_tensor: true,
  s_per_token: false,
  s_qrazor: false,
  s_qrazor_bits: 4,
  s_qrazor_group: 8,
  k_pre_RoPE_quant: false,
  smoothquant: false,
  smoothquant_alpha: 0.5,
  smoothquant_dataset: "pile" as string,
  smoothquant_nsamples: 512,
  smoothquant_seqlen: 512,
  gptq: false,
  gptq_dataset: "wikitext2" as string,
  gptq_nsamples: 128,
  gptq_seqlen: 2048,
  gptq_true_sequential: false,
  gptq_percdamp: 0.01,
  gptq_act_order: true,
  gptq_static_groups: false,
  llm_int8: false,
  llm_int8_threshold: 6.0,
  zeroquant: false,
  zeroquant_number_of_groups: -1,
  zeroquant_ffn_bits: 16,
};

/**
 * Checks `partial` (keys of the seed; unknown keys are refused with a "did you mean"), fills the
 * defaults and refuses impossible combinations with an {@linkcode OptionError} naming the key.
 * `zeroquant_ffn_bits` defaults to `bits_w`.
 */
export function resolveQllmConfig(partial: Record<string, unknown>): QllmConfig {
  checkOptions("qllm config", partial, QLLM_CONFIG_SPECS);
  const c = { ...QLLM_DEFAULTS, ...partial } as QllmConfig;
  if (!("zeroquant_ffn_bits" in partial)) c.zeroquant_ffn_bits = c.bits_w;
  const bad = (key: string, msg: string): never => {
    throw new OptionError(key, msg);
  };
  for (const x of ["a", "q", "k", "v", "s"] as const) {
    const tensor = c[`${x}_per_tensor`], token = c[`${x}_per_token`];
    if (tensor && token) bad(`${x}_per_token`, `${x}_per_tensor and ${x}_per_token are exclusive`);
    const gs = c[`groupsize_${x}`];
    if (gs === 0) bad(`groupsize_${x}`, "must be -1 (no groups) or a positive group size");
    if (gs > 0 && x !== "a") {
      bad(
        `groupsize_${x}`,
        "group-wise quantization of multi-head tensors is not supported (as qllm-infer)",
      );
    }
    if (gs > 0 && (tensor || !token)) {
      bad(
        `groupsize_${x}`,
        `groups need per-token rows (${x}_per_token true, ${x}_per_tensor false)`,
      );
    }
  }
  if (c.groupsize_w === 0) bad("groupsize_w", "must be -1 (no groups) or a positive group size");
  if (!c.w_per_channel && c.groupsize_w > 0) {
    bad("groupsize_w", "groups need w_per_channel true (per-tensor weights have one grid)");
  }
  if (c.bits_w > 8 && c.bits_w < 16) {
    bad("bits_w", `weights take 2..8 bits or 16 (off), got ${c.bits_w}`);
  }
  if (c.bits_s < 16 && !c.s_per_token) {
    bad("s_per_token", "attention probabilities are quantized per row only (s_per_token true)");
  }
  for (const x of QLLM_TENSORS) {
    if (!c[`${x}_qrazor`]) continue;
    // With QRazor, bits 16 is the INT16 base grid (the seed's activations: INT16 → INT8 / INT4).
    if (x === "w" && c.bits_w >= 16) bad("w_qrazor", "needs a weight base grid: bits_w ≤ 8");
    if (c[`${x}_qrazor_bits`] > c[`bits_${x}`]) {
      bad(`${x}_qrazor_bits`, `${c[`${x}_qrazor_bits`]} exceeds bits_${x} = ${c[`bits_${x}`]}`);
    }
    if (x === "s" && !c.s_per_token) {
      bad("s_per_token", "attention probabilities are razored per row only (s_per_token true)");
    }
    if (x === "k" && c.k_pre_RoPE_quant) {
      bad("k_qrazor", "QRazor on K runs after RoPE (k_pre_RoPE_quant false)");
    }
  }
  if (c.llm_int8 && (c.bits_a < 16 || c.bits_w < 16)) {
    bad("llm_int8", "LLM.int8() quantizes weights and inputs itself: bits_w and bits_a must be 16");
  }
  if (c.zeroquant && (c.gptq || c.w_qrazor || c.llm_int8)) {
    bad("zeroquant", "cannot be combined with gptq, w_qrazor or llm_int8");
  }
  if (c.zeroquant && c.a_qrazor) bad("zeroquant", "cannot be combined with a_qrazor");
  if (c.gptq && c.bits_w >= 16) bad("gptq", "needs bits_w < 16");
  if (c.zeroquant_ffn_bits > 8 && c.zeroquant_ffn_bits < 16) {
    bad("zeroquant_ffn_bits", `weights take 2..8 bits or 16, got ${c.zeroquant_ffn_bits}`);
  }
  return c;
}

function parseValue(raw: string): QllmValue {
  const v = raw.trim().replace(/^(["'])(.*)\1$/, "$2");
  if (v === "true") return true;
  if (v === "false") return false;
  if (/^(inf|Infinity)$/i.test(v)) return Infinity;
  if (v !== "" && Number.isFinite(Number(v))) return Number(v);
  return v;
}

/**
 * Parses the seed's shell-variable form (`bits_a=8`, `sym_a=true`, `# comments`, blank lines,
 * optional `export `, trailing `# …` comments): a record of keys to booleans, numbers and strings.
 * A line that is not `key=value` is a {@linkcode FormatError} naming `file` and the line; keys
 * are checked later by {@linkcode resolveQllmConfig}.
 */
export function parseQllmShell(text: string, file = "config"): Record<string, QllmValue> {
  const out: Record<string, QllmValue> = {};
  text.split(/\r?\n/).forEach((line, i) => {
    const s = line.replace(/(^|\s)#.*$/, "").trim();
    if (!s || s.startsWith("```")) return;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(s);
    if (!m) {
      throw new FormatError(file, `line ${i + 1}: expected key=value, got ${JSON.stringify(line)}`);
    }
    out[m[1]] = parseValue(m[2]);
  });
  return out;
}

/**
 * Parses CLI flags named as the seed's keys: `--bits_a 8`, `--bits_a=8`, a bare `--sym_a` (true),
 * `--config FILE` (the shell-variable form, read first; flags override it). Returns the record
 * and the arguments it did not consume (other flags, positionals) for the caller.
 */
export async function parseQllmFlags(
  args: string[],
): Promise<{ config: Record<string, QllmValue>; rest: string[] }> {
  const flags: Record<string, QllmValue> = {};
  let file: Record<string, QllmValue> = {};
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const m = /^--([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$/.exec(a);
    if (!m || !(m[1] in QLLM_CONFIG_SPECS || m[1] === "config")) {
      rest.push(a);
      continue;
    }
    let v = m[2];
    const spec = QLLM_CONFIG_SPECS[m[1]];
    if (v === undefined) {
      const next = args[i + 1];
      if (spec?.type === "boolean" && (next === undefined || !/^(true|false)$/.test(next))) {
        v = "true";
      } else if (next === undefined) throw new OptionError(m[1], "needs a value");
      else v = args[++i];
    }
    if (m[1] === "config") file = parseQllmShell(await Deno.readTextFile(v), v);
    else flags[m[1]] = parseValue(v);
  }
  return { config: { ...file, ...flags }, rest };
}

/** What a configuration does to a model (see {@linkcode qllmPlan}). */
export interface QllmPlan {
  /** Specs at the forward's quantization points (undefined: none). */
  points?: QuantPoints;
  /** Host forward hooks (QRazor activations / KV, ZeroQuant activations). */
  hooks?: ForwardHooks;
  /** Weight quantizers by layer pattern (undefined: FP weights); GPTQ is applied by the caller. */
  recipe?: Recipe;
  /** The weight quantizer when one applies to every linear. */
  weight?: WeightQuantizer;
}

function gran(
  x: "a" | "q" | "k" | "v" | "s",
  c: QllmConfig,
): { unit: QllmUnit; granularity: "tensor" | "token" | "channel" } {
  if (c[`${x}_per_tensor`]) return { unit: "tensor", granularity: "tensor" };
  let row = c[`${x}_per_token`];
  if (x === "k") row = !row; // the seed's convention: k_per_token = true is per-channel K
  return row ? { unit: "row", granularity: "token" } : { unit: "column", granularity: "channel" };
}

/** Options of {@linkcode qllmPlan}. */
export interface QllmPlanOptions {
  /**
   * The host-only escape hatch: QRazor activations / K / V and ZeroQuant's token-wise
   * activations as JS forward hooks (`linearInput`, `attentionKV`) instead of specs (the same
   * numbers; the model then runs on the host forward only). Default false: specs, executed by
   * both backends. LLM.int8()'s hook is {@linkcode ApplyQllmOptions.hostHooks}.
   */
  hostHooks?: boolean;
}

/**
 * Maps a resolved configuration onto quantization points, hooks and weight quantizers for a
 * model of config `mc` (see the module doc). SmoothQuant, LLM.int8() and GPTQ need calibration
 * or wrap the model: the caller applies them (`src/cli_wa.ts` shows the order: smooth, then
 * weights, then activation specs). Every activation / Q / K / V / S knob is a spec (QRazor:
 * `qrazor: { bits, group }`; ZeroQuant's activations: `grid: "deepspeed"` per token), so the
 * model stays on the GPU-resident path except for `s` (attention probabilities, host forward).
 */
export function qllmPlan(c: QllmConfig, mc: ModelConfig, opts: QllmPlanOptions = {}): QllmPlan {
  const plan: QllmPlan = {};
  const points: QuantPoints = {};
  const hooks: ForwardHooks = {};
  const hd = mc.headDim;
  const spec = (x: "a" | "q" | "k" | "v" | "s"): QuantSpec | undefined => {
    const bits = c[`bits_${x}`];
    const qr = c[`${x}_qrazor`];
    if (bits >= 16 && !qr) return undefined;
    const g = gran(x, c);
    const s: QuantSpec = { bits, sym: c[`sym_${x}`], granularity: g.granularity };
    if (x === "a" && g.granularity === "token" && c.groupsize_a > 0) s.groupSize = c.groupsize_a;
    if (x !== "a" && x !== "s" && g.granularity === "token") s.groupSize = hd; // per head
    if (qr) s.qrazor = { bits: c[`${x}_qrazor_bits`], group: c[`${x}_qrazor_group`] };
    return s;
  };
  /** A hook running `s` through the CPU reference (the escape hatch). */
  const hostQuant = (s: QuantSpec) => (d: Float32Array, rows: number, cols: number) =>
    fakeQuant({ shape: [rows, cols], data: d }, s, "hostHooks").data;
  // Linear inputs.
  if (c.zeroquant) {
    if (c.bits_a < 16) {
      if (opts.hostHooks) hooks.linearInput = zeroquantActHooks(c.bits_a).linearInput;
      else {points.linearInput = {
          "*": { bits: c.bits_a, grid: "deepspeed", granularity: "token" },
        };}
    }
  } else {
    const a = spec("a");
    if (a && a.qrazor && opts.hostHooks) {
      const run = hostQuant(a);
      hooks.linearInput = (_name, x) => {
        const cols = x.shape[x.shape.length - 1];
        return { shape: [...x.shape], data: run(x.data, x.data.length / cols, cols) };
      };
    } else if (a) points.linearInput = { "*": a };
  }
  const q = spec("q");
  if (q) points.q = q;
  const kvHook: {
    k?: (x: Float32Array, rows: number, cols: number) => Float32Array;
    v?: typeof kvHook.k;
  } = {};
  for (const x of ["k", "v"] as const) {
    const s = spec(x);
    if (!s) continue;
    if (s.qrazor && opts.hostHooks) kvHook[x] = hostQuant(s);
    else if (x === "k") points[c.k_pre_RoPE_quant ? "kPreRope" : "k"] = s;
    else points.v = s;
  }
  if (kvHook.k || kvHook.v) {
    hooks.attentionKV = (_l, kv) => {
      const cols = kv.k.shape[kv.k.shape.length - 1];
      const rows = kv.k.data.length / cols;
      return {
        k: kvHook.k ? { shape: [...kv.k.shape], data: kvHook.k(kv.k.data, rows, cols) } : kv.k,
        v: kvHook.v ? { shape: [...kv.v.shape], data: kvHook.v(kv.v.data, rows, cols) } : kv.v,
      };
    };
  }
  if (c.llm_int8 && !opts.hostHooks) {
    points.linearProduct = { "*": { method: "llm_int8", threshold: c.llm_int8_threshold } };
  }
  const s = spec("s");
  if (s) {
    points.probs = { bits: s.bits, sym: s.sym, granularity: "token" };
    if (s.qrazor) points.probs.qrazor = s.qrazor;
  }
  if (Object.keys(points).length) plan.points = points;
  if (Object.keys(hooks).length) plan.hooks = hooks;
  // Weights.
  if (c.zeroquant && (c.bits_w < 16 || c.zeroquant_ffn_bits < 16)) {
    plan.recipe = zeroquantRecipe({
      bits: Math.min(c.bits_w, 8),
      ffnBits: Math.min(c.zeroquant_ffn_bits, 8),
      numberOfGroups: c.zeroquant_number_of_groups,
      mlp: familyOf(mc).mlp,
    });
    if (c.bits_w >= 16 || c.zeroquant_ffn_bits >= 16) {
      throw new OptionError(
        "zeroquant_ffn_bits",
        "ZeroQuant quantizes every linear: bits_w and zeroquant_ffn_bits < 16",
      );
    }
  } else if (c.bits_w < 16 && !c.gptq) {
    plan.weight = qrazorWeight({
      bits: c.bits_w,
      sym: c.sym_w,
      groupSize: c.groupsize_w,
      perChannel: c.w_per_channel,
      qrazorBits: c.w_qrazor ? c.w_qrazor_bits : undefined,
      qrazorGroup: c.w_qrazor ? c.w_qrazor_group : undefined,
    });
    plan.recipe = { "*": plan.weight };
  }
  return plan;
}

/** Options of {@linkcode applyQllmConfig}. */
export interface ApplyQllmOptions {
  /**
   * Calibration dataset for SmoothQuant and GPTQ (default: the config's `smoothquant_dataset` /
   * `gptq_dataset`; "pile" is not shipped, so pass e.g. "tinystories").
   */
  calibDataset?: string;
  /** Caps the calibration window length at the model's context (default true). */
  capSeqlen?: boolean;
  /** Backend for the pipeline's products. */
  backend?: Backend;
  /** Progress lines. */
  log?: (line: string) => void;
  /**
   * Resume folder of the weight quantization (`quantize`'s `workdir`: each finished block is
   * checkpointed). With SmoothQuant the run goes to a subfolder named after α and the
   * calibration, since the pipeline's run identity sees the model's source, not the smoothing.
   */
  workdir?: string;
  /**
   * The host-only escape hatch: QRazor / ZeroQuant activations as JS hooks
   * ({@linkcode QllmPlanOptions.hostHooks}) and LLM.int8() as the `linearProduct` hook of
   * `llm_int8.ts` (its exact int32 product, with a live outlier report in
   * {@linkcode QllmApplied.llmInt8}). Default false: every knob a spec, both backends.
   */
  hostHooks?: boolean;
}

/** What {@linkcode applyQllmConfig} did. */
export interface QllmApplied {
  /** The model to evaluate (weights, points and hooks set). */
  model: Model;
  /** The plan. */
  plan: QllmPlan;
  /** SmoothQuant's calibration as used (samples × tokens, dataset). */
  smoothquant?: { nsamples: number; seqlen: number; dataset: string; alpha: number };
  /** GPTQ's calibration as used. */
  gptq?: { nsamples: number; seqlen: number; dataset: string };
  /** LLM.int8()'s live outlier report (with `hostHooks`; filled while the model runs). */
  llmInt8?: LlmInt8Report;
}

/**
 * Applies a resolved configuration to `model` in qllm-infer's order: SmoothQuant (statistics of
 * the FP model, folded), weights (GPTQ on the smoothed model, or the plan's recipe: qllm-infer
 * RTN, QRazor, ZeroQuant), then activation/KV specs and hooks, then LLM.int8()'s product. The
 * calibration sizes are the config's, with windows capped at the model's context.
 */
export async function applyQllmConfig(
  model: Model,
  c: QllmConfig,
  opts: ApplyQllmOptions = {},
): Promise<QllmApplied> {
  const plan = qllmPlan(c, model.config, { hostHooks: opts.hostHooks });
  const out: Omit<QllmApplied, "model" | "plan"> = {};
  const ctx = model.config.maxPositions;
  const cap = (n: number) => (opts.capSeqlen === false ? n : Math.min(n, ctx));
  let m = model;
  let workdir = opts.workdir;
  if (c.smoothquant) {
    const dataset = opts.calibDataset ?? c.smoothquant_dataset;
    const seqlen = cap(c.smoothquant_seqlen);
    const cal = await calibrationSet(m, dataset, {
      nsamples: c.smoothquant_nsamples,
      seqlen,
      seed: c.seed,
    });
    opts.log?.(
      `smoothquant: ${cal.ids.length} × ${seqlen} tokens of ${cal.source}, α = ${c.smoothquant_alpha}`,
    );
    const stats = await smoothQuantStats(m, cal.ids, { backend: opts.backend });
    m = (await smoothQuant(m, stats, { alpha: c.smoothquant_alpha })).model;
    out.smoothquant = {
      nsamples: cal.ids.length,
      seqlen,
      dataset: cal.source,
      alpha: c.smoothquant_alpha,
    };
    if (workdir) {
      workdir = `${workdir}/smoothquant-a${c.smoothquant_alpha}-${dataset}-n${cal.ids.length}-` +
        `s${seqlen}-seed${c.seed}`;
    }
  }
  if (c.gptq) {
    const dataset = opts.calibDataset ?? c.gptq_dataset;
    const seqlen = cap(c.gptq_seqlen);
    const calib = await calibrationSet(m, dataset, {
      nsamples: c.gptq_nsamples,
      seqlen,
      seed: c.seed,
    });
    opts.log?.(`gptq: ${calib.ids.length} × ${seqlen} tokens of ${calib.source}`);
    // GPTQ + QRazor: qllm-infer's GPTQ with SDR per column; plain GPTQ: the library's GPTQ.
    const q = c.w_qrazor
      ? gptqQrazor({
        bits: c.bits_w,
        rBit: c.w_qrazor_bits,
        rGroup: c.w_qrazor_group,
        groupSize: c.groupsize_w,
        sym: c.sym_w,
        actOrder: c.gptq_act_order,
        percdamp: c.gptq_percdamp,
      })
      : gptq({
        bits: c.bits_w,
        groupSize: c.groupsize_w,
        sym: c.sym_w,
        actOrder: c.gptq_act_order,
        percdamp: c.gptq_percdamp,
        staticGroups: c.gptq_static_groups,
      });
    m = await quantize(m, q, {
      calib,
      trueSequential: c.gptq_true_sequential,
      backend: opts.backend,
      workdir,
    });
    out.gptq = { nsamples: calib.ids.length, seqlen, dataset: calib.source };
  } else if (plan.recipe) {
    m = await quantize(m, plan.recipe, { backend: opts.backend, workdir });
  }
  if (plan.points) m = { ...m, points: { ...(m.points ?? {}), ...plan.points } };
  if (plan.hooks) m = { ...m, hooks: { ...(m.hooks ?? {}), ...plan.hooks } };
  if (c.llm_int8 && opts.hostHooks) {
    const r = llmInt8(m, { threshold: c.llm_int8_threshold });
    m = r.model;
    out.llmInt8 = r.report;
  }
  return { model: m, plan, ...out };
}
