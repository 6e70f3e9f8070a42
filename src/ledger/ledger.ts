/**
 * The results ledger: every `quantize`, `perplexity`, `evaluate` and export call records its run
 * in an embedded SQLite database (`node:sqlite`, no server) — its identity (model, method and
 * options, data, seed, protocol, device, code version), metrics, report, timings, peak memory and
 * status. A run whose key (the hash of its identity, `hash.ts`) is already recorded as done is
 * returned from the ledger unless `{ force: true }`.
 *
 * Concurrency: WAL journal and a busy timeout, so several processes can record into one file on
 * a local disk. On a shared (network) file system each sweep task writes its own shard and
 * `Ledger.merge` folds the shards into one ledger.
 * @module
 */
import { DatabaseSync, type SQLInputValue } from "node:sqlite";
import { LedgerError, OptionError } from "../errors.ts";

/** Schema migrations, applied in order; `PRAGMA user_version` is the number applied. */
const MIGRATIONS: readonly string[] = [
  // v1: runs and file checksums.
  `CREATE TABLE runs (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     uid TEXT NOT NULL UNIQUE,
     key TEXT NOT NULL,
     kind TEXT NOT NULL,
     status TEXT NOT NULL,
     label TEXT,
     sweep TEXT,
     task INTEGER,
     created_at TEXT NOT NULL,
     finished_at TEXT,
     cacheable INTEGER NOT NULL,
     identity TEXT NOT NULL,
     code_digest TEXT NOT NULL,
     git_rev TEXT,
     device TEXT,
     metrics TEXT,
     result TEXT,
     report TEXT,
     seconds REAL,
     peak_rss_mib REAL,
     error TEXT,
     host TEXT,
     pid INTEGER
   );
   CREATE INDEX runs_key ON runs(key, status);
   CREATE INDEX runs_sweep ON runs(sweep, task);`,
];

/** The schema version this code writes. */
export const LEDGER_SCHEMA_VERSION: number = MIGRATIONS.length;

/** The status of a recorded run. */
export type RunStatus = "running" | "done" | "failed";

/** The identity of a run: everything that changes its numbers. */
export interface RunIdentity {
  /** Model identity hash and its parts. */
  model: { hash: string; parts?: Record<string, unknown> };
  /** Method, recipe and options (canonical JSON-able). */
  config: unknown;
  /** Data identity (e.g. the evaluated text's hash, the calibration ids' hash). */
  data?: unknown;
  /** Seed, when the run draws random numbers. */
  seed?: number;
  /** Protocol: dataset, windows, shots, normalisation... */
  protocol?: unknown;
  /** Compute device (backend and adapter). */
  device?: string;
  /** Code digest (hash.ts `codeVersion`). */
  code: string;
}

/** One recorded run. */
export interface RunRecord {
  /** Row id in this ledger file. */
  id: number;
  /** Unique id across ledgers (kept when shards merge). */
  uid: string;
  /** The hash of the identity. */
  key: string;
  /** "quantize", "perplexity", "evaluate", "export", "sweep-task". */
  kind: string;
  /** Status. */
  status: RunStatus;
  /** Free label. */
  label: string | null;
  /** Sweep name, for sweep tasks. */
  sweep: string | null;
  /** Task index in its sweep. */
  task: number | null;
  /** ISO time of the start. */
  createdAt: string;
  /** ISO time of the end. */
  finishedAt: string | null;
  /** False when the run may not be returned from the cache (un-hashable inputs). */
  cacheable: boolean;
  /** The identity. */
  identity: RunIdentity;
  /** Git revision, when known. */
  gitRev: string | null;
  /** Device. */
  device: string | null;
  /** Scalar metrics (ppl, bitsPerWeight, acc...). */
  metrics: Record<string, number>;
  /** The full result the call returned (JSON), for cache hits. */
  result: unknown;
  /** Per-layer report (quantize). */
  report: unknown;
  /** Wall seconds. */
  seconds: number | null;
  /** Peak resident memory (MiB). */
  peakRssMiB: number | null;
  /** Error message of a failed run. */
  error: string | null;
  /** Host name of the process that ran it. */
  host: string | null;
  /** Process id. */
  pid: number | null;
}

/** Filter of {@linkcode Ledger.runs}. */
export interface RunFilter {
  /** Run kind. */
  kind?: string;
  /** Status. */
  status?: RunStatus;
  /** Sweep name. */
  sweep?: string;
  /** Label. */
  label?: string;
  /** Key. */
  key?: string;
  /** A predicate over the decoded record. */
  where?: (r: RunRecord) => boolean;
  /** Most recent first, at most this many. */
  limit?: number;
}

