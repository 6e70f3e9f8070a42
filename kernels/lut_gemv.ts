/**
 * LUT-GEMV for binary-coded (BCQ) weights, after LUT-GEMM (Park et al., ICLR 2024): `Y[b, n] =
 * Σ_k W[n, k] · X[b, k]` with `W[n, k] = Σ_i α[n, g(k), i] · (±1) + offset[n, g(k)]`, for a batch
 * of 1–3 activation rows. For every chunk of 8 activations the workgroup builds the table of
 * its 256 signed sums `Σ_t (bit_t ? +x_t : −x_t)`; each thread then owns one output row and, per
 * binary plane and 32-column word, adds four table look-ups (one per byte of the plane word) and
 * scales the sum by the group's α. The offset term uses `Σ x` = the table entry 0xFF.
 *
 * Layout (as `bcq.ts` packs it): plane bits `PL[(i·rows + n)·words + k/32]`, bit `k % 32`, 1 =
 * +1; `AL[(n·groups + g)·q + i]`; `OFF[n·groups + g]`; X row-major `[m, cols]`; Y `[m, rows]`.
 * `cols` must be a multiple of 32 and the group size a multiple of 32 (or the whole row).
 *
 * Binding layout: 0 = uniforms {rows, cols, words, groups, q, gsWords, hasOffset}, 1 = X,
 * 2 = PL, 3 = AL, 4 = OFF, 5 = Y. Workgroup: {@linkcode LUT_ROWS_PER_WORKGROUP} threads, one row
 * each; dispatch `ceil(rows / LUT_ROWS_PER_WORKGROUP)` workgroups (an (x, y) grid).
 * @module
 */

/** Output rows (threads) per workgroup. */
export const LUT_ROWS_PER_WORKGROUP = 256;
/** Largest batch (activation rows) the kernel takes. */
export const LUT_MAX_BATCH = 3;

/** 32-column words per K tile: the tables of a tile are `m · words · 4 · 256` floats (≤ 12 KiB). */
export function lutTileWords(m: number): number {
  return m === 1 ? 2 : 1;
}

/** WGSL of the LUT-GEMV for a batch of `m` rows (1–3). Entry point "main". */
export function lutGemvWGSL(opts: { m: number }): string {
  const M = opts.m, TW = lutTileWords(M), T = LUT_ROWS_PER_WORKGROUP;
  const per = TW * 1024; // table floats per batch row per tile
  const accs = Array.from({ length: M }, (_, b) => `  var acc${b} = 0.0;`).join("\n");
  const look = (b: number) =>
    `lut[${b * per}u + tb + (bits & 255u)] + lut[${b * per}u + tb + 256u + ((bits >> 8u) & 255u)]` +
    ` + lut[${b * per}u + tb + 512u + ((bits >> 16u) & 255u)] + lut[${
      b * per
    }u + tb + 768u + (bits >> 24u)]`;
  const xs = (b: number) =>
    `lut[${b * per}u + tb + 255u] + lut[${b * per}u + tb + 511u] + lut[${
      b * per
    }u + tb + 767u] + lut[${b * per}u + tb + 1023u]`;
  return `
struct P { rows: u32, cols: u32, words: u32, groups: u32, q: u32, gsWords: u32, hasOffset: u32, pad: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> PL: array<u32>;
@group(0) @binding(3) var<storage, read> AL: array<f32>;
@group(0) @binding(4) var<storage, read> OFF: array<f32>;
@group(0) @binding(5) var<storage, read_write> Y: array<f32>;
var<workgroup> lut: array<f32, ${M * per}>;

@compute @workgroup_size(${T}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = (wid.x + wid.y * nwg.x) * ${T}u + lid.x;
${accs}
  for (var w0 = 0u; w0 < p.words; w0 = w0 + ${TW}u) {
    workgroupBarrier();
    for (var e = lid.x; e < ${M * per}u; e = e + ${T}u) {
      let b = e / ${per}u;
      let rem = e % ${per}u;
      let col0 = w0 * 32u + (rem / 256u) * 8u;
      let pat = rem % 256u;
      var s = 0.0;
      if (col0 < p.cols) {
        for (var t = 0u; t < 8u; t = t + 1u) {
          let x = X[b * p.cols + col0 + t];
          s = s + select(-x, x, ((pat >> t) & 1u) == 1u);
        }
      }
      lut[e] = s;
    }
    workgroupBarrier();
    if (row < p.rows) {
      for (var tw = 0u; tw < ${TW}u; tw = tw + 1u) {
        let wd = w0 + tw;
        if (wd < p.words) {
          let tb = tw * 1024u;
          let g = wd / p.gsWords;
          let ab = (row * p.groups + g) * p.q;
          for (var i = 0u; i < p.q; i = i + 1u) {
            let bits = PL[(i * p.rows + row) * p.words + wd];
            let a = AL[ab + i];
${
    Array.from({ length: M }, (_, b) => `            acc${b} = acc${b} + a * (${look(b)});`).join(
      "\n",
    )
  }
          }
          if (p.hasOffset == 1u) {
            let off = OFF[row * p.groups + g];
${
    Array.from({ length: M }, (_, b) => `            acc${b} = acc${b} + off * (${xs(b)});`).join(
      "\n",
    )
  }
          }
        }
      }
    }
  }
  if (row < p.rows) {
${Array.from({ length: M }, (_, b) => `    Y[${b}u * p.rows + row] = acc${b};`).join("\n")}
  }
}
`;
}

/** Shapes of a BCQ weight for {@linkcode lutGemvRef}. */
export interface LutGemvDims {
  /** Output rows n. */
  rows: number;
  /** Input columns k. */
  cols: number;
  /** Planes q. */
  q: number;
  /** Columns per α group (a multiple of 32, or `cols`). */
  groupSize: number;
  /** Batch m. */
  m: number;
}

/**
 * CPU reference, written directly from the definition (no tables): `Y[b, n] = Σ_k (Σ_i α·(±1) +
 * offset) · X[b, k]` in float64, returned as float32 `[m, rows]`.
 */
export function lutGemvRef(
  x: Float32Array,
  w: { planes: Uint32Array; alphas: Float32Array; offsets?: ArrayLike<number> },
  d: LutGemvDims,
): Float32Array {
  const { rows, cols, q, groupSize, m } = d;
  const words = Math.ceil(cols / 32), groups = Math.ceil(cols / groupSize);
  const y = new Float32Array(m * rows);
  for (let n = 0; n < rows; n++) {
    const acc = new Float64Array(m);
    for (let k = 0; k < cols; k++) {
      const g = Math.floor(k / groupSize);
      let v = w.offsets ? w.offsets[n * groups + g] : 0;
      for (let i = 0; i < q; i++) {
        const bit = (w.planes[(i * rows + n) * words + (k >>> 5)] >>> (k & 31)) & 1;
        const a = w.alphas[(n * groups + g) * q + i];
        v += bit ? a : -a;
      }
      for (let b = 0; b < m; b++) acc[b] += v * x[b * cols + k];
    }
    for (let b = 0; b < m; b++) y[b * rows + n] = acc[b];
  }
  return y;
}
