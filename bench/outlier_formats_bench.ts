/**
 * Per-layer seconds of SpQR and OA beside GPTQ in the same run, CPU backend (onnxruntime GEMMs for
 * the trailing updates and `Hinv`, TypeScript column loops), on a seeded random weight and the
 * shared random Hessian (`core/hessian.ts`), plus BCQ (no Hessian). Configurations: GPTQ 4-bit g128
 * act-order; SpQR at the seed's 3.99-configuration (b_w 3, β1 16, b_s = b_z = 3, β2 16, τ 0.25,
 * act-order); OA INT4 sym per-channel, block 32, outlier + offset; BCQ 4-bit g128, 30 rounds.
 *
 * Run: `deno run -A bench/outlier_formats_bench.ts [--size N]` (default 4096 → 4096×4096).
 *
 * Measured here (2 shared cores, 4096×4096, one run): GPTQ 54.4 s (4.258 bits/weight), SpQR
 * 66.0 s (4.013 bits/weight, 1.213% outliers), OA 53.8 s (5.032 bits/weight), BCQ 142.1 s
 * (4.500 bits/weight; 30 rounds of the TypeScript search over 16.8 M weights).
 * @module
 */
import { gptqQuantize } from "../src/quant/weight_only/gptq.ts";
import { type SpqrMeta, spqrQuantize } from "../src/quant/weight_only/spqr.ts";
import { oaQuantize } from "../src/quant/weight_only/oa.ts";
import { bcqQuantize } from "../src/quant/weight_only/bcq.ts";
import { mulberry32, randnArray } from "../src/rng.ts";
import { randomHessian } from "./_hessian.ts";

const si = Deno.args.indexOf("--size");
const n = si >= 0 ? Number(Deno.args[si + 1]) : 4096;
const W = { shape: [n, n], data: randnArray(mulberry32(1850), n * n, { scale: 0.02 }) };
let t = performance.now();
const H = await randomHessian(n, 1851);
console.log(`${n}×${n}, H formed in ${((performance.now() - t) / 1000).toFixed(1)} s`);
const stats = { H, nsamples: n + 256 };
const rows: [string, () => Promise<{ bitsPerWeight: number; meta: unknown }>][] = [
  [
    "gptq 4-bit g128 act-order",
    () => gptqQuantize(W, stats, { bits: 4, groupSize: 128, actOrder: true }),
  ],
  [
    "spqr 3.99-config (τ 0.25)",
    () =>
      spqrQuantize(W, stats, {
        bits: 3,
        groupSize: 16,
        qqScaleBits: 3,
        qqZeroBits: 3,
        outlierRelativeThreshold: 0.25,
        permutationOrder: "act_order",
      }),
  ],
  [
    "oa int4+outlier+offset b32",
    () =>
      oaQuantize(W, stats, {
        wbits: 4,
        sym: true,
        perOutDim: true,
        blockSize: 32,
        outlierMode: true,
        offsetMode: true,
      }),
  ],
  ["bcq 4-bit g128 30 rounds", () => Promise.resolve(bcqQuantize(W, { bits: 4, groupSize: 128 }))],
];
for (const [name, run] of rows) {
  t = performance.now();
  const r = await run();
  const s = (performance.now() - t) / 1000;
  const extra = name.startsWith("spqr")
    ? `, outliers ${(100 * (r.meta as SpqrMeta).outlierShare).toFixed(3)}%`
    : "";
  console.log(`${name}: ${s.toFixed(1)} s, ${r.bitsPerWeight.toFixed(3)} bits/weight${extra}`);
}
