/**
 * Small kernels of the blocked float32 factorization behind GPTQ's `Hinv` on the GPU: the upper
 * `U` with `Uᵀ·U = H⁻¹` (see `src/backend/_webgpu_linalg.ts` for the whole dispatch sequence; the
 * bulk of the work there is the tiled matmul of `matmul.ts`).
 *
 * The host runs an upper-lower ("UL") Cholesky `H = V·Vᵀ`, `V` upper, from the bottom-right
 * block up, then `U = V⁻¹`. With `J` the index reversal this is the lower Cholesky of `J·H·J`
 * (`V = J·L'·J`), so `U = J·L'⁻¹·J` is the matrix of `upperCholeskyOfInverse`
 * (`src/quant/core/linalg.ts`) and the pivots come in the same order.
 *
 * {@linkcode choleskyDiagWGSL} factors one diagonal block `H_ii = V_ii·V_iiᵀ` (size `b ≤ nb`) in
 * workgroup memory and writes `V_ii⁻¹` (upper, strict lower zeroed), which is all the rest of the
 * algorithm needs of the block. The block is loaded index-reversed into a packed lower triangle
 * `S` (`S[p][q] = H_ii[b−1−p][b−1−q]`, `q ≤ p`, so only the upper triangle of `H_ii` is read),
 * factored in place by a right-looking column loop (`S = L·Lᵀ`: pivot, column scale, rank-1
 * update of the trailing triangle by 16×16 threads) and inverted in place column by column from
 * the right (`X[i][j] = −(Σ_{j<k≤i} X[i][k]·L[k][j]) / L[j][j]`, one thread per row); then
 * `V_ii⁻¹ = J·X·J`. A pivot `s` is accepted when its bits are those of a positive normal finite
 * float (`0x00800000 ≤ bits < 0x7f800000`, a test that WGSL's no-NaN assumptions cannot fold);
 * the first failing pivot of the whole run is written to `status` and later blocks leave it.
 *
 * Binding layout of {@linkcode choleskyDiagWGSL}: 0 = uniforms {n, i0, b, nb} (u32), 1 = R f32
 * [n, n] (read; the block is `R[i0 : i0+b, i0 : i0+b]`), 2 = D f32 [n, nb] (read-write; rows
 * `i0 .. i0+b−1` receive `V_ii⁻¹`, columns `b .. nb−1` zeros), 3 = status u32 [4] (read-write;
 * `{failed, pivot, row, bits of the pivot value}`, all zero while no pivot failed; `pivot` counts
 * in factorization order, as `upperCholeskyOfInverse` reports it, `row = n−1−pivot` is the row
 * of H). Dispatch: (1, 1, 1), workgroup of 256 threads. Workgroup memory: `nb·(nb+1)/2` f32.
 *
 * Helpers: {@linkcode matrixCopyWGSL} (`dst[i] = src[i]`, the work copy of H) and
 * {@linkcode matrixIdentityWGSL} (`dst = d·I`, d = 0 zeroes). Binding layout: 0 = uniforms
 * {count, n, 0, 0} (u32; identity: {count, n, d (f32), 0}), 1 = src (copy only), then dst.
 * Dispatch: ceil(count / 256) workgroups as an (x, y) grid (linear id `wid.x + wid.y·nwg.x`).
 * @module
 */

/** Threads of one workgroup of the elementwise helpers. */
export const CHOLESKY_HELPER_WORKGROUP = 256;

/** Largest diagonal block of {@linkcode choleskyDiagWGSL} (one thread per row in the inverse). */
export const CHOLESKY_MAX_BLOCK = 128;

/** Bytes of workgroup memory that {@linkcode choleskyDiagWGSL} needs for blocks of `nb`. */
export function choleskyDiagSharedBytes(nb: number): number {
  return 4 * ((nb * (nb + 1)) / 2);
}

