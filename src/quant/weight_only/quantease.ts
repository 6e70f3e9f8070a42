/**
 * QuantEase (Behdin et al., 2023, arXiv 2309.01885): layer-wise quantization by cyclic coordinate
 * descent (CD) on `f(Q) = tr((W − Q) Σ (W − Q)ᵀ)` with `Σ = stats.H`, without any matrix
 * inversion or factorization, plus the outlier-aware variant that keeps a sparse part `S` of the
 * weight in full precision (`Wq = Q + S`). Follows `linkedin/QuantEase` (`method/quantease.py`,
 * `method/gptq_quantease.py`, `method/quantease_outlier.py`, `model_quantizer.py` CLI names).
 *
 * The update (the paper's Algorithm 2, accelerated CD): with `E = W − Q − S` and the maintained
 * product `R = E·Σ` (`rows × cols`), the best column `j` given all other columns is, for every
 * row at once, `β̃ = Q[:, j] + R[:, j] / Σ_jj` (the paper's Lemma 1 minimiser written through the
 * maintained product); `Q[:, j] ← q(β̃)` rounds it onto the column's grid, which is the exact
 * minimiser over the grid of the 1-D convex quadratic; then `R += δ · Σ[j, :]` with
 * `δ = Q_old[:, j] − Q_new[:, j]` (rank 1). Columns are swept in blocks of `blocksize`: inside a
 * block the rank-1 updates touch only the block's columns of `R` (TypeScript), and after the block
 * the rest of `R` gets `Δ · Σ[block, :]` in one `backend.matmul` (only the rows and columns of
 * `Δ` that changed) — the same sums, grouped differently, so the blocked sweep is the
 * column-by-column sweep up to float rounding (tested).
 *
 * Defaults are the reference's default run (`model_quantizer.py --quantization-method quantease
 * --num-iter 30`, `method/quantease.py` @e417741): start from the unquantized `W`
 * (`init: "weight"`), skip rounding in iterations 1, 4, …, 25 (`relax: true`; 0-based, the last
 * iteration always rounds), 30 iterations, grids fitted once on `W`. quantlab's monotone variant
 * is `init: "rtn", relax: false` (start from RTN, every sweep rounds, so the objective never
 * increases). Measured: in issue 19's held-out comparison (one real layer, identical (W, H)) the
 * reference default gave a 15% (4-bit) and 7% (3-bit) higher proxy loss than this variant; summed
 * over all 35 stories260K layers (`bench/reference_fidelity.ts`, 32 × 256 calibration tokens) it
 * gave a 4.2% (4-bit), 4.4% (3-bit) and 2.8% (2-bit) lower one — neither is better everywhere.
 * The variant is an option, the default is the reference's (`tests/reference/quantease_test.ts`
 * pins both against a transcription).
 *
 * Other differences from the reference, each also noted at its option: grids are fitted once on
 * the initialisation's target and stay fixed (the reference's structured-outlier path refits them
 * every iteration); with `init: "gptq"` the CD keeps GPTQ's own grids (the reference refits dynamic
 * groups on GPTQ's updated weight, which gives the same grids whenever `groupSize` divides
 * `blocksize`, and always for per-channel grids); the outlier variant's grids are min-max grids
 * of `W − S₀` (the initial outliers excluded from the range; the reference's unstructured path
 * instead trims about `outlier·cols/2` values at each end of every row's range); outlier values
 * are stored and counted as float32 (the reference keeps them in the model's fp16).
 *
 * The reference's outlier path (`method/quantease_outlier.py` @68ef128) is broken at HEAD, a
 * measured fact (issue 19, held-out run on identical (W, H)): each coordinate update is stored in
 * `P_hat` instead of `W_hat`, and the incremental term lacks its division by the diagonal
 * (`/Aq`), so it returns `W` unchanged. quantlab's outlier variant is the paper's Algorithm
 * (CD on `Q`, then the IHT step on `S`) and works: 3-bit, 1% outliers gave a 4% lower proxy loss
 * than the reference with those two lines fixed. `outlier > 0` therefore reproduces no reference
 * run bit for bit; it follows the paper.
 *
 * Precision: `R` is held in float64, but its full products and deferred block updates come from
 * the backend's float32 matmul, so `meta.objective` agrees with a float64 recomputation of
 * `tr((W − Wq) H (W − Wq)ᵀ)` to about 1e-5 relative (tested ≤ 1e-4), and rounding decisions
 * within ~1e-7 of a grid midpoint may differ from exact arithmetic.
 * @module
 */
import { checkLayerInputs } from "../core/inputs.ts";
import type { Tensor } from "../../tensor.ts";
import { OptionError, QuantlabError } from "../../errors.ts";
import {
  checkOptions as checkStrict,
  GPTQ_SPECS,
  MAX_ITERS,
  type OptionSpec,
} from "../core/options.ts";
import { cpuBackend } from "../../backend/cpu.ts";
import { actOrderPermutation } from "../core/hessian.ts";
import type { Backend } from "../../backend/backend.ts";
import type {
  LayerStats,
  QuantContext,
  QuantMeta,
  QuantResult,
  WeightQuantizer,
} from "../core/types.ts";
import type { QuantFormat } from "../core/types.ts";
import {
  bitsPerWeight,
  checkGroupColumns,
  dequantize,
  findParams,
  type MseOptions,
  packCodes,
  resolveBlocksize,
  resolveGroupSize,
  resolveMse,
  resolvePercdamp,
  roundHalfEven,
  validateBits,
} from "../core/grid.ts";
import { gptqQuantize } from "./gptq.ts";
import { mulberry32 } from "../../rng.ts";

