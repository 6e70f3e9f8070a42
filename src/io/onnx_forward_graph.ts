/**
 * An in-memory ONNX graph of a whole Llama-family decoder forward for evaluation: `input_ids`
 * [batch, sequence] → `logits` [batch, sequence, vocab], positions 0..sequence−1, causal
 * attention, no KV cache. Every linear is a float32 `MatMul` with the weight the caller hands in
 * (for a quantized model its current fake-quant weight), so the graph computes what quantlab's
 * host forward (`src/models/decoder.ts`) computes. The node layout (RMSNorm, rotate-half RoPE,
 * grouped-query attention by repeating KV heads, SwiGLU MLP, tied or separate head) is the one
 * `onnx_export.ts` writes, less the past key/values, except for attention. Three attention
 * layouts, all computing softmax(q·kᵀ/√hd) · v over keys j ≤ s:
 * - "matmul" (default): RoPE as products — x·W_qᵀ and x·(R W_q)ᵀ, R the rotate-half map folded
 *   into the weight rows, in one MatMul with k, k·R and v — times cos/sin tables [S, heads·hd],
 *   the 1/√hd scale folded into W_q; then per block of queries (`chunks` blocks, default 8,
 *   bounds ⌈c·S/n⌉) batched MatMul → causal mask add → Softmax → MatMul over the keys up to the
 *   block's end only, query heads grouped under their KV head ([B, KV, rep, Sq, hd] ·
 *   [B, KV, 1, hd, Sk]) so K and V are never repeated. Blocks skip ~7/16 of the scores a full
 *   causal product computes and keep each block's scores small.
 * - "gqa": `com.microsoft.GroupQueryAttention` (causal, KV heads shared natively; its own rotary
 *   needs head sizes that are multiples of 16, so RoPE stays in the graph as Slice/Neg/Concat).
 * - "mha": `com.microsoft.MultiHeadAttention` with `unidirectional: 1` over KV heads repeated to
 *   the query heads.
 * Measured on stories260K (batches of 4 × 512 tokens, 2 loaded cores, profiled with
 * onnxruntime's `enableProfiling`): with "gqa", 63 % of the node time was GroupQueryAttention
 * (head size 8) and 13 % the broadcast RoPE `Mul`s; "matmul" with 8 blocks ran 1.5–2× faster
 * than "gqa" in the same process (an unfused, unblocked MatMul/Where/Softmax graph with repeated
 * KV heads ran at ~8k tokens/s, GQA at ~28k). Bytes are returned, never written to disk.
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
 * [batch, sequence], the float32 log-sum-exp of each logits row, and `next_logit` [batch, sequence],
 * each row's logit of the next input token, token 0 at the last position) with the tensors `get`
 * returns (HF names:
 * `model.embed_tokens.weight`, `model.layers.{l}.self_attn.q_proj.weight`, …; `lm_head.weight`
 * when `hasHead`, else the tied embedding). `attention`: "matmul" (default), "gqa" or "mha", the
 * attention layout, and `chunks` the query blocks of "matmul" (default 8; 1: one block) — see the
 * module doc; all compute the same causal attention. Throws `UnsupportedError` for configs
 * {@linkcode forwardGraphUnsupported} rejects.
 */
