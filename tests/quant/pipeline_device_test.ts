/**
 * The GPTQ pipeline on WebGPU with the calibration hidden states kept on the device
 * (`deviceHidden: true`) against the same run with them crossing the bus per group and per
 * block (`deviceHidden: false`, the default and the pipeline before): the quantized weights,
 * metas and relErr are bit-identical, and the backend's byte counters differ by exactly the
 * closed form — with `Hb = nsamples · seqlen · hidden · 4` bytes of hidden states and G true-sequential groups,
 * before uploads them for each group and for the block's output run and reads the output back
 * (`(G + 1)·Hb` up and `Hb` back per block, `G·Hb` up and nothing back for the last); after
 * uploads them once (block 0) and reads nothing back. Also on a checkpointing run (workdir),
 * where the hidden states are read back once per block for the block file and the run resumes
 * to the same model. CPU results are untouched (the CPU path has no device).
 */
import { assert, assertEquals } from "@std/assert";
import { webgpuAvailable, webgpuBackend } from "../../src/backend/webgpu.ts";
import { loadModel } from "../../src/models/load.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";

/** A meta without its wall-clock timings. */
function untimed(meta: Record<string, unknown>): Record<string, unknown> {
  const { timings: _, ...rest } = meta;
  return rest;
}

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("pipeline_device_test: SKIPPED — no WebGPU adapter");

Deno.test({
  name:
    "GPTQ pipeline on WebGPU: hidden states on the device = the bus path, minus the closed form",
  ignore: !available,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const be = await webgpuBackend({ allowFallback: true });
    const model = await loadModel("../shared/data/models/stories260K-hf");
    const nsamples = 3, seqlen = 32;
    const calib = await calibrationSet(model, "tinystories", { nsamples, seqlen, seed: 4 });
    const q = gptq({ bits: 4, groupSize: 32, actOrder: true, partialGroups: true });
    const L = model.config.numLayers, G = 4;
    const Hb = nsamples * seqlen * model.config.hiddenSize * 4;
    const run = async (deviceHidden: boolean, workdir?: string) => {
      const per: { up: number; back: number }[] = [];
      let last = be.transfer();
      const m = await quantize(model, q, {
        calib,
        backend: be,
        deviceHidden,
        workdir,
        chunk: 2, // two chunks (2 + 1 sequences): device rows per chunk
        onProgress: (p) => {
          if (p.stage !== "block") return;
          const now = be.transfer();
          per.push({ up: now.uploaded - last.uploaded, back: now.readBack - last.readBack });
          last = now;
        },
      });
      assert(m.report!.residentBlocks);
      return { m, per };
    };
    const before = await run(false);
    const after = await run(true);
    for (const r of after.m.report!.layers) {
      const a = await after.m.weights.get(`${r.name}.weight`);
      const b = await before.m.weights.get(`${r.name}.weight`);
      assertEquals(a.data, b.data, r.name);
      assertEquals(untimed(after.m.packed![r.name]), untimed(before.m.packed![r.name]));
    }
    assertEquals(
      after.m.report!.layers.map((r: { relErr: number }) => r.relErr),
      before.m.report!.layers.map((r: { relErr: number }) => r.relErr),
    );
    for (let i = 0; i < L; i++) {
      const lastBlock = i === L - 1;
      const upBefore = (G + (lastBlock ? 0 : 1)) * Hb, upAfter = i === 0 ? Hb : 0;
      const backBefore = lastBlock ? 0 : Hb;
      assertEquals(before.per[i].up - after.per[i].up, upBefore - upAfter, `block ${i} upload`);
      assertEquals(before.per[i].back - after.per[i].back, backBefore, `block ${i} readback`);
    }
    console.log(
      `  per block: before ${before.per.map((p) => p.up + p.back)} B, ` +
        `after ${after.per.map((p) => p.up + p.back)} B (hidden states ${Hb} B)`,
    );
    // With a workdir the hidden states are read back once per block for its file, and a resumed
    // run restores the same model.
    const dir = await Deno.makeTempDir({ prefix: "quantlab_device_hidden_" });
    try {
      const ck = await run(true, dir);
      for (let i = 0; i < L; i++) {
        assertEquals(ck.per[i].back - after.per[i].back, i === L - 1 ? 0 : Hb, `block ${i}`);
      }
      const resumed = await run(true, dir);
      assertEquals(resumed.m.report!.resumedBlocks, L);
      for (const r of after.m.report!.layers) {
        const a = await after.m.weights.get(`${r.name}.weight`);
        assertEquals((await ck.m.weights.get(`${r.name}.weight`)).data, a.data, r.name);
        assertEquals((await resumed.m.weights.get(`${r.name}.weight`)).data, a.data, r.name);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
