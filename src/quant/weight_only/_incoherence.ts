/**
 * QuIP's incoherence pre- and post-processing (Chee et al., 2023, Algorithms 1–2; reference
 * Cornell-RelaxML/QuIP `method.py` `QuantMethod.preproc` / `postproc`), in float64:
 *
 * - `preRescale` (reference `--pre_rescale`): `H ← H / max|H|`, then the column scale
 *   `D = (max(diag H, 1e-8) / max(diag WᵀW, 1e-8))^(1/4)` (clamped ≥ 1e-8, stored in float32),
 *   `W ← W·diag(D)`, `H ← diag(D)⁻¹ H diag(D)⁻¹`.
 * - `preProj` (reference `--pre_proj`): `H ← H · n/(tr H + 1e-8) + 1e-2·I`, then `W ← U W Vᵀ`,
 *   `H ← V H Vᵀ` with seeded random orthogonal `U` (rows) and `V` (columns): either the paper's
 *   two-factor Kronecker product of Haar-random orthogonal matrices (`"kron"`), or a randomized
 *   Hadamard transform `H_N/√N · diag(±1)` (`"hadamard"`, zero-padding to `N = nextPow2(n)`).
 * - `preGptqH` (reference `--pre_gptqH`, run last): dead inputs (`H_ii = 0`) get `H_ii = 1` and
 *   zero weight columns; `H += percdamp · mean(diag H) · I`.
 *
 * Post-processing undoes them in reverse: `W ← Uᵀ Ŵ V` (then drops the padding), `W ← W·diag(D)⁻¹`.
 * The rotations are regenerated from the seed, so they cost no storage.
 *
 * Rotations are applied in their structured form (each Kronecker factor through one float64 GEMM
 * of `gemm`, the Hadamard through the fast Walsh–Hadamard transform): `O(n·(p + q))` per vector
 * for `n = p·q` instead of the reference's dense `O(n²)` products.
 * @module
 */
import { fwht, nextPow2, randomSigns } from "../core/hadamard.ts";
import { mulberry32, randn, type Rng } from "../../rng.ts";
import type { GemmF64 } from "../core/linalg.ts";

/** A seeded Kronecker product `mats[0] ⊗ mats[1] ⊗ …` of small orthogonal factors. */
export interface KronRotation {
  /** Discriminant. */
  kind: "kron";
  /** Dimension `n = Π factors`. */
  n: number;
  /** Factor sizes, slowest-varying index first. */
  factors: number[];
  /** Row-major orthogonal factors, `factors[t] × factors[t]` each. */
  mats: Float64Array[];
}

/** A randomized Hadamard transform `H_N/√N · diag(signs)` on `N = nextPow2(n)` coordinates. */
export interface HadamardRotation {
  /** Discriminant. */
  kind: "hadamard";
  /** Original dimension (before zero padding). */
  n: number;
  /** Transform size `N = nextPow2(n)`. */
  size: number;
  /** Random signs (±1), length `size`. */
  signs: Float64Array;
}

/**
 * The reference's blocked two-factor butterfly (Cornell-RelaxML/QuIP `method.py`
 * `gen_rand_ortho_butterfly` / `mul_ortho_butterfly`, its `--pre_proj_extra 0`): `x ← x[pIn]`;
 * for each factor `p` of {@linkcode butterflyFactors}`(n)` the `n/p` strided fibres of length
 * `p` (index `(pre, ·, post)`) each get their own random `p × p` orthogonal block; `x ← x[pOut]`.
 */
export interface ButterflyRotation {
  /** Discriminant. */
  kind: "butterfly";
  /** Dimension. */
  n: number;
  /** The two factors (`butterflyFactors(n)`), slowest-varying first. */
  factors: number[];
  /** Per factor `p`: `n/p` row-major `p × p` orthogonal blocks, fibre `pre·post + q` order. */
  blocks: Float64Array[][];
  /** Input gather: `y[j] = x[pIn[j]]`. */
  pIn: Int32Array;
  /** Output gather: `z[j] = y[pOut[j]]`. */
  pOut: Int32Array;
}

