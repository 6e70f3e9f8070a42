/**
 * Small dense linear algebra in float64 for the quantizers: Cholesky, triangular inverse, SPD
 * inverse, and the upper Cholesky factor of an inverse that GPTQ needs. Matrices are row-major
 * `Float64Array`s of `n × n`. Plain TypeScript (no npm imports); the loops read rows contiguously.
 * The blocked variants (`choleskyBlocked`, `invertLowerBlocked`, `upperCholeskyOfInverseBlocked`)
 * keep the small diagonal blocks in TypeScript and run the `O(n³)` bulk as float64 GEMMs through
 * a {@linkcode GemmF64} (onnxruntime's MLAS DGEMM via `Backend.matmulF64`), in a panel layout
 * that needs one `n²` workspace and no large temporaries.
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

// ---- blocked float64 path (GEMM-heavy; for n in the hundreds and up) ------------------------

/** Dimensions of a {@linkcode GemmF64} product. */
export interface GemmDims {
  /** Rows of the product. */
  m: number;
  /** The inner dimension. */
  k: number;
  /** Columns of the product. */
  n: number;
  /**
   * `a` holds `Aᵀ` (row-major `k × m`) instead of `A` (`m × k`): `C = aᵀ · b`. Only the GEMMs of
   * {@linkcode gemmF64TS} and {@linkcode onnxGemmF64} honour it; the blocked routines below ask
   * for it only from those and transpose `a` themselves for any other {@linkcode GemmF64}.
   */
  transA?: boolean;
}

/** A float64 matrix product `C[m,n] = A[m,k] · B[k,n]`, row-major. */
export type GemmF64 = (a: Float64Array, b: Float64Array, dims: GemmDims) => Promise<Float64Array>;

/** GEMMs known to honour {@linkcode GemmDims.transA}. */
const transAGemms = new WeakSet<GemmF64>();

/**
 * Plain TypeScript float64 GEMM (i-k-j loop, or k-i-j with `transA`): the reference and
 * fallback {@linkcode GemmF64}.
 */
