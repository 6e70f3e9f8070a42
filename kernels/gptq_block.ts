/**
 * Fused GPTQ block kernel: quantizes the columns [i1, i1+b) of W one by one with error feedback
 * inside the block, in one dispatch. The lazy trailing update of the columns right of the block
 * (`W[:, i1+b:] -= Err · Hinv[i1:i1+b, i1+b:]`) is a separate call of the tiled matmul; the grids
 * of dynamic groups starting in the block are fitted before it by `kernels/gptq_params.ts`.
 *
 * Rows of W are independent in GPTQ, so one workgroup owns a chunk of `GPTQ_ROWS_PER_WORKGROUP`
 * rows and has one thread per block column. At block start thread j loads, for the chunk's rows,
 * its column's values of W, its column's grid (scale, zero) — group `colGroup[i1 + j]` of each
 * row — and `Hinv[i1+j, i1+j]`, all into named registers, so the serial step reads no global
 * memory. At step i, thread i quantizes its column (for every row of the chunk) and publishes the
 * scaled errors in workgroup memory; after a barrier, threads j > i apply
 * `w_j = fma(−err, Hinv[i1+i, i1+j], w_j)` (one rounding, as the CPU loop's float64 product).
 *
 * Per row: `q = clamp(round(w / scale) + zero, 0, maxq)` (round half to even, as torch.round),
 * `Q = scale · (q − zero)`, `err = (w − Q) / Hinv[i, i]`. Thread j also accumulates `Σ err²` of
 * its column over the chunk's rows in a register and adds it to `lossPart[chunk · BS + j]` at the
 * end: each slot has one writer per dispatch and dispatches run in order, so the sum over blocks
 * needs no atomics. The host sums `lossPart` (float64) for GPTQ's `Σ (w − q)²/Hinv_ii²`.
 *
 * The grid is [rows, ngroups] of (scale, zero); `colGroup[c]` is the grid group of processed
 * column c: 0 for one grid per row, `⌊c/groupSize⌋` for dynamic groups (processed order, also
 * with act-order), `⌊perm[c]/groupSize⌋` for static groups with act-order.
 *
 * Binding layout: 0 = uniforms {rows, cols, i1, b, maxq (f32), ngroups, 0, 0}, 1 = W f32
 * [rows, cols] (read), 2 = Hinv f32 [cols, cols] upper-triangular (read), 3 = grid vec2<f32>
 * [rows, ngroups] (read), 4 = colGroup u32 [cols] (read), 5 = Q f32 [rows, cols], 6 = codes u32
 * [rows, cols], 7 = Err f32 [rows, BS], 8 = lossPart f32 [chunks · BS] (read-write, `+=`; zero it
 * before the first block), 9 = dstCol u32 [cols] (read): processed column c is written to Q and
 * codes at column `dstCol[c]` (act-order's `perm[c]`, the original column; the identity
 * otherwise). Q, codes and Err are written for the block's columns only.
 * Dispatch: `chunks = ceil(rows / GPTQ_ROWS_PER_WORKGROUP)` workgroups, split into (x, y) under
 * the per-dimension limit (chunk = wid.x + wid.y · nwg.x); workgroup size = BS (the block size).
 * @module
 */
import { gptqParamsRef, groupsStartingIn } from "./gptq_params.ts";

/** Rows of W owned by one workgroup (named registers per thread). */
export const GPTQ_ROWS_PER_WORKGROUP = 16;

/** Largest block size of {@linkcode gptqBlockWGSL} (one thread per block column). */
export const GPTQ_MAX_BLOCK = 256;

