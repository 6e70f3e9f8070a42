/**
 * Tiny seeded model cases (shared by the forward oracle test and the GPU-resident decoder test):
 * seeded weights, the HF config, F32 / F16 / BF16 / sharded safetensors storage.
 * @module
 */
import { writeSafetensors } from "../../src/io/safetensors.ts";
import { loadModel } from "../../src/models/load.ts";
import { Rng } from "../_rng.ts";
import {
  type ConfigJson,
  type RefTensor,
  type RefWeights,
  roundToBf16,
  roundToF16,
} from "./_reference.ts";

/** How a case stores its tensors. */
export type Storage = "F32" | "F16" | "BF16" | "sharded";

/** A tiny seeded model: its HF config, storage and seed. */
export interface Case {
  name: string;
  config: ConfigJson;
  storage: Storage;
  /** Stored tensor names: HF "model.decoder.*" → "decoder.*" for OPT checkpoints saved that way. */
  stripModelPrefix?: boolean;
  seed: number;
}

/** Vocabulary of every case. */
export const VOCAB = 97;
/** Context of every case. */
export const CTX = 40;

function llamaWeights(cfg: ConfigJson, rng: Rng): RefWeights {
  const H = cfg.hidden_size as number;
  const nH = cfg.num_attention_heads as number;
  const nKV = (cfg.num_key_value_heads as number | undefined) ?? nH;
  const hd = (cfg.head_dim as number | undefined) ?? H / nH;
  const I = cfg.intermediate_size as number;
  const V = cfg.vocab_size as number;
  const qkvBias = cfg.model_type === "qwen2" || cfg.attention_bias === true;
  const oBias = cfg.model_type !== "qwen2" && cfg.attention_bias === true;
  const mlpBias = cfg.mlp_bias === true;
  const w: RefWeights = {};
  const mat = (r: number, c: number): RefTensor => ({
    shape: [r, c],
    data: rng.normals(r * c, 1 / Math.sqrt(c)),
  });
  const vec = (n: number, std: number, mean = 0): RefTensor => ({
    shape: [n],
    data: rng.normals(n, std, mean),
  });
  w["model.embed_tokens.weight"] = { shape: [V, H], data: rng.normals(V * H, 1) };
  for (let l = 0; l < (cfg.num_hidden_layers as number); l++) {
    const p = `model.layers.${l}`;
    w[`${p}.input_layernorm.weight`] = vec(H, 0.2, 1);
    w[`${p}.self_attn.q_proj.weight`] = mat(nH * hd, H);
    w[`${p}.self_attn.k_proj.weight`] = mat(nKV * hd, H);
    w[`${p}.self_attn.v_proj.weight`] = mat(nKV * hd, H);
    w[`${p}.self_attn.o_proj.weight`] = mat(H, nH * hd);
    if (qkvBias) {
      w[`${p}.self_attn.q_proj.bias`] = vec(nH * hd, 0.3);
      w[`${p}.self_attn.k_proj.bias`] = vec(nKV * hd, 0.3);
      w[`${p}.self_attn.v_proj.bias`] = vec(nKV * hd, 0.3);
    }
    if (oBias) w[`${p}.self_attn.o_proj.bias`] = vec(H, 0.3);
    w[`${p}.post_attention_layernorm.weight`] = vec(H, 0.2, 1);
    w[`${p}.mlp.gate_proj.weight`] = mat(I, H);
    w[`${p}.mlp.up_proj.weight`] = mat(I, H);
    w[`${p}.mlp.down_proj.weight`] = mat(H, I);
    if (mlpBias) {
      w[`${p}.mlp.gate_proj.bias`] = vec(I, 0.3);
      w[`${p}.mlp.up_proj.bias`] = vec(I, 0.3);
      w[`${p}.mlp.down_proj.bias`] = vec(H, 0.3);
    }
  }
  w["model.norm.weight"] = vec(H, 0.2, 1);
  if (cfg.tie_word_embeddings !== true) w["lm_head.weight"] = mat(V, H);
  return w;
}