/** WGSL of the diagonal-block kernel for blocks of at most `nb` (1–128) rows. */
export function choleskyDiagWGSL(opts: { nb?: number } = {}): string {
  const nb = opts.nb ?? 64;
  if (!(Number.isInteger(nb) && nb >= 1 && nb <= CHOLESKY_MAX_BLOCK)) {
    throw new Error(`choleskyDiagWGSL: nb ${nb} must be an integer in 1..${CHOLESKY_MAX_BLOCK}`);
  }
  return `
struct P { n: u32, i0: u32, b: u32, nb: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> R: array<f32>;
@group(0) @binding(2) var<storage, read_write> D: array<f32>;
@group(0) @binding(3) var<storage, read_write> status: array<u32>;
var<workgroup> S: array<f32, ${(nb * (nb + 1)) / 2}>;

// Packed lower triangle, j <= i.
fn at(i: u32, j: u32) -> u32 { return i * (i + 1u) / 2u + j; }

// Positive, normal and finite, from the bits.
fn pivotOk(s: f32) -> bool {
  let u = bitcast<u32>(s);
  return u >= 0x00800000u && u < 0x7f800000u;
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_index) t: u32) {
  let b = p.b;
  let last = p.i0 + b - 1u;
  let tx = t % 16u;
  let ty = t / 16u;
  for (var e = t; e < b * b; e = e + 256u) {
    let i = e / b;
    let j = e % b;
    if (j <= i) { S[at(i, j)] = R[(last - i) * p.n + (last - j)]; }
  }
  var failed = false;
  // S = L·Lᵀ in place.
  for (var k = 0u; k < b; k = k + 1u) {
    workgroupBarrier();
    let s = S[at(k, k)];
    let r = sqrt(s);
    if (t == 0u && !failed && !pivotOk(s)) {
      failed = true;
      if (status[0] == 0u) {
        status[1] = p.n - p.i0 - b + k;
        status[2] = last - k;
        status[3] = bitcast<u32>(s);
        status[0] = 1u;
      }
    }
    workgroupBarrier();
    if (t == 0u) { S[at(k, k)] = r; }
    for (var i = k + 1u + t; i < b; i = i + 256u) { S[at(i, k)] = S[at(i, k)] / r; }
    workgroupBarrier();
    for (var i = k + 1u + ty; i < b; i = i + 16u) {
      let lik = S[at(i, k)];
      for (var j = k + 1u + tx; j <= i; j = j + 16u) {
        S[at(i, j)] = S[at(i, j)] - lik * S[at(j, k)];
      }
    }
  }
  // S = L⁻¹ in place, columns from the right.
  for (var jj = 0u; jj < b; jj = jj + 1u) {
    let j = b - 1u - jj;
    workgroupBarrier();
    let inv = 1.0 / S[at(j, j)];
    let i = j + 1u + t;
    var acc = 0.0;
    if (i < b) {
      for (var k = j + 1u; k <= i; k = k + 1u) { acc = fma(S[at(i, k)], S[at(k, j)], acc); }
    }
    workgroupBarrier();
    if (i < b) { S[at(i, j)] = -acc * inv; }
    if (t == 0u) { S[at(j, j)] = inv; }
  }
  workgroupBarrier();
  // D[i0 + r][c] = X[b−1−r][b−1−c] for r <= c < b, else 0.
  for (var e = t; e < b * p.nb; e = e + 256u) {
    let r = e / p.nb;
    let c = e % p.nb;
    var v = 0.0;
    if (r <= c && c < b) { v = S[at(b - 1u - r, b - 1u - c)]; }
    D[(p.i0 + r) * p.nb + c] = v;
  }
}
`;
}

/** WGSL of the elementwise copy `dst[i] = src[i]`, i < count. */
export function matrixCopyWGSL(): string {
  return `
struct P { count: u32, n: u32, p0: u32, p1: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(${CHOLESKY_HELPER_WORKGROUP}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
  let i = (wid.x + wid.y * nwg.x) * ${CHOLESKY_HELPER_WORKGROUP}u + t;
  if (i < p.count) { dst[i] = src[i]; }
}
`;
}

