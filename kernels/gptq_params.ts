/**
 * GPTQ grid fitting for dynamic groups on the GPU: for the groups `g0 .. g0+ng−1` (those whose
 * first column `g · groupSize` lies in the current block), one thread per (row, group) takes the
 * min and max of `W[row, g·gs : min(g·gs + gs, cols))` — W as the lazy scheme holds it at block
 * start, with every earlier block's trailing update, which is what the reference's
 * `find_params(W[:, (i1+i):(i1+i+groupsize)])` reads — and writes (scale, zero) to
 * `grid[row · ngroups + g]`.
 *
 * The fit is the min-max path of `findParams` (`src/quant/core/grid.ts`, the CPU reference) bit for
 * bit in float32: `xmin = min(min W, 0)`, `xmax = max(max W, 0)`; symmetric grids use
 * `xmax = max(|xmin|, xmax)` and `xmin = −xmax` where `xmin < 0`; an all-zero range becomes
 * `[−1, 1]`; `scale = (xmax − xmin) / maxq`, `zero = round(−xmin / scale)` (half to even) or
 * `(maxq + 1) / 2` when symmetric. WGSL allows f32 division an error of 2.5 ulp, so both
 * quotients use a correctly rounded division by integer long division of the significands
 * (`divRN`); subnormal operands or results fall back to the hardware division.
 *
 * Binding layout: 0 = uniforms {rows, cols, groupSize, g0, ng, ngroups, maxq (u32), sym (u32)},
 * 1 = W f32 [rows, cols] (read), 2 = grid vec2<f32> [rows, ngroups] (read-write; only the ng
 * groups are written). Dispatch: ceil(rows · ng / GPTQ_PARAMS_WORKGROUP) workgroups split into
 * (x, y) under the per-dimension limit; thread t = (row = t / ng, group = g0 + t % ng).
 * @module
 */

/** Threads per workgroup of {@linkcode gptqParamsWGSL}. */
export const GPTQ_PARAMS_WORKGROUP = 64;

/**
 * WGSL of `divRN(a, b)`: the correctly rounded (nearest, ties to even) float32 quotient of
 * finite normal operands, from a 25-step long division of the 24-bit significands plus a sticky
 * bit; zero, subnormal, infinite or NaN operands and subnormal or overflowing results use `a / b`.
 */
export const DIV_RN_WGSL = `
fn divRN(a: f32, b: f32) -> f32 {
  let ua = bitcast<u32>(a);
  let ub = bitcast<u32>(b);
  let ea = i32((ua >> 23u) & 0xffu);
  let eb = i32((ub >> 23u) & 0xffu);
  if (ea == 0 || eb == 0 || ea == 255 || eb == 255) { return a / b; }
  let sign = (ua ^ ub) & 0x80000000u;
  var ma = (ua & 0x7fffffu) | 0x800000u;
  let mb = (ub & 0x7fffffu) | 0x800000u;
  var e = ea - eb + 127;
  if (ma < mb) {
    ma = ma << 1u;
    e = e - 1;
  }
  // restoring division: q = floor(ma · 2^24 / mb) in [2^24, 2^25), remainder r / 2
  var q = 0u;
  var r = ma;
  for (var k = 0u; k < 25u; k = k + 1u) {
    q = q << 1u;
    if (r >= mb) {
      r = r - mb;
      q = q | 1u;
    }
    r = r << 1u;
  }
  var m = q >> 1u;
  if ((q & 1u) != 0u && (r != 0u || (m & 1u) != 0u)) { m = m + 1u; }
  if (m == 0x1000000u) {
    m = 0x800000u;
    e = e + 1;
  }
  if (e <= 0 || e >= 255) { return a / b; }
  return bitcast<f32>(sign | (u32(e) << 23u) | (m & 0x7fffffu));
}
`;

/** WGSL of the dynamic-group grid fit (see the module doc). */
export function gptqParamsWGSL(): string {
  return `
struct P { rows: u32, cols: u32, gs: u32, g0: u32, ng: u32, ngroups: u32, maxq: u32, sym: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> W: array<f32>;
@group(0) @binding(2) var<storage, read_write> grid: array<vec2<f32>>;
${DIV_RN_WGSL}
@compute @workgroup_size(${GPTQ_PARAMS_WORKGROUP}, 1, 1)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  let t = (wid.x + wid.y * nwg.x) * ${GPTQ_PARAMS_WORKGROUP}u + lid.x;
  if (t >= p.rows * p.ng) { return; }
  let row = t / p.ng;
  let g = p.g0 + t % p.ng;
  let c0 = g * p.gs;
  let c1 = min(c0 + p.gs, p.cols);
  var xmin = 0.0;
  var xmax = 0.0;
  let base = row * p.cols;
  for (var c = c0; c < c1; c = c + 1u) {
    let v = W[base + c];
    if (v < xmin) { xmin = v; }
    if (v > xmax) { xmax = v; }
  }
  if (p.sym != 0u) {
    xmax = max(abs(xmin), xmax);
    if (xmin < 0.0) { xmin = -xmax; }
  }
  if (xmin == 0.0 && xmax == 0.0) {
    xmin = -1.0;
    xmax = 1.0;
  }
  let maxq = f32(p.maxq);
  let scale = divRN(xmax - xmin, maxq);
  var zero = f32(p.maxq + 1u) * 0.5;
  if (p.sym == 0u) { zero = round(divRN(-xmin, scale)); }
  grid[row * p.ngroups + g] = vec2<f32>(scale, zero);
}
`;
}

