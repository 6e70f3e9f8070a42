/**
 * The needle-in-a-haystack heatmap: one panel per run (FP vs quantized caches side by side),
 * context length × depth, colored by exact-match rate or mean answer log-probability.
 * @module
 */
import { OptionError } from "../errors.ts";
import { figureBundle, withDisplay } from "./display.ts";
import type { Figure, Trace } from "./figures.ts";

/** The grid of one run (what `needleEval` returns). */
export interface NeedleGrid {
  /** Panel title. */
  label: string;
  /** Rows: context lengths. */
  contextLengths: number[];
  /** Columns: depths in [0, 1]. */
  depths: number[];
  /** Exact-match rate [length][depth]. */
  accuracy: number[][];
  /** Mean answer log-probability [length][depth]. */
  logProb: number[][];
}

/**
 * Side-by-side heatmaps of `runs`. `metric` "accuracy" (default; colour range 0–1) or "logProb"
 * (a shared range over all panels). Traces: one `heatmap` per run, `z[i][j]` the metric at context
 * length `i` and depth `j`, on axes x/y, x2/y2, ...
 */
export function needleHeatmap(
  runs: NeedleGrid[],
  opts: { metric?: "accuracy" | "logProb"; title?: string } = {},
): Figure {
  if (runs.length === 0) throw new OptionError("runs", "needs at least one needle grid");
  const metric = opts.metric ?? "accuracy";
  if (metric !== "accuracy" && metric !== "logProb") {
    throw new OptionError("metric", `must be "accuracy" or "logProb", got ${metric}`);
  }
  const all = runs.flatMap((r) => r[metric].flat());
  const zmin = metric === "accuracy" ? 0 : Math.min(...all);
  const zmax = metric === "accuracy" ? 1 : Math.max(...all);
  const n = runs.length;
  const layout: Record<string, unknown> = {
    title: {
      text: opts.title ??
        `Needle in a haystack: ${metric === "accuracy" ? "exact match" : "mean log p(answer)"}`,
    },
    margin: { t: 60, r: 20 },
    annotations: runs.map((r, i) => ({
      text: r.label,
      showarrow: false,
      xref: "paper",
      yref: "paper",
      x: (i + 0.5) / n,
      y: 1.02,
      xanchor: "center",
      yanchor: "bottom",
    })),
  };
  const data: Trace[] = runs.map((r, i) => {
    const sfx = i === 0 ? "" : `${i + 1}`;
    layout[`xaxis${sfx}`] = {
      domain: [i / n + 0.02, (i + 1) / n - 0.02],
      title: { text: "depth (%)" },
      anchor: `y${sfx}`,
    };
    layout[`yaxis${sfx}`] = {
      type: "category",
      title: i === 0 ? { text: "context (tokens)" } : undefined,
      anchor: `x${sfx}`,
    };
    return {
      type: "heatmap",
      name: r.label,
      x: r.depths.map((d) => Math.round(d * 100)),
      y: r.contextLengths.map(String),
      z: r[metric],
      zmin,
      zmax,
      colorscale: "RdYlGn",
      showscale: i === n - 1,
      xaxis: `x${sfx}`,
      yaxis: `y${sfx}`,
    };
  });
  const fig: Figure = { data, layout };
  return withDisplay(fig, () => figureBundle(fig));
}
