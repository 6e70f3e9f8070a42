/**
 * Helpers shared by the WebGPU tests and `bench/gpu_bench.ts`: a seeded RNG for test data (never
 * zeros), error measures, and an f16 array conversion.
 * @module
 */
import { f16ToF32, f32ToF16 } from "../tensor.ts";

/** A seeded RNG (mulberry32) returning floats in [0, 1). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` uniform values in [lo, hi) from a seeded RNG. */
export function randomArray(
  n: number,
  opts: { seed: number; lo?: number; hi?: number },
): Float32Array {
  const r = rng(opts.seed);
  const lo = opts.lo ?? -1, hi = opts.hi ?? 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * r();
  return out;
}

/** Largest |a − b| / (|b| + floor) over two arrays (floor defaults to 1e-6·max|b|). */
export function maxRelErr(a: ArrayLike<number>, b: ArrayLike<number>, floor?: number): number {
  if (a.length !== b.length) throw new Error(`maxRelErr: lengths ${a.length} vs ${b.length}`);
  let mx = 0;
  for (let i = 0; i < b.length; i++) mx = Math.max(mx, Math.abs(b[i]));
  const fl = floor ?? mx * 1e-6;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]) / (Math.abs(b[i]) + fl);
    if (d > m || Number.isNaN(d)) m = d;
  }
  return m;
}

/** Largest |a − b| divided by max |b| (an error relative to the output's scale). */
export function scaledErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`scaledErr: lengths ${a.length} vs ${b.length}`);
  let mx = 0, m = 0;
  for (let i = 0; i < b.length; i++) mx = Math.max(mx, Math.abs(b[i]));
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d > m || Number.isNaN(d)) m = d;
  }
  return mx === 0 ? m : m / mx;
}

/** Float32 values → f16 bits. */
export function toF16(a: Float32Array): Uint16Array {
  const out = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = f32ToF16(a[i]);
  return out;
}

/** f16 bits → float32 values. */
export function fromF16(a: Uint16Array): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = f16ToF32(a[i]);
  return out;
}
