/**
 * Copy kernel (one `vec4<f32>` per thread): the bandwidth ceiling that the memory-bound kernels
 * (dequant GEMV) are compared with in `bench/gpu_bench.ts`.
 *
 * Binding layout: 0 = uniforms {n4 (vec4 count)}, 1 = src, 2 = dst.
 * Dispatch: ceil(n4 / 256) workgroups as an (x, y) grid.
 * @module
 */

/** WGSL of the vec4 copy kernel. */
export function copyWGSL(): string {
  return `
struct P { n4: u32, p0: u32, p1: u32, p2: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
  if (i < p.n4) { dst[i] = src[i]; }
}
`;
}

/** CPU reference: a copy. */
export function copyRef(src: Float32Array): Float32Array {
  return src.slice();
}
