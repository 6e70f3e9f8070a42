/**
 * Validation of a checkpoint against its config: every config.json field the forward reads is
 * type- and range-checked ({@linkcode validateConfigJson}), and the set of tensors must be exactly
 * what the config implies ({@linkcode checkTensors}): names, shapes and dtypes. A config the model
 * cannot honour is a typed error naming the file and field or tensor, never a silently different
 * perplexity.
 *
 * Named rules for tensors that are present but not used:
 * - **tied `lm_head`** (`tiedLmHead`): with `tie_word_embeddings: true` a stored `lm_head.weight`
 *   is ignored and the embedding is the output projection, as Hugging Face transformers does
 *   (`PreTrainedModel.tie_weights` replaces the `lm_head` parameter by the embedding on load).
 *   Measured here: stories260K-hf with a random stray `lm_head.weight` gave perplexity 905 before
 *   this rule, the tied model's 4.86 after. `tiedLmHead: "refuse"` makes it an
 *   {@linkcode UnexpectedTensorError} instead.
 * - **RoPE buffers**: `*.self_attn.rotary_emb.inv_freq` (saved by transformers < 4.31) are
 *   recomputed from `rope_theta` and ignored.
 * @module
 */
import {
  ConfigFieldError,
  MissingTensorError,
  TensorDtypeError,
  TensorShapeError,
  UnexpectedTensorError,
} from "../errors.ts";
import type { ModelConfig } from "./config.ts";
import type { WeightSource } from "./model.ts";

/** Largest `num_hidden_layers` accepted (no released decoder has more than a few hundred). */
export const MAX_LAYERS = 10_000;
/** Largest `hidden_size`, `head_dim`, `word_embed_proj_dim`. */
export const MAX_WIDTH = 2 ** 20;
/** Largest `intermediate_size` / `ffn_dim`. */
export const MAX_FFN = 2 ** 22;
/** Largest `vocab_size` and `max_position_embeddings`. */
export const MAX_TOKENS = 2 ** 24;
/** Largest head count. */
export const MAX_HEADS = 2 ** 14;

/** A value in words for error messages: `string "4"`, `number 2.5`, `null`, `an array`. */
export function describeValue(v: unknown): string {
  if (v === null) return "null";
  if (v === undefined) return "nothing (missing)";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") {
    const s = JSON.stringify(v);
    return `string ${s.length > 80 ? s.slice(0, 80) + "…" : s}`;
  }
  if (typeof v === "object") return "an object";
  return `${typeof v} ${String(v)}`;
}

type Json = Record<string, unknown>;

function fail(file: string, field: string, want: string, v: unknown): never {
  throw new ConfigFieldError(file, field, `must be ${want}, got ${describeValue(v)}`);
}

function int(json: Json, key: string, file: string, min: number, max: number, need: boolean) {
  const has = Object.hasOwn(json, key) && json[key] !== undefined;
  if (!has) {
    if (need) fail(file, key, `an integer in ${min}–${max} (required)`, undefined);
    return;
  }
  const v = json[key];
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    fail(file, key, `an integer in ${min}–${max}`, v);
  }
}

function num(json: Json, key: string, file: string, lo: number, hi: number, want: string) {
  if (!Object.hasOwn(json, key) || json[key] === undefined) return;
  const v = json[key];
  if (typeof v !== "number" || !Number.isFinite(v) || !(v > lo) || !(v < hi)) {
    fail(file, key, want, v);
  }
}

function bool(json: Json, key: string, file: string) {
  if (!Object.hasOwn(json, key) || json[key] === undefined) return;
  if (typeof json[key] !== "boolean") fail(file, key, "true or false", json[key]);
}

function str(json: Json, key: string, file: string) {
  if (!Object.hasOwn(json, key) || json[key] === undefined || json[key] === null) return;
  if (typeof json[key] !== "string") fail(file, key, "a string", json[key]);
}

