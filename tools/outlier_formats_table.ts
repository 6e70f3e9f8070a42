/**
 * The stories260K table of issue 18: TinyStories perplexity, bits/weight and seconds for SpQR at
 * the seed's two configurations, OA at the seed's five columns (BF16 baseline, INT4, +outlier,
 * +offset, +outlier+offset), and BCQ at 4 and 3 bits per-channel and g128, beside RTN and GPTQ
 * at the same bits and groups. Calibration and evaluation as `deno task demo`: 128 × 256
 * TinyStories train tokens (seed 0), the first `--windows` windows of 512 validation tokens.
 *
 * On stories260K a "g128" group is the whole row for the 64-column layers and 128 + 44 columns
 * for the 172-column `down_proj` (partial last group).
 *
 * Usage: `deno run -A tools/outlier_formats_table.ts [--windows N] [--only NAME,...]`.
 *
 * Measured (64 windows × 512 tokens; seconds are the pipeline's, Hessian gathering included, on
 * 2 shared cores with other jobs running): fp32 3.69; OA BF16 baseline 3.69 (16 bits);
 * SpQR 3.07-config 23.24 at 3.057 bits (2.327% outliers); SpQR 3.99-config 4.55 at 3.984 bits
 * (1.121%); OA INT4 3.95 (4.514), +outlier 3.93 (5.060), +offset 3.95 (4.567), +outlier+offset
 * 3.93 (5.113); 1 bits in the codes 441,007 → 365,565 with the offset (−17.1%), 428,471 →
 * 356,205 with outliers (−16.9%), at most 1 outlier per (row, block). 4-bit per-channel: RTN
 * 4.05, GPTQ 3.95, BCQ 4.12 (4.847 bits); g128: RTN 4.04, GPTQ 3.93, BCQ 4.10. 3-bit per-channel:
 * RTN 9.95, GPTQ 5.93, BCQ 6.29; g128: RTN 8.95, GPTQ 5.72, BCQ 6.25.
 * @module
 */
import { parseArgs } from "node:util";
import { defaultModelPath } from "../src/_paths.ts";
import { perplexity } from "../src/eval/perplexity.ts";
import { loadModel } from "../src/models/load.ts";
import { calibrationSet } from "../src/quant/pipeline/calibration.ts";
import { quantize } from "../src/quant/pipeline/pipeline.ts";
import { rtn } from "../src/quant/weight_only/rtn.ts";
import { gptq } from "../src/quant/weight_only/gptq.ts";
import { spqr, type SpqrMeta } from "../src/quant/weight_only/spqr.ts";
import { oa, type OaMeta } from "../src/quant/weight_only/oa.ts";
import { bcq } from "../src/quant/weight_only/bcq.ts";
import type { WeightQuantizer } from "../src/quant/core/types.ts";
import { type ResultRow, resultsTable } from "../src/viz/table.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: { windows: { type: "string", default: "64" }, only: { type: "string" } },
});
const nsamples = Number(flags.windows);
const model = await loadModel(await defaultModelPath());
const fp = await perplexity(model, "tinystories", { nsamples });
const calib = await calibrationSet(model, "tinystories", { nsamples: 128, seqlen: 256, seed: 0 });
const oaBase = { wbits: 4, sym: true, perOutDim: true, blockSize: 32 };
const spqr307 = { bits: 2, groupSize: 32, qqScaleBits: 3, qqZeroBits: 3, qqGroupSize: 16 };
const spqr399 = { bits: 3, groupSize: 16, qqScaleBits: 3, qqZeroBits: 3, qqGroupSize: 16 };
// τ per configuration, tuned (as the seed's note says one must) so the outlier share is near the
// seed's r_o: measured on the 35 layers' Hessians, τ 0.55 → ≈ 2.36% (3.07-config), τ 0.25 →
// ≈ 1.1% (3.99-config).
const TAU307 = 0.55, TAU399 = 0.25;
const act = { permutationOrder: "act_order" as const };
const runs: [string, number, string, WeightQuantizer][] = [
  ["oa baseline (bf16)", 16, "-", oa({ baseline: true })],
  ["spqr 3.07-config", 2, "32", spqr({ ...spqr307, ...act, outlierRelativeThreshold: TAU307 })],
  ["spqr 3.99-config", 3, "16", spqr({ ...spqr399, ...act, outlierRelativeThreshold: TAU399 })],
  ["oa int4", 4, "32", oa(oaBase)],
  ["oa int4+outlier", 4, "32", oa({ ...oaBase, outlierMode: true })],
  ["oa int4+offset", 4, "32", oa({ ...oaBase, offsetMode: true })],
  ["oa int4+outlier+offset", 4, "32", oa({ ...oaBase, outlierMode: true, offsetMode: true })],
];
for (const bits of [4, 3]) {
  for (const g of [-1, 128]) {
    const gl = g === -1 ? "channel" : "128";
    runs.push([`rtn`, bits, gl, rtn({ bits, groupSize: g, partialGroups: true })]);
    runs.push([
      `gptq`,
      bits,
      gl,
      gptq({ bits, groupSize: g, actOrder: true, partialGroups: true }),
    ]);
    runs.push([`bcq (30 rounds)`, bits, gl, bcq({ bits, groupSize: g, partialGroups: true })]);
  }
}
const only = flags.only?.split(",");
const rows: ResultRow[] = [{
  method: "fp32",
  bits: 32,
  group: "-",
  bitsPerWeight: 32,
  ppl: fp.ppl,
  seconds: 0,
}];
const notes: string[] = [];
for (const [name, bits, group, q] of runs) {
  if (only && !only.some((o) => name.startsWith(o))) continue;
  const qm = await quantize(model, q, { calib: q.needsHessian ? calib : undefined });
  const r = await perplexity(qm, "tinystories", { nsamples });
  rows.push({
    method: name,
    bits,
    group,
    bitsPerWeight: qm.report.bitsPerWeight,
    ppl: r.ppl,
    seconds: qm.report.seconds,
  });
  const metas = Object.values(qm.packed ?? {});
  if (name.startsWith("spqr")) {
    let o = 0, n = 0;
    for (const m of metas as SpqrMeta[]) {
      o += m.outlierShare * m.shape[0] * m.shape[1];
      n += m.shape[0] * m.shape[1];
    }
    notes.push(`${name}: outliers ${(100 * o / n).toFixed(3)}% of weights`);
  }
  if (name.startsWith("oa int4")) {
    let before = 0, after = 0, outl = 0, maxPer = 0;
    for (const m of metas as OaMeta[]) {
      before += m.onesBefore ?? 0;
      after += m.onesAfter ?? 0;
      outl += m.outliers ?? 0;
      maxPer = Math.max(maxPer, m.maxOutliersPerBlock ?? 0);
    }
    notes.push(
      `${name}: 1 bits in codes ${before} → ${after} (${
        (100 * (1 - after / before)).toFixed(1)
      }% fewer), outliers ${outl}, max per (row, block) ${maxPer}`,
    );
  }
  console.error(`  ${name} ${bits}-bit ${group}: ppl ${r.ppl.toFixed(3)}`);
}
console.log(
  resultsTable(rows, {
    title: `stories260K, TinyStories perplexity (${fp.windows} windows × ${fp.seqlen})`,
  }).text,
);
for (const n of notes) console.log(n);
