/**
 * Rotary position embedding, Hugging Face "rotate half" layout, applied in place to
 * x [T, heads, headDim]: for i < headDim/2, with pos = posOffset + t (or posOffset + t mod
 * `period` for a batch of sequences of `period` rows each),
 * `x[i] ← x[i]·cos − x[i+h/2]·sin`, `x[i+h/2] ← x[i+h/2]·cos + x[i]·sin`.
 *
 * cos/sin come from tables [maxPos, headDim/2] built on the CPU by {@linkcode ropeTables} the way
 * HF builds them in float32 (inv_freq = 1/θ^(2i/d), angle = pos·inv_freq), because WGSL's
 * sin/cos are only accurate to 2⁻¹¹ near ±π and unspecified for the large angles of late
 * positions.
 *
 * Binding layout: 0 = uniforms {T, heads, headDim, posOffset, period (0 = none)}, 1 = X (read_write),
 * 2 = cos, 3 = sin. Dispatch: ceil(T·heads·headDim/2 / 256) workgroups as an (x, y) grid.
 * @module
 */

/** WGSL of the in-place RoPE kernel. */
export function ropeWGSL(): string {
  return `
struct P { T: u32, heads: u32, hd: u32, pos0: u32, period: u32, p0: u32, p1: u32, p2: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read> Cs: array<f32>;
@group(0) @binding(3) var<storage, read> Sn: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let half = p.hd / 2u;
  let id = (wid.x + wid.y * nwg.x) * 256u + lid.x;
  if (id >= p.T * p.heads * half) { return; }
  let i = id % half;
  let th = id / half;
  let t = th / p.heads;
  let base = th * p.hd;
  let tp = select(t, t % p.period, p.period > 0u);
  let tab = (p.pos0 + tp) * half + i;
  let c = Cs[tab];
  let s = Sn[tab];
  let a = X[base + i];
  let b = X[base + i + half];
  X[base + i] = a * c - b * s;
  X[base + i + half] = b * c + a * s;
}
`;
}

/** cos/sin tables [maxPos, headDim/2] in float32, as HF's rotary embedding computes them. */
export function ropeTables(
  opts: { headDim: number; maxPos: number; theta: number },
): { cos: Float32Array; sin: Float32Array } {
  const { headDim, maxPos, theta } = opts;
  const f = Math.fround;
  const half = headDim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = f(1 / f(theta ** f((2 * i) / headDim)));
  const cos = new Float32Array(maxPos * half), sin = new Float32Array(maxPos * half);
  for (let p = 0; p < maxPos; p++) {
    for (let i = 0; i < half; i++) {
      const a = f(p * inv[i]);
      cos[p * half + i] = Math.cos(a);
      sin[p * half + i] = Math.sin(a);
    }
  }
  return { cos, sin };
}

/** CPU reference of RoPE (returns a new array). */
export function ropeRef(
  x: Float32Array,
  tables: { cos: Float32Array; sin: Float32Array },
  opts: { T: number; heads: number; headDim: number; posOffset: number; period?: number },
): Float32Array {
  const { T, heads, headDim, posOffset } = opts;
  const half = headDim / 2;
  const y = x.slice();
  for (let t = 0; t < T; t++) {
    const pos = posOffset + (opts.period ? t % opts.period : t);
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const c = tables.cos[pos * half + i], s = tables.sin[pos * half + i];
        const a = x[base + i], b = x[base + i + half];
        y[base + i] = a * c - b * s;
        y[base + i + half] = b * c + a * s;
      }
    }
  }
  return y;
}