/** The groups whose first column lies in the block `[i1, i2)`: `{ g0, ng }` (ng may be 0). */
export function groupsStartingIn(i1: number, i2: number, groupSize: number): {
  g0: number;
  ng: number;
} {
  const g0 = Math.ceil(i1 / groupSize);
  const g1 = Math.floor((i2 - 1) / groupSize);
  return { g0, ng: Math.max(0, g1 - g0 + 1) };
}

/** Options of {@linkcode gptqParamsRef} (the kernel's uniforms). */
export interface GptqParamsRefOptions {
  /** Rows of W. */
  rows: number;
  /** Columns of W. */
  cols: number;
  /** Columns per group (the last one may be shorter). */
  groupSize: number;
  /** First group to fit. */
  g0: number;
  /** Groups to fit. */
  ng: number;
  /** Groups per row of the grid. */
  ngroups: number;
  /** Largest code. */
  maxq: number;
  /** Symmetric grid. */
  sym: boolean;
}

/**
 * CPU reference of the kernel: fits groups `g0 .. g0+ng−1` of every row of `w` (float32
 * [rows, cols]) into the interleaved (scale, zero) `grid` [rows, ngroups], rounding as float32
 * (`Math.fround`; float64 quotients rounded once are correctly rounded float32 quotients).
 * Same results as `findParams` (src/quant/core/grid.ts) without MSE.
 */
export function gptqParamsRef(w: Float32Array, o: GptqParamsRefOptions, grid: Float32Array): void {
  const f = Math.fround;
  for (let r = 0; r < o.rows; r++) {
    for (let g = o.g0; g < o.g0 + o.ng; g++) {
      const c0 = g * o.groupSize, c1 = Math.min(c0 + o.groupSize, o.cols);
      let xmin = 0, xmax = 0;
      for (let c = c0; c < c1; c++) {
        const v = w[r * o.cols + c];
        if (v < xmin) xmin = v;
        if (v > xmax) xmax = v;
      }
      if (o.sym) {
        xmax = Math.max(Math.abs(xmin), xmax);
        if (xmin < 0) xmin = -xmax;
      }
      if (xmin === 0 && xmax === 0) {
        xmin = -1;
        xmax = 1;
      }
      const scale = f(f(xmax - xmin) / o.maxq);
      const t = f(-xmin / scale), rt = Math.round(t);
      const zero = o.sym ? (o.maxq + 1) / 2 : (rt - t === 0.5 && rt % 2 !== 0 ? rt - 1 : rt);
      grid[2 * (r * o.ngroups + g)] = scale;
      grid[2 * (r * o.ngroups + g) + 1] = zero;
    }
  }
}

/**
 * WGSL of the column/row gather of GPTQ's act-order on the device:
 * `dst[i, j] = src[rowIdx[i], colIdx[j]]` for `dst` [rows, cols] and `src` with `cols` columns
 * (`rowIdx` unused when `rowsIdentity` is 1). W uses it with the identity rows, H with
 * `rowIdx = colIdx = perm`. Binding layout: 0 = uniforms {rows, cols, rowsIdentity, 0}, 1 = src,
 * 2 = rowIdx u32, 3 = colIdx u32, 4 = dst. Dispatch: ceil(rows·cols / 256) workgroups, (x, y).
 */
export function gatherWGSL(): string {
  return `
struct P { rows: u32, cols: u32, rowsIdentity: u32, p0: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> rowIdx: array<u32>;
@group(0) @binding(3) var<storage, read> colIdx: array<u32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = (wid.x + wid.y * nwg.x) * 256u + lid.x;
  if (t >= p.rows * p.cols) { return; }
  let i = t / p.cols;
  let j = t % p.cols;
  var si = i;
  if (p.rowsIdentity == 0u) { si = rowIdx[i]; }
  dst[t] = src[si * p.cols + colIdx[j]];
}
`;
}

/** CPU reference of {@linkcode gatherWGSL} (`rowIdx` undefined: identity rows). */
export function gatherRef(
  src: Float32Array,
  o: { rows: number; cols: number; rowIdx?: ArrayLike<number>; colIdx: ArrayLike<number> },
): Float32Array {
  const dst = new Float32Array(o.rows * o.cols);
  for (let i = 0; i < o.rows; i++) {
    const si = o.rowIdx ? o.rowIdx[i] : i;
    for (let j = 0; j < o.cols; j++) dst[i * o.cols + j] = src[si * o.cols + o.colIdx[j]];
  }
  return dst;
}

/**
 * WGSL of GPTQ's Hessian preparation on the diagonal, in place on H [n, n]: `H_ii = diag[i]`,
 * the damped diagonal the caller computed (dead inputs set to 1, `+ percdamp · mean(diag H)`, in
 * float64 and rounded once, as the CPU path), so the device's H is bit for bit the CPU path's
 * float32 H. Binding layout: 0 = uniforms {n}, 1 = H, 2 = diag f32 [n]. Dispatch:
 * ceil(n / 256) workgroups.
 */
export function setDiagonalWGSL(): string {
  return `
struct P { n: u32, p0: u32, p1: u32, p2: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> H: array<f32>;
@group(0) @binding(2) var<storage, read> diag: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let i = wid.x * 256u + lid.x;
  if (i >= p.n) { return; }
  H[i * p.n + i] = diag[i];
}
`;
}
