/**
 * Calibration statistics through the quantization points (`src/models/point_stats.ts`) on
 * stories260K: per-channel max |x| at linear inputs equals a plain max over the rows the
 * `linearInput` hook sees, at K (after RoPE) and V over the rows the `attentionKV` hook sees, over
 * two batches; the observer leaves the logits bit-identical; a static 8-bit spec built from the
 * statistics is `max/127` per channel and runs (CPU) within the grid's error of the float model.
 */
import { assert, assertEquals, assertLess, assertThrows } from "@std/assert";
import { cpuBackend } from "../../src/backend/cpu.ts";
import { forward } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import { collectChannelAbsMax, staticChannelSpec } from "../../src/models/point_stats.ts";
import { OptionError } from "../../src/errors.ts";
import type { Tensor } from "../../src/tensor.ts";

const model = await loadModel("../shared/data/models/stories260K-hf");
const V = model.config.vocabSize;
const batches = [
  Array.from({ length: 24 }, (_, i) => (i * 37 + 5) % V),
  Array.from({ length: 24 }, (_, i) => (i * 11 + 3) % V),
];

/** Plain per-column max |x| accumulated into `m[key]`. */
function acc(m: Map<string, number[]>, key: string, x: Tensor) {
  const cols = x.shape[1];
  const cur = m.get(key) ?? new Array(cols).fill(0);
  for (let r = 0; r < x.shape[0]; r++) {
    for (let j = 0; j < cols; j++) cur[j] = Math.max(cur[j], Math.abs(x.data[r * cols + j]));
  }
  m.set(key, cur);
}

Deno.test("per-channel max |x| through the points = a plain max over what the hooks see", async () => {
  const stats = await collectChannelAbsMax(model, batches, { backend: cpuBackend });
  const want = new Map<string, number[]>();
  const hooks = {
    linearInput: (n: string, x: Tensor) => acc(want, `linearInput:${n}`, x),
    attentionKV: (l: number, kv: { k: Tensor; v: Tensor }) => {
      acc(want, `k:${l}`, kv.k);
      acc(want, `v:${l}`, kv.v);
    },
  };
  for (const ids of batches) await forward(model, ids, { backend: cpuBackend, hooks });
  assertEquals(want.size, 5 * 7 + 5 * 2);
  for (const [key, w] of want) {
    assertEquals(Array.from(stats.get(key)!), w.map(Math.fround), key);
  }
  // every point is there: 7 linears × (input, output) + qPreRope, kPreRope, q, k, v per block
  assertEquals(stats.size, 5 * (14 + 5));
  assertEquals(stats.get("kPreRope:0")!.length, 32);
  const only = await collectChannelAbsMax(model, batches.slice(0, 1), { points: ["v"] });
  assertEquals([...only.keys()], ["v:0", "v:1", "v:2", "v:3", "v:4"]);
  // observing changes nothing
  const a = await forward(model, batches[0], { backend: cpuBackend });
  const b = await forward(model, batches[0], { backend: cpuBackend, observe: () => {} });
  assertEquals(a.data, b.data);
});

Deno.test("static per-channel specs from the statistics", async () => {
  const stats = await collectChannelAbsMax(model, batches, { points: ["linearInput"] });
  const m = stats.get("linearInput:model.layers.0.mlp.down_proj")!;
  const spec = staticChannelSpec(m, 8);
  for (let j = 0; j < m.length; j++) {
    assertEquals(spec.scales![j], m[j] > 0 ? Math.fround(m[j] / 127) : 1);
  }
  assertEquals(
    staticChannelSpec(Float32Array.of(0, 2), 4, { clip: 0.5 }).scales,
    Float32Array.of(1, 1 / 7),
  );
  assertThrows(() => staticChannelSpec(m, 1), OptionError);
  assertThrows(() => staticChannelSpec(m, 8, { clip: 2 }), OptionError);
  // static 8-bit scales on every linear input: runs, moves the logits a little (values inside the
  // calibrated range round to ≤ half a step; others clamp)
  const linearInput: Record<string, ReturnType<typeof staticChannelSpec>> = {};
  for (const [k, v] of stats) linearInput[k.slice("linearInput:".length)] = staticChannelSpec(v, 8);
  const fp = await forward(model, batches[0], { backend: cpuBackend });
  const q = await forward(model, batches[0], { backend: cpuBackend, points: { linearInput } });
  let worst = 0;
  for (let i = 0; i < fp.data.length; i++) {
    worst = Math.max(worst, Math.abs(fp.data[i] - q.data[i]));
  }
  console.log(`  static W16A8 per-channel scales: max |Δlogit| ${worst.toExponential(2)}`);
  assert(worst > 0);
  assertLess(worst, 1);
});
