/**
 * Hessian accumulation `H = beta·H + alpha·XᵀX` for X [n tokens, d features] (GPTQ: alpha = 2/n
 * over the running token count). It is the tiled matmul of `matmul.ts` with A = Xᵀ read K-major
 * straight from X (both operands are read along contiguous rows of X), accumulating into H, and
 * computing only the upper tiles: a workgroup below the diagonal exits and the others also write
 * their mirror, halving the arithmetic.
 *
 * Binding layout (same as the matmul): 0 = uniforms, 1 = X, 2 = X, 3 = H.
 * Uniforms: M = N = d, K = n, lda = ldb = ldc = d, offsets 0, alpha, beta.
 * Dispatch: (ceil(d/128), ceil(d/128), 1).
 * @module
 */
import { matmulWGSL } from "./matmul.ts";

/** WGSL of the symmetric XᵀX accumulation (f32). Entry point "main". */
export function xtxWGSL(): string {
  return matmulWGSL({ transA: true, accumulate: true, symmetric: true });
}

/** CPU reference: `beta·H + alpha·XᵀX` (float64 sums), X [n, d] row-major, H [d, d]. */
export function xtxRef(
  x: Float32Array,
  h: Float32Array,
  opts: { n: number; d: number; alpha: number; beta?: number },
): Float32Array {
  const { n, d, alpha } = opts;
  const beta = opts.beta ?? 1;
  const acc = new Float64Array(d * d);
  for (let t = 0; t < n; t++) {
    const row = t * d;
    for (let i = 0; i < d; i++) {
      const xi = x[row + i];
      if (xi === 0) continue;
      const ai = i * d;
      for (let j = i; j < d; j++) acc[ai + j] += xi * x[row + j];
    }
  }
  const out = new Float32Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = i; j < d; j++) {
      out[i * d + j] = beta * h[i * d + j] + alpha * acc[i * d + j];
      out[j * d + i] = beta * h[j * d + i] + alpha * acc[i * d + j];
    }
  }
  return out;
}