function tokenId(json: Json, key: string, file: string) {
  if (!Object.hasOwn(json, key)) return;
  const v = json[key];
  const ok = (x: unknown) => typeof x === "number" && Number.isInteger(x) && x >= 0;
  if (v === null || ok(v) || (Array.isArray(v) && v.length > 0 && v.every(ok))) return;
  fail(file, key, "a token id ≥ 0, a non-empty list of them, or null", v);
}

/**
 * Checks a parsed config.json before it is normalised: an object; every field the forward reads
 * of the right type and in range (sizes are positive integers below the `MAX_*` bounds, epsilons
 * and RoPE bases finite and > 0, flags true/false); heads that divide the width. Field lookups are
 * own-property only, so `model_type: "toString"` is an unknown type, not a JavaScript built-in.
 * Throws {@linkcode ConfigFieldError} naming the file and the field.
 */
export function validateConfigJson(json: unknown, file: string): asserts json is Json {
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new ConfigFieldError(file, "(root)", `must be a JSON object, got ${describeValue(json)}`);
  }
  const j = json as Json;
  if (typeof j.model_type !== "string" || !Object.hasOwn(j, "model_type")) {
    fail(file, "model_type", "a string", j.model_type);
  }
  const opt = j.model_type === "opt";
  int(j, "hidden_size", file, 1, MAX_WIDTH, true);
  int(j, opt ? "ffn_dim" : "intermediate_size", file, 1, MAX_FFN, true);
  int(j, "num_hidden_layers", file, 1, MAX_LAYERS, true);
  int(j, "num_attention_heads", file, 1, MAX_HEADS, true);
  int(j, "vocab_size", file, 1, MAX_TOKENS, true);
  int(j, "max_position_embeddings", file, 1, MAX_TOKENS, true);
  const d = j.hidden_size as number, nH = j.num_attention_heads as number;
  for (const k of ["tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window"]) {
    bool(j, k, file);
  }
  tokenId(j, "bos_token_id", file);
  tokenId(j, "eos_token_id", file);
  if (opt) {
    bool(j, "enable_bias", file);
    bool(j, "do_layer_norm_before", file);
    str(j, "activation_function", file);
    int(j, "word_embed_proj_dim", file, 1, MAX_WIDTH, false);
    if (d % nH !== 0) {
      fail(file, "num_attention_heads", `a divisor of hidden_size (${d})`, nH);
    }
    return;
  }
  str(j, "hidden_act", file);
  int(j, "num_key_value_heads", file, 1, nH, false);
  const nKV = (j.num_key_value_heads ?? nH) as number;
  if (nH % nKV !== 0) {
    fail(file, "num_key_value_heads", `a divisor of num_attention_heads (${nH})`, nKV);
  }
  if (Object.hasOwn(j, "head_dim") && j.head_dim !== null && j.head_dim !== undefined) {
    int(j, "head_dim", file, 2, MAX_WIDTH, false);
    if ((j.head_dim as number) % 2 !== 0) fail(file, "head_dim", "even (RoPE pairs)", j.head_dim);
  } else if (d % nH !== 0 || (d / nH) % 2 !== 0) {
    fail(
      file,
      "num_attention_heads",
      `a divisor of hidden_size (${d}) with an even quotient (the RoPE head width)`,
      nH,
    );
  }
  num(j, "rms_norm_eps", file, 0, 1, "a finite number in (0, 1)");
  num(j, "rope_theta", file, 0, Infinity, "a finite number > 0");
  if (Object.hasOwn(j, "sliding_window") && j.sliding_window !== null) {
    int(j, "sliding_window", file, 1, MAX_TOKENS, false);
  }
  if (Object.hasOwn(j, "rope_scaling") && j.rope_scaling !== null) {
    const rs = j.rope_scaling;
    if (typeof rs !== "object" || Array.isArray(rs)) fail(file, "rope_scaling", "an object", rs);
    const r = rs as Json;
    const f = `${file} rope_scaling`;
    num(r, "factor", f, 0, Infinity, "a finite number > 0");
    num(r, "low_freq_factor", f, 0, Infinity, "a finite number > 0");
    num(r, "high_freq_factor", f, 0, Infinity, "a finite number > 0");
    int(r, "original_max_position_embeddings", f, 1, MAX_TOKENS, false);
    if (
      typeof r.low_freq_factor === "number" && typeof r.high_freq_factor === "number" &&
      !(r.high_freq_factor > r.low_freq_factor)
    ) {
      // Llama 3's smoothing divides by (high − low).
      fail(f, "high_freq_factor", `> low_freq_factor (${r.low_freq_factor})`, r.high_freq_factor);
    }
  }
}

