/**
 * Checkpoint folders and configs: typed errors that name the field/file and say what to do.
 * Missing config fields, unsupported architectures, pickled checkpoints, broken shard indexes,
 * and a hub name while offline.
 */
import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { openCheckpoint } from "../../src/io/hf_checkpoint.ts";
import { writeSafetensors } from "../../src/io/safetensors.ts";
import { parseConfig } from "../../src/models/config.ts";
import { loadModel } from "../../src/models/load.ts";
import { ConfigError, FormatError, OfflineError, UnsupportedError } from "../../src/errors.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "quantlab_ck_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const LLAMA = {
  model_type: "llama",
  hidden_size: 16,
  intermediate_size: 32,
  num_hidden_layers: 1,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  vocab_size: 11,
  max_position_embeddings: 8,
};

const OPT = {
  model_type: "opt",
  hidden_size: 16,
  ffn_dim: 32,
  num_hidden_layers: 1,
  num_attention_heads: 2,
  vocab_size: 11,
  max_position_embeddings: 8,
};

/** A complete tiny Llama checkpoint's tensors (values irrelevant here). */
function llamaTensors(): Record<string, { shape: number[]; data: Float32Array }> {
  const t = (shape: number[]) => ({
    shape,
    data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(0.01),
  });
  const p = "model.layers.0";
  return {
    "model.embed_tokens.weight": t([11, 16]),
    [`${p}.input_layernorm.weight`]: t([16]),
    [`${p}.self_attn.q_proj.weight`]: t([16, 16]),
    [`${p}.self_attn.k_proj.weight`]: t([8, 16]),
    [`${p}.self_attn.v_proj.weight`]: t([8, 16]),
    [`${p}.self_attn.o_proj.weight`]: t([16, 16]),
    [`${p}.post_attention_layernorm.weight`]: t([16]),
    [`${p}.mlp.gate_proj.weight`]: t([32, 16]),
    [`${p}.mlp.up_proj.weight`]: t([32, 16]),
    [`${p}.mlp.down_proj.weight`]: t([16, 32]),
    "model.norm.weight": t([16]),
    "lm_head.weight": t([11, 16]),
  };
}

Deno.test("config: each missing required field is a ConfigError naming the field and file", () => {
  for (
    const [base, fields] of [
      [LLAMA, [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "vocab_size",
        "max_position_embeddings",
      ]],
      [OPT, [
        "hidden_size",
        "ffn_dim",
        "num_hidden_layers",
        "num_attention_heads",
        "vocab_size",
        "max_position_embeddings",
      ]],
    ] as const
  ) {
    for (const f of fields) {
      const json: Record<string, unknown> = { ...base };
      delete json[f];
      const e = assertThrows(() => parseConfig(json, "/x/config.json"), ConfigError);
      assertStringIncludes(e.message, `"${f}"`);
      assertStringIncludes(e.message, "/x/config.json");
      // A wrong type is as bad as a missing field.
      const e2 = assertThrows(
        () => parseConfig({ ...base, [f]: "12" }, "/x/config.json"),
        ConfigError,
      );
      assertStringIncludes(e2.message, f);
    }
  }
  const e = assertThrows(
    () => parseConfig({ ...LLAMA, model_type: undefined }, "c.json"),
    ConfigError,
  );
  assertStringIncludes(e.message, "model_type");
  // The complete ones parse, with HF defaults.
  const c = parseConfig(LLAMA);
  assertEquals([c.family, c.numKvHeads, c.headDim, c.tieWordEmbeddings], ["llama", 1, 8, false]);
  const o = parseConfig(OPT);
  assertEquals([o.family, o.doLayerNormBefore, o.wordEmbedProjDim, o.tieWordEmbeddings], [
    "opt",
    true,
    16,
    true,
  ]);
});

Deno.test("loadModel: a config.json missing a field rejects with ConfigError naming field and file", async () => {
  await withTempDir(async (dir) => {
    const json: Record<string, unknown> = { ...LLAMA };
    delete json.vocab_size;
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(json));
    await writeSafetensors(`${dir}/model.safetensors`, llamaTensors());
    const e = await assertRejects(() => loadModel(dir), ConfigError);
    assertStringIncludes(e.message, "vocab_size");
    assertStringIncludes(e.message, `${dir}/config.json`);
  });
});

