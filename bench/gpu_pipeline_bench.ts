/**
 * Bytes moved between host and device per block by the GPTQ pipeline on WebGPU, counted by the
 * backend (`WebGPUBackend.transfer()`: data uploaded, read back, uniforms), for stories260K (real
 * checkpoint, TinyStories calibration) and one TinyLlama-1.1B-shaped block (a synthetic
 * checkpoint from `tools/synthetic_checkpoint.ts`, random token ids). Three runs of the same
 * `quantize` call in the same process, same backend:
 * - before: `deviceHidden: false, deviceHessian: false` — every true-sequential group uploads
 *   the calibration hidden states again, each block's output is read back and re-uploaded, and
 *   H (`Σ XᵀX`) is read back once per input group and uploaded again by GPTQ and by the relErr
 *   product (the pipeline before issue 12's device items);
 * - hidden: `deviceHidden: true, deviceHessian: false` — hidden states uploaded once (the
 *   embeddings) and passed from block to block on the device; H still crosses the bus;
 * - H too: `deviceHidden: true, deviceHessian: true` — H formed, used by GPTQ and by relErr on
 *   the device; only its diagonal (d floats per input group) is read back.
 * The quantized weights of all runs are compared (they must be equal bit for bit) and the ratio
 * before / H-too is printed.
 *
 * ```sh
 * nice -n 5 deno run -A --unstable-webgpu bench/gpu_pipeline_bench.ts [--nsamples 8] [--seqlen 128]
 *   [--tiny-seqlen 64] [--tiny-nsamples 2] [--no-tinyllama] [--no-stories]
 * ```
 * @module
 */
import { webgpuBackend } from "../src/backend/webgpu.ts";
import { loadModel } from "../src/models/load.ts";
import type { Model } from "../src/models/model.ts";
import { calibrationSet } from "../src/quant/pipeline/calibration.ts";
import { quantize } from "../src/quant/pipeline/pipeline.ts";
import { gptq } from "../src/quant/weight_only/gptq.ts";
import type { CalibrationSet } from "../src/quant/pipeline/calibration.ts";

/** `--name value` from the command line, or `dflt`. */
function flag(name: string, dflt: number): number {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Number(Deno.args[i + 1]) : dflt;
}
const tinyllama = !Deno.args.includes("--no-tinyllama");
const stories260K = !Deno.args.includes("--no-stories");

const be = await webgpuBackend({ allowFallback: true });
console.log(`device: ${be.description}`);

interface Bytes {
  uploaded: number;
  readBack: number;
  uniforms: number;
}

/** Per-block transfer deltas of one `quantize` run, and the quantized weights. */
async function measure(
  model: Model,
  calib: CalibrationSet,
  o: { deviceHidden: boolean; deviceHessian: boolean },
) {
  const perBlock: Bytes[] = [];
  let last = be.transfer();
  const start = last;
  const t0 = performance.now();
  const q = await quantize(
    model,
    gptq({ bits: 4, groupSize: 32, actOrder: true, partialGroups: true }),
    {
      calib,
      backend: be,
      ...o,
      onProgress: (p) => {
        if (p.stage !== "block") return;
        const now = be.transfer();
        perBlock.push({
          uploaded: now.uploaded - last.uploaded,
          readBack: now.readBack - last.readBack,
          uniforms: now.uniforms - last.uniforms,
        });
        last = now;
      },
    },
  );
  const seconds = (performance.now() - t0) / 1000;
  if (!q.report?.residentBlocks) throw new Error("the pipeline did not run resident blocks");
  const end = be.transfer();
  const total = {
    uploaded: end.uploaded - start.uploaded,
    readBack: end.readBack - start.readBack,
    uniforms: end.uniforms - start.uniforms,
  };
  return { perBlock, total, seconds, q };
}

