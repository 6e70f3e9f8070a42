/**
 * A pool of Deno Workers, each holding its own onnxruntime session (one intra-op thread, not
 * spinning) of the same whole-decoder forward graph (`src/io/onnx_forward_graph.ts`), so batches
 * of windows run in parallel. onnxruntime-node runs the `session.run` calls of one process's
 * main thread one after another, even over several sessions, and its intra-op threads scale
 * poorly on this graph (stories260K, 2 cores: 2 threads gave 6.5 s wall for 10.3 CPU-s over the
 * 762 TinyStories windows); one session per worker did the same windows in ~3.5 s with two
 * workers against ~6.7 s with one.
 *
 * The graph bytes are copied once into a `SharedArrayBuffer` that every worker reads;
 * onnxruntime-node takes no shared buffer, so each worker copies it for its session and drops the copy (each
 * session then holds its own weights: memory grows with the worker count). Workers start in the
 * background (spawn, onnxruntime import, session: ~0.19 CPU-s each for stories260K; two are ready
 * in ~0.21 s on 2 cores); requests queue and go to the first idle worker that has its session.
 * An optional in-process runner (`local`) takes queued requests while no worker is ready yet, and
 * all of them when no worker could start; it stops once a worker is ready: a main-thread session
 * that kept taking batches beside two workers (three runners on 2 cores) made 762 windows take
 * ~6.0 s instead of ~3.5 s. A worker's rows (one intra-op thread) have equalled the in-process
 * session's (onnxruntime's default threads) bit for bit in every test and bench run (the
 * perplexity tests check it); results come back per request and the caller decides the order in
 * which it combines them. Under load, when the process gets
 * about one core in all, the pool gains nothing and costs its start and ~10 % more CPU time.
 * {@linkcode OrtForwardPool.close} terminates every worker.
 * @module
 */
import { OptionError, UnsupportedError } from "../errors.ts";

/** Options of the {@linkcode OrtForwardPool} constructor. */
export interface OrtForwardPoolOptions {
  /** Workers to start (an integer ≥ 1). */
  workers: number;
  /**
   * An in-process runner of the same graph (e.g. `ortForwardNext` on the model's cached
   * session): it takes queued requests, one at a time, while no worker has its session yet, and
   * all of them once every worker failed. Its rows must equal the workers' rows.
   */
  local?: (ids: BigInt64Array, batch: number) => Promise<OrtForwardRows>;
}

/** Per row of a request's windows: the graph's float32 `lse` and `next_logit` outputs. */
export interface OrtForwardRows {
  /** Log-sum-exp of each row's logits. */
  lse: Float32Array;
  /** Each row's logit of the next token of its window (token 0 at a window's last row). */
  next: Float32Array;
}

interface Task {
  id: number;
  ids: BigInt64Array;
  batch: number;
  resolve: (r: OrtForwardRows) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  state: "starting" | "ready" | "dead";
  task?: Task;
}

/**
 * Worker-pool runner of a forward graph: the constructor spawns the workers (they build their
 * sessions in the background), {@linkcode OrtForwardPool.run} queues a batch of windows,
 * {@linkcode OrtForwardPool.close} (or `using`) terminates the workers.
 */
export class OrtForwardPool {
  #slots: Slot[] = [];
  #queue: Task[] = [];
  #nextId = 0;
  #closed = false;
  #local?: (ids: BigInt64Array, batch: number) => Promise<OrtForwardRows>;
  #localBusy = false;
  #started = 0;
  #localRuns = 0;
  #failures: string[] = [];
  /**
   * Resolves once every worker has its session or failed (never rejects): then
   * {@linkcode OrtForwardPool.started} and {@linkcode OrtForwardPool.failures} are final.
   */
  readonly ready: Promise<void>;

  /**
   * Spawns `opts.workers` workers over `graph` (the ONNX bytes of `buildForwardGraph`, copied
   * once; the caller may drop them). Throws an `OptionError` naming "workers" for a count that
   * is not an integer ≥ 1.
   */
  constructor(graph: Uint8Array, opts: OrtForwardPoolOptions) {
    checkWorkers(opts.workers);
    this.#local = opts.local;
    const shared = new Uint8Array(new SharedArrayBuffer(graph.byteLength));
    shared.set(graph);
    const url = new URL("./_ort_worker.ts", import.meta.url).href;
    const starts: Promise<void>[] = [];
    for (let i = 0; i < opts.workers; i++) {
      let worker: Worker;
      try {
        worker = new Worker(url, { type: "module" });
      } catch (e) {
        this.#failures.push(`cannot spawn a worker: ${(e as Error).message}`);
        continue;
      }
      const slot: Slot = { worker, state: "starting" };
      this.#slots.push(slot);
      starts.push(
        new Promise<void>((resolve) => {
          worker.onmessage = (e: MessageEvent) => {
            this.#message(slot, e.data);
            if (slot.state !== "starting") resolve();
          };
          worker.onerror = (e: ErrorEvent) => {
            e.preventDefault();
            this.#die(slot, `worker error: ${e.message}`);
            resolve();
          };
        }),
      );
      worker.postMessage({ type: "init", graph: shared });
    }
    this.ready = Promise.all(starts).then(() => {});
    this.#pump(); // no worker could be spawned: the local runner or rejections
  }

