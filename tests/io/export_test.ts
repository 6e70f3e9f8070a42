/**
 * `exportModel` to GGUF and `loadModel` of a .gguf, on the real stories260K: q/k rows written in
 * llama2.c's order (checked against the official llama2.c checkpoint's bytes), the metadata
 * types llama.cpp wants, bit-exact round trips (same codes, same logits) for f16-scale g32 grids
 * as Q4_0/Q4_1/Q8_0, the error reported for other grids, the 172-wide down_proj fallback, and bad
 * input: an existing folder, a non-grid method, an unsupported format, a SIGKILLed export.
 */
import {
  assert,
  assertEquals,
  assertInstanceOf,
  assertRejects,
  assertStringIncludes,
} from "@std/assert";
import { getTokenizer, loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import { forward } from "../../src/models/decoder.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { withF16Scales } from "../../src/quant/core/f16_grid.ts";
import { exportModel } from "../../src/io/export.ts";
import { openGguf } from "../../src/io/gguf.ts";
import { OptionError, UnsupportedError } from "../../src/errors.ts";
import { dataRoot } from "../../src/_paths.ts";

const HF = `${dataRoot()}/models/stories260K-hf`;
const BIN = `${dataRoot()}/models/stories260K/stories260K.bin`;
const IDS = [1, 403, 407, 261, 378, 300, 1, 17, 260, 511];

async function tmpDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "quantlab_export_" });
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i] - b[i]));
  return e;
}

const rtnG32 = (bits: number, sym: boolean) =>
  rtn({ bits, groupSize: 32, sym, partialGroups: true });

