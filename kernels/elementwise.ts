/**
 * The small elementwise kernels a GPU-resident decoder step needs between its products: token
 * embedding gather, ranged copy (KV-cache append, last-row pick), residual
 * add, bias add, SwiGLU and the OPT activations. Every kernel is one thread per output element over
 * a 1-D range split into an (x, y) workgroup grid (`id = (wid.x + wid.y·nwg.x)·256 + lid.x`).
 *
 * Each WGSL function below has its CPU reference next to it (`*Ref`), in float32 the way the
 * TypeScript decoder (`src/models/decoder.ts`) computes the same step, so tests compare them
 * across shapes.
 *
 * Binding layouts (binding 0 is always the uniforms):
 * - embed: {n = T·d, d, r0, rows}, 1 = ids u32 [T], 2 = E rows r0..r0+rows [rows, d],
 *   3 = H [T, d] (rows of other ids are left as they are).
 * - copyRange: {n, srcOffset, dstOffset}, 1 = src, 2 = dst (elements, f32).
 * - add: {n, xOffset}, 1 = x, 2 = y; `y[i] += x[xOffset + i]`.
 * - bias: {n = rows·cols, cols}, 1 = b [cols], 2 = y [rows, cols]; `y[r, j] += b[j]`.
 * - swiglu: {n}, 1 = up, 2 = gate; `gate = silu(gate) · up` (SiLU(g) = g / (1 + e^−g)).
 * - activation (relu | gelu): {n}, 1 = y, in place. GELU is the erf form
 *   `0.5·x·(1 + erf(x/√2))` with the same erfc fit the TypeScript decoder uses (|error| < 1.2e-7).
 * Dispatch: ceil(n / 256) workgroups as an (x, y) grid.
 * @module
 */

/** Threads per workgroup of every elementwise kernel. */
export const ELEMENTWISE_WG = 256;

const HEAD = (fields: string) => `
struct P { ${fields} };
@group(0) @binding(0) var<uniform> p: P;`;

const MAIN = (body: string) => `
@compute @workgroup_size(${ELEMENTWISE_WG}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = (wid.x + wid.y * nwg.x) * ${ELEMENTWISE_WG}u + lid.x;
  if (i >= p.n) { return; }
${body}
}
`;

/**
 * WGSL of the embedding gather `H[t, j] = E[ids[t] − r0, j]` for the ids in [r0, r0 + rows): `E`
 * holds the rows r0.. of the table (a table over the binding limit is gathered part by part).
 */
export function embedWGSL(): string {
  return `${HEAD("n: u32, d: u32, r0: u32, rows: u32")}
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> E: array<f32>;
@group(0) @binding(3) var<storage, read_write> H: array<f32>;
${
    MAIN(`  let id = ids[i / p.d];
  if (id < p.r0 || id >= p.r0 + p.rows) { return; }
  H[i] = E[(id - p.r0) * p.d + i % p.d];`)
  }`;
}

/** CPU reference of {@linkcode embedWGSL}. */
export function embedRef(ids: ArrayLike<number>, E: Float32Array, d: number): Float32Array {
  const out = new Float32Array(ids.length * d);
  for (let t = 0; t < ids.length; t++) out.set(E.subarray(ids[t] * d, (ids[t] + 1) * d), t * d);
  return out;
}

/** WGSL of the ranged copy `dst[dstOffset + i] = src[srcOffset + i]`, i < n. */
export function copyRangeWGSL(): string {
  return `${HEAD("n: u32, srcOffset: u32, dstOffset: u32, p0: u32")}
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
${MAIN("  dst[p.dstOffset + i] = src[p.srcOffset + i];")}`;
}

/** CPU reference of {@linkcode copyRangeWGSL} (in place on `dst`). */
export function copyRangeRef(
  src: Float32Array,
  dst: Float32Array,
  o: { n: number; srcOffset: number; dstOffset: number },
): Float32Array {
  dst.set(src.subarray(o.srcOffset, o.srcOffset + o.n), o.dstOffset);
  return dst;
}

