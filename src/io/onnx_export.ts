/**
 * ONNX export of a Llama-family decoder (the `format: "onnx"` branch of `exportModel`): one
 * `onnx/model.onnx` graph with past key/values in the layout transformers.js feeds a
 * `model_type: "llama"` model, and 4-bit grid layers as onnxruntime's `com.microsoft`
 * MatMulNBits contrib op.
 *
 * Graph interface (what transformers.js 4.x `LlamaForCausalLM` builds its feeds from):
 * inputs `input_ids`, `attention_mask`, `position_ids` (int64 `[batch_size, sequence_length]`,
 * the mask `[batch_size, total_sequence_length]`) and `past_key_values.{i}.key|value` (float32
 * `[batch_size, num_key_value_heads, past_sequence_length, head_dim]`; transformers.js reads
 * these dims from the session metadata and fills the symbolic ones: `batch_size` by the batch,
 * others by 0, so the batch dim must be named `batch_size`); outputs `logits` (float32
 * `[batch_size, sequence_length, vocab_size]`) and `present.{i}.key|value` (the past
 * concatenated with this step's keys/values along the sequence).
 *
 * The graph is plain ONNX (opset 17) plus MatMulNBits: RMSNorm as Mul/ReduceMean/Add/Sqrt/
 * Reciprocal/Mul; RoPE in HF's rotate-half order (the layout quantlab's Llama weights are in),
 * angles `position_ids · inv_freq` in float32 as HF computes them; grouped-query attention by
 * repeating each key/value head over its `numHeads / numKvHeads` query heads; a causal mask
 * (query at `past + s` sees keys `≤ past + s`) and the padding mask, applied with `Where` to
 * the float32 minimum so a fully padded row stays finite; SwiGLU MLP; tied or untied lm_head.
 *
 * MatMulNBits layout (onnxruntime ContribOperators.md, `bits = 4`): `B` uint8
 * `[N, n_blocks, block_size / 2]` with `n_blocks = ceil(K / block_size)`, codes along K packed two
 * per byte, the lower-index code in the low nibble, a short last block padded; `scales` float32
 * `[N · n_blocks]`; optional `zero_points` uint8 `[N · ceil(n_blocks / 2)]`, two 4-bit zero points
 * per byte (low nibble first), each row starting on a new byte; without `zero_points` the zero is
 * 8. Dequantized as `(code − zero) · scale`, the same grid as quantlab's fake-quant weight, so a
 * layer keeps its own codes and f32 scales exactly. A layer fits when it is a 4-bit uniform grid
 * whose group size is a power of two ≥ 16 (onnxruntime's rule for `block_size`) and integer
 * zeros in 0..15. GPTQ act-order layers (`g_idx` groups are contiguous after sorting the columns
 * by group) keep their codes too: B holds the columns in group order and the graph gathers the
 * input's columns in that order before MatMulNBits (exact; the op's deprecated `g_idx` input is
 * not used). Every other linear layer is a float32 MatMul of its (fake-quant) weight, listed in
 * the report.
 *
 * Weights go inline into `model.onnx` unless `externalData` is true (default: true when the
 * config's float32 weight bytes exceed protobuf's 2 GiB limit): then every initializer of 1 KiB
 * or more is streamed to `onnx/model.onnx_data` as it is made (one source tensor in memory at a
 * time) and `config.json` tells transformers.js `use_external_data_format: true`. Inline weights
 * past 2 GiB are refused.
 * @module
 */
import { FormatError, OptionError, UnsupportedError } from "../errors.ts";
import { maxAbsDiff, type Tensor } from "../tensor.ts";
import { pathExists } from "./fs.ts";
import { ONNX_DTYPE, OnnxGraph } from "./_onnx_graph.ts";
import { tokenizerJsonFromLlama2c } from "./_tokenizer_json.ts";
import { llamaTokenizerConfig, writeTokenizerJson } from "./tokenizer.ts";
import type {
  ExportableModel,
  ExportedTensor,
  ExportOptions,
  ExportReport,
  PackedLayer,
} from "./export.ts";

