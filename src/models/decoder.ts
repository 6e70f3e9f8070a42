/**
 * One decoder forward for every family (Llama/Mistral/Qwen2 and OPT): embeddings, blocks with a KV
 * cache and hooks, final norm and LM head. Rows are tokens: a batch of `batch` sequences of
 * `seqLen` tokens is a [batch·seqLen, hidden] tensor; attention never crosses sequences.
 * Linear products go through the active backend; elementwise work is TypeScript.
 * @module
 */
import type { Tensor } from "../tensor.ts";
import type { Backend } from "../backend/backend.ts";
import type { ModelConfig } from "./config.ts";
import type { Model } from "./model.ts";
import { QuantlabError } from "../errors.ts";
import { getBackend } from "../backend/device.ts";
import { erfFit, fakeQuant, int8Operands, type QuantSpec } from "../backend/ops.ts";
import { checkPoints, linearSpec, type ProductSpec, type QuantPoints } from "./points.ts";
import { familyOf } from "./family.ts";

/** Forward hooks. Each may return a replacement tensor (activation or KV-cache quantizers). */
export interface ForwardHooks {
  /** Input rows of linear `name` (e.g. "model.layers.0.self_attn.q_proj") before the product. */
  linearInput?: (name: string, x: Tensor) => void | Tensor | Promise<void | Tensor>;
  /** Output rows of linear `name` after bias. */
  linearOutput?: (name: string, y: Tensor) => void | Tensor | Promise<void | Tensor>;
  /**
   * Replaces the product x · Wᵀ of linear `name` (bias and output specs still follow), e.g.
   * LLM.int8()'s mixed-precision int8 matmul (`src/quant/llm_int8.ts`); undefined = the
   * backend's product.
   */
  linearProduct?: (
    name: string,
    x: Tensor,
    W: Tensor,
  ) => void | Tensor | Promise<void | Tensor>;
  /** New keys (after RoPE) and values of block `layer`, [rows, numKvHeads·headDim]. */
  attentionKV?: (
    layer: number,
    kv: { k: Tensor; v: Tensor },
  ) => void | { k: Tensor; v: Tensor } | Promise<void | { k: Tensor; v: Tensor }>;
}

/** A KV cache for one sequence: per layer, keys and values [capacity, numKvHeads·headDim]. */
export interface KVCache {
  /** Keys per layer. */
  k: Float32Array[];
  /** Values per layer. */
  v: Float32Array[];
  /** Tokens already cached. */
  length: number;
  /** Maximum tokens. */
  capacity: number;
  /**
   * Set by caches that store K/V their own way (the quantized caches of `src/quant/kv/`): the
   * block hands it the new rows instead of writing `k`/`v`, and it returns the attention output.
   */
  attend?: CacheAttend;
  /** Frees what the cache holds outside the host heap (a device copy); set by such caches. */
  release?(): void;
}

/** See {@linkcode KVCache.attend}: stores the new K/V of `layer` and attends over the cache. */
export type CacheAttend = (layer: number, x: CacheAttendInput) => Promise<Float32Array>;

/** What the block passes to {@linkcode KVCache.attend}. */
export interface CacheAttendInput {
  /** Queries [T, nH·hd] after RoPE. */
  q: Float32Array;
  /** New keys [T, nKV·hd] after RoPE. */
  k: Float32Array;
  /** New keys before RoPE (for pre-RoPE key quantizers). */
  kPreRope: Float32Array;
  /** New values [T, nKV·hd]. */
  v: Float32Array;
  /** Tokens already cached (positions of the new rows start here). */
  off: number;
  /** Attention dims, as {@linkcode attention} takes them (B = 1, S = off + T). */
  dims: AttentionDims;
  /** The backend of this forward. */
  backend: Backend;
}

