/**
 * The seeded PRNG, re-exported from its neutral home `src/rng.ts` (so `eval/` need not import a
 * private quant module).
 * @module
 */
export { mulberry32, randn, randnArray, type Rng } from "../rng.ts";
