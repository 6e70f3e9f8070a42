/**
 * QuIP's rounding methods in the integer domain (reference Cornell-RelaxML/QuIP
 * `vector_balance.py`): a weight `W` (`rows × cols`, real values on the grid scale `[0, maxq]`)
 * and an SPD `H` give integer codes `Q ∈ {0..maxq}` minimizing the proxy loss
 * `tr((Q − W) H (Q − W)ᵀ)`. All arithmetic is float64.
 *
 * - `ldlq`: `H = (Ú + I) D (Ú + I)ᵀ` with `Ú` strictly upper triangular; columns in order,
 *   `Q_k = clamp(⌊W_k + (W_{<k} − Q_{<k}) Ú_{<k,k} + ½⌋)` (the paper's LDLQ, equal to OPTQ/GPTQ).
 *   Lazy batches: feedback inside a block of `blocksize` columns in TypeScript, to later blocks
 *   through one GEMM per block (reference `round_ldl_block`, `--lazy_batch`).
 * - greedy passes (`npasses`): coordinate descent, each coordinate set to the best code given all
 *   others, `clamp(round(Q_k − (S H)_k / H_kk))` with `S = Q − W`; `S H` is kept current (in-block
 *   updates in TypeScript, the rest by one GEMM per block). Stops at a fixed point.
 * - `allbal`: greedy passes started from the unrounded `W`.
 * - `ldlbal_admm`: the LDLQ recursion with a feedback matrix from the reference's ADMM
 *   (`ldlp_admm`), then greedy passes.
 * @module
 */
import { roundHalfEven } from "../core/grid.ts";
import {
  cholesky,
  choleskyBlocked,
  type GemmF64,
  invertLowerBlocked,
  invertTriangular,
  transposeSquare,
} from "../core/linalg.ts";
import type { Rng } from "../../rng.ts";

/** Above this size the factorizations use the blocked GEMM path. */
const BLOCKED_MIN = 384;

/** The QuIP rounding methods (reference `--quant`). */
export type QuipMethod = "ldlq" | "ldlqRG" | "allbal" | "ldlbal_admm";

/**
 * Which way `ldlq` / `ldlqRG` visit the columns: `"gptq"` = first to last in the method's order
 * (LDLQ = GPTQ, the paper's form); `"reference"` = as Cornell-RelaxML/QuIP's `round_ldl`, last
 * to first (for `ldlqRG`: `argsort(diag H)` ascending, visited last to first).
 */
export type ColumnOrder = "gptq" | "reference";

/**
 * When greedy passes clamp codes to `[0, maxq]`: `"step"` = each coordinate as it is updated
 * (a pass never increases the proxy loss); `"pass"` = the reference's: coordinates are rounded
 * unclamped during a pass and the whole matrix is clamped after it, while the residual
 * `S = Q − W` the next pass uses keeps the unclamped values (as `round_ldl` / `round_allbal`).
 */
export type GreedyClamp = "step" | "pass";

/** Shape of the rounding problem. */
export interface RoundDims {
  /** Rows (output channels; independent problems sharing `H`). */
  rows: number;
  /** Columns (inputs; `H` is `cols × cols`). */
  cols: number;
}

/** Shared settings of the rounding routines. */
export interface RoundOptions {
  /** Largest code `2^bits − 1`. */
  maxq: number;
  /** Columns per lazy batch (a value ≥ cols means no batching). */
  blocksize: number;
  /** Stochastic rounding (reference `--unbiased`): `⌊x + η⌋`, `η ~ U[0, 1)` instead of ½. */
  unbiased: boolean;
  /** Random source of `unbiased`. */
  rng: Rng;
  /** float64 GEMM for the lazy-batch products and factorizations. */
  gemm: GemmF64;
}

function reverseBoth(A: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * n);
  const last = n * n - 1;
  for (let p = 0; p <= last; p++) out[p] = A[last - p];
  return out;
}

async function lowerCholesky(A: Float64Array, n: number, gemm: GemmF64): Promise<Float64Array> {
  return n > BLOCKED_MIN ? await choleskyBlocked(A, n, { gemm }) : cholesky(A, n);
}