/** WGSL of the ranged add `y[i] += x[xOffset + i]` (residuals; OPT's learned positions). */
export function addWGSL(): string {
  return `${HEAD("n: u32, xOffset: u32, p0: u32, p1: u32")}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
${MAIN("  y[i] = y[i] + x[p.xOffset + i];")}`;
}

/** CPU reference of {@linkcode addWGSL} (returns a new array). */
export function addRef(x: Float32Array, y: Float32Array, xOffset = 0): Float32Array {
  const o = new Float32Array(y.length);
  for (let i = 0; i < y.length; i++) o[i] = y[i] + x[xOffset + i];
  return o;
}

/** WGSL of the bias add `y[r, j] += b[j]`. */
export function biasWGSL(): string {
  return `${HEAD("n: u32, cols: u32, p0: u32, p1: u32")}
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
${MAIN("  y[i] = y[i] + b[i % p.cols];")}`;
}

/** CPU reference of {@linkcode biasWGSL} (returns a new array). */
export function biasRef(b: Float32Array, y: Float32Array): Float32Array {
  const o = new Float32Array(y.length);
  for (let i = 0; i < y.length; i++) o[i] = y[i] + b[i % b.length];
  return o;
}

/** WGSL of SwiGLU in place on the gate: `gate = gate / (1 + e^−gate) · up`. */
export function swigluWGSL(): string {
  return `${HEAD("n: u32, p0: u32, p1: u32, p2: u32")}
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<storage, read_write> gate: array<f32>;
${
    MAIN(`  let g = gate[i];
  gate[i] = g / (1.0 + exp(-g)) * up[i];`)
  }`;
}

/** CPU reference of {@linkcode swigluWGSL} (the decoder's formula; returns a new array). */
export function swigluRef(up: Float32Array, gate: Float32Array): Float32Array {
  const o = new Float32Array(gate.length);
  for (let i = 0; i < o.length; i++) o[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
  return o;
}

/** Activations of {@linkcode activationWGSL}. */
export type Activation = "relu" | "gelu";

/** WGSL of an in-place activation (OPT's fc1 output). */
export function activationWGSL(kind: Activation): string {
  const body = kind === "relu" ? "  y[i] = max(y[i], 0.0);" : `  let x = y[i];
  let z = abs(x) * 0.70710678118654752;
  let t = 1.0 / (1.0 + 0.5 * z);
  let c = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
    t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
    t * (-0.82215223 + t * 0.17087277)))))))));
  let e = select(c - 1.0, 1.0 - c, x >= 0.0);
  y[i] = 0.5 * x * (1.0 + e);`;
  if (kind !== "relu" && kind !== "gelu") throw new Error(`activationWGSL: unknown ${kind}`);
  return `${HEAD("n: u32, p0: u32, p1: u32, p2: u32")}
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
${MAIN(body)}`;
}

/** CPU reference of {@linkcode activationWGSL} (float64 math, rounded; returns a new array). */
export function activationRef(kind: Activation, y: Float32Array): Float32Array {
  const o = new Float32Array(y.length);
  for (let i = 0; i < y.length; i++) {
    const x = y[i];
    o[i] = kind === "relu" ? (x > 0 ? x : 0) : 0.5 * x * (1 + erfFit(x / Math.SQRT2));
  }
  return o;
}

/** erf from Numerical Recipes' erfc Chebyshev fit (|error| < 1.2e-7), as the decoder uses. */
export function erfFit(x: number): number {
  const t = 1 / (1 + 0.5 * Math.abs(x));
  const y = 1 - t * Math.exp(
        -x * x - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
                      t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
                                      t * (-0.82215223 + t * 0.17087277)))))))),
      );
  return x >= 0 ? y : -y;
}