const mib = (b: number) => (b / 2 ** 20).toFixed(3);
const cell = (b: Bytes) => `${mib(b.uploaded).padStart(9)} / ${mib(b.readBack).padStart(8)}`;
const ratio = (b: Bytes, a: Bytes) =>
  `${((b.uploaded + b.readBack) / (a.uploaded + a.readBack)).toFixed(2)}×`;

async function compare(label: string, model: Model, calib: CalibrationSet) {
  const run = async (name: string, o: { deviceHidden: boolean; deviceHessian: boolean }) => {
    const r = await measure(model, calib, o);
    const t = r.total;
    console.error(
      `  ${label}, ${name}: ${mib(t.uploaded)} MiB up / ${mib(t.readBack)} MiB back, ` +
        `${r.seconds.toFixed(1)} s`,
    );
    return r;
  };
  const before = await run("before", { deviceHidden: false, deviceHessian: false });
  const hidden = await run("hidden", { deviceHidden: true, deviceHessian: false });
  const after = await run("H too", { deviceHidden: true, deviceHessian: true });
  // same quantized weights
  let same = true;
  for (const r of after.q.report!.layers) {
    const a = await after.q.weights.get(`${r.name}.weight`);
    for (const other of [before, hidden]) {
      const b = await other.q.weights.get(`${r.name}.weight`);
      for (let j = 0; j < a.data.length; j++) if (a.data[j] !== b.data[j]) same = false;
    }
  }
  console.log(
    `\n${label}: ${calib.ids.length} × ${calib.seqlen} calibration tokens, GPTQ 4-bit g32 act-order`,
  );
  console.log(
    "block | before up / back MiB | hidden on device up / back | H too up / back | " +
      "before ÷ H too",
  );
  for (let i = 0; i < after.perBlock.length; i++) {
    const b = before.perBlock[i], h = hidden.perBlock[i], a = after.perBlock[i];
    console.log(
      `${String(i).padStart(5)} | ${cell(b)} | ${cell(h)} | ${cell(a)} | ${ratio(b, a)}`,
    );
  }
  const B = before.total, H = hidden.total, A = after.total;
  console.log(`total | ${cell(B)} | ${cell(H)} | ${cell(A)} | ${ratio(B, A)}`);
  console.log(
    `uniforms ${mib(B.uniforms)} / ${mib(H.uniforms)} / ${mib(A.uniforms)} MiB; ` +
      `${before.seconds.toFixed(1)} s / ${hidden.seconds.toFixed(1)} s / ` +
      `${after.seconds.toFixed(1)} s (same loaded machine, same process: ratios only); ` +
      `weights ${same ? "bit-identical" : "DIFFER"}`,
  );
  if (!same) throw new Error(`${label}: the runs quantized differently`);
}

if (stories260K) {
  const stories = await loadModel("../shared/data/models/stories260K-hf");
  await compare(
    "stories260K",
    stories,
    await calibrationSet(stories, "tinystories", {
      nsamples: flag("nsamples", 8),
      seqlen: flag("seqlen", 128),
      seed: 0,
    }),
  );
}

if (tinyllama) {
  const { writeSyntheticCheckpoint } = await import("../tools/synthetic_checkpoint.ts");
  const dir = await Deno.makeTempDir({ prefix: "quantlab_tinyllama_block_" });
  try {
    await writeSyntheticCheckpoint(`${dir}/model`, {
      preset: "tinyllama-1.1b",
      layers: 1,
      seed: 0,
    });
    const tiny = await loadModel(`${dir}/model`);
    const V = tiny.config.vocabSize;
    let s = 1;
    const next = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
    const T = flag("tiny-seqlen", 64);
    const calib: CalibrationSet = {
      ids: Array.from(
        { length: flag("tiny-nsamples", 2) },
        () => Array.from({ length: T }, () => 3 + Math.floor(next() * (V - 3))),
      ),
      dataset: "random",
      source: "uniform random token ids (synthetic checkpoint)",
      seqlen: T,
      seed: 1,
    };
    await compare("TinyLlama-1.1B-shaped block (synthetic, 1 layer)", tiny, calib);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
be.release();
