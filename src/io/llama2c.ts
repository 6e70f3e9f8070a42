/**
 * llama2.c checkpoints (karpathy/llama2.c `export.py` legacy format): a header of 7 little-endian
 * int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size
 * means the classifier is stored separately), then float32 weights in llama2.c order. q/k rows are
 * stored in llama2.c's interleaved RoPE layout and are permuted here to Hugging Face's rotate-half
 * layout, so one forward serves both.
 * @module
 */
import { FormatError } from "../errors.ts";
import { readFileChecked } from "./fs.ts";
import type { Tensor } from "../tensor.ts";
import { firstNonFinite } from "../tensor.ts";
import { NonFiniteError } from "../errors.ts";

/** The llama2.c header. */
export interface Llama2cHeader {
  /** Model width. */
  dim: number;
  /** MLP width. */
  hiddenDim: number;
  /** Blocks. */
  nLayers: number;
  /** Query heads. */
  nHeads: number;
  /** KV heads. */
  nKvHeads: number;
  /** Vocabulary size (absolute value). */
  vocabSize: number;
  /** Context length. */
  seqLen: number;
  /** True when the classifier is the token embedding (positive vocab_size). */
  sharedClassifier: boolean;
}

/** Parses the 28-byte header. */
export function parseLlama2cHeader(bytes: Uint8Array, file: string): Llama2cHeader {
  if (bytes.length < 28) {
    throw new FormatError(file, `llama2.c: ${bytes.length} bytes, shorter than the 28-byte header`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, 28);
  const h = Array.from({ length: 7 }, (_, i) => dv.getInt32(i * 4, true));
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocab, seqLen] = h;
  if (
    dim <= 0 || hiddenDim <= 0 || nLayers <= 0 || nHeads <= 0 || nKvHeads <= 0 || seqLen <= 0 ||
    vocab === 0 || dim % nHeads !== 0 || nHeads % nKvHeads !== 0
  ) {
    throw new FormatError(file, `llama2.c: implausible header [${h.join(", ")}]`);
  }
  return {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize: Math.abs(vocab),
    seqLen,
    sharedClassifier: vocab > 0,
  };
}

/** The HF-style config.json object equivalent to a llama2.c header. */
export function llama2cConfig(h: Llama2cHeader): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: h.dim,
    intermediate_size: h.hiddenDim,
    num_hidden_layers: h.nLayers,
    num_attention_heads: h.nHeads,
    num_key_value_heads: h.nKvHeads,
    vocab_size: h.vocabSize,
    max_position_embeddings: h.seqLen,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    hidden_act: "silu",
    tie_word_embeddings: h.sharedClassifier,
    bos_token_id: 1,
    eos_token_id: 2,
  };
}

/** Permutes q/k rows of one [nHeads·hd, in] matrix from interleaved pairs to rotate-half. */
export function interleavedToRotateHalf(
  w: Float32Array,
  nHeads: number,
  cols: number,
): Float32Array {
  const rows = w.length / cols;
  const hd = rows / nHeads;
  const half = hd / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < nHeads; h++) {
    for (let j = 0; j < half; j++) {
      const src0 = (h * hd + 2 * j) * cols;
      const src1 = (h * hd + 2 * j + 1) * cols;
      out.set(w.subarray(src0, src0 + cols), (h * hd + j) * cols);
      out.set(w.subarray(src1, src1 + cols), (h * hd + half + j) * cols);
    }
  }
  return out;
}

/** Reads a whole llama2.c checkpoint into HF-named tensors (q/k permuted to rotate-half). */
export async function readLlama2c(
  file: string,
): Promise<
  { header: Llama2cHeader; config: Record<string, unknown>; tensors: Record<string, Tensor> }
