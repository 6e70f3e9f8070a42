/**
 * An in-memory ONNX graph of a whole Llama-family decoder forward for evaluation: `input_ids`
 * [batch, sequence] → `logits` [batch, sequence, vocab], positions 0..sequence−1, causal
 * attention, no KV cache. Every linear is a float32 `MatMul` with the weight the caller hands in
 * (for a quantized model its current fake-quant weight), so the graph computes what quantlab's
 * host forward (`src/models/decoder.ts`) computes. The node layout (RMSNorm, rotate-half RoPE,
 * grouped-query attention by repeating KV heads, SwiGLU MLP, tied or separate head) is the one
 * `onnx_export.ts` writes, less the past key/values, except that attention is one fused
 * onnxruntime contrib node instead of MatMul, Where and Softmax nodes (measured on stories260K,
 * 4 × 512 tokens, 2 loaded cores: the unfused graph ran at ~8k tokens/s, the fused ones at
 * ~28k): `com.microsoft.GroupQueryAttention` by default (causal over the keys j ≤ s of the
 * window, KV heads shared natively; its own rotary needs head sizes that are multiples of 16, so
 * RoPE stays in the graph), or `com.microsoft.MultiHeadAttention` with `unidirectional: 1` over
 * KV heads repeated to the query heads. Bytes are returned, never written to disk.
 * @module
 */
import { UnsupportedError } from "../errors.ts";
import type { Tensor } from "../tensor.ts";
import { ONNX_DTYPE, OnnxGraph } from "./_onnx_graph.ts";

/** The config fields the forward graph reads (a subset of `ModelConfig`). */
export interface ForwardGraphConfig {
  /** Model family ("llama" only). */
  family: string;
  /** Hidden size D. */
  hiddenSize: number;
  /** Query heads. */
  numHeads: number;
  /** Key/value heads. */
  numKvHeads: number;
  /** Head dimension. */
  headDim: number;
  /** Vocabulary size. */
  vocabSize: number;
  /** Decoder blocks. */
  numLayers: number;
  /** MLP width. */
  intermediateSize: number;
  /** RMSNorm epsilon. */
  normEps: number;
  /** RoPE base θ. */
  ropeTheta: number;
  /** MLP activation ("silu" only). */
  activation: string;
  /** Biases (none supported). */
  qkvBias?: boolean;
  /** Output-projection bias (not supported). */
  oBias?: boolean;
  /** MLP biases (not supported). */
  mlpBias?: boolean;
  /** RoPE scaling (not supported). */
  ropeScaling?: unknown;
  /** Sliding-window attention (not supported). */
  slidingWindow?: number | null;
}

/**
 * Why `cfg` cannot be built as a forward graph, or null when it can: only bias-free SiLU
 * Llama-family models without RoPE scaling or sliding windows, whose query heads are a multiple
 * of the KV heads.
 */
export function forwardGraphUnsupported(cfg: ForwardGraphConfig): string | null {
  if (cfg.family !== "llama") return `family ${cfg.family}`;
  if (cfg.qkvBias || cfg.oBias || cfg.mlpBias) return "biases";
  if (cfg.activation !== "silu") return `activation ${cfg.activation}`;
  if (cfg.ropeScaling) return "RoPE scaling";
  if (cfg.slidingWindow) return "sliding-window attention";
  if (cfg.numHeads % cfg.numKvHeads !== 0) return "query heads not a multiple of KV heads";
  return null;
}

/**
 * The ModelProto bytes of `cfg`'s forward (outputs `logits` [batch, sequence, vocab] and `lse`
 * [batch, sequence], the float32 log-sum-exp of each logits row) with the tensors `get` returns (HF names:
 * `model.embed_tokens.weight`, `model.layers.{l}.self_attn.q_proj.weight`, …; `lm_head.weight`
 * when `hasHead`, else the tied embedding). `attention`: "gqa" (default) or "mha", the fused
 * attention node (see the module doc; both compute the same causal attention). Throws
 * `UnsupportedError` for configs
 * {@linkcode forwardGraphUnsupported} rejects.
 */
