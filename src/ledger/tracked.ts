/**
 * Recording calls in the ledger: {@linkcode tracked} runs a computation under a ledger entry
 * (running → done / failed) and, when an identical cacheable run is already recorded as done,
 * returns its recorded result instead (unless `force`). The active ledger is chosen once per
 * process ({@linkcode useLedger}) or per call (`{ ledger }`); by default it is
 * `$QUANTLAB_LEDGER` or `<cache dir>/quantlab/ledger.sqlite` (`QUANTLAB_LEDGER=off` disables it).
 * @module
 */
import { getBackend } from "../backend/device.ts";
import { codeVersion, sha256Hex } from "./hash.ts";
import { canonicalJson } from "./hash.ts";
import { defaultLedgerPath, type FinishRun, Ledger, type RunIdentity } from "./ledger.ts";

/** Per-call ledger switches, accepted by every recorded entry point. */
export interface LedgerSwitch {
  /** A ledger (or its file path) to record in; false: do not record. Default: the active ledger. */
  ledger?: Ledger | string | false;
  /** Recompute even when an identical run is recorded (the new run is recorded too). */
  force?: boolean;
  /** A free label stored with the run (not part of its identity). */
  label?: string;
}

/** Where a result came from, attached to recorded results as `run`. */
export interface RunInfo {
  /** Row id in the ledger. */
  id: number;
  /** True when the result was read from the ledger instead of computed. */
  cached: boolean;
  /** The ledger file. */
  ledger: string;
  /** The identity hash. */
  key: string;
}

let active: Promise<Ledger | null> | undefined;
const byPath = new Map<string, Promise<Ledger>>();

function openPath(path: string): Promise<Ledger> {
  let p = byPath.get(path);
  if (!p) {
    p = Ledger.open(path);
    byPath.set(path, p);
    p.catch(() => byPath.delete(path));
  }
  return p;
}

/**
 * Sets the process's active ledger: a file path, an open {@linkcode Ledger}, or false/null to
 * record nothing. Returns it.
 */
export function useLedger(target: string | Ledger | false | null): Promise<Ledger | null> {
  active = target instanceof Ledger
    ? Promise.resolve(target)
    : typeof target === "string"
    ? openPath(target)
    : Promise.resolve(null);
  return active;
}

/** The active ledger (opening the default file on first use), or null when recording is off. */
export function currentLedger(): Promise<Ledger | null> {
  if (!active) {
    const path = defaultLedgerPath();
    active = path ? openPath(path) : Promise.resolve(null);
  }
  return active;
}

/** The ledger a call records in. */
export function ledgerFor(sw: LedgerSwitch): Promise<Ledger | null> {
  if (sw.ledger === false) return Promise.resolve(null);
  if (sw.ledger instanceof Ledger) return Promise.resolve(sw.ledger);
  if (typeof sw.ledger === "string") return openPath(sw.ledger);
  return currentLedger();
}

/** The active device as the ledger names it. */
export function deviceName(): string {
  const be = getBackend();
  return `${be.name}: ${be.description}`;
}

/** Peak resident memory of this process so far (MiB): VmHWM on Linux, else the current RSS. */
export function peakRssMiB(): number {
  try {
    const s = Deno.readTextFileSync("/proc/self/status");
    const m = /VmHWM:\s+(\d+) kB/.exec(s);
    if (m) return Number(m[1]) / 1024;
  } catch { /* not Linux */ }
  return Deno.memoryUsage().rss / 2 ** 20;
}

/** SHA-256 of token windows (calibration sets, evaluation streams). */
export function idsDigest(ids: readonly (readonly number[])[] | readonly number[]): string {
  return sha256Hex(canonicalJson(ids));
}

/** One recorded computation. */
export interface TrackedCall<T> {
  /** Run kind: "quantize", "perplexity", "evaluate", "export", ... */
  kind: string;
  /** The identity without the code version (added here). */
  identity: () => Promise<{ identity: Omit<RunIdentity, "code">; cacheable: boolean }>;
  /** Computes the result. */
  run: () => Promise<T>;
  /** What to store of a result. */
  record: (r: T) => FinishRun;
  /** Rebuilds a result from a recorded run (omit when results cannot be reused, e.g. models). */
  revive?: (stored: unknown) => T;
  /** Sweep name and task index, for sweep tasks. */
  sweep?: { name: string; task: number };
}

/**
 * Runs `call` under a ledger entry. With no ledger (recording off) it just runs. With a ledger:
 * a cacheable identical run already done is returned (`run.cached` true) unless `sw.force`;
 * otherwise the run is recorded as running, then done with its metrics, or failed with its error
 * (which is rethrown).
 */
export async function tracked<T extends object>(
  call: TrackedCall<T>,
  sw: LedgerSwitch = {},
): Promise<T & { run?: RunInfo }> {
  const ledger = await ledgerFor(sw);
  if (!ledger) return await call.run();
  const [{ identity, cacheable }, code] = await Promise.all([call.identity(), codeVersion()]);
  const full: RunIdentity = { ...identity, code: code.digest };
  const key = sha256Hex(canonicalJson({ kind: call.kind, ...full }));
  if (cacheable && call.revive && !sw.force) {
    const hit = ledger.lookup(key);
    if (hit && hit.result !== null) {
      return Object.assign(call.revive(hit.result), {
        run: { id: hit.id, cached: true, ledger: ledger.path, key },
      });
    }
  }
  const id = ledger.begin({
    key,
    kind: call.kind,
    identity: full,
    cacheable,
    gitRev: code.git,
    label: sw.label,
    sweep: call.sweep?.name,
    task: call.sweep?.task,
  });
  const t0 = performance.now();
  let out: T;
  try {
    out = await call.run();
  } catch (e) {
    ledger.fail(id, e);
    throw e;
  }
  const rec = call.record(out);
  ledger.finish(id, {
    seconds: (performance.now() - t0) / 1000,
    peakRssMiB: peakRssMiB(),
    ...rec,
  });
  return Object.assign(out, { run: { id, cached: false, ledger: ledger.path, key } });
}
