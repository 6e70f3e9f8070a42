/**
 * The whole decoder forward as one onnxruntime session (CPU): the model's current weights (for a
 * quantized model, its fake-quant weights) go into an in-memory ONNX graph
 * (`src/io/onnx_forward_graph.ts`), built once per model and cached on it, and a batch of windows
 * is one `session.run` instead of hundreds of JS-driven products and elementwise loops. The
 * TypeScript forward (`decoder.ts`) stays the reference; callers fall back to it, visibly, for
 * what the graph cannot express ({@linkcode ortForwardUnsupported}).
 * @module
 */
import { FormatError } from "../errors.ts";
import { loadOrt } from "../backend/cpu.ts";
import { buildForwardGraph, forwardGraphUnsupported } from "../io/onnx_forward_graph.ts";
import type { Tensor } from "../tensor.ts";
import type { Model } from "./model.ts";

// deno-lint-ignore no-explicit-any
type Session = any;

interface Entry {
  /** The weights object and its override tensors when the entry was made. */
  weights: unknown;
  overrides: Tensor[];
  /** The graph bytes, kept while at most {@linkcode KEEP_GRAPH_BYTES}. */
  bytes?: Promise<Uint8Array>;
  session?: Promise<Session>;
}

const sessions = new WeakMap<Model, Entry>();

/**
 * Graphs up to this size stay cached beside the session (a worker pool, `ort_pool.ts`, sends them
 * to its workers on every evaluation); larger ones are rebuilt when asked for, so a large model
 * does not hold a second copy of its weights for its lifetime.
 */
const KEEP_GRAPH_BYTES = 64 * 2 ** 20;

/** `model`'s cache entry, a fresh one when its weights or override tensors changed. */
function entryOf(model: Model): Entry {
  const overrides = overridesOf(model);
  const have = sessions.get(model);
  if (have && have.weights === model.weights && same(have.overrides, overrides)) return have;
  const e: Entry = { weights: model.weights, overrides };
  sessions.set(model, e);
  return e;
}

/** Protobuf's 2 GiB message limit, less room for the graph itself. */
const MAX_GRAPH_BYTES = 2 ** 31 - 2 ** 24;

/**
 * Why `model` cannot run through the onnxruntime forward graph, or null when it can: the graph
 * holds bias-free SiLU Llama blocks with float MatMuls only, so models with forward hooks
 * (`model.hooks`, `extraHooks`) or activation / KV quantization points (`model.points`) — work
 * done between the products — take the TypeScript forward, and so do models whose float32
 * weights do not fit one in-memory ModelProto (2 GiB).
 */
export function ortForwardUnsupported(model: Model, extraHooks?: unknown): string | null {
  const why = forwardGraphUnsupported(model.config);
  if (why) return why;
  if (model.hooks) return "the model has forward hooks";
  if (extraHooks) return "forward hooks were passed";
  if (model.points && Object.keys(model.points).length > 0) {
    return "the model has quantization points";
  }
  const c = model.config;
  const D = c.hiddenSize, hd = c.headDim;
  const heads = model.weights.has("lm_head.weight") ? 2 : 1;
  const params = heads * c.vocabSize * D + D + c.numLayers *
      (2 * D + D * (c.numHeads + 2 * c.numKvHeads) * hd + c.numHeads * hd * D +
        3 * D * c.intermediateSize);
  if (params * 4 > MAX_GRAPH_BYTES) {
    return `its ${(params * 4 / 2 ** 30).toFixed(1)} GiB of float32 weights exceed an in-memory ` +
      "graph's 2 GiB protobuf limit";
  }
  return null;
}

function overridesOf(model: Model): Tensor[] {
  return [...model.weights.overrides().values()];
}

