/**
 * Resume never reuses what it cannot verify (issue 13, "Found"). Oracle: a run of the same recipe
 * without a workdir. Each corruption of a finished run's workdir must give, on resume, either the
 * oracle's weights bit for bit (the damaged block recomputed) or a typed refusal naming the file —
 * never different weights. stories260K (5 blocks), RTN 4-bit, 4 calibration windows of 32 tokens.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { ResumeError } from "../../src/errors.ts";
import { loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import { CORRUPTIONS } from "../fuzz/_corruptions.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";

const MODEL = new URL("../../../shared/data/models/stories260K-hf", import.meta.url).pathname;

function weightsOf(m: Model): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [k, v] of m.weights.overrides()) out.set(k, v.data);
  return out;
}

Deno.test("resume integrity: each corruption kind is recomputed to the oracle's weights or refused", async () => {
  const m = await loadModel(MODEL);
  const calib = await calibrationSet(m, "tinystories", { nsamples: 4, seqlen: 32, seed: 2 });
  const recipe = () => rtn({ bits: 4, groupSize: 4 });
  const oracle = await weightsOf(await quantize(m, recipe(), { calib }));
  for (const [kind, corrupt] of Object.entries(CORRUPTIONS)) {
    const dir = await Deno.makeTempDir({ prefix: "quantlab_resume_" });
    try {
      await quantize(m, recipe(), { calib, workdir: dir });
      const want = await corrupt(dir);
      if (want === "refuse") {
        const e = await assertRejects(
          () => quantize(m, recipe(), { calib, workdir: dir }),
          ResumeError,
        );
        assertStringIncludes(e.message, dir, kind);
        continue;
      }
      if (want === "refuse-other-recipe") {
        // A different recipe must not "resume" from blocks written for the old one.
        const e = await assertRejects(
          () => quantize(m, rtn({ bits: 3 }), { calib, workdir: dir }),
          ResumeError,
        );
        assertStringIncludes(e.message, "block_0000", kind);
        // The same recipe resumes every block (run.json is rewritten).
        const again = await quantize(m, recipe(), { calib, workdir: dir });
        assertEquals(again.report.resumedBlocks, 5, kind);
        assertEquals(await weightsOf(again), oracle, kind);
        continue;
      }
      const res = await quantize(m, recipe(), { calib, workdir: dir });
      assertEquals(res.report.recomputedBlocks?.length, 1, kind);
      assertEquals(res.report.resumedBlocks, 4, kind);
      const got = await weightsOf(res);
      assertEquals([...got.keys()].sort(), [...oracle.keys()].sort(), kind);
      for (const [k, v] of oracle) assertEquals(got.get(k), v, `${kind}: ${k}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("resume integrity: a stale temp file in the workdir is removed on start", async () => {
  const m = await loadModel(MODEL);
  const dir = await Deno.makeTempDir({ prefix: "quantlab_resume_" });
  try {
    const stale = `${dir}/block_0000.safetensors.999999999-deadbeef.tmp`;
    await Deno.writeFile(stale, new Uint8Array(1000));
    await quantize(m, rtn({ bits: 4 }), { workdir: dir });
    const names = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert(!names.some((n) => n.endsWith(".tmp")), `${names}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