/** An empty cache for `capacity` tokens (default: the model's context). */
export function createKVCache(cfg: ModelConfig, capacity = cfg.maxPositions): KVCache {
  const w = cfg.numKvHeads * cfg.headDim;
  return {
    k: Array.from({ length: cfg.numLayers }, () => new Float32Array(capacity * w)),
    v: Array.from({ length: cfg.numLayers }, () => new Float32Array(capacity * w)),
    length: 0,
    capacity,
  };
}

/** Options of a block or whole forward. */
export interface RunOptions {
  /** Sequences in the batch (rows = batch · seqLen). Default 1. */
  batch?: number;
  /** KV cache (batch must be 1); new tokens are appended at `cache.length`. */
  cache?: KVCache;
  /** Hooks. */
  hooks?: ForwardHooks;
  /** Backend; default the active device's. */
  backend?: Backend;
  /** Quantizer specs at the forward's quantization points (default `model.points`). */
  points?: QuantPoints;
  /**
   * Sees each quantization point's tensor before its spec (calibration statistics, e.g.
   * `point_stats.ts`): `point` is a {@linkcode QuantPoints} key ("linearInput", "linearOutput",
   * "qPreRope", "kPreRope", "q", "k", "v"), `site` the linear's name or the block index.
   * Host forward only; must not modify `x`.
   */
  observe?: Observer;
  /**
   * Results of an earlier {@linkcode block} pass over the same input tensor to reuse (see
   * {@linkcode BlockReuse}); ignored with a cache, an observer or hooks other than `linearInput`.
   */
  reuse?: BlockReuse;
}

/**
 * A memo of {@linkcode block} passes over one input tensor (`RunOptions.reuse`), for callers that
 * run the same block over the same hidden states several times while changing later weights (the
 * quantization pipeline's true-sequential re-captures): a pass records the attention output (the
 * output projection's input) and the MLP's activation (its last linear's input) with the residual
 * beside it, each with the weight tensors it was computed from; a later pass over the same input
 * object, batch and quantization points whose earlier weights are still the same tensor objects
 * starts from the latest valid record, so the results are the same numbers as a full pass. The
 * skipped linears' `linearInput` hooks are not called: a caller's hook must not replace the
 * inputs of linears whose weights it does not change. Start with `{}` per (block, input).
 */
export interface BlockReuse {
  /** The input the records belong to (a pass over another input clears them). */
  h?: Tensor;
  /** Batch of the recorded passes. */
  batch?: number;
  /** Quantization points of the recorded passes. */
  points?: QuantPoints;
  /** The attention output [rows, heads·hd] and the tensors it was computed from. */
  attn?: { deps: Tensor[]; data: Float32Array };
  /** The residual after attention, the MLP activation, and the tensors they came from. */
  mlp?: { deps: Tensor[]; h2: Tensor; act: Tensor };
}

/** See {@linkcode RunOptions.observe}. */
export type Observer = (point: string, site: string, x: Tensor) => void;

/** `x` fake-quantized by `spec` (unchanged when there is none). */
function at(x: Tensor, spec: QuantSpec | undefined, where: string): Tensor {
  return spec ? fakeQuant(x, spec, where) : x;
}

/**
 * y = x · Wᵀ + b for linear `name` (weights `${name}.weight`, optional `${name}.bias`). When the
 * model is quantized (`model.packed[name]`) and the backend has `packedMatmulTransB`, the product
 * runs from the packed codes (the backend checks that they dequantize to the weight exactly).
 * `points.linearInput` / `linearOutput` specs matching `name` fake-quantize the input before the
 * `linearInput` hook and the output (after bias) before the `linearOutput` hook.
 */
