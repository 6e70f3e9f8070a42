/**
 * Benchmark of GPTQ's `Hinv` on the GPU (`gpuUpperCholeskyOfInverse`, float32): the GPU time of
 * the whole dispatch sequence (one submission), checked in the same run against the CPU float64
 * blocked path (`upperCholeskyOfInverseBlocked` with onnxruntime's DGEMM, or the TypeScript GEMM
 * where onnxruntime cannot be loaded). `bench/gpu_bench.ts` calls {@linkcode benchCholesky}.
 *
 * The test matrix is GPTQ-like ({@linkcode benchHessian}): `H = 2/N · XᵀX` of `N = 3n/2` rows of
 * correlated features (rank n/4 plus noise) with uneven scales, plus 1% of the mean diagonal
 * (GPTQ's damping), built on the GPU (the JavaScript XᵀX would take minutes at n = 4096).
 *
 * Usage: `deno run -A --unstable-webgpu bench/_gpu_linalg_bench.ts [--n 512[,1024...]]
 * [--no-check]`; software adapters are accepted here (correctness runs).
 * @module
 */
import {
  getWebGPU,
  scratch,
  timeKernel,
  upload,
  type WebGPUContext,
} from "../src/backend/_webgpu_device.ts";
import { gpuMatmul, gpuXtx } from "../src/backend/_webgpu_matmul.ts";
import {
  gpuUpperCholeskyOfInverse,
  upperCholeskyOfInverseDispatches,
} from "../src/backend/_webgpu_linalg.ts";
import { onnxGemmF64, upperCholeskyOfInverseBlocked } from "../src/quant/core/linalg.ts";
import { mulberry32, randn } from "../src/rng.ts";

/** Options of {@linkcode benchCholesky}. */
export interface BenchCholeskyOptions {
  /** Compare with the CPU float64 blocked path (default true; it takes seconds at n = 4096). */
  check?: boolean;
  /** Timed trials after one warm-up (default 3; the median is reported). */
  trials?: number;
  /** Diagonal block size (default: the library's). */
  block?: number;
  /** Seed of X (default 0). */
  seed?: number;
}

/** Result of {@linkcode benchCholesky}. */
export interface BenchCholeskyResult {
  /** GPU seconds of one factorization (median; GPU timestamps when present, else wall clock). */
  seconds: number;
  /** Useful GFLOP/s: `2n³/3` flops (Cholesky `n³/3` + triangular inverse `n³/3`) per second. */
  gflops: number;
  /** max |U_gpu − U_f64| / max |U_f64| (NaN when not checked). */
  maxRelErr: number;
  /** How `seconds` was measured: "timestamp" or "wall". */
  method: "timestamp" | "wall";
  /** Wall seconds of the typed-array entry (upload, one submission, readback). */
  wallSeconds: number;
  /** Seconds of the CPU float64 blocked reference (NaN when not checked). */
  cpuSeconds: number;
}

/**
 * A GPTQ-like SPD `H` [n, n] (float32): `2/N·XᵀX` with `X = (Z·M)·diag(exp(z)) + 0.05·E` (rank
 * n/4 correlated features with uneven scales plus noise; Z·M and XᵀX on the GPU), plus 1% damping.
 */
export async function benchHessian(ctx: WebGPUContext, n: number, seed = 0): Promise<Float32Array> {
  const N = n + (n >> 1) + 1, k = Math.max(1, n >> 2);
  const rng = mulberry32(seed);
  const normal = (len: number) => Float32Array.from({ length: len }, () => randn(rng));
  const X = await gpuMatmul(ctx, normal(N * k), normal(k * n), { m: N, k, n });
  const scale = Float64Array.from({ length: n }, () => Math.exp(randn(rng)));
  for (let t = 0; t < N; t++) {
    for (let j = 0; j < n; j++) X[t * n + j] = X[t * n + j] * scale[j] + 0.05 * randn(rng);
  }
  const H = await gpuXtx(ctx, X, new Float32Array(n * n), { n: N, d: n, alpha: 2 / N, beta: 0 });
  let mean = 0;
  for (let i = 0; i < n; i++) mean += H[i * n + i];
  const damp = (0.01 * mean) / n;
  for (let i = 0; i < n; i++) H[i * n + i] += damp;
  return H;
}

/** max |a − b| / max |b|. */
function scaledError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let mx = 0, d = 0;
  for (let i = 0; i < b.length; i++) {
    mx = Math.max(mx, Math.abs(b[i]));
    const e = Math.abs(a[i] - b[i]);
    d = Number.isNaN(e) ? NaN : Math.max(d, e);
  }
  return d / mx;
}

/**
 * Times `Hinv` (the upper `U` with `Uᵀ·U = H⁻¹`) on the GPU for an n × n GPTQ-like Hessian and
 * checks it against the CPU float64 blocked path in the same run.
 */
export async function benchCholesky(
  ctx: WebGPUContext,
  n: number,
  opts: BenchCholeskyOptions = {},
): Promise<BenchCholeskyResult> {
  const H = await benchHessian(ctx, n, opts.seed ?? 0);
  const h = upload(ctx, H), u = scratch(ctx, n * n * 4);
  const plan = upperCholeskyOfInverseDispatches(ctx, { h, u }, n, { block: opts.block });
  let timing;
  try {
    timing = await timeKernel(ctx, () => plan.dispatches, { reps: 1, trials: opts.trials ?? 3 });
  } finally {
    plan.release();
    ctx.pool.release(h, u);
  }
  const t0 = performance.now();
  const U = await gpuUpperCholeskyOfInverse(ctx, H, n, { block: opts.block });
  const wallSeconds = (performance.now() - t0) / 1000;
  let maxRelErr = NaN, cpuSeconds = NaN;
  if (opts.check ?? true) {
    const t1 = performance.now();
    const want = await upperCholeskyOfInverseBlocked(Float64Array.from(H), n, {
      gemm: await onnxGemmF64(),
    });
    cpuSeconds = (performance.now() - t1) / 1000;
    maxRelErr = scaledError(U, want);
  }
  return {
    seconds: timing.seconds,
    gflops: (2 * n ** 3) / 3 / timing.seconds / 1e9,
    maxRelErr,
    method: timing.method,
    wallSeconds,
    cpuSeconds,
  };
}

async function main(): Promise<void> {
  const args = Deno.args;
  const at = args.indexOf("--n");
  const sizes = at >= 0 ? args[at + 1].split(",").map(Number) : [256, 512, 1024];
  const check = !args.includes("--no-check");
  const ctx = await getWebGPU({ allowFallback: true });
  console.log(`adapter: ${ctx.info.description}`);
  for (const n of sizes) {
    const r = await benchCholesky(ctx, n, { check });
    console.log(
      `cholesky (Hinv, f32) n=${n}: ${r.seconds.toFixed(4)} s GPU (${r.method}), ` +
        `${r.gflops.toFixed(2)} GFLOP/s, wall ${r.wallSeconds.toFixed(4)} s; ` +
        `max|ΔU|/max|U| = ${r.maxRelErr.toExponential(2)} vs CPU f64 blocked ` +
        `(${r.cpuSeconds.toFixed(3)} s)`,
    );
  }
}

if (import.meta.main) await main();
