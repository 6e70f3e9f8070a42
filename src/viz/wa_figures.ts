/**
 * Figures of the weight-activation analysis tools (`src/eval/wa_analysis.ts`, the seed's
 * `analyze_stats` and `get_layerwise_distance`): per-linear SQNR bars and per-block distance
 * lines between a quantized model's hidden states and the FP model's.
 * @module
 */
import { OptionError } from "../errors.ts";
import { figureBundle, withDisplay } from "./display.ts";
import type { Figure, Trace } from "./figures.ts";

/** The fields {@linkcode sqnrPerLayer} reads from `analyzeStats` records. */
export interface SqnrRecord {
  /** Linear name. */
  name: string;
  /** SQNR in dB of input, weight and output (Infinity: unchanged). */
  sqnr: { x: number; w: number; out: number };
}

/** The fields {@linkcode layerDistance} reads from `layerwiseDistance` records. */
export interface DistanceRecord {
  /** Block index. */
  block: number;
  /** ‖h_q − h_fp‖ / ‖h_fp‖. */
  relL2: number;
}

function figure(data: Trace[], layout: Record<string, unknown>): Figure {
  const fig: Figure = { data, layout: { margin: { t: 60, r: 20 }, ...layout } };
  return withDisplay(fig, () => figureBundle(fig));
}

const short = (n: string) => n.split(".").slice(-3).join(".");
const finite = (v: number) => (Number.isFinite(v) ? v : null);

/**
 * Grouped bars of input, weight and output SQNR (dB) per linear; an unchanged tensor (infinite
 * SQNR) has no bar. Traces: `[input x, weight w, output]`.
 */
export function sqnrPerLayer(records: SqnrRecord[], opts: { title?: string } = {}): Figure {
  if (!Array.isArray(records) || !records.length) {
    throw new OptionError("records", "needs at least one analyzeStats record");
  }
  const x = records.map((r) => short(r.name));
  const trace = (name: string, key: "x" | "w" | "out"): Trace => ({
    type: "bar",
    name,
    x,
    y: records.map((r) => finite(r.sqnr[key])),
    hovertext: records.map((r) => r.name),
  });
  return figure([trace("input x", "x"), trace("weight w", "w"), trace("output", "out")], {
    title: { text: opts.title ?? "SQNR per linear (dB)" },
    barmode: "group",
    xaxis: { title: { text: "linear" }, tickangle: -45, automargin: true },
    yaxis: { title: { text: "SQNR (dB)" } },
  });
}

/**
 * Relative L2 distance to the FP hidden states after each block: one line per configuration
 * (`records` one list, or configuration name → list), log-scaled.
 */
export function layerDistance(
  records: DistanceRecord[] | Record<string, DistanceRecord[]>,
  opts: { title?: string } = {},
): Figure {
  const byName = Array.isArray(records) ? { "": records } : records;
  const entries = Object.entries(byName);
  if (!entries.length || entries.some(([, r]) => !Array.isArray(r) || !r.length)) {
    throw new OptionError("records", "needs layerwiseDistance records");
  }
  const data: Trace[] = entries.map(([name, r]) => ({
    type: "scatter",
    mode: "lines+markers",
    name: name || "relative L2",
    x: r.map((d) => d.block),
    y: r.map((d) => d.relL2),
  }));
  return figure(data, {
    title: { text: opts.title ?? "Distance to the FP hidden states per block" },
    showlegend: entries.length > 1,
    xaxis: { title: { text: "block" }, dtick: 1 },
    yaxis: { title: { text: "‖h_q − h_fp‖ / ‖h_fp‖" }, type: "log" },
  });
}
