/**
 * Every weight quantizer through the real pipeline in one mixed recipe: each layer's packed meta
 * decodes (dequantizeMeta) to exactly the weight the quantized model uses, the report names each
 * method, and a second run over the same workdir restores every block from its checkpoint with
 * identical weights and metas (nested typed arrays included).
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { loadModel } from "../../src/models/load.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { quantize, type QuantReport } from "../../src/quant/pipeline/pipeline.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import { quantease } from "../../src/quant/weight_only/quantease.ts";
import { quip } from "../../src/quant/weight_only/quip.ts";
import { framequant } from "../../src/quant/weight_only/framequant.ts";
import { dequantizeMeta } from "../../src/quant/dequantize.ts";
import { dequantize } from "../../src/quant/core/grid.ts";
import { OptionError } from "../../src/errors.ts";
import { DATA } from "./_real_stats.ts";

Deno.test("all methods in one recipe: metas decode to the model's weights; resume restores them", async () => {
  const m = await loadModel(`${DATA}models/stories260K-hf`);
  const calib = await calibrationSet(m, "tinystories", { nsamples: 8, seqlen: 128, seed: 2 });
  const recipe = {
    "*.q_proj": quip({ bits: 2, incoh: true, method: "ldlq" }),
    "*.k_proj": quip({ bits: 3, proj: "hadamard", method: "allbal", npasses: 2 }),
    "*.v_proj": quantease({ bits: 3, numIter: 5, outlier: 0.02 }),
    "*.o_proj": quantease({ bits: 3, numIter: 5, outlier: 0.05, structureOutlier: true }),
    "*.gate_proj": framequant({ bits: 2, r: 1.1 }),
    "*.up_proj": rtn({ bits: 4, groupSize: 32 }),
    "*": gptq({ bits: 3, groupSize: 43, actOrder: true }),
  };
  const dir = await Deno.makeTempDir();
  try {
    const qm = await quantize(m, recipe, { calib, workdir: dir });
    const report = qm.report as QuantReport;
    const methods = new Set(report.layers.map((l) => l.method));
    assertEquals([...methods].sort(), ["framequant", "gptq", "quantease", "quip", "rtn"]);
    assertEquals(report.layers.length, 35);
    for (const l of report.layers) {
      assert(Number.isFinite(l.relErr) && l.relErr > 0 && l.relErr < 1.5, `${l.name} ${l.relErr}`);
      assert(l.bitsPerWeight > 1.5 && l.bitsPerWeight < 8, `${l.name} ${l.bitsPerWeight}`);
    }
    for (const [name, meta] of Object.entries(qm.packed!)) {
      const W = await qm.weights.get(`${name}.weight`);
      assertEquals((await dequantizeMeta(meta)).data, W.data, `${meta.method} ${name}`);
    }
    // The plain grid decode refuses metas whose codes live in a rotated / frame basis.
    const qmeta = qm.packed!["model.layers.0.self_attn.q_proj"];
    assertThrows(() => dequantize(qmeta), OptionError, "transformed basis");

    const again = await quantize(m, recipe, { calib, workdir: dir });
    assertEquals(again.report.resumedBlocks, 5);
    for (const [name, meta] of Object.entries(again.packed!)) {
      const W = await qm.weights.get(`${name}.weight`);
      assertEquals((await again.weights.get(`${name}.weight`)).data, W.data, name);
      assertEquals((await dequantizeMeta(meta)).data, W.data, `restored meta ${name}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
