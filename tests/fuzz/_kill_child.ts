// Child process of `deno task fuzz`'s kill test: quantizes stories260K (GPTQ 3-bit, act-order,
// 8 calibration windows of 64 tokens) with a workdir and writes the quantized weights to OUT.
// Prints "start" once quantization begins, so the parent can aim its SIGKILL inside the run.
import { loadModel } from "../../src/models/load.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";
import { writeSafetensors } from "../../src/io/safetensors.ts";

const [workdir, out] = Deno.args;
const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const m = await loadModel(`${DATA}models/stories260K-hf`);
const calib = await calibrationSet(m, "tinystories", { nsamples: 8, seqlen: 64, seed: 5 });
console.log("start");
const qm = await quantize(m, gptq({ bits: 3, groupSize: 4, actOrder: true }), {
  calib,
  workdir: workdir === "-" ? undefined : workdir,
});
const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
for (const [k, v] of qm.weights.overrides()) tensors[k] = v;
await writeSafetensors(out, tensors, {
  metadata: {
    resumed: String(qm.report.resumedBlocks),
    recomputed: String(qm.report.recomputedBlocks?.length ?? 0),
  },
});
console.log("finished");
