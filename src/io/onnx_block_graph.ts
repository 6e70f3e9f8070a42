/**
 * In-memory ONNX graphs of one Llama-family decoder block, cut into the stages the quantization
 * pipeline's calibration forward walks (`src/models/ort_block.ts`), for onnxruntime. The weights
 * are graph *inputs*, so one session per (shape, stage) serves every block of a model and every
 * partially quantized state of it. Rows are tokens: `h` is [N, D] with N = batch · seqLen, the
 * sequence length fixed when the graph is built (RoPE tables and the causal mask are constants).
 *
 * Stages (inputs → outputs; `s` is `XᵀX` [d, d] of the stage's captured linear input X, present
 * when built with `stats`, float32, one `MatMul(Transpose(X), X)`):
 * - "x1": `h`, `ln1` → `s` of `x1 = rmsnorm(h)` (the q/k/v input).
 * - "attn": `h`, `ln1`, `wq`, `wk`, `wv` → `y` = the attention output [N, H·hd] (the o input),
 *   `s` of it.
 * - "mid": `h`, `attn`, `wo`, `ln2` → `y` = `h2 = h + attn·woᵀ` [N, D], `s` of `rmsnorm(h2)` (the
 *   gate/up input).
 * - "act": `h2`, `ln2`, `wg`, `wu` → `y` = `silu(x2·wgᵀ) · (x2·wuᵀ)` [N, I] (the down input),
 *   `s` of it.
 * - "out": `h2`, `act`, `wd` → `y` = `h2 + act·wdᵀ` [N, D], the block output.
 *
 * The numbers follow the TypeScript forward (`src/models/decoder.ts` on the CPU backend) step by
 * step: linears are `Gemm` with `transB` (the CPU backend's product), attention is the CPU
 * backend's batched `MatMul → + mask → Softmax → MatMul` over [batch·heads, T, hd] (query heads
 * reading KV head ⌊h / rep⌋), residual adds are float32; the elementwise work the TypeScript
 * forward does in float64 (RMSNorm, RoPE with float32 cos/sin tables, the 1/√hd scale of the
 * queries, SiLU · up) is done in float64 between `Cast`s, so each value is rounded to float32
 * where the TypeScript forward rounds it.
 * @module
 */
import { ONNX_DTYPE, OnnxGraph } from "./_onnx_graph.ts";

/** ONNX TensorProto.DataType DOUBLE. */
const DOUBLE = 11;

/** A calibration stage of one block (see the module doc). */
export type BlockStage = "x1" | "attn" | "mid" | "act" | "out";

/** What a block stage graph is built from: dimensions and the constant tables. */
export interface BlockGraphDims {
  /** Hidden size D. */
  hiddenSize: number;
  /** Query heads H. */
  numHeads: number;
  /** Key/value heads (divides H). */
  numKvHeads: number;
  /** Head size hd (even). */
  headDim: number;
  /** MLP width I. */
  intermediateSize: number;
  /** RMSNorm epsilon. */
  normEps: number;
  /** Tokens per sequence T. */
  seqLen: number;
  /** RoPE cos table [T, hd/2] (float32 values), row t for position t. */
  cos: Float64Array;
  /** RoPE sin table [T, hd/2]. */
  sin: Float64Array;
  /** Additive attention mask [T, T]: 0 where query t reads key s, −∞ elsewhere (causal). */
  mask: Float32Array;
  /**
   * Blocks of queries the attention is computed in (default 8): block [a, b) reads keys [0, b)
   * only, which skips most of the masked scores (the same numbers; see the module doc).
   */
  queryBlocks?: number;
}

/**
 * The ModelProto bytes of block stage `stage` (see the module doc for inputs and outputs);
 * `stats` adds the `s` output (not for "out").
 */
