/**
 * tools/synthetic_checkpoint.ts: a tiny sharded checkpoint loads with `loadModel` and runs a
 * forward; weights are seeded per tensor name (same values after truncation or resharding);
 * presets carry the published shapes; the CLI refuses to overwrite without --force.
 */
import { assert, assertEquals, assertRejects } from "@std/assert";
import {
  fillNormal,
  llamaTensorPlan,
  PRESETS,
  syntheticConfig,
  writeSyntheticCheckpoint,
} from "../../tools/synthetic_checkpoint.ts";
import { loadModel } from "../../src/models/load.ts";
import { forward } from "../../src/models/decoder.ts";
import { OptionError } from "../../src/errors.ts";

Deno.test("synthetic tiny checkpoint: sharded, loads, runs a forward, seeded by name", async () => {
  const root = await Deno.makeTempDir({ prefix: "synth-" });
  try {
    const dir = `${root}/tiny`;
    const r = await writeSyntheticCheckpoint(dir, { preset: "tiny", shardMiB: 0.1, seed: 7 });
    assert(r.shards.length > 1, `${r.shards.length} shards`);
    assertEquals(
      r.shards[0],
      `model-00001-of-${String(r.shards.length).padStart(5, "0")}.safetensors`,
    );
    const idx = JSON.parse(await Deno.readTextFile(`${dir}/model.safetensors.index.json`));
    assertEquals(Object.keys(idx.weight_map).length, r.tensors);
    assertEquals(idx.metadata.total_size, r.bytes);
    const names = [...Deno.readDirSync(root)].map((e) => e.name);
    assertEquals(names, ["tiny"], "no temporary folder left behind");

    const m = await loadModel(dir);
    assertEquals(m.config.numLayers, 2);
    assertEquals(m.config.numKvHeads, 2);
    const ids = [1, 5, 9, 200, 17, 3, 3, 42];
    const logits = await forward(m, ids);
    assertEquals(logits.shape, [8, 256]);
    let mx = 0;
    for (const v of logits.data) {
      assert(Number.isFinite(v));
      mx = Math.max(mx, Math.abs(v));
    }
    assert(mx > 1e-3 && mx < 100, `logit scale ${mx}`);
    const q = await m.weights.get("model.layers.1.self_attn.q_proj.weight");
    let s2 = 0;
    for (const v of q.data) s2 += v * v;
    const std = Math.sqrt(s2 / q.data.length);
    assert(Math.abs(std - 1 / 8) < 0.01, `q_proj std ${std} vs 1/sqrt(64)`);

    // One block, one shard, f16: the same values (rounded to f16) under the same names.
    const one = `${root}/one`;
    const r1 = await writeSyntheticCheckpoint(one, {
      preset: "tiny",
      layers: 1,
      seed: 7,
      dtype: "f16",
    });
    assertEquals(r1.shards, ["model.safetensors"]);
    const m1 = await loadModel(one);
    assertEquals(m1.config.numLayers, 1);
    const a = await m.weights.get("model.layers.0.mlp.down_proj.weight");
    const b = await m1.weights.get("model.layers.0.mlp.down_proj.weight");
    let maxRel = 0;
    for (let i = 0; i < a.data.length; i++) {
      maxRel = Math.max(maxRel, Math.abs(a.data[i] - b.data[i]) / (Math.abs(a.data[i]) + 1e-4));
    }
    assert(maxRel < 2e-3, `f16 copy differs by ${maxRel}`);
    await assertRejects(
      () => writeSyntheticCheckpoint(one, { preset: "tiny" }),
      OptionError,
      "exists",
    );
    await writeSyntheticCheckpoint(one, { preset: "tiny", layers: 1, seed: 8, force: true });
    const c = await (await loadModel(one)).weights.get("model.layers.0.mlp.down_proj.weight");
    assert(c.data[0] !== b.data[0], "another seed, other values");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("presets: TinyLlama-1.1B and Llama-2-7B parameter counts; bad options", async () => {
  const count = (p: string) =>
    llamaTensorPlan(PRESETS[p]).reduce((s, t) => s + t.shape.reduce((x, y) => x * y, 1), 0);
  assertEquals(count("tinyllama-1.1b"), 1_100_048_384);
  assertEquals(count("llama-2-7b"), 6_738_415_616);
  assertEquals(syntheticConfig("llama-2-7b", { layers: 2 }).num_hidden_layers, 2);
  assertEquals(syntheticConfig("tinyllama-1.1b").torch_dtype, "float16");
  await assertRejects(() => writeSyntheticCheckpoint("/tmp/x", { preset: "gpt-5" }), OptionError);
  await assertRejects(
    () => writeSyntheticCheckpoint("/tmp/x", { preset: "tiny", layers: 3 }),
    OptionError,
    "layers",
  );
  const x = new Float32Array(10001), y = new Float32Array(10001);
  fillNormal(x, 1, 0, "t");
  fillNormal(y, 1, 0, "t");
  assertEquals(x, y);
  let mean = 0, sq = 0;
  for (const v of x) [mean, sq] = [mean + v / x.length, sq + (v * v) / x.length];
  assert(Math.abs(mean) < 0.05 && Math.abs(sq - 1) < 0.05, `mean ${mean}, var ${sq}`);
});

Deno.test("CLI: writes a checkpoint and refuses to overwrite without --force", async () => {
  const root = await Deno.makeTempDir({ prefix: "synth-cli-" });
  try {
    const tool = new URL("../../tools/synthetic_checkpoint.ts", import.meta.url).pathname;
    const run = (...a: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", tool, "--preset", "tiny", "--out", `${root}/t`, ...a],
        stdout: "piped",
        stderr: "piped",
      }).output();
    const ok = await run("--layers", "1", "--seed", "3");
    assert(ok.success, new TextDecoder().decode(ok.stderr));
    assert(new TextDecoder().decode(ok.stdout).includes("1 blocks"));
    const again = await run();
    assertEquals(again.code, 2);
    assert(new TextDecoder().decode(again.stderr).includes("--force"));
    const bad = await run("--bogus");
    assertEquals(bad.code, 2);
    assert((await run("--force", "--dtype", "bf16")).success);
    assertEquals((await loadModel(`${root}/t`)).config.numLayers, 2);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
