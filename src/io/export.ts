/**
 * `exportModel(model, dir, { format })`: writes a (quantized) model as a folder that another
 * runtime loads. Format "gguf" (llama.cpp): `model.gguf` with the `llama` architecture metadata,
 * the llama2.c/SentencePiece vocabulary or a GPT-2 byte-level BPE ({@linkcode gpt2VocabMetadata})
 * as `tokenizer.ggml.*`, q/k rows permuted back to llama2.c's interleaved RoPE order, and tensors
 * in F32/F16/Q8_0/Q4_0/Q4_1; beside it `config.json`, the tokenizer files (`tokenizer.json` +
 * `tokenizer_config.json`; a GPT-2 folder's own files copied) and `export_report.json`.
 *
 * Writing is atomic: everything goes into a fresh sibling folder `<dir>.tmp-<id>`, which is
 * renamed to `dir` only when complete; an existing `dir` is refused unless `overwrite`. A killed
 * export leaves at most the temporary folder, never a partial `dir`.
 *
 * This module sits in `io/` and reads a model structurally ({@linkcode ExportableModel}): the
 * per-layer packed description `model.packed[name]` (codes, scales, zeros) and the weights the
 * model forwards with (`model.weights.get(name)`, the fake-quant weight for a quantized layer).
 * @module
 */
import { FormatError, OptionError, UnsupportedError } from "../errors.ts";
import { f16ToF32 as halfToF32, f32ToF16, maxAbsDiff, type Tensor } from "../tensor.ts";
import { pathExists } from "./fs.ts";
import {
  dequantizeGgml,
  GGML_TYPE,
  type GgufTensorEntry,
  type GgufValue,
  gv,
  packGgmlBlocks,
  quantizeGgml,
  writeGguf,
} from "./gguf.ts";
import {
  parseLlama2cTokenizer,
  type TokenizerJson,
  tokenizerJsonFromGpt2,
  tokenizerJsonFromLlama2c,
} from "./_tokenizer_json.ts";
import { ggufTensorName, LAYER_MAP, permuteRows, ropeRowOrder } from "./_llama_layout.ts";
import { llamaTokenizerConfig, loadTokenizer, writeTokenizerJson } from "./tokenizer.ts";
import { exportOnnx } from "./onnx_export.ts";
import {
  fromGptqTensors,
  type GptqCheckpointFormat,
  gptqFit,
  type GptqTensors,
  toGptqTensors,
} from "./gptq_format.ts";

/** The config fields the exporter reads (a quantlab `ModelConfig` satisfies it). */
export interface ExportConfig {
  /** Forward family ("llama", "opt"). */
  family: string;
  /** Residual width. */
  hiddenSize: number;
  /** MLP width. */
  intermediateSize: number;
  /** Decoder blocks. */
  numLayers: number;
  /** Query heads. */
  numHeads: number;
  /** Key/value heads. */
  numKvHeads: number;
  /** Per-head width. */
  headDim: number;
  /** Embedding rows. */
  vocabSize: number;
  /** Context length. */
  maxPositions: number;
  /** RMSNorm epsilon. */
  normEps: number;
  /** RoPE base. */
  ropeTheta: number;
  /** RoPE scaling, if any (not exported to GGUF: refused). */
  ropeScaling?: unknown;
  /** lm_head shares the embedding. */
  tieWordEmbeddings: boolean;
  /** q/k/v biases. */
  qkvBias: boolean;
  /** o_proj bias. */
  oBias: boolean;
  /** MLP biases. */
  mlpBias: boolean;
  /** MLP activation. */
  activation: string;
  /** BOS id. */
  bosTokenId: number | null;
  /** EOS id. */
  eosTokenId: number | null;
}

/** One quantized layer's packed description, as `model.packed[name]` holds it (a `QuantMeta`). */
export interface PackedLayer {
  /** Method name. */
  method: string;
  /** Bits per code. */
  bits: number;
  /** Columns per group (-1 = per row). */
  groupSize: number;
  /** Symmetric grid. */
  sym: boolean;
  /** `[rows, cols]`. */
  shape: [number, number];
  /** Unpacked codes, row-major, original column order. */
  codes?: Uint8Array;
  /** Scale per (row, group). */
  scales?: Float32Array;
  /** Zero per (row, group). */
  zeros?: Float32Array;
  /** Group of each column, if not `floor(j / groupSize)`. */
  gIdx?: Int32Array;
  /** Other fields. */
  [k: string]: unknown;
}

/** What {@linkcode exportModel} reads from a model (a quantlab `Model` satisfies it). */
export interface ExportableModel {
  /** Normalised config. */
  config: ExportConfig;
  /** Where it came from (recorded as `general.name` / in the report). */
  source: string;
  /** llama2.c tokenizer `.bin` (or a folder holding one). */
  tokenizerPath?: string;
  /** The weights the model forwards with (`evict` drops a source tensor from a cache). */
  weights: {
    names(): string[];
    get(name: string): Promise<Tensor>;
    evict?(names?: string[]): void;
  };
  /** Packed quantized layers, keyed by linear name (`model.layers.0.self_attn.q_proj`). */
  // deno-lint-ignore no-explicit-any
  packed?: Record<string, any>;
}

/** GGUF tensor types the exporter writes. */
export type GgufExportType = "f32" | "f16" | "q8_0" | "q4_0" | "q4_1";

