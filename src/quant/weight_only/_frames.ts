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
import { OptionError } from "../../errors.ts";
import { fwht, isPow2, randomSigns } from "../core/hadamard.ts";
import { mulberry32, type Rng } from "../../rng.ts";

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

/** Which frame construction FrameQuant uses (see {@linkcode referenceFrame}). */
export type FrameKind = "hadamard" | "reference";

/** Complex coordinates per fusion block of {@linkcode referenceFrame} (the reference's `l_den`). */
export const REFERENCE_L_DEN = 16;

/**
 * The reference's frame at redundancy 1 (vsingh-group/FrameQuant @a6fece7, `utils/quant_utils.py`
 * `tff_project` with `get_tff_blks(l_den = 16)` and `utils/construct_tff.py`), for `n` a multiple
 * of `2·l_den = 32`:
 * 1. random signs (one vector of length `d₂` = the largest power of two dividing `n`, shared by
 *    every block of `d₂`), then the normalized Hadamard transform on each block of `d₂`;
 * 2. the real tight fusion frame: each block of 32 coordinates, read as 16 complex numbers
 *    `z_m = y_{2m} + i·y_{2m+1}`, goes through the same unitary DFT-like map
 *    `Z_k = Σ_m z_m e^{+2πi·k·m/16} / 4`; the block's 32 outputs are `Re Z_0..15, Im Z_0..15`,
 *    and output `j` of block `u` lands at coefficient `j·U + u` (`U = n/32` blocks), the
 *    reference's einsum/permute layout.
 * Orthogonal (`k = n`), so synthesis is the transpose. The signs come from mulberry32 with the
 * given seed (the reference's come from torch's generator, which this cannot replay), so a run
 * matches the reference's construction, not its random draw. Measured: in issue 19's held-out
 * run on one real layer this construction re-concentrated outlier columns that the 2σ clip then
 * cut (proxy loss 17× at 2 bits, 45× at 3 bits that of Hadamard-only frames); on the twenty
 * 64 × 64 stories260K layers (`bench/reference_fidelity.ts`, with the reference's grid fit) the
 * summed proxy loss was 1.07× (2-bit), 1.13× (3-bit), 1.15× (4-bit) the Hadamard frames'. The
 * reference's spectral-tetris frames for other `n` or `r > 1` are not implemented.
 */
export function referenceFrame(n: number, rng: Rng | number): TightFrame {
  const block = 2 * REFERENCE_L_DEN;
  if (!Number.isInteger(n) || n < block || n % block !== 0) {
    throw new OptionError(
      "frames",
      `"reference" frames need a dimension that is a multiple of ${block} (the reference's 2·l_den), got ${n}`,
    );
  }
  const seed = typeof rng === "number" ? rng >>> 0 : undefined;
  const draw = typeof rng === "number" ? mulberry32(rng) : rng;
  let d2 = 1;
  while (n % (d2 * 2) === 0) d2 *= 2;
  const signs = randomSigns(draw, d2);
  const K = REFERENCE_L_DEN, U = n / block, norm = 1 / Math.sqrt(K);
  const cos = new Float64Array(K * K), sin = new Float64Array(K * K);
  for (let k = 0; k < K; k++) {
    for (let m = 0; m < K; m++) {
      const t = (2 * Math.PI * ((k * m) % K)) / K;
      cos[k * K + m] = Math.cos(t) * norm;
      sin[k * K + m] = Math.sin(t) * norm;
    }
  }
  return {
    n,
    k: n,
    r: 1,
    seed,
    analysis(x) {
      if (x.length !== n) throw new OptionError("x", `length ${x.length}, expected ${n}`);
      const y = Float64Array.from(x);
      for (let b = 0; b < n; b += d2) {
        for (let i = 0; i < d2; i++) y[b + i] *= signs[i];
      }
      fwht(y, d2);
      const out = new Float64Array(n);
      for (let u = 0; u < U; u++) {
        const o = u * block;
        for (let k = 0; k < K; k++) {
          let re = 0, im = 0;
          for (let m = 0; m < K; m++) {
            const a = y[o + 2 * m], b = y[o + 2 * m + 1];
            const c = cos[k * K + m], s = sin[k * K + m];
            re += c * a - s * b;
            im += s * a + c * b;
          }
          out[k * U + u] = re;
          out[(K + k) * U + u] = im;
        }
      }
      return out;
    },
    synthesis(cf) {
      if (cf.length !== n) throw new OptionError("c", `length ${cf.length}, expected ${n}`);
      const y = new Float64Array(n);
      for (let u = 0; u < U; u++) {
        const o = u * block;
        for (let m = 0; m < K; m++) {
          let a = 0, b = 0;
          for (let k = 0; k < K; k++) {
            const re = cf[k * U + u], im = cf[(K + k) * U + u];
            const c = cos[k * K + m], s = sin[k * K + m];
            a += c * re + s * im;
            b += -s * re + c * im;
          }
          y[o + 2 * m] = a;
          y[o + 2 * m + 1] = b;
        }
      }
      fwht(y, d2);
      for (let b = 0; b < n; b += d2) {
        for (let i = 0; i < d2; i++) y[b + i] *= signs[i];
      }
      return y;
    },
  };
}

/** The frame of `kind` for `R^n` (`"reference"` needs `r = 1`; see {@linkcode referenceFrame}). */
export function makeFrame(kind: FrameKind, n: number, r: number, seed: number): TightFrame {
  if (kind === "hadamard") return tightFrame(n, r, seed);
  if (r !== 1) {
    throw new OptionError(
      "frames",
      `"reference" frames are implemented at redundancy 1 only (the reference's spectral-tetris frames for r > 1 are not), got r = ${r}`,
    );
  }
  return referenceFrame(n, seed);
}
