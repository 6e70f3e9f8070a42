/**
 * Perplexity with the GPTQ protocol: join the test split, tokenize once, cut non-overlapping
 * windows of `seqlen` tokens, average the negative log-likelihood over every predicted token of
 * every window, and exponentiate.
 * @module
 */
import { FormatError, OptionError } from "../errors.ts";
import { loadEvalText } from "../io/datasets.ts";
import type { Tokenizer } from "../io/tokenizer.ts";
import { block, embed, forward, type ForwardHooks, head } from "../models/decoder.ts";
import { getTokenizer } from "../models/load.ts";
import { residentFor } from "../models/resident.ts";
import {
  ortForwardGraph,
  ortForwardNext,
  ortForwardSession,
  ortForwardUnsupported,
} from "../models/ort_forward.ts";
import { checkWorkers, OrtForwardPool, type OrtForwardRows } from "../models/ort_pool.ts";
import { getBackend } from "../backend/device.ts";
import type { Model } from "../models/model.ts";
import type { Tensor } from "../tensor.ts";
import { createCache, type KVSpec } from "../quant/kv/cache.ts";

/** Options of `perplexity`. */
export interface PerplexityOptions {
  /** Window length in tokens. Default: 2048 capped at the model's context (tinystories: the context). */
  seqlen?: number;
  /** Use only the first `nsamples` windows (default: all). */
  nsamples?: number;
  /** Windows per forward batch (default 4). */
  batch?: number;
  /** Data root (default `$QUANTLAB_DATA` or `../shared/data`). */
  root?: string;
  /** A user file for the dataset. */
  path?: string;
  /** Progress callback: (windows done, total). */
  onProgress?: (done: number, total: number) => void;
  /** Extra forward hooks (activation or KV quantizers); the model's own hooks apply too. */
  hooks?: ForwardHooks;
  /**
   * On the WebGPU backend, run each window through the GPU-resident decoder
   * (`src/models/resident.ts`: one submission per window, the per-token NLL computed on the GPU
   * in float32 so only `seqlen` floats come back) when the model allows it (default true);
   * false: the host forward in batches of `batch` windows (float64 log-softmax on the CPU).
   */
  resident?: boolean;
  /**
   * A quantized KV cache (`src/quant/kv/`): each window runs batch 1 through a fresh cache of
   * this spec, `kvChunk` tokens per forward (the host forward).
   */
  kv?: KVSpec;
  /**
   * Tokens per forward through the `kv` cache (default 1: every prediction is a decode step that
   * reads the quantized cache). `seqlen` = one prefill per window, the reference's `eval_ppl`
   * protocol: with KIVI and `prefillWithQuant` false it gives the full-precision perplexity.
   */
  kvChunk?: number;
  /**
   * On the CPU backend, run each batch of windows as one onnxruntime session over the whole
   * decoder graph (`src/models/ort_forward.ts`) when the model allows it (default true); false:
   * the TypeScript forward. Models the graph cannot express fall back to the TypeScript forward
   * and say why in the result's `ortFallback`. The graph also returns each row's log-sum-exp
   * (float32) and its next token's logit, so the per-token NLL skips the float64 pass over the
   * vocabulary (on stories260K, 762 windows: ~2 s of ~17 s; the perplexity agrees with the
   * float64 path to ~1e-6 relative) and no logits are copied out of the session.
   */
  ort?: boolean;
  /**
   * Onnxruntime path only: how many Deno Workers run the batches, each with its own session of
   * the graph (`src/models/ort_pool.ts`; onnxruntime-node runs one process's sessions one call at
   * a time, so parallel windows need workers). An integer ≥ 1, else an `OptionError`; 1: the
   * in-process session only. Default ("auto"): `navigator.hardwareConcurrency` capped at the
   * number of batches, and 1 when the run has fewer than {@linkcode POOL_MIN_TOKENS} tokens
   * (128 windows of 512: below that, starting the workers, ~0.2 CPU-s each on stories260K, does
   * not pay for itself) or the float32 graph is larger than {@linkcode POOL_MAX_GRAPH_BYTES}
   * (every worker holds a full copy of the weights; the count is also capped at
   * {@linkcode POOL_MAX_TOTAL_GRAPH_BYTES} of graphs in all). While the workers start, the
   * in-process session takes batches; a worker that cannot start leaves its batches to the others
   * (all of them: to the in-process session), reported in the result's `workersFallback`. The NLL
   * is summed in window order, so the perplexity is the same number whatever the worker count
   * (workers and the in-process session compute the same float32 rows). Workers are terminated
   * before `perplexity` returns, also when it throws.
   */
  workers?: number;
  /**
   * Run the windows block by block instead of window batch by window batch (default false): embed
   * every window, then for each decoder block run it over all windows' hidden states (in batches
   * of `batch`) and drop the cached weights (`Weights.evict`) before the next block, then the
   * final norm and LM head per batch. Peak memory is one block's float32 weights plus the
   * windows' hidden states, so a model streamed from disk (`QuantizeOptions.stream`) or a large
   * checkpoint evaluates in bounded memory. Same TypeScript forward as `ort: false` (the same
   * numbers); not combinable with `kv`.
   */
  layerwise?: boolean;
}