/** Options of {@linkcode exportModel}. */
export interface ExportOptions {
  /**
   * Output format: "gguf" (llama.cpp), "gptq" (safetensors for transformers / vLLM) or "onnx"
   * (onnxruntime / transformers.js, 4-bit grids as MatMulNBits: see `onnx_export.ts`).
   */
  format: "gguf" | "gptq" | "onnx";
  /**
   * GPTQ zero-point convention: "gptq" (v1, default: stores zero − 1, what transformers and vLLM
   * read) or "gptq_v2" (GPTQModel: stores zero). See `gptq_format.ts`.
   */
  checkpointFormat?: GptqCheckpointFormat;
  /** GPTQ: dtype of unquantized tensors, "F32" (default) or "F16". */
  floatDtype?: "F32" | "F16";
  /**
   * Type of the linear layers. Default "auto": each quantized layer goes to the GGUF block type
   * of its grid (8-bit symmetric → Q8_0, 4-bit symmetric → Q4_0, 4-bit asymmetric → Q4_1; other
   * widths convert to Q8_0 above 4 bits, Q4_0/Q4_1 at or below) and unquantized layers stay at
   * `fallback`. An explicit type converts every linear layer (quantized or not) to it.
   */
  type?: "auto" | GgufExportType;
  /** Type of tensors a block type cannot hold (rows not a multiple of 32) and of the embedding: "f32" (default) or "f16". */
  fallback?: "f32" | "f16";
  /**
   * Layers whose method's codes do not live on a plain grid (QuIP rotations, FrameQuant frames,
   * QuantEase outliers): "refuse" (default; UnsupportedError naming the layer, method and
   * format) or "dequantize" (their fake-quant weights at `fallback` precision, reported).
   */
  nonGrid?: "refuse" | "dequantize";
  /** Replace an existing `dir` (default false: an existing `dir` is an OptionError). */
  overwrite?: boolean;
  /**
   * ONNX: stream weights to `onnx/model.onnx_data` (default: only when the weights would pass
   * protobuf's 2 GiB limit). See `onnx_export.ts`.
   */
  externalData?: boolean;
}

/** One exported tensor in the report. */
export interface ExportedTensor {
  /** quantlab (HF) name. */
  name: string;
  /** GGUF name (ONNX export: the initializer name). */
  gguf: string;
  /** ggml type written ("Q4_0", ...). */
  type: string;
  /**
   * How the bytes were made: "codes" (the layer's own codes and f16 scales stored as they
   * are), "converted" (llama.cpp's reference quantizer applied to the fake-quant weight),
   * "float" (a float tensor), "dequantized" (a non-grid method's weight at float precision).
   */
  how: "codes" | "codes+scales" | "converted" | "float" | "dequantized";
  /** max |GGUF-decoded − quantlab weight| (0 = bit-exact). */
  maxAbsErr: number;
  /** Why this type was chosen when it is not the requested one. */
  note?: string;
}

/** What {@linkcode exportModel} wrote. */
export interface ExportReport {
  /** Format. */
  format: "gguf" | "gptq" | "onnx";
  /** The folder. */
  dir: string;
  /** Files in it. */
  files: string[];
  /** Per tensor. */
  tensors: ExportedTensor[];
  /** Plain-language notes (fallbacks, conversions). */
  notes: string[];
}

const NON_GRID = new Set(["quip", "framequant"]);

function isNonGrid(meta: PackedLayer): string | null {
  if (NON_GRID.has(meta.method)) {
    return `${meta.method} codes live in a rotated/frame basis, not on a per-group grid`;
  }
  const S = meta.outlierIdx ?? meta.outlierVal; // QuantEase's outlier variant
  if (S) return `${meta.method} keeps full-precision outliers beside its grid`;
  if (!meta.codes || !meta.scales || !meta.zeros) return `${meta.method} has no codes/scales/zeros`;
  return null;
}

/** The block type matching a layer's grid (see {@linkcode ExportOptions.type}). */
function gridType(meta: PackedLayer): "Q8_0" | "Q4_0" | "Q4_1" {
  if (meta.bits > 4) return "Q8_0";
  return meta.sym ? "Q4_0" : "Q4_1";
}

/**
 * The layer's codes and f16 block parameters when its grid is one GGUF block type holds as
 * they are (uniform grid, 32-column groups in natural order, codes in range), else null.
 */
function blocksFromCodes(
  meta: PackedLayer,
  type: "Q8_0" | "Q4_0" | "Q4_1",
): { codes: Uint8Array; d: Uint16Array; m?: Uint16Array } | null {
  const [rows, cols] = meta.shape;
  const bits = type === "Q8_0" ? 8 : 4;
  if (meta.bits !== bits || cols % 32 !== 0) return null;
  if (type === "Q4_1" ? meta.sym : !meta.sym) return null;
  const gs = meta.groupSize === -1 && cols === 32 ? 32 : meta.groupSize;
  if (gs !== 32) return null;
  if (meta.gIdx && meta.gIdx.some((g, j) => g !== Math.floor(j / 32))) return null;
  const ng = cols / 32;
  const codes = meta.codes!, scales = meta.scales!, zeros = meta.zeros!;
  if (scales.length !== rows * ng) return null;
  const d = new Uint16Array(rows * ng);
  const m = type === "Q4_1" ? new Uint16Array(rows * ng) : undefined;
  const z0 = type === "Q8_0" ? 128 : 8;
  for (let i = 0; i < rows * ng; i++) {
    if (type !== "Q4_1" && zeros[i] !== z0) return null;
    d[i] = f32ToF16(scales[i]);
    if (m) m[i] = f32ToF16(Math.fround(-scales[i] * zeros[i]));
  }
  return { codes, d, m };
}