/** One of the orthogonal transforms of {@linkcode incoherencePre}. */
export type Rotation = KronRotation | HadamardRotation | ButterflyRotation;

/**
 * The orthogonal transform kinds: two-factor Kronecker, randomized Hadamard, or the reference's
 * blocked butterfly.
 */
export type ProjKind = "kron" | "hadamard" | "butterfly";

/**
 * The reference's `butterfly_factors(n)`: the prime factors of `n` in ascending order, split
 * alternately, `(Π pf[0::2], Π pf[1::2])` (64 → 8·8, 172 → 86·2, 96 → 8·12, a prime p → p·1).
 */
export function butterflyFactors(n: number): [number, number] {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`butterflyFactors: bad dimension ${n}`);
  const pf: number[] = [];
  let m = n;
  for (let d = 2; d * d <= m; d++) while (m % d === 0) [pf[pf.length], m] = [d, m / d];
  if (m > 1) pf.push(m);
  let a = 1, b = 1;
  pf.forEach((p, i) => i % 2 === 0 ? (a *= p) : (b *= p));
  return [a, b];
}

/** Sign of the determinant of a row-major `p × p` matrix (LU with partial pivoting). */
function detSign(M: Float64Array, p: number): number {
  const A = M.slice();
  let sign = 1;
  for (let k = 0; k < p; k++) {
    let piv = k;
    for (let i = k + 1; i < p; i++) if (Math.abs(A[i * p + k]) > Math.abs(A[piv * p + k])) piv = i;
    if (A[piv * p + k] === 0) return 0;
    if (piv !== k) {
      for (let j = 0; j < p; j++) [A[k * p + j], A[piv * p + j]] = [A[piv * p + j], A[k * p + j]];
      sign = -sign;
    }
    if (A[k * p + k] < 0) sign = -sign;
    for (let i = k + 1; i < p; i++) {
      const f = A[i * p + k] / A[k * p + k];
      for (let j = k; j < p; j++) A[i * p + j] -= f * A[k * p + j];
    }
  }
  return sign;
}