export async function linear(
  model: Model,
  name: string,
  x: Tensor,
  opts: { hooks?: ForwardHooks; backend?: Backend; points?: QuantPoints; observe?: Observer } = {},
): Promise<Tensor> {
  const be = opts.backend ?? getBackend();
  const pts = opts.points;
  opts.observe?.("linearInput", name, x);
  if (pts?.linearInput) {
    x = at(x, linearSpec(pts.linearInput, name), `points.linearInput(${name})`);
  }
  if (opts.hooks?.linearInput) x = (await opts.hooks.linearInput(name, x)) ?? x;
  const W = await model.weights.get(`${name}.weight`);
  // A quantized layer runs from its packed codes where the backend keeps them (WebGPU).
  const meta = be.packedMatmulTransB ? model.packed?.[name] : undefined;
  const ps = linearSpec(pts?.linearProduct, name);
  let y = (opts.hooks?.linearProduct && (await opts.hooks.linearProduct(name, x, W))) ||
    (ps && (await int8Product(be, x, W, ps))) ||
    (meta && (await be.packedMatmulTransB!(x, W, meta))) || (await be.matmulTransB(x, W));
  if (model.weights.has(`${name}.bias`)) {
    const b = (await model.weights.get(`${name}.bias`)).data;
    const n = b.length;
    const d = y.data;
    for (let i = 0; i < d.length; i += n) for (let j = 0; j < n; j++) d[i + j] += b[j];
  }
  opts.observe?.("linearOutput", name, y);
  if (pts?.linearOutput) {
    y = at(y, linearSpec(pts.linearOutput, name), `points.linearOutput(${name})`);
  }
  if (opts.hooks?.linearOutput) y = (await opts.hooks.linearOutput(name, y)) ?? y;
  return y;
}

/** `x Wᵀ` under an LLM.int8() product spec: the plain product of its fake-quantized operands. */
function int8Product(be: Backend, x: Tensor, W: Tensor, spec: ProductSpec): Promise<Tensor> {
  const o = int8Operands(x, W, spec);
  return be.matmulTransB(o.x, o.w);
}

function rmsNorm(x: Tensor, w: Float32Array, eps: number): Tensor {
  const d = w.length;
  const out = new Float32Array(x.data.length);
  for (let r = 0; r < x.data.length; r += d) {
    let ss = 0;
    for (let j = 0; j < d; j++) ss += x.data[r + j] * x.data[r + j];
    const s = 1 / Math.sqrt(ss / d + eps);
    for (let j = 0; j < d; j++) out[r + j] = x.data[r + j] * s * w[j];
  }
  return { shape: [...x.shape], data: out };
}

function layerNorm(x: Tensor, w: Float32Array, b: Float32Array, eps: number): Tensor {
  const d = w.length;
  const out = new Float32Array(x.data.length);
  for (let r = 0; r < x.data.length; r += d) {
    let mean = 0;
    for (let j = 0; j < d; j++) mean += x.data[r + j];
    mean /= d;
    let v = 0;
    for (let j = 0; j < d; j++) v += (x.data[r + j] - mean) ** 2;
    const s = 1 / Math.sqrt(v / d + eps);
    for (let j = 0; j < d; j++) out[r + j] = (x.data[r + j] - mean) * s * w[j] + b[j];
  }
  return { shape: [...x.shape], data: out };
}

/** Applies the norm `name` (the family's kind: RMSNorm for Llama, LayerNorm for OPT). */
export async function norm(model: Model, name: string, x: Tensor): Promise<Tensor> {
  const cfg = model.config;
  const w = (await model.weights.get(`${name}.weight`)).data;
  if (familyOf(cfg).norm === "layer") {
    return layerNorm(x, w, (await model.weights.get(`${name}.bias`)).data, cfg.normEps);
  }
  return rmsNorm(x, w, cfg.normEps);
}