/** Where the coordinate descent starts. */
export type QuantEaseInit = "rtn" | "gptq" | "weight";

/**
 * Options of {@linkcode quantease}, named after the reference (`model_quantizer.py` CLI flags and
 * `fasterquant` arguments).
 */
export interface QuantEaseOptions {
  /** Bits per weight code, 2–8 (`--wbits`). */
  bits: number;
  /** Columns per group; -1 (default) = one grid per output channel (`--groupsize`). */
  groupSize?: number;
  /** Symmetric grid (`--sym`; default false = asymmetric). */
  sym?: boolean;
  /**
   * MSE clipping search of the grids (`Quantizer(mse=True)`; the reference always passes
   * `mse=False`, the default here too).
   */
  mse?: boolean | MseOptions;
  /** CD sweeps over all columns (`--num-iter`, default 30). */
  numIter?: number;
  /**
   * Starting point (default `"weight"`, the reference's): `"rtn"` rounds the weight to nearest
   * on the grids (quantlab's variant; with `relax: false` the objective is monotone);
   * `"gptq"` runs {@linkcode gptqQuantize} first (`--quantization-method gptq_quantease`) and
   * keeps its grids; `"weight"` starts from the unquantized weight as the reference's plain
   * `quantease.py` and `quantease_outlier.py` do (`W_hat = W.clone()`; the first sweep then
   * quantizes column by column; needs `numIter ≥ 1`).
   */
  init?: QuantEaseInit;
  /**
   * Sweep columns in order of descending `diag(H)` (`--act-order`; default false); results are
   * returned in the original column order. Dynamic groups are then contiguous in that order and
   * `meta.gIdx` is stored, as GPTQ's act-order.
   */
  actOrder?: boolean;
  /**
   * Fit group grids on the original column order (`--static-groups`; default false). No effect
   * without groups or without `actOrder`.
   */
  staticGroups?: boolean;
  /**
   * Allow a `groupSize` that does not divide the columns (a shorter last group), as
   * `gptq.ts`'s option of the same name. Default false.
   */
  partialGroups?: boolean;
  /**
   * Dampening of the GPTQ initialisation only (`GPTQ_QuantEase.fasterquant(percdamp=.01)`): the
   * reference's CD uses the undamped `XᵀX`, and so does this one (columns with `Σ_jj = 0` keep
   * their value, re-rounded onto the grid, as the reference does). Default 0.01.
   */
  percdamp?: number;
  /**
   * Columns per lazy block of the sweep (default 128); also the GPTQ initialisation's
   * `blocksize`. Any value gives the same result up to float rounding.
   */
  blocksize?: number;
  /**
   * The reference code's heuristic of not rounding in iterations `t` (0-based) with
   * `t % 3 == 1`, `t ≤ 25` and `t < numIter − 1` (the last iteration always rounds). Default
   * true, as the reference; false: every sweep rounds, so `meta.objective` never increases (CD
   * on the grid).
   */
  relax?: boolean;
  /**
   * Fraction of weights kept in full precision (`--outlier`, e.g. 0.01; default 0 = plain
   * QuantEase). Unstructured: `k = round(outlier · rows · cols)` entries; structured:
   * `k = round(outlier · cols)` whole columns (`np.round`, half to even).
   */
  outlier?: number;
  /** Outliers as whole input columns (`--structure-outlier`; default false = any positions). */
  structureOutlier?: boolean;
  /**
   * Step multiplier of the outlier IHT step (`--alpha`, default 1): `S ← P_k(S + alpha/(2·λmax(Σ))
   * · (W − Q − S)·Σ)`. Descent is guaranteed for `alpha ≤ 2`.
   */
  alpha?: number;
}

/** Seconds and counts of one {@linkcode quanteaseQuantize} call (in `meta.timings`). */
export interface QuantEaseTimings {
  /** The initialisation (grids, RTN or GPTQ, outlier selection, the first `R = E·Σ`). */
  init: number;
  /** Power iteration for `λmax(Σ)` (outlier variant only). */
  lambdaMax: number;
  /** Seconds of each CD iteration (sweep, plus the outlier step and `R` refresh when used). */
  iterations: number[];
  /** In-block column updates, all iterations (TypeScript). */
  inBlock: number;
  /** Deferred block updates `R[:, rest] += Δ·Σ[block, rest]` (matmul + accumulation). */
  trailing: number;
  /** Floating point operations of those matmuls (`Σ 2·nr·nc·cols`). */
  trailingFlops: number;
  /** Full products `R = E·Σ` (start, and after each outlier step). */
  refresh: number;
}

type Resolved = Required<Omit<QuantEaseOptions, "mse">> & { mse?: boolean | MseOptions };

