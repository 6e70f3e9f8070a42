/**
 * Hessian accumulation `H = beta·H + alpha·XᵀX` for X [n tokens, d features] (GPTQ: alpha = 2/n
 * over the running token count). It is the tiled matmul of `matmul.ts` with A = Xᵀ read K-major
 * straight from X (both operands are read along contiguous rows of X), accumulating into H, and
 * computing only the upper tiles: a workgroup below the diagonal exits and the others also write
 * their mirror, halving the arithmetic.
 *
 * Binding layout (same as the matmul): 0 = uniforms, 1 = X, 2 = X, 3 = H.
 * Uniforms: M = N = d, K = n, lda = ldb = ldc = d, offsets 0, alpha, beta.
 * Dispatch: (ceil(d/128), ceil(d/128), 1).
 * @module
 */
import { matmulWGSL } from "./matmul.ts";

/** WGSL of the symmetric XᵀX accumulation (f32). Entry point "main". */
export function xtxWGSL(): string {
  return matmulWGSL({ transA: true, accumulate: true, symmetric: true });
}

/** CPU reference: `beta·H + alpha·XᵀX` (float64 sums), X [n, d] row-major, H [d, d]. */
export function xtxRef(
  x: Float32Array,
  h: Float32Array,
  opts: { n: number; d: number; alpha: number; beta?: number },
): Float32Array {
  const { n, d, alpha } = opts;
  const beta = opts.beta ?? 1;
  const acc = new Float64Array(d * d);
  for (let t = 0; t < n; t++) {
    const row = t * d;
    for (let i = 0; i < d; i++) {
      const xi = x[row + i];
      if (xi === 0) continue;
      const ai = i * d;
      for (let j = i; j < d; j++) acc[ai + j] += xi * x[row + j];
    }
  }
  const out = new Float32Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = i; j < d; j++) {
      out[i * d + j] = beta * h[i * d + j] + alpha * acc[i * d + j];
      out[j * d + i] = beta * h[j * d + i] + alpha * acc[i * d + j];
    }
  }
  return out;
}

/**
 * WGSL of the Hessian scaling `H = (2/n)·S` of a summed `S = Σ XᵀX` over `n` rows, on the
 * device, plus H's diagonal into a second buffer (the host reads back only those `d` floats).
 * The host pipeline computes `fround(S · f)` with `f = 2/n` a float64: the exact product rounded
 * to 53 bits, then to 24. Float32 arithmetic cannot reproduce that double rounding (and WGSL's
 * division and `fma` are not guaranteed exact: lavapipe's `fma` is not fused), so the kernel
 * does it in integers: S's 24-bit significand times f's 53-bit significand (passed as two u32
 * words) in 16-bit limbs, round-half-even to 53 bits, then to 24, and the f32 assembled from the
 * bits: bit for bit the host's value on every device. A result below the normal range (|H| <
 * 2⁻¹²⁶, never a real Σ XᵀX entry) and non-finite S fall back to the f32 product `S · f32(f)`.
 *
 * Binding layout: 0 = uniforms {count: u32 = d², d: u32, fLo: u32, fHi: u32 (f's significand,
 * 53 bits, low and high words), fExp: i32 (f = significand · 2^fExp), f: f32 (f rounded), 0, 0},
 * 1 = S f32 [d, d] (read), 2 = H f32 [d, d], 3 = diag f32 [d].
 * Dispatch: ceil(d² / 256) workgroups (2-D grid when over the limit).
 */