/** Result of `perplexity`. */
export interface PerplexityResult {
  /** Dataset name (or "custom"). */
  dataset: string;
  /** exp(mean NLL). */
  ppl: number;
  /** Mean NLL per predicted token (nats). */
  nll: number;
  /** Tokens of the joined text. */
  tokens: number;
  /** Windows evaluated. */
  windows: number;
  /** Window length. */
  seqlen: number;
  /** Which text was read. */
  source: string;
  /** Wall time. */
  seconds: number;
  /** True when the windows ran through the GPU-resident decoder (WebGPU). */
  resident: boolean;
  /** True when the windows ran through the onnxruntime forward graph (CPU). */
  ort: boolean;
  /** Why the onnxruntime forward graph was not used on the CPU backend (absent when it was). */
  ortFallback?: string;
  /**
   * Onnxruntime path: the pool's workers that started their session (the in-process session may
   * have taken batches too while they started), or 1: the in-process session alone, no pool (also
   * when no worker started: see `workersFallback`); 1 on the other paths.
   */
  workers: number;
  /** Why fewer workers ran than were chosen (a worker could not start); absent otherwise. */
  workersFallback?: string;
}

/**
 * Runs of fewer tokens (windows × seqlen) take the in-process session under `workers` "auto":
 * 128 windows of 512. Measured on stories260K (2 cores, another process running; best of 3,
 * alternating): a pool of 2 workers is ready in ~0.21 s wall for ~0.38 CPU-s (spawn, onnxruntime
 * import, session: ~0.19 CPU-s per worker); with the in-process session taking batches
 * meanwhile, 2 workers against 1 took 0.57 vs 0.49 s at 64 windows, 0.73 vs 0.76 s at 96, 0.82
 * vs 1.01 s at 128. A larger model costs more per window than per worker start, so the
 * threshold errs on the safe side for those.
 */
export const POOL_MIN_TOKENS = 128 * 512;

/** Graphs larger than this run in-process under `workers` "auto" (each worker holds a copy). */
export const POOL_MAX_GRAPH_BYTES = 256 * 2 ** 20;

/**
 * Under `workers` "auto", the workers' graphs together stay within this (the count is capped at
 * ⌊2 GiB / graph bytes⌋: 8 workers for a 256 MiB graph, whatever the core count).
 */
export const POOL_MAX_TOTAL_GRAPH_BYTES = 2 ** 31;

/** How long `perplexity` waits, after its last batch, for pool workers still starting. */
const POOL_START_WAIT_MS = 60_000;

/**
 * The token stream of an evaluation dataset under the GPTQ protocol: `wikitext2` rows joined with
 * "\n\n", `ptb` lines joined with " ", `c4` the first 1,100 validation documents joined with " "
 * (then cut to 256 windows), `tinystories` each story stripped with BOS prepended, concatenated.
 * A tokenizer that adds BOS (Llama, OPT) adds it once at the start of the joined text, as
 * `tokenizer(text)` does in the reference code. The stream is computed once per tokenizer object,
 * dataset, `root` and `path` in a process and cached; each call returns a fresh copy of the ids.
 */
export async function evalTokens(
  tok: Tokenizer,
  dataset: string,
  opts: { root?: string; path?: string } = {},
): Promise<{ ids: number[]; source: string }> {
  // Tokenizing TinyStories' 1,000 validation stories takes ~5 s on a loaded core: the stream is
  // cached per tokenizer object, dataset and file (a fresh copy of the ids each call).
  let byKey = tokenCache.get(tok);
  if (!byKey) tokenCache.set(tok, byKey = new Map());
  const key = JSON.stringify([dataset, opts.root ?? null, opts.path ?? null]);
  let p = byKey.get(key);
  if (!p) {
    const made = tokenizeEvalText(tok, dataset, opts);
    p = made;
    byKey.set(key, made);
    made.catch(() => {
      if (byKey.get(key) === made) byKey.delete(key);
    });
  }
  const r = await p;
  return { ids: r.ids.slice(), source: r.source };
}

