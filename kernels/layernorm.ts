/**
 * LayerNorm over rows: `y = (x − mean) / sqrt(var + eps) · weight + bias`, f32, the variance
 * computed in a second pass over `x − mean` (no cancellation).
 * One workgroup of 256 threads per row.
 *
 * Binding layout: 0 = uniforms {rows, d, eps (f32)}, 1 = X [rows, d], 2 = weight [d],
 * 3 = bias [d], 4 = Y. Dispatch: `rows` workgroups as an (x, y) grid.
 * @module
 */
import { reduceWGSL } from "./_reduce.ts";

/** WGSL of the LayerNorm kernel. */
export function layernormWGSL(): string {
  return `
struct P { rows: u32, d: u32, eps: f32, pad: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> Wt: array<f32>;
@group(0) @binding(3) var<storage, read> Bs: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
${reduceWGSL()}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= p.rows) { return; }
  let tid = lid.x;
  let base = row * p.d;
  var s = 0.0;
  for (var i = tid; i < p.d; i = i + 256u) { s = s + X[base + i]; }
  let mean = wg_sum(s, tid) / f32(p.d);
  var ss = 0.0;
  for (var i = tid; i < p.d; i = i + 256u) { let v = X[base + i] - mean; ss = ss + v * v; }
  let inv = inverseSqrt(wg_sum(ss, tid) / f32(p.d) + p.eps);
  for (var i = tid; i < p.d; i = i + 256u) {
    Y[base + i] = (X[base + i] - mean) * inv * Wt[i] + Bs[i];
  }
}
`;
}

/** CPU reference of LayerNorm (float64 sums, biased variance as torch). */
export function layernormRef(
  x: Float32Array,
  weight: Float32Array,
  bias: Float32Array,
  opts: { rows: number; d: number; eps: number },
): Float32Array {
  const { rows, d, eps } = opts;
  const y = new Float32Array(rows * d);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let i = 0; i < d; i++) s += x[r * d + i];
    const mean = s / d;
    let ss = 0;
    for (let i = 0; i < d; i++) ss += (x[r * d + i] - mean) ** 2;
    const inv = 1 / Math.sqrt(ss / d + eps);
    for (let i = 0; i < d; i++) y[r * d + i] = (x[r * d + i] - mean) * inv * weight[i] + bias[i];
  }
  return y;
}
