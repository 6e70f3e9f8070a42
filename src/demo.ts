/**
 * The demo (`deno task demo`): stories260K (from ../shared/data, else the hub), its TinyStories
 * perplexity, a greedy continuation of "Once upon a time", and a quantization table — FP, RTN and
 * GPTQ at 4/3/2 bits, per-channel and group 32, then QuantEase, QuIP (incoherence processing) and
 * FrameQuant (r = 1.1) at 4/3/2 bits per-channel and BCQ 4-bit g128, calibrated on 128 × 256
 * TinyStories train tokens — with TinyStories perplexity, bits/weight and seconds, and the run's peak memory.
 *
 * Flags: `--windows N` evaluates on the first N windows of 512 tokens (default 64, about 33k
 * tokens, the same default as `deno task cli ppl` / `quantize --windows`; `--windows all` uses all
 * 762 windows of the 1,000 validation stories, which takes 40–60 minutes for the whole table on 2
 * cores), `--no-table` stops after the FP figures. Every row, the FP one included, is evaluated
 * on the same windows; the `setup` column says what each row is (act-order, per-channel or
 * static/partial groups, what bits/weight counts).
 * @module
 */
import { parseArgs } from "node:util";
import { defaultModelPath } from "./_paths.ts";
import { generate } from "./eval/generate.ts";
import { perplexity } from "./eval/perplexity.ts";
import { loadModel } from "./models/load.ts";
import { calibrationSet } from "./quant/pipeline/calibration.ts";
import { gptq } from "./quant/weight_only/gptq.ts";
import { quantize } from "./quant/pipeline/pipeline.ts";
import { rtn } from "./quant/weight_only/rtn.ts";
import { quantease } from "./quant/weight_only/quantease.ts";
import { quip } from "./quant/weight_only/quip.ts";
import { framequant } from "./quant/weight_only/framequant.ts";
import { bcq } from "./quant/weight_only/bcq.ts";
import { oa } from "./quant/weight_only/oa.ts";
import { spqr } from "./quant/weight_only/spqr.ts";
import type { WeightQuantizer } from "./quant/core/types.ts";
import { type ResultRow, resultsTable } from "./viz/table.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: { windows: { type: "string" }, "no-table": { type: "boolean", default: false } },
});
const nsamples = flags.windows === "all" ? undefined : Number(flags.windows ?? 64);
if (nsamples !== undefined && !(Number.isInteger(nsamples) && nsamples >= 1)) {
  console.error(`--windows: expected a positive integer or "all", got "${flags.windows}"`);
  Deno.exit(2);
}

const path = await defaultModelPath();
const model = await loadModel(path);
const c = model.config;
console.log(
  `model: ${path} (${c.modelType}, ${c.numLayers} layers, hidden ${c.hiddenSize}, heads ${c.numHeads}/${c.numKvHeads}, vocab ${c.vocabSize}, context ${c.maxPositions})`,
);
const fp = await perplexity(model, "tinystories", { nsamples });
console.log(
  `TinyStories perplexity (FP32): ${
    fp.ppl.toFixed(4)
  }  [${fp.windows} windows × ${fp.seqlen} tokens, ${fp.seconds.toFixed(1)} s]`,
);
const g = await generate(model, "Once upon a time", { maxNewTokens: 100, temperature: 0 });
console.log(`greedy continuation (${g.tokensPerSecond.toFixed(0)} tokens/s):\n${g.text}\n`);

