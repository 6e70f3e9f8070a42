/**
 * The log-likelihood engine of the task evaluators, following lm-evaluation-harness's `HFLM`:
 *
 * - **Split at the target delimiter.** Trailing whitespace of the context moves to the front of
 *   the continuation; `contextIds = tok(context)`, `continuationIds = tok(context +
 *   continuation)[len(contextIds):]`, so the continuation's tokens are the ones the whole string
 *   tokenizes to (merges across the boundary stay in the continuation).
 * - **BOS.** `addBos` unset means the tokenizer's own default: tokenizers with a BOS (Llama's
 *   SentencePiece, llama2.c's, OPT's `</s>`) add it to both the context and the whole string, so
 *   the split above keeps it in the context; GPT-2 adds none. An empty context becomes the
 *   prefix token alone (BOS, else EOS, as lm-eval's `prefix_token_id`) and the continuation is
 *   then tokenized without BOS.
 * - **Truncation.** The model input is `(contextIds + continuationIds)` cut to its last
 *   `maxLength + 1` tokens, minus the final token; the continuation is scored on the last
 *   `len(continuationIds)` logit rows. When the continuation alone is longer than `maxLength`
 *   (lm-eval asserts there; some PIQA solutions exceed a 512-token context in a 512-piece
 *   vocabulary), only its last `maxLength` tokens are scored and the result says `truncated`.
 * - **Shared prefixes.** With `reuse` (default), requests of one group (one document's choices)
 *   run their longest common input prefix once into a KV cache; each request then forwards only
 *   its own remainder from that cache. Logits equal a full forward's up to float32 rounding
 *   (the attention may take a different kernel for a different row count; measured ≤ 3e-5 nats
 *   per request on stories260K). Left-truncated requests share a prefix only when their windows
 *   still start alike.
 * - Scores: the sum of float64 log-softmax values of the continuation tokens, and `isGreedy`
 *   (every continuation token is its row's argmax, lm-eval's `max_equal`).
 * - **Engines.** On the CPU backend, for a model without forward hooks or quantization points
 *   (FP or fake-quant weights), the context passes run through the onnxruntime whole-model graph
 *   that perplexity uses (`models/ort_forward.ts`): requests are deduplicated (a request whose
 *   model input is a prefix of another request's of the same group reads its rows from that
 *   pass, so MMLU's four one-token letters cost one pass), sorted by length and run in
 *   right-padded batches (causal attention: the padding never reaches a sequence's own rows).
 *   The graph has no KV cache, so `reuse` means this deduplication there. Everything else
 *   (hooks, activation / KV quantization, WebGPU, `ort: false`) takes the TypeScript forward
 *   above, which stays the reference; both score rows with the same float64 log-softmax and
 *   agree to float32 rounding (tests: ≤ 1e-4 nats per request). {@linkcode loglikelihoodEngine}
 *   says which one runs and why.
 * @module
 */
import { FormatError, OptionError } from "../errors.ts";
import { getBackend } from "../backend/device.ts";
import type { Tokenizer } from "../io/tokenizer.ts";
import { createKVCache, forward, type ForwardHooks } from "../models/decoder.ts";
import type { Model } from "../models/model.ts";
import { ortForward, ortForwardSession, ortForwardUnsupported } from "../models/ort_forward.ts";
import { mergeHooks } from "./perplexity.ts";

/** One (context, continuation) pair to score. */
export interface LoglikelihoodRequest {
  /** Context text (prompt). */
  context: string;
  /** Continuation text whose log-probability is wanted. */
  continuation: string;
  /** Requests with the same group (e.g. one document's choices) share a prefix pass. */
  group?: number;
}

/** Token ids of a request after lm-eval's split. */
export interface EncodedPair {
  /** Context tokens (with BOS when the tokenizer adds one). */
  context: number[];
  /** Continuation tokens. */
  continuation: number[];
}

/** The score of one request. */
export interface LoglikelihoodResult {
  /** Sum of the continuation tokens' log-probabilities (nats). */
  logprob: number;
  /** True when every continuation token is the argmax of its row. */
  isGreedy: boolean;
  /** Continuation tokens scored. */
  tokens: number;
  /** True when the continuation alone exceeded `maxLength` and its head was not scored. */
  truncated: boolean;
}