async function invertLower(L: Float64Array, n: number, gemm: GemmF64): Promise<Float64Array> {
  return n > BLOCKED_MIN ? await invertLowerBlocked(L, n, { gemm }) : invertTriangular(L, n);
}

/**
 * The factorization `H = (Ú + I) · diag(D) · (Ú + I)ᵀ` with `Ú` strictly upper triangular
 * (`A = Ú`), from the upper Cholesky factor `H = R Rᵀ` (`R = J·chol(J H J)·J`, `J` the index
 * reversal): `Ú + I = R·diag(R)⁻¹`, `D = diag(R)²`. Throws `NotPositiveDefiniteError`.
 */
export async function udlFactor(
  H: Float64Array,
  n: number,
  gemm: GemmF64,
): Promise<{ A: Float64Array; D: Float64Array }> {
  const R = reverseBoth(await lowerCholesky(reverseBoth(H, n), n, gemm), n);
  const A = new Float64Array(n * n), D = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    const rjj = R[j * n + j];
    D[j] = rjj * rjj;
    for (let i = 0; i < j; i++) A[i * n + j] = R[i * n + j] / rjj;
  }
  return { A, D };
}

/**
 * The LDLQ recursion with strictly upper feedback `A` (`cols × cols`), lazy-batched:
 * `Q_k = clamp(⌊T_k + η⌋, 0, maxq)` with targets `T = W + (W − Q)·A` built column by column.
 * With `D` (from {@linkcode udlFactor}) also returns the per-row proxy loss, which for LDLQ is
 * exactly `Σ_k D_k (Q_k − T_k)²` (the paper's `tr(R D Rᵀ)` identity, clamping included).
 */
export async function ldlqRound(
  W: Float64Array,
  dims: RoundDims,
  A: Float64Array,
  D: Float64Array | undefined,
  o: RoundOptions,
): Promise<{ Q: Float64Array; rowLoss?: Float64Array }> {
  const { rows: m, cols: d } = dims;
  const T = W.slice();
  const Q = new Float64Array(m * d);
  const rowLoss = D ? new Float64Array(m) : undefined;
  const bs = Math.max(1, Math.min(o.blocksize, d));
  for (let i1 = 0; i1 < d; i1 += bs) {
    const i2 = Math.min(i1 + bs, d), b = i2 - i1;
    const E = new Float64Array(m * b);
    for (let r = 0; r < m; r++) {
      const ro = r * d, eo = r * b;
      let rl = 0;
      for (let k = i1; k < i2; k++) {
        const t = T[ro + k];
        const eta = o.unbiased ? o.rng() : 0.5;
        let q = Math.floor(t + eta);
        q = q < 0 ? 0 : q > o.maxq ? o.maxq : q;
        Q[ro + k] = q;
        if (D) rl += D[k] * (q - t) * (q - t);
        const e = W[ro + k] - q;
        E[eo + k - i1] = e;
        if (e !== 0) {
          const ak = k * d;
          for (let j = k + 1; j < i2; j++) T[ro + j] += e * A[ak + j];
        }
      }
      if (rowLoss) rowLoss[r] += rl;
    }
    if (i2 < d) {
      const rest = d - i2;
      const B = new Float64Array(b * rest);
      for (let i = 0; i < b; i++) B.set(A.subarray((i1 + i) * d + i2, (i1 + i + 1) * d), i * rest);
      const P = await o.gemm(E, B, { m, k: b, n: rest });
      for (let r = 0; r < m; r++) {
        const ro = r * d + i2, po = r * rest;
        for (let j = 0; j < rest; j++) T[ro + j] += P[po + j];
      }
    }
  }
  return { Q, rowLoss };
}

