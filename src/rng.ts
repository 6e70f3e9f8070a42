/**
 * A tiny seeded PRNG (mulberry32) and normal sampler for tests, benchmarks and seeded
 * experiments. Not cryptographic. A bottom-layer module (no imports): evaluators and quantizers
 * both draw from it.
 * @module
 */

/** A seeded generator of uniform numbers in [0, 1). */
export type Rng = () => number;

/** mulberry32: a 32-bit state generator; the same seed gives the same sequence. */
export function mulberry32(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A standard normal sample (Box–Muller) from `rng`. */
export function randn(rng: Rng): number {
  const u = 1 - rng();
  const v = rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** `n` standard normal samples as float32, scaled by `options.scale` (default 1). */
export function randnArray(rng: Rng, n: number, options: { scale?: number } = {}): Float32Array {
  const s = options.scale ?? 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = randn(rng) * s;
  return out;
}