/** A random permutation of `0..n−1` (Fisher–Yates from `rng`). */
function randomPerm(n: number, rng: Rng): Int32Array {
  const a = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/**
 * A random blocked butterfly of dimension `n` (the reference's `gen_rand_ortho_butterfly`):
 * per factor `p`, `n/p` independent blocks — `p = 2`: a rotation by a uniform angle; otherwise a
 * Haar-random special orthogonal matrix (scipy's `special_ortho_group`; here Haar O(p) with the
 * first row negated when the determinant is −1) — then the input and output permutations. All
 * draws come from `rng` (the reference draws from torch/numpy generators, which this cannot
 * replay: same construction, different random draw).
 */
export function randomButterfly(n: number, rng: Rng): ButterflyRotation {
  const factors = butterflyFactors(n);
  const blocks = factors.map((p) =>
    Array.from({ length: n / p }, () => {
      if (p === 1) return Float64Array.of(1);
      if (p === 2) {
        const t = rng() * 2 * Math.PI, c = Math.cos(t), s = Math.sin(t);
        return Float64Array.of(c, s, -s, c);
      }
      const Q = haarOrthogonal(p, rng);
      if (detSign(Q, p) < 0) { for (let j = 0; j < p; j++) Q[j] = -Q[j]; }
      return Q;
    })
  );
  return {
    kind: "butterfly",
    n,
    factors,
    blocks,
    pIn: randomPerm(n, rng),
    pOut: randomPerm(n, rng),
  };
}

/** `R·x` (or `Rᵀ·x`) for a butterfly along axis 1 of `x` (`[A, N, B]`). */
function applyButterfly(
  x: Float64Array,
  dims: [number, number, number],
  rot: ButterflyRotation,
  transpose: boolean,
): Float64Array {
  const [A, N, B] = dims;
  const out = new Float64Array(x.length);
  const v = new Float64Array(N), w = new Float64Array(N);
  const stages = rot.factors.map((_, i) => i);
  if (transpose) stages.reverse();
  for (let a = 0; a < A; a++) {
    for (let b = 0; b < B; b++) {
      for (let j = 0; j < N; j++) v[j] = x[(a * N + j) * B + b];
      // forward: gather by pIn; transpose: scatter by pOut (the inverse of the last gather).
      if (!transpose) { for (let j = 0; j < N; j++) w[j] = v[rot.pIn[j]]; }
      else for (let j = 0; j < N; j++) w[rot.pOut[j]] = v[j];
      for (const i of stages) {
        const p = rot.factors[i];
        if (p === 1) continue;
        let pre = 1;
        for (let t = 0; t < i; t++) pre *= rot.factors[t];
        const post = N / (pre * p);
        for (let m0 = 0; m0 < pre; m0++) {
          for (let q = 0; q < post; q++) {
            const M = rot.blocks[i][m0 * post + q];
            const base = m0 * p * post + q;
            for (let r = 0; r < p; r++) v[r] = w[base + r * post];
            for (let r = 0; r < p; r++) {
              let s = 0;
              for (let c = 0; c < p; c++) s += (transpose ? M[c * p + r] : M[r * p + c]) * v[c];
              w[base + r * post] = s;
            }
          }
        }
      }
      if (!transpose) { for (let j = 0; j < N; j++) v[j] = w[rot.pOut[j]]; }
      else for (let j = 0; j < N; j++) v[rot.pIn[j]] = w[j];
      for (let j = 0; j < N; j++) out[(a * N + j) * B + b] = v[j];
    }
  }
  return out;
}

/**
 * The balanced two-factor split `n = p·q` used by `"kron"`: `p` is the largest divisor of `n`
 * with `p ≤ √n` (64 → 8·8, 172 → 4·43, 32 → 4·8, 4096 → 64·64, a prime → 1·n). The paper uses
 * two factors of about `√n`; the reference's `butterfly_factors` splits the prime factors
 * alternately instead (172 → 86·2).
 */
export function kronFactors(n: number): [number, number] {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`kronFactors: bad dimension ${n}`);
  let p = Math.floor(Math.sqrt(n));
  while (n % p !== 0) p--;
  return [p, n / p];
}

/**
 * A Haar-random `p × p` orthogonal matrix (row-major): the Q factor of a Gaussian matrix with
 * the sign fix `diag(R) > 0`, computed by Gram–Schmidt with one re-orthogonalization pass
 * (orthogonal to ~1e-15). Entries are drawn row-major from `rng`.
 */
export function haarOrthogonal(p: number, rng: Rng): Float64Array {
  const G = new Float64Array(p * p);
  for (let i = 0; i < G.length; i++) G[i] = randn(rng);
  // Work on columns: Qc[j*p + i] = Q[i, j].
  const Qc = new Float64Array(p * p);
  const v = new Float64Array(p);
  for (let j = 0; j < p; j++) {
    for (let i = 0; i < p; i++) v[i] = G[i * p + j];
    for (let pass = 0; pass < 2; pass++) {
      for (let c = 0; c < j; c++) {
        let d = 0;
        for (let i = 0; i < p; i++) d += Qc[c * p + i] * v[i];
        for (let i = 0; i < p; i++) v[i] -= d * Qc[c * p + i];
      }
    }
    let nrm = 0;
    for (let i = 0; i < p; i++) nrm += v[i] * v[i];
    nrm = Math.sqrt(nrm); // = R[j, j] > 0: the sign fix is built in.
    for (let i = 0; i < p; i++) Qc[j * p + i] = v[i] / nrm;
  }
  const Q = new Float64Array(p * p);
  for (let i = 0; i < p; i++) {
    for (let j = 0; j < p; j++) Q[i * p + j] = Qc[j * p + i];
  }
  return Q;
}

/**
 * A random orthogonal `n × n` matrix as the Kronecker product of two Haar-random factors of
 * sizes {@linkcode kronFactors}`(n)` (the paper's "two-factor" construction), drawn from `rng`
 * (first factor first).
 */