/** Keys, types and bounds of {@linkcode QuantEaseOptions} (strict: unknown keys are refused). */
export const QUANTEASE_OPTION_SPECS: Record<string, OptionSpec> = {
  ...GPTQ_SPECS,
  numIter: { type: "int", min: 0, max: MAX_ITERS },
  init: { type: "enum", values: ["rtn", "gptq", "weight"] },
  relax: { type: "boolean" },
  outlier: { type: "number", min: 0, lt: 1 },
  structureOutlier: { type: "boolean" },
  alpha: { type: "number", gt: 0, max: 1e6 },
};

function resolveOptions(opts: QuantEaseOptions): Resolved {
  checkStrict("quantease", opts, QUANTEASE_OPTION_SPECS, { unknown: "ignore" });
  validateBits(opts.bits);
  const groupSize = resolveGroupSize(opts.groupSize);
  const numIter = opts.numIter ?? 30;
  if (!(Number.isInteger(numIter) && numIter >= 0)) {
    throw new OptionError("numIter", `must be an integer ≥ 0, got ${numIter}`);
  }
  const init = opts.init ?? "weight";
  if (init !== "rtn" && init !== "gptq" && init !== "weight") {
    throw new OptionError("init", `must be "rtn", "gptq" or "weight", got ${String(init)}`);
  }
  if (init === "weight" && numIter === 0 && opts.init === undefined) {
    throw new OptionError(
      "numIter",
      `must be ≥ 1 with the default init "weight" (nothing is rounded yet); pass init: "rtn" for RTN`,
    );
  }
  if (init === "weight" && numIter === 0) {
    throw new OptionError("numIter", `must be ≥ 1 with init "weight" (nothing is rounded yet)`);
  }
  const percdamp = resolvePercdamp(opts.percdamp);
  const blocksize = resolveBlocksize(opts.blocksize);
  const outlier = opts.outlier ?? 0;
  if (!(typeof outlier === "number" && Number.isFinite(outlier) && outlier >= 0 && outlier < 1)) {
    throw new OptionError("outlier", `must be a fraction in [0, 1), got ${outlier}`);
  }
  const structureOutlier = opts.structureOutlier ?? false;
  if (typeof structureOutlier !== "boolean") {
    throw new OptionError("structureOutlier", `must be a boolean, got ${structureOutlier}`);
  }
  if (structureOutlier && outlier === 0) {
    throw new OptionError("structureOutlier", "needs outlier > 0 (the fraction of columns kept)");
  }
  const alpha = opts.alpha ?? 1;
  if (!(typeof alpha === "number" && Number.isFinite(alpha) && alpha > 0)) {
    throw new OptionError("alpha", `must be a finite number > 0, got ${alpha}`);
  }
  for (const k of ["sym", "actOrder", "staticGroups", "partialGroups", "relax"] as const) {
    if (opts[k] !== undefined && typeof opts[k] !== "boolean") {
      throw new OptionError(k, `must be a boolean, got ${opts[k]}`);
    }
  }
  resolveMse(opts.mse);
  return {
    bits: opts.bits,
    groupSize,
    sym: opts.sym ?? false,
    mse: opts.mse,
    numIter,
    init,
    actOrder: opts.actOrder ?? false,
    staticGroups: opts.staticGroups ?? false,
    partialGroups: opts.partialGroups ?? false,
    percdamp,
    blocksize,
    relax: opts.relax ?? true,
    outlier,
    structureOutlier,
    alpha,
  };
}

/** `out[r, c] = src[r, perm[c]]` (gather columns into processing order). */
function gatherCols(src: Float32Array, rows: number, cols: number, perm: Int32Array) {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const rr = r * cols;
    for (let c = 0; c < cols; c++) out[rr + c] = src[rr + perm[c]];
  }
  return out;
}

/** `out[r, perm[c]] = src[r, c]` (scatter columns back to the original order). */
function scatterCols<T extends Float32Array | Uint8Array>(
  src: T,
  out: T,
  rows: number,
  cols: number,
  perm: Int32Array,
): T {
  for (let r = 0; r < rows; r++) {
    const rr = r * cols;
    for (let c = 0; c < cols; c++) out[rr + perm[c]] = src[rr + c];
  }
  return out;
}

/** The `k`-th largest value (1-based) of `a`, which it reorders (Hoare quickselect). */
function kthLargest(a: Float64Array, k: number): number {
  let lo = 0, hi = a.length - 1;
  const target = k - 1; // index in descending order
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    // median of three as the pivot
    const x = a[lo], y = a[mid], z = a[hi];
    const pivot = x > y ? (y > z ? y : x > z ? z : x) : (x > z ? x : y > z ? z : y);
    let i = lo, j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else return a[target];
  }
  return a[target];
}

/**
 * Indices (ascending) of the `k` largest `score`s; ties at the threshold go to lower indices.
 */
