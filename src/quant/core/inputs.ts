/**
 * The input checks every Hessian-based quantizer makes before it starts: a 2-D weight, an `H` of
 * `cols × cols`, finite values in both, a symmetric `H` with a non-negative diagonal, and a weight
 * whose data matches its shape. Errors name the method and the layer.
 * @module
 */
import { HessianError, NonFiniteError, QuantlabError } from "../../errors.ts";
import type { Tensor } from "../../tensor.ts";
import type { LayerStats } from "./types.ts";

/**
 * Checks a weight: 2-D, both dimensions integers ≥ 1, `data` exactly `rows · cols` long, every
 * value finite. A non-finite value is a {@linkcode NonFiniteError} naming its (row, col); the
 * others are {@linkcode QuantlabError}s naming the method and the layer.
 */
export function checkWeight(method: string, W: Tensor, layer: string): [number, number] {
  if (!W || !Array.isArray(W.shape) || W.shape.length !== 2) {
    throw new QuantlabError(`${method}: ${layer} must be 2-D, got shape [${W?.shape}]`);
  }
  const [rows, cols] = W.shape;
  if (!(Number.isInteger(rows) && rows >= 1 && Number.isInteger(cols) && cols >= 1)) {
    throw new QuantlabError(
      `${method}: ${layer} has shape [${W.shape}]; both dimensions must be integers ≥ 1`,
    );
  }
  if (!W.data || W.data.length !== rows * cols) {
    throw new QuantlabError(
      `${method}: ${layer} has ${W.data?.length} values but its shape [${W.shape}] needs ${
        rows * cols
      }`,
    );
  }
  for (let i = 0; i < W.data.length; i++) {
    if (!Number.isFinite(W.data[i])) {
      throw new NonFiniteError(
        `${method}: ${layer}: weight has a non-finite value ${W.data[i]} at (${
          Math.floor(i / cols)
        }, ${i % cols}) (flat index ${i})`,
      );
    }
  }
  return [rows, cols];
}

/**
 * Relative tolerance of the symmetry check of `H`: `|H[i,j] − H[j,i]| ≤ SYM_TOL · max_k |H[k,k]|`.
 * A float32 `Σ XᵀX` is symmetric to rounding (≈1e-7 relative); a transposed or wrongly assembled
 * matrix is off by O(1).
 */
export const SYM_TOL = 1e-4;

/**
 * Checks that `H` (`cols × cols`, finite) is a valid Σ XᵀX: symmetric within {@linkcode SYM_TOL}
 * and no negative diagonal entry. Each failure is a {@linkcode HessianError} with its own message
 * and the offending index — distinct from a Cholesky "not positive definite" (which dampening can
 * fix; these it cannot).
 */
export function checkHessian(
  method: string,
  H: ArrayLike<number>,
  cols: number,
  layer: string,
): void {
  let maxDiag = 0;
  for (let i = 0; i < cols; i++) {
    const d = H[i * cols + i];
    if (d < 0) {
      throw new HessianError(
        `${method}: ${layer}: H has a negative diagonal entry ${d} at (${i}, ${i}); a Hessian ` +
          `Σ XᵀX is positive semidefinite`,
      );
    }
    maxDiag = Math.max(maxDiag, d);
  }
  const tol = SYM_TOL * maxDiag;
  for (let i = 0; i < cols; i++) {
    for (let j = i + 1; j < cols; j++) {
      const a = H[i * cols + j], b = H[j * cols + i];
      if (Math.abs(a - b) > tol) {
        throw new HessianError(
          `${method}: ${layer}: H is not symmetric: H(${i}, ${j}) = ${a} but H(${j}, ${i}) = ${b} ` +
            `(tolerance ${tol.toExponential(2)}); a Hessian Σ XᵀX is symmetric`,
        );
      }
    }
  }
}

/**
 * Checks `W` and `stats.H` and returns `[rows, cols]` and `H`. A non-finite `H` entry throws
 * {@linkcode NonFiniteError}; `hint`, when given, is appended to that message (e.g. the method's
 * dampening advice). A missing or mis-sized `H` or a non-2-D weight is a {@linkcode QuantlabError}.
 */
export function checkLayerInputs(
  method: string,
  W: Tensor,
  stats: LayerStats,
  opts: { layer: string; hint?: string },
): { rows: number; cols: number; H: Float32Array | Float64Array } {
  const { layer } = opts;
  const [rows, cols] = checkWeight(method, W, layer);
  const H = stats.H;
  if (!H) throw new QuantlabError(`${method}: ${layer}: stats.H (the layer Hessian) is required`);
  if (H.length !== cols * cols) {
    throw new QuantlabError(
      `${method}: ${layer}: H has ${H.length} values, expected ${cols}×${cols} for [${W.shape}]`,
    );
  }
  for (let i = 0; i < H.length; i++) {
    if (!Number.isFinite(H[i])) {
      throw new NonFiniteError(
        `${method}: ${layer}: H has a non-finite value ${H[i]} at (${Math.floor(i / cols)}, ${
          i % cols
        })${opts.hint ? `; ${opts.hint}` : ""}`,
      );
    }
  }
  checkHessian(method, H, cols, layer);
  return { rows, cols, H };
}

/**
 * The checks of {@linkcode checkLayerInputs} that need only `diag(H)`, for an H held on the
 * backend's device (`stats.Hdevice`, whose diagonal `diag` was read back): `size` matches the
 * weight's columns, every diagonal entry finite (`NonFiniteError`, with `hint`) and ≥ 0
 * (`HessianError`). The device builds H as `Σ XᵀX` (symmetric by construction), and a non-finite
 * off-diagonal entry with a finite diagonal fails the device's Cholesky, which reports the pivot.
 */
export function checkDeviceHessian(
  method: string,
  W: Tensor,
  H: { size: number; diag: Float32Array },
  opts: { layer: string; hint?: string },
): { rows: number; cols: number } {
  const { layer } = opts;
  const [rows, cols] = checkWeight(method, W, layer);
  if (H.size !== cols || H.diag.length !== cols) {
    throw new QuantlabError(
      `${method}: ${layer}: H is ${H.size}×${H.size}, expected ${cols}×${cols} for [${W.shape}]`,
    );
  }
  for (let i = 0; i < cols; i++) {
    const d = H.diag[i];
    if (!Number.isFinite(d)) {
      throw new NonFiniteError(
        `${method}: ${layer}: H has a non-finite value ${d} at (${i}, ${i})${
          opts.hint ? `; ${opts.hint}` : ""
        }`,
      );
    }
    if (d < 0) {
      throw new HessianError(
        `${method}: ${layer}: H has a negative diagonal entry ${d} at (${i}, ${i}); a Hessian ` +
          `Σ XᵀX is positive semidefinite`,
      );
    }
  }
  return { rows, cols };
}
