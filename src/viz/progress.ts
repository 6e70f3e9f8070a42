/**
 * Progress reporting for long loops (calibration, perplexity, quantization).
 *
 * `progress(label, total)` picks one of three sinks:
 * - Jupyter (`deno jupyter` kernel): one live output updated in place through the kernel's
 *   display ids (`display_data` then `update_display_data` with the same `transient.display_id`).
 * - A terminal (stderr is a TTY): a one-line bar on stderr, redrawn with `\r`.
 * - Otherwise (stderr redirected: CI logs, tests, pipes): silent, so logs are not flooded.
 *   `{ enabled: true }` forces newline-terminated lines on stderr there (at most one a second).
 *
 * Updates are rate-limited to at most 10 a second (`minIntervalMs`, default 100); the last
 * update (reaching `total`, or `done()`) is always drawn. `{ enabled: false }` or the
 * environment variable `QUANTLAB_PROGRESS=0` silences it; `QUANTLAB_PROGRESS=1` forces it on.
 * @module
 */
import { jupyter, type JupyterApi } from "./display.ts";

/** A progress handle. */
export interface Progress {
  /** Advances by `n` steps (default 1), with optional short status text (e.g. "ppl 12.3"). */
  tick(n?: number, info?: string): void;
  /** Marks the task finished and draws the final state; resolves once it has been sent. */
  done(info?: string): Promise<void>;
}

/** Options of {@link progress}. */
export interface ProgressOptions {
  /** true: always report; false: never; default: in Jupyter or when stderr is a terminal. */
  enabled?: boolean;
  /** Minimum milliseconds between redraws (default 100, i.e. ≤ 10 updates per second; 1000 for
   * plain log lines). */
  minIntervalMs?: number;
  /** Width of the text bar in characters (default 30). */
  width?: number;
}

/** The state a progress sink draws. */
interface State {
  label: string;
  count: number;
  total: number;
  elapsed: number;
  info: string;
  finished: boolean;
}

function envFlag(): boolean | undefined {
  try {
    const v = Deno.env.get("QUANTLAB_PROGRESS");
    if (v === undefined || v === "") return undefined;
    return !["0", "false", "no", "off"].includes(v.toLowerCase());
  } catch {
    return undefined;
  }
}

function stderrIsTerminal(): boolean {
  try {
    return Deno.stderr.isTerminal();
  } catch {
    return false;
  }
}