async function findTokBin(p: string): Promise<string | null> {
  if (p.endsWith(".bin")) return p;
  try {
    for await (const e of Deno.readDir(p)) {
      if (e.isFile && /^tok.*\.bin$|^tokenizer\.bin$/.test(e.name)) return `${p}/${e.name}`;
    }
  } catch { /* not a folder */ }
  return null;
}

/** The shape of Llama tensor `hf` implied by the config. */
function llamaShape(c: ExportConfig, hf: string): number[] {
  const D = c.hiddenSize, q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
  const I = c.intermediateSize;
  if (hf.endsWith("norm.weight")) return [D];
  if (hf === "model.embed_tokens.weight" || hf === "lm_head.weight") return [c.vocabSize, D];
  const tail = hf.split(".").slice(-2)[0];
  const shapes: Record<string, number[]> = {
    q_proj: [q, D],
    k_proj: [kv, D],
    v_proj: [kv, D],
    o_proj: [D, q],
    gate_proj: [I, D],
    up_proj: [I, D],
    down_proj: [D, I],
  };
  return shapes[tail];
}

/** The HF `config.json` of a Llama-family model, rebuilt from its normalised config. */
export function llamaConfigJson(c: ExportConfig): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.headDim,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.maxPositions,
    rms_norm_eps: c.normEps,
    rope_theta: c.ropeTheta,
    hidden_act: c.activation,
    tie_word_embeddings: c.tieWordEmbeddings,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenId,
    torch_dtype: "float32",
  };
}

/**
 * The `tokenizer.ggml.*` metadata of a llama2.c tokenizer file (SentencePiece-BPE with byte
 * fallback): model "llama"; tokens with spaces as "▁" and ids 0/1/2 as `<unk>`/`<s>`/`</s>`;
 * the file's scores; token types (2 unknown, 3 control, 6 byte for ids 3..258, 1 normal);
 * BOS 1, EOS 2, UNK 0; BOS added, EOS not.
 */
export function llamaVocabMetadata(tokBin: Uint8Array, file = "<memory>"): [string, GgufValue][] {
  const { tokens } = parseLlama2cTokenizer(tokBin, { file });
  const specials = ["<unk>", "<s>", "</s>"];
  const texts = tokens.map((t, i) => (i < 3 ? specials[i] : t.text.replaceAll(" ", "\u2581")));
  const types = tokens.map((t, i) =>
    i === 0 ? 2 : i < 3 ? 3 : /^<0x[0-9A-F]{2}>$/.test(t.text) && i < 259 ? 6 : 1
  );
  return [
    ["tokenizer.ggml.model", gv.str("llama")],
    ["tokenizer.ggml.tokens", gv.arr("string", texts)],
    ["tokenizer.ggml.scores", gv.arr("f32", tokens.map((t) => t.score))],
    ["tokenizer.ggml.token_type", gv.arr("i32", types)],
    ["tokenizer.ggml.bos_token_id", gv.u32(1)],
    ["tokenizer.ggml.eos_token_id", gv.u32(2)],
    ["tokenizer.ggml.unknown_token_id", gv.u32(0)],
    ["tokenizer.ggml.add_bos_token", gv.bool(true)],
    ["tokenizer.ggml.add_eos_token", gv.bool(false)],
  ];
}

/** Options of {@linkcode gpt2VocabMetadata}. */
export interface Gpt2VocabOptions {
  /** Rows of the model's embedding; ids the tokenizer lacks below it become `[PAD<id>]`. */
  vocabSize: number;
  /** BOS id (null: the tokenizer prepends none; the EOS id is written, add_bos_token false). */
  bosId: number | null;
  /** EOS / end-of-text id (null: none written). */
  eosId: number | null;
  /** Name used in error messages. */
  file?: string;
}

/**
 * Whether `json` is a GPT-2-style byte-level BPE that llama.cpp's "gpt2" vocabulary with
 * pre-tokenizer "gpt-2" reproduces: a BPE model without byte fallback, no normalizer, and a plain
 * ByteLevel pre-tokenizer using GPT-2's split regex without a prefix space. Returns why not, or
 * null.
 */
export function gpt2VocabMismatch(json: TokenizerJson | Record<string, unknown>): string | null {
  const j = json as Partial<TokenizerJson>;
  const m = j.model as Record<string, unknown> | undefined;
  if (m?.type !== "BPE") return `model type ${JSON.stringify(m?.type)} is not BPE`;
  if (m.byte_fallback) return "BPE model uses byte fallback (a SentencePiece-style vocabulary)";
  if (j.normalizer) return `has a normalizer (${(j.normalizer as { type?: string }).type})`;
  const pre = j.pre_tokenizer as Record<string, unknown> | null | undefined;
  if (pre?.type !== "ByteLevel") {
    return `pre-tokenizer ${JSON.stringify(pre?.type ?? null)} is not a plain ByteLevel ` +
      `(only GPT-2's split, llama.cpp pre "gpt-2", is written)`;
  }
  if (pre.add_prefix_space === true) return "ByteLevel pre-tokenizer adds a prefix space";
  if (pre.use_regex === false) return "ByteLevel pre-tokenizer does not split with GPT-2's regex";
  return null;
}