Deno.test("F32 GGUF: llama2.c q/k order, u32 hyper-parameters, vocab; import gives the same logits", async () => {
  const dir = await tmpDir();
  try {
    const m = await loadModel(HF);
    const rep = await exportModel(m, `${dir}/f32`, { format: "gguf" });
    assert(rep.tensors.every((t) => t.type === "F32" && t.maxAbsErr === 0));
    const g = await openGguf(`${dir}/f32/model.gguf`);
    const md = g.header.metadata;
    for (
      const k of [
        "llama.embedding_length",
        "llama.block_count",
        "llama.attention.head_count_kv",
        "llama.context_length",
        "llama.feed_forward_length",
        "llama.rope.dimension_count",
      ]
    ) {
      assertEquals(md.get(k)?.type, "u32", k);
    }
    assertEquals(md.get("llama.attention.head_count")?.value, 8);
    assertEquals(md.get("tokenizer.ggml.model")?.value, "llama");
    const toks = md.get("tokenizer.ggml.tokens")!.value as string[];
    assertEquals([toks.length, toks[0], toks[1], toks[2], toks[3 + 10]], [
      512,
      "<unk>",
      "<s>",
      "</s>",
      "<0x0A>",
    ]);
    assert(toks.some((t) => t.startsWith("\u2581")), "spaces are ▁");
    assertEquals(g.header.tensors.some((t) => t.name === "output.weight"), false); // tied
    // The official llama2.c file holds wq/wk in the interleaved order llama.cpp expects.
    const bin = new DataView((await Deno.readFile(BIN)).buffer);
    const V = 512, D = 64, L = 5, KV = 32;
    const at = (floatOff: number, n: number) =>
      Float32Array.from({ length: n }, (_, i) => bin.getFloat32(28 + 4 * (floatOff + i), true));
    const wq0 = at(V * D + L * D, D * D);
    const wk0 = at(V * D + L * D + L * D * D, KV * D);
    assertEquals([...(await g.tensor("blk.0.attn_q.weight"))], [...wq0]);
    assertEquals([...(await g.tensor("blk.0.attn_k.weight"))], [...wk0]);
    assertEquals([...(await g.tensor("token_embd.weight"))], [...at(0, V * D)]);
    // Import: HF order again, identical logits.
    const back = await loadModel(`${dir}/f32/model.gguf`);
    assertEquals(back.config.numKvHeads, 4);
    assertEquals(back.config.tieWordEmbeddings, true);
    assertEquals(maxDiff((await forward(m, IDS)).data, (await forward(back, IDS)).data), 0);
    for (
      const f of ["config.json", "tokenizer.json", "tokenizer_config.json", "export_report.json"]
    ) {
      assert((await Deno.stat(`${dir}/f32/${f}`)).isFile, f);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("f16-scale g32 grids export bit-exactly as Q4_0 / Q4_1 / Q8_0 and import with the same codes", async () => {
  const dir = await tmpDir();
  try {
    const m = await loadModel(HF);
    for (
      const [type, bits, sym] of [["Q4_0", 4, true], ["Q4_1", 4, false], ["Q8_0", 8, true]] as const
    ) {
      const qm = await quantize(m, withF16Scales(rtnG32(bits, sym)), { progress: false } as never);
      const rep = await exportModel(qm, `${dir}/${type}`, { format: "gguf" });
      const lin = rep.tensors.filter((t) => /attn_[qkvo]|ffn_(gate|up)/.test(t.gguf));
      assertEquals(lin.length, 30);
      assert(lin.every((t) => t.type === type && t.how === "codes" && t.maxAbsErr === 0), type);
      const down = rep.tensors.filter((t) => t.gguf.endsWith("ffn_down.weight"));
      assert(down.every((t) => t.type === "F32" && t.maxAbsErr === 0));
      assertEquals(rep.notes.filter((n) => n.includes("down_proj") && n.includes("172")).length, 5);
      const back = await loadModel(`${dir}/${type}/model.gguf`);
      assertEquals(Object.keys(back.packed!).length, 30);
      for (const [name, meta] of Object.entries(back.packed!)) {
        const orig = qm.packed![name];
        assertEquals(meta.codes, orig.codes, name);
        assertEquals(meta.scales, orig.scales, name);
        assertEquals(meta.zeros, orig.zeros, name);
      }
      assertEquals(
        maxDiff((await forward(qm, IDS)).data, (await forward(back, IDS)).data),
        0,
        type,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("other grids are converted with the error reported", async () => {
  const dir = await tmpDir();
  try {
    const m = await loadModel(HF);
    // f32 scales on a g32 grid: codes kept, scales rounded to f16: small, non-zero error.
    const q1 = await quantize(m, rtnG32(4, true), { progress: false } as never);
    const r1 = await exportModel(q1, `${dir}/a`, { format: "gguf" });
    const t1 = r1.tensors.find((t) => t.gguf === "blk.0.attn_q.weight")!;
    assertEquals([t1.type, t1.how], ["Q4_0", "codes"]);
    assert(t1.maxAbsErr > 0 && t1.maxAbsErr < 1e-3, String(t1.maxAbsErr));
    assertStringIncludes(t1.note!, "withF16Scales");
    // g64: not a Q4_0 grid → llama.cpp's reference quantizer on the fake-quant weight.
    const q2 = await quantize(m, rtn({ bits: 4, groupSize: 64, sym: true, partialGroups: true }), {
      progress: false,
    } as never);
    const r2 = await exportModel(q2, `${dir}/b`, { format: "gguf" });
    const t2 = r2.tensors.find((t) => t.gguf === "blk.0.attn_q.weight")!;
    assertEquals([t2.type, t2.how], ["Q4_0", "converted"]);
    assert(t2.maxAbsErr > 0, "conversion error is measured");
    assertStringIncludes(t2.note!, "re-quantized");
    const back = await openGguf(`${dir}/b/model.gguf`);
    const w = await back.tensor("blk.0.attn_q.weight");
    assertEquals(w.length, 64 * 64);
    // An explicit type converts unquantized models too.
    const r3 = await exportModel(m, `${dir}/c`, { format: "gguf", type: "q8_0" });
    const t3 = r3.tensors.find((t) => t.gguf === "blk.1.ffn_up.weight")!;
    assertEquals([t3.type, t3.how], ["Q8_0", "converted"]);
    assert(t3.maxAbsErr > 0 && t3.maxAbsErr < 0.05);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bad input: existing folder, non-grid methods, formats, families", async () => {
  const dir = await tmpDir();
  try {
    const m = await loadModel(HF);
    const out = `${dir}/out`;
    await Deno.mkdir(out);
    await Deno.writeTextFile(`${out}/marker`, "old");
    const e = await assertRejects(() => exportModel(m, out, { format: "gguf" }), OptionError);
    assertEquals(e.option, "overwrite");
    assertStringIncludes(e.message, out);
    await exportModel(m, out, { format: "gguf", overwrite: true });
    await assertRejects(() => Deno.stat(`${out}/marker`));
    assert((await Deno.stat(`${out}/model.gguf`)).isFile);
    const e2 = await assertRejects(
      () => exportModel(m, `${dir}/x`, { format: "safetensors" as never }),
      OptionError,
    );
    assertEquals(e2.option, "format");
    // A QuIP layer: codes in a rotated basis.
    const W = await m.weights.get("model.layers.0.self_attn.q_proj.weight");
    const fake: Model = {
      ...m,
      packed: {
        "model.layers.0.self_attn.q_proj": {
          method: "quip",
          bits: 2,
          groupSize: -1,
          sym: false,
          shape: [64, 64],
        },
      },
    };
    const e3 = await assertRejects(
      () => exportModel(fake, `${dir}/q`, { format: "gguf" }),
      UnsupportedError,
    );
    assertStringIncludes(e3.message, "model.layers.0.self_attn.q_proj");
    assertStringIncludes(e3.message, "gguf");
    assertStringIncludes(e3.message, "quip");
    const r = await exportModel(fake, `${dir}/q`, { format: "gguf", nonGrid: "dequantize" });
    const t = r.tensors.find((x) => x.gguf === "blk.0.attn_q.weight")!;
    assertEquals([t.type, t.how, t.maxAbsErr], ["F32", "dequantized", 0]);
    assertEquals(W.shape, [64, 64]);
    // QuantEase's outlier variant: a sparse full-precision part beside the grid.
    const qe: Model = {
      ...m,
      packed: {
        "model.layers.1.mlp.up_proj": {
          method: "quantease",
          bits: 4,
          groupSize: 32,
          sym: true,
          shape: [172, 64],
          codes: new Uint8Array(172 * 64),
          scales: new Float32Array(172 * 2).fill(1),
          zeros: new Float32Array(172 * 2).fill(8),
          outlierIdx: Int32Array.of(3),
          outlierVal: Float32Array.of(0.5),
        },
      },
    };
    const e4 = await assertRejects(
      () => exportModel(qe, `${dir}/qe`, { format: "gguf" }),
      UnsupportedError,
    );
    assertStringIncludes(e4.message, "outliers");
    await assertRejects(() => exportModel(qe, `${dir}/qe`, { format: "gptq" }), UnsupportedError);
    const opt: Model = { ...m, config: { ...m.config, family: "opt" } };
    assertInstanceOf(
      await assertRejects(() => exportModel(opt, `${dir}/o`, { format: "gguf" })),
      UnsupportedError,
    );
    // Nothing but the finished folders is left behind.
    const left = [];
    for await (const d of Deno.readDir(dir)) left.push(d.name);
    assertEquals(left.sort(), ["out", "q"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a SIGKILLed export leaves no folder under the final name", async () => {
  const dir = await tmpDir();
  try {
    const out = `${dir}/killed`;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("./_export_child.ts", import.meta.url).pathname, out],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // Wait until the temporary folder holds a partly written model.gguf, then kill.
    let tmp: string | null = null;
    for (let i = 0; i < 400 && !tmp; i++) {
      await new Promise((r) => setTimeout(r, 50));
      for await (const d of Deno.readDir(dir)) {
        if (d.name.startsWith("killed.tmp-")) {
          const s = await Deno.stat(`${dir}/${d.name}/model.gguf`).catch(() => null);
          if (s && s.size > 0) tmp = d.name;
        }
      }
    }
    assert(tmp, "the export started writing");
    child.kill("SIGKILL");
    const st = await child.output();
    assertEquals(st.success, false);
    assertEquals(new TextDecoder().decode(st.stdout).includes("done"), false);
    await assertRejects(() => Deno.stat(out));
    // The partial file is only under the temporary name.
    assert((await Deno.stat(`${dir}/${tmp}/model.gguf`)).isFile);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a GGUF with no files beside it tokenizes from its tokenizer.ggml.* metadata", async () => {
  const dir = await tmpDir();
  try {
    const m = await loadModel(HF);
    await exportModel(m, `${dir}/e`, { format: "gguf" });
    await Deno.mkdir(`${dir}/alone`);
    await Deno.rename(`${dir}/e/model.gguf`, `${dir}/alone/model.gguf`);
    const g = await loadModel(`${dir}/alone/model.gguf`);
    assertEquals(g.tokenizerPath, `${dir}/alone/model.gguf`);
    const [a, b] = [await getTokenizer(m), await getTokenizer(g)];
    for (const text of ["Once upon a time, Lily saw a cat.", 'Hi!\n\n  "Tom" said: 42 ü ☃']) {
      assertEquals(b.encode(text), a.encode(text), text);
      assertEquals(b.decode(b.encode(text)), a.decode(a.encode(text)));
    }
    assertEquals([b.bosId, b.eosId, b.vocabSize], [1, 2, 512]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GPTQ with f16 scales keeps its codes and exports bit-exactly as Q4_0", async () => {
  const dir = await tmpDir();
  try {
    const m = await loadModel(HF);
    const calib = await calibrationSet(m, "tinystories", { nsamples: 8, seqlen: 64, seed: 0 });
    const q = withF16Scales(gptq({ bits: 4, groupSize: 32, sym: true, partialGroups: true }));
    const qm = await quantize(m, q, { calib, progress: false } as never);
    const rep = await exportModel(qm, `${dir}/g`, { format: "gguf" });
    const lin = rep.tensors.filter((t) => t.type === "Q4_0");
    assertEquals(lin.length, 30);
    assert(lin.every((t) => t.how === "codes" && t.maxAbsErr === 0));
    const back = await loadModel(`${dir}/g/model.gguf`);
    assertEquals(maxDiff((await forward(qm, IDS)).data, (await forward(back, IDS)).data), 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