/** Per-row `Σ_k S_rk (S H)_rk` with `S = Q − W` (one GEMM). */
export async function rowProxyLoss(
  W: Float64Array,
  Q: Float64Array,
  H: Float64Array,
  dims: RoundDims,
  gemm: GemmF64,
): Promise<Float64Array> {
  const { rows: m, cols: d } = dims;
  const S = new Float64Array(m * d);
  for (let i = 0; i < S.length; i++) S[i] = Q[i] - W[i];
  const G = await gemm(S, H, { m, k: d, n: d });
  const out = new Float64Array(m);
  for (let r = 0; r < m; r++) {
    let s = 0;
    for (let k = r * d; k < (r + 1) * d; k++) s += S[k] * G[k];
    out[r] = s;
  }
  return out;
}

/**
 * Greedy coordinate passes over the columns in order (reference `round_ldl`'s greedy loop,
 * `round_allbal`), modifying `Q` in place: code `k` of each row becomes
 * `clamp(round(Q_k − (S H)_k / H_kk), 0, maxq)`, the best code given the others (stochastic
 * `⌊· + η⌋` when `stochastic`). `S H` is kept current through in-block updates and one GEMM
 * per block with changes. At most `npasses` passes; stops after a pass that changes nothing.
 * Returns the passes run and the final per-row proxy loss `Σ S∘(S H)`.
 */
export async function greedyPasses(
  W: Float64Array,
  Q: Float64Array,
  H: Float64Array,
  dims: RoundDims,
  o: RoundOptions & { npasses: number; stochastic: boolean; clamp?: GreedyClamp },
): Promise<{ passes: number; rowLoss: Float64Array }> {
  const perPass = o.clamp === "pass";
  const { rows: m, cols: d } = dims;
  const S = new Float64Array(m * d);
  for (let i = 0; i < S.length; i++) S[i] = Q[i] - W[i];
  const G = await o.gemm(S, H, { m, k: d, n: d });
  const bs = Math.max(1, Math.min(o.blocksize, d));
  let passes = 0;
  for (let pass = 0; pass < o.npasses; pass++) {
    passes++;
    let changed = 0;
    const before = perPass ? Q.slice() : undefined;
    for (let i1 = 0; i1 < d; i1 += bs) {
      const i2 = Math.min(i1 + bs, d), b = i2 - i1;
      const Dl = new Float64Array(m * b);
      let any = false;
      for (let r = 0; r < m; r++) {
        const ro = r * d;
        for (let k = i1; k < i2; k++) {
          const hk = k * d;
          const target = Q[ro + k] - G[ro + k] / H[hk + k];
          let nv = o.stochastic ? Math.floor(target + o.rng()) : roundHalfEven(target);
          if (!perPass) nv = nv < 0 ? 0 : nv > o.maxq ? o.maxq : nv;
          const delta = nv - Q[ro + k];
          if (delta === 0) continue;
          Q[ro + k] = nv;
          S[ro + k] += delta;
          Dl[r * b + k - i1] = delta;
          any = true;
          changed++;
          for (let j = i1; j < i2; j++) G[ro + j] += delta * H[hk + j];
        }
      }
      if (any && b < d) {
        const P = await o.gemm(Dl, H.subarray(i1 * d, i2 * d), { m, k: b, n: d });
        for (let r = 0; r < m; r++) {
          const ro = r * d;
          for (let j = 0; j < i1; j++) G[ro + j] += P[ro + j];
          for (let j = i2; j < d; j++) G[ro + j] += P[ro + j];
        }
      }
    }
    if (before) {
      // The reference: clamp after the pass; S (and so S·H) keeps the unclamped values.
      changed = 0;
      for (let i = 0; i < Q.length; i++) {
        const q = Q[i] < 0 ? 0 : Q[i] > o.maxq ? o.maxq : Q[i];
        Q[i] = q;
        if (q !== before[i]) changed++;
      }
    }
    if (changed === 0) break;
  }
  if (perPass) {
    return { passes, rowLoss: await rowProxyLoss(W, Q, H, dims, o.gemm) };
  }
  const rowLoss = new Float64Array(m);
  for (let r = 0; r < m; r++) {
    let s = 0;
    for (let k = r * d; k < (r + 1) * d; k++) s += S[k] * G[k];
    rowLoss[r] = s;
  }
  return { passes, rowLoss };
}