export function hessianScaleWGSL(): string {
  return `
struct P { count: u32, d: u32, fLo: u32, fHi: u32, fExp: i32, f: f32, p0: u32, p1: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> S: array<f32>;
@group(0) @binding(2) var<storage, read_write> H: array<f32>;
@group(0) @binding(3) var<storage, read_write> D: array<f32>;

// Bits [pos, pos + 32) of the 96-bit integer in 16-bit limbs L[0..5].
fn bitsAt(L0: array<u32, 6>, pos: u32) -> u32 {
  var L = L0;
  let k = pos / 16u;
  let sh = pos % 16u;
  var w = 0u;
  if (k < 6u) { w = L[k] >> sh; }
  if (k + 1u < 6u) { w |= L[k + 1u] << (16u - sh); }
  if (sh != 0u && k + 2u < 6u) { w |= L[k + 2u] << (32u - sh); }
  return w;
}

// fround(s · f) as the host computes it (f64 product, then f32); see the module doc.
fn scale(s: f32) -> f32 {
  let b = bitcast<u32>(s);
  let sign = b & 0x80000000u;
  let E = (b >> 23u) & 0xffu;
  var m = b & 0x7fffffu;
  if (E == 255u) { return s * p.f; }
  if (E == 0u && m == 0u) { return s * p.f; }
  var es: i32;
  if (E == 0u) {
    es = -149;
    while (m < 0x800000u) { m = m << 1u; es -= 1; }
  } else {
    m = m | 0x800000u;
    es = i32(E) - 150;
  }
  // P = m · f's significand: 24 × 53 bits in 16-bit limbs.
  var a = array<u32, 2>(m & 0xffffu, m >> 16u);
  var c = array<u32, 4>(p.fLo & 0xffffu, p.fLo >> 16u, p.fHi & 0xffffu, p.fHi >> 16u);
  var L = array<u32, 6>(0u, 0u, 0u, 0u, 0u, 0u);
  for (var i = 0u; i < 2u; i++) {
    for (var j = 0u; j < 4u; j++) {
      let q = a[i] * c[j];
      L[i + j] += q & 0xffffu;
      L[i + j + 1u] += q >> 16u;
    }
  }
  for (var i = 0u; i < 5u; i++) { L[i + 1u] += L[i] >> 16u; L[i] = L[i] & 0xffffu; }
  // P has 76 or 77 bits (m in [2^23, 2^24), significand in [2^52, 2^53)).
  var t = 76u;
  if ((L[4] >> 12u) != 0u) { t = 77u; }
  // Round to 53 bits (half-even): P1 = hi·2^32 + lo.
  let k1 = t - 53u;
  var lo = bitsAt(L, k1);
  var hi = bitsAt(L, k1 + 32u) & 0x1fffffu;
  let rem1 = bitsAt(L, 0u) & ((1u << k1) - 1u);
  let half1 = 1u << (k1 - 1u);
  if (rem1 > half1 || (rem1 == half1 && (lo & 1u) == 1u)) {
    lo += 1u;
    if (lo == 0u) { hi += 1u; }
  }
  var t1 = 53u;
  if (hi >= 0x200000u) { t1 = 54u; }
  // Round P1 to 24 bits (half-even).
  let k2 = t1 - 24u;
  var m2 = (hi << (32u - k2)) | (lo >> k2);
  let rem2 = lo & ((1u << k2) - 1u);
  let half2 = 1u << (k2 - 1u);
  if (rem2 > half2 || (rem2 == half2 && (m2 & 1u) == 1u)) { m2 += 1u; }
  var e = i32(k1 + k2) + es + p.fExp;
  if (m2 >= 0x1000000u) { m2 = m2 >> 1u; e += 1; }
  let biased = e + 23 + 127;
  if (biased <= 0) { return s * p.f; }
  if (biased >= 255) { return bitcast<f32>(sign | 0x7f800000u); }
  return bitcast<f32>(sign | (u32(biased) << 23u) | (m2 & 0x7fffffu));
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = (wid.x + wid.y * nwg.x) * 256u + lid.x;
  if (t >= p.count) { return; }
  let y = scale(S[t]);
  H[t] = y;
  let i = t / p.d;
  if (t == i * p.d + i) { D[i] = y; }
}
`;
}

/**
 * The uniform fields of {@linkcode hessianScaleWGSL} for `d` and `n` rows: `f = 2/n` as a
 * float64 split into its 53-bit significand (two u32 words) and exponent.
 */
export function hessianScaleFields(
  o: { d: number; n: number },
): (number | { f: number })[] {
  const f = 2 / o.n;
  const dv = new DataView(new ArrayBuffer(8));
  dv.setFloat64(0, f);
  const hiWord = dv.getUint32(0), lo = dv.getUint32(4);
  const E = (hiWord >>> 20) & 0x7ff;
  if (E === 0 || E === 0x7ff) throw new RangeError(`hessianScaleFields: 2/${o.n} is not normal`);
  const hi = (hiWord & 0xfffff) | 0x100000;
  return [o.d * o.d, o.d, lo, hi, (E - 1075) >>> 0, { f }, 0, 0];
}

/**
 * CPU reference of {@linkcode hessianScaleWGSL}, the host pipeline's formula: `H = fround(S ·
 * (2/n))` (float64 product, one rounding to float32) and its diagonal.
 */
export function hessianScaleRef(
  S: Float32Array,
  opts: { d: number; n: number },
): { H: Float32Array; diag: Float32Array } {
  const { d, n } = opts;
  const f = 2 / n;
  const H = new Float32Array(d * d);
  for (let j = 0; j < H.length; j++) H[j] = S[j] * f;
  const diag = new Float32Array(d);
  for (let i = 0; i < d; i++) diag[i] = H[i * d + i];
  return { H, diag };
}