/** A linear layer in MatMulNBits form. */
export interface MatMulNBitsWeight {
  /** Input features (the layer's columns). */
  K: number;
  /** Output features (the layer's rows). */
  N: number;
  /** Bits per code (4). */
  bits: number;
  /** Columns per block. */
  blockSize: number;
  /** `ceil(K / blockSize)`. */
  nBlocks: number;
  /** `[N, nBlocks, blockSize · bits / 8]` packed codes. */
  B: Uint8Array;
  /** `[N · nBlocks]` scales. */
  scales: Float32Array;
  /** `[N · ceil(nBlocks · bits / 8)]` packed zero points, absent for the default zero 8. */
  zeroPoints?: Uint8Array;
  /**
   * Act-order: B's column `k` is the layer's column `perm[k]` (the input is gathered by `perm`
   * before MatMulNBits); absent for natural order.
   */
  perm?: Int32Array;
}

/**
 * The column order that makes `gIdx`'s groups contiguous blocks of `bs` (GPTQ act-order:
 * columns sorted by group, stable): null when already natural, undefined when no order does
 * (a group that does not hold exactly `bs` columns, the last excepted).
 */
function groupOrder(gIdx: Int32Array, bs: number): Int32Array | null | undefined {
  const K = gIdx.length;
  if (gIdx.every((g, j) => g === Math.floor(j / bs))) return null;
  const perm = Int32Array.from({ length: K }, (_, j) => j).sort((a, b) =>
    gIdx[a] - gIdx[b] || a - b
  );
  for (let i = 0; i < K; i++) if (gIdx[perm[i]] !== Math.floor(i / bs)) return undefined;
  return perm;
}

/**
 * Why a packed layer cannot be written as MatMulNBits with its own codes (null when it can):
 * 4-bit, power-of-two group size ≥ 16, groups that are contiguous blocks in natural order or in
 * some column order (act-order `g_idx`: the graph gathers the input columns in that order
 * first), integer zeros in 0..15, one scale per (row, block).
 */
export function matMulNBitsFit(meta: PackedLayer): string | null {
  const [N, K] = meta.shape;
  if (!meta.codes || !meta.scales || !meta.zeros) return `${meta.method} has no codes/scales/zeros`;
  if (meta.bits !== 4) return `${meta.bits}-bit codes (MatMulNBits is written for 4-bit grids)`;
  const bs = meta.groupSize;
  if (!(bs >= 16 && (bs & (bs - 1)) === 0)) {
    return `group size ${bs} is not a power of two ≥ 16 (MatMulNBits block_size)`;
  }
  if (meta.gIdx && meta.gIdx.length !== K) return `g_idx has ${meta.gIdx.length} entries, not ${K}`;
  if (meta.gIdx && groupOrder(meta.gIdx, bs) === undefined) {
    return "g_idx groups are not contiguous blocks in any column order";
  }
  const nb = Math.ceil(K / bs);
  if (meta.scales.length !== N * nb || meta.zeros.length !== N * nb) {
    return `${meta.scales.length} scales for ${N} rows × ${nb} blocks`;
  }
  if (meta.zeros.some((z) => !Number.isInteger(z) || z < 0 || z > 15)) {
    return "zero points are not integers in 0..15";
  }
  if (meta.codes.some((c) => c > 15)) return "codes outside 0..15";
  return null;
}

/**
 * Packs a 4-bit grid layer (`matMulNBitsFit` null) into MatMulNBits tensors. Zero points are
 * written when a zero differs from 8 or `opts.zeroPoints` is true.
 */