/** Options of {@linkcode loglikelihood}. */
export interface LoglikelihoodOptions {
  /** Longest model input (default: the model's context, `config.maxPositions`). */
  maxLength?: number;
  /** Share each group's common prefix through the KV cache (default true). */
  reuse?: boolean;
  /**
   * Sequences per forward batch, right-padded: the TypeScript forward batches only without
   * `reuse` (default 8); onnxruntime always batches (default: 4096 tokens' worth).
   */
  batch?: number;
  /** Prepend BOS (default: the tokenizer's own default). */
  addBos?: boolean;
  /** Extra forward hooks (activation / KV quantizers); the model's own hooks apply too. */
  hooks?: ForwardHooks;
  /** Progress: (requests done, total). */
  onProgress?: (done: number, total: number) => void;
  /**
   * Use the onnxruntime forward graph where it applies (default true; see the module doc).
   * False forces the TypeScript forward.
   */
  ort?: boolean;
}

/** Which forward {@linkcode loglikelihoodTokens} runs, and why not onnxruntime. */
export interface LoglikelihoodEngine {
  /** "onnxruntime" (the whole-model graph) or "typescript" (`models/decoder.ts`). */
  engine: "onnxruntime" | "typescript";
  /** Why the graph is not used (absent when it is). */
  fallback?: string;
}

/**
 * The forward {@linkcode loglikelihoodTokens} uses for `model` under `opts`: the onnxruntime
 * graph on the CPU backend for models without hooks or quantization points, else the
 * TypeScript forward with the reason. Builds (and caches on the model) the graph's session.
 */
export async function loglikelihoodEngine(
  model: Model,
  opts: { ort?: boolean; hooks?: ForwardHooks } = {},
): Promise<LoglikelihoodEngine> {
  const ts = (fallback: string): LoglikelihoodEngine => ({ engine: "typescript", fallback });
  if (opts.ort === false) return ts("ort: false");
  const be = getBackend().name;
  if (be !== "cpu") return ts(`the ${be} backend runs the TypeScript forward`);
  const why = ortForwardUnsupported(model, opts.hooks);
  if (why) return ts(why);
  try {
    await ortForwardSession(model);
  } catch (e) {
    if (e instanceof OptionError || e instanceof FormatError) throw e;
    return ts(`the onnxruntime graph could not be built: ${(e as Error).message}`);
  }
  return { engine: "onnxruntime" };
}

/**
 * The last context {@linkcode encodePair} tokenized, so consecutive requests with one context
 * (a document's choices) tokenize it once. Start with `{}`.
 */
export interface EncodeMemo {
  /** Context text (after trailing whitespace moved to the continuation). */
  text?: string;
  /** The BOS flag it was tokenized with. */
  addBos?: boolean;
  /** Its token ids. */
  ids?: number[];
}

/**
 * lm-eval's `_encode_pair`: context/continuation token ids of a request (see the module doc for
 * the rule). Throws {@linkcode OptionError} for an empty continuation.
 */
export function encodePair(
  tok: Tokenizer,
  context: string,
  continuation: string,
  opts: { addBos?: boolean; memo?: EncodeMemo } = {},
): EncodedPair {
  if (continuation.length === 0) {
    throw new OptionError("continuation", "is empty (nothing to score)");
  }
  const addBos = opts.addBos ?? true;
  if (context === "") {
    const prefix = tok.bosId ?? tok.eosId;
    if (prefix === null) {
      throw new OptionError("context", `is empty and tokenizer ${tok.name} has no BOS/EOS`);
    }
    return { context: [prefix], continuation: tok.encode(continuation, { addBos: false }) };
  }
  const n = context.length - context.trimEnd().length;
  if (n > 0) {
    continuation = context.slice(context.length - n) + continuation;
    context = context.slice(0, context.length - n);
  }
  const whole = tok.encode(context + continuation, { addBos });
  const memo = opts.memo;
  let ctx: number[];
  if (memo?.ids && memo.text === context && memo.addBos === addBos) ctx = memo.ids;
  else {
    ctx = tok.encode(context, { addBos });
    if (memo) Object.assign(memo, { text: context, addBos, ids: ctx });
  }
  return { context: ctx, continuation: whole.slice(ctx.length) };
}