const tokenCache = new WeakMap<
  Tokenizer,
  Map<string, Promise<{ ids: number[]; source: string }>>
>();

async function tokenizeEvalText(
  tok: Tokenizer,
  dataset: string,
  opts: { root?: string; path?: string },
): Promise<{ ids: number[]; source: string }> {
  const t = await loadEvalText(dataset, opts);
  if (dataset === "tinystories") {
    const ids: number[] = [];
    for (const d of t.docs ?? []) {
      const e = tok.encode(d.trim(), { addBos: true });
      if (tok.bosId === null || e[0] !== tok.bosId) {
        ids.push(...(tok.bosId === null ? [] : [tok.bosId]));
      }
      for (const x of e) ids.push(x);
    }
    return { ids, source: t.source };
  }
  let text = t.text;
  if (text === undefined && t.docs) {
    text = dataset === "c4" ? t.docs.slice(0, 1100).join(" ") : t.docs.join("\n\n");
  }
  return { ids: tok.encode(text ?? ""), source: t.source };
}

/** Mean NLL of next-token predictions: logits [rows, V] for `ids` rows; counts rows t→t+1 within each window of `T`. */
export function windowNll(
  logits: Tensor,
  ids: number[],
  T: number,
): { sum: number; count: number } {
  const V = logits.shape[1];
  const L = logits.data;
  let sum = 0;
  let count = 0;
  for (let r = 0; r < ids.length; r++) {
    if ((r + 1) % T === 0) continue; // last token of a window predicts nothing
    const o = r * V;
    let mx = -Infinity;
    for (let j = 0; j < V; j++) if (L[o + j] > mx) mx = L[o + j];
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp(L[o + j] - mx);
    sum += Math.log(s) + mx - L[o + ids[r + 1]];
    count++;
  }
  return { sum, count };
}

/**
 * The number of non-overlapping windows of `len` tokens in `n` tokens, at most `cap` and at most
 * `nsamples` (≥ 1, else an OptionError); fewer than one window is an OptionError naming `option`
 * (the window-length option of the caller).
 */
export function windowCount(
  n: number,
  len: number,
  o: { dataset: string; nsamples?: number; cap?: number; option: string },
): number {
  let windows = Math.floor(n / len);
  if (o.cap !== undefined) windows = Math.min(windows, o.cap);
  if (o.nsamples !== undefined) {
    if (!(o.nsamples >= 1)) {
      throw new OptionError("nsamples", `must be ≥ 1, got ${o.nsamples}`);
    }
    windows = Math.min(windows, o.nsamples);
  }
  if (windows < 1) {
    throw new OptionError(
      o.option,
      `${o.dataset} has ${n} tokens, fewer than one window of ${len}`,
    );
  }
  return windows;
}

