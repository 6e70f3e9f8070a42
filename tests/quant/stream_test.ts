// The streamed pipeline (`QuantizeOptions.stream`): same result as the in-memory run bit for bit,
// finished blocks released, the result read back from the workdir; the layer-wise perplexity.
import { assert, assertEquals, assertRejects } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { perplexity } from "../../src/eval/perplexity.ts";
import { readHeader } from "../../src/io/safetensors.ts";
import { loadModel } from "../../src/models/load.ts";
import { modelIdentity } from "../../src/ledger/hash.ts";
import { type Model, Weights, type WeightSource } from "../../src/models/model.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { type LayerReport, quantize } from "../../src/quant/pipeline/pipeline.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import type { WeightQuantizer } from "../../src/quant/core/types.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K-hf`;

/** The model with a source that counts loads per tensor name. */
async function counted(): Promise<{ model: Model; loads: Map<string, number> }> {
  const m = await loadModel(MODEL);
  const loads = new Map<string, number>();
  const names = m.weights.names();
  const plain = new Weights({
    names: () => names,
    load: async (name) => {
      loads.set(name, (loads.get(name) ?? 0) + 1);
      // A fresh load from the checkpoint each time (the original's cache is bypassed).
      const t = await m.weights.get(name);
      m.weights.evict([name]);
      return { shape: [...t.shape], data: t.data.slice() };
    },
  } as WeightSource);
  return { model: { ...m, weights: plain }, loads };
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return x.every((v, j) => v === y[j]);
}