export function randomOrthogonalKron(n: number, rng: Rng): KronRotation {
  let factors = kronFactors(n).filter((f) => f > 1);
  if (factors.length === 0) factors = [1];
  return { kind: "kron", n, factors, mats: factors.map((f) => haarOrthogonal(f, rng)) };
}

/** A randomized Hadamard transform on `nextPow2(n)` coordinates with signs drawn from `rng`. */
export function randomHadamard(n: number, rng: Rng): HadamardRotation {
  const size = nextPow2(n);
  return { kind: "hadamard", n, size, signs: randomSigns(rng, size) };
}

/** The transform's size: `n` for Kronecker, the padded `N` for Hadamard. */
export function rotationSize(rot: Rotation): number {
  return rot.kind === "hadamard" ? rot.size : rot.n;
}

/** The dense row-major matrix of a rotation (for tests and notebooks). */
export function denseRotation(rot: Rotation): Float64Array {
  const N = rotationSize(rot);
  const I = new Float64Array(N * N);
  for (let i = 0; i < N; i++) I[i * N + i] = 1;
  // R = R · I: apply along axis 0 of the identity.
  return applyRotationTS(I, [1, N, N], rot, false);
}

function transposeRM(M: Float64Array, r: number, c: number): Float64Array {
  const T = new Float64Array(r * c);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < c; j++) T[j * r + i] = M[i * c + j];
  }
  return T;
}

/** `out[p, :, q] = M · x[p, :, q]` (or `Mᵀ ·`) for `x` of shape `[P, k, Q]`, through `gemm`. */
async function applyAlongAxis(
  x: Float64Array,
  dims: [number, number, number],
  M: Float64Array,
  transpose: boolean,
  gemm: GemmF64,
): Promise<Float64Array> {
  const [P, k, Q] = dims;
  const Mt = transposeRM(M, k, k);
  const left = transpose ? Mt : M; // the matrix multiplying from the left
  if (Q === 1) return await gemm(x, transpose ? M : Mt, { m: P, k, n: k }); // x · leftᵀ
  if (P === 1) return await gemm(left, x, { m: k, k, n: Q });
  // Gather to [k, P·Q], multiply, scatter back.
  const PQ = P * Q;
  const G = new Float64Array(k * PQ);
  for (let p = 0; p < P; p++) {
    for (let i = 0; i < k; i++) {
      const src = (p * k + i) * Q, dst = i * PQ + p * Q;
      G.set(x.subarray(src, src + Q), dst);
    }
  }
  const Y = await gemm(left, G, { m: k, k, n: PQ });
  const out = new Float64Array(x.length);
  for (let p = 0; p < P; p++) {
    for (let i = 0; i < k; i++) {
      const dst = (p * k + i) * Q, src = i * PQ + p * Q;
      out.set(Y.subarray(src, src + Q), dst);
    }
  }
  return out;
}

/**
 * The Hadamard rotation along the middle axis of `[A, N, B]`: the FWHT of `hadamard.ts` on
 * contiguous segments when `B = 1`, else the same butterflies on whole rows of length `B`
 * (cache-friendly, no transposition). `R x = H (s∘x)/√N`; `Rᵀ x = s ∘ (H x /√N)`.
 */