/**
 * The `tokenizer.ggml.*` metadata of a GPT-2-style byte-level BPE `tokenizer.json`, as llama.cpp's
 * `convert_hf_to_gguf.py` writes it (`_set_vocab_gpt2`): model "gpt2", pre "gpt-2"; tokens in
 * their byte-level spelling (`Ġ` for a space) for ids `0..vocabSize-1`, ids without a token as
 * `[PAD<id>]`; token types 1 normal, 3 control (special added tokens such as `<|endoftext|>`),
 * 4 user-defined (non-special added tokens), 5 unused (the pads); merges as `"left right"`
 * strings in rank order; BOS/EOS ids and add_bos_token / add_eos_token (false). Deviations from
 * the converter: add_bos_token is always written (the converter writes it only when
 * tokenizer_config.json has it, leaving llama.cpp's default), so llama.cpp adds a BOS exactly when
 * quantlab's tokenizer does; BOS without a BOS of the tokenizer's own is the EOS id (GPT-2's
 * config.json: both 50256); non-special added tokens that merely look special (`<|x|>`) stay
 * user-defined, and non-normalized added tokens are written as stored (the converter decodes them
 * through the HF tokenizer) — GPT-2's vocabulary has neither. Throws
 * {@linkcode UnsupportedError} for a tokenizer llama.cpp's gpt-2 pre-tokenizer would not
 * reproduce (see {@linkcode gpt2VocabMismatch}) and {@linkcode FormatError} when the vocabulary
 * has more ids than the model's embedding rows or two tokens share an id.
 */
export function gpt2VocabMetadata(
  json: TokenizerJson | Record<string, unknown>,
  opts: Gpt2VocabOptions,
): [string, GgufValue][] {
  const file = opts.file ?? "<memory>";
  const why = gpt2VocabMismatch(json);
  if (why) throw new UnsupportedError(`gguf export: tokenizer ${file}: ${why}`);
  const j = json as TokenizerJson;
  const texts: (string | undefined)[] = new Array(opts.vocabSize);
  const types = new Array<number>(opts.vocabSize).fill(1);
  const put = (tok: string, id: number, type: number) => {
    if (!Number.isInteger(id) || id < 0 || id >= opts.vocabSize) {
      throw new FormatError(
        file,
        `token ${JSON.stringify(tok)} has id ${id}, outside the model's ${opts.vocabSize} rows`,
      );
    }
    if (texts[id] !== undefined && texts[id] !== tok) {
      throw new FormatError(file, `id ${id} is both ${JSON.stringify(texts[id])} and ${tok}`);
    }
    texts[id] = tok;
    types[id] = type;
  };
  for (const [tok, id] of Object.entries(j.model.vocab)) put(tok, id, 1);
  for (const t of j.added_tokens ?? []) put(t.content, t.id, t.special ? 3 : 4);
  for (let i = 0; i < opts.vocabSize; i++) {
    if (texts[i] === undefined) {
      texts[i] = `[PAD${i}]`;
      types[i] = 5;
    }
  }
  const merges = (j.model.merges as (string | [string, string])[]).map((m) => {
    if (typeof m === "string") return m;
    if (m[0].includes(" ") || m[1].includes(" ")) {
      throw new UnsupportedError(`gguf export: tokenizer ${file}: merge ${m} has a space`);
    }
    return `${m[0]} ${m[1]}`;
  });
  const md: [string, GgufValue][] = [
    ["tokenizer.ggml.model", gv.str("gpt2")],
    ["tokenizer.ggml.pre", gv.str("gpt-2")],
    ["tokenizer.ggml.tokens", gv.arr("string", texts as string[])],
    ["tokenizer.ggml.token_type", gv.arr("i32", types)],
    ["tokenizer.ggml.merges", gv.arr("string", merges)],
  ];
  const bos = opts.bosId ?? opts.eosId;
  if (bos !== null) md.push(["tokenizer.ggml.bos_token_id", gv.u32(bos)]);
  if (opts.eosId !== null) md.push(["tokenizer.ggml.eos_token_id", gv.u32(opts.eosId)]);
  md.push(["tokenizer.ggml.add_bos_token", gv.bool(opts.bosId !== null)]);
  md.push(["tokenizer.ggml.add_eos_token", gv.bool(false)]);
  return md;
}

/**
 * The GPT-2 `tokenizer.json` at tokenizer folder `dir` (its `tokenizer.json`, or one built from
 * `vocab.json` + `merges.txt` as {@linkcode loadTokenizer} does) with the BOS/EOS ids quantlab's
 * tokenizer uses, or null when the folder holds neither.
 */
async function gpt2TokenizerAt(
  dir: string,
): Promise<{ json: TokenizerJson; bosId: number | null; eosId: number | null } | null> {
  const isFile = (f: string) => Deno.stat(`${dir}/${f}`).then((s) => s.isFile, () => false);
  let json: TokenizerJson;
  if (await isFile("tokenizer.json")) {
    json = JSON.parse(await Deno.readTextFile(`${dir}/tokenizer.json`)) as TokenizerJson;
  } else if ((await isFile("vocab.json")) && (await isFile("merges.txt"))) {
    json = tokenizerJsonFromGpt2(
      await Deno.readTextFile(`${dir}/vocab.json`),
      await Deno.readTextFile(`${dir}/merges.txt`),
      { file: dir },
    );
  } else return null;
  const tok = await loadTokenizer(dir);
  return { json, bosId: tok.bosId, eosId: tok.eosId };
}

const TYPE_ID = {
  F32: GGML_TYPE.F32,
  F16: GGML_TYPE.F16,
  Q8_0: GGML_TYPE.Q8_0,
  Q4_0: GGML_TYPE.Q4_0,
  Q4_1: GGML_TYPE.Q4_1,
} as const;
type WriteType = keyof typeof TYPE_ID;

/**
 * Exports `model` to the folder `dir` (see the module doc). Returns the report, also written as
 * `export_report.json`. Errors: OptionError for a bad option or an existing `dir` without
 * `overwrite`; UnsupportedError for a family/feature the format cannot hold or a non-grid layer
 * under `nonGrid: "refuse"` (naming the layer, method and format); FormatError for an
 * unreadable tokenizer.
 */