/** Perplexity of `model` on `dataset` ("wikitext2", "ptb", "c4", "tinystories") with the GPTQ protocol. */
export async function perplexity(
  model: Model,
  dataset: string,
  opts: PerplexityOptions = {},
): Promise<PerplexityResult> {
  const t0 = performance.now();
  const cfg = model.config;
  const seqlen = opts.seqlen ??
    (dataset === "tinystories" ? cfg.maxPositions : Math.min(2048, cfg.maxPositions));
  if (!(seqlen >= 2 && seqlen <= cfg.maxPositions)) {
    throw new OptionError(
      "seqlen",
      `${seqlen} is outside 2..${cfg.maxPositions} (the model's context)`,
    );
  }
  if (opts.workers !== undefined) checkWorkers(opts.workers);
  const tok = await getTokenizer(model);
  const { ids, source } = await evalTokens(tok, dataset, opts);
  const windows = windowCount(ids.length, seqlen, {
    dataset,
    nsamples: opts.nsamples,
    cap: dataset === "c4" ? 256 : undefined,
    option: "seqlen",
  });
  const batch = Math.max(1, opts.batch ?? 4);
  let sum = 0;
  let count = 0;
  const hooks = mergeHooks(model.hooks, opts.hooks);
  const kvChunk = opts.kvChunk ?? 1;
  if (opts.kv && !(Number.isInteger(kvChunk) && kvChunk >= 1)) {
    throw new OptionError("kvChunk", `must be an integer ≥ 1, got ${opts.kvChunk}`);
  }
  if (opts.layerwise) {
    if (opts.kv) throw new OptionError("layerwise", "a quantized KV cache runs token by token");
    const r = await layerwiseNll(model, ids, { windows, seqlen, batch, hooks, opts });
    const nll = r.sum / r.count;
    return {
      dataset,
      ppl: Math.exp(nll),
      nll,
      tokens: ids.length,
      windows,
      seqlen,
      source,
      seconds: (performance.now() - t0) / 1000,
      resident: false,
      ort: false,
      workers: 1,
    };
  }
  const resident = opts.kv ? false : opts.resident;
  const dec = await residentFor(model, { capacity: seqlen, hooks, resident });
  let useOrt = false;
  let ortFallback: string | undefined;
  let pool: OrtForwardPool | undefined;
  let workersFallback: string | undefined;
  let chosenWorkers = 1;
  if (!dec && getBackend().name === "cpu") {
    ortFallback = opts.ort === false
      ? "ort: false"
      : opts.kv
      ? "a quantized KV cache runs through the TypeScript forward"
      : ortForwardUnsupported(model, opts.hooks) ?? undefined;
    if (!ortFallback) {
      try {
        // The graph first, so the workers start while the in-process session is built.
        const bytes = await ortForwardGraph(model);
        const n = opts.workers ??
          autoWorkers(bytes.byteLength, windows * seqlen, Math.ceil(windows / batch));
        chosenWorkers = n;
        if (n > 1) {
          try {
            pool = new OrtForwardPool(bytes, {
              workers: n,
              local: (x, b) => ortForwardNext(model, x, { batch: b }),
            });
          } catch (e) {
            workersFallback = `the worker pool could not start: ${(e as Error).message}`;
          }
        }
        await ortForwardSession(model);
        useOrt = true;
      } catch (e) {
        pool?.close();
        pool = undefined;
        if (e instanceof OptionError || e instanceof FormatError) throw e;
        ortFallback = `the onnxruntime graph could not be built: ${(e as Error).message}`;
      }
    }
  }
  try {
    const step = dec || opts.kv ? 1 : batch;
    // Pooled: every batch queued at once; the rows are read back below in window order.
    const pooled: Promise<OrtForwardRows>[] = [];
    if (useOrt && pool) {
      for (let w = 0; w < windows; w += step) {
        const nb = Math.min(step, windows - w);
        const p = pool.run(ids.slice(w * seqlen, (w + nb) * seqlen), { batch: nb });
        p.catch(() => {}); // read (and thrown) in order below; never unhandled meanwhile
        pooled.push(p);
      }
    }
    for (let w = 0; w < windows; w += step) {
      const nb = Math.min(step, windows - w);
      const chunk = ids.slice(w * seqlen, (w + nb) * seqlen);
      if (dec) {
        // NLL on the GPU: token t predicts chunk[t + 1]; the last token predicts nothing.
        dec.reset();
        const nll = await dec.nll(chunk, [...chunk.slice(1), 0]);
        for (let t = 0; t < seqlen - 1; t++) sum += nll[t];
        count += seqlen - 1;
      } else if (opts.kv) {
        const cache = createCache(cfg, opts.kv, seqlen);
        const V = cfg.vocabSize;
        const data = new Float32Array(seqlen * V);
        try {
          for (let t = 0; t < seqlen; t += kvChunk) {
            const part = chunk.slice(t, Math.min(seqlen, t + kvChunk));
            data.set((await forward(model, part, { cache, hooks })).data, t * V);
          }
        } finally {
          cache.release?.(); // a device copy (KIVI on WebGPU)
        }
        const r = windowNll({ shape: [seqlen, V], data }, chunk, seqlen);
        sum += r.sum;
        count += r.count;
      } else if (useOrt) {
        // The graph's float32 log-sum-exp per row: NLL = lse − logit of the next token.
        // (and the next token's logit, gathered in the graph: no logits leave the session).
        const { lse, next } = pool
          ? await pooled[w / step]
          : await ortForwardNext(model, chunk, { batch: nb });
        for (let r = 0; r < chunk.length; r++) {
          if ((r + 1) % seqlen === 0) continue;
          sum += lse[r] - next[r];
          count++;
        }
      } else {
        const logits = await forward(model, chunk, { batch: nb, hooks });
        const r = windowNll(logits, chunk, seqlen);
        sum += r.sum;
        count += r.count;
      }
      opts.onProgress?.(w + nb, windows);
    }
    if (pool) {
      // Every worker started or failed (only a run shorter than a worker's start waits here), so
      // the count and the failures are final; a worker still starting after a minute is dropped.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<void>((r) => timer = setTimeout(r, POOL_START_WAIT_MS));
      await Promise.race([pool.ready, late]);
      clearTimeout(timer);
      const missing = chosenWorkers - pool.started;
      if (missing > 0) {
        const why = [...new Set(pool.failures)];
        if (pool.failures.length < missing) {
          why.push(
            `${missing - pool.failures.length} still starting after ${POOL_START_WAIT_MS / 1000} s`,
          );
        }
        workersFallback = `${missing} of ${chosenWorkers} workers did not run: ${why.join("; ")}` +
          (pool.started === 0 ? " (the in-process session ran every batch)" : "");
      }
    }
  } finally {
    dec?.release();
    pool?.close();
  }
  const nll = sum / count;
  return {
    dataset,
    ppl: Math.exp(nll),
    nll,
    tokens: ids.length,
    windows,
    seqlen,
    source,
    seconds: (performance.now() - t0) / 1000,
    resident: dec !== undefined,
    ort: useOrt,
    ...(ortFallback !== undefined ? { ortFallback } : {}),
    workers: pool ? Math.max(1, pool.started) : 1,
    ...(workersFallback !== undefined ? { workersFallback } : {}),
  };
}

