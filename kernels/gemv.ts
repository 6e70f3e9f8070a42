/**
 * Dense f32 GEMV (decode, one token): `y[n] = W[n, k] · x[k]`, W row-major in the linear-layer
 * layout [out, in]. Bandwidth-bound: the tiled matmul would compute 128 rows of A to use one, so
 * one-row products with Bᵀ go through this kernel instead.
 *
 * Mapping: a workgroup of `GEMV_F32_LANES × GEMV_F32_ROWS` threads owns `GEMV_F32_ROWS` rows;
 * the lanes of a row walk k with a stride of `GEMV_F32_LANES` (consecutive lanes read consecutive
 * `vec4`s when `k % 4 == 0`, scalars otherwise) and are reduced in workgroup memory.
 *
 * Binding layout: 0 = uniforms {n, kv (k in vec4s, or k), 0, 0}, 1 = x, 2 = W, 3 = y.
 * Dispatch: ceil(n / GEMV_F32_ROWS) workgroups as an (x, y) grid.
 * @module
 */

/** Lanes per row. */
export const GEMV_F32_LANES = 64;
/** Rows per workgroup. */
export const GEMV_F32_ROWS = 4;

/** WGSL of the dense GEMV; `vec4` loads when k is a multiple of 4. */
export function gemvWGSL(opts: { vec4: boolean }): string {
  const L = GEMV_F32_LANES, R = GEMV_F32_ROWS;
  const t = opts.vec4 ? "vec4<f32>" : "f32";
  const mac = opts.vec4
    ? "acc = acc + dot(W[base + i], X[i]);"
    : "acc = fma(W[base + i], X[i], acc);";
  const steps: string[] = [];
  for (let s = L / 2; s > 0; s >>= 1) {
    steps.push(
      `  if (lid.x < ${s}u) { red[r0 + lid.x] = red[r0 + lid.x] + red[r0 + lid.x + ${s}u]; }
  workgroupBarrier();`,
    );
  }
  return `
struct P { n: u32, kv: u32, p0: u32, p1: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${t}>;
@group(0) @binding(2) var<storage, read> W: array<${t}>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
var<workgroup> red: array<f32, ${L * R}>;

@compute @workgroup_size(${L}, ${R}, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = (wid.x + wid.y * nwg.x) * ${R}u + lid.y;
  let r0 = lid.y * ${L}u;
  var acc = 0.0;
  if (row < p.n) {
    let base = row * p.kv;
    for (var i = lid.x; i < p.kv; i = i + ${L}u) { ${mac} }
  }
  red[r0 + lid.x] = acc;
  workgroupBarrier();
${steps.join("\n")}
  if (lid.x == 0u && row < p.n) { Y[row] = red[r0]; }
}
`;
}

/** CPU reference: `y = W · x` (float64 sums). */
export function gemvRef(
  w: Float32Array,
  x: Float32Array,
  o: { n: number; k: number },
): Float32Array {
  const y = new Float32Array(o.n);
  for (let r = 0; r < o.n; r++) {
    let s = 0;
    for (let i = 0; i < o.k; i++) s += w[r * o.k + i] * x[i];
    y[r] = s;
  }
  return y;
}