export async function exportModel(
  model: ExportableModel,
  dir: string,
  options: ExportOptions,
): Promise<ExportReport> {
  const format = options.format;
  if (format !== "gguf" && format !== "gptq" && format !== "onnx") {
    throw new OptionError(
      "format",
      `must be "gguf", "gptq" or "onnx", got ${JSON.stringify(format)}`,
    );
  }
  const reqType = options.type ?? "auto";
  if (!["auto", "f32", "f16", "q8_0", "q4_0", "q4_1"].includes(reqType)) {
    throw new OptionError("type", `must be auto, f32, f16, q8_0, q4_0 or q4_1, got ${reqType}`);
  }
  const fallback = options.fallback ?? "f32";
  if (fallback !== "f32" && fallback !== "f16") {
    throw new OptionError("fallback", `must be "f32" or "f16", got ${fallback}`);
  }
  const nonGrid = options.nonGrid ?? "refuse";
  if (nonGrid !== "refuse" && nonGrid !== "dequantize") {
    throw new OptionError("nonGrid", `must be "refuse" or "dequantize", got ${nonGrid}`);
  }
  const dirClean = dir.replace(/\/+$/, "");
  if (!options.overwrite && (await pathExists(dirClean))) {
    throw new OptionError("overwrite", `${dirClean} exists; pass overwrite: true to replace it`);
  }
  if (format === "onnx") {
    const tokBin = model.tokenizerPath ? await findTokBin(model.tokenizerPath) : null;
    return await exportOnnx(model, dirClean, { options, tokBin, nonGridReason: isNonGrid });
  }
  const cfg = model.config;
  if (
    cfg.family !== "llama" || cfg.qkvBias || cfg.oBias || cfg.mlpBias || cfg.activation !== "silu"
  ) {
    throw new UnsupportedError(
      `gguf export: only bias-free SiLU Llama-family models are supported (got family ${cfg.family}` +
        `${
          cfg.qkvBias || cfg.oBias || cfg.mlpBias ? " with biases" : ""
        }, activation ${cfg.activation})`,
    );
  }
  if (cfg.ropeScaling) {
    throw new UnsupportedError("gguf export: RoPE scaling is not written yet; this model has one");
  }
  const packed = (model.packed ?? {}) as Record<string, PackedLayer>;
  for (const [name, meta] of Object.entries(packed)) {
    const why = isNonGrid(meta);
    if (why && nonGrid === "refuse") {
      throw new UnsupportedError(
        `gguf export: layer ${name} (${meta.method}) cannot be stored as GGUF blocks: ${why}; ` +
          `pass nonGrid: "dequantize" to write its dequantized weight at ${fallback.toUpperCase()}`,
      );
    }
  }
  const tokBin = model.tokenizerPath ? await findTokBin(model.tokenizerPath) : null;
  if (format === "gptq") return await exportGptq(model, dirClean, options, tokBin);
  const gpt2 = !tokBin && model.tokenizerPath
    ? await gpt2TokenizerAt(model.tokenizerPath.replace(/\/$/, ""))
    : null;
  if (!tokBin && !gpt2) {
    throw new UnsupportedError(
      `gguf export: needs a llama2.c tokenizer (.bin) or a GPT-2 byte-level BPE (tokenizer.json, ` +
        `or vocab.json + merges.txt) for tokenizer.ggml.*; model ${model.source} has tokenizer ${
          model.tokenizerPath ?? "(none)"
        }`,
    );
  }
  const vocabMetadata = tokBin
    ? llamaVocabMetadata(await Deno.readFile(tokBin), tokBin)
    : gpt2VocabMetadata(gpt2!.json, {
      vocabSize: cfg.vocabSize,
      bosId: gpt2!.bosId,
      eosId: gpt2!.eosId,
      file: model.tokenizerPath,
    });

  // Plan the tensors.
  const names = new Set(model.weights.names());
  const hfOrder = ["model.embed_tokens.weight"];
  for (let l = 0; l < cfg.numLayers; l++) {
    for (const [a] of LAYER_MAP) hfOrder.push(`model.layers.${l}.${a}`);
  }
  hfOrder.push("model.norm.weight");
  if (!cfg.tieWordEmbeddings) hfOrder.push("lm_head.weight");
  for (const n of hfOrder) {
    if (!names.has(n)) throw new FormatError(model.source, `tensor "${n}" is missing`);
  }
  const report: ExportedTensor[] = [];
  const notes: string[] = [];
  const fbType: WriteType = fallback === "f16" ? "F16" : "F32";
  const entries: GgufTensorEntry[] = [];
  const plan: { hf: string; gguf: string; type: WriteType; dims: number[] }[] = [];
  for (const hf of hfOrder) {
    const gguf = ggufTensorName(hf)!;
    const isNorm = hf.endsWith("norm.weight");
    const isEmbed = hf === "model.embed_tokens.weight";
    let type: WriteType;
    const meta = packed[hf.replace(/\.weight$/, "")] ?? packed[hf];
    if (isNorm) type = "F32";
    else if (isEmbed) type = fbType;
    else if (reqType !== "auto") type = reqType.toUpperCase() as WriteType;
    else if (meta && !isNonGrid(meta)) type = gridType(meta);
    else type = fbType;
    plan.push({ hf, gguf, type, dims: [] });
  }

  const tmp = `${dirClean}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(tmp, { recursive: true });
  try {
    const heads = (hf: string) =>
      hf.endsWith("q_proj.weight")
        ? cfg.numHeads
        : hf.endsWith("k_proj.weight")
        ? cfg.numKvHeads
        : 0;
    for (const p of plan) {
      const shape = llamaShape(cfg, p.hf);
      const [rows, cols] = shape.length === 1 ? [1, shape[0]] : shape;
      p.dims = shape.length === 1 ? [cols] : [cols, rows];
      if (p.type.startsWith("Q") && cols % 32 !== 0) {
        notes.push(
          `${p.hf}: ${cols} columns are not a multiple of 32, so ${p.type} cannot hold it; written as ${fbType}`,
        );
        p.type = fbType;
      }
      const meta = packed[p.hf.replace(/\.weight$/, "")] ?? packed[p.hf];
      const nh = heads(p.hf);
      const order = nh ? ropeRowOrder(rows, nh, false) : null;
      const hf = p.hf, type = p.type;
      entries.push({
        name: p.gguf,
        dims: p.dims,
        type: TYPE_ID[type],
        bytes: async () => {
          const Wt = await model.weights.get(hf);
          model.weights.evict?.([hf]); // streamed: one source tensor in memory at a time
          if (Wt.data.length !== rows * cols) {
            throw new FormatError(
              model.source,
              `tensor "${hf}" has shape [${Wt.shape}], config implies [${shape}]`,
            );
          }
          let bytes: Uint8Array;
          let how: ExportedTensor["how"] = type.startsWith("Q") ? "converted" : "float";
          if (meta && isNonGrid(meta)) how = "dequantized";
          const blocks = meta && !isNonGrid(meta) && type.startsWith("Q")
            ? blocksFromCodes(meta, type as "Q8_0" | "Q4_0" | "Q4_1")
            : null;
          if (blocks) {
            bytes = packGgmlBlocks(type as "Q8_0" | "Q4_0" | "Q4_1", blocks);
            how = "codes";
          } else {
            bytes = quantizeGgml(Wt.data, type);
          }
          // F32 is exact by construction; everything else is decoded and compared.
          const err = type === "F32"
            ? 0
            : maxAbsDiff(dequantizeGgml(bytes, TYPE_ID[type], Wt.data.length), Wt.data);
          if (order) bytes = permuteRows(bytes, rows, order);
          const rec: ExportedTensor = { name: hf, gguf: p.gguf, type, how, maxAbsErr: err };
          if (how === "converted" && meta) {
            rec.note =
              `${meta.method} ${meta.bits}-bit g${meta.groupSize}${meta.sym ? " sym" : ""}` +
              ` is not a ${type} grid; re-quantized with llama.cpp's reference ${type} quantizer`;
          }
          if (how === "codes" && err !== 0) {
            rec.note = "scales (or Q4_1 mins) are not f16-exact; round them to f16 during " +
              "quantization (withF16Scales) for a bit-exact export";
          }
          report.push(rec);
          return bytes;
        },
      });
    }
    const ftype = reqType === "auto"
      ? (plan.some((p) => p.type === "Q4_1")
        ? 3
        : plan.some((p) => p.type === "Q4_0")
        ? 2
        : plan.some((p) => p.type === "Q8_0")
        ? 7
        : fbType === "F16"
        ? 1
        : 0)
      : { f32: 0, f16: 1, q4_0: 2, q4_1: 3, q8_0: 7 }[reqType];
    const metadata: [string, GgufValue][] = [
      ["general.architecture", gv.str("llama")],
      ["general.name", gv.str(model.source.split("/").filter(Boolean).pop() ?? "quantlab")],
      ["general.file_type", gv.u32(ftype)],
      ["general.quantization_version", gv.u32(2)],
      ["llama.context_length", gv.u32(cfg.maxPositions)],
      ["llama.embedding_length", gv.u32(cfg.hiddenSize)],
      ["llama.block_count", gv.u32(cfg.numLayers)],
      ["llama.feed_forward_length", gv.u32(cfg.intermediateSize)],
      ["llama.attention.head_count", gv.u32(cfg.numHeads)],
      ["llama.attention.head_count_kv", gv.u32(cfg.numKvHeads)],
      ["llama.rope.dimension_count", gv.u32(cfg.headDim)],
      ["llama.attention.layer_norm_rms_epsilon", gv.f32(cfg.normEps)],
      ["llama.rope.freq_base", gv.f32(cfg.ropeTheta)],
      ["llama.vocab_size", gv.u32(cfg.vocabSize)],
      ...vocabMetadata,
    ];
    if (cfg.headDim * cfg.numHeads !== cfg.hiddenSize) {
      metadata.push(["llama.attention.key_length", gv.u32(cfg.headDim)]);
      metadata.push(["llama.attention.value_length", gv.u32(cfg.headDim)]);
    }
    await writeGguf(`${tmp}/model.gguf`, metadata, entries);
    const conv = report.filter((t) =>
      t.how === "converted" && packed[t.name.replace(/\.weight$/, "")]
    );
    if (conv.length) {
      const e = Math.max(...conv.map((t) => t.maxAbsErr));
      notes.push(
        `${conv.length} quantized layers are not on their GGUF type's grid (32-column groups, ` +
          `f16 scales) and were re-quantized with llama.cpp's reference quantizer: max |Δw| = ${
            e.toExponential(3)
          }`,
      );
    }
    const inexact = report.filter((t) => t.how === "codes" && t.maxAbsErr > 0);
    if (inexact.length) {
      const e = Math.max(...inexact.map((t) => t.maxAbsErr));
      notes.push(
        `${inexact.length} layers kept their codes but their scales (or Q4_1 mins) are not f16 values: ` +
          `max |Δw| = ${
            e.toExponential(3)
          } (quantize with withF16Scales / --f16-scales for a bit-exact export)`,
      );
    }
    await Deno.writeTextFile(`${tmp}/config.json`, JSON.stringify(llamaConfigJson(cfg), null, 2));
    const tokFiles = await writeTokenizerFiles(model, tmp, tokBin);
    if (tokBin) {
      await Deno.copyFile(tokBin, `${tmp}/tokenizer.bin`);
      tokFiles.push("tokenizer.bin");
    }
    const files = ["model.gguf", "config.json", ...tokFiles, "export_report.json"];
    const out: ExportReport = { format, dir: dirClean, files, tensors: report, notes };
    await Deno.writeTextFile(`${tmp}/export_report.json`, JSON.stringify(out, null, 1));
    if (await pathExists(dirClean)) {
      const old = `${dirClean}.old-${crypto.randomUUID().slice(0, 8)}`;
      await Deno.rename(dirClean, old);
      await Deno.rename(tmp, dirClean);
      await Deno.remove(old, { recursive: true });
    } else {
      await Deno.rename(tmp, dirClean);
    }
    return out;
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}

