/**
 * SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights with a per-channel
 * scale `s_j = max|X_j|^α / max|W_j|^(1−α)` (the reference `smooth_ln_fcs`: `max|W_j|` over the
 * rows of every following linear, clamped at 1e-5; `s` clamped at 1e-5), folded offline: the
 * preceding norm's weight (and LayerNorm bias) is divided by `s`, each following linear's input
 * column `j` multiplied by `s_j`, so `(X diag(s)⁻¹)(diag(s) Wᵀ) = X Wᵀ` — the model function is
 * unchanged and only the quantization difficulty moves. Pairs, as the reference: the attention
 * norm → q/k/v, the MLP norm → gate/up (Llama family) or fc1 (OPT). Pre-norm blocks only (OPT
 * with `do_layer_norm_before: false` has no norm in front of the linears: an OptionError).
 *
 * Calibration statistics are `max|X_j|` of each norm's output over the calibration windows,
 * collected through the quantization points (`collectChannelAbsMax`, point `linearInput`) of the
 * FP model, as the reference's `get_act_scales` hooks on the linears' inputs (seed defaults:
 * 512 samples × 512 tokens; callers state what they used).
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import type { Model } from "../../models/model.ts";
import type { Backend } from "../../backend/backend.ts";
import { OptionError } from "../../errors.ts";
import { collectChannelAbsMax } from "../../models/point_stats.ts";
import { familyOf } from "../../models/family.ts";
import { checkOptions, SMOOTHQUANT_SPECS } from "../core/options.ts";

/** One smoothed norm → linears pair of a block. */
export interface SmoothPair {
  /** Norm name (no ".weight"). */
  norm: string;
  /** The linears it feeds. */
  linears: string[];
}

/** The norm → linears pairs SmoothQuant folds, per block (see the module doc). */
export function smoothPairs(model: Model): SmoothPair[] {
  const cfg = model.config;
  const fam = familyOf(cfg);
  if (fam.norm === "layer" && !cfg.doLayerNormBefore) {
    throw new OptionError(
      "smoothquant",
      "needs pre-norm blocks (OPT with do_layer_norm_before: false has no norm before the linears)",
    );
  }
  const out: SmoothPair[] = [];
  for (let i = 0; i < cfg.numLayers; i++) {
    const b = fam.block(i);
    out.push({ norm: b.attnNorm, linears: [b.q, b.k, b.v] });
    out.push({ norm: b.mlpNorm, linears: fam.mlp === "fc" ? [b.mlp[0]] : [b.mlp[0], b.mlp[1]] });
  }
  return out;
}

/**
 * Per-channel max |X| at the input of every smoothed linear group over `batches` (token windows;
 * each entry one sequence), keyed by norm name. Runs the host forward of `model` as it is.
 */
export async function smoothQuantStats(
  model: Model,
  batches: number[][],
  opts: { backend?: Backend } = {},
): Promise<Map<string, Float32Array>> {
  const raw = await collectChannelAbsMax(model, batches, {
    points: ["linearInput"],
    backend: opts.backend,
  });
  const out = new Map<string, Float32Array>();
  for (const p of smoothPairs(model)) {
    const m = raw.get(`linearInput:${p.linears[0]}`);
    if (!m) throw new OptionError("batches", `no activation statistics reached ${p.linears[0]}`);
    out.set(p.norm, m);
  }
  return out;
}

/**
 * The smoothing factors `s_j = max(max|X_j|^α / max(max|W_j|, 1e-5)^(1−α), 1e-5)` of one pair,
 * `W` the following linears ([out, in] each, input columns j).
 */
export function smoothingFactors(
  actMax: Float32Array,
  weights: Tensor[],
  alpha: number,
): Float32Array {
  const n = actMax.length;
  const wMax = new Float64Array(n);
  for (const W of weights) {
    const [rows, cols] = W.shape;
    if (cols !== n) {
      throw new OptionError("weights", `a linear has ${cols} input columns, statistics have ${n}`);
    }
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < cols; j++) {
        const a = Math.abs(W.data[r * cols + j]);
        if (a > wMax[j]) wMax[j] = a;
      }
    }
  }
  const s = new Float32Array(n);
  for (let j = 0; j < n; j++) {
    const v = actMax[j] ** alpha / Math.max(wMax[j], 1e-5) ** (1 - alpha);
    s[j] = Math.max(v, 1e-5);
  }
  return s;
}

/** Options of {@linkcode smoothQuant}. */
export interface SmoothQuantOptions {
  /** Migration strength α in [0, 1] (the reference's default 0.5; seed: 0.55 for Llama-3.1-8B). */
  alpha?: number;
}

/**
 * The smoothed model: every pair's norm weight (and bias) divided by `s`, its linears' input
 * columns multiplied by `s` (new tensors as overrides; the source model is untouched). `stats`
 * from {@linkcode smoothQuantStats}. Returns the model and the factors by norm name.
 */
export async function smoothQuant(
  model: Model,
  stats: Map<string, Float32Array>,
  opts: SmoothQuantOptions = {},
): Promise<{ model: Model; factors: Map<string, Float32Array> }> {
  checkOptions("smoothQuant", opts, SMOOTHQUANT_SPECS);
  const alpha = opts.alpha ?? 0.5;
  const overrides = new Map<string, Tensor>();
  const factors = new Map<string, Float32Array>();
  for (const p of smoothPairs(model)) {
    const act = stats.get(p.norm);
    if (!act) throw new OptionError("stats", `no statistics for ${p.norm}`);
    const Ws = await Promise.all(p.linears.map((l) => model.weights.get(`${l}.weight`)));
    const s = smoothingFactors(act, Ws, alpha);
    factors.set(p.norm, s);
    const n = s.length;
    const nw = await model.weights.get(`${p.norm}.weight`);
    overrides.set(`${p.norm}.weight`, {
      shape: [...nw.shape],
      data: nw.data.map((w, j) => w / s[j]),
    });
    if (model.weights.has(`${p.norm}.bias`)) {
      const nb = await model.weights.get(`${p.norm}.bias`);
      overrides.set(`${p.norm}.bias`, {
        shape: [...nb.shape],
        data: nb.data.map((b, j) => b / s[j]),
      });
    }
    p.linears.forEach((l, k) => {
      const W = Ws[k];
      const d = new Float32Array(W.data.length);
      for (let i = 0; i < d.length; i++) d[i] = W.data[i] * s[i % n];
      overrides.set(`${l}.weight`, { shape: [...W.shape], data: d });
    });
  }
  return { model: { ...model, weights: model.weights.with(overrides) }, factors };
}

/**
 * α sweep: smooths `model` with each α (statistics gathered once), quantizes/evaluates each
 * smoothed model with `evaluate` (e.g. W8A8 specs, then perplexity) and returns `{ alpha, value }`
 * per α in order — the seed's migration-strength table.
 */
export async function smoothQuantAlphaSweep(
  model: Model,
  stats: Map<string, Float32Array>,
  alphas: number[],
  evaluate: (smoothed: Model, alpha: number) => Promise<number>,
): Promise<{ alpha: number; value: number }[]> {
  const out: { alpha: number; value: number }[] = [];
  for (const alpha of alphas) {
    const { model: m } = await smoothQuant(model, stats, { alpha });
    out.push({ alpha, value: await evaluate(m, alpha) });
  }
  return out;
}
