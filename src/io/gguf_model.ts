/**
 * GGUF import: a llama.cpp `llama`-architecture GGUF file as a quantlab checkpoint (HF config,
 * HF-named lazy float32 tensors, q/k rows permuted from llama2.c's interleaved RoPE order to
 * HF's rotate-half order), plus the packed description of its Q8_0/Q4_0/Q4_1 tensors so a model
 * quantized elsewhere keeps its codes. Every supported type (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
 * Q4_K, Q5_K, Q6_K) is dequantized exactly as llama.cpp's reference `dequantize_row_*`.
 * `models/load.ts` turns this into a model (`loadModel("x.gguf")`).
 * @module
 */
import { FormatError, UnsupportedError } from "../errors.ts";
import { f16ToF32 } from "../tensor.ts";
import { ggmlTypeName, type GgufValue, openGguf, unpackGgmlBlocks } from "./gguf.ts";
import { hfTensorName, permuteRows, ropeRowOrder } from "./_llama_layout.ts";
import {
  type PieceKind,
  type SentencePiece,
  type TokenizerJson,
  tokenizerJsonFromGpt2,
  tokenizerJsonFromSentencePieces,
} from "./_tokenizer_json.ts";

/** A GGUF file read as a checkpoint. */
export interface GgufCheckpoint {
  /** HF-style config.json object rebuilt from the `llama.*` metadata. */
  config: Record<string, unknown>;
  /** Lazy HF-named float32 tensors (structurally a `WeightSource`). */
  source: {
    names(): string[];
    shape(name: string): number[] | undefined;
    load(name: string): Promise<{ shape: number[]; data: Float32Array }>;
  };
  /** Packed layers (QuantMeta-shaped, method "gguf") of Q8_0/Q4_0/Q4_1 linear weights. */
  packed(): Promise<Record<string, Record<string, unknown>>>;
  /** ggml type name of each HF tensor. */
  types: Record<string, string>;
  /** The raw metadata. */
  metadata: Map<string, GgufValue>;
}

function num(md: Map<string, GgufValue>, key: string, file: string, dflt?: number): number {
  const v = md.get(key);
  if (v && (typeof v.value === "number" || typeof v.value === "bigint")) return Number(v.value);
  if (dflt !== undefined) return dflt;
  throw new FormatError(file, `metadata "${key}" is missing or not a number`);
}

