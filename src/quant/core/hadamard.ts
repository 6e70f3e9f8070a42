/**
 * Fast Walsh–Hadamard transforms shared by the rotation-based methods (QuIP's randomized
 * Hadamard option, FrameQuant's fusion frames). `H_n` is the Sylvester Hadamard matrix of order
 * `n = 2^k`, with entries ±1; `H_n / √n` is orthogonal and symmetric, so the normalized
 * transform is its own inverse.
 * @module
 */
import { OptionError } from "../../errors.ts";
import type { Rng } from "../../rng.ts";

/** Whether `n` is a positive power of two. */
export function isPow2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** The smallest power of two ≥ `n` (n ≥ 1). */
export function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/**
 * In-place Walsh–Hadamard transform of each contiguous segment of length `n` in `x`
 * (`x.length` must be a multiple of `n`, `n` a power of two): `x_seg ← H_n x_seg`, times
 * `1/√n` when `normalize` (default true), which makes it orthogonal and self-inverse.
 * Cost: `n log₂ n` additions per segment.
 */
export function fwht(
  x: Float32Array | Float64Array,
  n: number,
  options: { normalize?: boolean } = {},
): void {
  if (!isPow2(n)) throw new OptionError("n", `Hadamard size must be a power of two, got ${n}`);
  if (x.length % n !== 0) {
    throw new OptionError("x", `length ${x.length} is not a multiple of the Hadamard size ${n}`);
  }
  const norm = options.normalize ?? true;
  const s = 1 / Math.sqrt(n);
  for (let base = 0; base < x.length; base += n) {
    for (let h = 1; h < n; h *= 2) {
      for (let i = base; i < base + n; i += 2 * h) {
        for (let j = i; j < i + h; j++) {
          const a = x[j], b = x[j + h];
          x[j] = a + b;
          x[j + h] = a - b;
        }
      }
    }
    if (norm) {
      for (let j = base; j < base + n; j++) x[j] *= s;
    }
  }
}

/** `n` random signs (±1) drawn from `rng` (a Rademacher vector, the `D` of `H·D`). */
export function randomSigns(rng: Rng, n: number): Float64Array {
  const d = new Float64Array(n);
  for (let i = 0; i < n; i++) d[i] = rng() < 0.5 ? -1 : 1;
  return d;
}

/**
 * The dense orthogonal matrix `H_n/√n · diag(signs)` (row-major `n × n`), for tests and small
 * layers. `signs` defaults to all ones.
 */
export function hadamardMatrix(n: number, signs?: ArrayLike<number>): Float64Array {
  if (!isPow2(n)) throw new OptionError("n", `Hadamard size must be a power of two, got ${n}`);
  const M = new Float64Array(n * n);
  const s = 1 / Math.sqrt(n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      // (−1)^popcount(i & j)
      let v = i & j, p = 0;
      while (v) {
        p ^= v & 1;
        v >>>= 1;
      }
      M[i * n + j] = (p ? -s : s) * (signs ? signs[j] : 1);
    }
  }
  return M;
}
