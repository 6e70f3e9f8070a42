/**
 * Small dense linear algebra in float64 for the quantizers: Cholesky, triangular inverse, SPD
 * inverse, and the upper Cholesky factor of an inverse that GPTQ needs. Matrices are row-major
 * `Float64Array`s of `n × n`. Plain TypeScript (no npm imports); the loops read rows contiguously.
 * @module
 */
import { NonFiniteError } from "../../errors.ts";
import type { Backend } from "../../backend/backend.ts";
import { cpuBackend } from "../../backend/cpu.ts";

/** Error thrown when a Cholesky pivot is not positive (the matrix is not numerically SPD). */
export class NotPositiveDefiniteError extends NonFiniteError {
  /** The row whose pivot failed. */
  readonly pivot: number;
  /** The failed pivot's value (not positive, or not finite). */
  readonly value: number;
  /** Creates the error for `pivot` whose value was `value`. */
  constructor(pivot: number, value: number) {
    super(`matrix is not positive definite: Cholesky pivot ${pivot} is ${value}`);
    this.pivot = pivot;
    this.value = value;
  }
}

function checkSquare(a: ArrayLike<number>, n: number, what: string): void {
  if (!Number.isInteger(n) || n < 0 || a.length !== n * n) {
    throw new RangeError(`${what}: expected ${n}×${n} = ${n * n} values, got ${a.length}`);
  }
}

/** Dot product of `a[ia..ia+len)` and `b[ib..ib+len)`, 4-way unrolled. */
function dot(a: Float64Array, ia: number, b: Float64Array, ib: number, len: number): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  let k = 0;
  for (; k + 3 < len; k += 4) {
    s0 += a[ia + k] * b[ib + k];
    s1 += a[ia + k + 1] * b[ib + k + 1];
    s2 += a[ia + k + 2] * b[ib + k + 2];
    s3 += a[ia + k + 3] * b[ib + k + 3];
  }
  for (; k < len; k++) s0 += a[ia + k] * b[ib + k];
  return (s0 + s1) + (s2 + s3);
}

/** In-place lower Cholesky (row-oriented Crout); zeroes the strict upper triangle. */
function choleskyInPlace(L: Float64Array, n: number): void {
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    for (let j = 0; j < i; j++) {
      const rj = j * n;
      L[ri + j] = (L[ri + j] - dot(L, ri, L, rj, j)) / L[rj + j];
    }
    const s = L[ri + i] - dot(L, ri, L, ri, i);
    if (!(s > 0) || !Number.isFinite(s)) throw new NotPositiveDefiniteError(i, s);
    L[ri + i] = Math.sqrt(s);
    for (let j = i + 1; j < n; j++) L[ri + j] = 0;
  }
}

/**
 * Lower Cholesky factor `L` with `A = L·Lᵀ` (only the lower triangle of `A` is read).
 * Throws {@linkcode NotPositiveDefiniteError} when a pivot is not positive or not finite.
 */
export function cholesky(A: Float64Array, n: number): Float64Array {
  checkSquare(A, n, "cholesky");
  const L = A.slice();
  choleskyInPlace(L, n);
  return L;
}

/** In-place inverse of a lower-triangular matrix (row axpy form); `tmp` holds one row. */
function invertLowerInPlace(L: Float64Array, n: number): void {
  const tmp = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    const lii = L[ri + i];
    for (let k = 0; k < i; k++) tmp[k] = L[ri + k];
    for (let c = 0; c <= i; c++) L[ri + c] = 0;
    // X[i, :] = (e_i − Σ_{k<i} L[i,k]·X[k, :]) / L[i,i], where X[k, :] lives in 0..k.
    for (let k = 0; k < i; k++) {
      const a = tmp[k];
      if (a === 0) continue;
      const rk = k * n;
      for (let c = 0; c <= k; c++) L[ri + c] -= a * L[rk + c];
    }
    const inv = 1 / lii;
    for (let c = 0; c < i; c++) L[ri + c] *= inv;
    L[ri + i] = inv;
  }
}

/** Transpose of an `n × n` matrix. */
export function transposeSquare(A: Float64Array, n: number): Float64Array {
  checkSquare(A, n, "transposeSquare");
  const T = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) T[j * n + i] = A[i * n + j];
  }
  return T;
}

/** Options of {@linkcode invertTriangular}. */
export interface TriangularOptions {
  /** Whether `T` is upper (true) or lower (false, default) triangular. */
  upper?: boolean;
}

/**
 * Inverse of a triangular matrix (lower by default; `upper: true` for upper). Only the
 * triangle named is read; the result has the same triangular shape.
 */
export function invertTriangular(
  T: Float64Array,
  n: number,
  options: TriangularOptions = {},
): Float64Array {
  checkSquare(T, n, "invertTriangular");
  if (options.upper) {
    const X = transposeSquare(T, n);
    zeroStrictUpper(X, n);
    invertLowerInPlace(X, n);
    return transposeSquare(X, n);
  }
  const X = T.slice();
  zeroStrictUpper(X, n);
  invertLowerInPlace(X, n);
  return X;
}