/** Scores `targets` against logit rows `L[row0 ..]` (row r predicts targets[r − row0]). */
function scoreRows(
  L: Float32Array,
  V: number,
  row0: number,
  targets: number[],
): { logprob: number; isGreedy: boolean } {
  let logprob = 0;
  let isGreedy = true;
  for (let i = 0; i < targets.length; i++) {
    const o = (row0 + i) * V;
    let mx = -Infinity, arg = 0;
    for (let j = 0; j < V; j++) {
      if (L[o + j] > mx) {
        mx = L[o + j];
        arg = j;
      }
    }
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp(L[o + j] - mx);
    logprob += L[o + targets[i]] - mx - Math.log(s);
    if (arg !== targets[i]) isGreedy = false;
  }
  return { logprob, isGreedy };
}

interface Prepared {
  input: number[];
  targets: number[];
  truncated: boolean;
}

/** lm-eval's model input for a pair: last maxLength + 1 tokens minus the final one. */
export function modelInput(
  pair: EncodedPair,
  maxLength: number,
): { input: number[]; targets: number[]; truncated: boolean } {
  const all = [...pair.context, ...pair.continuation];
  const win = all.slice(Math.max(0, all.length - (maxLength + 1)));
  const input = win.slice(0, -1);
  const n = Math.min(pair.continuation.length, input.length);
  return {
    input,
    targets: pair.continuation.slice(pair.continuation.length - n),
    truncated: n < pair.continuation.length,
  };
}

/**
 * Log-likelihoods of token-level requests (pairs already split, e.g. by
 * {@linkcode encodePair}); `groups[i]` groups requests sharing a prefix (default: each alone).
 */
export async function loglikelihoodTokens(
  model: Model,
  pairs: EncodedPair[],
  opts: LoglikelihoodOptions & { groups?: number[] } = {},
): Promise<LoglikelihoodResult[]> {
  const cfg = model.config;
  const maxLength = opts.maxLength ?? cfg.maxPositions;
  if (!(Number.isInteger(maxLength) && maxLength >= 1 && maxLength <= cfg.maxPositions)) {
    throw new OptionError("maxLength", `${maxLength} is outside 1..${cfg.maxPositions}`);
  }
  const batch = opts.batch ?? 8;
  if (!(Number.isInteger(batch) && batch >= 1)) {
    throw new OptionError("batch", `must be an integer ≥ 1, got ${batch}`);
  }
  const V = cfg.vocabSize;
  const hooks = mergeHooks(model.hooks, opts.hooks);
  const prep: Prepared[] = pairs.map((p, i) => {
    if (p.continuation.length === 0) {
      throw new OptionError("continuation", `request ${i} has no continuation tokens`);
    }
    if (p.context.length === 0) {
      throw new OptionError(
        "context",
        `request ${i} has no context tokens (give the prefix token)`,
      );
    }
    return modelInput(p, maxLength);
  });
  const out: LoglikelihoodResult[] = new Array(pairs.length);
  const result = (i: number, L: Float32Array, row0: number) => {
    const s = scoreRows(L, V, row0, prep[i].targets);
    out[i] = { ...s, tokens: prep[i].targets.length, truncated: prep[i].truncated };
  };
  let done = 0;
  const tick = (n: number) => {
    done += n;
    opts.onProgress?.(done, pairs.length);
  };
  const engine = await loglikelihoodEngine(model, { ort: opts.ort, hooks });
  if (engine.engine === "onnxruntime") {
    await ortScore(model, prep, {
      groups: opts.reuse ?? true ? opts.groups ?? pairs.map((_, i) => i) : undefined,
      batch: opts.batch,
      result,
      tick,
    });
  } else if (opts.reuse ?? true) {
    // Consecutive requests with the same group id share one prefix pass.
    const groups = opts.groups ?? pairs.map((_, i) => i);
    // One cache for every group: each pass overwrites it from position 0 (or from the prefix).
    const cache = createKVCache(cfg, maxLength);
    for (let a = 0; a < pairs.length;) {
      let b = a + 1;
      while (b < pairs.length && groups[b] === groups[a]) b++;
      const idx = Array.from({ length: b - a }, (_, k) => a + k);
      let p = prep[a].input.length;
      for (const i of idx) {
        const x = prep[i].input;
        p = Math.min(p, x.length);
        for (let t = 0; t < p; t++) {
          if (x[t] !== prep[a].input[t]) {
            p = t;
            break;
          }
        }
      }
      if (idx.length === 1) p = 0;
      cache.length = 0;
      const P = p > 0
        ? (await forward(model, prep[a].input.slice(0, p), { cache, hooks })).data
        : undefined;
      for (const i of idx) {
        const { input, targets } = prep[i];
        const rest = input.slice(p);
        cache.length = p;
        const R = rest.length ? (await forward(model, rest, { cache, hooks })).data : undefined;
        // Rows of the whole input are P's p rows then R's; the targets sit on the last rows.
        const row0 = input.length - targets.length;
        if (!R) result(i, P!, row0);
        else if (!P || row0 >= p) result(i, R, row0 - p);
        else result(i, concatRows(P, R, row0, V, p), 0);
      }
      tick(idx.length);
      a = b;
    }
  } else {
    // No reuse: every request forwarded whole, in right-padded batches of similar length
    // (causal attention: the padding after a sequence never reaches its rows).
    const order = prep.map((_, i) => i).sort((x, y) => prep[y].input.length - prep[x].input.length);
    for (let s = 0; s < order.length; s += batch) {
      const ids = order.slice(s, s + batch);
      const T = prep[ids[0]].input.length;
      const flat: number[] = [];
      for (const i of ids) {
        const x = prep[i].input;
        flat.push(...x);
        for (let t = x.length; t < T; t++) flat.push(x[x.length - 1]);
      }
      const L = (await forward(model, flat, { batch: ids.length, hooks })).data;
      ids.forEach((i, b) => {
        const row0 = prep[i].input.length - prep[i].targets.length;
        result(i, L.subarray(b * T * V, (b + 1) * T * V), row0);
      });
      tick(ids.length);
    }
  }
  return out;
}