let peak = Deno.memoryUsage().rss / 2 ** 20;
if (!flags["no-table"]) {
  const calib = await calibrationSet(model, "tinystories", { nsamples: 128, seqlen: 256, seed: 0 });
  console.log(`calibration: ${calib.ids.length} × ${calib.seqlen} tokens from ${calib.source}`);
  const rows: ResultRow[] = [{
    method: "fp32",
    bits: 32,
    group: "-",
    bitsPerWeight: 32,
    ppl: fp.ppl,
    seconds: 0,
    setup: `unquantized, same ${fp.windows} windows`,
  }];
  // What each row is (the table's last column); bits/weight always counts codes plus fp16
  // scales and zeros (and g_idx / outliers / frame redundancy where a method stores them).
  const setups: Record<string, (bits: number, groupSize: number) => string> = {
    rtn: (_b, g) => g === -1 ? "per-channel min-max" : `dynamic groups of ${g} (last one partial)`,
    gptq: (_b, g) =>
      `act-order, ${g === -1 ? "per-channel" : `dynamic groups of ${g} (last one partial)`}`,
    quantease: () => "reference default: start from W, relaxed iterations, 30 sweeps",
    quip: () => "incoherence (kron), ldlq, qfn b",
    "framequant r1.1": () => "frames on both sides: bits/weight counts 1.1² codes per weight",
    bcq: () => "LUT-GEMM binary codes, 30 rounds, groups of 128",
    spqr: () => "b_w 3, β1 16, 3-bit stats in groups of 16, τ 0.25 outliers, act-order",
    "oa int4+outlier+offset": () => "per channel, blocks of 32, ≤ 1 BF16 outlier per block, offset",
  };
  const methods: [string, (bits: number, groupSize: number) => WeightQuantizer][] = [
    ["rtn", (bits, groupSize) => rtn({ bits, groupSize, partialGroups: true })],
    ["gptq", (bits, groupSize) => gptq({ bits, groupSize, actOrder: true, partialGroups: true })],
  ];
  const more: [string, (bits: number) => WeightQuantizer][] = [
    ["quantease", (bits) => quantease({ bits })],
    ["quip", (bits) => quip({ bits, incoh: true, method: "ldlq" })],
    ["framequant r1.1", (bits) => framequant({ bits, r: 1.1 })],
  ];
  const runs: [string, number, number, WeightQuantizer][] = [];
  for (const bits of [4, 3, 2]) {
    for (const groupSize of [-1, 32]) {
      for (const [name, make] of methods) runs.push([name, bits, groupSize, make(bits, groupSize)]);
    }
  }
  for (const bits of [4, 3, 2]) {
    for (const [name, make] of more) runs.push([name, bits, -1, make(bits)]);
  }
  // Issue 18's formats, one row each (the full table with the seed's configurations:
  // tools/outlier_formats_table.ts, notebooks/07_outlier_formats.ipynb): BCQ (LUT-GEMM) 4-bit
  // g128 with 30 alternating rounds; SpQR at the seed's 4-bit-target configuration; OA INT4 with
  // outliers and offset.
  runs.push(["bcq", 4, 128, bcq({ bits: 4, groupSize: 128, partialGroups: true })]);
  runs.push([
    "spqr",
    3,
    16,
    spqr({
      bits: 3,
      groupSize: 16,
      qqScaleBits: 3,
      qqZeroBits: 3,
      qqGroupSize: 16,
      outlierRelativeThreshold: 0.25,
      permutationOrder: "act_order",
    }),
  ]);
  runs.push([
    "oa int4+outlier+offset",
    4,
    32,
    oa({
      wbits: 4,
      sym: true,
      perOutDim: true,
      blockSize: 32,
      outlierMode: true,
      offsetMode: true,
    }),
  ]);
  for (const [name, bits, groupSize, quantizer] of runs) {
    // RTN needs no statistics: without calib its time is the quantizer's alone (with calib the
    // pipeline would also gather Hessians to report each layer's relative error).
    const qm = await quantize(model, quantizer, {
      calib: quantizer.needsHessian ? calib : undefined,
    });
    const r = await perplexity(qm, "tinystories", { nsamples });
    peak = Math.max(peak, qm.report.peakRssMiB, Deno.memoryUsage().rss / 2 ** 20);
    rows.push({
      method: name,
      bits,
      group: groupSize === -1 ? "channel" : String(groupSize),
      bitsPerWeight: qm.report.bitsPerWeight,
      ppl: r.ppl,
      seconds: qm.report.seconds,
      setup: setups[name]?.(bits, groupSize) ?? "",
    });
    console.error(`  ${name} ${bits}-bit g${groupSize}: ppl ${r.ppl.toFixed(3)}`);
  }
  console.log(
    resultsTable(rows, {
      title: `stories260K, TinyStories perplexity (${fp.windows} windows × ${fp.seqlen})`,
    }).text,
  );
}
peak = Math.max(peak, Deno.memoryUsage().rss / 2 ** 20);
console.log(`peak resident memory: ${peak.toFixed(0)} MiB`);
