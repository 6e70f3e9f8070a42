/**
 * Task accuracy bars: one group per task, one bar per model (FP, GPTQ-4/3/2 …), error bars of
 * ±1 standard error as lm-eval reports them, and an optional chance line per task.
 * @module
 */
import { figureBundle, withDisplay } from "./display.ts";
import type { Figure, Trace } from "./figures.ts";

/** One bar. */
export interface TaskBar {
  /** Model / method label (legend). */
  model: string;
  /** Task name (x axis). */
  task: string;
  /** Metric value. */
  value: number;
  /** Standard error (error bar half-length); NaN or undefined for none. */
  stderr?: number;
}

/** A task result as `evaluate` returns it (only the fields used here). */
export interface TaskResultLike {
  /** Task name. */
  task: string;
  /** Metrics. */
  metrics: { metric: string; filter: string; value: number; stderr: number }[];
}

/** Options of {@linkcode taskBars}. */
export interface TaskBarsOptions {
  /** Title. */
  title?: string;
  /** y-axis title (default "accuracy"). */
  yTitle?: string;
  /** Chance level per task, drawn as short dashed lines. */
  chance?: Record<string, number>;
}

/**
 * Bars from `evaluate` results per model: `metric` (default "acc"; "exact_match" picks the
 * first filter, e.g. strict-match) of each task that has it. Tasks keep the first model's order.
 */
export function taskBarRows(
  results: Record<string, readonly TaskResultLike[]>,
  metric = "acc",
  opts: { filter?: string; skipSubtasks?: boolean } = {},
): TaskBar[] {
  const out: TaskBar[] = [];
  for (const [model, rs] of Object.entries(results)) {
    for (const r of rs) {
      if ((opts.skipSubtasks ?? true) && r.task.startsWith("mmlu_")) continue;
      const m = r.metrics.find((x) =>
        x.metric === metric && (opts.filter === undefined || x.filter === opts.filter)
      );
      if (m) out.push({ model, task: r.task, value: m.value, stderr: m.stderr });
    }
  }
  return out;
}

/** Grouped bar chart of task scores with ±stderr error bars (plotly). */
export function taskBars(rows: readonly TaskBar[], opts: TaskBarsOptions = {}): Figure {
  const tasks: string[] = [];
  const models: string[] = [];
  for (const r of rows) {
    if (!tasks.includes(r.task)) tasks.push(r.task);
    if (!models.includes(r.model)) models.push(r.model);
  }
  const traces: Trace[] = models.map((model) => {
    const by = new Map(rows.filter((r) => r.model === model).map((r) => [r.task, r]));
    return {
      type: "bar",
      name: model,
      x: tasks,
      y: tasks.map((t) => by.get(t)?.value ?? null),
      error_y: {
        type: "data",
        visible: true,
        array: tasks.map((t) => {
          const s = by.get(t)?.stderr;
          return s === undefined || !Number.isFinite(s) ? 0 : s;
        }),
      },
    };
  });
  const shapes = Object.entries(opts.chance ?? {}).filter(([t]) => tasks.includes(t)).map((
    [t, y],
  ) => {
    const i = tasks.indexOf(t);
    return {
      type: "line",
      xref: "x",
      yref: "y",
      x0: i - 0.45,
      x1: i + 0.45,
      y0: y,
      y1: y,
      line: { color: "#888", dash: "dash", width: 1 },
    };
  });
  const fig: Figure = {
    data: traces,
    layout: {
      margin: { t: 60, r: 20 },
      title: { text: opts.title ?? "Task scores (±1 standard error)" },
      barmode: "group",
      xaxis: { title: { text: "task" }, type: "category", automargin: true },
      yaxis: { title: { text: opts.yTitle ?? "accuracy" }, rangemode: "tozero" },
      shapes,
    },
  };
  return withDisplay(fig, () => figureBundle(fig));
}
