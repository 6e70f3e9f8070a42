/**
 * Seeded small (W, H) fixtures for the reference-semantics tests: `W` is Gaussian with a few
 * outlier columns (×8), `H = 2/n · XᵀX` of correlated inputs with heavy-scaled columns plus a
 * small dampening, so the rounding decisions of the methods are neither trivial nor all ties.
 * Generated at test time from the seed (no stored data), written without library code except the
 * shared seeded PRNG.
 * @module
 */
import { mulberry32, randn } from "../../src/rng.ts";
import { randomH } from "../quant/_oracles.ts";

/** One fixture: a `[rows, cols]` float32 weight and its float64 `cols × cols` proxy Hessian. */
export interface Fixture {
  /** Name for messages. */
  name: string;
  /** Output channels. */
  rows: number;
  /** Input columns. */
  cols: number;
  /** Row-major weight. */
  W: Float32Array;
  /** Row-major symmetric positive-definite Hessian. */
  H: Float64Array;
}

/** The fixture of `seed` with the given shape. */
export function fixture(seed: number, rows: number, cols: number): Fixture {
  const rng = mulberry32(seed);
  const W = new Float32Array(rows * cols);
  const heavy = new Set([Math.floor(rng() * cols), Math.floor(rng() * cols)]);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) W[r * cols + c] = 0.05 * randn(rng) * (heavy.has(c) ? 8 : 1);
  }
  const H = randomH(rng, cols, { n: 96, k: Math.max(2, Math.floor(cols / 3)), damp: 1e-3 });
  return { name: `seed ${seed} [${rows}, ${cols}]`, rows, cols, W, H };
}

/** The fixed set used by every reference test: three shapes, three seeds. */
export const FIXTURES: Fixture[] = [
  fixture(1901, 8, 32),
  fixture(1902, 12, 48),
  fixture(1903, 6, 64),
];
