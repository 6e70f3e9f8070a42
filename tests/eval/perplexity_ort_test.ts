import { assert, assertEquals, assertLess } from "@std/assert";
import { perplexity } from "../../src/eval/perplexity.ts";
import { forward } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import { ortForward, ortForwardUnsupported } from "../../src/models/ort_forward.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import type { Tensor } from "../../src/tensor.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K-hf`;

function relErr(a: number, b: number): number {
  return Math.abs(a - b) / Math.abs(b);
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

Deno.test("perplexity via the onnxruntime graph equals the TypeScript forward's (FP and RTN-4)", async () => {
  const fp = await loadModel(MODEL);
  const q = await quantize(fp, rtn({ bits: 4, groupSize: 4 }));
  for (const m of [fp, q]) {
    const opts = { seqlen: 256, nsamples: 4, batch: 2 };
    const viaOrt = await perplexity(m, "tinystories", opts);
    const viaTs = await perplexity(m, "tinystories", { ...opts, ort: false });
    assert(viaOrt.ort, `ort path ran (fallback: ${viaOrt.ortFallback})`);
    assertEquals(viaTs.ort, false);
    assertEquals(viaTs.ortFallback, "ort: false");
    assertLess(relErr(viaOrt.ppl, viaTs.ppl), 1e-4);
  }
  // The quantized model's graph holds its fake-quant weights: its perplexity differs from FP's.
  const a = await perplexity(fp, "tinystories", { seqlen: 256, nsamples: 2 });
  const b = await perplexity(q, "tinystories", { seqlen: 256, nsamples: 2 });
  assert(a.ort && b.ort && Math.abs(a.ppl - b.ppl) > 1e-3, `${a.ppl} vs ${b.ppl}`);
});

Deno.test("ortForward: logits match forward(); the cached session follows new weights", async () => {
  const fp = await loadModel(MODEL);
  const ids = Array.from({ length: 2 * 64 }, (_, i) => (i * 37 + 11) % fp.config.vocabSize);
  const ref = await forward(fp, ids, { batch: 2 });
  const got = await ortForward(fp, ids, { batch: 2 });
  assertEquals(got.shape, ref.shape);
  assertLess(maxAbsDiff(got.data, ref.data), 1e-3);
  // Swap the weights of the same model object: the session is rebuilt, not reused.
  const m: Model = { ...fp };
  await ortForward(m, ids, { batch: 2 });
  const name = "model.layers.0.mlp.down_proj.weight";
  const W = await fp.weights.get(name);
  const zero: Tensor = { shape: W.shape, data: new Float32Array(W.data.length) };
  m.weights = fp.weights.with(new Map([[name, zero]]));
  const ref2 = await forward(m, ids, { batch: 2 });
  const got2 = await ortForward(m, ids, { batch: 2 });
  assert(maxAbsDiff(ref2.data, ref.data) > 1e-2, "the zeroed layer changes the logits");
  assertLess(maxAbsDiff(got2.data, ref2.data), 1e-3);
});

Deno.test("perplexity: hooks and unsupported families take the TypeScript forward, visibly", async () => {
  const fp = await loadModel(MODEL);
  const opts = { seqlen: 128, nsamples: 2 };
  let calls = 0;
  const hooks = {
    linearOutput: (_n: string, y: Tensor) => {
      calls++;
      return y;
    },
  };
  const viaHooks = await perplexity(fp, "tinystories", { ...opts, hooks });
  assertEquals(viaHooks.ort, false);
  assert(viaHooks.ortFallback?.includes("hooks"), viaHooks.ortFallback);
  assert(calls > 0, "the TypeScript forward ran the hook");
  const modelHooks = await perplexity({ ...fp, hooks }, "tinystories", opts);
  assertEquals(modelHooks.ort, false);
  assert(modelHooks.ortFallback?.includes("forward hooks"), modelHooks.ortFallback);
  const plain = await perplexity(fp, "tinystories", opts);
  assert(plain.ort);
  assertLess(relErr(plain.ppl, viaHooks.ppl), 1e-4);
  // Configs the graph cannot express.
  const cfg = fp.config;
  assert(ortForwardUnsupported({ ...fp, config: { ...cfg, qkvBias: true } })?.includes("bias"));
  assert(ortForwardUnsupported({ ...fp, config: { ...cfg, family: "opt" } })?.includes("opt"));
  assert(
    ortForwardUnsupported({ ...fp, config: { ...cfg, slidingWindow: 64 } })?.includes("sliding"),
  );
  const big = { ...cfg, numLayers: 22, hiddenSize: 2048, intermediateSize: 5632, vocabSize: 32000 };
  assert(ortForwardUnsupported({ ...fp, config: big })?.includes("2 GiB"));
  assertEquals(ortForwardUnsupported(fp), null);
});

Deno.test("buildForwardGraph: GroupQueryAttention and MultiHeadAttention graphs match forward()", async () => {
  const { buildForwardGraph } = await import("../../src/io/onnx_forward_graph.ts");
  const { loadOrt } = await import("../../src/backend/cpu.ts");
  const ort = await loadOrt();
  const m = await loadModel(MODEL);
  const B = 2, S = 48;
  const ids = Array.from({ length: B * S }, (_, i) => (i * 53 + 5) % m.config.vocabSize);
  const ref = await forward(m, ids, { batch: B });
  for (const attention of ["gqa", "mha"] as const) {
    const bytes = await buildForwardGraph(m.config, (n) => m.weights.get(n), { attention });
    const s = await ort.InferenceSession.create(bytes);
    const x = new ort.Tensor("int64", BigInt64Array.from(ids, (v) => BigInt(v)), [B, S]);
    const got = (await s.run({ input_ids: x })).logits.data as Float32Array;
    assertLess(maxAbsDiff(got, ref.data), 1e-3, attention);
  }
});
