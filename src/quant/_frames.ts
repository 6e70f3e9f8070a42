/**
 * Parseval (tight, frame bound 1) frames built from randomized fast Walsh–Hadamard transforms, the
 * redundant representations FrameQuant quantizes in. Private to `framequant.ts`; exported there
 * for tests and notebooks.
 *
 * A frame for `R^n` with redundancy `r` has `k = ⌈r·n⌉` vectors, the rows of the analysis operator
 * `A = Q·E` (`k × n`): `E` pads `x` with `k − n` zeros and `Q` is an orthogonal `k × k` transform
 * made of randomized Hadamard passes. Then `AᵀA = EᵀQᵀQE = I_n`: synthesis after analysis is the
 * identity, and `AAᵀ` is the orthogonal projection onto the range of `A`.
 *
 * `Q`: when `k` is a power of two, one randomized Hadamard `H_k·D` (as the reference's single pass
 * `hadamard_transform(w * d)`). Otherwise, with `M` the largest power of two below `k`, three
 * passes over the overlapping windows `[0, M)`, `[k − M, k)`, `[0, M)`, each random signs then a
 * normalized Hadamard on the window; every output then depends on every input, and each pass is
 * orthogonal, so `Q` is. This replaces the reference's construction (a randomized Hadamard over
 * blocks of the largest power of two dividing `n`, then real tight fusion frames of spectral
 * tetris blocks, which needs `n` divisible by `2·l_den` and fails for `n = 172`).
 * @module
 */
import { OptionError } from "../errors.ts";
import { fwht, isPow2, randomSigns } from "./hadamard.ts";
import { mulberry32, type Rng } from "./_rng.ts";

/** One randomized Hadamard pass: signs, then `H_len/√len` on `[start, start + len)`. */
interface Pass {
  start: number;
  len: number;
  signs: Float64Array;
}

/** A Parseval frame of `k` vectors for `R^n` (analysis `A`, `k × n`, with `AᵀA = I`). */
export interface TightFrame {
  /** Dimension of the original space. */
  readonly n: number;
  /** Number of frame vectors (coefficients), `⌈r·n⌉`. */
  readonly k: number;
  /** Requested redundancy; the realized one is `k / n`. */
  readonly r: number;
  /** Seed of the random signs (mulberry32), when built from a seed. */
  readonly seed?: number;
  /** Frame coefficients `A·x` (length `k`) of `x` (length `n`). */
  analysis(x: ArrayLike<number>): Float64Array;
  /** `Aᵀ·c` (length `n`) of coefficients `c` (length `k`); `synthesis(analysis(x)) = x`. */
  synthesis(c: ArrayLike<number>): Float64Array;
}

/** Frame size `k = ⌈r·n⌉` for redundancy `r ≥ 1` (a 1e-9 slack absorbs float error in `r·n`). */
export function frameSize(n: number, r: number): number {
  return Math.max(n, Math.ceil(r * n - 1e-9));
}

/** Throws {@linkcode OptionError} unless `r` is a finite number in `[1, 8]`. */
export function validateRedundancy(r: unknown, option = "r"): number {
  if (typeof r !== "number" || !Number.isFinite(r) || r < 1 || r > 8) {
    throw new OptionError(option, `redundancy must be a number in [1, 8], got ${r}`);
  }
  return r;
}

/**
 * A Parseval frame for `R^n` with redundancy `r` (`k = ⌈r·n⌉` vectors; see the module notes for
 * the construction). `rng` draws the random signs; a number is a mulberry32 seed, recorded in
 * `frame.seed`, so `tightFrame(n, r, seed)` always rebuilds the same frame.
 */