function topK(score: Float64Array, k: number): Int32Array {
  const n = score.length;
  if (k <= 0) return new Int32Array(0);
  if (k >= n) return Int32Array.from({ length: n }, (_, i) => i);
  const thr = kthLargest(score.slice(), k);
  let above = 0;
  for (let i = 0; i < n; i++) if (score[i] > thr) above++;
  let ties = k - above;
  const out = new Int32Array(k);
  let m = 0;
  for (let i = 0; i < n; i++) {
    const s = score[i];
    if (s > thr || (s === thr && ties-- > 0)) out[m++] = i;
  }
  return out;
}

/**
 * Projection onto k-sparse (unstructured: the `k` largest `|x|`) or k-column-sparse
 * (structured: the `k` columns of largest L2 norm) matrices. Returns the kept flat indices in
 * processing order (ascending) and the kept columns (structured) or undefined.
 */
function selectOutliers(
  X: Float64Array | Float32Array,
  dims: { rows: number; cols: number; k: number; structured: boolean },
): { idx: Int32Array; cols?: Int32Array } {
  const { rows, cols, k, structured } = dims;
  if (structured) {
    const norms = new Float64Array(cols);
    for (let r = 0; r < rows; r++) {
      const rr = r * cols;
      for (let c = 0; c < cols; c++) norms[c] += X[rr + c] * X[rr + c];
    }
    const keep = topK(norms, k);
    const idx = new Int32Array(rows * keep.length);
    let m = 0;
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < keep.length; i++) idx[m++] = r * cols + keep[i];
    }
    return { idx, cols: keep };
  }
  const abs = new Float64Array(X.length);
  for (let i = 0; i < X.length; i++) abs[i] = Math.abs(X[i]);
  return { idx: topK(abs, k) };
}

/** Largest eigenvalue of the symmetric `n × n` matrix `A` by seeded power iteration. */
function lambdaMax(A: Float64Array, n: number): number {
  const rng = mulberry32(0x9e3779b9);
  let v = new Float64Array(n);
  for (let i = 0; i < n; i++) v[i] = rng() + 0.5;
  let w = new Float64Array(n);
  let lambda = 0;
  for (let it = 0; it < 300; it++) {
    let nv = 0;
    for (let i = 0; i < n; i++) nv += v[i] * v[i];
    nv = Math.sqrt(nv);
    if (!(nv > 0)) return lambda;
    for (let i = 0; i < n; i++) v[i] /= nv;
    let rq = 0;
    for (let i = 0; i < n; i++) {
      const ri = i * n;
      let s = 0;
      for (let j = 0; j < n; j++) s += A[ri + j] * v[j];
      w[i] = s;
      rq += v[i] * s;
    }
    const done = it > 5 && Math.abs(rq - lambda) <= 1e-7 * Math.abs(rq);
    lambda = rq;
    [v, w] = [w, v];
    if (done) break;
  }
  return lambda;
}

/** State of the sweep, all in processing (act-order) order. */
interface SweepState {
  rows: number;
  cols: number;
  /** Current rounded part, float32 `[rows, cols]`. */
  Q: Float32Array;
  /** Codes of `Q` (valid after a rounding sweep). */
  codes: Uint8Array;
  /** Maintained `R = (W − Q − S)·Σ`, float64 `[rows, cols]`. */
  R: Float64Array;
  /** `Σ`, float64 and float32 (the matmul operand). */
  H: Float64Array;
  H32: Float32Array;
  scales: Float32Array;
  zeros: Float32Array;
  ngroups: number;
  colGroup: Int32Array;
  maxq: number;
  blocksize: number;
  backend: Backend;
  timings: QuantEaseTimings;
}

/**
 * One CD sweep over all columns (Algorithm 2's inner loop), in blocks. `round = false` is the
 * reference's relaxed sweep (unconstrained minimiser, no rounding).
 */
