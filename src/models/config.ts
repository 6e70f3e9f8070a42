/**
 * Model configs: Hugging Face `config.json` (Llama/Mistral/Qwen2 and OPT) normalised into one
 * `ModelConfig` with typed errors for missing fields and unsupported architectures.
 * @module
 */
import { ConfigError, UnsupportedError } from "../errors.ts";
import { validateConfigJson } from "./_validate.ts";
import { familyOf, linearGroups } from "./family.ts";

/** Families with a forward pass here. */
export type Family = "llama" | "opt";

/** `model_type` values accepted, by family. */
export const SUPPORTED_MODEL_TYPES: Record<string, Family> = {
  llama: "llama",
  mistral: "llama",
  qwen2: "llama",
  opt: "opt",
};

/** Llama-3 style RoPE scaling (`rope_scaling` in config.json). */
export interface RopeScaling {
  /** "llama3", "linear" or "default". */
  type: string;
  /** Scaling factor. */
  factor: number;
  /** Llama 3: low frequency factor. */
  lowFreqFactor?: number;
  /** Llama 3: high frequency factor. */
  highFreqFactor?: number;
  /** Llama 3: context length before scaling. */
  originalMaxPositionEmbeddings?: number;
}

/** A normalised decoder config. Field names follow config.json in camelCase. */
export interface ModelConfig {
  /** Forward-pass family. */
  family: Family;
  /** config.json `model_type`. */
  modelType: string;
  /** Residual width (`hidden_size`). */
  hiddenSize: number;
  /** MLP width (`intermediate_size`, OPT `ffn_dim`). */
  intermediateSize: number;
  /** Decoder blocks (`num_hidden_layers`). */
  numLayers: number;
  /** Query heads. */
  numHeads: number;
  /** Key/value heads (grouped-query attention when < numHeads). */
  numKvHeads: number;
  /** Per-head width. */
  headDim: number;
  /** Embedding rows. */
  vocabSize: number;
  /** Context length (`max_position_embeddings`). */
  maxPositions: number;
  /** RMSNorm/LayerNorm epsilon. */
  normEps: number;
  /** RoPE base (Llama). */
  ropeTheta: number;
  /** RoPE scaling (Llama 3), if any. */
  ropeScaling?: RopeScaling;
  /** lm_head shares the token embedding. */
  tieWordEmbeddings: boolean;
  /** Biases on q/k/v (Qwen2: true; Llama: `attention_bias`). */
  qkvBias: boolean;
  /** Bias on the attention output projection. */
  oBias: boolean;
  /** Biases on MLP projections. */
  mlpBias: boolean;
  /** MLP activation: "silu" (SwiGLU), "relu", "gelu". */
  activation: string;
  /** OPT: pre-LayerNorm (true for all OPT sizes but 350m). */
  doLayerNormBefore: boolean;
  /** OPT: embedding width (`word_embed_proj_dim`); projections in/out when ≠ hiddenSize. */
  wordEmbedProjDim: number;
  /** Mistral sliding-window attention: a query at t sees keys s with t − s < window; null = off. */
  slidingWindow: number | null;
  /** BOS id, if any. */
  bosTokenId: number | null;
  /** EOS id, if any. */
  eosTokenId: number | null;
}

function need(json: Record<string, unknown>, key: string, file: string): number {
  const v = json[key];
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new ConfigError(
      `${file}: config field "${key}" is missing or not a number (got ${JSON.stringify(v)})`,
    );
  }
  return v;
}

function idOf(v: unknown): number | null {
  if (typeof v === "number") return v;
  if (Array.isArray(v) && typeof v[0] === "number") return v[0];
  return null;
}