export function tightFrame(n: number, r: number, rng: Rng | number): TightFrame {
  if (!Number.isInteger(n) || n < 1) throw new OptionError("n", `must be an integer ≥ 1, got ${n}`);
  validateRedundancy(r);
  const seed = typeof rng === "number" ? rng >>> 0 : undefined;
  const draw = typeof rng === "number" ? mulberry32(rng) : rng;
  const k = frameSize(n, r);
  let M = 1;
  while (M * 2 <= k) M *= 2;
  const windows = isPow2(k) ? [0] : [0, k - M, 0];
  const passes: Pass[] = windows.map((start) => ({ start, len: M, signs: randomSigns(draw, M) }));
  const run = (y: Float64Array, p: Pass, forward: boolean) => {
    const seg = y.subarray(p.start, p.start + p.len);
    if (forward) { for (let i = 0; i < p.len; i++) seg[i] *= p.signs[i]; }
    fwht(seg, p.len);
    if (!forward) { for (let i = 0; i < p.len; i++) seg[i] *= p.signs[i]; }
  };
  return {
    n,
    k,
    r,
    seed,
    analysis(x) {
      if (x.length !== n) throw new OptionError("x", `length ${x.length}, expected ${n}`);
      const y = new Float64Array(k);
      for (let i = 0; i < n; i++) y[i] = x[i];
      for (const p of passes) run(y, p, true);
      return y;
    },
    synthesis(c) {
      if (c.length !== k) throw new OptionError("c", `length ${c.length}, expected ${k}`);
      const y = Float64Array.from(c);
      for (let q = passes.length - 1; q >= 0; q--) run(y, passes[q], false);
      return y.slice(0, n);
    },
  };
}

/** Applies `op` (length `cols` → `out`) to every row of a row-major `rows × cols` matrix. */
function mapRows(
  M: ArrayLike<number>,
  rows: number,
  cols: number,
  op: (x: ArrayLike<number>) => Float64Array,
  out: number,
): Float64Array {
  const R = new Float64Array(rows * out);
  const row = new Float64Array(cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) row[j] = M[i * cols + j];
    R.set(op(row), i * out);
  }
  return R;
}

/** Transpose of a row-major `rows × cols` matrix. */
function transpose(M: Float64Array, rows: number, cols: number): Float64Array {
  const T = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) T[j * rows + i] = M[i * cols + j];
  return T;
}

/**
 * Two-sided analysis `L·M·Rᵀ` of a row-major `m × n` matrix (`L = left` for `R^m`, `R = right`
 * for `R^n`), float64, `left.k × right.k`. FrameQuant's `C = P_lᵀ Θ P_prev` and, with
 * `left = right`, the frame-domain Hessian `A H Aᵀ`.
 */
export function analyzeMatrix(
  M: ArrayLike<number>,
  left: TightFrame,
  right: TightFrame,
): Float64Array {
  const m = left.n, n = right.n;
  const MR = mapRows(M, m, n, (x) => right.analysis(x), right.k); // m × kr
  const T = mapRows(transpose(MR, m, right.k), right.k, m, (x) => left.analysis(x), left.k);
  return transpose(T, right.k, left.k); // kl × kr
}

/** Two-sided synthesis `Lᵀ·C·R` of a row-major `left.k × right.k` matrix: `left.n × right.n`. */
export function synthesizeMatrix(
  C: ArrayLike<number>,
  left: TightFrame,
  right: TightFrame,
): Float64Array {
  const CR = mapRows(C, left.k, right.k, (c) => right.synthesis(c), right.n); // kl × n
  const T = mapRows(
    transpose(CR, left.k, right.n),
    right.n,
    left.k,
    (c) => left.synthesis(c),
    left.n,
  );
  return transpose(T, right.n, left.n);
}

/** The dense analysis matrix `A` (`k × n`, row-major) of a frame, for tests and notebooks. */
export function frameMatrix(frame: TightFrame): Float64Array {
  const A = new Float64Array(frame.k * frame.n);
  const e = new Float64Array(frame.n);
  for (let j = 0; j < frame.n; j++) {
    e.fill(0);
    e[j] = 1;
    const col = frame.analysis(e);
    for (let i = 0; i < frame.k; i++) A[i * frame.n + j] = col[i];
  }
  return A;
}
