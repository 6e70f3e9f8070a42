/**
 * The results ledger for notebooks and scripts (re-exported as `ledger` from the package's
 * mod.ts): every `quantize` / `perplexity` call is recorded in the active ledger (default
 * `$QUANTLAB_LEDGER` or `<cache dir>/quantlab/ledger.sqlite`; `use(false)` turns recording off).
 *
 * ```ts
 * import { ledger } from "../mod.ts";
 * await ledger.use("out/ledger.sqlite");
 * const runs = await ledger.runs({ kind: "sweep-task", sweep: "g1" });
 * ledger.pareto(runs);                  // perplexity vs bits/weight, Pareto front marked
 * ledger.table(runs);                   // an HTML table in Jupyter
 * await ledger.compare(runs[0], runs[1]);
 * ```
 * @module
 */
import { OptionError } from "../errors.ts";
import type { Figure } from "../viz/figures.ts";
import { type ParetoOptions, paretoPlot, type ParetoPoint } from "../viz/pareto.ts";
import { type ResultRow, type ResultsTable, resultsTable } from "../viz/table.ts";
import { type Difference, Ledger, type RunFilter, type RunRecord } from "./ledger.ts";
import { currentLedger, useLedger } from "./tracked.ts";

export { type Difference, Ledger, type RunFilter, type RunRecord } from "./ledger.ts";
export { type LedgerSwitch, type RunInfo, tracked } from "./tracked.ts";
export {
  collectSweep,
  expandSweep,
  runSweepLocal,
  runSweepTask,
  submitSweep,
  type SweepSpec,
  sweepStatus,
  type SweepTask,
} from "./sweep.ts";

/** Sets the active ledger (a file path, a Ledger, or false to record nothing). */
export const use: (target: string | Ledger | false | null) => Promise<Ledger | null> = useLedger;

async function active(): Promise<Ledger> {
  const l = await currentLedger();
  if (!l) throw new OptionError("ledger", "recording is off (QUANTLAB_LEDGER=off or use(false))");
  return l;
}

/** Runs in the active ledger matching `filter`, most recent first. */
export async function runs(filter: RunFilter = {}): Promise<RunRecord[]> {
  return (await active()).runs(filter);
}

/** What differs between two runs of the active ledger (config and results). */
export async function compare(
  a: RunRecord | number,
  b: RunRecord | number,
): Promise<{ config: Difference[]; results: Difference[] }> {
  return (await active()).compare(a, b);
}

function describe(r: RunRecord): { method: string; options: string } {
  const c = r.identity.config as {
    method?: string;
    options?: Record<string, unknown>;
    recipe?: unknown;
  };
  if (c?.method) return { method: c.method, options: JSON.stringify(c.options ?? {}) };
  return { method: r.kind, options: JSON.stringify(c ?? {}) };
}

/** Options of {@linkcode pareto}. */
export interface LedgerParetoOptions extends ParetoOptions {
  /** Metric on x (default "bitsPerWeight"). */
  x?: string;
  /** Metric on y (default "ppl"). */
  y?: string;
}

/**
 * A metric vs cost plot over recorded runs that have both metrics (default perplexity vs
 * bits/weight), one series per method, with the Pareto front marked.
 */
export function pareto(records: RunRecord[], opts: LedgerParetoOptions = {}): Figure {
  const xk = opts.x ?? "bitsPerWeight", yk = opts.y ?? "ppl";
  const pts: ParetoPoint[] = records
    .filter((r) =>
      r.status === "done" && r.metrics[xk] !== undefined && r.metrics[yk] !== undefined
    )
    .map((r) => {
      const d = describe(r);
      return { x: r.metrics[xk], y: r.metrics[yk], group: d.method, label: d.options };
    });
  return paretoPlot(pts, { xTitle: xk, yTitle: yk, ...opts });
}

/** An HTML (Jupyter) / text table of recorded runs: id, kind, method, options, status, metrics. */
export function table(records: RunRecord[], opts: { title?: string } = {}): ResultsTable {
  const rows: ResultRow[] = records.map((r) => {
    const d = describe(r);
    return {
      id: r.id,
      kind: r.kind,
      method: d.method,
      options: d.options,
      status: r.status,
      ...r.metrics,
      seconds: r.seconds ?? undefined,
      task: r.task ?? undefined,
    };
  });
  return resultsTable(rows, { title: opts.title });
}