> {
  const bytes = await readFileChecked(file, "llama2.c checkpoint");
  const h = parseLlama2cHeader(bytes, file);
  const { dim, hiddenDim: hid, nLayers: L, nHeads, nKvHeads, vocabSize: V, seqLen } = h;
  const hd = dim / nHeads;
  const kvDim = nKvHeads * hd;
  const sizes = [
    V * dim,
    L * dim,
    L * dim * dim,
    L * kvDim * dim,
    L * kvDim * dim,
    L * dim * dim,
    L * dim,
    L * hid * dim,
    L * dim * hid,
    L * hid * dim,
    dim,
    seqLen * hd / 2,
    seqLen * hd / 2,
  ];
  let total = sizes.reduce((a, b) => a + b, 0);
  if (!h.sharedClassifier) total += V * dim;
  const expected = 28 + total * 4;
  if (bytes.length !== expected) {
    throw new FormatError(
      file,
      `llama2.c: header [dim ${dim}, hidden ${hid}, layers ${L}, heads ${nHeads}/${nKvHeads}, vocab ${V}, seq ${seqLen}] needs ${expected} bytes, file has ${bytes.length}`,
    );
  }
  const all = new Float32Array(
    bytes.buffer.slice(bytes.byteOffset + 28, bytes.byteOffset + expected) as ArrayBuffer,
  );
  const bad = firstNonFinite(all);
  if (bad >= 0) {
    throw new NonFiniteError(`${file}: llama2.c weights hold a non-finite value at float ${bad}`);
  }
  let o = 0;
  const take = (n: number) => {
    const s = all.subarray(o, o + n);
    o += n;
    return s;
  };
  const emb = take(V * dim);
  const rmsAtt = take(L * dim);
  const wq = take(L * dim * dim);
  const wk = take(L * kvDim * dim);
  const wv = take(L * kvDim * dim);
  const wo = take(L * dim * dim);
  const rmsFfn = take(L * dim);
  const w1 = take(L * hid * dim);
  const w2 = take(L * dim * hid);
  const w3 = take(L * hid * dim);
  const rmsFinal = take(dim);
  take(seqLen * hd / 2);
  take(seqLen * hd / 2);
  const t = (shape: number[], data: Float32Array): Tensor => ({ shape, data: data.slice() });
  const tensors: Record<string, Tensor> = { "model.embed_tokens.weight": t([V, dim], emb) };
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    const sl = (a: Float32Array, n: number) => a.subarray(l * n, (l + 1) * n);
    tensors[`${p}.input_layernorm.weight`] = t([dim], sl(rmsAtt, dim));
    tensors[`${p}.self_attn.q_proj.weight`] = {
      shape: [dim, dim],
      data: interleavedToRotateHalf(sl(wq, dim * dim), nHeads, dim),
    };
    tensors[`${p}.self_attn.k_proj.weight`] = {
      shape: [kvDim, dim],
      data: interleavedToRotateHalf(sl(wk, kvDim * dim), nKvHeads, dim),
    };
    tensors[`${p}.self_attn.v_proj.weight`] = t([kvDim, dim], sl(wv, kvDim * dim));
    tensors[`${p}.self_attn.o_proj.weight`] = t([dim, dim], sl(wo, dim * dim));
    tensors[`${p}.post_attention_layernorm.weight`] = t([dim], sl(rmsFfn, dim));
    tensors[`${p}.mlp.gate_proj.weight`] = t([hid, dim], sl(w1, hid * dim));
    tensors[`${p}.mlp.down_proj.weight`] = t([dim, hid], sl(w2, dim * hid));
    tensors[`${p}.mlp.up_proj.weight`] = t([hid, dim], sl(w3, hid * dim));
  }
  tensors["model.norm.weight"] = t([dim], rmsFinal);
  if (!h.sharedClassifier) tensors["lm_head.weight"] = t([V, dim], take(V * dim));
  return { header: h, config: llama2cConfig(h), tensors };
}

/** True when `bytes` start like a llama2.c checkpoint of exactly this size. */
export function looksLikeLlama2c(bytes: Uint8Array, fileSize: number): boolean {
  try {
    const h = parseLlama2cHeader(bytes, "");
    return h.dim < 1 << 16 && fileSize > 28 + h.dim * 4;
  } catch {
    return false;
  }
}