/** Opens `file` (see the module doc). */
export async function readGgufCheckpoint(file: string): Promise<GgufCheckpoint> {
  const g = await openGguf(file);
  const md = g.header.metadata;
  const arch = md.get("general.architecture")?.value;
  if (arch !== "llama") {
    throw new UnsupportedError(
      `${file}: GGUF architecture ${JSON.stringify(arch)} (only "llama" is read)`,
    );
  }
  const dim = num(md, "llama.embedding_length", file);
  const nHeads = num(md, "llama.attention.head_count", file);
  const nKv = num(md, "llama.attention.head_count_kv", file, nHeads);
  const byHf = new Map<string, { gguf: string; dims: number[]; type: number }>();
  for (const t of g.header.tensors) {
    const hf = hfTensorName(t.name);
    if (hf === null) {
      if (t.name === "rope_freqs.weight") {
        throw new UnsupportedError(`${file}: rope_freqs (RoPE scaling) is not read yet`);
      }
      continue;
    }
    if (!ggmlTypeName(t.type)) {
      throw new UnsupportedError(
        `${file}: tensor "${t.name}" has ggml type ${t.type}, not supported`,
      );
    }
    byHf.set(hf, { gguf: t.name, dims: t.dims, type: t.type });
  }
  const emb = byHf.get("model.embed_tokens.weight");
  if (!emb) throw new FormatError(file, `tensor "token_embd.weight" is missing`);
  const tokens = md.get("tokenizer.ggml.tokens");
  const vocab = tokens?.type === "array" ? tokens.value.length : emb.dims[1];
  const headDim = num(md, "llama.rope.dimension_count", file, dim / nHeads);
  const config: Record<string, unknown> = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: dim,
    intermediate_size: num(md, "llama.feed_forward_length", file),
    num_hidden_layers: num(md, "llama.block_count", file),
    num_attention_heads: nHeads,
    num_key_value_heads: nKv,
    head_dim: num(md, "llama.attention.key_length", file, headDim),
    vocab_size: Math.max(vocab, emb.dims[1]),
    max_position_embeddings: num(md, "llama.context_length", file),
    rms_norm_eps: num(md, "llama.attention.layer_norm_rms_epsilon", file),
    rope_theta: num(md, "llama.rope.freq_base", file, 10000),
    hidden_act: "silu",
    tie_word_embeddings: !byHf.has("lm_head.weight"),
    bos_token_id: num(md, "tokenizer.ggml.bos_token_id", file, 1),
    eos_token_id: num(md, "tokenizer.ggml.eos_token_id", file, 2),
  };
  const heads = (hf: string) =>
    hf.endsWith("q_proj.weight") ? nHeads : hf.endsWith("k_proj.weight") ? nKv : 0;
  const shapeOf = (d: number[]) => d.length === 1 ? [d[0]] : [d[1], d[0]];
  const types: Record<string, string> = {};
  for (const [hf, t] of byHf) types[hf] = ggmlTypeName(t.type)!;
  return {
    config,
    metadata: md,
    types,
    source: {
      names: () => [...byHf.keys()],
      shape: (name) => {
        const t = byHf.get(name);
        return t ? shapeOf(t.dims) : undefined;
      },
      load: async (name) => {
        const t = byHf.get(name);
        if (!t) throw new FormatError(file, `no tensor named "${name}"`);
        const shape = shapeOf(t.dims);
        let data = await g.tensor(t.gguf);
        const nh = heads(name);
        if (nh) data = permuteRows(data, shape[0], ropeRowOrder(shape[0], nh, true));
        return { shape, data };
      },
    },
    packed: async () => {
      const out: Record<string, Record<string, unknown>> = {};
      for (const [hf, t] of byHf) {
        const type = ggmlTypeName(t.type)!;
        if (type !== "Q8_0" && type !== "Q4_0" && type !== "Q4_1") continue;
        if (t.dims.length !== 2) continue;
        const [cols, rows] = t.dims;
        const raw = await g.rawTensor(t.gguf);
        let { codes, d, m } = unpackGgmlBlocks(type, raw);
        const ng = cols / 32;
        const scales = new Float32Array(rows * ng), zeros = new Float32Array(rows * ng);
        let exact = true;
        for (let i = 0; i < rows * ng; i++) {
          scales[i] = f16ToF32(d[i]);
          if (type === "Q8_0") zeros[i] = 128;
          else if (type === "Q4_0") zeros[i] = 8;
          else {
            const mv = f16ToF32(m![i]);
            const z = scales[i] === 0 ? 0 : -mv / scales[i];
            // scale·(q − z) equals llama.cpp's d·q + m only for an integer z with d·z == −m.
            if (!Number.isInteger(z) || Math.fround(scales[i] * z) !== -mv) exact = false;
            zeros[i] = z;
          }
        }
        if (!exact) continue; // the weight itself is exact (dequantized above); no grid meta
        const nh = heads(hf);
        let sc = scales, zr = zeros;
        if (nh) {
          const ord = ropeRowOrder(rows, nh, true);
          codes = permuteRows(codes, rows, ord);
          sc = permuteRows(scales, rows, ord);
          zr = permuteRows(zeros, rows, ord);
        }
        out[hf.replace(/\.weight$/, "")] = {
          method: "gguf",
          ggufType: type,
          bits: type === "Q8_0" ? 8 : 4,
          groupSize: 32,
          sym: type !== "Q4_1",
          shape: [rows, cols],
          codes,
          scales: sc,
          zeros: zr,
        };
      }
      return out;
    },
  };
}

