/**
 * LLM.int8() (Dettmers et al. 2022) as a fake-quant of a linear's operands, the form both
 * backends run for a `linearProduct` spec: for `Y = X Wᵀ` (X [rows, in], W [out, in]),
 *
 * - outlier input dimensions `O = { j : ∃i |X_ij| ≥ threshold }` over the call's rows
 *   (bitsandbytes' `A.abs() >= threshold`; `threshold` ∞: none, 0: every dimension);
 * - `X̃`: each row absmax-int8 over its non-outlier columns (`scale = max_{j∉O} |X_ij| / 127`, 1
 *   where 0; `round(x / scale)` clamped to ±127, half to even), outlier columns exact;
 * - `W̃`: each output row absmax-int8 over *all* its columns (bitsandbytes quantizes W once),
 *   outlier columns exact (the paper's FP16 `X^O W^O` part);
 * - `Y = X̃ W̃ᵀ`: the integer products `q_x q_w` scaled by `s_x s_w` plus the FP outlier part, in
 *   f32 — the vector-wise int8 product of `src/quant/weight_activation/llm_int8.ts` up to the
 *   f32 rounding of the scales (there the int32 sum is exact and scaled once).
 *
 * Kernels: {@linkcode int8MaskWGSL} (one thread per column; bindings 0 = uniforms {rows, cols,
 * useThr, thr (f32)}, 1 = x, 2 = mask [cols] (1.0 outlier)) and {@linkcode int8RowsWGSL} (one
 * 64-thread workgroup per row; bindings 0 = uniforms {rows, cols, maskInMax, 0}, 1 = x, 2 = y,
 * 3 = mask). The CPU references do the same f32 steps.
 * @module
 */

/** A spec on a linear's product (plain data; see the module doc). */
export interface ProductSpec {
  /** The method: LLM.int8()'s vector-wise int8 with outlier decomposition. */
  method: "llm_int8";
  /** Outlier threshold on |x| (default 6.0, bitsandbytes' `llm_int8_threshold`); ∞ = none. */
  threshold?: number;
}

/** Threads per workgroup of {@linkcode int8RowsWGSL} (and of the mask kernel). */
export const INT8_WG = 64;

/** Outlier columns of x [rows, cols] (1 where some |x_ij| ≥ threshold). */
export function outlierMaskRef(
  x: Float32Array,
  rows: number,
  cols: number,
  threshold: number,
): Uint8Array {
  const mask = new Uint8Array(cols);
  if (threshold === Infinity) return mask;
  const t = Math.fround(threshold);
  for (let j = 0; j < cols; j++) {
    for (let r = 0; r < rows; r++) {
      if (Math.abs(x[r * cols + j]) >= t) {
        mask[j] = 1;
        break;
      }
    }
  }
  return mask;
}

/**
 * Each row of x [rows, cols] absmax-int8 fake-quantized, masked columns exact (a new array); the
 * absmax spans the masked columns too when `maskInMax` (the weight), else not (the input).
 */
export function int8RowsRef(
  x: Float32Array,
  rows: number,
  cols: number,
  mask: Uint8Array,
  maskInMax: boolean,
): Float32Array {
  const f = Math.fround;
  const y = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let m = 0;
    for (let j = 0; j < cols; j++) {
      if (maskInMax || !mask[j]) m = Math.max(m, Math.abs(x[o + j]));
    }
    const scale = m !== 0 ? f(m / 127) : 1;
    for (let j = 0; j < cols; j++) {
      if (mask[j]) {
        y[o + j] = x[o + j];
        continue;
      }
      const q = Math.min(Math.max(roundHalfEven(f(x[o + j] / scale)), -127), 127);
      y[o + j] = f(scale * q) + 0;
    }
  }
  return y;
}

function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

/** WGSL of the outlier-column kernel (see the module doc). */
export function int8MaskWGSL(): string {
  return `
struct P { rows: u32, cols: u32, useThr: u32, thr: f32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> mask: array<f32>;

@compute @workgroup_size(${INT8_WG}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let j = (wid.x + wid.y * nwg.x) * ${INT8_WG}u + lid.x;
  if (j >= p.cols) { return; }
  var hit = 0.0;
  if (p.useThr != 0u) {
    for (var r = 0u; r < p.rows; r = r + 1u) {
      if (abs(x[r * p.cols + j]) >= p.thr) { hit = 1.0; break; }
    }
  }
  mask[j] = hit;
}
`;
}

/** WGSL of the per-row int8 kernel (see the module doc). */
export function int8RowsWGSL(): string {
  const W = INT8_WG;
  return `
struct P { rows: u32, cols: u32, maskInMax: u32, p0: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
var<workgroup> red: array<f32, ${W}>;

@compute @workgroup_size(${W}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = wid.x + wid.y * nwg.x;
  let tid = lid.x;
  if (r >= p.rows) { return; }
  let o = r * p.cols;
  var m = 0.0;
  for (var j = tid; j < p.cols; j = j + ${W}u) {
    if (p.maskInMax != 0u || mask[j] == 0.0) { m = max(m, abs(x[o + j])); }
  }
  red[tid] = m;
  workgroupBarrier();
  for (var s = ${W / 2}u; s > 0u; s = s >> 1u) {
    if (tid < s) { red[tid] = max(red[tid], red[tid + s]); }
    workgroupBarrier();
  }
  var scale = 1.0;
  if (red[0] != 0.0) { scale = red[0] / 127.0; }
  for (var j = tid; j < p.cols; j = j + ${W}u) {
    let v = x[o + j];
    if (mask[j] != 0.0) {
      y[o + j] = v;
    } else {
      let q = scale * clamp(round(v / scale), -127.0, 127.0);
      y[o + j] = select(q, 0.0, q == 0.0);
    }
  }
}
`;
}