function same(a: Tensor[], b: Tensor[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}

/** Drops `model`'s cached session and graph (call after changing a weight tensor in place). */
export function invalidateOrtForward(model: Model): void {
  sessions.delete(model);
}

/**
 * The ONNX bytes of `model`'s whole-decoder forward graph with its current weights (for a
 * quantized model, its fake-quant weights): what {@linkcode ortForwardSession} and an
 * `OrtForwardPool` (`ort_pool.ts`) run. Checks each tensor's size against the config
 * (`FormatError`). Without `opts.chunks` the bytes are cached beside the session (same
 * invalidation) while they are at most 64 MiB: callers must not modify them. `opts.chunks`: the
 * graph's query blocks (`buildForwardGraph`, default 8), built anew on each call.
 */
export function ortForwardGraph(
  model: Model,
  opts: { chunks?: number } = {},
): Promise<Uint8Array> {
  if (opts.chunks !== undefined) return buildGraph(model, opts.chunks);
  const e = entryOf(model);
  if (e.bytes) return e.bytes;
  const bytes = buildGraph(model);
  e.bytes = bytes;
  bytes.then(
    (b) => {
      if (b.byteLength > KEEP_GRAPH_BYTES && e.bytes === bytes) e.bytes = undefined;
    },
    () => {
      if (e.bytes === bytes) e.bytes = undefined;
    },
  );
  return bytes;
}

async function buildGraph(model: Model, chunks?: number): Promise<Uint8Array> {
  const cfg = model.config;
  const expect = (name: string): number[] => {
    const l = name.match(/^model\.layers\.\d+\.(.+)\.weight$/)?.[1];
    const D = cfg.hiddenSize, hd = cfg.headDim, I = cfg.intermediateSize;
    if (name === "model.embed_tokens.weight" || name === "lm_head.weight") {
      return [cfg.vocabSize, D];
    }
    switch (l) {
      case "self_attn.q_proj":
        return [cfg.numHeads * hd, D];
      case "self_attn.k_proj":
      case "self_attn.v_proj":
        return [cfg.numKvHeads * hd, D];
      case "self_attn.o_proj":
        return [D, cfg.numHeads * hd];
      case "mlp.gate_proj":
      case "mlp.up_proj":
        return [I, D];
      case "mlp.down_proj":
        return [D, I];
    }
    return [D]; // norms
  };
  const get = async (name: string): Promise<Tensor> => {
    if (!model.weights.has(name)) {
      throw new FormatError(model.source, `tensor "${name}" is missing`);
    }
    const t = await model.weights.get(name);
    const shape = expect(name);
    if (t.data.length !== shape.reduce((a, b) => a * b, 1)) {
      throw new FormatError(
        model.source,
        `tensor "${name}" has shape [${t.shape}], config implies [${shape}]`,
      );
    }
    return t;
  };
  return await buildForwardGraph(cfg, get, {
    hasHead: model.weights.has("lm_head.weight"),
    ...(chunks !== undefined ? { chunks } : {}),
  });
}

/**
 * The cached session of `model`'s forward graph, built on first use and rebuilt when the model's
 * weights object or its override tensors changed since.
 */
export function ortForwardSession(model: Model): Promise<Session> {
  const e = entryOf(model);
  if (e.session) return e.session;
  const session = (async () => {
    const bytes = await ortForwardGraph(model);
    const ort = await loadOrt();
    // Intra-op threads: onnxruntime's default (one per physical core), not spinning between ops:
    // on 2 cores shared with other processes, spinning workers doubled the CPU time per window
    // (stories260K, 4 × 512 tokens: ~20 ms with spinning vs ~11 ms without, best of 10).
    return await ort.InferenceSession.create(bytes, {
      graphOptimizationLevel: "all",
      executionMode: "sequential",
      extra: { session: { intra_op: { allow_spinning: "0" } } },
    });
  })();
  e.session = session;
  session.catch(() => {
    if (e.session === session) e.session = undefined;
  });
  return session;
}

/**
 * Logits [rows, vocab] of `ids` (`opts.batch` sequences of equal length, concatenated, each at
 * positions 0..length−1) through `model`'s onnxruntime forward graph: the same rows as
 * `forward(model, ids, { batch })` without cache or hooks.
 */
export async function ortForward(
  model: Model,
  ids: number[],
  opts: { batch?: number } = {},
): Promise<Tensor> {
  return (await ortForwardLse(model, ids, opts)).logits;
}

/**
 * {@linkcode ortForward}'s logits and, per row, their log-sum-exp computed in the graph
 * (float32, onnxruntime's `ReduceLogSumExp`): a row's NLL of token t is `lse − logits[t]`.
 */
export async function ortForwardLse(
  model: Model,
  ids: number[],
  opts: { batch?: number } = {},
): Promise<{ logits: Tensor; lse: Float32Array }> {
  const batch = opts.batch ?? 1;
  const T = ids.length / batch;
  const session = await ortForwardSession(model);
  const ort = await loadOrt();
  const input = new ort.Tensor("int64", BigInt64Array.from(ids, (v) => BigInt(v)), [batch, T]);
  const out = await session.run({ input_ids: input }, ["logits", "lse"]);
  const V = model.config.vocabSize;
  return {
    logits: { shape: [ids.length, V], data: out.logits.data as Float32Array },
    lse: out.lse.data as Float32Array,
  };
}

/**
 * Per row of `ids` (`opts.batch` sequences of equal length, concatenated) through `model`'s
 * onnxruntime forward graph: the float32 log-sum-exp of its logits and its logit of the next
 * token of the same sequence (token 0 at a sequence's last row), both computed in the graph, so
 * only two floats per token leave the session: a row's NLL of its next token is
 * `lse − next`, the same float32 values {@linkcode ortForwardLse} returns. `ids` may be int64
 * already (a `BigInt64Array`, used as is).
 */
export async function ortForwardNext(
  model: Model,
  ids: number[] | BigInt64Array,
  opts: { batch?: number } = {},
): Promise<{ lse: Float32Array; next: Float32Array }> {
  const batch = opts.batch ?? 1;
  const session = await ortForwardSession(model);
  const ort = await loadOrt();
  const big = ids instanceof BigInt64Array ? ids : BigInt64Array.from(ids, (v) => BigInt(v));
  const input = new ort.Tensor("int64", big, [batch, ids.length / batch]);
  const out = await session.run({ input_ids: input }, ["lse", "next_logit"]);
  return { lse: out.lse.data as Float32Array, next: out.next_logit.data as Float32Array };
}