export function gemmF64TS(a: Float64Array, b: Float64Array, dims: GemmDims): Promise<Float64Array> {
  const { m, k, n } = dims;
  const c = new Float64Array(m * n);
  if (dims.transA) {
    for (let p = 0; p < k; p++) {
      const ap = p * m, bp = p * n;
      for (let i = 0; i < m; i++) {
        const av = a[ap + i];
        if (av === 0) continue;
        const ci = i * n;
        for (let j = 0; j < n; j++) c[ci + j] += av * b[bp + j];
      }
    }
    return Promise.resolve(c);
  }
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
transAGemms.add(gemmF64TS);

let ortGemm: Promise<GemmF64> | undefined;

/**
 * A float64 GEMM through a backend's {@linkcode Backend.matmulF64} capability (default: the CPU
 * backend, onnxruntime-node `MatMul`/`Gemm(transA)` on `tensor(double)`, MLAS DGEMM; tiny
 * products in TypeScript). Resolves to {@linkcode gemmF64TS} when the backend has no float64
 * GEMM or onnxruntime cannot be loaded (e.g. without `--allow-ffi`). `transA` is passed on when
 * a probe shows the backend honours it, else `a` is transposed here first.
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
      // Loads it, and probes transA: Aᵀ·I for A = [[1, 2], [3, 4]] stored as rows of Aᵀ.
      const probe = await f64(Float64Array.of(1, 3, 2, 4), Float64Array.of(1, 0, 0, 1), {
        m: 2,
        k: 2,
        n: 2,
        transA: true,
      });
      const honoursTransA = [1, 2, 3, 4].every((v, i) => probe[i] === v);
      const gemm: GemmF64 = (a, b, dims) => {
        const { m, k, n } = dims;
        if (m * k * n <= 1 << 15) return gemmF64TS(a, b, dims);
        if (dims.transA && !honoursTransA) {
          return f64(transposeRect(a, k, m), b, { m, k, n });
        }
        return f64(a, b, dims.transA ? { m, k, n, transA: true } : { m, k, n });
      };
      transAGemms.add(gemm);
      return gemm;
    } catch {
      return gemmF64TS;
    }
  })();
}

/** Transpose of the row-major `r × c` matrix `a` (a new `c × r` array). */
function transposeRect(a: Float64Array, r: number, c: number): Float64Array {
  const t = new Float64Array(r * c);
  for (let i = 0; i < r; i++) {
    const ai = i * c;
    for (let j = 0; j < c; j++) t[j * r + i] = a[ai + j];
  }
  return t;
}

/** `aᵀ · b` for `a` of `k × m`, through `gemm` (transposing `a` here if it ignores transA). */
function gemmTransA(
  gemm: GemmF64,
  a: Float64Array,
  b: Float64Array,
  dims: { m: number; k: number; n: number },
): Promise<Float64Array> {
  const { m, k, n } = dims;
  if (transAGemms.has(gemm)) return gemm(a, b, { m, k, n, transA: true });
  return gemm(transposeRect(a, k, m), b, { m, k, n });
}

/** Options of the blocked factorizations. */
export interface BlockedOptions {
  /** The float64 GEMM (default {@linkcode gemmF64TS}). */
  gemm?: GemmF64;
  /** Block size (default {@linkcode DEFAULT_BLOCK}). */
  block?: number;
}

/** Default block size of the blocked factorizations. */
export const DEFAULT_BLOCK = 256;

/*
 * Panel layout. The blocked routines keep an n × n lower factor L in ONE n² buffer as
 * block-row panels stored transposed: panel i (rows i0..i1 of L, ni = i1 − i0 of them) occupies
 * [n·i0, n·i1) and holds P_i[k, r] = L[i0 + r, k] (row stride ni). So L[i, 0:k]ᵀ is the
 * contiguous prefix P_i[0:k], and every product below is `aᵀ · b` over contiguous slices with a
 * small (ni × nj) result: the GEMMs read long K dimensions and write little, and no n²-sized
 * temporary is allocated (first touches of fresh pages are expensive on virtual machines).
 *
 * The inverse X = L⁻¹ reuses the same buffer as block-column panels: Q_j[k, c] = X[k, j0 + c]
 * for k ≥ j0 (row stride nj) in [n·j0, n·j1). Q_j's rows ≥ j0 overlap P_j's rows ≥ j0, which
 * hold the diagonal block (consumed before it is overwritten) and rows L never uses.
 */

/** Diagonal blocks wider than this are factored blocked themselves (with a native gemm). */
const DIAG_RECURSE = 96;
/** The sub-block size of a recursively factored diagonal block. */
const DIAG_BLOCK = 64;

/** Bounds of block `i`: `[i0, i1)` and the buffer offset `n·i0` of its panel. */
function blockOf(i: number, n: number, b: number) {
  const i0 = i * b, i1 = Math.min(i0 + b, n);
  return { i0, i1, ni: i1 - i0, pi: n * i0 };
}

/**
 * Blocked left-looking Cholesky of the row-major SPD matrix in `P` (lower triangle read),
 * turning `P` into the panel layout of `L` in place. Per block row i, block j ≤ i:
 * `S = A[i, j] − L[i, :j0] · L[j, :j0]ᵀ` (one GEMM, K = j0), then `L[i, j] = S · L_jj⁻ᵀ` (one
 * small GEMM with the cached inverse of the diagonal block) or, for j = i, `L_ii = chol(S)` in
 * TypeScript. Returns the inverses `L_ii⁻¹` (lower, `ni × ni`), which the inverse reuses.
 */
async function cholPanels(
  P: Float64Array,
  n: number,
  o: { gemm: GemmF64; b: number },
): Promise<Float64Array[]> {
  const { gemm, b } = o;
  const nblk = Math.ceil(n / b);
  const T = new Float64Array(Math.min(b, n) * n);
  const scratch = new Float64Array(Math.min(b, n) ** 2); // reused: fresh pages cost a fault each
  const diagInv: Float64Array[] = [];
  for (let i = 0; i < nblk; i++) {
    const { i0, i1, ni, pi } = blockOf(i, n, b);
    // Block row i of A (columns 0..i1) before its storage becomes panel i.
    for (let r = 0; r < ni; r++) T.set(P.subarray(pi + r * n, pi + r * n + i1), r * i1);
    for (let j = 0; j < i; j++) {
      const { j0, nj, pj } = { j0: j * b, nj: Math.min(b, n - j * b), pj: n * j * b };
      // St = (A[i, j] − L[i, :j0]·L[j, :j0]ᵀ)ᵀ, nj × ni.
      const St = scratch.subarray(0, nj * ni);
      for (let r = 0; r < ni; r++) {
        const tr = r * i1 + j0;
        for (let c = 0; c < nj; c++) St[c * ni + r] = T[tr + c];
      }
      if (j0 > 0) {
        const Ct = await gemmTransA(
          gemm,
          P.subarray(pj, pj + j0 * nj),
          P.subarray(pi, pi + j0 * ni),
          {
            m: nj,
            k: j0,
            n: ni,
          },
        );
        for (let e = 0; e < St.length; e++) St[e] -= Ct[e];
      }
      // L[i, j]ᵀ = L_jj⁻¹ · Sᵀ → panel i, rows j0..j1.
      P.set(await gemm(diagInv[j], St, { m: nj, k: nj, n: ni }), pi + j0 * ni);
    }
    // Diagonal block: S = A[i, i] − L[i, :i0]·L[i, :i0]ᵀ, then L_ii = chol(S) (lower read).
    const S = new Float64Array(ni * ni); // kept: becomes L_ii⁻¹
    for (let r = 0; r < ni; r++) S.set(T.subarray(r * i1 + i0, r * i1 + i1), r * ni);
    if (i0 > 0) {
      const Pi = P.subarray(pi, pi + i0 * ni);
      const C = await gemmTransA(gemm, Pi, Pi, { m: ni, k: i0, n: ni });
      for (let e = 0; e < S.length; e++) S[e] -= C[e];
    }
    // Diagonal blocks above DIAG_RECURSE with a native gemm: the same blocked algorithm on
    // DIAG_BLOCK-sized sub-blocks (TypeScript O(b³) loops were most of the time at n ≈ 768).
    const recurse = ni > DIAG_RECURSE && gemm !== gemmF64TS;
    try {
      if (recurse) {
        const Pd = S.slice();
        const inner = await cholPanels(Pd, ni, { gemm, b: DIAG_BLOCK });
        S.set(panelsToLower(Pd, ni, DIAG_BLOCK));
        for (let c = 0; c < ni; c++) {
          const dst = pi + (i0 + c) * ni;
          for (let r = 0; r < ni; r++) P[dst + r] = S[r * ni + c];
        }
        // L_ii⁻¹ in place of the sub-blocks' panels, with their diagonal inverses.
        await invertPanels(Pd, ni, { gemm, b: DIAG_BLOCK, diagInv: inner });
        diagInv.push(columnPanelsToLower(Pd, ni, DIAG_BLOCK));
        continue;
      }
      choleskyInPlace(S, ni);
    } catch (e) {
      if (e instanceof NotPositiveDefiniteError) {
        throw new NotPositiveDefiniteError(i0 + e.pivot, e.value);
      }
      throw e;
    }
    for (let c = 0; c < ni; c++) {
      const dst = pi + (i0 + c) * ni;
      for (let r = 0; r < ni; r++) P[dst + r] = S[r * ni + c];
    }
    invertLowerInPlace(S, ni);
    diagInv.push(S);
  }
  return diagInv;
}

/**
 * Blocked inverse of the lower factor held in panel layout in `P` (with its diagonal blocks'
 * inverses), in place: per block row i, `X[i, j] = −L_ii⁻¹ · (L[i, j0:i0] · X[j0:i0, j])` for
 * j < i (two GEMMs, K = i0 − j0 and ni), then `X[i, i] = L_ii⁻¹`. Leaves `X` in the
 * block-column layout `Q` (see above).
 */
async function invertPanels(
  P: Float64Array,
  n: number,
  o: { gemm: GemmF64; b: number; diagInv: Float64Array[] },
): Promise<void> {
  const { gemm, b, diagInv } = o;
  const nblk = Math.ceil(n / b);
  for (let i = 0; i < nblk; i++) {
    const { i0, ni, pi } = blockOf(i, n, b);
    const Xii = diagInv[i];
    for (let j = 0; j < i; j++) {
      const { j0, nj, pj } = { j0: j * b, nj: Math.min(b, n - j * b), pj: n * j * b };
      const C = await gemmTransA(
        gemm,
        P.subarray(pi + j0 * ni, pi + i0 * ni),
        P.subarray(pj + j0 * nj, pj + i0 * nj),
        { m: ni, k: i0 - j0, n: nj },
      );
      const Y = await gemm(Xii, C, { m: ni, k: ni, n: nj });
      const dst = pj + i0 * nj;
      for (let e = 0; e < Y.length; e++) P[dst + e] = -Y[e];
    }
    P.set(Xii, pi + i0 * ni);
  }
}

/** Row-major lower `L` from the panel layout. */
function panelsToLower(P: Float64Array, n: number, b: number): Float64Array {
  const L = new Float64Array(n * n);
  for (let i = 0; i * b < n; i++) {
    const { i0, i1, ni, pi } = blockOf(i, n, b);
    for (let r = i0; r < i1; r++) {
      const lr = r * n, src = pi + (r - i0);
      for (let c = 0; c <= r; c++) L[lr + c] = P[src + c * ni];
    }
  }
  return L;
}

/** Row-major lower `X` from the block-column layout. */
function columnPanelsToLower(P: Float64Array, n: number, b: number): Float64Array {
  const X = new Float64Array(n * n);
  for (let j = 0; j * b < n; j++) {
    const { i0: j0, i1: j1, ni: nj, pi: pj } = blockOf(j, n, b);
    for (let r = j0; r < n; r++) {
      const src = pj + r * nj - j0, cmax = Math.min(j1, r + 1);
      for (let c = j0; c < cmax; c++) X[r * n + c] = P[src + c];
    }
  }
  return X;
}

function blockSize(options: BlockedOptions): number {
  const b = options.block ?? DEFAULT_BLOCK;
  if (!Number.isInteger(b) || b < 1) {
    throw new RangeError(`block must be a positive integer, got ${b}`);
  }
  return b;
}

/**
 * Blocked lower Cholesky: diagonal blocks in TypeScript, everything else through `gemm`
 * (float64), left-looking over block rows in a panel layout (one `n²` workspace). Same result
 * as {@linkcode cholesky} up to rounding; throws {@linkcode NotPositiveDefiniteError} naming
 * the failed row.
 */
export async function choleskyBlocked(
  A: Float64Array,
  n: number,
  options: BlockedOptions = {},
): Promise<Float64Array> {
  checkSquare(A, n, "choleskyBlocked");
  const b = blockSize(options);
  const P = A.slice();
  await cholPanels(P, n, { gemm: options.gemm ?? gemmF64TS, b });
  return panelsToLower(P, n, b);
}

/**
 * Blocked inverse of a lower-triangular matrix (only the lower triangle is read): diagonal
 * blocks inverted in TypeScript, `X[i, j] = −X_ii · (L[i, j0:i0] · X[j0:i0, j])` through `gemm`
 * (float64). Same result as {@linkcode invertTriangular} up to rounding.
 */
export async function invertLowerBlocked(
  L: Float64Array,
  n: number,
  options: BlockedOptions = {},
): Promise<Float64Array> {
  checkSquare(L, n, "invertLowerBlocked");
  const b = blockSize(options);
  const P = new Float64Array(n * n);
  const diagInv: Float64Array[] = [];
  for (let i = 0; i * b < n; i++) {
    const { i0, i1, ni, pi } = blockOf(i, n, b);
    for (let r = i0; r < i1; r++) {
      const lr = r * n, dst = pi + (r - i0);
      for (let c = 0; c <= r; c++) P[dst + c * ni] = L[lr + c];
    }
    const D = new Float64Array(ni * ni);
    for (let r = 0; r < ni; r++) {
      for (let c = 0; c <= r; c++) D[r * ni + c] = L[(i0 + r) * n + i0 + c];
    }
    invertLowerInPlace(D, ni);
    diagInv.push(D);
  }
  await invertPanels(P, n, { gemm: options.gemm ?? gemmF64TS, b, diagInv });
  return columnPanelsToLower(P, n, b);
}

/** Options of {@linkcode upperCholeskyOfInverseBlocked}. */
export interface HinvBlockedOptions extends BlockedOptions {
  /**
   * Use `A`'s storage as the workspace, destroying `A` (saves one `n²` float64 allocation).
   * Default false.
   */
  overwrite?: boolean;
  /**
   * Where to write `U` (`n × n`, row-major, every entry written). A `Float32Array` rounds each
   * float64 entry to float32 on store (as `Float32Array.from` would). Default: a new
   * `Float64Array`.
   */
  out?: Float64Array | Float32Array;
}

/**
 * {@linkcode upperCholeskyOfInverse} with blocked, GEMM-based factorizations (float64
 * throughout): `J·A·J = L'·L'ᵀ` by {@linkcode choleskyBlocked}'s algorithm, `L'⁻¹` by
 * {@linkcode invertLowerBlocked}'s, in one `n²` workspace, and `U = J·L'⁻¹·J` written to
 * `out`. With {@linkcode onnxGemmF64} the `2n³/3` flops run in MLAS DGEMM.
 */
export async function upperCholeskyOfInverseBlocked<
  O extends Float64Array | Float32Array = Float64Array,
>(
  A: Float64Array,
  n: number,
  options: HinvBlockedOptions & { out?: O } = {},
): Promise<O> {
  checkSquare(A, n, "upperCholeskyOfInverseBlocked");
  const out = (options.out ?? new Float64Array(n * n)) as O;
  checkSquare(out, n, "upperCholeskyOfInverseBlocked out");
  const b = blockSize(options), gemm = options.gemm ?? gemmF64TS;
  // Only the lower triangle of the reversed matrix is read (= the upper triangle of A).
  let P: Float64Array;
  if (options.overwrite) {
    A.reverse();
    P = A;
  } else {
    P = reverseBoth(A, n);
  }
  const diagInv = await cholPanels(P, n, { gemm, b });
  await invertPanels(P, n, { gemm, b, diagInv });
  // U[p, q] = X[n−1−p, n−1−q]; X[r, c] = Q_j[r, c − j0] for c ≤ r, 0 above.
  for (let p = 0; p < n; p++) out.fill(0, p * n, p * n + p);
  for (let j = 0; j * b < n; j++) {
    const { i0: j0, i1: j1, ni: nj, pi: pj } = blockOf(j, n, b);
    for (let r = j0; r < n; r++) {
      const src = pj + r * nj - j0, dst = (n - 1 - r) * n + n - 1, cmax = Math.min(j1, r + 1);
      for (let c = j0; c < cmax; c++) out[dst - c] = P[src + c];
    }
  }
  return out;
}