function duration(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)}s`;
  const m = Math.floor(s / 60);
  return m < 60
    ? `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s`
    : `${(m / 60).toFixed(1)}h`;
}

/** One line describing a progress state, e.g. `ppl [#####.....] 5/10 50% 2.0 it/s eta 2.5s`. */
export function progressLine(s: State, width = 30): string {
  const frac = s.total > 0 ? Math.min(1, s.count / s.total) : 0;
  const filled = Math.round(frac * width);
  const bar = "#".repeat(filled) + ".".repeat(width - filled);
  const rate = s.elapsed > 0 ? s.count / s.elapsed : 0;
  const eta = rate > 0 ? (s.total - s.count) / rate : Infinity;
  const timing = s.finished
    ? `in ${duration(s.elapsed)}`
    : `${rate >= 10 ? rate.toFixed(0) : rate.toFixed(2)} it/s eta ${duration(eta)}`;
  return `${s.label} [${bar}] ${s.count}/${s.total} ${(frac * 100).toFixed(0)}% ${timing}` +
    (s.info ? ` ${s.info}` : "");
}

function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function progressHtml(s: State): string {
  const line = progressLine(s, 0).replace(/ \[\] /, " ");
  return `<div class="quantlab-progress" style="font-family:monospace;font-size:12px;">` +
    `<progress value="${s.count}" max="${Math.max(1, s.total)}" style="width:240px;` +
    `vertical-align:middle;"></progress> ${escapeHtml(line)}</div>`;
}

let displayCounter = 0;

function jupyterSink(j: JupyterApi): (s: State) => Promise<void> {
  const id = `quantlab-progress-${Date.now().toString(36)}-${++displayCounter}`;
  let first = true;
  let chain: Promise<void> = Promise.resolve();
  return (s: State) => {
    const data = { "text/html": progressHtml(s), "text/plain": progressLine(s) };
    const type = first ? "display_data" : "update_display_data";
    first = false;
    chain = chain.then(() =>
      j.broadcast(type, { data, metadata: {}, transient: { display_id: id } })
    ).catch(() => {});
    return chain;
  };
}

function terminalSink(width: number): (s: State) => Promise<void> {
  const enc = new TextEncoder();
  let last = 0;
  return (s: State) => {
    const line = progressLine(s, width);
    const padded = line.padEnd(last);
    last = line.length;
    Deno.stderr.writeSync(enc.encode(`\r${padded}${s.finished ? "\n" : ""}`));
    return Promise.resolve();
  };
}

function lineSink(width: number): (s: State) => Promise<void> {
  const enc = new TextEncoder();
  return (s: State) => {
    Deno.stderr.writeSync(enc.encode(progressLine(s, width) + "\n"));
    return Promise.resolve();
  };
}

const SILENT: Progress = { tick() {}, done: () => Promise.resolve() };

/**
 * Starts a progress report of `total` steps. Returns `{ tick(n?, info?), done(info?) }`; see the
 * module doc for where it is drawn and when it is silent.
 */
export function progress(label: string, total: number, opts: ProgressOptions = {}): Progress {
  const forced = opts.enabled ?? envFlag();
  if (forced === false) return SILENT;
  const j = jupyter();
  const tty = !j && stderrIsTerminal();
  if (!j && !tty && forced !== true) return SILENT;
  const width = opts.width ?? 30;
  const sink = j ? jupyterSink(j) : tty ? terminalSink(width) : lineSink(width);
  const minInterval = opts.minIntervalMs ?? (j || tty ? 100 : 1000);
  const start = performance.now();
  const state: State = { label, count: 0, total, elapsed: 0, info: "", finished: false };
  let lastDraw = -Infinity;
  let finished = false;
  let sent: Promise<void> = Promise.resolve();
  const draw = () => {
    state.elapsed = (performance.now() - start) / 1000;
    lastDraw = performance.now();
    sent = sink({ ...state });
  };
  draw();
  return {
    tick(n = 1, info?: string) {
      if (finished) return;
      state.count += n;
      if (info !== undefined) state.info = info;
      const now = performance.now();
      if (now - lastDraw >= minInterval || state.count >= total) draw();
    },
    done(info?: string) {
      if (finished) return sent;
      finished = true;
      if (info !== undefined) state.info = info;
      state.finished = true;
      draw();
      return sent;
    },
  };
}

/** A progress event as the pipeline reports it (`quantize`'s `onProgress`). */
export interface ProgressEvent {
  /** Steps done so far. */
  done: number;
  /** Steps in all. */
  total: number;
  /** Short status text. */
  info?: string;
}

/**
 * An `onProgress` callback that draws a {@link progress} bar: accepts `(done, total)` (as
 * `perplexity` reports) or an event `{ done, total, info }` (as `quantize` reports). The bar
 * starts on the first call and finishes when `done` reaches `total`.
 *
 * ```ts
 * await q.perplexity(model, "tinystories", { onProgress: plot.progressCallback("ppl") });
 * ```
 */
export function progressCallback(
  label: string,
  opts: ProgressOptions = {},
): (done: number | ProgressEvent, total?: number) => void {
  let bar: Progress | undefined;
  let count = 0;
  let finished = false;
  return (done, total) => {
    const e: ProgressEvent = typeof done === "number" ? { done, total: total ?? done } : done;
    if (finished && e.done < count) finished = false; // a new run through the same callback
    if (finished) return;
    if (!bar || e.done < count) {
      bar = progress(label, e.total, opts);
      count = 0;
    }
    bar.tick(e.done - count, e.info);
    count = e.done;
    if (e.done >= e.total) {
      finished = true;
      void bar.done(e.info);
    }
  };
}