/** What to record at the start of a run. */
export interface BeginRun {
  /** The identity hash. */
  key: string;
  /** Run kind. */
  kind: string;
  /** The identity. */
  identity: RunIdentity;
  /** May a later identical call reuse it? */
  cacheable: boolean;
  /** Git revision. */
  gitRev?: string | null;
  /** Label. */
  label?: string;
  /** Sweep name. */
  sweep?: string;
  /** Task index. */
  task?: number;
}

/** What to record at the end of a run. */
export interface FinishRun {
  /** Scalar metrics. */
  metrics: Record<string, number>;
  /** JSON-able result. */
  result?: unknown;
  /** Report. */
  report?: unknown;
  /** Wall seconds. */
  seconds?: number;
  /** Peak RSS (MiB). */
  peakRssMiB?: number;
}

/** One difference found by {@linkcode Ledger.compare}. */
export interface Difference {
  /** Dotted path, e.g. "identity.config.options.bits" or "metrics.ppl". */
  path: string;
  /** Value in run a. */
  a: unknown;
  /** Value in run b. */
  b: unknown;
}

function hostName(): string | null {
  try {
    return Deno.hostname();
  } catch {
    return null;
  }
}

function parse(s: unknown): unknown {
  return typeof s === "string" ? JSON.parse(s) : null;
}

function flatten(v: unknown, path: string, out: Map<string, unknown>): void {
  if (v !== null && typeof v === "object" && !Array.isArray(v)) {
    const keys = Object.keys(v as object);
    if (!keys.length) out.set(path, v);
    for (const k of keys) {
      flatten((v as Record<string, unknown>)[k], path ? `${path}.${k}` : k, out);
    }
  } else out.set(path, v);
}

function diff(a: unknown, b: unknown, prefix: string): Difference[] {
  const fa = new Map<string, unknown>(), fb = new Map<string, unknown>();
  flatten(a, prefix, fa);
  flatten(b, prefix, fb);
  const out: Difference[] = [];
  for (const k of [...new Set([...fa.keys(), ...fb.keys()])].sort()) {
    const x = fa.get(k), y = fb.get(k);
    if (JSON.stringify(x) !== JSON.stringify(y)) out.push({ path: k, a: x, b: y });
  }
  return out;
}

/** The default ledger file: `$QUANTLAB_LEDGER`, else `<cache dir>/quantlab/ledger.sqlite`. */
export function defaultLedgerPath(): string | null {
  let env: string | undefined, home: string | undefined, xdg: string | undefined;
  try {
    env = Deno.env.get("QUANTLAB_LEDGER");
    home = Deno.env.get("HOME");
    xdg = Deno.env.get("XDG_CACHE_HOME");
  } catch { /* no env permission */ }
  if (env !== undefined) return env === "off" || env === "" ? null : env;
  const base = xdg ?? (home ? `${home}/.cache` : null);
  return base ? `${base}/quantlab/ledger.sqlite` : null;
}

/** An open ledger file. */
export class Ledger {
  /** The database file. */
  readonly path: string;
  #db: DatabaseSync;

  private constructor(path: string, db: DatabaseSync) {
    this.path = path;
    this.#db = db;
  }

