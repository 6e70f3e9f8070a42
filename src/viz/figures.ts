/**
 * Figure builders: pure functions from quantization data to plain plotly figures
 * (`{ data: traces[], layout }`). They compute histograms and slices here, so a figure stays
 * small however big the weight matrix is. In Jupyter a figure renders when it is a cell's last
 * expression (it carries a non-enumerable `Symbol.for("Jupyter.display")` method); `show()` in
 * `display.ts` renders it explicitly or writes an HTML file.
 * @module
 */
import { OptionError } from "../errors.ts";
import type { Tensor } from "../tensor.ts";
import { figureBundle, withDisplay } from "./display.ts";

/** One plotly trace (plain JSON-able data). */
export type Trace = Record<string, unknown> & { type: string; name?: string };

/** A plotly figure as plain data: what `Plotly.newPlot(el, fig.data, fig.layout)` takes. */
export interface Figure {
  /** The traces. */
  data: Trace[];
  /** The layout (titles, axes, shapes, ...). */
  layout: Record<string, unknown>;
}

/** A weight matrix: a 2-D tensor or a flat array. */
export type Weights = Float32Array | Tensor;

/** Options of {@link weightHistogram}. */
export interface WeightHistogramOptions {
  /** Grid levels to mark (e.g. a per-tensor grid's dequantized values). Default: the distinct
   * values of `Wq` when there are at most 64 of them, else none. */
  levels?: number[];
  /** Number of histogram bins (default 100). */
  bins?: number;
  /** Figure title. */
  title?: string;
  /** Log-scaled count axis (default false). */
  logY?: boolean;
}

/** Per-layer record of a quantization report. */
export interface LayerRecord {
  /** Layer name, e.g. "model.layers.0.self_attn.q_proj". */
  name: string;
  /** Layer-wise loss (e.g. GPTQ's ‖(W − Wq)X‖²). */
  loss: number;
  /** Relative error ‖W − Wq‖ / ‖W‖ (or of the outputs), when known. */
  relErr?: number;
  /** Storage cost in bits per weight, including scales and zeros. */
  bitsPerWeight: number;
  /** Time spent on the layer, seconds. */
  seconds: number;
}

/** A quantization report: what `quantize(...).report` holds. */
export interface QuantReport {
  /** One record per quantized layer, in model order. */
  layers: LayerRecord[];
}

/** Options of {@link layerErrors}. */
export interface LayerErrorsOptions {
  /** Which value to plot (default "loss"; "relErr" needs `relErr` on every layer). */
  metric?: "loss" | "relErr" | "bitsPerWeight" | "seconds";
  /** Log-scaled value axis (default: true for "loss", else false). */
  logY?: boolean;
  /** Figure title. */
  title?: string;
  /** Shorten layer names to their last `n` dot-separated parts (default 3; 0 keeps them). */
  shortNames?: number;
}

/** One row of a perplexity-versus-bits sweep. */
export interface PplRow {
  /** Method label, e.g. "rtn", "gptq", "fp16". */
  method: string;
  /** Storage cost in bits per weight. */
  bitsPerWeight: number;
  /** Perplexity. */
  ppl: number;
}

/** Options of {@link pplVsBits}. */
export interface PplVsBitsOptions {
  /** Figure title. */
  title?: string;
  /** A full-precision perplexity drawn as a dashed horizontal line. */
  baseline?: number;
  /** Log-scaled perplexity axis (default true). */
  logY?: boolean;
}

/** Options of {@link channelMagnitude}. */
export interface ChannelMagnitudeOptions {
  /** A channel is an outlier when its magnitude exceeds `k · median` (default 5). */
  k?: number;
  /** What the values are, for the axis title (default "magnitude"), e.g. "Hessian diagonal". */
  label?: string;
  /** Figure title. */
  title?: string;
  /** Log-scaled value axis (default false). */
  logY?: boolean;
}

/** Options of {@link errorHeatmap}. */
export interface ErrorHeatmapOptions {
  /** Rows of the matrix (needed when `W` is a flat array; a 2-D tensor gives its own). */
  rows?: number;
  /** Columns of the matrix (as `rows`). */
  cols?: number;
  /** Half-open row range `[start, end)` of the block (default the first 64 rows). */
  rowRange?: [number, number];
  /** Half-open column range `[start, end)` of the block (default the first 128 columns). */
  colRange?: [number, number];
  /** Plot |Wq − W| instead of the signed error (default false). */
  abs?: boolean;
  /** Figure title. */
  title?: string;
}

