/**
 * Fused GPTQ block kernel: quantizes the columns [i1, i1+b) of W one by one with error feedback
 * inside the block, in one dispatch. The lazy trailing update of the columns right of the block
 * (`W[:, i1+b:] -= Err · Hinv[i1:i1+b, i1+b:]`) is a separate call of the tiled matmul.
 *
 * Rows of W are independent in GPTQ, so one workgroup owns a chunk of `GPTQ_ROWS_PER_WORKGROUP`
 * rows and has one thread per block column; thread j keeps its column's values of those rows in
 * named registers. At step i, thread i quantizes its column (for every row of the chunk) and
 * publishes the scaled errors in workgroup memory; after a barrier, threads j > i apply
 * `w_j -= err · Hinv[i1+i, i1+j]`.
 *
 * Per row: `q = clamp(round(w / scale) + zero, 0, maxq)` (round half to even, as torch.round),
 * `Q = scale · (q − zero)`, `err = (w − Q) / Hinv[i, i]`.
 *
 * The grid is one (scale, zero) per row for the block: `grid[row · gstride + g]`. With one grid
 * per row, gstride = 1 and g = 0; group-wise (g128 with block 128) passes the [rows, groups] grid
 * with gstride = groups and g = the block's group. Grids are inputs, so group-wise runs use grids
 * fixed before the pass (GPTQ's `static_groups`), or the caller recomputes a block's grid from W
 * between dispatches.
 *
 * Binding layout: 0 = uniforms {rows, cols, i1, b, maxq (f32), gstride, g}, 1 = W f32 [rows, cols]
 * (read), 2 = Hinv f32 [cols, cols] upper-triangular (read), 3 = grid vec2<f32> (scale, zero),
 * 4 = Q f32 [rows, cols], 5 = codes u32 [rows, cols], 6 = Err f32 [rows, blockSize].
 * Dispatch: (ceil(rows / GPTQ_ROWS_PER_WORKGROUP), 1, 1); workgroup size = blockSize.
 * @module
 */

/** Rows of W owned by one workgroup (named registers per thread). */
export const GPTQ_ROWS_PER_WORKGROUP = 16;

/** WGSL of the fused GPTQ block kernel for blocks of at most `blockSize` (≤ 256) columns. */
export function gptqBlockWGSL(opts: { blockSize?: number } = {}): string {
  const BS = opts.blockSize ?? 128;
  const R = GPTQ_ROWS_PER_WORKGROUP;
  if (BS < R || BS > 256) throw new Error(`gptqBlockWGSL: blockSize ${BS} must be in ${R}..256`);
  const regs = Array.from({ length: R }, (_, r) => r);
  return `
struct P { rows: u32, cols: u32, i1: u32, b: u32, maxq: f32, gstride: u32, g: u32, p2: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> W: array<f32>;
@group(0) @binding(2) var<storage, read> Hinv: array<f32>;
@group(0) @binding(3) var<storage, read> grid: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> Q: array<f32>;
@group(0) @binding(5) var<storage, read_write> codes: array<u32>;
@group(0) @binding(6) var<storage, read_write> Err: array<f32>;
var<workgroup> errs: array<f32, ${R}>;
var<workgroup> gs: array<vec2<f32>, ${R}>;

@compute @workgroup_size(${BS}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let j = lid.x;
  let r0 = wid.x * ${R}u;
  let col = p.i1 + j;
  let live = j < p.b;
  if (j < ${R}u) {
    var g = vec2<f32>(1.0, 0.0);
    if (r0 + j < p.rows) { g = grid[(r0 + j) * p.gstride + p.g]; }
    gs[j] = g;
  }
${
    regs.map((r) =>
      `  var w${r} = 0.0;
  if (live && r0 + ${r}u < p.rows) { w${r} = W[(r0 + ${r}u) * p.cols + col]; }`
    ).join("\n")
  }
  workgroupBarrier();
  for (var i = 0u; i < p.b; i = i + 1u) {
    if (j == i) {
      let d = Hinv[col * p.cols + col];
${
    regs.map((r) =>
      `      {
        let g = gs[${r}u];
        let qc = clamp(round(w${r} / g.x) + g.y, 0.0, p.maxq);
        let qv = g.x * (qc - g.y);
        let e = (w${r} - qv) / d;
        errs[${r}u] = e;
        let row = r0 + ${r}u;
        if (row < p.rows) {
          Q[row * p.cols + col] = qv;
          codes[row * p.cols + col] = u32(qc);
          Err[row * ${BS}u + i] = e;
        }
      }`
    ).join("\n")
  }
    }
    workgroupBarrier();
    if (live && j > i) {
      let h = Hinv[(p.i1 + i) * p.cols + col];
${regs.map((r) => `      w${r} = w${r} - errs[${r}u] * h;`).join("\n")}
    }
    workgroupBarrier();
  }
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
  /** Scale per row [rows], or per row and block-aligned group [rows, groups]. */
  scale: Float32Array;
  /** Zero point, same shape as `scale`. */
  zero: Float32Array;
  /** Largest code. */
  maxq: number;
  /** Block size (default 128). */
  blockSize?: number;
}

/**
 * CPU reference: the plain GPTQ loop (IST-DASLab `fasterquant` without the Hessian part) in
 * float32 arithmetic (every operation rounded with Math.fround), blocks with lazy trailing
 * updates. `w` is updated in place. Returns dequantized Q and codes.
 */
export function gptqRef(
  w: Float32Array,
  hinv: Float32Array,
  opts: GptqRefOptions,
): { q: Float32Array; codes: Uint32Array } {
  const { rows, cols, maxq } = opts;
  const bs = opts.blockSize ?? 128;
  const f = Math.fround;
  const q = new Float32Array(rows * cols);
  const codes = new Uint32Array(rows * cols);
  for (let i1 = 0; i1 < cols; i1 += bs) {
    const i2 = Math.min(cols, i1 + bs);
    const b = i2 - i1;
    const err = new Float32Array(rows * b);
    const groups = opts.scale.length / rows;
    const g = groups === 1 ? 0 : i1 / bs;
    for (let r = 0; r < rows; r++) {
      const s = opts.scale[r * groups + g], z = opts.zero[r * groups + g];
      const row = r * cols;
      for (let i = 0; i < b; i++) {
        const c = i1 + i;
        const wv = w[row + c];
        const qc = Math.min(Math.max(roundHalfEven(f(wv / s)) + z, 0), maxq);
        const qv = f(s * f(qc - z));
        const e = f(f(wv - qv) / hinv[c * cols + c]);
        q[row + c] = qv;
        codes[row + c] = qc;
        err[r * b + i] = e;
        const hrow = c * cols;
        for (let j = c + 1; j < i2; j++) w[row + j] = f(w[row + j] - f(e * hinv[hrow + j]));
      }
    }
    // trailing update W[:, i2:] -= Err · Hinv[i1:i2, i2:] (float64 dot, rounded once)
    for (let r = 0; r < rows; r++) {
      for (let j = i2; j < cols; j++) {
        let s = 0;
        for (let i = 0; i < b; i++) s += err[r * b + i] * hinv[(i1 + i) * cols + j];
        w[r * cols + j] = f(w[r * cols + j] - s);
      }
    }
  }
  return { q, codes };
}
