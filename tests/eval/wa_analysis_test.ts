/**
 * Analysis tools (src/eval/wa_analysis.ts):
 * - tensor statistics and SQNR against closed forms;
 * - on stories260K: the FP model against itself gives infinite SQNR and zero distance; the
 *   per-token A8 input SQNR of a linear equals the SQNR of the spec's fake quantization applied
 *   to that linear's FP input (recomputed here through the observer), 8-bit beats 4-bit by
 *   ≥ 15 dB; W4A4 drifts further from FP than W8A8 at the last block;
 * - the figures carry the records' values (an infinite SQNR draws no bar).
 */
import { assert, assertAlmostEquals, assertEquals, assertLess, assertThrows } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { layerDistance, sqnrPerLayer } from "../../src/viz/wa_figures.ts";
import { fakeQuant } from "../../src/backend/ops.ts";
import { analyzeStats, layerwiseDistance, sqnr, tensorStats } from "../../src/eval/wa_analysis.ts";
import { forward } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import type { Tensor } from "../../src/tensor.ts";
import { applyQllmConfig, resolveQllmConfig } from "../../src/quant/pipeline/qllm_config.ts";

const MODEL = new URL("../../../shared/data/models/stories260K-hf", import.meta.url).pathname;

Deno.test("tensorStats and sqnr: closed forms", () => {
  const s = tensorStats([1, -1, 1, -1], 2);
  assertEquals([s.absmax, s.mean, s.std, s.kurtosis], [1, 0, 1, 1]);
  const t = tensorStats([1, 1, 1, 1, 1, 1, 1, 9, 1, 1, 1, 1], 4); // column 3 peaks at 9
  assertEquals(t.outlierChannels, [3]);
  assertAlmostEquals(sqnr([3, 4], [3, 3]), 10 * Math.log10(25), 1e-12);
  assertEquals(sqnr([1, 2], [1, 2]), Infinity);
});

Deno.test("analyzeStats / layerwiseDistance on stories260K", async () => {
  const m = await loadModel(MODEL);
  const V = m.config.vocabSize;
  const ids = [Array.from({ length: 96 }, (_, i) => (i * 31 + 7) % V)];
  const self = await analyzeStats(m, m, ids);
  assertEquals(self.length, 35);
  for (const r of self) {
    assertEquals([r.sqnr.x, r.sqnr.w, r.sqnr.out], [Infinity, Infinity, Infinity]);
  }
  for (const d of await layerwiseDistance(m, m, ids[0])) assertEquals([d.mse, d.relL2], [0, 0]);

  const a8 = (await applyQllmConfig(m, resolveQllmConfig({ bits_a: 8 }))).model;
  const a4 = (await applyQllmConfig(m, resolveQllmConfig({ bits_w: 4, bits_a: 4 }))).model;
  const r8 = await analyzeStats(m, a8, ids), r4 = await analyzeStats(m, a4, ids);
  // Oracle for one linear: its FP-path input in the A8 model, fake-quantized by the same spec.
  const NAME = "model.layers.2.mlp.down_proj";
  let x: Tensor | undefined;
  await forward(a8, ids[0], {
    observe: (p, site, t) => {
      if (p === "linearInput" && site === NAME) {
        x = { shape: [...t.shape], data: new Float32Array(t.data) };
      }
    },
  });
  const want = sqnr(x!.data, fakeQuant(x!, a8.points!.linearInput!["*"]).data);
  assertAlmostEquals(r8.find((r) => r.name === NAME)!.sqnr.x, want, 1e-9);
  for (let i = 0; i < r8.length; i++) {
    assert(r8[i].sqnr.x > r4[i].sqnr.x + 15, `${r8[i].name}: ${r8[i].sqnr.x} vs ${r4[i].sqnr.x}`);
    assertEquals(r8[i].sqnr.w, Infinity); // A8 only: weights untouched
    assert(r4[i].sqnr.w < 40);
  }
  const d8 = await layerwiseDistance(m, a8, ids[0]), d4 = await layerwiseDistance(m, a4, ids[0]);
  assertLess(d8[4].relL2, d4[4].relL2);
  assert(d4[4].cosine < 1 && d4[4].relL2 > 0);
});

Deno.test("figures: SQNR bars per linear (no bar for an unchanged tensor), distance lines", () => {
  const recs = [
    { name: "model.layers.0.self_attn.q_proj", sqnr: { x: 40, w: Infinity, out: 38 } },
    { name: "model.layers.0.mlp.down_proj", sqnr: { x: 30, w: 20, out: 18 } },
  ];
  const f = sqnrPerLayer(recs);
  assertEquals(f.data.map((t) => t.name), ["input x", "weight w", "output"]);
  assertEquals(f.data[1].y, [null, 20]);
  assertEquals(f.data[0].x, ["0.self_attn.q_proj", "0.mlp.down_proj"]); // last three name parts
  const g = layerDistance({ w8a8: [{ block: 0, relL2: 0.01 }], w4a4: [{ block: 0, relL2: 0.2 }] });
  assertEquals(g.data.map((t) => t.name), ["w8a8", "w4a4"]);
  assertEquals(g.data[1].y, [0.2]);
  assertThrows(() => sqnrPerLayer([]), OptionError);
});
