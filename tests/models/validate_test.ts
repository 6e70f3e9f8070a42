/**
 * Configs the model cannot honour (issue 13, "Found"): each is a typed error naming the file and
 * field or tensor, or — for the tied-embedding rule — loads and computes exactly the tied model's
 * logits. Oracle for the rule: the forward of the unmodified stories260K checkpoint (the stray
 * `lm_head` must not change one bit of it); for the errors: the error class and the named field.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import {
  ConfigError,
  FormatError,
  MissingTensorError,
  QuantlabError,
  TensorDtypeError,
  TensorShapeError,
  UnexpectedTensorError,
  UnsupportedError,
} from "../../src/errors.ts";
import { readHeader, readTensor, writeSafetensors } from "../../src/io/safetensors.ts";
import { forward } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import { Rng } from "../_rng.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const STORIES = `${DATA}models/stories260K-hf`;

const BASE = {
  model_type: "llama",
  hidden_size: 8,
  intermediate_size: 12,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  vocab_size: 10,
  max_position_embeddings: 16,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: false,
};

type Entry = { shape: number[]; data: Float32Array | Uint8Array; dtype?: string };

function tinyTensors(layers = 2): Record<string, Entry> {
  const rng = new Rng(3);
  const t = (shape: number[]) => ({
    shape,
    data: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal() * 0.1),
  });
  const out: Record<string, Entry> = { "model.embed_tokens.weight": t([10, 8]) };
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}`;
    out[`${p}.input_layernorm.weight`] = t([8]);
    out[`${p}.post_attention_layernorm.weight`] = t([8]);
    out[`${p}.self_attn.q_proj.weight`] = t([8, 8]);
    out[`${p}.self_attn.k_proj.weight`] = t([4, 8]);
    out[`${p}.self_attn.v_proj.weight`] = t([4, 8]);
    out[`${p}.self_attn.o_proj.weight`] = t([8, 8]);
    out[`${p}.mlp.gate_proj.weight`] = t([12, 8]);
    out[`${p}.mlp.up_proj.weight`] = t([12, 8]);
    out[`${p}.mlp.down_proj.weight`] = t([8, 12]);
  }
  out["model.norm.weight"] = t([8]);
  out["lm_head.weight"] = t([10, 8]);
  return out;
}

async function tiny(
  cfg: Record<string, unknown> | null,
  tensors: Record<string, Entry> = tinyTensors(),
): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "quantlab_validate_" });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(cfg));
  await writeSafetensors(`${dir}/model.safetensors`, tensors);
  return dir;
}

async function expectLoadError(
  cfg: Record<string, unknown> | null,
  cls: new (...a: never[]) => Error,
  includes: string,
  tensors?: Record<string, Entry>,
): Promise<void> {
  const dir = await tiny(cfg, tensors);
  try {
    const e = await assertRejects(() => loadModel(dir), cls);
    assertStringIncludes(e.message, includes, JSON.stringify(cfg));
    assertStringIncludes(e.message, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("config: the tiny base checkpoint loads and runs (the cases below differ by one thing)", async () => {
  const dir = await tiny(BASE);
  try {
    const m = await loadModel(dir);
    const y = await forward(m, [1, 2, 3]);
    assert(y.data.every(Number.isFinite));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config: out-of-range or mistyped fields are ConfigErrors naming the field", async () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ num_hidden_layers: 0 }, "num_hidden_layers"],
    [{ num_hidden_layers: -1 }, "num_hidden_layers"],
    [{ num_hidden_layers: 2.5 }, "num_hidden_layers"],
    [{ num_hidden_layers: 1e7 }, "num_hidden_layers"],
    [{ num_hidden_layers: "2" }, "num_hidden_layers"],
    [{ rms_norm_eps: 0 }, "rms_norm_eps"],
    [{ rms_norm_eps: -1e-5 }, "rms_norm_eps"],
    [{ rope_theta: 0 }, "rope_theta"],
    [{ rope_theta: -10000 }, "rope_theta"],
    [{ rope_scaling: { type: "linear", factor: 0 } }, "factor"],
    [{ rope_scaling: { type: "linear", factor: -2 } }, "factor"],
    [{
      rope_scaling: {
        rope_type: "llama3",
        factor: 8,
        low_freq_factor: 4,
        high_freq_factor: 4,
        original_max_position_embeddings: 8,
      },
    }, "high_freq_factor"],
    [{ model_type: "mistral", sliding_window: 0 }, "sliding_window"],
    [{ model_type: "mistral", sliding_window: -4 }, "sliding_window"],
    [{ num_attention_heads: -8, num_key_value_heads: -4 }, "num_attention_heads"],
    [{ num_key_value_heads: -1 }, "num_key_value_heads"],
    [{ hidden_size: 0 }, "hidden_size"],
    [{ vocab_size: -10 }, "vocab_size"],
    [{ tie_word_embeddings: "yes" }, "tie_word_embeddings"],
    [{ attention_bias: 1 }, "attention_bias"],
  ];
  for (const [patch, field] of cases) {
    const e = await (async () => {
      const dir = await tiny({ ...BASE, ...patch });
      try {
        return await assertRejects(() => loadModel(dir), ConfigError);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    })();
    assertStringIncludes(e.message, `"${field}"`, JSON.stringify(patch));
    assert(!e.message.includes("(-8) is not a multiple of (-4)"), e.message);
  }
});

Deno.test("config: model_type naming an Object.prototype member is unsupported, not a built-in", async () => {
  for (const t of ["toString", "constructor", "__proto__", "hasOwnProperty"]) {
    await expectLoadError({ ...BASE, model_type: t }, UnsupportedError, `"${t}"`);
  }
});

Deno.test("config: config.json holding null, an array or a number is a ConfigError naming the file", async () => {
  for (const v of [null, [1], 3]) {
    const dir = await tiny(null);
    try {
      await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(v));
      const e = await assertRejects(() => loadModel(dir), ConfigError);
      assertStringIncludes(e.message, `${dir}/config.json`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("tensors: fewer layers in the config than in the weights is an UnexpectedTensorError", async () => {
  await expectLoadError(
    { ...BASE, num_hidden_layers: 1 },
    UnexpectedTensorError,
    "holds layer 1",
  );
});

Deno.test("tensors: attention_bias / mlp_bias true without bias tensors is a MissingTensorError", async () => {
  await expectLoadError(
    { ...BASE, attention_bias: true },
    MissingTensorError,
    "model.layers.0.self_attn.q_proj.bias",
  );
  await expectLoadError(
    { ...BASE, mlp_bias: true },
    MissingTensorError,
    "model.layers.0.mlp.gate_proj.bias",
  );
});

Deno.test("tensors: a bias the config turns off is an UnexpectedTensorError", async () => {
  const t = tinyTensors();
  t["model.layers.1.self_attn.q_proj.bias"] = { shape: [8], data: new Float32Array(8) };
  await expectLoadError(BASE, UnexpectedTensorError, "model.layers.1.self_attn.q_proj.bias", t);
});

Deno.test("tensors: an I32 weight is a TensorDtypeError naming the tensor", async () => {
  const t = tinyTensors();
  t["model.layers.0.mlp.up_proj.weight"] = {
    shape: [12, 8],
    data: new Uint8Array(12 * 8 * 4),
    dtype: "I32",
  };
  await expectLoadError(BASE, TensorDtypeError, "model.layers.0.mlp.up_proj.weight", t);
});

Deno.test("tensors: an lm_head of the wrong shape fails at load with a TensorShapeError", async () => {
  const t = tinyTensors();
  t["lm_head.weight"] = { shape: [9, 8], data: new Float32Array(72) };
  await expectLoadError(BASE, TensorShapeError, "lm_head.weight", t);
});

Deno.test("tensors: an untied config without lm_head is a MissingTensorError", async () => {
  const t = tinyTensors();
  delete t["lm_head.weight"];
  await expectLoadError(BASE, MissingTensorError, "lm_head.weight", t);
});

Deno.test("tensors: typed errors are FormatErrors too (one class per kind, same base)", () => {
  for (const C of [MissingTensorError, UnexpectedTensorError, TensorShapeError, TensorDtypeError]) {
    const e = new C("f", "t", "m");
    assert(e instanceof FormatError && e instanceof QuantlabError);
    assertEquals((e as MissingTensorError).tensor, "t");
  }
});

Deno.test("tied embeddings: a stray lm_head is ignored (as transformers does): logits are the tied model's, bit for bit", async () => {
  const ref = await loadModel(STORIES);
  const h = await readHeader(`${STORIES}/model.safetensors`);
  const tensors: Record<string, Entry> = {};
  for (const n of h.tensors.keys()) tensors[n] = await readTensor(h, n);
  assert(!("lm_head.weight" in tensors));
  const rng = new Rng(9);
  const [V, d] = tensors["model.embed_tokens.weight"].shape;
  tensors["lm_head.weight"] = {
    shape: [V, d],
    data: Float32Array.from({ length: V * d }, () => rng.normal()),
  };
  const dir = await Deno.makeTempDir({ prefix: "quantlab_tied_" });
  try {
    await Deno.copyFile(`${STORIES}/config.json`, `${dir}/config.json`);
    await Deno.chmod(`${dir}/config.json`, 0o644);
    await writeSafetensors(`${dir}/model.safetensors`, tensors);
    const m = await loadModel(dir);
    assert(!m.weights.has("lm_head.weight"));
    const ids = [1, 403, 407, 261, 378, 299, 265, 264];
    assertEquals((await forward(m, ids)).data, (await forward(ref, ids)).data);
    const e = await assertRejects(
      () => loadModel(dir, { tiedLmHead: "refuse" }),
      UnexpectedTensorError,
    );
    assertEquals(e.tensor, "lm_head.weight");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