export function buildBlockStageGraph(
  d: BlockGraphDims,
  stage: BlockStage,
  opts: { stats?: boolean } = {},
): Uint8Array {
  const D = d.hiddenSize, H = d.numHeads, KV = d.numKvHeads, hd = d.headDim;
  const I = d.intermediateSize, T = d.seqLen, half = hd / 2, rep = H / KV;
  const F = ONNX_DTYPE.FLOAT;
  const g = new OnnxGraph();
  const toD = (x: string) => g.node("Cast", [x], { attrs: { to: DOUBLE } });
  const toF = (x: string) => g.node("Cast", [x], { attrs: { to: F } });
  const f64 = (name: string, dims: number[], v: Float64Array) =>
    g.init(name, DOUBLE, dims, new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  const scalars = new Map<number, string>();
  /** A shared float64 scalar constant. */
  const dScalar = (v: number): string => {
    let name = scalars.get(v);
    if (!name) scalars.set(v, name = f64(`const_f64_${scalars.size}`, [], Float64Array.of(v)));
    return name;
  };
  /** x · Wᵀ, W [out, in] a graph input. */
  const linear = (x: string, w: string) => g.node("Gemm", [x, w], { attrs: { transB: 1 } });
  /** RMSNorm in float64: x · (1 / √(Σx²/d + eps)) · w, rounded to float32 once. */
  const rmsNorm = (x: string, w: string, width: number) => {
    const xd = toD(x);
    const ss = g.node("ReduceSum", [g.node("Mul", [xd, xd]), g.i64([-1])], {
      attrs: { keepdims: 1 },
    });
    const ms = g.node("Add", [g.node("Div", [ss, dScalar(width)]), epsName]);
    const s = g.node("Div", [oneName, g.node("Sqrt", [ms])]);
    return toF(g.node("Mul", [g.node("Mul", [xd, s]), toD(w)]));
  };
  /** Stats output `s` = Xᵀ X. */
  const stats = (x: string) => {
    if (!opts.stats) return;
    g.node("MatMul", [g.node("Transpose", [x], { attrs: { perm: [1, 0] } }), x], {
      outputs: ["s"],
    });
    g.output("s", F, ["cols", "cols"]);
  };
  const epsName = dScalar(d.normEps);
  const oneName = dScalar(1);
  const rows = "rows";
  const input = (name: string, cols: number | string) => g.input(name, F, [rows, cols]);
  const vec = (name: string, n: number) => g.input(name, F, [n]);
  const mat = (name: string, r: number, c: number) => g.input(name, F, [r, c]);

  if (stage === "x1") {
    const h = input("h", D);
    stats(rmsNorm(h, vec("ln1", D), D));
  } else if (stage === "attn") {
    const h = input("h", D);
    const x = rmsNorm(h, vec("ln1", D), D);
    // One product for q, q·R, k, k·R and v, R the rotate-half map folded into the weight rows
    // (row (h, i) of W·R is −row (h, i + hd/2) for i < hd/2, else row (h, i − hd/2): a row
    // permutation and exact negations, so each column is the same dot product as in x·Wᵀ).
    const rotated = (w: string, n: number) => {
      const idx = new BigInt64Array(n * hd), sign = new Float32Array(n * hd);
      for (let r = 0; r < n; r++) {
        for (let i = 0; i < hd; i++) {
          idx[r * hd + i] = BigInt(r * hd + (i < half ? i + half : i - half));
          sign[r * hd + i] = i < half ? -1 : 1;
        }
      }
      const gi = g.init(`rot_idx_${n}`, ONNX_DTYPE.INT64, [n * hd], new Uint8Array(idx.buffer));
      return g.node("Mul", [
        g.node("Gather", [w, gi], { attrs: { axis: 0 } }),
        g.f32(`rot_sign_${n}`, [n * hd, 1], sign),
      ]);
    };
    const wq = mat("wq", H * hd, D), wk = mat("wk", KV * hd, D);
    const W = g.node("Concat", [wq, rotated(wq, H), wk, rotated(wk, KV), mat("wv", KV * hd, D)], {
      attrs: { axis: 0 },
    });
    const nq = H * hd, nk = KV * hd;
    const parts5 = ["q", "q_rot", "k", "k_rot", "v"];
    g.node("Split", [linear(x, W), g.i64([nq, nq, nk, nk, nk])], {
      attrs: { axis: -1 },
      outputs: parts5,
    });
    const [q, qRot, k, kRot, v] = parts5;
    // Rotate-half RoPE in float64, as decoder.ts applyRope: (x1 cos − x2 sin, x2 cos + x1 sin)
    // = x·[cos, cos] + (x·R)·[sin, sin] per head, on [B, T, heads·hd], rounded to float32 once.
    const table = (name: string, src: Float64Array, n: number) => {
      const t = new Float64Array(T * n * hd);
      for (let p = 0; p < T; p++) {
        for (let r = 0; r < n; r++) {
          for (let i = 0; i < hd; i++) t[(p * n + r) * hd + i] = src[p * half + (i % half)];
        }
      }
      return f64(name, [T, n * hd], t);
    };
    const rope = (t: string, tRot: string, n: number) => {
      const shape = g.i64([-1, T, n * hd]);
      const c = toD(g.node("Reshape", [t, shape])), r = toD(g.node("Reshape", [tRot, shape]));
      return toF(g.node("Add", [
        g.node("Mul", [c, table(`rope_cos_${n}`, d.cos, n)]),
        g.node("Mul", [r, table(`rope_sin_${n}`, d.sin, n)]),
      ]));
    };
    // Queries: scaled by 1/√hd in float64 after RoPE and rounded again (the CPU backend's
    // attention input), [B, H, T, hd].
    const qs = toF(g.node("Mul", [toD(rope(q, qRot, H)), dScalar(1 / Math.sqrt(hd))]));
    const Q = g.node("Transpose", [g.node("Reshape", [qs, g.i64([-1, T, H, hd])])], {
      attrs: { perm: [0, 2, 1, 3] },
    });
    // Keys [B, H, hd, T] and values [B, H, T, hd], KV head ⌊h / rep⌋ repeated for query head h.
    const kvHeads = (t: string, perm: number[], last: number[]) => {
      const x = g.node("Transpose", [t], { attrs: { perm } }); // [B, KV, a, b]
      if (rep === 1) return x;
      const e = g.node("Expand", [
        g.node("Unsqueeze", [x, g.i64([2])]),
        g.i64([1, 1, rep, 1, 1]),
      ]);
      return g.node("Reshape", [e, g.i64([-1, H, ...last])]);
    };
    const K = kvHeads(
      g.node("Reshape", [rope(k, kRot, KV), g.i64([-1, T, KV, hd])]),
      [0, 2, 3, 1],
      [hd, T],
    );
    const V = kvHeads(g.node("Reshape", [v, g.i64([-1, T, KV, hd])]), [0, 2, 1, 3], [T, hd]);
    // Causal attention per block of queries [a, b) over keys [0, b) only: the keys after b are
    // masked for every query of the block, so the scores, probabilities and outputs are the same
    // numbers as over all T keys, without computing the masked part of the scores.
    const n = Math.max(1, Math.min(T, Math.floor(d.queryBlocks ?? 8)));
    const bound = (c: number) => Math.ceil((c * T) / n);
    const parts: string[] = [];
    for (let c = 0; c < n; c++) {
      const a = bound(c), e = bound(c + 1);
      if (e <= a) continue;
      const slice = (x: string, from: number, to: number, axis: number) =>
        from === 0 && to === T
          ? x
          : g.node("Slice", [x, g.i64([from]), g.i64([to]), g.i64([axis])]);
      const mb = new Float32Array((e - a) * e);
      for (let t = a; t < e; t++) mb.set(d.mask.subarray(t * T, t * T + e), (t - a) * e);
      const m = g.f32(`mask_${c}`, [e - a, e], mb);
      const scores = g.node("Add", [g.node("MatMul", [slice(Q, a, e, 2), slice(K, 0, e, 3)]), m]);
      const p = g.node("Softmax", [scores], { attrs: { axis: -1 } });
      parts.push(g.node("MatMul", [p, slice(V, 0, e, 2)])); // [B, H, e − a, hd]
    }
    const o = parts.length === 1 ? parts[0] : g.node("Concat", parts, { attrs: { axis: 2 } });
    const y = g.node("Reshape", [
      g.node("Transpose", [o], { attrs: { perm: [0, 2, 1, 3] } }),
      g.i64([-1, H * hd]),
    ], { outputs: ["y"] });
    g.output("y", F, [rows, H * hd]);
    stats(y);
  } else if (stage === "mid") {
    const h = input("h", D);
    const a = input("attn", H * hd);
    const h2 = g.node("Add", [h, linear(a, mat("wo", D, H * hd))], { outputs: ["y"] });
    g.output("y", F, [rows, D]);
    stats(rmsNorm(h2, vec("ln2", D), D));
  } else if (stage === "act") {
    const x = rmsNorm(input("h2", D), vec("ln2", D), D);
    const gate = toD(linear(x, mat("wg", I, D)));
    const up = toD(linear(x, mat("wu", I, D)));
    // silu(gate) · up in float64: (gate / (1 + e^−gate)) · up.
    const den = g.node("Add", [oneName, g.node("Exp", [g.node("Neg", [gate])])]);
    const act = toF(g.node("Mul", [g.node("Div", [gate, den]), up]));
    g.node("Identity", [act], { outputs: ["y"] });
    g.output("y", F, [rows, I]);
    stats("y");
  } else {
    const h2 = input("h2", D);
    const act = input("act", I);
    g.node("Add", [h2, linear(act, mat("wd", D, I))], { outputs: ["y"] });
    g.output("y", F, [rows, D]);
  }
  return g.encode(`quantlab-block-${stage}`);
}
