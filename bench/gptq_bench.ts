/**
 * GPTQ seconds per layer on the CPU backend, 4-bit, groupSize 128, act-order, for common layer
 * shapes `[rows = out, cols = in]`, with a random SPD Hessian `H = 2/n · XᵀX + 1e-2·I`
 * (`n = cols + 256` Gaussian rows with log-normal channel scales).
 *
 * Flops counted: trailing updates `W[:, i2:] −= Err1 · Hinv[i1:i2, i2:]` as `2·rows·count·(cols −
 * i2)` per block (≈ rows·cols² in total), and in-block updates as `2·rows·(count − 1 − i)` per
 * column (≈ rows·cols·blocksize). The linalg column is the float64 `Hinv` (2n³/3 flops).
 *
 * Run: `deno run -A bench/gptq_bench.ts [--quick]` (`--quick` skips 4096×4096).
 * @module
 */
import { gptqQuantize, type GptqTimings } from "../src/quant/weight_only/gptq.ts";
import { cpuBackend } from "../src/backend/cpu.ts";
import { mulberry32, randn } from "../src/rng.ts";

import { randomHessian } from "./_hessian.ts";

const shapes: [number, number][] = [[768, 768], [3072, 768], [768, 3072], [4096, 4096]];
const quick = Deno.args.includes("--quick");
// Warm up onnxruntime (session creation) outside the timings.
await cpuBackend.matmul(
  { shape: [64, 64], data: new Float32Array(64 * 64) },
  { shape: [64, 64], data: new Float32Array(64 * 64) },
);

const fmt = (x: number, d = 2) => x.toFixed(d).padStart(8);
console.log(
  `GPTQ 4-bit g128 act-order, blocksize 128, CPU backend (${cpuBackend.description}), ` +
    `${navigator.hardwareConcurrency} cores`,
);
console.log(
  "shape (out×in)    total s  linalg s  params s  block s  trail s  trail GF/s  block GF/s",
);
for (const [rows, cols] of shapes) {
  if (quick && rows * cols > 4e6) continue;
  const H = await randomHessian(cols, cols);
  const rng = mulberry32(rows + cols);
  const W = new Float32Array(rows * cols);
  for (let i = 0; i < W.length; i++) W[i] = 0.02 * randn(rng);
  const t0 = performance.now();
  const res = await gptqQuantize({ shape: [rows, cols], data: W }, { H, nsamples: cols + 256 }, {
    bits: 4,
    groupSize: 128,
    actOrder: true,
    backend: cpuBackend,
  });
  const total = (performance.now() - t0) / 1000;
  const t = res.meta.timings as GptqTimings;
  console.log(
    `${`${rows}×${cols}`.padEnd(16)} ${fmt(total)}  ${fmt(t.linalg)}  ${fmt(t.params)} ${
      fmt(t.inBlock)
    } ${fmt(t.trailing)}  ${fmt(t.trailingFlops / t.trailing / 1e9, 1).padStart(10)}  ${
      fmt(t.inBlockFlops / t.inBlock / 1e9, 2).padStart(10)
    }`,
  );
}
