/**
 * Independent test oracles shared by the quantizer tests: a seeded random Hessian and the layer
 * proxy loss `tr((W−Q) H (W−Q)ᵀ)` in float64, written without any library code.
 * @module
 */
import type { Tensor } from "../../src/tensor.ts";
import { randn, type Rng } from "../../src/rng.ts";

/** H = 2/n · XᵀX for n random rows of rank-`k` correlated inputs, plus `damp`·I. */
export function randomH(
  rng: Rng,
  cols: number,
  opts: { n: number; k: number; damp: number },
): Float64Array {
  const { n, k, damp } = opts;
  const M = Array.from({ length: k * cols }, () => randn(rng));
  const scaleCol = Array.from({ length: cols }, () => Math.exp(randn(rng)));
  const H = new Float64Array(cols * cols);
  const x = new Float64Array(cols);
  for (let t = 0; t < n; t++) {
    x.fill(0);
    for (let a = 0; a < k; a++) {
      const z = randn(rng);
      for (let j = 0; j < cols; j++) x[j] += z * M[a * cols + j];
    }
    for (let j = 0; j < cols; j++) x[j] = x[j] * scaleCol[j] + 0.05 * randn(rng);
    for (let i = 0; i < cols; i++) {
      const xi = x[i];
      for (let j = 0; j < cols; j++) H[i * cols + j] += (2 / n) * xi * x[j];
    }
  }
  for (let i = 0; i < cols; i++) H[i * cols + i] += damp;
  return H;
}

/** tr((A−B) H (A−B)ᵀ) in float64 for row-major `[rows, cols]` A and B. */
export function proxyLossFlat(
  A: ArrayLike<number>,
  B: ArrayLike<number>,
  H: ArrayLike<number>,
  rows: number,
  cols: number,
): number {
  const d = new Float64Array(cols);
  let total = 0;
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < cols; j++) d[j] = A[r * cols + j] - B[r * cols + j];
    for (let i = 0; i < cols; i++) {
      if (d[i] === 0) continue;
      let s = 0;
      for (let j = 0; j < cols; j++) s += H[i * cols + j] * d[j];
      total += d[i] * s;
    }
  }
  return total;
}

/** tr((W−Q) H (W−Q)ᵀ) in float64 for `[rows, cols]` tensors. */
export function proxyLoss(W: Tensor, Q: Tensor, H: ArrayLike<number>): number {
  return proxyLossFlat(W.data, Q.data, H, W.shape[0], W.shape[1]);
}
