/**
 * A small seeded PRNG for tests (mulberry32 + Box–Muller). Deterministic across runs and
 * platforms, so failures reproduce.
 * @module
 */

/** A seeded random source. */
export class Rng {
  #s: number;

  /** Creates a generator from a 32-bit seed. */
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Standard normal. */
  normal(): number {
    let u = 0;
    while (u === 0) u = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }

  /** `n` normal values scaled by `std` and shifted by `mean`, as float32. */
  normals(n: number, std = 1, mean = 0): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = mean + std * this.normal();
    return out;
  }

  /** `n` token ids in [0, vocab). */
  ids(n: number, vocab: number): number[] {
    return Array.from({ length: n }, () => this.int(vocab));
  }
}