/**
 * The `workers` "auto" count of the onnxruntime path: `navigator.hardwareConcurrency` capped at
 * the batches and at {@linkcode POOL_MAX_TOTAL_GRAPH_BYTES} of graphs, 1 for short runs and large
 * graphs (see {@linkcode PerplexityOptions.workers}).
 */
function autoWorkers(graphBytes: number, tokens: number, batches: number): number {
  if (graphBytes > POOL_MAX_GRAPH_BYTES || tokens < POOL_MIN_TOKENS) return 1;
  const cores = typeof navigator !== "undefined" ? navigator.hardwareConcurrency ?? 1 : 1;
  const fit = Math.floor(POOL_MAX_TOTAL_GRAPH_BYTES / Math.max(1, graphBytes));
  return Math.max(1, Math.min(cores, batches, fit));
}

/** The block-by-block pass of {@linkcode perplexity} (`layerwise`): NLL sum and token count. */
async function layerwiseNll(
  model: Model,
  ids: number[],
  o: {
    windows: number;
    seqlen: number;
    batch: number;
    hooks?: ForwardHooks;
    opts: PerplexityOptions;
  },
): Promise<{ sum: number; count: number }> {
  const { seqlen, hooks } = o;
  const chunks: number[][] = [];
  for (let w = 0; w < o.windows; w += o.batch) {
    chunks.push(ids.slice(w * seqlen, Math.min(o.windows, w + o.batch) * seqlen));
  }
  const hs: Tensor[] = [];
  for (const c of chunks) hs.push(await embed(model, c, { seqLen: seqlen }));
  model.weights.evict();
  const L = model.config.numLayers;
  for (let i = 0; i < L; i++) {
    for (let c = 0; c < chunks.length; c++) {
      hs[c] = await block(model, i, hs[c], { batch: chunks[c].length / seqlen, hooks });
    }
    model.weights.evict();
    o.opts.onProgress?.(Math.floor((o.windows * (i + 1)) / (L + 1)), o.windows);
  }
  let sum = 0, count = 0;
  for (let c = 0; c < chunks.length; c++) {
    const r = windowNll(await head(model, hs[c], { hooks }), chunks[c], seqlen);
    sum += r.sum;
    count += r.count;
  }
  model.weights.evict();
  o.opts.onProgress?.(o.windows, o.windows);
  return { sum, count };
}

/** Combines two hook sets; the first runs first. */
export function mergeHooks(a?: ForwardHooks, b?: ForwardHooks): ForwardHooks | undefined {
  if (!a) return b;
  if (!b) return a;
  const out: ForwardHooks = {};
  for (const k of ["linearInput", "linearOutput"] as const) {
    const fa = a[k], fb = b[k];
    if (fa && fb) {
      out[k] = async (name: string, x: Tensor) => {
        const y = (await fa(name, x)) ?? x;
        return (await fb(name, y)) ?? y;
      };
    } else out[k] = fa ?? fb;
  }
  const ka = a.attentionKV, kb = b.attentionKV;
  out.attentionKV = ka && kb
    ? async (l, kv) => {
      const r = (await ka(l, kv)) ?? kv;
      return (await kb(l, r)) ?? r;
    }
    : ka ?? kb;
  // One product replacement: the extra hooks' (b) wins over the model's (a).
  out.linearProduct = b.linearProduct ?? a.linearProduct;
  return out;
}