/** Logit floats one onnxruntime run may return (256 MiB): bounds the batch for large vocabularies. */
const ORT_MAX_LOGITS = 2 ** 26;
/** Tokens per onnxruntime run when `batch` is not given. */
const ORT_TOKENS = 4096;

/**
 * The onnxruntime engine: one pass per distinct model input (requests of a group whose input is
 * a prefix of another's read that pass's rows), longest first, in right-padded batches.
 */
async function ortScore(
  model: Model,
  prep: Prepared[],
  o: {
    groups?: number[];
    batch?: number;
    result: (i: number, L: Float32Array, row0: number) => void;
    tick: (n: number) => void;
  },
): Promise<void> {
  const V = model.config.vocabSize;
  // runs[r] = the input of pass r; users[r] = requests scored on it.
  const runs: number[][] = [];
  const users: number[][] = [];
  const isPrefix = (a: number[], b: number[]) => {
    if (a.length > b.length) return false;
    for (let t = 0; t < a.length; t++) if (a[t] !== b[t]) return false;
    return true;
  };
  for (let a = 0; a < prep.length;) {
    let b = a + 1;
    if (o.groups) { while (b < prep.length && o.groups[b] === o.groups[a]) b++; }
    const idx = Array.from({ length: b - a }, (_, k) => a + k)
      .sort((x, y) => prep[y].input.length - prep[x].input.length);
    const mine: number[] = [];
    for (const i of idx) {
      const r = mine.find((r) => isPrefix(prep[i].input, runs[r]));
      if (r !== undefined) users[r].push(i);
      else {
        mine.push(runs.length);
        runs.push(prep[i].input);
        users.push([i]);
      }
    }
    a = b;
  }
  const order = runs.map((_, r) => r).sort((x, y) => runs[y].length - runs[x].length);
  for (let s = 0; s < order.length;) {
    const T = runs[order[s]].length;
    const want = o.batch ?? Math.max(1, Math.floor(ORT_TOKENS / T));
    const nb = Math.min(want, Math.max(1, Math.floor(ORT_MAX_LOGITS / (T * V))), order.length - s);
    const ids = order.slice(s, s + nb);
    const flat = new Array<number>(nb * T);
    ids.forEach((r, k) => {
      const x = runs[r];
      for (let t = 0; t < T; t++) flat[k * T + t] = x[Math.min(t, x.length - 1)];
    });
    const L = (await ortForward(model, flat, { batch: nb })).data;
    let n = 0;
    ids.forEach((r, k) => {
      const rows = L.subarray(k * T * V, (k + 1) * T * V);
      for (const i of users[r]) {
        o.result(i, rows, prep[i].input.length - prep[i].targets.length);
        n++;
      }
    });
    o.tick(n);
    s += nb;
  }
}

