/**
 * The pipeline's onnxruntime calibration forward (`forward: "ort"`, `src/models/ort_block.ts`)
 * against the TypeScript block forward, the reference: per-stage `XᵀX` and block outputs within
 * float32 rounding, and a small GPTQ run's report and perplexity within a tight tolerance. (On
 * stories260K with 256-token windows they are bit-identical today; with 40 tokens, where the
 * TypeScript forward attends in its own loop, they differ by ~2e-7 relative. The tolerances
 * allow for other onnxruntime kernels.)
 */
import { assert, assertEquals, assertLess, assertRejects } from "@std/assert";
import { cpuBackend } from "../../src/backend/cpu.ts";
import { OptionError, ResumeError } from "../../src/errors.ts";
import { perplexity } from "../../src/eval/perplexity.ts";
import { block, embed } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import {
  ortBlockPass,
  type OrtBlockReuse,
  ortBlockUnsupported,
} from "../../src/models/ort_block.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { type LayerReport, quantize } from "../../src/quant/pipeline/pipeline.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import { type Tensor, transpose2d } from "../../src/tensor.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K-hf`;

/** Largest |a − b| over max |a| (0 for identical arrays). */
function relDiff(a: Float32Array, b: Float32Array): number {
  assertEquals(a.length, b.length);
  let d = 0, m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(a[i]));
  }
  return m > 0 ? d / m : d;
}

/** `XᵀX` of each linear's input and the block output through the TypeScript forward. */
async function tsPass(
  m: Model,
  i: number,
  h: Tensor,
  batch: number,
): Promise<{ stats: Map<string, Float32Array>; out: Tensor }> {
  const stats = new Map<string, Float32Array>();
  const out = await block(m, i, h, {
    batch,
    backend: cpuBackend,
    hooks: {
      linearInput: async (name, x) => {
        stats.set(name, (await cpuBackend.matmul(transpose2d(x), x)).data);
      },
    },
  });
  return { stats, out };
}

async function hidden(m: Model, nsamples: number, seqlen: number, upTo: number) {
  const calib = await calibrationSet(m, "tinystories", { nsamples, seqlen, seed: 1 });
  let h = await embed(m, calib.ids.flat(), { seqLen: seqlen });
  for (let i = 0; i < upTo; i++) h = await block(m, i, h, { batch: nsamples, backend: cpuBackend });
  return h;
}

for (const [nsamples, seqlen] of [[4, 256], [3, 40]]) {
  Deno.test(`ortBlockPass matches the TypeScript block (${nsamples} × ${seqlen} tokens)`, async () => {
    const m = await loadModel(MODEL);
    assertEquals(ortBlockUnsupported(m), null);
    for (const i of [0, 3]) {
      const h = await hidden(m, nsamples, seqlen, i);
      const ref = await tsPass(m, i, h, nsamples);
      const names = [...ref.stats.keys()];
      assertEquals(names.length, 7);
      // Every statistic and the output in one pass, then stage by stage with reuse.
      const all = await ortBlockPass(m, i, h, {
        batch: nsamples,
        want: new Set(names),
        output: true,
      });
      const reuse: OrtBlockReuse = {};
      for (const name of names) {
        const one = await ortBlockPass(m, i, h, { batch: nsamples, want: new Set([name]), reuse });
        for (const got of [all.stats.get(name)!, one.stats.get(name)!]) {
          assertLess(relDiff(ref.stats.get(name)!, got), 1e-5, `${name} XᵀX`);
        }
      }
      assert(reuse.attn && reuse.mid && reuse.act, "stage results kept");
      const out = await ortBlockPass(m, i, h, {
        batch: nsamples,
        want: new Set(),
        output: true,
        reuse,
      });
      for (const o of [all.output!, out.output!]) {
        assertEquals(o.shape, ref.out.shape);
        assertLess(relDiff(ref.out.data, o.data), 1e-5, "block output");
      }
    }
  });
}

Deno.test("quantize forward ort: GPTQ report and perplexity agree with the TypeScript forward", async () => {
  const m = await loadModel(MODEL);
  const calib = await calibrationSet(m, "tinystories", { nsamples: 16, seqlen: 128, seed: 0 });
  const run = (forward: "ts" | "ort", trueSequential = true) =>
    quantize(m, gptq({ bits: 3, groupSize: 32, actOrder: true, partialGroups: true }), {
      calib,
      forward,
      trueSequential,
    });
  for (const trueSequential of [true, false]) {
    const ts = await run("ts", trueSequential), ort = await run("ort", trueSequential);
    assertEquals(ts.report.forward, "ts");
    assertEquals(ort.report.forward, "ort");
    assertEquals(ort.report.forwardFallback, undefined);
    const lo: LayerReport[] = ort.report.layers, lt: LayerReport[] = ts.report.layers;
    assertEquals(lo.map((l) => l.name), lt.map((l) => l.name));
    lo.forEach((l, k) => {
      const r = lt[k];
      assertLess(Math.abs(l.relErr - r.relErr), 1e-4 * r.relErr + 1e-7, `${l.name} relErr`);
    });
    if (!trueSequential) continue;
    const a = await perplexity(ts, "tinystories", { nsamples: 8 });
    const b = await perplexity(ort, "tinystories", { nsamples: 8 });
    assertLess(Math.abs(a.ppl - b.ppl) / a.ppl, 1e-4, `ppl ${a.ppl} vs ${b.ppl}`);
  }
});

Deno.test("quantize forward ort: visible fallbacks, option checks, own run identity", async () => {
  const m = await loadModel(MODEL);
  const calib = await calibrationSet(m, "tinystories", { nsamples: 2, seqlen: 32, seed: 0 });
  // Activation quantization points: the TypeScript forward, and the report says why.
  const pm: Model = { ...m, points: { linearInput: { "*": { bits: 8 } } } };
  const a = await quantize(pm, rtn({ bits: 4 }), { calib, forward: "ort" });
  assertEquals(a.report.forward, "ts");
  assert(a.report.forwardFallback?.includes("quantization points"), a.report.forwardFallback);
  await assertRejects(
    () => quantize(m, rtn({ bits: 4 }), { calib, forward: "wasm" as "ts" }),
    OptionError,
    "forward",
  );
  // A workdir of an "ort" run is not resumed by a "ts" run.
  const dir = await Deno.makeTempDir();
  try {
    await quantize(m, rtn({ bits: 4 }), { calib, forward: "ort", workdir: dir });
    await assertRejects(
      () => quantize(m, rtn({ bits: 4 }), { calib, forward: "ts", workdir: dir }),
      ResumeError,
    );
    const again = await quantize(m, rtn({ bits: 4 }), { calib, forward: "ort", workdir: dir });
    assertEquals(again.report.resumedBlocks, m.config.numLayers);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