async function writeTokenizerFiles(model: ExportableModel, dir: string, tokBin: string | null) {
  if (tokBin) {
    const tokBytes = await Deno.readFile(tokBin);
    await writeTokenizerJson(dir, tokenizerJsonFromLlama2c(tokBytes, { file: tokBin }), {
      config: llamaTokenizerConfig(),
    });
    return ["tokenizer.json", "tokenizer_config.json"];
  }
  const files: string[] = [];
  for (
    const f of [
      "tokenizer.json",
      "tokenizer_config.json",
      "tokenizer.model",
      "vocab.json",
      "merges.txt",
      "special_tokens_map.json",
    ]
  ) {
    if (model.tokenizerPath && (await pathExists(`${model.tokenizerPath}/${f}`))) {
      await Deno.copyFile(`${model.tokenizerPath}/${f}`, `${dir}/${f}`);
      files.push(f);
    }
  }
  return files;
}

async function commitDir(tmp: string, dir: string): Promise<void> {
  if (await pathExists(dir)) {
    const old = `${dir}.old-${crypto.randomUUID().slice(0, 8)}`;
    await Deno.rename(dir, old);
    await Deno.rename(tmp, dir);
    await Deno.remove(old, { recursive: true });
  } else {
    await Deno.rename(tmp, dir);
  }
}