export function packMatMulNBits(
  meta: PackedLayer,
  opts: { zeroPoints?: boolean } = {},
): MatMulNBitsWeight {
  const why = matMulNBitsFit(meta);
  if (why) throw new UnsupportedError(`MatMulNBits: ${why}`);
  const [N, K] = meta.shape;
  const bs = meta.groupSize, nb = Math.ceil(K / bs), blob = bs / 2;
  const codes = meta.codes!, zeros = meta.zeros!;
  const withZp = opts.zeroPoints || zeros.some((z) => z !== 8);
  const perm = meta.gIdx ? groupOrder(meta.gIdx, bs) ?? undefined : undefined;
  const B = new Uint8Array(N * nb * blob);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < nb; b++) {
      const pad = zeros[n * nb + b]; // padded columns decode to (z − z) · s = 0
      const o = (n * nb + b) * blob;
      for (let i = 0; i < blob; i++) {
        const k0 = b * bs + 2 * i, k1 = k0 + 1;
        const lo = k0 < K ? codes[n * K + (perm ? perm[k0] : k0)] : pad;
        const hi = k1 < K ? codes[n * K + (perm ? perm[k1] : k1)] : pad;
        B[o + i] = lo | (hi << 4);
      }
    }
  }
  let zeroPoints: Uint8Array | undefined;
  if (withZp) {
    const zr = Math.ceil(nb / 2);
    zeroPoints = new Uint8Array(N * zr);
    for (let n = 0; n < N; n++) {
      for (let b = 0; b < nb; b++) {
        zeroPoints[n * zr + (b >> 1)] |= zeros[n * nb + b] << ((b & 1) * 4);
      }
    }
  }
  return {
    K,
    N,
    bits: 4,
    blockSize: bs,
    nBlocks: nb,
    B,
    scales: meta.scales!.slice(),
    zeroPoints,
    perm,
  };
}

/**
 * Decodes MatMulNBits tensors back to the layer's `[N, K]` float weight (`(q − zp) · scale`,
 * columns put back in the layer's order when `w.perm` is set).
 */
export function unpackMatMulNBits(w: MatMulNBitsWeight): Float32Array {
  const { K, N, blockSize: bs, nBlocks: nb } = w;
  const blob = bs / 2, zr = Math.ceil(nb / 2);
  const out = new Float32Array(N * K);
  for (let n = 0; n < N; n++) {
    for (let k = 0; k < K; k++) {
      const b = Math.floor(k / bs), i = k % bs;
      const byte = w.B[(n * nb + b) * blob + (i >> 1)];
      const q = (i & 1) ? byte >> 4 : byte & 15;
      const z = w.zeroPoints ? (w.zeroPoints[n * zr + (b >> 1)] >> ((b & 1) * 4)) & 15 : 8;
      out[n * K + (w.perm ? w.perm[k] : k)] = Math.fround((q - z) * w.scales[n * nb + b]);
    }
  }
  return out;
}

/** Options of {@linkcode exportOnnx} beyond `exportModel`'s. */
export interface OnnxExportContext {
  /** `exportModel`'s options. */
  options: ExportOptions;
  /** The llama2.c tokenizer `.bin`, if the model has one. */
  tokBin: string | null;
  /** Why a packed layer's codes are not on a plain grid (QuIP, FrameQuant, outliers), or null. */
  nonGridReason: (meta: PackedLayer) => string | null;
}

const MAX_BYTES = 2 ** 31 - 2 ** 24; // protobuf's 2 GiB message limit, less room for the graph

/**
 * Writes `model` to `dir` as `onnx/model.onnx` + `config.json`, `generation_config.json`,
 * tokenizer files and `export_report.json`, atomically (temp folder, then rename). Called by
 * `exportModel` with `format: "onnx"` (which checks `overwrite` first).
 */