function optWeights(cfg: ConfigJson, rng: Rng): RefWeights {
  const H = cfg.hidden_size as number;
  const F = cfg.ffn_dim as number;
  const V = cfg.vocab_size as number;
  const E = (cfg.word_embed_proj_dim as number | undefined) ?? H;
  const P = (cfg.max_position_embeddings as number) + 2;
  const bias = cfg.enable_bias !== false;
  const w: RefWeights = {};
  const mat = (r: number, c: number): RefTensor => ({
    shape: [r, c],
    data: rng.normals(r * c, 1 / Math.sqrt(c)),
  });
  const vec = (n: number, std: number, mean = 0): RefTensor => ({
    shape: [n],
    data: rng.normals(n, std, mean),
  });
  const d = "model.decoder";
  w[`${d}.embed_tokens.weight`] = { shape: [V, E], data: rng.normals(V * E, 1) };
  w[`${d}.embed_positions.weight`] = { shape: [P, H], data: rng.normals(P * H, 0.5) };
  if (E !== H) {
    w[`${d}.project_in.weight`] = mat(H, E);
    w[`${d}.project_out.weight`] = mat(E, H);
  }
  for (let l = 0; l < (cfg.num_hidden_layers as number); l++) {
    const p = `${d}.layers.${l}`;
    for (const n of ["q_proj", "k_proj", "v_proj", "out_proj"]) {
      w[`${p}.self_attn.${n}.weight`] = mat(H, H);
      if (bias) w[`${p}.self_attn.${n}.bias`] = vec(H, 0.3);
    }
    w[`${p}.self_attn_layer_norm.weight`] = vec(H, 0.2, 1);
    w[`${p}.self_attn_layer_norm.bias`] = vec(H, 0.2);
    w[`${p}.fc1.weight`] = mat(F, H);
    if (bias) w[`${p}.fc1.bias`] = vec(F, 0.3);
    w[`${p}.fc2.weight`] = mat(H, F);
    if (bias) w[`${p}.fc2.bias`] = vec(H, 0.3);
    w[`${p}.final_layer_norm.weight`] = vec(H, 0.2, 1);
    w[`${p}.final_layer_norm.bias`] = vec(H, 0.2);
  }
  if (cfg.do_layer_norm_before !== false) {
    w[`${d}.final_layer_norm.weight`] = vec(H, 0.2, 1);
    w[`${d}.final_layer_norm.bias`] = vec(H, 0.2);
  }
  return w;
}

/** The variants: Llama GQA, Llama 3 / linear rope scaling, biases, Qwen2, Mistral, OPT pre/post-LN. */
export const CASES: Case[] = [
  {
    name: "llama: GQA (4 q / 2 kv heads), untied lm_head, F32",
    seed: 11,
    storage: "F32",
    config: {
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      hidden_size: 48,
      intermediate_size: 80,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: VOCAB,
      max_position_embeddings: CTX,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      hidden_act: "silu",
      tie_word_embeddings: false,
    },
  },
  {
    name: "llama: llama3 rope_scaling (all three bands), tied embeddings, sharded index",
    seed: 12,
    storage: "sharded",
    config: {
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      hidden_size: 48,
      intermediate_size: 64,
      num_hidden_layers: 3,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: VOCAB,
      max_position_embeddings: CTX,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      // head_dim 12 → wavelengths 6.3, 29, 135, 628, … : with original 32 / high 4 / low 1 the
      // first band is kept, the second smoothed, the rest divided by the factor.
      rope_scaling: {
        rope_type: "llama3",
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 32,
      },
      tie_word_embeddings: true,
    },
  },
  {
    name: "llama: attention_bias + mlp_bias, MHA, default rms_norm_eps",
    seed: 13,
    storage: "F32",
    config: {
      model_type: "llama",
      hidden_size: 32,
      intermediate_size: 48,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      vocab_size: VOCAB,
      max_position_embeddings: CTX,
      attention_bias: true,
      mlp_bias: true,
    },
  },
  {
    name: "qwen2: q/k/v biases, rope_theta 1e6, stored as BF16",
    seed: 14,
    storage: "BF16",
    config: {
      architectures: ["Qwen2ForCausalLM"],
      model_type: "qwen2",
      hidden_size: 48,
      intermediate_size: 96,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: VOCAB,
      max_position_embeddings: CTX,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000,
      tie_word_embeddings: false,
      use_sliding_window: false,
      hidden_act: "silu",
    },
  },
  {
    name: "mistral: explicit head_dim ≠ hidden/heads, stored as F16",
    seed: 15,
    storage: "F16",
    config: {
      architectures: ["MistralForCausalLM"],
      model_type: "mistral",
      hidden_size: 32,
      intermediate_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      head_dim: 16,
      vocab_size: VOCAB,
      max_position_embeddings: CTX,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      sliding_window: 4096,
      tie_word_embeddings: false,
    },
  },
  {
    name: "opt: pre-LN, final_layer_norm, tied lm_head, F32",
    seed: 16,
    storage: "F32",
    config: {
      architectures: ["OPTForCausalLM"],
      model_type: "opt",
      hidden_size: 32,
      ffn_dim: 64,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      vocab_size: VOCAB,
      max_position_embeddings: CTX,
      word_embed_proj_dim: 32,
      do_layer_norm_before: true,
      activation_function: "relu",
      enable_bias: true,
    },
  },
  {
    name: "opt: post-LN (do_layer_norm_before false) with project_in/project_out, F32",
    seed: 17,
    storage: "F32",
    config: {
      architectures: ["OPTForCausalLM"],
      model_type: "opt",
      hidden_size: 48,
      ffn_dim: 80,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      vocab_size: VOCAB,
      max_position_embeddings: CTX,
      word_embed_proj_dim: 32,
      do_layer_norm_before: false,
      activation_function: "relu",
    },
  },
  {
    name: "opt: post-LN, enable_bias false (no linear biases), F16",
    seed: 19,
    storage: "F16",
    config: {
      model_type: "opt",
      hidden_size: 32,
      ffn_dim: 48,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      vocab_size: VOCAB,
      max_position_embeddings: CTX,
      do_layer_norm_before: false,
      enable_bias: false,
    },
  },
  {
    name: "llama: linear rope_scaling (factor 2), tied embeddings, BF16",
    seed: 20,
    storage: "BF16",
    config: {
      model_type: "llama",
      hidden_size: 32,
      intermediate_size: 48,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 1,
      vocab_size: VOCAB,
      max_position_embeddings: CTX,
      rms_norm_eps: 1e-5,
      rope_scaling: { type: "linear", factor: 2 },
      tie_word_embeddings: true,
    },
  },
  {
    name: 'opt: pre-LN with projections, tensors stored as "decoder.*", sharded',
    seed: 18,
    storage: "sharded",
    stripModelPrefix: true,
    config: {
      model_type: "opt",
      hidden_size: 48,
      ffn_dim: 64,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      vocab_size: VOCAB,
      max_position_embeddings: CTX,
      word_embed_proj_dim: 32,
    },
  },
];