const KINDS: Record<number, PieceKind> = {
  1: "normal",
  2: "unknown",
  3: "control",
  4: "user",
  5: "unused",
  6: "byte",
};

/**
 * The `tokenizer.json` of a GGUF file's SentencePiece vocabulary (`tokenizer.ggml.model` =
 * "llama": tokens, scores, token types), so a GGUF from llama.cpp's tools tokenizes without
 * files beside it; or of its GPT-2 byte-level BPE (`tokenizer.ggml.model` = "gpt2" with pre-tokenizer
 * "gpt-2" or none: tokens, merges, types 3/4 as special / non-special added tokens, type 5 pads
 * left out, BOS prepended when `tokenizer.ggml.add_bos_token` is true). Other vocabularies are an
 * UnsupportedError.
 */
export async function ggufTokenizerJson(file: string): Promise<TokenizerJson> {
  const g = await openGguf(file);
  const md = g.header.metadata;
  const model = md.get("tokenizer.ggml.model")?.value;
  if (model === "gpt2") return gpt2TokenizerJson(md, file);
  if (model !== "llama") {
    throw new UnsupportedError(
      `${file}: tokenizer.ggml.model ${
        JSON.stringify(model)
      } (only SentencePiece "llama" and GPT-2 "gpt2" vocabularies are read; pass { tokenizer })`,
    );
  }
  const tokens = md.get("tokenizer.ggml.tokens"), scores = md.get("tokenizer.ggml.scores");
  const types = md.get("tokenizer.ggml.token_type");
  if (tokens?.type !== "array") throw new FormatError(file, "tokenizer.ggml.tokens is missing");
  const pieces: SentencePiece[] = tokens.value.map((t, i) => ({
    piece: String(t),
    score: scores?.type === "array" ? Number(scores.value[i]) : 0,
    kind: types?.type === "array" ? KINDS[Number(types.value[i])] ?? "normal" : "normal",
  }));
  return tokenizerJsonFromSentencePieces(pieces, { file });
}

function gpt2TokenizerJson(md: Map<string, GgufValue>, file: string): TokenizerJson {
  const pre = md.get("tokenizer.ggml.pre")?.value ?? "gpt-2";
  if (pre !== "gpt-2" && pre !== "default") {
    throw new UnsupportedError(
      `${file}: tokenizer.ggml.pre ${
        JSON.stringify(pre)
      } (only "gpt-2" is read; pass { tokenizer })`,
    );
  }
  const tokens = md.get("tokenizer.ggml.tokens"), merges = md.get("tokenizer.ggml.merges");
  const types = md.get("tokenizer.ggml.token_type");
  if (tokens?.type !== "array") throw new FormatError(file, "tokenizer.ggml.tokens is missing");
  if (merges?.type !== "array") throw new FormatError(file, "tokenizer.ggml.merges is missing");
  const vocab: Record<string, number> = {};
  const added: { id: number; content: string; special: boolean }[] = [];
  tokens.value.forEach((t, i) => {
    const type = types?.type === "array" ? Number(types.value[i]) : 1;
    if (type === 5) return;
    vocab[String(t)] = i;
    if (type === 3 || type === 4) added.push({ id: i, content: String(t), special: type === 3 });
  });
  const bosId = md.get("tokenizer.ggml.bos_token_id")?.value;
  const addBos = md.get("tokenizer.ggml.add_bos_token")?.value === true;
  const json = tokenizerJsonFromGpt2(JSON.stringify(vocab), merges.value.join("\n"), {
    file,
    bos: addBos && typeof bosId === "number" ? String(tokens.value[bosId]) : undefined,
  });
  json.added_tokens = added.map((t) => ({
    ...t,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
  }));
  return json;
}