const BLUE = "#1f77b4";
const ORANGE = "#ff7f0e";
const RED = "#d62728";
const GREY = "#7f7f7f";

function dataOf(w: Weights): Float32Array {
  return w instanceof Float32Array ? w : w.data;
}

function figure(data: Trace[], layout: Record<string, unknown>): Figure {
  const fig: Figure = { data, layout: { margin: { t: 60, r: 20 }, ...layout } };
  return withDisplay(fig, () => figureBundle(fig));
}

function axisTitle(text: string): { text: string } {
  return { text };
}

function finiteRange(a: Float32Array, b: Float32Array): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (const arr of [a, b]) {
    for (let i = 0; i < arr.length; i++) {
      const v = arr[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (lo === hi) return [lo - 0.5, hi + 0.5];
  return [lo, hi];
}

/**
 * Histogram counts of `values` over `bins` equal bins spanning `[lo, hi]`; returns bin centers
 * and counts. Values outside the range (or non-finite) are ignored.
 */
export function histogram(
  values: ArrayLike<number>,
  opts: { bins: number; range: [number, number] },
): { centers: number[]; counts: number[]; width: number } {
  const { bins } = opts;
  const [lo, hi] = opts.range;
  if (!(bins >= 1) || !Number.isInteger(bins)) {
    throw new OptionError("bins", `must be a positive integer, got ${bins}`);
  }
  const width = (hi - lo) / bins;
  const counts = new Array<number>(bins).fill(0);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!(v >= lo && v <= hi)) continue;
    const b = Math.min(bins - 1, Math.floor((v - lo) / width));
    counts[b]++;
  }
  const centers = counts.map((_, b) => lo + (b + 0.5) * width);
  return { centers, counts, width };
}

function distinctValues(a: Float32Array, max: number): number[] | undefined {
  const seen = new Set<number>();
  for (let i = 0; i < a.length; i++) {
    seen.add(a[i]);
    if (seen.size > max) return undefined;
  }
  return [...seen].sort((x, y) => x - y);
}

/**
 * Histograms of a weight matrix before (`W`) and after (`Wq`, dequantized) quantization,
 * overlaid, with the grid's levels marked as vertical lines.
 *
 * Traces: `[W histogram, Wq histogram]` (bars); levels go into `layout.shapes`.
 */
export function weightHistogram(
  W: Weights,
  Wq: Weights,
  opts: WeightHistogramOptions = {},
): Figure {
  const a = dataOf(W);
  const b = dataOf(Wq);
  if (a.length !== b.length) {
    throw new OptionError("Wq", `has ${b.length} values, W has ${a.length}`);
  }
  const bins = opts.bins ?? 100;
  const range = finiteRange(a, b);
  const h0 = histogram(a, { bins, range });
  const h1 = histogram(b, { bins, range });
  const levels = opts.levels ?? distinctValues(b, 64) ?? [];
  const bar = (name: string, h: typeof h0, color: string): Trace => ({
    type: "bar",
    name,
    x: h.centers,
    y: h.counts,
    width: h.width,
    marker: { color },
    opacity: 0.6,
  });
  const shapes = levels.map((x) => ({
    type: "line",
    xref: "x",
    yref: "paper",
    x0: x,
    x1: x,
    y0: 0,
    y1: 1,
    line: { color: RED, width: 1, dash: "dot" },
  }));
  return figure([bar("W (full precision)", h0, BLUE), bar("Wq (dequantized)", h1, ORANGE)], {
    title: { text: opts.title ?? "Weights before and after quantization" },
    barmode: "overlay",
    bargap: 0,
    xaxis: { title: axisTitle("weight value") },
    yaxis: { title: axisTitle("count"), type: opts.logY ? "log" : "linear" },
    shapes,
    legend: { orientation: "h", y: -0.2 },
  });
}

function shorten(name: string, parts: number): string {
  if (parts <= 0) return name;
  const p = name.split(".");
  return p.slice(Math.max(0, p.length - parts)).join(".");
}

function isReport(x: unknown): x is QuantReport {
  return typeof x === "object" && x !== null && Array.isArray((x as QuantReport).layers);
}

/**
 * Per-layer error bars. `report` is one quantization report (one trace) or a record
 * method → report (one trace per method, grouped bars over the union of layer names).
 */