/** WGSL of `dst = d·I` over an `n × n` matrix (count = n²; d = 0 zeroes it). */
export function matrixIdentityWGSL(): string {
  return `
struct P { count: u32, n: u32, d: f32, p1: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(${CHOLESKY_HELPER_WORKGROUP}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
  let i = (wid.x + wid.y * nwg.x) * ${CHOLESKY_HELPER_WORKGROUP}u + t;
  if (i < p.count) { dst[i] = select(0.0, p.d, i / p.n == i % p.n); }
}
`;
}

// ---- CPU references (float64 arithmetic, same dispatch sequence as the GPU) ----------------

/** Result of {@linkcode choleskyDiagRef}: the first failing pivot, if any. */
export interface CholeskyDiagStatus {
  /** True when a pivot was not positive, normal and finite. */
  failed: boolean;
  /** Failing pivot in factorization order (as `upperCholeskyOfInverse`); −1 when none. */
  pivot: number;
  /** Row of H of that pivot (`n − 1 − pivot`); −1 when none. */
  row: number;
  /** The failing pivot's value (NaN when none). */
  value: number;
}

/**
 * CPU reference of {@linkcode choleskyDiagWGSL}: factors `R[i0 : i0+b, i0 : i0+b]` (upper
 * triangle read) as `V·Vᵀ` and writes `V⁻¹` (upper) into rows `i0 .. i0+b−1` of `D` [n, nb].
 */
export function choleskyDiagRef(
  R: Float64Array,
  D: Float64Array,
  o: { n: number; i0: number; b: number; nb: number },
): CholeskyDiagStatus {
  const { n, i0, b, nb } = o;
  const last = i0 + b - 1;
  const S = new Float64Array(b * b);
  for (let i = 0; i < b; i++) {
    for (let j = 0; j <= i; j++) S[i * b + j] = R[(last - i) * n + (last - j)];
  }
  let st: CholeskyDiagStatus = { failed: false, pivot: -1, row: -1, value: NaN };
  for (let k = 0; k < b; k++) {
    const s = S[k * b + k];
    if (!st.failed && !(s >= 2 ** -126 && s < Infinity)) {
      st = { failed: true, pivot: n - i0 - b + k, row: last - k, value: s };
    }
    const r = Math.sqrt(s);
    S[k * b + k] = r;
    for (let i = k + 1; i < b; i++) S[i * b + k] /= r;
    for (let i = k + 1; i < b; i++) {
      for (let j = k + 1; j <= i; j++) S[i * b + j] -= S[i * b + k] * S[j * b + k];
    }
  }
  for (let j = b - 1; j >= 0; j--) {
    const inv = 1 / S[j * b + j];
    for (let i = b - 1; i > j; i--) { // rows from the bottom: column j is read above row i
      let acc = 0;
      for (let k = j + 1; k <= i; k++) acc += S[i * b + k] * S[k * b + j];
      S[i * b + j] = -acc * inv;
    }
    S[j * b + j] = inv;
  }
  for (let r = 0; r < b; r++) {
    for (let c = 0; c < nb; c++) {
      D[(i0 + r) * nb + c] = r <= c && c < b ? S[(b - 1 - r) * b + (b - 1 - c)] : 0;
    }
  }
  return st;
}