/** RoPE inverse frequencies with Llama-3 / linear scaling applied. */
export function ropeInvFreq(cfg: ModelConfig): Float64Array {
  const half = cfg.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / cfg.ropeTheta ** ((2 * i) / cfg.headDim);
  const rs = cfg.ropeScaling;
  if (rs?.type === "linear") { for (let i = 0; i < half; i++) inv[i] /= rs.factor; }
  if (rs?.type === "llama3") {
    const orig = rs.originalMaxPositionEmbeddings ?? 8192;
    const lowW = orig / (rs.lowFreqFactor ?? 1);
    const highW = orig / (rs.highFreqFactor ?? 4);
    for (let i = 0; i < half; i++) {
      const wl = (2 * Math.PI) / inv[i];
      if (wl < highW) continue;
      if (wl > lowW) inv[i] /= rs.factor;
      else {
        const s = (orig / wl - (rs.lowFreqFactor ?? 1)) /
          ((rs.highFreqFactor ?? 4) - (rs.lowFreqFactor ?? 1));
        inv[i] = (1 - s) * inv[i] / rs.factor + s * inv[i];
      }
    }
  }
  return inv;
}

/**
 * Rotates [rows, nHeads·headDim] in place, rotate-half layout, row r at position pos(r) (the
 * forward's RoPE; quantized KV caches that store keys before RoPE apply it after dequantizing).
 */
export function applyRope(
  x: Float32Array,
  nHeads: number,
  hd: number,
  inv: Float64Array,
  pos: (r: number) => number,
): void {
  const half = hd / 2;
  const w = nHeads * hd;
  const rows = x.length / w;
  // cos/sin of each position once per call (rows of a batch repeat the positions).
  const tables = new Map<number, Float64Array>();
  let cos: Float64Array = new Float64Array(half);
  let sin: Float64Array = cos;
  let lastPos = -1;
  for (let r = 0; r < rows; r++) {
    const p = pos(r);
    if (p !== lastPos) {
      let cs = tables.get(p);
      if (!cs) {
        cs = new Float64Array(2 * half);
        for (let i = 0; i < half; i++) {
          // As HF computes them: the angle in float32, then cos/sin rounded to float32.
          const af = Math.fround(Math.fround(p) * Math.fround(inv[i]));
          cs[i] = Math.fround(Math.cos(af));
          cs[half + i] = Math.fround(Math.sin(af));
        }
        tables.set(p, cs);
      }
      cos = cs;
      sin = cs.subarray(half);
      lastPos = p;
    }
    for (let h = 0; h < nHeads; h++) {
      const o = r * w + h * hd;
      for (let i = 0; i < half; i++) {
        const x1 = x[o + i];
        const x2 = x[o + i + half];
        x[o + i] = x1 * cos[i] - x2 * sin[i];
        x[o + i + half] = x2 * cos[i] + x1 * sin[i];
      }
    }
  }
}

/**
 * Causal attention for one sequence: q [T, nH·hd] at positions off..off+T-1 against keys/values
 * [S, nKV·hd] (S = off + T), grouped-query. Returns [T, nH·hd].
 */
export function causalAttention(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  dims: Omit<AttentionDims, "B">,
): Float32Array {
  const { T, S, nH, nKV, hd, scale } = dims;
  const prow = dims.probs ? new Float32Array(S) : undefined;
  const win = dims.window ?? Infinity;
  const off = S - T;
  const qw = nH * hd;
  const kw = nKV * hd;
  const rep = nH / nKV;
  const out = new Float32Array(T * qw);
  const scores = new Float64Array(S);
  for (let h = 0; h < nH; h++) {
    const kh = Math.floor(h / rep) * hd;
    for (let t = 0; t < T; t++) {
      const qo = t * qw + h * hd;
      const n = off + t + 1;
      const s0 = Math.max(0, n - win);
      let mx = -Infinity;
      scores.fill(0, 0, s0);
      for (let s = s0; s < n; s++) {
        const ko = s * kw + kh;
        let dot = 0;
        for (let i = 0; i < hd; i++) dot += q[qo + i] * k[ko + i];
        dot *= scale;
        scores[s] = dot;
        if (dot > mx) mx = dot;
      }
      let sum = 0;
      for (let s = s0; s < n; s++) {
        const e = Math.exp(scores[s] - mx);
        scores[s] = e;
        sum += e;
      }
      const oo = t * qw + h * hd;
      let pq: Float32Array | undefined;
      if (prow) {
        prow.fill(0);
        for (let s = s0; s < n; s++) prow[s] = scores[s] / sum;
        pq = fakeQuant({ shape: [1, S], data: prow }, dims.probs!, "points.probs").data;
      }
      for (let s = s0; s < n; s++) {
        const p = pq ? pq[s] : scores[s] / sum;
        const vo = s * kw + kh;
        for (let i = 0; i < hd; i++) out[oo + i] += p * v[vo + i];
      }
    }
  }
  return out;
}