/** WGSL of the fused GPTQ block kernel for blocks of at most `blockSize` (1–256) columns. */
export function gptqBlockWGSL(opts: { blockSize?: number } = {}): string {
  const BS = opts.blockSize ?? 128;
  const R = GPTQ_ROWS_PER_WORKGROUP;
  if (!(Number.isInteger(BS) && BS >= 1 && BS <= GPTQ_MAX_BLOCK)) {
    throw new Error(`gptqBlockWGSL: blockSize ${BS} must be an integer in 1..${GPTQ_MAX_BLOCK}`);
  }
  const regs = Array.from({ length: R }, (_, r) => r);
  return `
struct P { rows: u32, cols: u32, i1: u32, b: u32, maxq: f32, ngroups: u32, p1: u32, p2: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> W: array<f32>;
@group(0) @binding(2) var<storage, read> Hinv: array<f32>;
@group(0) @binding(3) var<storage, read> grid: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> colGroup: array<u32>;
@group(0) @binding(5) var<storage, read_write> Q: array<f32>;
@group(0) @binding(6) var<storage, read_write> codes: array<u32>;
@group(0) @binding(7) var<storage, read_write> Err: array<f32>;
@group(0) @binding(8) var<storage, read_write> lossPart: array<f32>;
@group(0) @binding(9) var<storage, read> dstCol: array<u32>;
var<workgroup> errs: array<f32, ${R}>;

@compute @workgroup_size(${BS}, 1, 1)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let chunk = wid.x + wid.y * nwg.x;
  let r0 = chunk * ${R}u;
  if (r0 >= p.rows) { return; }
  let j = lid.x;
  let col = p.i1 + j;
  let live = j < p.b;
  var d = 1.0;
  var grp = 0u;
  if (live) {
    d = Hinv[col * p.cols + col];
    grp = colGroup[col];
  }
${
    regs.map((r) =>
      `  var w${r} = 0.0;
  var g${r} = vec2<f32>(1.0, 0.0);
  if (live && r0 + ${r}u < p.rows) {
    w${r} = W[(r0 + ${r}u) * p.cols + col];
    g${r} = grid[(r0 + ${r}u) * p.ngroups + grp];
  }`
    ).join("\n")
  }
  var loss = 0.0;
  for (var i = 0u; i < p.b; i = i + 1u) {
    if (j == i) {
${
    regs.map((r) =>
      `      {
        let qc = clamp(round(w${r} / g${r}.x) + g${r}.y, 0.0, p.maxq);
        let qv = g${r}.x * (qc - g${r}.y);
        let e = (w${r} - qv) / d;
        errs[${r}u] = e;
        let row = r0 + ${r}u;
        if (row < p.rows) {
          Q[row * p.cols + dstCol[col]] = qv;
          codes[row * p.cols + dstCol[col]] = u32(qc);
          Err[row * ${BS}u + i] = e;
          loss = loss + e * e;
        }
      }`
    ).join("\n")
  }
    }
    workgroupBarrier();
    if (live && j > i) {
      let h = Hinv[(p.i1 + i) * p.cols + col];
${regs.map((r) => `      w${r} = fma(-errs[${r}u], h, w${r});`).join("\n")}
    }
    workgroupBarrier();
  }
  lossPart[chunk * ${BS}u + j] = lossPart[chunk * ${BS}u + j] + loss;
}
`;
}

/** Round half to even (torch.round, WGSL round). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Options of {@linkcode gptqRef}. */
export interface GptqRefOptions {
  /** Rows of W. */
  rows: number;
  /** Columns of W (and size of Hinv). */
  cols: number;
  /**
   * Scale per row [rows], or per row and group [rows, groups], fixed before the pass. Not read
   * with `fit`.
   */
  scale?: Float32Array;
  /** Zero point, same shape as `scale`. */
  zero?: Float32Array;
  /** Largest code. */
  maxq: number;
  /** Block size (default 128). */
  blockSize?: number;
  /**
   * Grid group of every column [cols]. Default: `⌊c / groupSize⌋` with `fit`; else 0 with one
   * group per row, else the column's block (`⌊c / blockSize⌋`, groups aligned with blocks).
   */
  colGroup?: ArrayLike<number>;
  /**
   * Dynamic groups: `ceil(cols / groupSize)` groups per row, each fitted (`gptqParamsRef`, as the
   * params kernel) at the start of the block holding its first column, on `w` as it is then.
   */
  fit?: { groupSize: number; sym: boolean };
}