export function layerErrors(
  report: QuantReport | Record<string, QuantReport>,
  opts: LayerErrorsOptions = {},
): Figure {
  const metric = opts.metric ?? "loss";
  const byMethod: [string, QuantReport][] = isReport(report)
    ? [["", report]]
    : Object.entries(report);
  for (const [m, r] of byMethod) {
    if (!isReport(r)) throw new OptionError("report", `${m || "report"} has no layers array`);
  }
  const names: string[] = [];
  const seen = new Set<string>();
  for (const [, r] of byMethod) {
    for (const l of r.layers) {
      if (!seen.has(l.name)) {
        seen.add(l.name);
        names.push(l.name);
      }
    }
  }
  const parts = opts.shortNames ?? 3;
  const labels = names.map((n) => shorten(n, parts));
  const traces: Trace[] = byMethod.map(([method, r]) => {
    const byName = new Map(r.layers.map((l) => [l.name, l]));
    const y = names.map((n) => {
      const l = byName.get(n);
      const v = l?.[metric];
      if (l && v === undefined) {
        throw new OptionError("metric", `layer ${n} of ${method || "report"} has no ${metric}`);
      }
      return v === undefined || Number.isNaN(v) ? null : v;
    });
    const label = method || metric;
    const empty = y.every((v) => v === null);
    return {
      type: "bar",
      name: empty ? `${label} (no ${metric})` : label,
      x: labels,
      y,
      hovertext: names,
    };
  });
  const metricTitle = {
    loss: "layer loss",
    relErr: "relative error",
    bitsPerWeight: "bits per weight",
    seconds: "seconds",
  }[metric];
  const logY = opts.logY ?? metric === "loss";
  return figure(traces, {
    title: { text: opts.title ?? `Per-layer ${metricTitle}` },
    barmode: "group",
    showlegend: byMethod.length > 1,
    xaxis: { title: axisTitle("layer"), tickangle: -45, automargin: true },
    yaxis: { title: axisTitle(metricTitle), type: logY ? "log" : "linear" },
  });
}

/**
 * Perplexity versus bits per weight: one line per method (points sorted by bits), log-scaled
 * perplexity axis, optional full-precision baseline.
 */
export function pplVsBits(rows: PplRow[], opts: PplVsBitsOptions = {}): Figure {
  const groups = new Map<string, PplRow[]>();
  for (const r of rows) {
    if (!groups.has(r.method)) groups.set(r.method, []);
    groups.get(r.method)!.push(r);
  }
  const traces: Trace[] = [...groups].map(([method, rs]) => {
    const sorted = [...rs].sort((a, b) => a.bitsPerWeight - b.bitsPerWeight);
    return {
      type: "scatter",
      mode: "lines+markers",
      name: method,
      x: sorted.map((r) => r.bitsPerWeight),
      y: sorted.map((r) => r.ppl),
    };
  });
  const shapes = opts.baseline === undefined ? [] : [{
    type: "line",
    xref: "paper",
    yref: "y",
    x0: 0,
    x1: 1,
    y0: opts.baseline,
    y1: opts.baseline,
    line: { color: GREY, dash: "dash" },
  }];
  return figure(traces, {
    title: { text: opts.title ?? "Perplexity vs bits per weight" },
    xaxis: { title: axisTitle("bits per weight") },
    yaxis: { title: axisTitle("perplexity"), type: (opts.logY ?? true) ? "log" : "linear" },
    shapes,
  });
}

/** Median of |values| (NaN for an empty array). */
export function medianAbs(values: ArrayLike<number>): number {
  const a = Float64Array.from(values, Math.abs).sort();
  if (a.length === 0) return NaN;
  const m = a.length >> 1;
  return a.length % 2 ? a[m] : (a[m - 1] + a[m]) / 2;
}

/** Indices of channels whose magnitude exceeds `k · median(|values|)`. */
export function outlierChannels(values: ArrayLike<number>, opts: { k?: number } = {}): number[] {
  const k = opts.k ?? 5;
  const thr = k * medianAbs(values);
  const out: number[] = [];
  for (let i = 0; i < values.length; i++) if (Math.abs(values[i]) > thr) out.push(i);
  return out;
}

/**
 * Per-channel magnitudes (a Hessian diagonal, activation absmax, ...) as bars, with outlier
 * channels (> `k · median`) in a second, red trace and the threshold as a dashed line.
 *
 * Traces: `[channels, outliers]`.
 */