/** Dimensions of {@linkcode attention}. */
export interface AttentionDims {
  /** Sequences. */
  B: number;
  /** Query rows per sequence. */
  T: number;
  /** Key rows per sequence (queries sit at positions S−T..S−1). */
  S: number;
  /** Query heads. */
  nH: number;
  /** KV heads. */
  nKV: number;
  /** Head dimension. */
  hd: number;
  /** Score scale. */
  scale: number;
  /** Sliding window (null / undefined: none). */
  window?: number | null;
  /** Fake-quantizes the probability rows (the TypeScript loop then runs). */
  probs?: QuantSpec;
}

/** Below this many score entries per head the TypeScript loop beats a native call. */
const NATIVE_ATTENTION_MIN = 2048;

/**
 * Causal attention of `B` sequences: q [B·T, nH·hd], k/v [B·S, nKV·hd] (S ≥ T; queries sit at
 * positions S−T..S−1). Uses the backend's batched attention when it has one and the problem is big
 * enough, else {@linkcode causalAttention}. Returns [B·T, nH·hd].
 */
export async function attention(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  dims: AttentionDims,
  backend: Backend,
): Promise<Float32Array> {
  const { B, T, S, nH, nKV, hd, scale } = dims;
  const qw = nH * hd;
  const kw = nKV * hd;
  const out = new Float32Array(B * T * qw);
  // A 16-bit probs spec is the identity: it keeps the native path (bit-identical logits).
  const probs = dims.probs && dims.probs.bits < 16 ? dims.probs : undefined;
  if (!backend.attention || T * S < NATIVE_ATTENTION_MIN || probs) {
    for (let b = 0; b < B; b++) {
      out.set(
        causalAttention(
          q.subarray(b * T * qw, (b + 1) * T * qw),
          k.subarray(b * S * kw, (b + 1) * S * kw),
          v.subarray(b * S * kw, (b + 1) * S * kw),
          { T, S, nH, nKV, hd, scale, window: dims.window, probs },
        ),
        b * T * qw,
      );
    }
    return out;
  }
  const G = B * nH;
  const rep = nH / nKV;
  const Q = new Float32Array(G * T * hd);
  const KT = new Float32Array(G * hd * S);
  const V = new Float32Array(G * S * hd);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < nH; h++) {
      const g = b * nH + h;
      const kh = Math.floor(h / rep) * hd;
      for (let t = 0; t < T; t++) {
        const src = (b * T + t) * qw + h * hd;
        const dst = (g * T + t) * hd;
        for (let i = 0; i < hd; i++) Q[dst + i] = q[src + i] * scale;
      }
      for (let s = 0; s < S; s++) {
        const src = (b * S + s) * kw + kh;
        for (let i = 0; i < hd; i++) {
          KT[(g * hd + i) * S + s] = k[src + i];
          V[(g * S + s) * hd + i] = v[src + i];
        }
      }
    }
  }
  const mask = new Float32Array(T * S);
  const off = S - T;
  const win = dims.window ?? Infinity;
  for (let t = 0; t < T; t++) {
    mask.fill(-Infinity, t * S + off + t + 1, (t + 1) * S);
    if (off + t + 1 > win) mask.fill(-Infinity, t * S, t * S + off + t + 1 - win);
  }
  const Y = await backend.attention(
    { shape: [G, T, hd], data: Q },
    { shape: [G, hd, S], data: KT },
    { shape: [G, S, hd], data: V },
    { shape: [T, S], data: mask },
  );
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < nH; h++) {
      const g = b * nH + h;
      for (let t = 0; t < T; t++) {
        out.set(Y.data.subarray((g * T + t) * hd, (g * T + t + 1) * hd), (b * T + t) * qw + h * hd);
      }
    }
  }
  return out;
}