function applyHadamard(
  x: Float64Array,
  dims: [number, number, number],
  rot: HadamardRotation,
  transpose: boolean,
): Float64Array {
  const [A, N, B] = dims;
  const s = rot.signs;
  const out = x.slice();
  const signs = () => {
    if (B === 1) { for (let t = 0; t < out.length; t++) out[t] *= s[t % N]; }
    else {
      for (let a = 0; a < A; a++) {
        for (let i = 0; i < N; i++) {
          const o = (a * N + i) * B, si = s[i];
          for (let b = 0; b < B; b++) out[o + b] *= si;
        }
      }
    }
  };
  if (!transpose) signs();
  if (B === 1) fwht(out, N);
  else {
    const norm = 1 / Math.sqrt(N);
    for (let a = 0; a < A; a++) {
      const base = a * N * B;
      for (let h = 1; h < N; h *= 2) {
        for (let i = 0; i < N; i += 2 * h) {
          for (let j = i; j < i + h; j++) {
            const u = base + j * B, v = base + (j + h) * B;
            for (let b = 0; b < B; b++) {
              const p = out[u + b], q = out[v + b];
              out[u + b] = p + q;
              out[v + b] = p - q;
            }
          }
        }
      }
      for (let t = base; t < base + N * B; t++) out[t] *= norm;
    }
  }
  if (transpose) signs();
  return out;
}

/**
 * `out[a, :, b] = R · x[a, :, b]` (or `Rᵀ ·` when `transpose`) for `x` of shape `[A, N, B]`
 * with `N` the rotation's size. Kronecker factors go through `gemm` (one product each).
 */
export async function applyRotation(
  x: Float64Array,
  dims: [number, number, number],
  rot: Rotation,
  transpose: boolean,
  gemm: GemmF64,
): Promise<Float64Array> {
  const [A, N, B] = dims;
  if (N !== rotationSize(rot) || x.length !== A * N * B) {
    throw new RangeError(`applyRotation: shape [${dims}] does not fit a rotation of size ${N}`);
  }
  if (rot.kind === "hadamard") return applyHadamard(x, dims, rot, transpose);
  if (rot.kind === "butterfly") return applyButterfly(x, dims, rot, transpose);
  let y = x;
  let pre = 1;
  for (let t = 0; t < rot.factors.length; t++) {
    const f = rot.factors[t];
    const post = N / (pre * f);
    y = await applyAlongAxis(y, [A * pre, f, post * B], rot.mats[t], transpose, gemm);
    pre *= f;
  }
  return y;
}

/** Synchronous TypeScript version of {@linkcode applyRotation} (small sizes, tests). */
function applyRotationTS(
  x: Float64Array,
  dims: [number, number, number],
  rot: Rotation,
  transpose: boolean,
): Float64Array {
  if (rot.kind === "hadamard") return applyHadamard(x, dims, rot, transpose);
  if (rot.kind === "butterfly") return applyButterfly(x, dims, rot, transpose);
  const [A, N, B] = dims;
  let y = x;
  let pre = 1;
  for (let t = 0; t < rot.factors.length; t++) {
    const f = rot.factors[t], M = rot.mats[t];
    const post = (N / (pre * f)) * B, P = A * pre;
    const out = new Float64Array(y.length);
    for (let p = 0; p < P; p++) {
      for (let i = 0; i < f; i++) {
        const o = (p * f + i) * post;
        for (let j = 0; j < f; j++) {
          const m = transpose ? M[j * f + i] : M[i * f + j];
          if (m === 0) continue;
          const src = (p * f + j) * post;
          for (let q = 0; q < post; q++) out[o + q] += m * y[src + q];
        }
      }
    }
    y = out;
    pre *= f;
  }
  return y;
}

/** `H ← (H + Hᵀ)/2` in place (the two sides of `V H Vᵀ` round differently), in 64×64 tiles. */
function symmetrize(H: Float64Array, n: number): void {
  const T = 64;
  for (let i0 = 0; i0 < n; i0 += T) {
    for (let j0 = i0; j0 < n; j0 += T) {
      const i1 = Math.min(i0 + T, n), j1 = Math.min(j0 + T, n);
      for (let i = i0; i < i1; i++) {
        for (let j = Math.max(j0, i + 1); j < j1; j++) {
          const a = 0.5 * (H[i * n + j] + H[j * n + i]);
          H[i * n + j] = a;
          H[j * n + i] = a;
        }
      }
    }
  }
}

