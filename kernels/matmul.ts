/**
 * Tiled, register-blocked matrix product in WGSL, generated from TypeScript so that tile sizes are
 * constants and the inner loop is unrolled (GPU.md: array-indexed accumulators ran 17x slower than
 * named ones).
 *
 * `C = alpha · op(A) · op(B) [+ beta · C]`, with `op(A)` = A[m,k] or Aᵀ (A stored [k,m]) and
 * `op(B)` = B[k,n] or Bᵀ (B stored [n,k]). Every operand has a leading dimension and an element
 * offset (uniforms), so a kernel can work on sub-matrices in place (the GPTQ trailing update
 * `W[:, i2:] -= Err · Hinv[i1:i2, i2:]`).
 *
 * Tiling: a 128×128 output tile per workgroup of 16×16 threads; each thread owns 8×8 outputs held
 * in 16 named `vec4` accumulators (rows `ty*4+i` and `64+ty*4+i`, columns `tx*4..+3` and
 * `64+tx*4..+3`, so shared-memory reads are conflict-free `vec4`s). A K-slice of `BK` columns of A
 * and B is staged in workgroup memory K-major (`As[k][m]`, `Bs[k][n]`). Loads are bounds-checked
 * (zero fill) and stores are guarded, so any M, N, K works.
 *
 * Binding layout: 0 = uniforms `P`, 1 = A, 2 = B, 3 = C.
 * Uniforms (u32 unless noted): M, N, K, lda, ldb, ldc, offA, offB, offC, alpha (f32), beta (f32).
 * Dispatch: (ceil(N/128), ceil(M/128), 1).
 * @module
 */
import { gemmTileBody, gemmTileShared } from "./_gemm_tile.ts";

/** Options of {@linkcode matmulWGSL}. */
export interface MatmulKernelOptions {
  /** A is stored [k, m] (K-major); default false (A is [m, k]). */
  transA?: boolean;
  /** B is stored [n, k]; default false (B is [k, n]). */
  transB?: boolean;
  /** Element type of A, B, C: "f32" (default) or "f16" (needs `shader-f16`). */
  dtype?: "f32" | "f16";
  /** For f16: accumulate in f32 (slower, more accurate). Default false (f16 accumulation). */
  accF32?: boolean;
  /** Read C and compute `alpha·AB + beta·C`; default false (`C = alpha·AB`). */
  accumulate?: boolean;
  /**
   * Only for M = N products that are symmetric (XᵀX): workgroups below the diagonal exit, the
   * others write their tile and its mirror. Default false.
   */
  symmetric?: boolean;
  /** K-slice depth staged per step (multiple of 4; default 8). */
  bk?: number;
}

/** Output tile edge (rows and columns) of one workgroup. */
export const MATMUL_TILE = 128;

/** WGSL source of the tiled matmul for the given variant. Entry point "main". */
export function matmulWGSL(opts: MatmulKernelOptions = {}): string {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const T = opts.dtype ?? "f32";
  const AT = T === "f16" && !opts.accF32 ? "f16" : "f32";
  const acc = opts.accumulate ?? false;
  const sym = opts.symmetric ?? false;
  const BK = opts.bk ?? 8;
  if (BK % 4 !== 0 || BK < 4 || BK > 32) throw new Error(`matmulWGSL: bk=${BK} must be 4..32, /4`);
  const BM = 128, BN = 128, TH = 256;
  const perA = (BM * BK) / TH; // elements each thread stages per step
  const perB = (BN * BK) / TH;
  const L: string[] = [];
  if (T === "f16") L.push("enable f16;");
  L.push(`
struct P { M: u32, N: u32, K: u32, lda: u32, ldb: u32, ldc: u32, offA: u32, offB: u32,
           offC: u32, alpha: f32, beta: f32, pad: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> A: array<${T}>;
@group(0) @binding(2) var<storage, read> B: array<${T}>;
@group(0) @binding(3) var<storage, read_write> C: array<${T}>;
${gemmTileShared(T, BK)}

fn loadA(i: u32, k: u32) -> ${T} {
  if (i < p.M && k < p.K) { return A[p.offA + ${transA ? "k * p.lda + i" : "i * p.lda + k"}]; }
  return ${T}(0);
}
fn loadB(k: u32, j: u32) -> ${T} {
  if (k < p.K && j < p.N) { return B[p.offB + ${transB ? "j * p.ldb + k" : "k * p.ldb + j"}]; }
  return ${T}(0);
}
fn store(r: u32, c: u32, v: ${AT}) {
  if (r < p.M && c < p.N) {
    let idx = p.offC + r * p.ldc + c;
    ${
    acc
      ? `C[idx] = ${T}(${AT}(p.alpha) * v + ${AT}(p.beta) * ${AT}(C[idx]));`
      : `C[idx] = ${T}(${AT}(p.alpha) * v);`
  }
  }
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  ${sym ? "if (wid.y > wid.x) { return; }" : ""}
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * 16u + tx;
  let row0 = wid.y * ${BM}u;
  let col0 = wid.x * ${BN}u;
`);
  const S: string[] = [];
  // stage A: As[k][m]
  for (let e = 0; e < perA; e++) {
    const l = `(tid + ${e * TH}u)`;
    const [m, k] = transA ? [`(${l} % ${BM}u)`, `(${l} / ${BM}u)`] : [
      `(${l} / ${BK}u)`,
      `(${l} % ${BK}u)`,
    ];
    S.push(`    { let m = ${m}; let k = ${k}; let s = k * ${BM}u + m;
      As[s >> 2u][s & 3u] = loadA(row0 + m, k0 + k); }`);
  }
  for (let e = 0; e < perB; e++) {
    const l = `(tid + ${e * TH}u)`;
    const [k, n] = transB ? [`(${l} % ${BK}u)`, `(${l} / ${BK}u)`] : [
      `(${l} / ${BN}u)`,
      `(${l} % ${BN}u)`,
    ];
    S.push(`    { let k = ${k}; let n = ${n}; let s = k * ${BN}u + n;
      Bs[s >> 2u][s & 3u] = loadB(k0 + k, col0 + n); }`);
  }
  L.push(
    gemmTileBody({ T, AT, BK, kEnd: "p.K", stage: S.join("\n"), store: "store", mirror: sym }),
  );
  L.push("}");
  return L.join("\n");
}

/**
 * CPU reference of {@linkcode matmulWGSL} on dense row-major operands (float64 dot products):
 * `alpha·op(A)·op(B) + beta·C0` (C0 zeros when absent).
 */
export function matmulRef(
  a: Float32Array,
  b: Float32Array,
  opts: {
    m: number;
    k: number;
    n: number;
    transA?: boolean;
    transB?: boolean;
    alpha?: number;
    beta?: number;
    c0?: Float32Array;
  },
): Float32Array {
  const { m, k, n } = opts;
  const alpha = opts.alpha ?? 1, beta = opts.beta ?? 0;
  const out = new Float32Array(m * n);
  const row = new Float64Array(k);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) row[p] = opts.transA ? a[p * m + i] : a[i * k + p];
    for (let j = 0; j < n; j++) {
      let s = 0;
      if (opts.transB) {
        const bj = j * k;
        for (let p = 0; p < k; p++) s += row[p] * b[bj + p];
      } else {
        for (let p = 0; p < k; p++) s += row[p] * b[p * n + j];
      }
      out[i * n + j] = alpha * s + (opts.c0 ? beta * opts.c0[i * n + j] : 0);
    }
  }
  return out;
}