  /** Workers that built their session so far (also those that failed later). */
  get started(): number {
    return this.#started;
  }

  /** Requests the `local` runner took. */
  get localRuns(): number {
    return this.#localRuns;
  }

  /** Why workers failed (to start, or later), one entry per failed worker. */
  get failures(): readonly string[] {
    return this.#failures;
  }

  /**
   * The graph's `lse` and `next_logit` rows of `ids` (`opts.batch` windows of equal length,
   * concatenated; default 1) on the first idle worker with a session (or the `local` runner): the
   * same float32 values as `ortForwardNext` on a session of the same graph. Throws an
   * `OptionError` naming "batch" when it does not divide the ids; rejects with an
   * `UnsupportedError` when the pool is closed, or when every worker failed and there is no
   * `local` runner; a request whose worker died is retried on another.
   */
  run(ids: ArrayLike<number>, opts: { batch?: number } = {}): Promise<OrtForwardRows> {
    const batch = opts.batch ?? 1;
    if (!(Number.isInteger(batch) && batch >= 1 && ids.length % batch === 0)) {
      throw new OptionError("batch", `${batch} does not divide ${ids.length} ids into windows`);
    }
    if (this.#closed) return Promise.reject(new UnsupportedError("the pool is closed"));
    const big = new BigInt64Array(ids.length);
    for (let i = 0; i < ids.length; i++) big[i] = BigInt(ids[i]);
    return new Promise<OrtForwardRows>((resolve, reject) => {
      this.#queue.push({ id: this.#nextId++, ids: big, batch, resolve, reject });
      this.#pump();
    });
  }

  /** Terminates every worker; queued and running requests reject. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const err = new UnsupportedError("the pool was closed");
    for (const s of this.#slots) {
      s.worker.terminate();
      s.state = "dead";
      s.task?.reject(err);
      s.task = undefined;
    }
    for (const t of this.#queue.splice(0)) t.reject(err);
  }

  /** {@linkcode OrtForwardPool.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #pump(): void {
    if (this.#closed) return;
    for (const s of this.#slots) {
      if (this.#queue.length === 0) return;
      if (s.state !== "ready" || s.task) continue;
      const t = this.#queue.shift()!;
      s.task = t;
      // The ids are copied for the worker (not transferred) so a retry still has them.
      s.worker.postMessage({ type: "run", id: t.id, ids: t.ids, batch: t.batch });
    }
    if (this.#queue.length === 0) return;
    if (this.#slots.some((s) => s.state === "ready")) return;
    if (this.#local) {
      if (!this.#localBusy) this.#runLocal(this.#local, this.#queue.shift()!);
    } else if (this.#slots.every((s) => s.state === "dead")) {
      const err = new UnsupportedError(
        `no onnxruntime worker is running: ${[...new Set(this.#failures)].join("; ")}`,
      );
      for (const t of this.#queue.splice(0)) t.reject(err);
    }
  }

  #runLocal(
    local: (ids: BigInt64Array, batch: number) => Promise<OrtForwardRows>,
    t: Task,
  ): void {
    this.#localBusy = true;
    this.#localRuns++;
    local(t.ids, t.batch).then(t.resolve, t.reject).finally(() => {
      this.#localBusy = false;
      this.#pump();
    });
  }

  #message(
    s: Slot,
    m: { type: string; id?: number; lse?: Float32Array; next?: Float32Array; message?: string },
  ): void {
    if (s.state === "dead") return;
    if (s.state === "starting") {
      if (m.type === "ready") {
        s.state = "ready";
        this.#started++;
        this.#pump();
      } else this.#die(s, String(m.message ?? `unexpected message ${m.type}`));
      return;
    }
    const t = s.task;
    if (!t || t.id !== m.id) return;
    s.task = undefined;
    if (m.type === "result") t.resolve({ lse: m.lse!, next: m.next! });
    else t.reject(new UnsupportedError(`onnxruntime worker: ${m.message}`));
    this.#pump();
  }

  #die(s: Slot, why: string): void {
    if (s.state === "dead") return;
    s.state = "dead";
    s.worker.terminate();
    this.#failures.push(why);
    if (s.task) this.#queue.unshift(s.task); // retried on another worker
    s.task = undefined;
    this.#pump();
  }
}

/** Throws an `OptionError` naming "workers" unless `n` is an integer ≥ 1. */
export function checkWorkers(n: number): void {
  if (!(Number.isInteger(n) && n >= 1)) {
    throw new OptionError("workers", `must be an integer ≥ 1, got ${n}`);
  }
}
