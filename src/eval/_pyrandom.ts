/**
 * Python's `random.Random` (CPython's Mersenne Twister MT19937 with `init_by_array` seeding) and
 * the few methods lm-evaluation-harness uses: `random()`, `getrandbits`, `_randbelow`, `shuffle`,
 * `sample` and `choices` (no weights). lm-eval draws few-shot examples with
 * `random.Random(1234).sample(train_docs, k)` and bootstraps standard errors with
 * `random.Random(i).choices(xs, k=len(xs))`, so the same draws need the same generator.
 * Transcribed from the algorithms in CPython's `_randommodule.c` and `random.py`.
 * @module
 */

const N = 624;
const M = 397;

/** CPython's `random.Random(seed)` for a non-negative integer seed below 2^53. */
export class PyRandom {
  #mt = new Uint32Array(N);
  #i = N + 1;

  /** Seeds as `random.Random(seed)` does for an int: `init_by_array` of its 32-bit words. */
  constructor(seed: number) {
    const s = Math.abs(Math.trunc(seed));
    const key = s < 2 ** 32 ? [s >>> 0] : [s % 2 ** 32 >>> 0, Math.floor(s / 2 ** 32) >>> 0];
    this.#initByArray(key);
  }

  #initGenrand(s: number): void {
    const mt = this.#mt;
    mt[0] = s >>> 0;
    for (let i = 1; i < N; i++) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.#i = N;
  }

  #initByArray(key: number[]): void {
    this.#initGenrand(19650218);
    const mt = this.#mt;
    let i = 1, j = 0;
    for (let k = Math.max(N, key.length); k > 0; k--) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = ((mt[i] ^ Math.imul(prev, 1664525)) + key[j] + j) >>> 0;
      i++;
      j++;
      if (i >= N) {
        mt[0] = mt[N - 1];
        i = 1;
      }
      if (j >= key.length) j = 0;
    }
    for (let k = N - 1; k > 0; k--) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = ((mt[i] ^ Math.imul(prev, 1566083941)) - i) >>> 0;
      i++;
      if (i >= N) {
        mt[0] = mt[N - 1];
        i = 1;
      }
    }
    mt[0] = 0x80000000;
  }

  /** Next 32-bit output (`genrand_uint32`). */
  uint32(): number {
    const mt = this.#mt;
    if (this.#i >= N) {
      let kk = 0;
      for (; kk < N - M; kk++) {
        const y = (mt[kk] & 0x80000000) | (mt[kk + 1] & 0x7fffffff);
        mt[kk] = mt[kk + M] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      for (; kk < N - 1; kk++) {
        const y = (mt[kk] & 0x80000000) | (mt[kk + 1] & 0x7fffffff);
        mt[kk] = mt[kk + (M - N)] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      const y = (mt[N - 1] & 0x80000000) | (mt[0] & 0x7fffffff);
      mt[N - 1] = mt[M - 1] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      this.#i = 0;
    }
    let y = mt[this.#i++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** `random()`: a double in [0, 1) from 53 random bits. */
  random(): number {
    const a = this.uint32() >>> 5, b = this.uint32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }

  /** `getrandbits(k)` for 1 ≤ k ≤ 32. */
  getrandbits(k: number): number {
    return this.uint32() >>> (32 - k);
  }

  /** `_randbelow(n)` (rejection sampling on `n.bit_length()` bits), 0 < n < 2^32. */
  randbelow(n: number): number {
    const k = 32 - Math.clz32(n);
    let r = this.getrandbits(k);
    while (r >= n) r = this.getrandbits(k);
    return r;
  }

  /** `shuffle(x)` in place (Fisher–Yates from the end). */
  shuffle<T>(x: T[]): void {
    for (let i = x.length - 1; i > 0; i--) {
      const j = this.randbelow(i + 1);
      [x[i], x[j]] = [x[j], x[i]];
    }
  }

  /** `sample(population, k)`: k distinct elements, with CPython's pool/set switch. */
  sample<T>(population: readonly T[], k: number): T[] {
    const n = population.length;
    if (!(k >= 0 && k <= n)) throw new RangeError(`sample larger than population (${k} > ${n})`);
    const result: T[] = new Array(k);
    let setsize = 21;
    if (k > 5) setsize += 4 ** Math.ceil(Math.log(k * 3) / Math.log(4));
    if (n <= setsize) {
      const pool = [...population];
      for (let i = 0; i < k; i++) {
        const j = this.randbelow(n - i);
        result[i] = pool[j];
        pool[j] = pool[n - i - 1];
      }
    } else {
      const selected = new Set<number>();
      for (let i = 0; i < k; i++) {
        let j = this.randbelow(n);
        while (selected.has(j)) j = this.randbelow(n);
        selected.add(j);
        result[i] = population[j];
      }
    }
    return result;
  }

  /** `choices(population, k=k)` without weights: `population[floor(random() * n)]` k times. */
  choices<T>(population: readonly T[], k: number): T[] {
    const n = population.length;
    const out: T[] = new Array(k);
    for (let i = 0; i < k; i++) out[i] = population[Math.floor(this.random() * n)];
    return out;
  }
}