/** Token (and, for OPT, position) embeddings of `ids` (one row per token), starting at `posOffset`. */
export async function embed(
  model: Model,
  ids: number[],
  opts: { seqLen?: number; posOffset?: number; backend?: Backend } = {},
): Promise<Tensor> {
  const cfg = model.config;
  const fam = familyOf(cfg);
  const E = await model.weights.get(`${fam.embed}.weight`);
  const de = E.shape[1];
  const out = new Float32Array(ids.length * de);
  for (let r = 0; r < ids.length; r++) {
    const id = ids[r];
    if (!(id >= 0 && id < E.shape[0])) {
      throw new QuantlabError(`embed: token id ${id} outside the embedding (${E.shape[0]} rows)`);
    }
    out.set(E.data.subarray(id * de, (id + 1) * de), r * de);
  }
  let h: Tensor = { shape: [ids.length, de], data: out };
  if (fam.positions === "learned") {
    if (fam.projIn && cfg.wordEmbedProjDim !== cfg.hiddenSize) {
      h = await linear(model, fam.projIn, h, { backend: opts.backend });
    }
    const P = await model.weights.get(`${fam.positionTable}.weight`);
    const seqLen = opts.seqLen ?? ids.length;
    const off = opts.posOffset ?? 0;
    const d = cfg.hiddenSize;
    for (let r = 0; r < ids.length; r++) {
      const pos = (r % seqLen) + off + fam.positionOffset; // OPT's table starts at offset 2
      if (pos >= P.shape[0]) {
        throw new QuantlabError(`embed: position ${pos - 2} beyond the model's ${P.shape[0] - 2}`);
      }
      for (let j = 0; j < d; j++) h.data[r * d + j] += P.data[pos * d + j];
    }
  }
  return h;
}

function add(a: Tensor, b: Tensor): Tensor {
  const o = new Float32Array(a.data.length);
  for (let i = 0; i < o.length; i++) o[i] = a.data[i] + b.data[i];
  return { shape: [...a.shape], data: o };
}

