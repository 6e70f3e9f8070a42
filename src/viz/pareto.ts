/**
 * Pareto plots: a metric against a cost (perplexity vs bits per weight) with the non-dominated
 * points joined as the front — the picture a sweep is run to draw.
 * @module
 */
import { figureBundle, withDisplay } from "./display.ts";
import type { Figure, Trace } from "./figures.ts";

/** One point of a Pareto plot. */
export interface ParetoPoint {
  /** Cost (e.g. bits per weight); lower is better. */
  x: number;
  /** Metric (e.g. perplexity); lower is better unless `maximizeY`. */
  y: number;
  /** Series (e.g. the method). */
  group?: string;
  /** Hover label (e.g. the configuration). */
  label?: string;
}

/** Options of {@linkcode paretoPlot}. */
export interface ParetoOptions {
  /** Higher y is better (accuracy); default false (perplexity). */
  maximizeY?: boolean;
  /** Axis titles. */
  xTitle?: string;
  /** Axis titles. */
  yTitle?: string;
  /** Figure title. */
  title?: string;
  /** Log-scaled y axis (default: true unless `maximizeY`). */
  logY?: boolean;
}

/**
 * Indices of the non-dominated points (no other point is at least as good in both coordinates
 * and better in one), sorted by x. Non-finite points are never on the front.
 */
export function paretoFront(
  points: readonly ParetoPoint[],
  opts: { maximizeY?: boolean } = {},
): number[] {
  const sgn = opts.maximizeY ? -1 : 1;
  const idx = points.map((_, i) => i).filter((i) =>
    Number.isFinite(points[i].x) && Number.isFinite(points[i].y)
  );
  idx.sort((a, b) => points[a].x - points[b].x || sgn * (points[a].y - points[b].y));
  const front: number[] = [];
  let best = Infinity;
  for (const i of idx) {
    const y = sgn * points[i].y;
    const last = front.length ? points[front[front.length - 1]] : undefined;
    // An exact duplicate of a front point is not dominated by it.
    if (y < best || (last && last.x === points[i].x && sgn * last.y === y)) {
      front.push(i);
      best = y;
    }
  }
  return front;
}

/** A scatter of the points by group, with the Pareto front drawn as a line. */
export function paretoPlot(points: readonly ParetoPoint[], opts: ParetoOptions = {}): Figure {
  const groups = new Map<string, number[]>();
  points.forEach((p, i) => {
    const g = p.group ?? "runs";
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g)!.push(i);
  });
  const traces: Trace[] = [...groups].map(([g, is]) => ({
    type: "scatter",
    mode: "markers",
    name: g,
    x: is.map((i) => points[i].x),
    y: is.map((i) => points[i].y),
    text: is.map((i) => points[i].label ?? ""),
    marker: { size: 9 },
  }));
  const front = paretoFront(points, opts);
  traces.push({
    type: "scatter",
    mode: "lines",
    name: "Pareto front",
    x: front.map((i) => points[i].x),
    y: front.map((i) => points[i].y),
    line: { dash: "dot", color: "#444" },
    hoverinfo: "skip",
  });
  const fig: Figure = {
    data: traces,
    layout: {
      margin: { t: 60, r: 20 },
      title: { text: opts.title ?? "Pareto front" },
      xaxis: { title: { text: opts.xTitle ?? "bits per weight" } },
      yaxis: {
        title: { text: opts.yTitle ?? "perplexity" },
        type: (opts.logY ?? !opts.maximizeY) ? "log" : "linear",
      },
    },
  };
  return withDisplay(fig, () => figureBundle(fig));
}
