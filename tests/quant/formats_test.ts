/**
 * The format registry: every method's quantizer result decodes through `dequantizeMeta` to its
 * `Wq` bit for bit, and the registered bits accounting reproduces the quantizer's own
 * `bitsPerWeight` from the meta alone; an unregistered method is a typed error listing the
 * known formats.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { dequantizeMeta, FORMATS, metaBitsPerWeight } from "../../src/quant/dequantize.ts";
import { bcq } from "../../src/quant/weight_only/bcq.ts";
import { framequant } from "../../src/quant/weight_only/framequant.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";
import { oa } from "../../src/quant/weight_only/oa.ts";
import { quantease } from "../../src/quant/weight_only/quantease.ts";
import { quip } from "../../src/quant/weight_only/quip.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import { spqr } from "../../src/quant/weight_only/spqr.ts";
import type { WeightQuantizer } from "../../src/quant/core/types.ts";
import { realLayers } from "./_real_stats.ts";

const QUANTIZERS: WeightQuantizer[] = [
  rtn({ bits: 4, groupSize: 32 }),
  rtn({ bits: 3, sym: true, perChannel: false }),
  gptq({ bits: 3, groupSize: 32, actOrder: true }),
  quantease({ bits: 3, numIter: 3 }),
  quantease({ bits: 3, numIter: 3, outlier: 0.02 }),
  quantease({ bits: 3, numIter: 3, outlier: 0.05, structureOutlier: true }),
  framequant({ bits: 2, r: 1.1 }),
  quip({ bits: 2, incoh: true, method: "ldlq" }),
  spqr({ bits: 3, groupSize: 16, qqScaleBits: 3, qqZeroBits: 3, outlierRelativeThreshold: 0.2 }),
  spqr({ bits: 2, groupSize: 16, outlierRelativeThreshold: 0.2, permutationOrder: "act_order" }),
  oa({ wbits: 4, sym: true, perOutDim: true, blockSize: 32, outlierMode: true, offsetMode: true }),
  oa({ wbits: 4, perOutDim: true, blockSize: 32, qqScaleBits: 4, qqZeroBits: 4 }),
  oa({ baseline: true }),
  bcq({ bits: 3, groupSize: 32, rounds: 2 }),
];

Deno.test("formats: each method's meta decodes to Wq and its bits are counted from the meta", async () => {
  const layers = await realLayers({ nsamples: 4, seqlen: 64 });
  const L = layers.find((l) => l.name.endsWith("layers.0.self_attn.o_proj"))!;
  const seen = new Set<string>();
  for (const q of QUANTIZERS) {
    const res = await q.quantizeWeight(L.W, { H: L.H, nsamples: 256 });
    const what = `${q.name} ${JSON.stringify(q.options)}`;
    assert(Object.hasOwn(FORMATS, res.meta.method), what);
    seen.add(res.meta.method);
    assertEquals((await dequantizeMeta(res.meta)).data, res.Wq.data, what);
    assertEquals(metaBitsPerWeight(res.meta), res.bitsPerWeight, what);
  }
  // The eight methods above are all registered (other registered formats have their own tests).
  assertEquals([...seen].sort(), [
    "bcq",
    "framequant",
    "gptq",
    "oa",
    "quantease",
    "quip",
    "rtn",
    "spqr",
  ]);
});

Deno.test("formats: an unregistered method is an OptionError listing the known formats", async () => {
  const meta = {
    method: "nosuch",
    bits: 4,
    groupSize: -1,
    sym: false,
    shape: [1, 2] as [number, number],
    codes: new Uint8Array(2),
    scales: new Float32Array(1),
    zeros: new Float32Array(1),
  };
  await assertRejects(() => dequantizeMeta(meta), OptionError, "known: rtn, gptq");
  assertThrows(() => metaBitsPerWeight(meta), OptionError, "nosuch");
});