  /**
   * Opens (creating if needed) the ledger at `path` and applies pending schema migrations.
   * A file that is not a quantlab ledger, or one written by a newer schema, is a
   * {@linkcode LedgerError} naming the file and how to recover.
   */
  static async open(path: string): Promise<Ledger> {
    const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
    if (dir) await Deno.mkdir(dir, { recursive: true });
    try {
      const st = await Deno.stat(path);
      if (!st.isFile) throw new LedgerError(path, "is not a regular file");
    } catch (e) {
      if (e instanceof LedgerError) throw e;
    }
    let db: DatabaseSync;
    try {
      db = new DatabaseSync(path);
    } catch (e) {
      throw new LedgerError(path, `cannot be opened (${(e as Error).message})`, { cause: e });
    }
    try {
      db.exec("PRAGMA busy_timeout = 30000");
      const jm = db.prepare("PRAGMA journal_mode = WAL").get() as { journal_mode: string };
      if (jm.journal_mode !== "wal" && path !== ":memory:") {
        db.exec("PRAGMA journal_mode = DELETE");
      }
      const v = (db.prepare("PRAGMA user_version").get() as { user_version: number })
        .user_version;
      if (v > MIGRATIONS.length) {
        throw new LedgerError(
          path,
          `has schema version ${v}, newer than this quantlab's ${MIGRATIONS.length}; ` +
            `open it with a newer quantlab or point QUANTLAB_LEDGER at another file`,
        );
      }
      if (v === 0) {
        const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all();
        if (tables.length) {
          throw new LedgerError(path, "is an SQLite database but not a quantlab ledger");
        }
      }
      for (let i = v; i < MIGRATIONS.length; i++) {
        db.exec("BEGIN IMMEDIATE");
        try {
          const now = (db.prepare("PRAGMA user_version").get() as { user_version: number })
            .user_version;
          if (now === i) {
            db.exec(MIGRATIONS[i]);
            db.exec(`PRAGMA user_version = ${i + 1}`);
          }
          db.exec("COMMIT");
        } catch (e) {
          db.exec("ROLLBACK");
          throw e;
        }
      }
      db.prepare("SELECT count(*) FROM runs").get();
    } catch (e) {
      db.close();
      if (e instanceof LedgerError) throw e;
      throw new LedgerError(
        path,
        `is not a readable quantlab ledger (${(e as Error).message}). To recover: move the ` +
          `file aside (a new ledger starts empty), or salvage rows with ` +
          `\`sqlite3 ${path} .recover | sqlite3 new.sqlite\` and point QUANTLAB_LEDGER at it`,
        { cause: e },
      );
    }
    return new Ledger(path, db);
  }