async function sweep(st: SweepState, round: boolean): Promise<void> {
  const { rows, cols, Q, codes, R, H, H32, scales, zeros, ngroups, colGroup, maxq } = st;
  for (let i1 = 0; i1 < cols; i1 += st.blocksize) {
    const i2 = Math.min(i1 + st.blocksize, cols), count = i2 - i1;
    let t0 = performance.now();
    const Delta = new Float64Array(rows * count);
    const rowHas = new Uint8Array(rows), colHas = new Uint8Array(count);
    for (let r = 0; r < rows; r++) {
      const rr = r * cols, db = r * count, pr = r * ngroups;
      for (let i = 0; i < count; i++) {
        const c = i1 + i, at = rr + c;
        const d = H[c * cols + c];
        const qOld = Q[at];
        const u = d > 0 ? qOld + R[at] / d : qOld;
        let q: number;
        if (round) {
          const g = pr + colGroup[c];
          const s = scales[g], z = zeros[g];
          const t = roundHalfEven(Math.fround(u / s)) + z;
          const code = t >= 0 ? (t <= maxq ? t : maxq) : 0;
          codes[at] = code;
          q = Math.fround(s * (code - z));
        } else {
          q = Math.fround(u);
        }
        const delta = qOld - q; // E[:, c] grows by delta
        if (delta === 0) continue;
        Q[at] = q;
        Delta[db + i] = delta;
        rowHas[r] = 1;
        colHas[i] = 1;
        const hr = c * cols + i1, rb = rr + i1;
        for (let k = 0; k < count; k++) R[rb + k] += delta * H[hr + k];
      }
    }
    st.timings.inBlock += (performance.now() - t0) / 1000;
    if (count === cols) continue;
    t0 = performance.now();
    const nzRows: number[] = [], nzCols: number[] = [];
    for (let r = 0; r < rows; r++) if (rowHas[r]) nzRows.push(r);
    for (let i = 0; i < count; i++) if (colHas[i]) nzCols.push(i);
    const nr = nzRows.length, nc = nzCols.length;
    if (nr === 0) {
      st.timings.trailing += (performance.now() - t0) / 1000;
      continue;
    }
    const A = new Float32Array(nr * nc);
    for (let a = 0; a < nr; a++) {
      const db = nzRows[a] * count;
      for (let b = 0; b < nc; b++) A[a * nc + b] = Delta[db + nzCols[b]];
    }
    const B = new Float32Array(nc * cols);
    for (let b = 0; b < nc; b++) {
      const c = i1 + nzCols[b];
      B.set(H32.subarray(c * cols, (c + 1) * cols), b * cols);
    }
    const M = (await st.backend.matmul(
      { shape: [nr, nc], data: A },
      { shape: [nc, cols], data: B },
    )).data;
    for (let a = 0; a < nr; a++) {
      const rr = nzRows[a] * cols, mr = a * cols;
      for (let k = 0; k < i1; k++) R[rr + k] += M[mr + k];
      for (let k = i2; k < cols; k++) R[rr + k] += M[mr + k];
    }
    st.timings.trailingFlops += 2 * nr * nc * cols;
    st.timings.trailing += (performance.now() - t0) / 1000;
  }
}

/**
 * The outlier variant's IHT step, in place on `S`: `S ← P_k(S + step · (W − Q − S)·Σ)` with the
 * maintained product `R` (the reference's `H -= R * step` and top-k projection). Returns the kept
 * positions. The caller refreshes `R` afterwards.
 */
function outlierStep(
  st: SweepState,
  S: Float32Array,
  o: { k: number; structured: boolean; step: number },
): { idx: Int32Array; cols?: Int32Array } {
  const { rows, cols } = st;
  const St = new Float64Array(rows * cols);
  for (let i = 0; i < St.length; i++) St[i] = S[i] + o.step * st.R[i];
  const sel = selectOutliers(St, { rows, cols, k: o.k, structured: o.structured });
  S.fill(0);
  for (const i of sel.idx) S[i] = St[i];
  return sel;
}

/**
 * `R = E·Σ` with `E = T − Q − S` through the backend (float32, like the per-block updates), and
 * the objective `Σ E∘R` in float64. Runs at the start and after each outlier step.
 */
async function refresh(
  st: SweepState,
  T: Float32Array,
  S: Float32Array | undefined,
): Promise<number> {
  const t0 = performance.now();
  const { rows, cols, Q, R } = st;
  const E = new Float32Array(rows * cols);
  for (let i = 0; i < E.length; i++) E[i] = T[i] - Q[i] - (S ? S[i] : 0);
  const P = (await st.backend.matmul(
    { shape: [rows, cols], data: E },
    { shape: [cols, cols], data: st.H32 },
  )).data;
  R.set(P);
  st.timings.refresh += (performance.now() - t0) / 1000;
  return objective(st, T, S);
}

/** `tr(E Σ Eᵀ) = Σ E∘R` from the maintained product, in float64. */
function objective(st: SweepState, T: Float32Array, S: Float32Array | undefined): number {
  const { Q, R } = st;
  let f = 0;
  for (let i = 0; i < R.length; i++) f += (T[i] - Q[i] - (S ? S[i] : 0)) * R[i];
  return f;
}

/**
 * QuantEase of one `[rows, cols]` weight (rows = output channels) given `stats.H` (`cols × cols`),
 * the math of {@linkcode quantease}, exported for scripts and tests. Steps:
 * 1. `actOrder`: columns permuted by descending `diag(H)` (stable sort), `H` likewise;
 * 2. outlier variant: `S₀` = the `k` largest-magnitude weights (or the `k` columns of largest
 *    norm), as the reference initialises `H`; the rounded part targets `W − S₀`;
 * 3. grids (`findParams`, as `rtnQuantize`) fitted once on `W − S₀`: per channel, or
 *    per group of `groupSize` columns in processing order (`staticGroups`: original order);
 *    with `init: "gptq"` the grids are GPTQ's own; the grids never change afterwards;
 * 4. `Q₀` = RTN of `W − S₀` on those grids, or GPTQ's result, or `W − S₀` itself (`"weight"`);
 * 5. `numIter` CD sweeps (see the module doc), then for the outlier variant the IHT step
 *    `S ← P_k(S + alpha/(2λmax) · (W − Q − S)Σ)` (the reference's `H -= R * step` and top-k
 *    projection; `λmax` by power iteration) and a full refresh `R = (W − Q − S)Σ`.
 *
 * Returns `Wq = Q` (plain; `dequantize(meta)` rebuilds it bit-exactly) or `Wq = fround(Q + S)`
 * (outlier variant; {@linkcode dequantizeQuantease}). `loss` and `meta.objective[t]` are
 * `tr((W − Wq) H (W − Wq)ᵀ)` with the undamped `H`, from the maintained product (`t = 0`: the
 * initialisation; `t`: after iteration `t`).
 *
 * `meta` (codes in the original column order, scales/zeros in the `grid.ts` layout, `gIdx`,
 * `perm`, `gIdxStored` as GPTQ's) adds `objective: number[]` (length `numIter + 1`), `timings`
 * ({@linkcode QuantEaseTimings}), the resolved `numIter`, `init`, `relax`, `percdamp`,
 * `blocksize`, and for the outlier variant `outlier`, `structureOutlier`, `alpha`, `lambdaMax`,
 * `outlierIdx: Int32Array` (flat `row · cols + col` indices, original order, ascending),
 * `outlierVal: Float32Array` (the values of `S` there) and, structured, `outlierCols:
 * Int32Array`. `bitsPerWeight` is `grid.ts`'s `bitsPerWeight(meta)` plus, per weight,
 * `(OUTLIER_VALUE_BITS + OUTLIER_INDEX_BITS) · k` (unstructured) or `OUTLIER_VALUE_BITS · k ·
 * rows + OUTLIER_INDEX_BITS · k` (structured), i.e. 32-bit values and 32-bit positions.
 */
