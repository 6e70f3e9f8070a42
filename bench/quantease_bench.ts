/**
 * QuantEase seconds per CD iteration on the CPU backend, against GPTQ on the same layer (4-bit,
 * groupSize 128, no act-order, both), for layer shapes `[rows = out, cols = in]` with a random
 * SPD Hessian `H = 2/n · XᵀX + 1e-2·I` (`n = cols + 256` Gaussian rows with log-normal channel
 * scales, as `gptq_bench.ts`).
 *
 * Columns: GPTQ total seconds; QuantEase initialisation (RTN grids and the first `R = E·H`);
 * the first iteration (from RTN nearly every row changes in every block, so this is the
 * densest one); the mean of the later iterations (fewer weights change, so the in-block updates
 * and the deferred block products shrink); the ratio of one (first) iteration to GPTQ; the
 * in-block (TypeScript) and deferred-product (matmul + accumulation) seconds per iteration; and
 * QuantEase's final proxy loss over GPTQ's.
 *
 * Run: `deno run -A bench/quantease_bench.ts [--quick]` (`--quick`: 256×256 and 768×768 only).
 * @module
 */
import { gptqQuantize } from "../src/quant/weight_only/gptq.ts";
import { quanteaseQuantize, type QuantEaseTimings } from "../src/quant/weight_only/quantease.ts";
import { cpuBackend } from "../src/backend/cpu.ts";
import { mulberry32, randn } from "../src/rng.ts";

import { randomHessian } from "./_hessian.ts";

const quick = Deno.args.includes("--quick");
const shapes: [number, number, number][] = quick
  ? [[256, 256, 3], [768, 768, 3]]
  : [[768, 768, 4], [3072, 768, 4], [4096, 4096, 2]]; // [rows, cols, numIter]
await cpuBackend.matmul(
  { shape: [64, 64], data: new Float32Array(64 * 64) },
  { shape: [64, 64], data: new Float32Array(64 * 64) },
);

const fmt = (x: number, d = 2) => x.toFixed(d).padStart(8);
console.log(
  `QuantEase vs GPTQ, 4-bit g128, blocksize 128, CPU backend (${cpuBackend.description}), ` +
    `${navigator.hardwareConcurrency} cores`,
);
console.log(
  "shape (out×in)   GPTQ s   QE init s  QE iter1 s  QE later s  iter1/GPTQ  " +
    "block s/it  trail s/it  trail GF/s  QE/GPTQ loss",
);
for (const [rows, cols, numIter] of shapes) {
  const H = await randomHessian(cols, cols);
  const rng = mulberry32(rows + cols);
  const W = new Float32Array(rows * cols);
  for (let i = 0; i < W.length; i++) W[i] = 0.02 * randn(rng);
  const stats = { H, nsamples: cols + 256 };
  const opts = { bits: 4, groupSize: 128, backend: cpuBackend };
  let t0 = performance.now();
  const g = await gptqQuantize({ shape: [rows, cols], data: W }, stats, opts);
  const tg = (performance.now() - t0) / 1000;
  t0 = performance.now();
  const q = await quanteaseQuantize({ shape: [rows, cols], data: W }, stats, { ...opts, numIter });
  const t = q.meta.timings as QuantEaseTimings;
  const later = t.iterations.slice(1);
  const laterMean = later.length ? later.reduce((a, b) => a + b, 0) / later.length : NaN;
  const obj = q.meta.objective as number[];
  // GPTQ's proxy loss tr((W − Wq) H (W − Wq)ᵀ), the objective QuantEase reports.
  const E = new Float32Array(rows * cols);
  for (let i = 0; i < E.length; i++) E[i] = W[i] - g.Wq.data[i];
  const EH = await cpuBackend.matmul(
    { shape: [rows, cols], data: E },
    { shape: [cols, cols], data: Float32Array.from(H) },
  );
  let gptqLoss = 0;
  for (let i = 0; i < E.length; i++) gptqLoss += E[i] * EH.data[i];
  const lossRatio = obj[obj.length - 1] / gptqLoss;
  console.log(
    `${`${rows}×${cols}`.padEnd(15)} ${fmt(tg)}  ${fmt(t.init)}    ${fmt(t.iterations[0])}    ${
      fmt(laterMean)
    }    ${fmt(t.iterations[0] / tg)}    ${fmt(t.inBlock / numIter)}    ${
      fmt(t.trailing / numIter)
    }    ${fmt(t.trailingFlops / t.trailing / 1e9, 1)}    ${
      fmt(lossRatio, 3)
    }   (${numIter} iterations, ${fmt((performance.now() - t0) / 1000, 1).trim()} s)`,
  );
}