  #run<T>(what: string, f: () => T): T {
    try {
      return f();
    } catch (e) {
      if (e instanceof LedgerError || e instanceof OptionError) throw e;
      throw new LedgerError(this.path, `${what} failed: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Records the start of a run; returns its row id. */
  begin(b: BeginRun): number {
    return this.#run("begin", () => {
      const r = this.#db.prepare(
        `INSERT INTO runs (uid, key, kind, status, label, sweep, task, created_at, cacheable,
           identity, code_digest, git_rev, device, host, pid)
         VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(
        crypto.randomUUID(),
        b.key,
        b.kind,
        b.label ?? null,
        b.sweep ?? null,
        b.task ?? null,
        new Date().toISOString(),
        b.cacheable ? 1 : 0,
        JSON.stringify(b.identity),
        b.identity.code,
        b.gitRev ?? null,
        b.identity.device ?? null,
        hostName(),
        Deno.pid,
      );
      return Number(r.lastInsertRowid);
    });
  }

  /** Marks run `id` done with its results. */
  finish(id: number, f: FinishRun): void {
    this.#run("finish", () => {
      this.#db.prepare(
        `UPDATE runs SET status = 'done', finished_at = ?, metrics = ?, result = ?, report = ?,
           seconds = ?, peak_rss_mib = ? WHERE id = ?`,
      ).run(
        new Date().toISOString(),
        JSON.stringify(f.metrics),
        f.result === undefined ? null : JSON.stringify(f.result),
        f.report === undefined ? null : JSON.stringify(f.report),
        f.seconds ?? null,
        f.peakRssMiB ?? null,
        id,
      );
    });
  }

  /** Marks run `id` failed with the error's class and message. */
  fail(id: number, error: unknown): void {
    const msg = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    this.#run("fail", () => {
      this.#db.prepare(
        "UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
      ).run(new Date().toISOString(), msg, id);
    });
  }

  /** The most recent cacheable done run with this key, if any. */
  lookup(key: string): RunRecord | undefined {
    const row = this.#run("lookup", () =>
      this.#db.prepare(
        `SELECT * FROM runs WHERE key = ? AND status = 'done' AND cacheable = 1
         ORDER BY id DESC LIMIT 1`,
      ).get(key));
    return row ? decode(row as Record<string, unknown>) : undefined;
  }

  /** One run by row id. */
  get(id: number): RunRecord | undefined {
    const row = this.#run("get", () => this.#db.prepare("SELECT * FROM runs WHERE id = ?").get(id));
    return row ? decode(row as Record<string, unknown>) : undefined;
  }

  /** Runs matching `filter`, most recent first. */
  runs(filter: RunFilter = {}): RunRecord[] {
    const where: string[] = [];
    const args: SQLInputValue[] = [];
    for (const k of ["kind", "status", "sweep", "label", "key"] as const) {
      if (filter[k] !== undefined) {
        where.push(`${k} = ?`);
        args.push(filter[k]!);
      }
    }
    const sql = `SELECT * FROM runs ${where.length ? `WHERE ${where.join(" AND ")}` : ""}
      ORDER BY id DESC`;
    const rows = this.#run("runs", () => this.#db.prepare(sql).all(...args));
    let out = rows.map((r) => decode(r as Record<string, unknown>));
    if (filter.where) out = out.filter(filter.where);
    return filter.limit !== undefined ? out.slice(0, filter.limit) : out;
  }

  /**
   * What differs between two runs (records or row ids): `config` lists the identity fields that
   * differ (model parts, options, data, seed, protocol, device, code), `results` the metrics.
   */
  compare(
    a: RunRecord | number,
    b: RunRecord | number,
  ): { config: Difference[]; results: Difference[] } {
    const ra = typeof a === "number" ? this.get(a) : a;
    const rb = typeof b === "number" ? this.get(b) : b;
    if (!ra) throw new OptionError("a", `no run with id ${a} in ${this.path}`);
    if (!rb) throw new OptionError("b", `no run with id ${b} in ${this.path}`);
    return {
      config: diff(
        { kind: ra.kind, ...ra.identity },
        { kind: rb.kind, ...rb.identity },
        "",
      ),
      results: diff(ra.metrics, rb.metrics, "metrics"),
    };
  }

  /**
   * Folds another ledger file (a sweep shard) into this one: rows are matched by `uid`, new ones
   * inserted, and a row recorded as running here takes the shard's finished state. Returns the
   * number of rows inserted or updated.
   */
  merge(shardPath: string): number {
    return this.#run("merge", () => {
      const shard = new DatabaseSync(shardPath, { readOnly: true });
      let n = 0;
      try {
        shard.exec("PRAGMA busy_timeout = 30000");
        const rows = shard.prepare("SELECT * FROM runs ORDER BY id").all() as Record<
          string,
          SQLInputValue
        >[];
        const cols = [
          "uid",
          "key",
          "kind",
          "status",
          "label",
          "sweep",
          "task",
          "created_at",
          "finished_at",
          "cacheable",
          "identity",
          "code_digest",
          "git_rev",
          "device",
          "metrics",
          "result",
          "report",
          "seconds",
          "peak_rss_mib",
          "error",
          "host",
          "pid",
        ];
        const upd = cols.filter((c) => c !== "uid").map((c) => `${c} = excluded.${c}`).join(", ");
        const stmt = this.#db.prepare(
          `INSERT INTO runs (${cols.join(", ")}) VALUES (${cols.map(() => "?").join(", ")})
           ON CONFLICT(uid) DO UPDATE SET ${upd}
           WHERE runs.status = 'running' AND excluded.status != 'running'`,
        );
        this.#db.exec("BEGIN IMMEDIATE");
        try {
          for (const r of rows) n += Number(stmt.run(...cols.map((c) => r[c] ?? null)).changes);
          this.#db.exec("COMMIT");
        } catch (e) {
          this.#db.exec("ROLLBACK");
          throw e;
        }
      } finally {
        shard.close();
      }
      return n;
    });
  }

  /** Closes the file. */
  close(): void {
    this.#db.close();
  }
}

function decode(r: Record<string, unknown>): RunRecord {
  return {
    id: Number(r.id),
    uid: String(r.uid),
    key: String(r.key),
    kind: String(r.kind),
    status: r.status as RunStatus,
    label: (r.label as string | null) ?? null,
    sweep: (r.sweep as string | null) ?? null,
    task: r.task === null || r.task === undefined ? null : Number(r.task),
    createdAt: String(r.created_at),
    finishedAt: (r.finished_at as string | null) ?? null,
    cacheable: Number(r.cacheable) === 1,
    identity: parse(r.identity) as RunIdentity,
    gitRev: (r.git_rev as string | null) ?? null,
    device: (r.device as string | null) ?? null,
    metrics: (parse(r.metrics) as Record<string, number> | null) ?? {},
    result: parse(r.result),
    report: parse(r.report),
    seconds: r.seconds === null ? null : Number(r.seconds),
    peakRssMiB: r.peak_rss_mib === null ? null : Number(r.peak_rss_mib),
    error: (r.error as string | null) ?? null,
    host: (r.host as string | null) ?? null,
    pid: r.pid === null ? null : Number(r.pid),
  };
}