Deno.test("stream: GPTQ act-order streamed equals the in-memory run bit for bit, blocks released", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = await loadModel(MODEL);
    const calib = await calibrationSet(m, "tinystories", { nsamples: 8, seqlen: 64, seed: 2 });
    const q = () => gptq({ bits: 4, groupSize: 4, actOrder: true });
    const ref = await quantize(m, q(), { calib });
    const { model, loads } = await counted();
    const sq = await quantize(model, q(), { calib, workdir: `${dir}/w`, stream: true });
    const L = m.config.numLayers;
    // Memory: the in-memory run holds one more block of float32 weights per block, the
    // streamed one none; the streamed result has no in-memory quantized tensor at all.
    const perBlock = ref.report.heldBytes[0];
    assert(perBlock > 0);
    assertEquals(ref.report.heldBytes, Array.from({ length: L }, (_, i) => (i + 1) * perBlock));
    assertEquals(sq.report.heldBytes, new Array(L).fill(0));
    assertEquals(sq.weights.overrides().size, 0);
    assertEquals(sq.report.streamedFrom, `${dir}/w`);
    // Every linear of the source was read once (then released): reading it again loads again.
    const linears = Object.keys(ref.packed!).map((n) => `${n}.weight`);
    assertEquals(linears.length, 7 * L);
    for (const n of linears) assertEquals(loads.get(n), 1, n);
    await model.weights.get(linears[0]);
    assertEquals(loads.get(linears[0]), 2, "the source weight was not released");
    // Block files hold packed metas only (GPTQ's grid format decodes to Wq bit for bit).
    for (let i = 0; i < L; i++) {
      const h = await readHeader(`${dir}/w/block_${String(i).padStart(4, "0")}.safetensors`);
      assertEquals([...h.tensors.keys()].filter((k) => k.startsWith("w:")), []);
    }
    // The result: every quantized weight, read back from disk, equals the in-memory one.
    for (const n of linears) {
      const a = ref.weights.overrides().get(n)!;
      const b = await sq.weights.get(n);
      assertEquals(b.shape, a.shape, n);
      assert(sameBits(a.data, b.data), `${n} differs`);
    }
    // Untouched tensors come from the source; the packed metas and reports match.
    const norm = "model.layers.0.input_layernorm.weight";
    assert(sameBits((await sq.weights.get(norm)).data, (await m.weights.get(norm)).data));
    assertEquals(Object.keys(sq.packed!), Object.keys(ref.packed!));
    // (All but GPTQ's step timings, which are wall-clock seconds.)
    const noTimes = (m: Record<string, unknown>) => ({ ...m, timings: undefined });
    for (const [layer, meta] of Object.entries(ref.packed!)) {
      assertEquals(noTimes(sq.packed![layer]), noTimes(meta), layer);
    }
    const strip = (r: LayerReport[]) => r.map((x) => ({ ...x, seconds: 0 }));
    assertEquals(strip(sq.report.layers), strip(ref.report.layers));
    // Resuming the streamed run restores every block and the same result.
    const again = await quantize(model, q(), { calib, workdir: `${dir}/w`, stream: true });
    assertEquals(again.report.resumedBlocks, L);
    for (const n of linears.slice(0, 7)) {
      assert(sameBits((await again.weights.get(n)).data, ref.weights.overrides().get(n)!.data));
    }
    // The ledger tells the streamed result from the FP model (its layers are not overrides)
    // and identifies it by its block files' content.
    const idFp = (await modelIdentity(model)).hash;
    const idSq = (await modelIdentity(sq)).hash;
    assert(idSq !== idFp, "a streamed result hashes like the FP model");
    assertEquals((await modelIdentity(again)).hash, idSq);
    // A streamed workdir is not reused by an in-memory run (different run identity).
    await assertRejects(() => quantize(m, q(), { calib, workdir: `${dir}/w` }), Error, "run.json");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("stream: a layer whose meta has no bit-exact format keeps its float32 weight on disk", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = await loadModel(MODEL);
    // RTN whose metas name an unregistered method: nothing can decode them, so the streamed run
    // must store the float32 weights beside the metas and read those back.
    const base = rtn({ bits: 3, groupSize: 4 });
    const q: WeightQuantizer = {
      ...base,
      name: "rtn-unregistered",
      quantizeWeight: async (W, stats, ctx) => {
        const r = await base.quantizeWeight(W, stats, ctx);
        return { ...r, meta: { ...r.meta, method: "unregistered" } };
      },
    };
    const ref = await quantize(m, q);
    const sq = await quantize(m, q, { workdir: dir, stream: true });
    const h = await readHeader(`${dir}/block_0000.safetensors`);
    assertEquals([...h.tensors.keys()].filter((k) => k.startsWith("w:")).length, 7);
    assertEquals(sq.report.heldBytes, new Array(m.config.numLayers).fill(0));
    for (const [n, a] of ref.weights.overrides()) {
      assert(sameBits((await sq.weights.get(n)).data, a.data), `${n} differs`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("stream: options are checked", async () => {
  const m = await loadModel(MODEL);
  await assertRejects(
    () => quantize(m, rtn({ bits: 4 }), { stream: true }),
    OptionError,
    "workdir",
  );
  await assertRejects(
    // deno-lint-ignore no-explicit-any
    () => quantize(m, rtn({ bits: 4 }), { stream: "yes" as any, workdir: "/tmp/x" }),
    OptionError,
    "stream",
  );
});

Deno.test("perplexity layerwise: block by block over evicted weights equals the batched forward", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const m = await loadModel(MODEL);
    const o = { nsamples: 6, seqlen: 128, batch: 4, ort: false };
    const a = await perplexity(m, "tinystories", o);
    const b = await perplexity(m, "tinystories", { ...o, layerwise: true });
    assertEquals(b.windows, 6);
    assertEquals(b.nll, a.nll);
    // On a streamed RTN result (no calibration): equal to the in-memory result's perplexity.
    const ref = await quantize(m, rtn({ bits: 3, groupSize: 4 }));
    const sq = await quantize(m, rtn({ bits: 3, groupSize: 4 }), { workdir: dir, stream: true });
    const c = await perplexity(ref, "tinystories", o);
    const d = await perplexity(sq, "tinystories", { ...o, layerwise: true });
    assertEquals(d.nll, c.nll);
    assert(c.nll > a.nll, `3-bit RTN should cost some NLL: ${c.nll} vs ${a.nll}`);
    await assertRejects(
      () =>
        perplexity(m, "tinystories", { ...o, layerwise: true, kv: { method: "kivi" } as never }),
      OptionError,
      "layerwise",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli quantize --stream needs --workdir (a usage error before calibration)", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "src/cli.ts", "quantize", "--model", MODEL, "--stream", "--eval", "none"],
    cwd: new URL("../../", import.meta.url),
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(out.code, 2);
  const err = new TextDecoder().decode(out.stderr);
  assert(err.includes("--stream") && err.includes("--workdir"), err);
});