/** The GPTQ safetensors branch of {@linkcode exportModel} (see `gptq_format.ts`), streamed. */
async function exportGptq(
  model: ExportableModel,
  dir: string,
  options: ExportOptions,
  tokBin: string | null,
): Promise<ExportReport> {
  const format = options.checkpointFormat ?? "gptq";
  if (format !== "gptq" && format !== "gptq_v2") {
    throw new OptionError("checkpointFormat", `must be "gptq" or "gptq_v2", got ${format}`);
  }
  const floatDtype = options.floatDtype ?? "F32";
  if (floatDtype !== "F32" && floatDtype !== "F16") {
    throw new OptionError("floatDtype", `must be "F32" or "F16", got ${floatDtype}`);
  }
  const cfg = model.config;
  const packed = (model.packed ?? {}) as Record<string, PackedLayer>;
  const grids = Object.entries(packed).filter(([, m]) => !isNonGrid(m));
  if (!grids.length) {
    throw new UnsupportedError(`gptq export: model ${model.source} has no quantized grid layers`);
  }
  const [firstName, first] = grids[0];
  for (const [name, m] of grids) {
    if (m.bits !== first.bits || m.groupSize !== first.groupSize || m.sym !== first.sym) {
      throw new UnsupportedError(
        `gptq export: quantization_config is global, but layer ${name} is ${m.bits}-bit ` +
          `g${m.groupSize} sym=${m.sym} while ${firstName} is ${first.bits}-bit ` +
          `g${first.groupSize} sym=${first.sym}`,
      );
    }
  }
  const names = model.weights.names().filter((n) =>
    n !== "lm_head.weight" || !cfg.tieWordEmbeddings
  );
  const report: ExportedTensor[] = [];
  const notes: string[] = [];
  const notConverted: string[] = [];
  const items: {
    name: string;
    dtype: string;
    shape: number[];
    produce: () => Promise<Uint8Array>;
  }[] = [];
  const view = (a: Int32Array | Uint16Array | Float32Array) =>
    new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  let descAct = false;
  for (const n of names) {
    const p = n.replace(/\.weight$/, "");
    const meta = packed[p];
    const why = meta ? (isNonGrid(meta) ?? gptqFit(meta)) : null;
    if (meta && !why) {
      const [out, inn] = meta.shape;
      const groups = meta.scales!.length / out;
      const bits = meta.bits;
      let cache: Promise<GptqTensors> | null = null;
      const get = () =>
        cache ??= (async () => {
          const t = toGptqTensors(meta, format, p) as GptqTensors;
          const dec = fromGptqTensors(
            { ...t, scales: Float32Array.from(t.scales, halfToF32) },
            { out, in: inn, bits, groups },
            format,
          );
          const W = await model.weights.get(n);
          let err = 0;
          for (let j = 0; j < out; j++) {
            for (let i = 0; i < inn; i++) {
              const g = j * groups + dec.gIdx[i];
              const v = Math.fround(dec.scales[g] * (dec.codes[j * inn + i] - dec.zeros[g]));
              const d = Math.abs(v - W.data[j * inn + i]);
              if (d > err || Number.isNaN(d)) err = d;
            }
          }
          if (
            dec.gIdx.some((g, i) => g !== (meta.groupSize > 0 ? Math.floor(i / meta.groupSize) : 0))
          ) {
            descAct = true;
          }
          const rec: ExportedTensor = {
            name: n,
            gguf: `${p}.qweight`,
            type: `gptq-${bits}bit`,
            how: "codes",
            maxAbsErr: err,
          };
          if (err !== 0) {
            rec.note =
              "scales are not f16 values; quantize with withF16Scales for a bit-exact export";
          }
          report.push(rec);
          return t;
        })();
      items.push(
        {
          name: `${p}.qweight`,
          dtype: "I32",
          shape: [(inn * bits) / 32, out],
          produce: async () => view((await get()).qweight),
        },
        {
          name: `${p}.qzeros`,
          dtype: "I32",
          shape: [groups, (out * bits) / 32],
          produce: async () => view((await get()).qzeros),
        },
        {
          name: `${p}.scales`,
          dtype: "F16",
          shape: [groups, out],
          produce: async () => view((await get()).scales),
        },
        {
          name: `${p}.g_idx`,
          dtype: "I32",
          shape: [inn],
          produce: async () => {
            const b = view((await get()).gIdx);
            cache = null;
            return b;
          },
        },
      );
      continue;
    }
    if (meta) {
      notConverted.push(p);
      notes.push(`${p}: ${why}; written as ${floatDtype} and listed in modules_to_not_convert`);
    }
    const shape = llamaShape(cfg, n) ?? (await model.weights.get(n)).shape;
    items.push({
      name: n,
      dtype: floatDtype,
      shape,
      produce: async () => {
        const W = await model.weights.get(n);
        model.weights.evict?.([n]);
        let err = 0;
        let bytes: Uint8Array;
        if (floatDtype === "F32") bytes = view(W.data);
        else {
          const h = Uint16Array.from(W.data, f32ToF16);
          for (let i = 0; i < h.length; i++) {
            err = Math.max(err, Math.abs(halfToF32(h[i]) - W.data[i]));
          }
          bytes = view(h);
        }
        report.push({
          name: n,
          gguf: n,
          type: floatDtype,
          how: meta ? "dequantized" : "float",
          maxAbsErr: err,
        });
        return bytes;
      },
    });
  }
  const tmp = `${dir}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(tmp, { recursive: true });
  try {
    await writeSafetensorsStreamed(`${tmp}/model.safetensors`, items, { format: "pt" });
    const qc: Record<string, unknown> = {
      quant_method: "gptq",
      bits: first.bits,
      group_size: first.groupSize,
      desc_act: descAct,
      sym: first.sym,
      checkpoint_format: format,
      static_groups: Boolean(first.staticGroups),
      true_sequential: true,
      damp_percent: typeof first.percdamp === "number" ? first.percdamp : 0.01,
    };
    if (notConverted.length) qc.modules_to_not_convert = notConverted;
    await Deno.writeTextFile(
      `${tmp}/config.json`,
      JSON.stringify(
        {
          ...llamaConfigJson(cfg),
          torch_dtype: floatDtype === "F16" ? "float16" : "float32",
          quantization_config: qc,
        },
        null,
        2,
      ),
    );
    await Deno.writeTextFile(`${tmp}/quantize_config.json`, JSON.stringify(qc, null, 2));
    const tokFiles = await writeTokenizerFiles(model, tmp, tokBin);
    if (!tokFiles.length) notes.push("no tokenizer files were found to write beside the weights");
    const files = [
      "model.safetensors",
      "config.json",
      "quantize_config.json",
      ...tokFiles,
      "export_report.json",
    ];
    const out: ExportReport = { format: "gptq", dir, files, tensors: report, notes };
    await Deno.writeTextFile(`${tmp}/export_report.json`, JSON.stringify(out, null, 1));
    await commitDir(tmp, dir);
    return out;
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}

const DTYPE_SIZE: Record<string, number> = { F32: 4, F16: 2, I32: 4 };

/**
 * Writes a safetensors file tensor by tensor: the header (offsets from the declared dtypes and
 * shapes, padded with spaces to 8 bytes) first, then each producer's bytes, checked against the
 * declared size. One tensor in memory at a time.
 */
async function writeSafetensorsStreamed(
  path: string,
  items: { name: string; dtype: string; shape: number[]; produce: () => Promise<Uint8Array> }[],
  metadata: Record<string, string>,
): Promise<void> {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let off = 0;
  const sizes: number[] = [];
  for (const it of items) {
    const n = it.shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[it.dtype];
    header[it.name] = { dtype: it.dtype, shape: it.shape, data_offsets: [off, off + n] };
    sizes.push(n);
    off += n;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (new TextEncoder().encode(json).length % 8)) % 8);
  const hb = new TextEncoder().encode(json);
  const lead = new Uint8Array(8);
  new DataView(lead.buffer).setBigUint64(0, BigInt(hb.length), true);
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    const writeAll = async (b: Uint8Array) => {
      let o = 0;
      while (o < b.length) o += await f.write(b.subarray(o));
    };
    await writeAll(lead);
    await writeAll(hb);
    for (let i = 0; i < items.length; i++) {
      const b = await items[i].produce();
      if (b.length !== sizes[i]) {
        throw new FormatError(
          path,
          `tensor "${items[i].name}" produced ${b.length} bytes, expected ${sizes[i]}`,
        );
      }
      await writeAll(b);
    }
  } finally {
    f.close();
  }
}