export async function quanteaseQuantize(
  W: Tensor,
  stats: LayerStats,
  options: QuantEaseOptions & QuantContext,
): Promise<QuantResult> {
  const o = resolveOptions(options);
  const layer = options.layer ?? "weight";
  const backend = options.backend ?? cpuBackend;
  const { rows, cols, H: H0 } = checkLayerInputs("quantease", W, stats, { layer });
  const gs = o.groupSize;
  checkGroupColumns(cols, { ...o, layer });
  const timings: QuantEaseTimings = {
    init: 0,
    lambdaMax: 0,
    iterations: [],
    inBlock: 0,
    trailing: 0,
    trailingFlops: 0,
    refresh: 0,
  };
  let t0 = performance.now();

  // 1. act-order.
  let perm: Int32Array | undefined;
  let H = Float64Array.from(H0);
  let T = W.data.slice(); // the target W, processing order
  if (o.actOrder) {
    const diag = new Float64Array(cols);
    for (let i = 0; i < cols; i++) diag[i] = H[i * cols + i];
    perm = actOrderPermutation(diag);
    T = gatherCols(W.data, rows, cols, perm);
    const Hp = new Float64Array(cols * cols);
    for (let i = 0; i < cols; i++) {
      const src = perm[i] * cols, dst = i * cols;
      for (let j = 0; j < cols; j++) Hp[dst + j] = H[src + perm[j]];
    }
    H = Hp;
  }
  const toOrig = (a: Float32Array) =>
    perm ? scatterCols(a, new Float32Array(a.length), rows, cols, perm) : a;

  // 2. outliers: S₀ and the rounded part's target T − S₀.
  const withOutliers = o.outlier > 0;
  const k = withOutliers
    ? roundHalfEven(o.structureOutlier ? cols * o.outlier : rows * cols * o.outlier)
    : 0;
  let S: Float32Array | undefined;
  let sel: { idx: Int32Array; cols?: Int32Array } | undefined;
  const Tq = T.slice();
  if (withOutliers) {
    S = new Float32Array(rows * cols);
    sel = selectOutliers(T, { rows, cols, k, structured: o.structureOutlier });
    for (const i of sel.idx) {
      S[i] = T[i];
      Tq[i] = 0;
    }
  }

  // 3–4. grids and Q₀.
  const grid = { bits: o.bits, sym: o.sym, mse: o.mse };
  const maxq = 2 ** o.bits - 1;
  const ngroups = gs > 0 ? Math.ceil(cols / gs) : 1;
  let scales: Float32Array = new Float32Array(rows * ngroups);
  let zeros: Float32Array = new Float32Array(rows * ngroups);
  const colGroup = new Int32Array(cols);
  let gIdx: Int32Array | undefined;
  let gIdxStored = false;
  const isStatic = o.staticGroups && gs > 0 && o.actOrder;
  let Q: Float32Array;
  let codes = new Uint8Array(rows * cols);
  if (o.init === "gptq") {
    const g = await gptqQuantize({ shape: [rows, cols], data: toOrig(Tq) }, stats, {
      bits: o.bits,
      groupSize: gs,
      sym: o.sym,
      mse: o.mse,
      percdamp: o.percdamp,
      blocksize: o.blocksize,
      actOrder: o.actOrder,
      staticGroups: o.staticGroups,
      partialGroups: o.partialGroups,
      backend,
      layer,
    });
    scales = g.meta.scales;
    zeros = g.meta.zeros;
    gIdx = g.meta.gIdx;
    gIdxStored = g.meta.gIdxStored ?? false;
    for (let c = 0; c < cols; c++) {
      const j = perm ? perm[c] : c;
      colGroup[c] = gIdx ? gIdx[j] : gs > 0 ? Math.floor(j / gs) : 0;
    }
    Q = perm ? gatherCols(g.Wq.data, rows, cols, perm) : g.Wq.data.slice();
    if (perm) {
      const gc = g.meta.codes;
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) codes[r * cols + c] = gc[r * cols + perm[c]];
      }
    } else codes = g.meta.codes.slice();
  } else {
    const setGroup = (gi: number, p: { scale: Float32Array; zero: Float32Array }) => {
      for (let r = 0; r < rows; r++) {
        scales[r * ngroups + gi] = p.scale[r];
        zeros[r * ngroups + gi] = p.zero[r];
      }
    };
    const src: Tensor = { shape: [rows, cols], data: isStatic ? toOrig(Tq) : Tq };
    if (gs > 0) {
      for (let gi = 0; gi < ngroups; gi++) {
        setGroup(
          gi,
          findParams(src, { ...grid, colStart: gi * gs, colEnd: Math.min(gi * gs + gs, cols) }),
        );
      }
      for (let c = 0; c < cols; c++) {
        colGroup[c] = Math.floor((isStatic ? perm![c] : c) / gs);
      }
      gIdxStored = o.actOrder && !isStatic;
      gIdx = new Int32Array(cols);
      for (let c = 0; c < cols; c++) gIdx[perm ? perm[c] : c] = colGroup[c];
    } else {
      setGroup(0, findParams(src, grid));
    }
    Q = Tq.slice();
    if (o.init === "rtn") {
      for (let r = 0; r < rows; r++) {
        const rr = r * cols, pr = r * ngroups;
        for (let c = 0; c < cols; c++) {
          const g = pr + colGroup[c];
          const s = scales[g], z = zeros[g];
          const t = roundHalfEven(Math.fround(Tq[rr + c] / s)) + z;
          const code = t >= 0 ? (t <= maxq ? t : maxq) : 0;
          codes[rr + c] = code;
          Q[rr + c] = Math.fround(s * (code - z));
        }
      }
    }
  }

  const st: SweepState = {
    rows,
    cols,
    Q,
    codes,
    R: new Float64Array(rows * cols),
    H,
    H32: Float32Array.from(H),
    scales,
    zeros,
    ngroups,
    colGroup,
    maxq,
    blocksize: o.blocksize,
    backend,
    timings,
  };
  const objectiveValues = [await refresh(st, T, S)];
  timings.init = (performance.now() - t0) / 1000;

  let lambda = 0;
  if (withOutliers && k > 0) {
    t0 = performance.now();
    lambda = lambdaMax(H, cols);
    timings.lambdaMax = (performance.now() - t0) / 1000;
  }

  // 5. iterations.
  for (let it = 0; it < o.numIter; it++) {
    t0 = performance.now();
    const round = !o.relax || it % 3 !== 1 || it === o.numIter - 1 || it > 25;
    await sweep(st, round);
    if (withOutliers && k > 0 && lambda > 0) {
      sel = outlierStep(st, S!, { k, structured: o.structureOutlier, step: o.alpha / lambda / 2 });
      objectiveValues.push(await refresh(st, T, S));
    } else {
      objectiveValues.push(objective(st, T, S));
    }
    timings.iterations.push((performance.now() - t0) / 1000);
  }

  // Results in the original column order.
  const Qo = toOrig(st.Q);
  const codesOut = perm
    ? scatterCols(st.codes, new Uint8Array(rows * cols), rows, cols, perm)
    : st.codes;
  const meta: QuantMeta = {
    method: "quantease",
    bits: o.bits,
    groupSize: gs,
    sym: o.sym,
    shape: [rows, cols],
    codes: codesOut,
    packed: packCodes(codesOut, o.bits),
    scales,
    zeros,
    gIdx,
    perm,
    gIdxStored,
    actOrder: o.actOrder,
    staticGroups: o.staticGroups && gs > 0,
    numIter: o.numIter,
    init: o.init,
    relax: o.relax,
    percdamp: o.percdamp,
    blocksize: o.blocksize,
    objective: objectiveValues,
    timings,
  };
  let Wq = Qo;
  let extraBits = 0;
  if (withOutliers) {
    // Flat indices in the original order, ascending, with their float32 values.
    const n = sel!.idx.length;
    const pairs = new Array<[number, number]>(n);
    for (let m = 0; m < n; m++) {
      const i = sel!.idx[m], r = Math.floor(i / cols), c = i % cols;
      pairs[m] = [r * cols + (perm ? perm[c] : c), S![i]];
    }
    pairs.sort((a, b) => a[0] - b[0]);
    const outlierIdx = Int32Array.from(pairs, (p) => p[0]);
    const outlierVal = Float32Array.from(pairs, (p) => p[1]);
    meta.outlier = o.outlier;
    meta.structureOutlier = o.structureOutlier;
    meta.alpha = o.alpha;
    meta.lambdaMax = lambda;
    meta.outlierIdx = outlierIdx;
    meta.outlierVal = outlierVal;
    if (o.structureOutlier) {
      meta.outlierCols = Int32Array.from(sel!.cols!, (c) => (perm ? perm[c] : c)).sort();
      extraBits = OUTLIER_VALUE_BITS * outlierIdx.length +
        OUTLIER_INDEX_BITS * (meta.outlierCols as Int32Array).length;
    } else {
      extraBits = (OUTLIER_VALUE_BITS + OUTLIER_INDEX_BITS) * outlierIdx.length;
    }
    Wq = dequantizeQuantease(meta).data;
  }
  return {
    Wq: { shape: [rows, cols], data: Wq },
    meta,
    bitsPerWeight: bitsPerWeight(meta) + extraBits / (rows * cols),
    loss: objectiveValues[objectiveValues.length - 1],
  };
}