export function channelMagnitude(
  values: ArrayLike<number>,
  opts: ChannelMagnitudeOptions = {},
): Figure {
  const k = opts.k ?? 5;
  const med = medianAbs(values);
  const thr = k * med;
  const out = new Set(outlierChannels(values, { k }));
  const x: number[] = [];
  const y: number[] = [];
  const ox: number[] = [];
  const oy: number[] = [];
  for (let i = 0; i < values.length; i++) {
    const v = Math.abs(values[i]);
    if (out.has(i)) {
      ox.push(i);
      oy.push(v);
    } else {
      x.push(i);
      y.push(v);
    }
  }
  const label = opts.label ?? "magnitude";
  return figure([
    // explicit widths: plotly would size a sparse trace's bars by the gaps between them
    { type: "bar", name: "channels", x, y, width: 0.9, marker: { color: BLUE } },
    {
      type: "bar",
      name: `outliers (> ${k}·median)`,
      x: ox,
      y: oy,
      width: 0.9,
      marker: { color: RED },
    },
  ], {
    title: {
      text: opts.title ?? `Per-channel ${label}: ${out.size} outlier(s) of ${values.length}`,
    },
    barmode: "overlay",
    bargap: 0,
    xaxis: { title: axisTitle("channel") },
    yaxis: { title: axisTitle(label), type: opts.logY ? "log" : "linear" },
    shapes: Number.isFinite(thr)
      ? [{
        type: "line",
        xref: "paper",
        yref: "y",
        x0: 0,
        x1: 1,
        y0: thr,
        y1: thr,
        line: { color: GREY, dash: "dash" },
      }]
      : [],
  });
}

function checkRange(name: string, r: [number, number], n: number): void {
  if (
    !(Number.isInteger(r[0]) && Number.isInteger(r[1]) && 0 <= r[0] && r[0] < r[1] && r[1] <= n)
  ) {
    throw new OptionError(name, `[${r}] is not a non-empty range inside [0, ${n})`);
  }
}

/**
 * Heatmap of a weight block's quantization error `Wq − W` (rows × columns of the block),
 * diverging colors centered on zero (or |Wq − W| with `abs`).
 *
 * Traces: `[heatmap]` with `z[i][j]` = error of row `rowRange[0] + i`, column `colRange[0] + j`.
 */
export function errorHeatmap(W: Weights, Wq: Weights, opts: ErrorHeatmapOptions = {}): Figure {
  const a = dataOf(W);
  const b = dataOf(Wq);
  const shape = W instanceof Float32Array ? undefined : W.shape;
  const rows = opts.rows ?? shape?.[0];
  const cols = opts.cols ?? (shape && shape.length === 2 ? shape[1] : undefined);
  if (rows === undefined || cols === undefined) {
    throw new OptionError("rows", "pass rows and cols, or W as a 2-D tensor");
  }
  if (rows * cols !== a.length || b.length !== a.length) {
    throw new OptionError(
      "rows",
      `${rows}×${cols} does not match W (${a.length}) and Wq (${b.length}) lengths`,
    );
  }
  const rr = opts.rowRange ?? [0, Math.min(rows, 64)];
  const cr = opts.colRange ?? [0, Math.min(cols, 128)];
  checkRange("rowRange", rr, rows);
  checkRange("colRange", cr, cols);
  const z: number[][] = [];
  for (let i = rr[0]; i < rr[1]; i++) {
    const row: number[] = [];
    for (let j = cr[0]; j < cr[1]; j++) {
      const e = b[i * cols + j] - a[i * cols + j];
      row.push(opts.abs ? Math.abs(e) : e);
    }
    z.push(row);
  }
  const x = Array.from({ length: cr[1] - cr[0] }, (_, j) => cr[0] + j);
  const y = Array.from({ length: rr[1] - rr[0] }, (_, i) => rr[0] + i);
  const trace: Trace = opts.abs
    ? { type: "heatmap", name: "|Wq − W|", z, x, y, colorscale: "Viridis" }
    : { type: "heatmap", name: "Wq − W", z, x, y, colorscale: "RdBu", zmid: 0 };
  return figure([trace], {
    title: {
      text: opts.title ??
        `Quantization error, rows ${rr[0]}–${rr[1] - 1}, columns ${cr[0]}–${cr[1] - 1}`,
    },
    xaxis: { title: axisTitle("input column") },
    yaxis: { title: axisTitle("output row"), autorange: "reversed" },
  });
}