export async function buildForwardGraph(
  cfg: ForwardGraphConfig,
  get: (name: string) => Promise<Tensor>,
  opts: { hasHead?: boolean; attention?: "gqa" | "mha" } = {},
): Promise<Uint8Array> {
  const why = forwardGraphUnsupported(cfg);
  if (why) throw new UnsupportedError(`onnx forward graph: ${why} is not supported`);
  const D = cfg.hiddenSize, H = cfg.numHeads, KV = cfg.numKvHeads, hd = cfg.headDim;
  const V = cfg.vocabSize, L = cfg.numLayers, I = cfg.intermediateSize;
  const F = ONNX_DTYPE.FLOAT, I64 = ONNX_DTYPE.INT64;
  const g = new OnnxGraph();

  const linear = async (p: string, x: string, rows: number, cols: number): Promise<string> =>
    g.matmulT(x, `${p}.weight`, (await get(`${p}.weight`)).data, rows, cols);
  const rmsNorm = async (n: string, x: string): Promise<string> =>
    g.rmsNorm(x, n, (await get(n)).data, cfg.normEps);

  const ids = g.input("input_ids", I64, ["batch_size", "sequence_length"]);
  const E = await get("model.embed_tokens.weight");
  const embed = g.f32("model.embed_tokens.weight", [V, D], E.data);
  let x = g.node("Gather", [embed, ids], { attrs: { axis: 0 } });

  // Positions 0..S−1; RoPE tables [S, hd] (broadcast over batch and heads), rotate-half.
  const seqLen = g.node("Shape", [ids], { attrs: { start: 1, end: 2 } });
  const S = g.node("Squeeze", [seqLen, g.i64([0])]);
  const pos = g.node("Range", [g.i64([0], true), S, g.i64([1], true)]);
  const half = hd / 2;
  const invFreq = new Float32Array(half);
  for (let i = 0; i < half; i++) invFreq[i] = 1 / cfg.ropeTheta ** ((2 * i) / hd);
  const ang = g.node("Mul", [
    g.node("Unsqueeze", [g.node("Cast", [pos], { attrs: { to: F } }), g.i64([-1])]),
    g.f32("rope.inv_freq", [half], invFreq),
  ]);
  const emb = g.node("Concat", [ang, ang], { attrs: { axis: -1 } });
  // [S, 1, hd]: broadcast over batch and heads of a [B, S, heads, hd] tensor.
  const cos = g.node("Unsqueeze", [g.node("Cos", [emb]), g.i64([1])]);
  const sin = g.node("Unsqueeze", [g.node("Sin", [emb]), g.i64([1])]);
  const rope = (t: string) => {
    const t1 = g.node("Slice", [t, g.i64([0]), g.i64([half]), g.i64([3])]);
    const t2 = g.node("Slice", [t, g.i64([half]), g.i64([hd]), g.i64([3])]);
    const rot = g.node("Concat", [g.node("Neg", [t2]), t1], { attrs: { axis: 3 } });
    return g.node("Add", [g.node("Mul", [t, cos]), g.node("Mul", [rot, sin])]);
  };
  const rep = H / KV;
  const heads = (t: string, n: number) => g.node("Reshape", [t, g.i64([0, 0, n, hd])]);
  const flat = (t: string) => g.node("Reshape", [t, g.i64([0, 0, H * hd])]);
  // Grouped-query attention: query head h reads KV head ⌊h / rep⌋ ([B, S, KV, rep, hd]).
  const repeat = (t: string) =>
    rep === 1
      ? t
      : g.node("Expand", [g.node("Unsqueeze", [t, g.i64([3])]), g.i64([1, 1, 1, rep, 1])]);

  const gqa = (opts.attention ?? "gqa") === "gqa";
  let seqlensK: string | undefined, totalLen: string | undefined;
  if (gqa) {
    const INT32 = 6;
    const batch = g.node("Shape", [ids], { attrs: { start: 0, end: 1 } });
    const last = g.node("Sub", [seqLen, g.i64([1])]);
    seqlensK = g.node("Cast", [g.node("Expand", [last, batch])], { attrs: { to: INT32 } });
    totalLen = g.node("Cast", [S], { attrs: { to: INT32 } });
  }
  for (let l = 0; l < L; l++) {
    const pre = `model.layers.${l}`;
    const h = await rmsNorm(`${pre}.input_layernorm.weight`, x);
    const qLin = await linear(`${pre}.self_attn.q_proj`, h, H * hd, D);
    const kLin = await linear(`${pre}.self_attn.k_proj`, h, KV * hd, D);
    const vLin = await linear(`${pre}.self_attn.v_proj`, h, KV * hd, D);
    let merged: string;
    if (gqa) {
      // onnxruntime's fused causal grouped-query attention: softmax(q·kᵀ/√hd) · v over keys
      // j ≤ s, query head h reading KV head ⌊h / rep⌋.
      const q = flat(rope(heads(qLin, H)));
      const k = g.node("Reshape", [rope(heads(kLin, KV)), g.i64([0, 0, KV * hd])]);
      merged = g.node("GroupQueryAttention", [q, k, vLin, "", "", seqlensK!, totalLen!], {
        domain: "com.microsoft",
        attrs: { num_heads: H, kv_num_heads: KV, scale: { f: 1 / Math.sqrt(hd) } },
        outputs: [`attn_${l}`, `attn_${l}.present_key`, `attn_${l}.present_value`],
      });
    } else {
      // onnxruntime's fused causal attention over KV heads repeated to H.
      const q = flat(rope(heads(qLin, H)));
      const k = flat(repeat(rope(heads(kLin, KV))));
      const v = flat(repeat(heads(vLin, KV)));
      merged = g.node("MultiHeadAttention", [q, k, v], {
        domain: "com.microsoft",
        attrs: { num_heads: H, unidirectional: 1, scale: { f: 1 / Math.sqrt(hd) } },
      });
    }
    x = g.node("Add", [x, await linear(`${pre}.self_attn.o_proj`, merged, D, H * hd)]);
    const h2 = await rmsNorm(`${pre}.post_attention_layernorm.weight`, x);
    const gate = await linear(`${pre}.mlp.gate_proj`, h2, I, D);
    const up = await linear(`${pre}.mlp.up_proj`, h2, I, D);
    const act = g.swiglu(gate, up);
    x = g.node("Add", [x, await linear(`${pre}.mlp.down_proj`, act, D, I)]);
  }
  const hN = await rmsNorm("model.norm.weight", x);
  if (opts.hasHead) {
    g.node("Identity", [await linear("lm_head", hN, V, D)], { outputs: ["logits"] });
  } else {
    const Et = g.node("Transpose", [embed], { attrs: { perm: [1, 0] } });
    g.node("MatMul", [hN, Et], { outputs: ["logits"] });
  }
  g.output("logits", F, ["batch_size", "sequence_length", V]);
  // log Σ_j exp(logits_j) per token (float32), so an evaluator needs no pass over the vocabulary.
  g.node("ReduceLogSumExp", ["logits"], { attrs: { axes: [-1], keepdims: 0 }, outputs: ["lse"] });
  g.output("lse", F, ["batch_size", "sequence_length"]);
  return g.encode("quantlab-forward");
}