function zeroStrictUpper(X: Float64Array, n: number): void {
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) X[i * n + j] = 0;
  }
}

/**
 * Inverse of a symmetric positive definite matrix through its Cholesky factor
 * (`A⁻¹ = L⁻ᵀ·L⁻¹`, as `torch.cholesky_inverse`). Symmetric result.
 */
export function spdInverse(A: Float64Array, n: number): Float64Array {
  checkSquare(A, n, "spdInverse");
  const X = A.slice();
  choleskyInPlace(X, n);
  invertLowerInPlace(X, n);
  // out = Xᵀ·X: row k of X (entries 0..k) contributes X[k,i]·X[k,0..k] to row i ≤ k.
  const out = new Float64Array(n * n);
  for (let k = 0; k < n; k++) {
    const rk = k * n;
    for (let i = 0; i <= k; i++) {
      const a = X[rk + i];
      if (a === 0) continue;
      const ri = i * n;
      for (let c = 0; c <= i; c++) out[ri + c] += a * X[rk + c];
    }
  }
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) out[i * n + j] = out[j * n + i];
  }
  return out;
}

/** Reverses rows and columns: `out[i, j] = A[n−1−i, n−1−j]` (`J·A·J`). */
function reverseBoth(A: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * n);
  const last = n * n - 1;
  for (let p = 0; p <= last; p++) out[p] = A[last - p];
  return out;
}

/**
 * The upper-triangular `U` with `Uᵀ·U = A⁻¹`, i.e. `torch.linalg.cholesky(torch.cholesky_inverse(
 * torch.linalg.cholesky(A)), upper=True)` as GPTQ's `fasterquant` computes `Hinv`.
 *
 * Computed without forming `A⁻¹`: with `J` the index reversal, `J·A·J = L'·L'ᵀ` gives
 * `A = V·Vᵀ` with `V = J·L'·J` upper, so `A⁻¹ = V⁻ᵀ·V⁻¹` and `U = V⁻¹ = J·L'⁻¹·J` (Cholesky
 * factors are unique). Cost `2n³/3` flops instead of the reference's `4n³/3`; same matrix up to
 * rounding. Throws {@linkcode NotPositiveDefiniteError} when `A` is not numerically SPD.
 */
export function upperCholeskyOfInverse(A: Float64Array, n: number): Float64Array {
  checkSquare(A, n, "upperCholeskyOfInverse");
  // Only the lower triangle of the reversed matrix is read (= the upper triangle of A).
  const R = reverseBoth(A, n);
  choleskyInPlace(R, n);
  invertLowerInPlace(R, n);
  return reverseBoth(R, n);
}

// ---- blocked float64 path (GEMM-heavy; for n in the thousands) ------------------------------

/** A float64 matrix product `C[m,n] = A[m,k] · B[k,n]`, row-major. */
export type GemmF64 = (
  a: Float64Array,
  b: Float64Array,
  dims: { m: number; k: number; n: number },
) => Promise<Float64Array>;

/** Plain TypeScript float64 GEMM (i-k-j loop): the reference and fallback {@linkcode GemmF64}. */
export function gemmF64TS(
  a: Float64Array,
  b: Float64Array,
  dims: { m: number; k: number; n: number },
): Promise<Float64Array> {
  const { m, k, n } = dims;
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    const ci = i * n;
    for (let p = 0; p < k; p++) {
      const av = a[i * k + p];
      if (av === 0) continue;
      const bp = p * n;
      for (let j = 0; j < n; j++) c[ci + j] += av * b[bp + j];
    }
  }
  return Promise.resolve(c);
}

let ortGemm: Promise<GemmF64> | undefined;

/**
 * A float64 GEMM through a backend's {@linkcode Backend.matmulF64} capability (default: the CPU
 * backend, onnxruntime-node `MatMul` on `tensor(double)`, MLAS DGEMM; tiny products in
 * TypeScript). Resolves to {@linkcode gemmF64TS} when the backend has no float64 GEMM or
 * onnxruntime cannot be loaded (e.g. without `--allow-ffi`).
 */
export function onnxGemmF64(backend: Backend = cpuBackend): Promise<GemmF64> {
  if (backend !== cpuBackend) return gemmOf(backend);
  ortGemm ??= gemmOf(backend);
  return ortGemm;
}

function gemmOf(backend: Backend): Promise<GemmF64> {
  return (async (): Promise<GemmF64> => {
    const f64 = backend.matmulF64?.bind(backend);
    if (!f64) return gemmF64TS;
    try {
      await f64(new Float64Array(1), new Float64Array(1), { m: 1, k: 1, n: 1 }); // loads it
      return (a, b, { m, k, n }) => {
        if (m * k * n <= 1 << 15) return gemmF64TS(a, b, { m, k, n });
        return f64(a, b, { m, k, n });
      };
    } catch {
      return gemmF64TS;
    }
  })();
}