export async function exportOnnx(
  model: ExportableModel,
  dir: string,
  ctx: OnnxExportContext,
): Promise<ExportReport> {
  const { options, tokBin, nonGridReason } = ctx;
  if ((options.type ?? "auto") !== "auto") {
    throw new OptionError(
      "type",
      `onnx export chooses per layer (MatMulNBits or float MatMul); got ${options.type}`,
    );
  }
  if ((options.fallback ?? "f32") !== "f32") {
    throw new OptionError(
      "fallback",
      `onnx export writes float tensors as f32; got ${options.fallback}`,
    );
  }
  const nonGrid = options.nonGrid ?? "refuse";
  if (nonGrid !== "refuse" && nonGrid !== "dequantize") {
    throw new OptionError("nonGrid", `must be "refuse" or "dequantize", got ${nonGrid}`);
  }
  const cfg = model.config;
  if (
    cfg.family !== "llama" || cfg.qkvBias || cfg.oBias || cfg.mlpBias || cfg.activation !== "silu"
  ) {
    throw new UnsupportedError(
      `onnx export: only bias-free SiLU Llama-family models are supported (got family ${cfg.family}, ` +
        `activation ${cfg.activation}${cfg.qkvBias || cfg.oBias || cfg.mlpBias ? ", biases" : ""})`,
    );
  }
  if (cfg.ropeScaling) {
    throw new UnsupportedError("onnx export: RoPE scaling is not written yet; this model has one");
  }
  if (cfg.numHeads % cfg.numKvHeads !== 0) {
    throw new UnsupportedError(
      `onnx export: ${cfg.numHeads} query heads are not a multiple of ${cfg.numKvHeads} kv heads`,
    );
  }
  const packed = (model.packed ?? {}) as Record<string, PackedLayer>;
  for (const [name, meta] of Object.entries(packed)) {
    const why = nonGridReason(meta);
    if (why && nonGrid === "refuse") {
      throw new UnsupportedError(
        `onnx export: layer ${name} (${meta.method}) cannot be stored as MatMulNBits: ${why}; ` +
          `pass nonGrid: "dequantize" to write its dequantized weight as a float32 MatMul`,
      );
    }
  }
  const names = new Set(model.weights.names());
  const need = ["model.embed_tokens.weight", "model.norm.weight"];
  if (!cfg.tieWordEmbeddings) need.push("lm_head.weight");
  for (let l = 0; l < cfg.numLayers; l++) {
    for (
      const s of [
        "input_layernorm",
        "post_attention_layernorm",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
      ]
    ) need.push(`model.layers.${l}.${s}.weight`);
  }
  for (const n of need) {
    if (!names.has(n)) throw new FormatError(model.source, `tensor "${n}" is missing`);
  }

  const D = cfg.hiddenSize, H = cfg.numHeads, KV = cfg.numKvHeads, hd = cfg.headDim;
  const V = cfg.vocabSize, L = cfg.numLayers;
  const report: ExportedTensor[] = [];
  const notes: string[] = [];
  // Weight bytes at float32 (an upper bound: 4-bit layers take about 1/7 of it).
  const params = V * D * (cfg.tieWordEmbeddings ? 1 : 2) + D +
    L * (2 * D + D * (H + 2 * KV) * hd + H * hd * D + 3 * D * cfg.intermediateSize);
  const external = options.externalData ?? params * 4 > MAX_BYTES;
  if (typeof external !== "boolean") {
    throw new OptionError("externalData", `must be true or false, got ${external}`);
  }
  const tmp = `${dir}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(`${tmp}/onnx`, { recursive: true });
  const g = new OnnxGraph(
    external
      ? { external: { path: `${tmp}/onnx/model.onnx_data`, location: "model.onnx_data" } }
      : {},
  );
  try {
    const get = async (n: string, shape: number[]): Promise<Tensor> => {
      const t = await model.weights.get(n);
      model.weights.evict?.([n]);
      if (t.data.length !== shape.reduce((a, b) => a * b, 1)) {
        throw new FormatError(
          model.source,
          `tensor "${n}" has shape [${t.shape}], config implies [${shape}]`,
        );
      }
      if (g.inlineBytes + t.data.byteLength > MAX_BYTES) {
        throw new UnsupportedError(
          `onnx export: the weights exceed protobuf's 2 GiB limit at ${n}; pass externalData: true`,
        );
      }
      return t;
    };
    const F = ONNX_DTYPE.FLOAT, I64 = ONNX_DTYPE.INT64;

    /** y = x · Wᵀ for linear `p` ([rows, cols]): MatMulNBits from its codes, else float MatMul. */
    const linear = async (p: string, x: string, rows: number, cols: number): Promise<string> => {
      const meta = packed[p];
      const W = await get(`${p}.weight`, [rows, cols]);
      const nonGridWhy = meta ? nonGridReason(meta) : null;
      const fitWhy = meta && !nonGridWhy ? matMulNBitsFit(meta) : null;
      if (meta && !nonGridWhy && !fitWhy) {
        const w = packMatMulNBits(meta);
        const err = maxAbsDiff(unpackMatMulNBits(w), W.data);
        const ins = [
          g.init(`${p}.MatMulNBits.B`, ONNX_DTYPE.UINT8, [rows, w.nBlocks, w.blockSize / 2], w.B),
          g.f32(`${p}.MatMulNBits.scales`, [rows * w.nBlocks], w.scales),
        ];
        if (w.zeroPoints) {
          ins.push(
            g.init(
              `${p}.MatMulNBits.zero_points`,
              ONNX_DTYPE.UINT8,
              [w.zeroPoints.length],
              w.zeroPoints,
            ),
          );
        }
        const rec: ExportedTensor = {
          name: `${p}.weight`,
          gguf: `${p}.MatMulNBits.B`,
          type: `MatMulNBits-4bit-b${w.blockSize}${w.zeroPoints ? "-zp" : ""}${
            w.perm ? "-actorder" : ""
          }`,
          how: "codes",
          maxAbsErr: err,
        };
        let xin = x;
        if (w.perm) {
          const perm = g.init(
            `${p}.MatMulNBits.perm`,
            I64,
            [cols],
            new Uint8Array(BigInt64Array.from(w.perm, (v) => BigInt(v)).buffer),
          );
          xin = g.node("Gather", [x, perm], { attrs: { axis: -1 } });
          rec.note = "act-order: the input columns are gathered in g_idx's group order first";
        }
        report.push(rec);
        return g.node("MatMulNBits", [xin, ...ins], {
          domain: "com.microsoft",
          attrs: { K: cols, N: rows, bits: 4, block_size: w.blockSize },
        });
      }
      const rec: ExportedTensor = {
        name: `${p}.weight`,
        gguf: `${p}.weight.T`,
        type: "F32",
        how: meta ? "dequantized" : "float",
        maxAbsErr: 0,
      };
      if (meta) {
        rec.note = `${meta.method} ${meta.bits}-bit g${meta.groupSize}: ${
          nonGridWhy ?? fitWhy
        }; its fake-quant weight is a float32 MatMul`;
        notes.push(`${p}: ${rec.note}`);
      }
      report.push(rec);
      return g.matmulT(x, `${p}.weight`, W.data, rows, cols);
    };
    const rmsNorm = async (n: string, x: string): Promise<string> => {
      const w = await get(n, [D]);
      report.push({ name: n, gguf: n, type: "F32", how: "float", maxAbsErr: 0 });
      return g.rmsNorm(x, n, w.data, cfg.normEps);
    };

    // Inputs.
    const ids = g.input("input_ids", I64, ["batch_size", "sequence_length"]);
    const mask = g.input("attention_mask", I64, ["batch_size", "total_sequence_length"]);
    const pos = g.input("position_ids", I64, ["batch_size", "sequence_length"]);
    for (let l = 0; l < L; l++) {
      for (const kv of ["key", "value"]) {
        g.input(`past_key_values.${l}.${kv}`, F, ["batch_size", KV, "past_sequence_length", hd]);
      }
    }
    // Embedding (kept as [V, D] for Gather; the tied head transposes it in the graph).
    const E = await get("model.embed_tokens.weight", [V, D]);
    report.push({
      name: "model.embed_tokens.weight",
      gguf: "model.embed_tokens.weight",
      type: "F32",
      how: "float",
      maxAbsErr: 0,
    });
    const embed = g.f32("model.embed_tokens.weight", [V, D], E.data);
    let x = g.node("Gather", [embed, ids], { attrs: { axis: 0 } });

    // RoPE tables [B, 1, S, hd]: angle = position · inv_freq in float32, duplicated (rotate-half).
    const half = hd / 2;
    const inv = new Float32Array(half);
    for (let i = 0; i < half; i++) inv[i] = 1 / cfg.ropeTheta ** ((2 * i) / hd);
    const posF = g.node("Cast", [pos], { attrs: { to: F } });
    const ang = g.node("Mul", [
      g.node("Unsqueeze", [posF, g.i64([-1])]),
      g.f32("rope.inv_freq", [half], inv),
    ]);
    const emb = g.node("Concat", [ang, ang], { attrs: { axis: -1 } });
    const cos = g.node("Unsqueeze", [g.node("Cos", [emb]), g.i64([1])]);
    const sin = g.node("Unsqueeze", [g.node("Sin", [emb]), g.i64([1])]);
    const rope = (t: string) => {
      const t1 = g.node("Slice", [t, g.i64([0]), g.i64([half]), g.i64([3])]);
      const t2 = g.node("Slice", [t, g.i64([half]), g.i64([hd]), g.i64([3])]);
      const rot = g.node("Concat", [g.node("Neg", [t2]), t1], { attrs: { axis: 3 } });
      return g.node("Add", [g.node("Mul", [t, cos]), g.node("Mul", [rot, sin])]);
    };

    // Mask [B, 1, S, T]: key j visible to query s when j ≤ past + s and attention_mask[b, j] = 1.
    const pastLen = g.node("Shape", ["past_key_values.0.key"], { attrs: { start: 2, end: 3 } });
    const seqLen = g.node("Shape", [ids], { attrs: { start: 1, end: 2 } });
    const total = g.node("Add", [pastLen, seqLen]);
    const sq = (t: string) => g.node("Squeeze", [t, g.i64([0])]);
    const one = g.i64([1], true), zero = g.i64([0], true);
    const qPos = g.node("Range", [sq(pastLen), sq(total), one]);
    const kPos = g.node("Range", [zero, sq(total), one]);
    const causal = g.node("LessOrEqual", [
      g.node("Unsqueeze", [kPos, g.i64([0])]),
      g.node("Unsqueeze", [qPos, g.i64([1])]),
    ]);
    const pad = g.node("Cast", [g.node("Unsqueeze", [mask, g.i64([1, 2])])], {
      attrs: { to: ONNX_DTYPE.BOOL },
    });
    const allowed = g.node("And", [causal, pad]);
    const negMin = g.scalar(-3.4028234663852886e38);
    const rep = H / KV;

    for (let l = 0; l < L; l++) {
      const pre = `model.layers.${l}`;
      const h = await rmsNorm(`${pre}.input_layernorm.weight`, x);
      const heads = (t: string, n: number) =>
        g.node("Transpose", [g.node("Reshape", [t, g.i64([0, 0, n, hd])])], {
          attrs: { perm: [0, 2, 1, 3] },
        });
      const q = rope(heads(await linear(`${pre}.self_attn.q_proj`, h, H * hd, D), H));
      const k = rope(heads(await linear(`${pre}.self_attn.k_proj`, h, KV * hd, D), KV));
      const v = heads(await linear(`${pre}.self_attn.v_proj`, h, KV * hd, D), KV);
      const kAll = g.node("Concat", [`past_key_values.${l}.key`, k], {
        attrs: { axis: 2 },
        outputs: [`present.${l}.key`],
      });
      const vAll = g.node("Concat", [`past_key_values.${l}.value`, v], {
        attrs: { axis: 2 },
        outputs: [`present.${l}.value`],
      });
      const repeat = (t: string) =>
        rep === 1 ? t : g.node("Reshape", [
          g.node("Expand", [g.node("Unsqueeze", [t, g.i64([2])]), g.i64([1, 1, rep, 1, 1])]),
          g.i64([0, H, -1, hd]),
        ]);
      const kT = g.node("Transpose", [repeat(kAll)], { attrs: { perm: [0, 1, 3, 2] } });
      const scores = g.node("Mul", [g.node("MatMul", [q, kT]), g.scalar(1 / Math.sqrt(hd))]);
      const probs = g.node("Softmax", [g.node("Where", [allowed, scores, negMin])], {
        attrs: { axis: -1 },
      });
      const ctxv = g.node("MatMul", [probs, repeat(vAll)]);
      const merged = g.node("Reshape", [
        g.node("Transpose", [ctxv], { attrs: { perm: [0, 2, 1, 3] } }),
        g.i64([0, 0, H * hd]),
      ]);
      x = g.node("Add", [x, await linear(`${pre}.self_attn.o_proj`, merged, D, H * hd)]);
      const h2 = await rmsNorm(`${pre}.post_attention_layernorm.weight`, x);
      const I = cfg.intermediateSize;
      const gate = await linear(`${pre}.mlp.gate_proj`, h2, I, D);
      const up = await linear(`${pre}.mlp.up_proj`, h2, I, D);
      const act = g.swiglu(gate, up);
      x = g.node("Add", [x, await linear(`${pre}.mlp.down_proj`, act, D, I)]);
    }
    const hN = await rmsNorm("model.norm.weight", x);
    if (names.has("lm_head.weight")) {
      // As quantlab's head: an lm_head tensor when the model has one, else the tied embedding.
      g.node("Identity", [await linear("lm_head", hN, V, D)], { outputs: ["logits"] });
    } else {
      const Et = g.node("Transpose", [embed], { attrs: { perm: [1, 0] } });
      g.node("MatMul", [hN, Et], { outputs: ["logits"] });
    }
    g.output("logits", F, ["batch_size", "sequence_length", V]);
    for (let l = 0; l < L; l++) {
      for (const kv of ["key", "value"]) {
        g.output(`present.${l}.${kv}`, F, ["batch_size", KV, "total_sequence_length", hd]);
      }
    }
    const nbits = report.filter((t) => t.type.startsWith("MatMulNBits"));
    notes.push(
      `${nbits.length} linear layers as MatMulNBits (4-bit), ${
        report.filter((t) => t.how === "dequantized").length
      } quantized layers as float32 MatMul`,
    );

    g.close();
    await g.write(`${tmp}/onnx/model.onnx`);
    const { llamaConfigJson } = await import("./export.ts");
    await Deno.writeTextFile(
      `${tmp}/config.json`,
      JSON.stringify(
        {
          ...llamaConfigJson(cfg),
          "transformers.js_config": external
            ? { dtype: "fp32", use_external_data_format: true }
            : { dtype: "fp32" },
        },
        null,
        2,
      ),
    );
    await Deno.writeTextFile(
      `${tmp}/generation_config.json`,
      JSON.stringify({ bos_token_id: cfg.bosTokenId, eos_token_id: cfg.eosTokenId }, null, 2),
    );
    const files = ["onnx/model.onnx", "config.json", "generation_config.json"];
    if (external) files.splice(1, 0, "onnx/model.onnx_data");
    if (tokBin) {
      const tokBytes = await Deno.readFile(tokBin);
      await writeTokenizerJson(tmp, tokenizerJsonFromLlama2c(tokBytes, { file: tokBin }), {
        config: llamaTokenizerConfig(),
      });
      files.push("tokenizer.json", "tokenizer_config.json");
    } else {
      for (const f of ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]) {
        if (model.tokenizerPath && (await pathExists(`${model.tokenizerPath}/${f}`))) {
          await Deno.copyFile(`${model.tokenizerPath}/${f}`, `${tmp}/${f}`);
          files.push(f);
        }
      }
      if (!files.includes("tokenizer.json")) {
        notes.push("no tokenizer files were found to write beside the graph");
      }
    }
    files.push("export_report.json");
    const out: ExportReport = { format: "onnx", dir, files, tensors: report, notes };
    await Deno.writeTextFile(`${tmp}/export_report.json`, JSON.stringify(out, null, 1));
    if (await pathExists(dir)) {
      const old = `${dir}.old-${crypto.randomUUID().slice(0, 8)}`;
      await Deno.rename(dir, old);
      await Deno.rename(tmp, dir);
      await Deno.remove(old, { recursive: true });
    } else {
      await Deno.rename(tmp, dir);
    }
    return out;
  } catch (e) {
    g.close();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}