/** Parses a config.json object. `file` names it in errors. */
export function parseConfig(json: Record<string, unknown>, file = "config.json"): ModelConfig {
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    validateConfigJson(json, file); // throws: the root must be an object
  }
  const modelType = json.model_type;
  if (typeof modelType !== "string" || !Object.hasOwn(json, "model_type")) {
    throw new ConfigError(`${file}: config field "model_type" is missing`);
  }
  // Own-property lookup: "toString" or "__proto__" must not resolve to Object.prototype members.
  const family = Object.hasOwn(SUPPORTED_MODEL_TYPES, modelType)
    ? SUPPORTED_MODEL_TYPES[modelType]
    : undefined;
  if (!family) {
    throw new UnsupportedError(
      `${file}: model_type "${modelType}" is not supported; supported: ${
        Object.keys(SUPPORTED_MODEL_TYPES).join(", ")
      }`,
    );
  }
  validateConfigJson(json, file);
  if (family === "opt") {
    const hiddenSize = need(json, "hidden_size", file);
    const numHeads = need(json, "num_attention_heads", file);
    const bias = json.enable_bias !== false;
    return {
      family,
      modelType,
      hiddenSize,
      intermediateSize: need(json, "ffn_dim", file),
      numLayers: need(json, "num_hidden_layers", file),
      numHeads,
      numKvHeads: numHeads,
      headDim: hiddenSize / numHeads,
      vocabSize: need(json, "vocab_size", file),
      maxPositions: need(json, "max_position_embeddings", file),
      normEps: 1e-5,
      ropeTheta: 0,
      tieWordEmbeddings: json.tie_word_embeddings !== false,
      qkvBias: bias,
      oBias: bias,
      mlpBias: bias,
      activation: String(json.activation_function ?? "relu"),
      doLayerNormBefore: json.do_layer_norm_before !== false,
      wordEmbedProjDim: typeof json.word_embed_proj_dim === "number"
        ? json.word_embed_proj_dim
        : hiddenSize,
      slidingWindow: null,
      bosTokenId: idOf(json.bos_token_id ?? 2),
      eosTokenId: idOf(json.eos_token_id ?? 2),
    };
  }
  const hiddenSize = need(json, "hidden_size", file);
  const numHeads = need(json, "num_attention_heads", file);
  const rs = json.rope_scaling as Record<string, unknown> | null | undefined;
  let ropeScaling: RopeScaling | undefined;
  if (rs) {
    const type = String(rs.rope_type ?? rs.type ?? "default");
    if (!["llama3", "linear", "default"].includes(type)) {
      throw new UnsupportedError(
        `${file}: rope_scaling type "${type}" is not supported (supported: llama3, linear)`,
      );
    }
    if (type === "llama3") {
      for (
        const k of [
          "factor",
          "low_freq_factor",
          "high_freq_factor",
          "original_max_position_embeddings",
        ]
      ) {
        if (typeof rs[k] !== "number") {
          throw new ConfigError(`${file}: rope_scaling (llama3) lacks the number "${k}"`);
        }
      }
    }
    if (type === "linear" && typeof rs.factor !== "number") {
      throw new ConfigError(`${file}: rope_scaling (linear) lacks the number "factor"`);
    }
    ropeScaling = {
      type,
      factor: Number(rs.factor ?? 1),
      lowFreqFactor: rs.low_freq_factor as number | undefined,
      highFreqFactor: rs.high_freq_factor as number | undefined,
      originalMaxPositionEmbeddings: rs.original_max_position_embeddings as number | undefined,
    };
  }
  const attnBias = json.attention_bias === true;
  const act = String(json.hidden_act ?? "silu");
  if (act !== "silu") {
    throw new UnsupportedError(
      `${file}: hidden_act "${act}" is not supported for ${modelType} (silu only)`,
    );
  }
  const numKvHeads = typeof json.num_key_value_heads === "number"
    ? json.num_key_value_heads
    : numHeads;
  const headDim = typeof json.head_dim === "number" ? json.head_dim : hiddenSize / numHeads;
  if (!(Number.isInteger(numKvHeads) && numKvHeads > 0 && numHeads % numKvHeads === 0)) {
    throw new ConfigError(
      `${file}: num_attention_heads (${numHeads}) is not a multiple of num_key_value_heads (${numKvHeads})`,
    );
  }
  if (!(Number.isInteger(headDim) && headDim % 2 === 0)) {
    throw new ConfigError(`${file}: head dimension ${headDim} must be an even integer for RoPE`);
  }
  return {
    family,
    modelType,
    hiddenSize,
    intermediateSize: need(json, "intermediate_size", file),
    numLayers: need(json, "num_hidden_layers", file),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: need(json, "vocab_size", file),
    maxPositions: need(json, "max_position_embeddings", file),
    normEps: typeof json.rms_norm_eps === "number" ? json.rms_norm_eps : 1e-6,
    ropeTheta: typeof json.rope_theta === "number" ? json.rope_theta : 10000,
    ropeScaling,
    tieWordEmbeddings: json.tie_word_embeddings === true,
    qkvBias: modelType === "qwen2" ? true : attnBias,
    oBias: attnBias,
    mlpBias: json.mlp_bias === true,
    activation: act,
    doLayerNormBefore: true,
    wordEmbedProjDim: hiddenSize,
    slidingWindow: typeof json.sliding_window === "number" &&
        (modelType === "mistral" || json.use_sliding_window === true)
      ? json.sliding_window
      : null,
    bosTokenId: idOf(json.bos_token_id),
    eosTokenId: idOf(json.eos_token_id),
  };
}

/** The shapes the config implies for the decoder's main tensors (embeddings, attention, MLP). */
export function expectedShapes(cfg: ModelConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const { hiddenSize: d, numHeads: nH, numKvHeads: nKV, headDim: hd, intermediateSize: f } = cfg;
  const fam = familyOf(cfg);
  if (fam.positions === "learned") {
    m.set(`${fam.embed}.weight`, [cfg.vocabSize, cfg.wordEmbedProjDim]);
    m.set(`${fam.positionTable}.weight`, [cfg.maxPositions + fam.positionOffset, d]);
  } else m.set(`${fam.embed}.weight`, [cfg.vocabSize, d]);
  for (let i = 0; i < cfg.numLayers; i++) {
    const b = fam.block(i);
    m.set(`${b.q}.weight`, [nH * hd, d]);
    m.set(`${b.k}.weight`, [nKV * hd, d]);
    m.set(`${b.v}.weight`, [nKV * hd, d]);
    m.set(`${b.o}.weight`, [d, nH * hd]);
    const last = b.mlp.length - 1;
    for (const n of b.mlp.slice(0, last)) m.set(`${n}.weight`, [f, d]);
    m.set(`${b.mlp[last]}.weight`, [d, f]);
    if (fam.norm === "rms") {
      m.set(`${b.attnNorm}.weight`, [d]);
      m.set(`${b.mlpNorm}.weight`, [d]);
    }
  }
  if (fam.norm === "rms") m.set(`${fam.finalNorm}.weight`, [d]);
  return m;
}

/** The linear layers of block `i`, in true-sequential groups (qkv, o, up/gate, down). */
export function blockLinearGroups(cfg: ModelConfig, i: number): string[][] {
  return linearGroups(familyOf(cfg), i);
}