/** Bits per stored outlier value: float32, exactly what {@linkcode dequantizeQuantease} adds. */
export const OUTLIER_VALUE_BITS = 32;
/**
 * Bits per stored outlier position: a 32-bit flat index per unstructured outlier, a 32-bit
 * column index per structured outlier column.
 */
export const OUTLIER_INDEX_BITS = 32;

/**
 * Rebuilds a QuantEase `Wq` bit-exactly from `meta`: the grid part `dequantize(meta)` (grid.ts),
 * then `Wq[i] = fround(Wq[i] + meta.outlierVal[m])` at each `i = meta.outlierIdx[m]` (flat
 * `row · cols + col` indices in the original column order). Without outliers this is
 * `dequantize(meta)` itself.
 */
export function dequantizeQuantease(meta: QuantMeta): Tensor {
  const D = dequantize(meta);
  const idx = meta.outlierIdx as Int32Array | undefined;
  const val = meta.outlierVal as Float32Array | undefined;
  if (idx === undefined && val === undefined) return D;
  if (!idx || !val || idx.length !== val.length) {
    throw new QuantlabError(
      `dequantizeQuantease: outlierIdx (${idx?.length}) and outlierVal (${val?.length}) must come together with equal lengths`,
    );
  }
  const n = D.data.length;
  for (let m = 0; m < idx.length; m++) {
    const i = idx[m];
    if (!(i >= 0 && i < n)) {
      throw new QuantlabError(`dequantizeQuantease: outlier index ${i} outside [0, ${n})`);
    }
    D.data[i] = D.data[i] + val[m];
  }
  return D;
}