/** Runs decoder block `i` on h [batch·seqLen, hidden]. With a cache, batch must be 1. */
export async function block(
  model: Model,
  i: number,
  h: Tensor,
  opts: RunOptions = {},
): Promise<Tensor> {
  const cfg = model.config;
  const hooks = opts.hooks;
  const backend = opts.backend ?? getBackend();
  const points: QuantPoints | undefined = opts.points ?? model.points;
  if (points) checkPoints(points, cfg);
  const observe = opts.observe;
  const lin = (name: string, x: Tensor) =>
    linear(model, name, x, { hooks, backend, points, observe });
  const batch = opts.batch ?? 1;
  const rows = h.shape[0];
  const T = rows / batch;
  if (!Number.isInteger(T)) {
    throw new QuantlabError(`block: ${rows} rows not divisible by batch ${batch}`);
  }
  const cache = opts.cache;
  if (cache && batch !== 1) throw new QuantlabError("block: a KV cache needs batch 1");
  const off = cache ? cache.length : 0;
  if (off + T > (cache?.capacity ?? cfg.maxPositions)) {
    throw new QuantlabError(
      `block: ${off + T} tokens exceed the context (${cache?.capacity ?? cfg.maxPositions})`,
    );
  }
  const { numHeads: nH, numKvHeads: nKV, headDim: hd } = cfg;
  const fam = familyOf(cfg);
  const names = fam.block(i);
  const { attnNorm, mlpNorm } = names;
  const preLN = fam.norm === "rms" || cfg.doLayerNormBefore;

  const reuse = opts.reuse && !cache && !observe && !hooks?.linearOutput &&
      !hooks?.linearProduct && !hooks?.attentionKV
    ? opts.reuse
    : undefined;
  if (reuse && (reuse.h !== h || reuse.batch !== batch || reuse.points !== points)) {
    Object.assign(reuse, { h, batch, points, attn: undefined, mlp: undefined });
  }
  const mlpLinears = names.mlp.slice(0, -1);
  const attnDepNames = [attnNorm, names.q, names.k, names.v];
  const mlpDepNames = [...attnDepNames, names.o, mlpNorm, ...mlpLinears];
  const deps = async (prefixes: string[]): Promise<Tensor[]> => {
    const out: Tensor[] = [];
    for (const p of prefixes) {
      for (const n of [`${p}.weight`, `${p}.bias`]) {
        if (model.weights.has(n)) out.push(await model.weights.get(n));
      }
    }
    return out;
  };
  const same = (a: Tensor[], b: Tensor[]) => a.length === b.length && a.every((t, j) => t === b[j]);
  let h2: Tensor;
  let act: Tensor;
  const mlpDeps = reuse ? await deps(mlpDepNames) : undefined;
  if (reuse?.mlp && same(reuse.mlp.deps, mlpDeps!)) ({ h2, act } = reuse.mlp);
  else {
    const attnDeps = reuse ? await deps(attnDepNames) : undefined;
    let attn: Float32Array;
    if (reuse?.attn && same(reuse.attn.deps, attnDeps!)) attn = reuse.attn.data;
    else {
      attn = await attentionPart();
      if (reuse) reuse.attn = { deps: attnDeps!, data: attn };
    }
    const a = await lin(names.o, { shape: [rows, nH * hd], data: attn });
    h2 = add(h, a);
    if (!preLN) h2 = await norm(model, attnNorm, h2);

    // --- MLP up to its last linear ---
    const y = preLN ? await norm(model, mlpNorm, h2) : h2;
    if (fam.mlp === "fc") {
      act = await lin(names.mlp[0], y);
      const d = act.data;
      if (cfg.activation === "relu") {
        for (let j = 0; j < d.length; j++) {
          d[j] = d[j] > 0 ? d[j] : 0;
        }
      } else if (cfg.activation === "gelu") {
        for (let j = 0; j < d.length; j++) d[j] = 0.5 * d[j] * (1 + erfFit(d[j] / Math.SQRT2));
      } else throw new QuantlabError(`OPT activation "${cfg.activation}" is not supported`);
    } else {
      act = await lin(names.mlp[0], y);
      const u = await lin(names.mlp[1], y);
      const gd = act.data;
      for (let j = 0; j < gd.length; j++) gd[j] = (gd[j] / (1 + Math.exp(-gd[j]))) * u.data[j];
    }
    if (reuse) reuse.mlp = { deps: mlpDeps!, h2, act };
  }
  const m = await lin(names.mlp[names.mlp.length - 1], act);
  let out = add(h2, m);
  if (!preLN) out = await norm(model, mlpNorm, out);
  return out;

  /** Norm, q/k/v, RoPE and attention: the output projection's input [rows, heads·hd]. */
  async function attentionPart(): Promise<Float32Array> {
    // --- attention ---
    const x = preLN ? await norm(model, attnNorm, h) : h;
    let q = await lin(names.q, x);
    let k = await lin(names.k, x);
    let v = await lin(names.v, x);
    observe?.("qPreRope", `${i}`, q);
    observe?.("kPreRope", `${i}`, k);
    if (points) {
      q = at(q, points.qPreRope, "points.qPreRope");
      k = at(k, points.kPreRope, "points.kPreRope");
    }
    const kPreRope = cache?.attend ? k.data.slice() : k.data;
    if (fam.positions === "rope") {
      const inv = ropeInvFreq(cfg);
      applyRope(q.data, nH, hd, inv, (r) => (r % T) + off);
      applyRope(k.data, nKV, hd, inv, (r) => (r % T) + off);
    }
    observe?.("q", `${i}`, q);
    observe?.("k", `${i}`, k);
    observe?.("v", `${i}`, v);
    if (points) {
      q = at(q, points.q, "points.q");
      k = at(at(k, points.k, "points.k"), points.kvWrite?.k, "points.kvWrite.k");
      v = at(at(v, points.v, "points.v"), points.kvWrite?.v, "points.kvWrite.v");
    }
    if (hooks?.attentionKV) {
      const r = await hooks.attentionKV(i, { k, v });
      if (r) ({ k, v } = r);
    }
    const kw = nKV * hd;
    const scale = 1 / Math.sqrt(hd);
    let attn: Float32Array;
    if (cache?.attend) {
      const dims = { B: 1, T, S: off + T, nH, nKV, hd, scale, window: cfg.slidingWindow };
      attn = await cache.attend(i, {
        q: q.data,
        k: k.data,
        kPreRope,
        v: v.data,
        off,
        dims: { ...dims, probs: points?.probs },
        backend,
      });
    } else if (cache) {
      cache.k[i].set(k.data, off * kw);
      cache.v[i].set(v.data, off * kw);
      const S = off + T;
      attn = await attention(
        q.data,
        cache.k[i].subarray(0, S * kw),
        cache.v[i].subarray(0, S * kw),
        { B: 1, T, S, nH, nKV, hd, scale, window: cfg.slidingWindow, probs: points?.probs },
        backend,
      );
    } else {
      attn = await attention(
        q.data,
        k.data,
        v.data,
        {
          B: batch,
          T,
          S: T,
          nH,
          nKV,
          hd,
          scale,
          window: cfg.slidingWindow,
          probs: points?.probs,
        },
        backend,
      );
    }
    return attn;
  }
}

