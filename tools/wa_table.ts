/**
 * Prints the stories260K weight-activation table of issue 14 (`src/eval/wa_table.ts`: the rows,
 * protocol and calibration are documented there) on the CPU backend, or on WebGPU with
 * `--webgpu` (every knob is a spec, so the evaluation runs GPU-resident).
 *
 * Usage: `deno run -A [--unstable-webgpu] tools/wa_table.ts [--windows N] [--calib N]
 * [--alpha A] [--only SUBSTR[,SUBSTR…]] [--lkd-steps 0,25,50,100] [--lkd-lr 1e-4] [--webgpu]
 * [--model PATH]`.
 * @module
 */
import { parseArgs } from "node:util";
import { defaultModelPath } from "../src/_paths.ts";
import { loadModel } from "../src/models/load.ts";
import { setBackend } from "../src/backend/device.ts";
import { waTable, waTableMarkdown } from "../src/eval/wa_table.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    windows: { type: "string", default: "8" },
    calib: { type: "string", default: "64" },
    alpha: { type: "string", default: "0.5" },
    only: { type: "string" },
    "lkd-steps": { type: "string", default: "0,25,50,100" },
    "lkd-lr": { type: "string", default: "1e-4" },
    webgpu: { type: "boolean", default: false },
    model: { type: "string" },
  },
});

if (flags.webgpu) {
  const { webgpuBackend } = await import("../src/backend/webgpu.ts");
  setBackend(await webgpuBackend({ allowFallback: true }));
}
const model = await loadModel(flags.model ?? (await defaultModelPath()));
const windows = Number(flags.windows);
console.log(`stories260K, ${windows} × 512 TinyStories validation tokens`);
const rows = await waTable(model, {
  windows,
  calib: Number(flags.calib),
  alpha: Number(flags.alpha),
  only: flags.only?.split(","),
  lkdSteps: flags["lkd-steps"]!.split(",").filter((s) => s !== "").map(Number),
  lkdLr: Number(flags["lkd-lr"]),
  onRow: (r) =>
    console.log(
      `| ${r.name} | ${r.effBits} | ${r.ppl.toFixed(4)} | ${
        (r.secondsPerStep ?? r.seconds).toFixed(3)
      } | resident ${r.resident}`,
    ),
});
console.log("\n" + waTableMarkdown(rows));