/** Copies the `r × c` block at `(i0, j0)` of the `n`-column matrix `A`. */
function getBlock(A: Float64Array, n: number, at: [number, number], size: [number, number]) {
  const [i0, j0] = at, [r, c] = size;
  const out = new Float64Array(r * c);
  for (let i = 0; i < r; i++) out.set(A.subarray((i0 + i) * n + j0, (i0 + i) * n + j0 + c), i * c);
  return out;
}

/** Options of the blocked factorizations. */
export interface BlockedOptions {
  /** The float64 GEMM (default {@linkcode gemmF64TS}). */
  gemm?: GemmF64;
  /** Block size (default 256). */
  block?: number;
}

/**
 * Blocked right-looking lower Cholesky: the diagonal blocks in TypeScript, the panel
 * `L21 = A21 · L11⁻ᵀ` and the trailing update `A22 −= L21 · L21ᵀ` through `gemm` (float64).
 * Same result as {@linkcode cholesky} up to rounding.
 */
export async function choleskyBlocked(
  A: Float64Array,
  n: number,
  options: BlockedOptions = {},
): Promise<Float64Array> {
  checkSquare(A, n, "choleskyBlocked");
  const L = A.slice();
  await choleskyBlockedInPlace(L, n, options);
  return L;
}

async function choleskyBlockedInPlace(L: Float64Array, n: number, options: BlockedOptions) {
  const gemm = options.gemm ?? gemmF64TS, b = options.block ?? 256;
  for (let k0 = 0; k0 < n; k0 += b) {
    const k1 = Math.min(k0 + b, n), nb = k1 - k0, m = n - k1;
    const L11 = getBlock(L, n, [k0, k0], [nb, nb]);
    try {
      choleskyInPlace(L11, nb);
    } catch (e) {
      if (e instanceof NotPositiveDefiniteError) {
        throw new NotPositiveDefiniteError(k0 + e.pivot, e.value);
      }
      throw e;
    }
    for (let i = 0; i < nb; i++) L.set(L11.subarray(i * nb, i * nb + nb), (k0 + i) * n + k0);
    if (m === 0) continue;
    invertLowerInPlace(L11, nb);
    const L11invT = transposeSquare(L11, nb);
    const A21 = getBlock(L, n, [k1, k0], [m, nb]);
    const L21 = await gemm(A21, L11invT, { m, k: nb, n: nb });
    const L21T = new Float64Array(nb * m);
    for (let i = 0; i < m; i++) {
      L.set(L21.subarray(i * nb, i * nb + nb), (k1 + i) * n + k0);
      for (let j = 0; j < nb; j++) L21T[j * m + i] = L21[i * nb + j];
    }
    const S = await gemm(L21, L21T, { m, k: nb, n: m });
    for (let i = 0; i < m; i++) {
      const ri = (k1 + i) * n + k1, si = i * m;
      for (let j = 0; j <= i; j++) L[ri + j] -= S[si + j];
    }
  }
  zeroStrictUpper(L, n);
}

/**
 * Blocked inverse of a lower-triangular matrix: diagonal blocks inverted in TypeScript, then
 * `X[i, :i0] = −X_ii · (L[i, :i0] · X[:i0, :i0])` through `gemm` (float64).
 */
export async function invertLowerBlocked(
  L: Float64Array,
  n: number,
  options: BlockedOptions = {},
): Promise<Float64Array> {
  checkSquare(L, n, "invertLowerBlocked");
  const gemm = options.gemm ?? gemmF64TS, b = options.block ?? 256;
  const X = new Float64Array(n * n);
  for (let i0 = 0; i0 < n; i0 += b) {
    const i1 = Math.min(i0 + b, n), nb = i1 - i0;
    const Xii = getBlock(L, n, [i0, i0], [nb, nb]);
    zeroStrictUpper(Xii, nb);
    invertLowerInPlace(Xii, nb);
    for (let i = 0; i < nb; i++) X.set(Xii.subarray(i * nb, i * nb + nb), (i0 + i) * n + i0);
    if (i0 === 0) continue;
    const Li = getBlock(L, n, [i0, 0], [nb, i0]);
    const Xprev = getBlock(X, n, [0, 0], [i0, i0]);
    const T = await gemm(Li, Xprev, { m: nb, k: i0, n: i0 });
    const Y = await gemm(Xii, T, { m: nb, k: nb, n: i0 });
    for (let i = 0; i < nb; i++) {
      const ri = (i0 + i) * n, yi = i * i0;
      for (let j = 0; j < i0; j++) X[ri + j] = -Y[yi + j];
    }
  }
  return X;
}

/**
 * {@linkcode upperCholeskyOfInverse} with blocked, GEMM-based factorizations (float64
 * throughout). With {@linkcode onnxGemmF64} this takes seconds at n = 4096 where the plain
 * TypeScript loops take tens of seconds.
 */
export async function upperCholeskyOfInverseBlocked(
  A: Float64Array,
  n: number,
  options: BlockedOptions = {},
): Promise<Float64Array> {
  checkSquare(A, n, "upperCholeskyOfInverseBlocked");
  const R = reverseBoth(A, n);
  await choleskyBlockedInPlace(R, n, options);
  return reverseBoth(await invertLowerBlocked(R, n, options), n);
}