/** Rows [from, p) of P followed by all rows of R. */
function concatRows(P: Float32Array, R: Float32Array, from: number, V: number, p: number) {
  const L = new Float32Array((p - from) * V + R.length);
  L.set(P.subarray(from * V, p * V));
  L.set(R, (p - from) * V);
  return L;
}

/**
 * Log-likelihoods of text requests with lm-eval's tokenization (see the module doc). Requests
 * with the same `group` next to each other share their common prefix when `reuse` is on.
 */
export async function loglikelihood(
  model: Model,
  requests: LoglikelihoodRequest[],
  opts: LoglikelihoodOptions & { tokenizer: Tokenizer },
): Promise<LoglikelihoodResult[]> {
  const tok = opts.tokenizer;
  const memo: EncodeMemo = {};
  const pairs = requests.map((r) =>
    encodePair(tok, r.context, r.continuation, { addBos: opts.addBos, memo })
  );
  const groups = requests.map((r, i) => r.group ?? -1 - i);
  return await loglikelihoodTokens(model, pairs, { ...opts, groups });
}

/** Options of {@linkcode greedyUntil}. */
export interface GreedyUntilOptions {
  /** Stop strings: the output is cut before the first one (lm-eval's `until`). */
  until: string[];
  /** New tokens at most (lm-eval's `max_gen_toks`, default 256). */
  maxGenToks?: number;
  /** Longest model input (default: the model's context). */
  maxLength?: number;
  /** Prepend BOS (default: the tokenizer's own default). */
  addBos?: boolean;
  /** Extra forward hooks. */
  hooks?: ForwardHooks;
  /** The tokenizer. */
  tokenizer: Tokenizer;
}

/**
 * lm-eval's `generate_until` with greedy decoding: the context is tokenized, cut to its last
 * `maxLength − maxGenToks` tokens, and decoded greedily with the KV cache until EOS, a stop
 * string, `maxGenToks` tokens or the context end; the text is cut before the first stop string.
 */
export async function greedyUntil(
  model: Model,
  context: string,
  opts: GreedyUntilOptions,
): Promise<{ text: string; tokens: number; promptTokens: number }> {
  const tok = opts.tokenizer;
  const maxGen = opts.maxGenToks ?? 256;
  const maxLength = opts.maxLength ?? model.config.maxPositions;
  if (!(maxGen >= 1 && maxGen < maxLength)) {
    throw new OptionError("maxGenToks", `${maxGen} is outside 1..${maxLength - 1} (maxLength − 1)`);
  }
  let ids = tok.encode(context, { addBos: opts.addBos ?? true });
  ids = ids.slice(Math.max(0, ids.length - (maxLength - maxGen)));
  const hooks = mergeHooks(model.hooks, opts.hooks);
  const V = model.config.vocabSize;
  const cache = createKVCache(
    model.config,
    Math.min(model.config.maxPositions, ids.length + maxGen),
  );
  let L = (await forward(model, ids, { cache, hooks })).data;
  let last = L.subarray(L.length - V);
  const gen: number[] = [];
  let text = "";
  const cut = (s: string) => {
    let k = s.length;
    for (const u of opts.until) {
      const j = u ? s.indexOf(u) : -1;
      if (j >= 0 && j < k) k = j;
    }
    return k;
  };
  for (;;) {
    let arg = 0;
    for (let j = 1; j < V; j++) if (last[j] > last[arg]) arg = j;
    if (arg === tok.eosId) break;
    gen.push(arg);
    text = tok.decode(gen);
    if (cut(text) < text.length) break;
    if (gen.length >= maxGen || cache.length >= cache.capacity) break;
    L = (await forward(model, [arg], { cache, hooks })).data;
    last = L;
  }
  return { text: text.slice(0, cut(text)), tokens: gen.length, promptTokens: ids.length };
}