/** `C[m, n] (+)= alpha · A[m, k] · op(B)` on strided sub-matrices (float64), as the matmul. */
function gemmRef(
  A: Float64Array,
  B: Float64Array,
  C: Float64Array,
  o: {
    m: number;
    k: number;
    n: number;
    lda: number;
    ldb: number;
    ldc: number;
    offA: number;
    offB: number;
    offC: number;
    transB?: boolean;
    alpha?: number;
    beta?: number;
  },
): void {
  const alpha = o.alpha ?? 1, beta = o.beta ?? 0;
  for (let i = 0; i < o.m; i++) {
    for (let j = 0; j < o.n; j++) {
      let s = 0;
      for (let p = 0; p < o.k; p++) {
        const bv = o.transB ? B[o.offB + j * o.ldb + p] : B[o.offB + p * o.ldb + j];
        s += A[o.offA + i * o.lda + p] * bv;
      }
      const idx = o.offC + i * o.ldc + j;
      C[idx] = alpha * s + beta * C[idx];
    }
  }
}

/**
 * CPU reference of the whole GPU sequence (`src/backend/_webgpu_linalg.ts`), in float64: the
 * upper `U` with `Uᵀ·U = H⁻¹` from blocks of `nb`, or the first failing pivot. It keeps the GPU's
 * buffer roles (R = work copy of H, later the right-hand side `I − Σ V·U`; U holds the panels
 * of V until block row i of U overwrites them; D = the stacked `V_ii⁻¹`), so it documents and
 * checks the sequence without a GPU.
 */
export function upperCholeskyOfInverseRef(
  H: ArrayLike<number>,
  n: number,
  nb = 64,
): { U: Float64Array; status: CholeskyDiagStatus } {
  const R = Float64Array.from(H), U = new Float64Array(n * n), D = new Float64Array(n * nb);
  let status: CholeskyDiagStatus = { failed: false, pivot: -1, row: -1, value: NaN };
  const blocks = choleskyBlocks(n, nb);
  for (const [i0, b] of blocks) {
    const st = choleskyDiagRef(R, D, { n, i0, b, nb });
    if (st.failed && !status.failed) status = st;
    if (i0 === 0) continue;
    // V[0:i0, i0:i0+b] = R[0:i0, i0:i0+b] · V_ii⁻ᵀ, into U; then R[0:i0, 0:i0] −= V12·V12ᵀ.
    gemmRef(R, D, U, {
      m: i0,
      k: b,
      n: b,
      lda: n,
      ldb: nb,
      ldc: n,
      offA: i0,
      offB: i0 * nb,
      offC: i0,
      transB: true,
    });
    gemmRef(U, U, R, {
      m: i0,
      k: b,
      n: i0,
      lda: n,
      ldb: n,
      ldc: n,
      offA: i0,
      offB: i0,
      offC: 0,
      transB: true,
      alpha: -1,
      beta: 1,
    });
  }
  for (let i = 0; i < n * n; i++) R[i] = i % (n + 1) === 0 ? 1 : 0;
  for (const [i0, b] of blocks) {
    const w = n - i0;
    // U[i0:i0+b, i0:] = V_ii⁻¹ · R[i0:i0+b, i0:]; R[0:i0, i0:] −= V[0:i0, i0:i0+b] · U[i0:i0+b, i0:].
    gemmRef(D, R, U, {
      m: b,
      k: b,
      n: w,
      lda: nb,
      ldb: n,
      ldc: n,
      offA: i0 * nb,
      offB: i0 * n + i0,
      offC: i0 * n + i0,
    });
    if (i0 === 0) continue;
    gemmRef(U, U, R, {
      m: i0,
      k: b,
      n: w,
      lda: n,
      ldb: n,
      ldc: n,
      offA: i0,
      offB: i0 * n + i0,
      offC: i0,
      alpha: -1,
      beta: 1,
    });
  }
  return { U, status };
}

/**
 * The diagonal blocks `[i0, b]` in processing order: from the bottom-right corner up, all of size
 * `nb` except the top-left one (`n mod nb` rows when that is not zero).
 */
export function choleskyBlocks(n: number, nb: number): [number, number][] {
  const out: [number, number][] = [];
  for (let i1 = n; i1 > 0; i1 -= nb) {
    const i0 = Math.max(0, i1 - nb);
    out.push([i0, i1 - i0]);
  }
  return out;
}