/** Writes config.json + weights (per `storage`); returns the weights as the reference sees them. */
export async function writeCheckpoint(dir: string, c: Case, w: RefWeights): Promise<RefWeights> {
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(c.config, null, 2));
  const dtype = c.storage === "F16" || c.storage === "BF16" ? c.storage : "F32";
  const stored = (
    n: string,
  ) => (c.stripModelPrefix ? n.replace(/^model\.decoder\./, "decoder.") : n);
  const entries = Object.entries(w).map(([n, t]) =>
    [
      stored(n),
      { shape: t.shape, data: t.data, dtype },
    ] as const
  );
  if (c.storage === "sharded") {
    const half = Math.ceil(entries.length / 2);
    const shards = [entries.slice(0, half), entries.slice(half)];
    const weightMap: Record<string, string> = {};
    for (let s = 0; s < shards.length; s++) {
      const file = `model-0000${s + 1}-of-0000${shards.length}.safetensors`;
      await writeSafetensors(`${dir}/${file}`, Object.fromEntries(shards[s]));
      for (const [n] of shards[s]) weightMap[n] = file;
    }
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }),
    );
  } else {
    await writeSafetensors(`${dir}/model.safetensors`, Object.fromEntries(entries), {
      metadata: { format: "pt" },
    });
  }
  if (dtype === "F32") return w;
  // The reference reads the values the file holds: rounded by an independent closed form.
  const round = dtype === "F16" ? roundToF16 : roundToBf16;
  const out: RefWeights = {};
  for (const [n, t] of Object.entries(w)) out[n] = { shape: t.shape, data: t.data.map(round) };
  return out;
}

/** Writes case `c` to a temp folder and loads it; the caller removes `dir`. */
export async function setup(c: Case) {
  const rng = new Rng(c.seed);
  const w = c.config.model_type === "opt" ? optWeights(c.config, rng) : llamaWeights(c.config, rng);
  const dir = await Deno.makeTempDir({ prefix: "quantlab_fwd_" });
  const refW = await writeCheckpoint(dir, c, w);
  const model = await loadModel(dir);
  return { rng, dir, refW, model };
}