/** Knobs of the reference's `ldlp_admm(H, rho=0.1, niters=100)`. */
export interface AdmmOptions {
  /** ADMM penalty (reference `rho`, default 0.1). */
  rho: number;
  /** ADMM iterations (reference `niters`, default 100). */
  niters: number;
}

/**
 * The reference's `ldlp_admm(H, rho, niters)`, in its own frame (columns processed last to
 * first): ADMM for a strictly lower `Z` minimizing `tr((Z + I) H (Z + I)ᵀ)` subject to every
 * column of `Z` having norm ≤ 1. With `L = chol(2H + ρI)` and `M` the strictly lower mask:
 * `X = (((ρZ − ρW − 2·M∘H)·L⁻ᵀ) ∘ M)·L⁻¹`, `Z = (X + W)·diag(1 / max(1, ‖col_j(X + W)‖))`,
 * `W ← W + X − Z`, from `X = Z = W = 0`. Returns `Z` (row-major `d × d`).
 */
export async function ldlpAdmm(
  H: Float64Array,
  d: number,
  a: AdmmOptions,
  gemm: GemmF64,
): Promise<Float64Array> {
  const rho = a.rho;
  const C = new Float64Array(d * d);
  for (let i = 0; i < C.length; i++) C[i] = 2 * H[i];
  for (let i = 0; i < d; i++) C[i * d + i] += rho;
  const Linv = await invertLower(await lowerCholesky(C, d, gemm), d, gemm);
  const LinvT = transposeSquare(Linv, d);
  const T = new Float64Array(d * d);
  let Z = new Float64Array(d * d);
  const Wd = new Float64Array(d * d);
  const cn = new Float64Array(d);
  for (let it = 0; it < a.niters; it++) {
    for (let i = 0; i < d; i++) {
      for (let j = 0; j < d; j++) {
        const p = i * d + j;
        T[p] = rho * Z[p] - rho * Wd[p] - (j < i ? 2 * H[p] : 0);
      }
    }
    const T2 = await gemm(T, LinvT, { m: d, k: d, n: d });
    for (let i = 0; i < d; i++) {
      for (let j = i; j < d; j++) T2[i * d + j] = 0;
    }
    const X = await gemm(T2, Linv, { m: d, k: d, n: d });
    cn.fill(0);
    for (let i = 0; i < d; i++) {
      for (let j = 0; j < d; j++) {
        const y = X[i * d + j] + Wd[i * d + j];
        cn[j] += y * y;
      }
    }
    for (let j = 0; j < d; j++) cn[j] = 1 / Math.max(1, Math.sqrt(cn[j]));
    const Zn = new Float64Array(d * d);
    for (let i = 0; i < d; i++) {
      for (let j = 0; j < d; j++) {
        const p = i * d + j;
        Zn[p] = (X[p] + Wd[p]) * cn[j];
        Wd[p] += X[p] - Zn[p];
      }
    }
    Z = Zn;
  }
  return Z;
}

/**
 * The feedback matrix of `ldlbal_admm` in this module's forward column order. The reference
 * (`round_ldl_admm`) normalizes `H` by its largest diagonal entry, runs {@linkcode ldlpAdmm} and
 * rounds with the feedback `(Z + I)⁻¹` from the last column to the first (a fixed-point
 * iteration that reaches the back-substitution result). Its frame is the index reversal `J` of
 * ours, so this returns the strictly upper `A = J·((Z + I)⁻¹ − I)·J` for {@linkcode ldlqRound}.
 */
export async function admmFeedback(
  Hf: Float64Array,
  d: number,
  a: AdmmOptions,
  gemm: GemmF64,
): Promise<Float64Array> {
  const H = reverseBoth(Hf, d);
  let maxd = 0;
  for (let i = 0; i < d; i++) maxd = Math.max(maxd, H[i * d + i]);
  for (let i = 0; i < H.length; i++) H[i] /= maxd;
  const Z = await ldlpAdmm(H, d, a, gemm);
  for (let i = 0; i < d; i++) Z[i * d + i] += 1;
  const F = reverseBoth(await invertLower(Z, d, gemm), d);
  const A = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = i + 1; j < d; j++) A[i * d + j] = F[i * d + j];
  }
  return A;
}

