import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  channelMagnitude,
  errorHeatmap,
  histogram,
  layerErrors,
  medianAbs,
  outlierChannels,
  pplVsBits,
  weightHistogram,
} from "../../src/viz/figures.ts";
import { OptionError } from "../../src/errors.ts";
import { tensor } from "../../src/tensor.ts";

type Shape = { x0: number; x1: number };

Deno.test("histogram counts values into equal bins", () => {
  const h = histogram([0, 0.1, 0.5, 0.99, 1, 2], { bins: 2, range: [0, 1] });
  assertEquals(h.counts, [2, 3]); // 2 is out of range; 1 falls in the last bin
  assertEquals(h.centers, [0.25, 0.75]);
  assertEquals(h.width, 0.5);
  assertThrows(() => histogram([1], { bins: 0, range: [0, 1] }), OptionError);
});

Deno.test("weightHistogram: two bar traces, axis titles, levels as lines", () => {
  const W = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i) * 0.1);
  const Wq = W.map((v) => Math.round(v / 0.05) * 0.05);
  const fig = weightHistogram(W, Wq, { bins: 20 });
  assertEquals(fig.data.length, 2);
  assertEquals(fig.data.map((t) => t.type), ["bar", "bar"]);
  const counts = fig.data.map((t) => (t.y as number[]).reduce((a, b) => a + b, 0));
  assertEquals(counts, [1000, 1000]);
  assertEquals((fig.data[0].x as number[]).length, 20);
  assertEquals((fig.layout.xaxis as { title: { text: string } }).title.text, "weight value");
  assertEquals((fig.layout.yaxis as { title: { text: string } }).title.text, "count");
  // levels default to Wq's distinct values: -0.1, -0.05, 0, 0.05, 0.1
  const xs = (fig.layout.shapes as Shape[]).map((s) => s.x0);
  assertEquals(xs.length, 5);
  assertAlmostEquals(xs[0], -0.1, 1e-6);
  const given = weightHistogram(tensor([2, 2], [0, 1, 2, 3]), tensor([2, 2], [0, 1, 2, 3]), {
    levels: [0, 3],
    title: "t",
  });
  assertEquals((given.layout.shapes as Shape[]).map((s) => s.x0), [0, 3]);
  assertEquals((given.layout.title as { text: string }).text, "t");
  assertThrows(() => weightHistogram(new Float32Array(3), new Float32Array(4)), OptionError);
});

const report = (scale: number) => ({
  layers: [
    {
      name: "model.layers.0.self_attn.q_proj",
      loss: 1 * scale,
      relErr: 0.1,
      bitsPerWeight: 3.25,
      seconds: 0.5,
    },
    {
      name: "model.layers.0.mlp.down_proj",
      loss: 4 * scale,
      relErr: 0.2,
      bitsPerWeight: 3.25,
      seconds: 0.7,
    },
  ],
});

Deno.test("layerErrors: one trace per method, grouped, values by layer", () => {
  const one = layerErrors(report(1));
  assertEquals(one.data.length, 1);
  assertEquals(one.data[0].y, [1, 4]);
  assertEquals(one.data[0].x, ["0.self_attn.q_proj", "0.mlp.down_proj"]);
  assertEquals((one.layout.yaxis as { type: string }).type, "log");
  const two = layerErrors({ rtn: report(3), gptq: report(1) }, { metric: "relErr" });
  assertEquals(two.data.map((t) => t.name), ["rtn", "gptq"]);
  assertEquals(two.layout.barmode, "group");
  assertEquals(two.data[1].y, [0.1, 0.2]);
  assertEquals((two.layout.yaxis as { title: { text: string } }).title.text, "relative error");
  const noRel = { layers: [{ name: "a", loss: 1, bitsPerWeight: 4, seconds: 1 }] };
  assertThrows(() => layerErrors(noRel, { metric: "relErr" }), OptionError);
});

