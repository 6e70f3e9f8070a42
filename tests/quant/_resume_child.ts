// Child process of resume_test.ts: quantizes stories260K with a workdir, writes the quantized
// weights to OUT, and (with SLOW=1) pauses after each finished block so the parent can kill it.
import { loadModel } from "../../src/models/load.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";
import { writeSafetensors } from "../../src/io/safetensors.ts";

const [workdir, out] = Deno.args;
const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const m = await loadModel(`${DATA}models/stories260K-hf`);
const calib = await calibrationSet(m, "tinystories", { nsamples: 16, seqlen: 128, seed: 1 });
const slow = Deno.env.get("SLOW") === "1";
const qm = await quantize(m, gptq({ bits: 3, groupSize: 4, actOrder: true }), {
  calib,
  workdir,
  onProgress: (p) => {
    if (p.stage !== "block") return;
    console.log(`block-done ${p.done}`);
    if (slow) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 3000);
  },
});
const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
for (const [k, v] of qm.weights.overrides()) tensors[k] = v;
await writeSafetensors(out, tensors, { metadata: { resumed: String(qm.report.resumedBlocks) } });
console.log("finished");