/**
 * The processing order of a method. `columnOrder "gptq"`: natural for `ldlq`; descending
 * `diag(H)` (stable) for the others. `columnOrder "reference"` (Cornell-RelaxML/QuIP
 * `vector_balance.py`): `ldlq` last to first; `ldlqRG` the stable ascending `argsort(diag H)`
 * visited last to first — descending `diag(H)` like `"gptq"`, so the two differ only among
 * equal diagonal entries (the reference visits the higher index first); `allbal` (descending
 * sort, visited forward) and `ldlbal_admm` (its own frame, see {@linkcode admmFeedback}) are the
 * same in both.
 */
export function methodOrder(
  method: QuipMethod,
  H: Float64Array,
  d: number,
  columnOrder: ColumnOrder = "gptq",
): Int32Array {
  const order = Int32Array.from({ length: d }, (_, i) => i);
  const ref = columnOrder === "reference";
  if (method === "ldlq") return ref ? order.reverse() : order;
  const diag = Float64Array.from({ length: d }, (_, i) => H[i * d + i]);
  if (ref && method === "ldlqRG") {
    return Int32Array.from(Array.from(order).sort((a, b) => diag[a] - diag[b])).reverse();
  }
  return Int32Array.from(Array.from(order).sort((a, b) => diag[b] - diag[a]));
}

/** Result of {@linkcode roundMethod}. */
export interface RoundResult {
  /** Integer codes (float64) in the input's column order. */
  Q: Float64Array;
  /** Per-row proxy loss `(Q − W)_r H (Q − W)_rᵀ` (float64). */
  rowLoss: Float64Array;
  /** Greedy passes run (0 when none). */
  passes: number;
  /** Processing order: position `i` processed column `order[i]`. */
  order: Int32Array;
}

/** Runs a QuIP rounding method on `(W, H)` with `npasses` greedy passes. */
export async function roundMethod(
  method: QuipMethod,
  W0: Float64Array,
  H0: Float64Array,
  dims: RoundDims,
  o: RoundOptions & {
    npasses: number;
    admm: AdmmOptions;
    columnOrder?: ColumnOrder;
    greedyClamp?: GreedyClamp;
  },
): Promise<RoundResult> {
  const { rows: m, cols: d } = dims;
  const order = methodOrder(method, H0, d, o.columnOrder);
  const identity = order.every((v, i) => v === i);
  let W = W0, H = H0;
  if (!identity) {
    W = new Float64Array(m * d);
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < d; c++) W[r * d + c] = W0[r * d + order[c]];
    }
    H = new Float64Array(d * d);
    for (let i = 0; i < d; i++) {
      const src = order[i] * d;
      for (let j = 0; j < d; j++) H[i * d + j] = H0[src + order[j]];
    }
  }
  let Q: Float64Array;
  let rowLoss: Float64Array | undefined;
  if (method === "allbal") {
    Q = W.slice();
  } else if (method === "ldlbal_admm") {
    const A = await admmFeedback(H, d, o.admm, o.gemm);
    ({ Q } = await ldlqRound(W, dims, A, undefined, o));
  } else {
    const { A, D } = await udlFactor(H, d, o.gemm);
    ({ Q, rowLoss } = await ldlqRound(W, dims, A, D, o));
  }
  let passes = 0;
  if (o.npasses > 0) {
    const g = await greedyPasses(W, Q, H, dims, {
      ...o,
      stochastic: method === "allbal" && o.unbiased,
      clamp: o.greedyClamp,
    });
    passes = g.passes;
    rowLoss = g.rowLoss;
  }
  rowLoss ??= await rowProxyLoss(W, Q, H, dims, o.gemm);
  if (!identity) {
    const Qo = new Float64Array(m * d);
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < d; c++) Qo[r * d + order[c]] = Q[r * d + c];
    }
    Q = Qo;
  }
  return { Q, rowLoss, passes, order };
}
