/**
 * SpQR, OA and BCQ through the real pipeline on stories260K in one recipe: every packed meta
 * decodes (dequantizeMeta) to exactly the weight the quantized model uses, and a second run over
 * the same workdir restores every block (nested second-level stats, CSR outliers, bit planes).
 */
import { assert, assertEquals } from "@std/assert";
import { loadModel } from "../../src/models/load.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { quantize, type QuantReport } from "../../src/quant/pipeline/pipeline.ts";
import { spqr } from "../../src/quant/weight_only/spqr.ts";
import { oa } from "../../src/quant/weight_only/oa.ts";
import { bcq } from "../../src/quant/weight_only/bcq.ts";
import { dequantizeMeta } from "../../src/quant/dequantize.ts";
import { main } from "../../src/cli.ts";
import { DATA } from "./_real_stats.ts";

Deno.test("spqr / oa / bcq in one recipe: metas decode to the model's weights; resume restores them", async () => {
  const m = await loadModel(`${DATA}models/stories260K-hf`);
  const calib = await calibrationSet(m, "tinystories", { nsamples: 8, seqlen: 128, seed: 3 });
  const recipe = {
    "*.q_proj": spqr({
      bits: 3,
      groupSize: 16,
      qqScaleBits: 3,
      qqZeroBits: 3,
      outlierRelativeThreshold: 0.2,
      permutationOrder: "act_order",
    }),
    "*.k_proj": oa({
      wbits: 4,
      sym: true,
      perOutDim: true,
      blockSize: 32,
      outlierMode: true,
      offsetMode: true,
    }),
    "*.v_proj": oa({ wbits: 4, perOutDim: true, blockSize: 32, qqScaleBits: 4, qqZeroBits: 4 }),
    "*.o_proj": oa({ baseline: true }),
    "*.up_proj": bcq({ bits: 3, groupSize: 32, rounds: 5 }),
    "*.gate_proj": bcq({ bits: 4, rounds: 0 }),
    "*": spqr({
      bits: 2,
      groupSize: 32,
      qqScaleBits: 3,
      qqZeroBits: 3,
      outlierRelativeThreshold: 0.2,
    }),
  };
  const dir = await Deno.makeTempDir();
  try {
    const qm = await quantize(m, recipe, { calib, workdir: dir });
    const report = qm.report as QuantReport;
    const methods = new Set(report.layers.map((l) => l.method));
    assertEquals([...methods].sort(), ["bcq", "oa", "spqr"]);
    for (const l of report.layers) {
      assert(Number.isFinite(l.relErr) && l.relErr < 1.5, `${l.name} ${l.relErr}`);
    }
    for (const [name, meta] of Object.entries(qm.packed!)) {
      const W = await qm.weights.get(`${name}.weight`);
      assertEquals((await dequantizeMeta(meta)).data, W.data, `${meta.method} ${name}`);
    }
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

Deno.test("cli: quantize --method spqr|oa|bcq runs on stories260K", async () => {
  const model = `${DATA}models/stories260K-hf`;
  const base = ["quantize", "--model", model, "--nsamples", "4", "--seqlen", "64"];
  const logs: string[] = [];
  const log = console.log, err = console.error;
  console.log = (...a: unknown[]) => logs.push(a.join(" "));
  console.error = () => {};
  try {
    assertEquals(
      await main([
        ...base,
        "--method",
        "spqr",
        "--bits",
        "3",
        "--group-size",
        "16",
        "--qq-scale-bits",
        "3",
        "--qq-zero-bits",
        "3",
        "--outlier-threshold",
        "0.2",
      ]),
      0,
    );
    assertEquals(
      await main([
        ...base,
        "--method",
        "oa",
        "--bits",
        "4",
        "--sym",
        "--per-out-dim",
        "--block-size",
        "32",
        "--outlier-mode",
        "--offset-mode",
      ]),
      0,
    );
    assertEquals(
      await main([
        ...base,
        "--method",
        "bcq",
        "--bits",
        "3",
        "--group-size",
        "128",
        "--rounds",
        "2",
      ]),
      0,
    );
  } finally {
    console.log = log;
    console.error = err;
  }
  assertEquals(logs.filter((l) => /^(spqr|oa|bcq): 35 layers/.test(l)).length, 3, logs.join("\n"));
});
