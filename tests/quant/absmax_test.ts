/**
 * Absmax RTN against a plain float64 reference written here (LLM.int8()'s formula), its meta
 * through the format registry, and its option errors.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { absmax } from "../../src/quant/weight_only/absmax.ts";
import { dequantizeMeta, metaBitsPerWeight } from "../../src/quant/dequantize.ts";
import { realLayers } from "./_real_stats.ts";

/** The reference: per group `s = max|x|/Qp`, `x̂ = s · clamp(round(x/s), ±Qp)`. */
function reference(w: Float32Array, o: { gs: number; bits: number }): Float64Array {
  const { gs, bits } = o;
  const Qp = 2 ** (bits - 1) - 1, out = new Float64Array(w.length);
  for (let g0 = 0; g0 < w.length; g0 += gs) {
    const x = Array.from(w.subarray(g0, g0 + gs));
    const s = Math.max(...x.map(Math.abs)) / Qp || 1;
    x.forEach((v, k) => out[g0 + k] = s * Math.max(-Qp, Math.min(Qp, Math.round(v / s))));
  }
  return out;
}

Deno.test("absmax: matches the plain reference on a real layer; decodes through FORMATS", async () => {
  const L = (await realLayers({ nsamples: 4, seqlen: 64 }))[0];
  const [rows, cols] = L.W.shape;
  for (const [bits, gs] of [[2, 16], [4, 32], [8, -1]]) {
    const res = await absmax({ bits, groupSize: gs }).quantizeWeight(L.W, { nsamples: 0 });
    const ref = reference(L.W.data, { gs: gs > 0 ? gs : cols, bits });
    let worst = 0;
    for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(ref[i] - res.Wq.data[i]));
    assert(worst < 1e-6, `${bits}-bit g${gs}: max |Δ| ${worst}`);
    assertEquals((await dequantizeMeta(res.meta)).data, res.Wq.data);
    const sets = rows * (gs > 0 ? cols / gs : 1);
    assertEquals(metaBitsPerWeight(res.meta), bits + (16 * sets) / (rows * cols));
    assertEquals(res.bitsPerWeight, metaBitsPerWeight(res.meta));
  }
});

Deno.test("absmax: an all-zero group stays zero; bad options are OptionErrors", async () => {
  const W = {
    shape: [2, 4] as [number, number],
    data: new Float32Array([0, 0, 0, 0, 1, -2, 3, -4]),
  };
  const res = await absmax({ bits: 3, groupSize: 4 }).quantizeWeight(W, { nsamples: 0 });
  assertEquals(Array.from(res.Wq.data.subarray(0, 4)), [0, 0, 0, 0]);
  assertEquals(res.Wq.data[7], -4); // the maximum is a grid point
  assertThrows(() => absmax({ bits: 1 }), OptionError, "bits");
  assertThrows(() => absmax({ bits: 4, groupsize: 8 } as never), OptionError, "groupSize");
  await assertRejects(
    () => absmax({ bits: 4, groupSize: 3 }).quantizeWeight(W, { nsamples: 0 }),
    OptionError,
    "does not divide",
  );
});