/** Options of {@linkcode incoherencePre}. */
export interface IncoherenceOptions {
  /** Diagonal rescaling of W's columns and H (reference `--pre_rescale`). */
  preRescale: boolean;
  /** Random orthogonal projections (reference `--pre_proj`). */
  preProj: boolean;
  /** The orthogonal transform kind when `preProj`. */
  proj: ProjKind;
  /** Dead-input handling and dampening, last (reference `--pre_gptqH`). */
  preGptqH: boolean;
  /** Dampening fraction of `preGptqH` (reference `--percdamp`). */
  percdamp: number;
  /** Seed of the rotations (`mulberry32(seed)`: U's draws, then V's). */
  seed: number;
}

/** What {@linkcode incoherencePost} needs; rebuilt from `meta` by `dequantizeQuip`. */
export interface IncoherenceState {
  /** Original `[rows, cols]`. */
  shape: [number, number];
  /** `[rows, cols]` in the rounding domain (padded to powers of two for `"hadamard"`). */
  rotatedShape: [number, number];
  /** The column scale `D` of `preRescale` (float32), or undefined. */
  rescale?: Float32Array;
  /** The row transform `U` (on `rotatedShape[0]`), when `preProj`. */
  U?: Rotation;
  /** The column transform `V` (on `rotatedShape[1]`), when `preProj`. */
  V?: Rotation;
  /**
   * The product of the scalar normalizations applied to `H` (`1/max|H|`, `n/(tr H + 1e-8)`):
   * the processed Hessian is `hScale ·` (the original one mapped to the rotated domain) plus
   * dampening.
   */
  hScale: number;
}

/** The rotations for a `[rows, cols]` rounding domain from `seed` (U first, then V). */
export function makeRotations(
  proj: ProjKind,
  rotatedShape: [number, number],
  seed: number,
): { U: Rotation; V: Rotation } {
  const rng = mulberry32(seed);
  const [m, n] = rotatedShape;
  if (proj === "kron") return { U: randomOrthogonalKron(m, rng), V: randomOrthogonalKron(n, rng) };
  if (proj === "butterfly") return { U: randomButterfly(m, rng), V: randomButterfly(n, rng) };
  return { U: randomHadamard(m, rng), V: randomHadamard(n, rng) };
}

/** The rounding-domain shape for `[rows, cols]`: padded to powers of two for `"hadamard"`. */
export function rotatedShapeOf(
  shape: [number, number],
  preProj: boolean,
  proj: ProjKind,
): [number, number] {
  if (!preProj || proj !== "hadamard") return [shape[0], shape[1]];
  return [nextPow2(shape[0]), nextPow2(shape[1])];
}

/**
 * Pre-processing of a `[rows, cols]` weight and its `cols × cols` Hessian (both float64, not
 * modified), in the reference's order: rescale, project, then GPTQ's H handling.
 *
 * Randomized Hadamard on a dimension that is not a power of two: `W` is zero-padded to
 * `[nextPow2(rows), nextPow2(cols)]`, and the (trace-normalized) `H` is embedded in the top-left
 * of an `N × N` zero matrix before the `+1e-2·I` step, so padded inputs carry only that
 * dampening weight. The rounding domain then has `N/cols` times more codes (counted in
 * bits per weight); post-processing drops the padded rows and columns after `Uᵀ Ŵ V`.
 */