/** Final norm (and OPT project_out) then the LM head: logits [rows, vocab]. */
export async function head(
  model: Model,
  h: Tensor,
  opts: { backend?: Backend; hooks?: ForwardHooks } = {},
): Promise<Tensor> {
  const cfg = model.config;
  const fam = familyOf(cfg);
  let x = h;
  if (fam.norm === "rms") x = await norm(model, fam.finalNorm, x);
  else if (cfg.doLayerNormBefore && model.weights.has(`${fam.finalNorm}.weight`)) {
    // OPT: some converted checkpoints drop the final LayerNorm (`_remove_final_layer_norm`).
    x = await norm(model, fam.finalNorm, x);
  }
  if (fam.projOut && cfg.wordEmbedProjDim !== cfg.hiddenSize) {
    x = await linear(model, fam.projOut, x, opts);
  }
  const name = model.weights.has("lm_head.weight") ? "lm_head" : fam.embed;
  const W = await model.weights.get(`${name}.weight`);
  const be = opts.backend ?? getBackend();
  return be.matmulTransB(x, W);
}

/**
 * Full forward of token rows. `ids` holds `batch` sequences of equal length, concatenated.
 * With `cache` (batch 1), positions continue from `cache.length` and the cache grows.
 */
export async function forward(model: Model, ids: number[], opts: RunOptions = {}): Promise<Tensor> {
  const batch = opts.batch ?? 1;
  const T = ids.length / batch;
  const off = opts.cache?.length ?? 0;
  let h = await embed(model, ids, { seqLen: T, posOffset: off, backend: opts.backend });
  for (let i = 0; i < model.config.numLayers; i++) h = await block(model, i, h, opts);
  if (opts.cache) opts.cache.length += T;
  return head(model, h, opts);
}