Deno.test("loadModel: unsupported model_type (gpt_neox) lists the supported ones", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/config.json`,
      JSON.stringify({ ...LLAMA, model_type: "gpt_neox", architectures: ["GPTNeoXForCausalLM"] }),
    );
    await writeSafetensors(`${dir}/model.safetensors`, llamaTensors());
    const e = await assertRejects(() => loadModel(dir), UnsupportedError);
    assertStringIncludes(e.message, "gpt_neox");
    for (const s of ["llama", "mistral", "qwen2", "opt"]) assertStringIncludes(e.message, s);
    assertStringIncludes(e.message, `${dir}/config.json`);
  });
});

/** Checks the pickle refusal message: what file, why, and how to convert. */
function checkPickleMessage(e: Error, file: string) {
  assertStringIncludes(e.message, file);
  assert(/pickle|unpickl/i.test(e.message), `says it is a pickle: ${e.message}`);
  assert(/code/i.test(e.message), `says why (pickle runs code): ${e.message}`);
  assert(/safetensors/i.test(e.message), `says how to convert: ${e.message}`);
}

Deno.test("pytorch_model.bin next to config.json: UnsupportedError saying why and how to convert", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(LLAMA));
    await Deno.writeFile(`${dir}/pytorch_model.bin`, Uint8Array.from([0x80, 0x02, 0x7d, 0x71]));
    checkPickleMessage(
      await assertRejects(() => openCheckpoint(dir), UnsupportedError),
      `${dir}/pytorch_model.bin`,
    );
    checkPickleMessage(
      await assertRejects(() => loadModel(dir), UnsupportedError),
      `${dir}/pytorch_model.bin`,
    );
  });
});

Deno.test("a folder holding only pytorch_model.bin: UnsupportedError saying why and how to convert", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeFile(`${dir}/pytorch_model.bin`, Uint8Array.from([0x80, 0x02, 0x7d, 0x71]));
    const e = await assertRejects(() => loadModel(dir), UnsupportedError);
    checkPickleMessage(e, `${dir}/pytorch_model.bin`);
    // The file itself, passed directly, is refused too (it is not a llama2.c checkpoint).
    await assertRejects(() => loadModel(`${dir}/pytorch_model.bin`), UnsupportedError);
  });
});

Deno.test("sharded index naming a tensor its shard lacks is a FormatError naming the shard", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(LLAMA));
    const all = Object.entries(llamaTensors());
    const s1 = Object.fromEntries(all.slice(0, 5));
    const s2 = Object.fromEntries(all.slice(5));
    await writeSafetensors(`${dir}/model-00001-of-00002.safetensors`, s1);
    await writeSafetensors(`${dir}/model-00002-of-00002.safetensors`, s2);
    const weightMap: Record<string, string> = {};
    for (const n of Object.keys(s1)) weightMap[n] = "model-00001-of-00002.safetensors";
    for (const n of Object.keys(s2)) weightMap[n] = "model-00002-of-00002.safetensors";
    // Sanity: the correct index loads.
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ weight_map: weightMap }),
    );
    const ok = await openCheckpoint(dir);
    assertEquals(ok.source.names().sort(), Object.keys(llamaTensors()).sort());
    // Point one tensor at the wrong shard.
    weightMap["model.norm.weight"] = "model-00001-of-00002.safetensors";
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ weight_map: weightMap }),
    );
    const e = await assertRejects(() => loadModel(dir), FormatError);
    assertStringIncludes(e.message, "model.norm.weight");
    assertStringIncludes(e.file, "model-00001-of-00002.safetensors");
    // A shard file that does not exist at all.
    weightMap["model.norm.weight"] = "model-00003-of-00002.safetensors";
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ weight_map: weightMap }),
    );
    await assertRejects(() => loadModel(dir));
    // An index without a weight_map.
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ metadata: {} }),
    );
    const e3 = await assertRejects(() => loadModel(dir), FormatError);
    assertStringIncludes(e3.file, "model.safetensors.index.json");
  });
});

Deno.test("a folder with config.json but no weights is a FormatError naming the folder", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(LLAMA));
    const e = await assertRejects(() => loadModel(dir), FormatError);
    assertStringIncludes(e.message, dir);
  });
});

Deno.test({
  name: "loadModel of a hub name while offline rejects with OfflineError (cache in a temp dir)",
  // The hub client may keep sockets or timers alive after a failed fetch.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await withTempDir(async (cache) => {
      const prev = Deno.env.get("QUANTLAB_CACHE");
      Deno.env.set("QUANTLAB_CACHE", cache);
      try {
        const t0 = performance.now();
        let timer: ReturnType<typeof setTimeout> | undefined;
        const timeout = new Promise<never>((_, rej) => {
          timer = setTimeout(() => rej(new Error("hub fetch hung for more than 20 s")), 20_000);
        });
        try {
          const e = await assertRejects(
            () => Promise.race([loadModel("some-org/some-model"), timeout]),
            OfflineError,
          );
          assertStringIncludes(e.message, "some-org/some-model");
          assertStringIncludes(e.message, cache); // says where a local copy would go
        } finally {
          clearTimeout(timer);
        }
        assert(performance.now() - t0 < 20_000);
      } finally {
        if (prev === undefined) Deno.env.delete("QUANTLAB_CACHE");
        else Deno.env.set("QUANTLAB_CACHE", prev);
      }
    });
  },
});
