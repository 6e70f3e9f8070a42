/**
 * QuIP's incoherence processing cost next to GPTQ on the same layer: seconds of the pre-processing
 * (rescale, `W ← U W Vᵀ`, `H ← V H Vᵀ`, GPTQ's H handling) and post-processing (`Uᵀ Ŵ V`, undo
 * the rescale) for the two-factor Kronecker and the randomized Hadamard transforms, as a fraction
 * of one GPTQ run (2-bit, per-channel grid, no act-order, blocksize 128), plus a full
 * `quipQuantize` (2-bit, ldlq, incoherence on) with its phase split (`loss` = the proxy-loss
 * bookkeeping, mostly qfn "b"'s clipping term). Random SPD Hessian
 * `H = 2/n · XᵀX + 1e-2·I` as in `gptq_bench.ts`; `W = 0.02·N(0, 1)`.
 *
 * Kronecker factors go through onnxruntime's float64 GEMM (`onnxGemmF64`), one product per factor
 * (`2·n·(p + q)` flops per vector for `n = p·q`); the Hadamard through the TypeScript FWHT.
 *
 * Run: `deno run -A bench/quip_bench.ts [--quick]` (`--quick`: 256×256 and 768×768 only).
 * @module
 */
import { gptqQuantize } from "../src/quant/weight_only/gptq.ts";
import {
  incoherencePost,
  incoherencePre,
  quipQuantize,
  type QuipTimings,
} from "../src/quant/weight_only/quip.ts";
import { onnxGemmF64 } from "../src/quant/core/linalg.ts";
import { cpuBackend } from "../src/backend/cpu.ts";
import { mulberry32, randn } from "../src/rng.ts";

import { randomHessian } from "./_hessian.ts";

const quick = Deno.args.includes("--quick");
const shapes: [number, number][] = quick
  ? [[256, 256], [768, 768]]
  : [[768, 768], [3072, 768], [768, 3072], [4096, 4096]];
const gemm = await onnxGemmF64();
// Warm up onnxruntime (session creation) outside the timings.
await gemm(new Float64Array(64 * 64), new Float64Array(64 * 64), { m: 64, k: 64, n: 64 });
await cpuBackend.matmul(
  { shape: [64, 64], data: new Float32Array(64 * 64) },
  { shape: [64, 64], data: new Float32Array(64 * 64) },
);

const sec = (t0: number) => (performance.now() - t0) / 1000;
const f = (x: number, d = 2) => x.toFixed(d).padStart(7);
console.log(
  `QuIP incoherence processing vs GPTQ (2-bit per-channel), CPU, ${navigator.hardwareConcurrency} cores`,
);
console.log(
  "shape (out×in)   GPTQ s | kron pre  post  frac | hadamard pre  post  frac | " +
    "quip(ldlq) total  pre  grid  round  post  loss",
);
for (const [rows, cols] of shapes) {
  const H = await randomHessian(cols, cols);
  const rng = mulberry32(rows + cols);
  const W = new Float32Array(rows * cols);
  for (let i = 0; i < W.length; i++) W[i] = 0.02 * randn(rng);
  let t0 = performance.now();
  await gptqQuantize({ shape: [rows, cols], data: W }, { H, nsamples: cols + 256 }, {
    bits: 2,
    backend: cpuBackend,
  });
  const tg = sec(t0);
  const inc: Record<"kron" | "hadamard", [number, number]> = { kron: [0, 0], hadamard: [0, 0] };
  for (const proj of ["kron", "hadamard"] as const) {
    t0 = performance.now();
    const pre = await incoherencePre(Float64Array.from(W), H, [rows, cols], {
      preRescale: true,
      preProj: true,
      proj,
      preGptqH: true,
      percdamp: 0.01,
      seed: 0,
    }, gemm);
    const tpre = sec(t0);
    t0 = performance.now();
    await incoherencePost(pre.W, pre.state, gemm);
    inc[proj] = [tpre, sec(t0)];
  }
  t0 = performance.now();
  const q = await quipQuantize({ shape: [rows, cols], data: W }, { H, nsamples: cols + 256 }, {
    bits: 2,
    method: "ldlq",
  });
  const tq = sec(t0);
  const t = q.meta.timings as QuipTimings;
  const frac = (p: [number, number]) => (p[0] + p[1]) / tg;
  console.log(
    `${`${rows}×${cols}`.padEnd(15)} ${f(tg)} | ${f(inc.kron[0])} ${f(inc.kron[1])} ${
      f(frac(inc.kron), 3)
    } | ${f(inc.hadamard[0])} ${f(inc.hadamard[1])} ${f(frac(inc.hadamard), 3)} | ${f(tq)} ${
      f(t.pre)
    } ${f(t.grid)} ${f(t.round)} ${f(t.post)} ${f(t.loss)}`,
  );
}
