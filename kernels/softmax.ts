/**
 * Row softmax: `y = exp(x − max) / Σ exp(x − max)`, f32, one workgroup of 256 threads per row.
 *
 * Binding layout: 0 = uniforms {rows, d}, 1 = X [rows, d], 2 = Y.
 * Dispatch: `rows` workgroups as an (x, y) grid.
 * @module
 */
import { reduceWGSL, rowMaxSumExpWGSL } from "./_reduce.ts";

/** WGSL of the row softmax kernel. */
export function softmaxWGSL(): string {
  return `
struct P { rows: u32, d: u32, p0: u32, p1: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
${reduceWGSL()}
${rowMaxSumExpWGSL("X")}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= p.rows) { return; }
  let tid = lid.x;
  let base = row * p.d;
  let ms = row_max_sumexp(base, p.d, tid);
  let mx = ms.x;
  let inv = 1.0 / ms.y;
  for (var i = tid; i < p.d; i = i + 256u) { Y[base + i] = exp(X[base + i] - mx) * inv; }
}
`;
}

/** CPU reference of the row softmax (float64). */
export function softmaxRef(x: Float32Array, opts: { rows: number; d: number }): Float32Array {
  const { rows, d } = opts;
  const y = new Float32Array(rows * d);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let i = 0; i < d; i++) m = Math.max(m, x[r * d + i]);
    let s = 0;
    for (let i = 0; i < d; i++) s += Math.exp(x[r * d + i] - m);
    for (let i = 0; i < d; i++) y[r * d + i] = Math.exp(x[r * d + i] - m) / s;
  }
  return y;
}