/**
 * CPU reference: the plain GPTQ loop (IST-DASLab `fasterquant` without the Hessian part) in
 * float32 arithmetic (every operation rounded with Math.fround; the in-block update
 * `w − e·h` is rounded once, the product being exact in float64, as the kernel's fma and
 * `gptq.ts`'s loop), blocks with lazy trailing updates, fixed or dynamically fitted min-max
 * grids. `w` is updated in place. Returns dequantized Q, codes, the grid used and
 * `loss = Σ ((w − Q)/Hinv_ii)²`.
 */
export function gptqRef(
  w: Float32Array,
  hinv: Float32Array,
  opts: GptqRefOptions,
): { q: Float32Array; codes: Uint32Array; loss: number; scale: Float32Array; zero: Float32Array } {
  const { rows, cols, maxq, fit } = opts;
  const bs = opts.blockSize ?? 128;
  const f = Math.fround;
  const q = new Float32Array(rows * cols);
  const codes = new Uint32Array(rows * cols);
  if (!fit && (!opts.scale || !opts.zero)) throw new Error("gptqRef: scale and zero, or fit");
  const groups = fit ? Math.ceil(cols / fit.groupSize) : opts.scale!.length / rows;
  const grid = new Float32Array(rows * groups * 2);
  if (!fit) {
    for (let i = 0; i < rows * groups; i++) {
      grid[2 * i] = opts.scale![i];
      grid[2 * i + 1] = opts.zero![i];
    }
  }
  const colGroup = opts.colGroup ??
    Array.from(
      { length: cols },
      (_, c) => fit ? Math.floor(c / fit.groupSize) : groups === 1 ? 0 : Math.floor(c / bs),
    );
  let loss = 0;
  for (let i1 = 0; i1 < cols; i1 += bs) {
    const i2 = Math.min(cols, i1 + bs);
    const b = i2 - i1;
    if (fit) {
      const { g0, ng } = groupsStartingIn(i1, i2, fit.groupSize);
      gptqParamsRef(w, {
        rows,
        cols,
        groupSize: fit.groupSize,
        g0,
        ng,
        ngroups: groups,
        maxq,
        sym: fit.sym,
      }, grid);
    }
    const err = new Float32Array(rows * b);
    for (let r = 0; r < rows; r++) {
      const row = r * cols;
      for (let i = 0; i < b; i++) {
        const c = i1 + i;
        const g = r * groups + colGroup[c];
        const s = grid[2 * g], z = grid[2 * g + 1];
        const wv = w[row + c];
        const qc = Math.min(Math.max(roundHalfEven(f(wv / s)) + z, 0), maxq);
        const qv = f(s * f(qc - z));
        const e = f(f(wv - qv) / hinv[c * cols + c]);
        q[row + c] = qv;
        codes[row + c] = qc;
        err[r * b + i] = e;
        loss += e * e;
        const hrow = c * cols;
        for (let j = c + 1; j < i2; j++) w[row + j] = f(w[row + j] - e * hinv[hrow + j]);
      }
    }
    // trailing update W[:, i2:] -= Err · Hinv[i1:i2, i2:] (float64 dot, rounded once)
    const acc = new Float64Array(cols - i2);
    for (let r = 0; r < rows; r++) {
      acc.fill(0);
      for (let i = 0; i < b; i++) {
        const e = err[r * b + i], hrow = (i1 + i) * cols;
        if (e !== 0) { for (let j = i2; j < cols; j++) acc[j - i2] += e * hinv[hrow + j]; }
      }
      for (let j = i2; j < cols; j++) w[r * cols + j] = f(w[r * cols + j] - acc[j - i2]);
    }
  }
  const scale = new Float32Array(rows * groups), zero = new Float32Array(rows * groups);
  for (let i = 0; i < rows * groups; i++) {
    scale[i] = grid[2 * i];
    zero[i] = grid[2 * i + 1];
  }
  return { q, codes, loss, scale, zero };
}