Deno.test("pplVsBits: lines per method sorted by bits, log y, baseline", () => {
  const fig = pplVsBits([
    { method: "rtn", bitsPerWeight: 4.25, ppl: 12 },
    { method: "gptq", bitsPerWeight: 3.25, ppl: 15 },
    { method: "rtn", bitsPerWeight: 3.25, ppl: 30 },
    { method: "gptq", bitsPerWeight: 4.25, ppl: 11 },
  ], { baseline: 10 });
  assertEquals(fig.data.length, 2);
  assertEquals(fig.data[0].name, "rtn");
  assertEquals(fig.data[0].x, [3.25, 4.25]);
  assertEquals(fig.data[0].y, [30, 12]);
  assertEquals(fig.data[0].mode, "lines+markers");
  assertEquals((fig.layout.yaxis as { type: string }).type, "log");
  assertEquals((fig.layout.shapes as { y0: number }[])[0].y0, 10);
});

Deno.test("channelMagnitude: outliers above k·median in their own trace", () => {
  const v = Float32Array.from(
    { length: 100 },
    (_, i) => (i === 7 ? -50 : i === 42 ? 20 : 1 + (i % 3) * 0.1),
  );
  assertAlmostEquals(medianAbs(v), 1.1, 1e-6);
  assertEquals(outlierChannels(v, { k: 5 }), [7, 42]);
  const fig = channelMagnitude(v, { k: 5, label: "Hessian diagonal" });
  assertEquals(fig.data.length, 2);
  assertEquals(fig.data[1].x, [7, 42]);
  assertEquals(fig.data[1].y, [50, 20]);
  assertEquals((fig.data[0].x as number[]).length, 98);
  assertEquals((fig.layout.yaxis as { title: { text: string } }).title.text, "Hessian diagonal");
  assertAlmostEquals((fig.layout.shapes as { y0: number }[])[0].y0, 5.5, 1e-5);
});

Deno.test("errorHeatmap: z is Wq − W over the block", () => {
  const W = Float32Array.from({ length: 12 }, (_, i) => i);
  const Wq = W.map((v, i) => v + (i % 2 ? 0.5 : -0.25));
  const fig = errorHeatmap(W, Wq, { rows: 3, cols: 4, rowRange: [1, 3], colRange: [1, 3] });
  assertEquals(fig.data.length, 1);
  assertEquals(fig.data[0].type, "heatmap");
  assertEquals(fig.data[0].z, [[0.5, -0.25], [0.5, -0.25]]);
  assertEquals(fig.data[0].x, [1, 2]);
  assertEquals(fig.data[0].y, [1, 2]);
  assertEquals(fig.data[0].zmid, 0);
  const t = errorHeatmap(tensor([3, 4], W), tensor([3, 4], Wq), { abs: true });
  assertEquals((t.data[0].z as number[][]).length, 3);
  assertEquals((t.data[0].z as number[][])[0], [0.25, 0.5, 0.25, 0.5]);
  assertThrows(() => errorHeatmap(W, Wq), OptionError);
  assertThrows(() => errorHeatmap(W, Wq, { rows: 3, cols: 4, rowRange: [2, 5] }), OptionError);
});

Deno.test("figures are plain JSON data with a hidden Jupyter display method", () => {
  const fig = pplVsBits([{ method: "a", bitsPerWeight: 4, ppl: 10 }]);
  assertEquals(Object.keys(fig), ["data", "layout"]);
  assertEquals(JSON.parse(JSON.stringify(fig)).data[0].y, [10]);
  assert(
    typeof (fig as unknown as Record<symbol, unknown>)[Symbol.for("Jupyter.display")] ===
      "function",
  );
});

Deno.test("layerErrors: NaN values become gaps; an all-missing method says so", () => {
  const nan = { layers: [{ name: "a", loss: 1, relErr: NaN, bitsPerWeight: 4, seconds: 1 }] };
  const fig = layerErrors({ rtn: nan }, { metric: "relErr" });
  assertEquals(fig.data[0].y, [null]);
  assertEquals(fig.data[0].name, "rtn (no relErr)");
});