export async function buildForwardGraph(
  cfg: ForwardGraphConfig,
  get: (name: string) => Promise<Tensor>,
  opts: { hasHead?: boolean; attention?: "gqa" | "mha" | "matmul"; chunks?: number } = {},
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

  // Positions 0..S−1 and their RoPE angles [S, hd/2] (rotate-half).
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
  const mode = opts.attention ?? "matmul";
  const gqa = mode === "gqa";
  // "gqa" / "mha": [S, 1, hd] tables, broadcast over batch and heads of a [B, S, heads, hd] tensor.
  let cos = "", sin = "";
  if (mode !== "matmul") {
    const emb = g.node("Concat", [ang, ang], { attrs: { axis: -1 } });
    cos = g.node("Unsqueeze", [g.node("Cos", [emb]), g.i64([1])]);
    sin = g.node("Unsqueeze", [g.node("Sin", [emb]), g.i64([1])]);
  }
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

  // "matmul": cos/sin tables [S, heads·hd], the causal mask [S, S] (−∞ above the diagonal) and
  // the query blocks' bounds, shared by every layer.
  let mask: string | undefined, cosQ: string | undefined, sinQ: string | undefined;
  let cosK: string | undefined, sinK: string | undefined;
  const blocks: { start: string; end: string; mask: string }[] = [];
  if (mode === "matmul") {
    const c2 = g.node("Cos", [ang]), s2 = g.node("Sin", [ang]);
    const cosHd = g.node("Concat", [c2, c2], { attrs: { axis: -1 } });
    const sinHd = g.node("Concat", [s2, s2], { attrs: { axis: -1 } });
    cosQ = g.node("Tile", [cosHd, g.i64([1, H])]);
    sinQ = g.node("Tile", [sinHd, g.i64([1, H])]);
    cosK = KV === H ? cosQ : g.node("Tile", [cosHd, g.i64([1, KV])]);
    sinK = KV === H ? sinQ : g.node("Tile", [sinHd, g.i64([1, KV])]);
    // mask[s, j] = −∞ for keys j > s, else 0.
    const later = g.node("Less", [
      g.node("Unsqueeze", [pos, g.i64([1])]),
      g.node("Unsqueeze", [pos, g.i64([0])]),
    ]);
    mask = g.node("Where", [later, g.scalar(-Infinity), g.scalar(0)]);
    const n = Math.max(1, Math.floor(opts.chunks ?? 8));
    if (n > 1) {
      // Query blocks [⌈c·S/n⌉, ⌈(c+1)·S/n⌉) attend to keys [0, ⌈(c+1)·S/n⌉) only.
      const bound = (c: number) =>
        g.node("Div", [
          g.node("Add", [g.node("Mul", [seqLen, g.i64([c])]), g.i64([n - 1])]),
          g.i64([n]),
        ]);
      const b = Array.from({ length: n + 1 }, (_, c) => (c === 0 ? g.i64([0]) : bound(c)));
      for (let c = 0; c < n; c++) {
        const m = g.node("Slice", [
          mask,
          g.node("Concat", [b[c], g.i64([0])], { attrs: { axis: 0 } }),
          g.node("Concat", [b[c + 1], b[c + 1]], { attrs: { axis: 0 } }),
          g.i64([0, 1]),
        ]);
        blocks.push({ start: b[c], end: b[c + 1], mask: m });
      }
    }
  }
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
    let merged: string;
    if (mode === "matmul") {
      merged = await matmulAttention(g, pre, h, get, {
        D,
        H,
        KV,
        hd,
        cosQ,
        sinQ,
        cosK,
        sinK,
        mask,
        blocks,
      });
    } else if (gqa) {
      const qLin = await linear(`${pre}.self_attn.q_proj`, h, H * hd, D);
      const kLin = await linear(`${pre}.self_attn.k_proj`, h, KV * hd, D);
      const vLin = await linear(`${pre}.self_attn.v_proj`, h, KV * hd, D);
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
      const qLin = await linear(`${pre}.self_attn.q_proj`, h, H * hd, D);
      const kLin = await linear(`${pre}.self_attn.k_proj`, h, KV * hd, D);
      const vLin = await linear(`${pre}.self_attn.v_proj`, h, KV * hd, D);
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
  // log Σ_j exp(logits_j) per token (float32), so an evaluator needs no pass over the vocabulary,
  // as max + log Σ exp(logits − max) (onnxruntime's ReduceLogSumExp node instead cost ~1.3 ms
  // more CPU time per 512-token window of ~10.5 ms on stories260K, single-threaded).
  const mx = g.node("ReduceMax", ["logits"], { attrs: { axes: [-1], keepdims: 1 } });
  const se = g.node("ReduceSum", [g.node("Exp", [g.node("Sub", ["logits", mx])]), g.i64([-1])], {
    attrs: { keepdims: 1 },
  });
  g.node("Squeeze", [g.node("Add", [mx, g.node("Log", [se])]), g.i64([-1])], { outputs: ["lse"] });
  g.output("lse", F, ["batch_size", "sequence_length"]);
  // The logit of each position's next token (input_ids shifted left by one; the last position
  // reads token 0 and predicts nothing), so an evaluator fetching `lse` and `next_logit` copies
  // two floats per token out of the session instead of the [batch, sequence, vocab] logits.
  const next = g.node("Concat", [
    g.node("Slice", [ids, g.i64([1]), g.i64([2 ** 53]), g.i64([1])]),
    g.node("Slice", [g.node("Mul", [ids, g.i64([0], true)]), g.i64([0]), g.i64([1]), g.i64([1])]),
  ], { attrs: { axis: 1 } });
  g.node("Squeeze", [
    g.node("GatherElements", ["logits", g.node("Unsqueeze", [next, g.i64([-1])])], {
      attrs: { axis: -1 },
    }),
    g.i64([-1]),
  ], { outputs: ["next_logit"] });
  g.output("next_logit", F, ["batch_size", "sequence_length"]);
  return g.encode("quantlab-forward");
}

/** The rows of `W` [heads·hd, cols] under rotate-half: row (h, i) = −row (h, i + hd/2) for i < hd/2, else row (h, i − hd/2). */
function rotateRows(W: Float32Array, heads: number, hd: number, cols: number, scale: number) {
  const out = new Float32Array(W.length);
  const half = hd / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < hd; i++) {
      const src = h * hd + (i < half ? i + half : i - half);
      const sg = i < half ? -scale : scale;
      const o = (h * hd + i) * cols, so = src * cols;
      for (let c = 0; c < cols; c++) out[o + c] = Math.fround(sg * W[so + c]);
    }
  }
  return out;
}

