/**
 * Shared by the GPTQ implementation-equivalence tests (left- vs right-looking update, WebAssembly
 * vs TypeScript column loop): a seeded random layer quantized with given options, and a bitwise
 * array comparison that names the first mismatch instead of printing a giant diff.
 * @module
 */
import { gptqQuantize } from "../../src/quant/weight_only/gptq.ts";
import type { QuantResult } from "../../src/quant/core/types.ts";
import { mulberry32, randnArray } from "../../src/rng.ts";
import { randomH } from "./_oracles.ts";

/** GPTQ on a seeded random `[rows, cols]` layer and Hessian (seed from the shape). */
export async function gptqOnRandomLayer(
  rows: number,
  cols: number,
  opts: Record<string, unknown> & { bits: number },
): Promise<QuantResult> {
  const rng = mulberry32(rows * 7 + cols);
  const W = { shape: [rows, cols], data: Float32Array.from(randnArray(rng, rows * cols)) };
  const H = randomH(rng, cols, { n: cols + 32, k: 8, damp: 1e-3 });
  return await gptqQuantize(W, { H, nsamples: cols + 32 }, opts);
}

/** "" when `a` and `b` are equal entry by entry (`Object.is`), else how many differ and the first. */
export function mismatches(a: ArrayLike<number>, b: ArrayLike<number>): string {
  if (a.length !== b.length) return `lengths ${a.length} vs ${b.length}`;
  let n = 0, first = -1;
  for (let i = 0; i < a.length; i++) {
    if (!Object.is(a[i], b[i])) {
      if (first < 0) first = i;
      n++;
    }
  }
  return n === 0 ? "" : `${n} of ${a.length} differ, first at ${first}: ${a[first]} vs ${b[first]}`;
}
