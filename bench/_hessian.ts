/**
 * The random SPD Hessian the CPU quantizer benchmarks share: `H = 2/n · XᵀX + 1e-2·I` for
 * `n = cols + 256` Gaussian rows with log-normal channel scales (seeded), formed through the
 * onnxruntime GEMM.
 * @module
 */
import { cpuBackend } from "../src/backend/cpu.ts";
import { mulberry32, randn } from "../src/rng.ts";

/** A seeded random SPD `cols × cols` Hessian (float64, row-major). */
export async function randomHessian(cols: number, seed: number): Promise<Float64Array> {
  const rng = mulberry32(seed);
  const n = cols + 256;
  const scale = Array.from({ length: cols }, () => Math.exp(0.5 * randn(rng)));
  const Xt = new Float32Array(cols * n); // [cols, n]
  for (let j = 0; j < cols; j++) {
    for (let t = 0; t < n; t++) Xt[j * n + t] = randn(rng) * scale[j];
  }
  const G = await cpuBackend.matmulTransB(
    { shape: [cols, n], data: Xt },
    { shape: [cols, n], data: Xt },
  );
  const H = new Float64Array(cols * cols);
  for (let i = 0; i < H.length; i++) H[i] = (2 / n) * G.data[i];
  for (let i = 0; i < cols; i++) H[i * cols + i] += 1e-2;
  return H;
}