function scaled(W: Float32Array, scale: number): Float32Array {
  if (scale === 1) return W;
  return Float32Array.from(W, (v) => v * scale);
}

/** One layer's attention of the "matmul" mode (see `buildForwardGraph`); returns [B, S, H·hd]. */
async function matmulAttention(
  g: OnnxGraph,
  pre: string,
  h: string,
  get: (name: string) => Promise<Tensor>,
  d: {
    D: number;
    H: number;
    KV: number;
    hd: number;
    cosQ?: string;
    sinQ?: string;
    cosK?: string;
    sinK?: string;
    mask?: string;
    blocks: { start: string; end: string; mask: string }[];
  },
): Promise<string> {
  const { D, H, KV, hd } = d;
  const rep = H / KV;
  const s = 1 / Math.sqrt(hd);
  const Wq = (await get(`${pre}.self_attn.q_proj.weight`)).data;
  const Wk = (await get(`${pre}.self_attn.k_proj.weight`)).data;
  const Wv = (await get(`${pre}.self_attn.v_proj.weight`)).data;
  // One product for q, q·R, k, k·R, v: [B, S, 2·H·hd + 3·KV·hd].
  const nq = H * hd, nk = KV * hd;
  const W = new Float32Array((2 * nq + 3 * nk) * D);
  W.set(scaled(Wq, s), 0);
  W.set(rotateRows(Wq, H, hd, D, s), nq * D);
  W.set(Wk, 2 * nq * D);
  W.set(rotateRows(Wk, KV, hd, D, 1), (2 * nq + nk) * D);
  W.set(Wv, (2 * nq + 2 * nk) * D);
  const all = g.matmulT(h, `${pre}.self_attn.qkv_rope_proj`, W, 2 * nq + 3 * nk, D);
  const parts = [`${pre}.q`, `${pre}.qr`, `${pre}.k`, `${pre}.kr`, `${pre}.v`];
  g.node("Split", [all, g.i64([nq, nq, nk, nk, nk])], { attrs: { axis: -1 }, outputs: parts });
  const [q0, qr, k0, kr, v] = parts;
  const q = g.node("Add", [g.node("Mul", [q0, d.cosQ!]), g.node("Mul", [qr, d.sinQ!])]);
  const k = g.node("Add", [g.node("Mul", [k0, d.cosK!]), g.node("Mul", [kr, d.sinK!])]);
  // q [B, S, KV, rep, hd] → [B, KV, rep, S, hd]; k → [B, KV, 1, hd, S]; v → [B, KV, 1, S, hd].
  const qT = g.node("Transpose", [g.node("Reshape", [q, g.i64([0, 0, KV, rep, hd])])], {
    attrs: { perm: [0, 2, 3, 1, 4] },
  });
  const kT = g.node("Transpose", [g.node("Reshape", [k, g.i64([0, 0, KV, 1, hd])])], {
    attrs: { perm: [0, 2, 3, 4, 1] },
  });
  const vT = g.node("Transpose", [g.node("Reshape", [v, g.i64([0, 0, KV, 1, hd])])], {
    attrs: { perm: [0, 2, 3, 1, 4] },
  });
  const attend = (qc: string, kc: string, vc: string, m: string) => {
    const scores = g.node("Add", [g.node("MatMul", [qc, kc]), m]); // [B, KV, rep, Sq, Sk]
    const p = g.node("Softmax", [scores], { attrs: { axis: -1 } });
    return g.node("MatMul", [p, vc]); // [B, KV, rep, Sq, hd]
  };
  const o = d.blocks.length === 0 ? attend(qT, kT, vT, d.mask!) : g.node(
    "Concat",
    d.blocks.map((b) => {
      const qc = g.node("Slice", [qT, b.start, b.end, g.i64([3])]);
      const vc = g.node("Slice", [vT, g.i64([0]), b.end, g.i64([3])]);
      return attend(qc, g.node("Slice", [kT, g.i64([0]), b.end, g.i64([4])]), vc, b.mask);
    }),
    { attrs: { axis: 3 } },
  );
  return g.node("Reshape", [
    g.node("Transpose", [o], { attrs: { perm: [0, 3, 1, 2, 4] } }),
    g.i64([0, 0, H * hd]),
  ]);
}