/**
 * The QuantEase weight quantizer (needs `stats.H`). Options map to the reference as documented on
 * {@linkcode QuantEaseOptions}: `bits` ↔ `--wbits`, `groupSize` ↔ `--groupsize`, `sym` ↔
 * `--sym`, `numIter` ↔ `--num-iter` (30), `init: "gptq"` ↔ `--quantization-method
 * gptq_quantease`, `actOrder` ↔ `--act-order`, `staticGroups` ↔ `--static-groups`, `percdamp` ↔
 * GPTQ's `percdamp` (initialisation only), `outlier` ↔ `--outlier`, `structureOutlier` ↔
 * `--structure-outlier`, `alpha` ↔ `--alpha`, `relax` ↔ the code's skipped-rounding iterations.
 * `quantease({ bits: 4 })` is `model_quantizer.py --quantization-method quantease --wbits 4
 * --num-iter 30` (its defaults: start from `W`, relaxed iterations); `quantease({ bits: 4,
 * init: "rtn", relax: false })` is quantlab's monotone variant.
 * Bad options throw {@linkcode OptionError} naming the option; a `groupSize` that does not divide
 * a layer's columns throws at quantize time, naming the layer.
 *
 * @example
 * ```ts
 * const q = quantease({ bits: 3, numIter: 30, init: "gptq", actOrder: true });
 * const { Wq, meta } = await q.quantizeWeight(W, { H, nsamples: 128 });
 * const o = quantease({ bits: 3, outlier: 0.01 }); // Wq = dequantizeQuantease(meta)
 * ```
 */
export function quantease(options: QuantEaseOptions): WeightQuantizer {
  checkStrict("quantease", options, QUANTEASE_OPTION_SPECS);
  const o = resolveOptions(options);
  return {
    name: "quantease",
    needsHessian: true,
    options: { ...o },
    checkColumns: (cols, layer) => checkGroupColumns(cols, { ...o, layer }),
    quantizeWeight: (W, stats, ctx) => quanteaseQuantize(W, stats, { ...o, ...ctx }),
  };
}

/** Bits per weight of a QuantEase `meta`: the grid's, plus each stored outlier and index. */
export function quanteaseBitsPerWeight(meta: QuantMeta): number {
  const [rows, cols] = meta.shape;
  const idx = meta.outlierIdx as Int32Array | undefined;
  const oc = meta.outlierCols as Int32Array | undefined;
  const extraBits = !idx
    ? 0
    : meta.structureOutlier
    ? OUTLIER_VALUE_BITS * idx.length + OUTLIER_INDEX_BITS * (oc?.length ?? 0)
    : (OUTLIER_VALUE_BITS + OUTLIER_INDEX_BITS) * idx.length;
  return bitsPerWeight(meta) + extraBits / (rows * cols);
}

/** QuantEase's storage format: the grid plus sparse float32 outliers. */
export const quanteaseFormat: QuantFormat = {
  method: "quantease",
  dequantize: dequantizeQuantease,
  bitsPerWeight: quanteaseBitsPerWeight,
};