/** Dtypes a float weight may be stored in. */
export const FLOAT_DTYPES: ReadonlySet<string> = new Set(["F32", "F16", "BF16", "F64"]);

/** What the config implies: required tensors and optional ones, with shapes. */
export interface ExpectedTensors {
  /** Tensors that must be present. */
  required: Map<string, number[]>;
  /** Tensors that may be present (used when they are). */
  optional: Map<string, number[]>;
}

/** Every tensor the forward may read for `cfg`, with its shape (biases and `lm_head` included). */
export function expectedTensors(cfg: ModelConfig): ExpectedTensors {
  const req = new Map<string, number[]>(), opt = new Map<string, number[]>();
  const { hiddenSize: d, numHeads: nH, numKvHeads: nKV, headDim: hd, intermediateSize: f } = cfg;
  const lin = (name: string, rows: number, cols: number, bias: boolean) => {
    req.set(`${name}.weight`, [rows, cols]);
    if (bias) req.set(`${name}.bias`, [rows]);
  };
  if (cfg.family === "opt") {
    const p = "model.decoder";
    const wep = cfg.wordEmbedProjDim, b = cfg.qkvBias;
    req.set(`${p}.embed_tokens.weight`, [cfg.vocabSize, wep]);
    req.set(`${p}.embed_positions.weight`, [cfg.maxPositions + 2, d]);
    if (wep !== d) {
      req.set(`${p}.project_in.weight`, [d, wep]);
      req.set(`${p}.project_out.weight`, [wep, d]);
    }
    for (let i = 0; i < cfg.numLayers; i++) {
      const l = `${p}.layers.${i}`;
      for (const n of ["q_proj", "k_proj", "v_proj", "out_proj"]) {
        lin(`${l}.self_attn.${n}`, d, d, b);
      }
      lin(`${l}.fc1`, f, d, b);
      lin(`${l}.fc2`, d, f, b);
      for (const n of ["self_attn_layer_norm", "final_layer_norm"]) {
        req.set(`${l}.${n}.weight`, [d]);
        req.set(`${l}.${n}.bias`, [d]);
      }
    }
    // transformers drops it for `_remove_final_layer_norm` configs; the forward uses it if present.
    const fin = cfg.doLayerNormBefore ? opt : req;
    if (cfg.doLayerNormBefore) {
      fin.set(`${p}.final_layer_norm.weight`, [d]);
      fin.set(`${p}.final_layer_norm.bias`, [d]);
    }
    if (!cfg.tieWordEmbeddings) req.set("lm_head.weight", [cfg.vocabSize, wep]);
    return { required: req, optional: opt };
  }
  req.set("model.embed_tokens.weight", [cfg.vocabSize, d]);
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}`;
    lin(`${p}.self_attn.q_proj`, nH * hd, d, cfg.qkvBias);
    lin(`${p}.self_attn.k_proj`, nKV * hd, d, cfg.qkvBias);
    lin(`${p}.self_attn.v_proj`, nKV * hd, d, cfg.qkvBias);
    lin(`${p}.self_attn.o_proj`, d, nH * hd, cfg.oBias);
    lin(`${p}.mlp.gate_proj`, f, d, cfg.mlpBias);
    lin(`${p}.mlp.up_proj`, f, d, cfg.mlpBias);
    lin(`${p}.mlp.down_proj`, d, f, cfg.mlpBias);
    req.set(`${p}.input_layernorm.weight`, [d]);
    req.set(`${p}.post_attention_layernorm.weight`, [d]);
  }
  req.set("model.norm.weight", [d]);
  if (!cfg.tieWordEmbeddings) req.set("lm_head.weight", [cfg.vocabSize, d]);
  return { required: req, optional: opt };
}

/** Options of {@linkcode checkTensors}. */
export interface CheckTensorsOptions {
  /** A stored `lm_head.weight` with tied embeddings: "ignore" (default, as transformers) or "refuse". */
  tiedLmHead?: "ignore" | "refuse";
}

const INV_FREQ = /\.self_attn\.rotary_emb\.inv_freq$/;

/**
 * Checks the tensors of `src` against `cfg` and returns the names the model must not read (the
 * ignored ones of the named rules in the module doc). Missing → {@linkcode MissingTensorError};
 * present but unaccounted for (an extra layer, a bias the config turns off) →
 * {@linkcode UnexpectedTensorError}; other shape → {@linkcode TensorShapeError}; a non-float dtype
 * → {@linkcode TensorDtypeError}. Each names `where` and the tensor.
 */
export function checkTensors(
  cfg: ModelConfig,
  src: WeightSource,
  where: string,
  opts: CheckTensorsOptions = {},
): Set<string> {
  const { required, optional } = expectedTensors(cfg);
  const names = src.names();
  const have = new Set(names);
  for (const name of required.keys()) {
    if (!have.has(name)) {
      throw new MissingTensorError(
        where,
        name,
        `tensor "${name}" is missing (config.json implies it)`,
      );
    }
  }
  const ignored = new Set<string>();
  for (const name of names) {
    const shape = required.get(name) ?? optional.get(name);
    if (!shape) {
      if (INV_FREQ.test(name)) {
        ignored.add(name);
        continue;
      }
      if (name === "lm_head.weight" && cfg.tieWordEmbeddings) {
        if ((opts.tiedLmHead ?? "ignore") === "ignore") {
          ignored.add(name);
          continue;
        }
        throw new UnexpectedTensorError(
          where,
          name,
          `tensor "lm_head.weight" is present but config.json ties the output to the embedding ` +
            `(tie_word_embeddings); pass tiedLmHead: "ignore" to use the embedding as transformers does`,
        );
      }
      const layer = /^model\.(?:decoder\.)?layers\.(\d+)\./.exec(name);
      const why = layer && Number(layer[1]) >= cfg.numLayers
        ? `config.json num_hidden_layers is ${cfg.numLayers} but the checkpoint holds layer ${
          layer[1]
        }`
        : /\.bias$/.test(name)
        ? "config.json turns this bias off (attention_bias / mlp_bias / enable_bias)"
        : "config.json does not account for it";
      throw new UnexpectedTensorError(
        where,
        name,
        `tensor "${name.length > 200 ? name.slice(0, 200) + "…" : name}" is unexpected: ${why}`,
      );
    }
    const got = src.shape?.(name);
    if (got && (got.length !== shape.length || got.some((x, i) => x !== shape[i]))) {
      throw new TensorShapeError(
        where,
        name,
        `tensor "${name}" has shape [${got}] but config.json implies [${shape}]`,
      );
    }
    const dt = src.dtype?.(name);
    if (dt !== undefined && !FLOAT_DTYPES.has(dt)) {
      throw new TensorDtypeError(
        where,
        name,
        `tensor "${name}" is ${dt}; a weight must be a float dtype (${[...FLOAT_DTYPES]})`,
      );
    }
  }
  return ignored;
}

/** `src` without the tensors in `hide` (they are neither listed nor loadable). */
export function hideTensors(src: WeightSource, hide: ReadonlySet<string>): WeightSource {
  if (!hide.size) return src;
  const names = src.names().filter((n) => !hide.has(n));
  return {
    names: () => names,
    load: (n) => src.load(n),
    shape: src.shape ? (n) => (hide.has(n) ? undefined : src.shape!(n)) : undefined,
    dtype: src.dtype ? (n) => (hide.has(n) ? undefined : src.dtype!(n)) : undefined,
  };
}
