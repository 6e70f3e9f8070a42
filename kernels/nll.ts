/**
 * Per-row negative log-likelihood of a target: `nll[r] = log Σ_j exp(x[r, j]) − x[r, target[r]]`
 * (computed as `m + log Σ exp(x − m)` with the row max m), f32, one workgroup of 256 threads per
 * row. Perplexity reads T floats back instead of the [T, vocab] logits.
 *
 * Binding layout: 0 = uniforms {rows, d}, 1 = X [rows, d], 2 = targets u32 [rows], 3 = Y [rows].
 * Dispatch: `rows` workgroups as an (x, y) grid.
 * @module
 */
import { reduceWGSL, rowMaxSumExpWGSL } from "./_reduce.ts";

/** WGSL of the row NLL kernel. */
export function nllWGSL(): string {
  return `
struct P { rows: u32, d: u32, p0: u32, p1: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
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
  if (tid == 0u) { Y[row] = ms.x + log(ms.y) - X[base + targets[row]]; }
}
`;
}

/** CPU reference of {@linkcode nllWGSL} (float64 sums). */
export function nllRef(
  x: Float32Array,
  targets: ArrayLike<number>,
  opts: { rows: number; d: number },
): Float64Array {
  const { rows, d } = opts;
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let i = 0; i < d; i++) m = Math.max(m, x[r * d + i]);
    let s = 0;
    for (let i = 0; i < d; i++) s += Math.exp(x[r * d + i] - m);
    y[r] = m + Math.log(s) - x[r * d + targets[r]];
  }
  return y;
}