export async function incoherencePre(
  W0: Float64Array,
  H0: Float64Array,
  shape: [number, number],
  o: IncoherenceOptions,
  gemm: GemmF64,
): Promise<{ W: Float64Array; H: Float64Array; state: IncoherenceState }> {
  const [rows, cols] = shape;
  let W: Float64Array = W0.slice();
  let H: Float64Array = H0.slice();
  let hScale = 1;
  let rescale: Float32Array | undefined;
  if (o.preRescale) {
    let maxAbs = 0;
    for (let i = 0; i < H.length; i++) maxAbs = Math.max(maxAbs, Math.abs(H[i]));
    if (maxAbs > 0) {
      for (let i = 0; i < H.length; i++) H[i] /= maxAbs;
      hScale /= maxAbs;
    }
    const w2 = new Float64Array(cols);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < cols; j++) w2[j] += W[r * cols + j] * W[r * cols + j];
    }
    rescale = new Float32Array(cols);
    for (let j = 0; j < cols; j++) {
      const dh = Math.max(H[j * cols + j], 1e-8), dw = Math.max(w2[j], 1e-8);
      rescale[j] = Math.max(Math.sqrt(Math.sqrt(dh / dw)), 1e-8);
    }
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < cols; j++) W[r * cols + j] *= rescale[j];
    }
    for (let i = 0; i < cols; i++) {
      for (let j = 0; j < cols; j++) H[i * cols + j] /= rescale[i] * rescale[j];
    }
  }
  const rotatedShape = rotatedShapeOf(shape, o.preProj, o.proj);
  const [m, n] = rotatedShape;
  let U: Rotation | undefined, V: Rotation | undefined;
  if (o.preProj) {
    let tr = 0;
    for (let i = 0; i < cols; i++) tr += H[i * cols + i];
    const f = cols / (tr + 1e-8);
    hScale *= f;
    // Embed (padding only for Hadamard), normalize, add 1e-2·I on all n coordinates.
    const Hp = new Float64Array(n * n);
    for (let i = 0; i < cols; i++) {
      for (let j = 0; j < cols; j++) Hp[i * n + j] = H[i * cols + j] * f;
    }
    for (let i = 0; i < n; i++) Hp[i * n + i] += 1e-2;
    let Wp: Float64Array = W;
    if (m !== rows || n !== cols) {
      Wp = new Float64Array(m * n);
      for (let r = 0; r < rows; r++) Wp.set(W.subarray(r * cols, (r + 1) * cols), r * n);
    }
    ({ U, V } = makeRotations(o.proj, rotatedShape, o.seed));
    // W ← U W Vᵀ: V on each row, then U along the row axis.
    Wp = await applyRotation(Wp, [m, n, 1], V, false, gemm);
    W = await applyRotation(Wp, [1, m, n], U, false, gemm);
    // H ← V H Vᵀ.
    H = await applyRotation(Hp, [n, n, 1], V, false, gemm);
    H = await applyRotation(H, [1, n, n], V, false, gemm);
    symmetrize(H, n);
  }
  if (o.preGptqH) {
    for (let i = 0; i < n; i++) {
      if (H[i * n + i] === 0) {
        H[i * n + i] = 1;
        for (let r = 0; r < m; r++) W[r * n + i] = 0;
      }
    }
    let mean = 0;
    for (let i = 0; i < n; i++) mean += H[i * n + i];
    const damp = (o.percdamp * mean) / n;
    for (let i = 0; i < n; i++) H[i * n + i] += damp;
  }
  return { W, H, state: { shape: [rows, cols], rotatedShape, rescale, U, V, hScale } };
}

/**
 * Post-processing: maps a rounding-domain weight `[rotatedShape]` back to the original basis,
 * `Uᵀ Ŵ V` (dropping any padding), then `/ D` per column. Deterministic for a given `gemm`.
 */
export async function incoherencePost(
  Wr: Float64Array,
  state: IncoherenceState,
  gemm: GemmF64,
): Promise<Float64Array> {
  const [rows, cols] = state.shape;
  const [m, n] = state.rotatedShape;
  let W: Float64Array = Wr;
  if (state.U && state.V) {
    // Uᵀ Ŵ V: Uᵀ along the row axis, then Vᵀ on each row (row·V = (Vᵀ·row)ᵀ).
    W = await applyRotation(W, [1, m, n], state.U, true, gemm);
    W = await applyRotation(W, [m, n, 1], state.V, true, gemm);
  }
  if (m !== rows || n !== cols) {
    const T = new Float64Array(rows * cols);
    for (let r = 0; r < rows; r++) T.set(W.subarray(r * n, r * n + cols), r * cols);
    W = T;
  } else if (W === Wr) W = Wr.slice();
  if (state.rescale) {
    const d = state.rescale;
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < cols; j++) W[r * cols + j] /= d[j];
    }
  }
  return W;
}
