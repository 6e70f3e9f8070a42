/**
 * Absmax round-to-nearest: per group, the symmetric restricted-range grid of LLM.int8()'s
 * "absmax" quantization (Dettmers et al. 2022, §2): `s = max|x| / Qp` with `Qp = 2^(bits−1) − 1`
 * and `q = clamp(round(x / s), −Qp, Qp)`, so `±max|x|` are grid points and zero is exact. The
 * code is stored offset by `2^(bits−1)` (codes `1 … 2^bits − 1`), which makes the meta a plain
 * grid meta (`Wq = scale · (code − zero)`, zero `2^(bits−1)`): decode, packing and bits accounting
 * are `grid.ts`'s, registered as {@linkcode absmaxFormat}.
 *
 * Unlike `rtn({ sym: true })` (the GPTQ reference grid, `scale = 2·max|x| / (2^bits − 1)` with one
 * extra negative level), this grid wastes the code 0 but keeps the maximum exactly representable.
 * An all-zero group gets `s = 1` (every code `2^(bits−1)`, every weight 0).
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import { OptionError } from "../../errors.ts";
import type { QuantFormat, QuantMeta, QuantResult, WeightQuantizer } from "../core/types.ts";
import { checkOptions, GRID_SPECS, type OptionSpec } from "../core/options.ts";
import { checkWeight } from "../core/inputs.ts";
import {
  bitsPerWeight,
  gridFormat,
  packCodes,
  resolveGroupSize,
  roundHalfEven,
  validateBits,
} from "../core/grid.ts";

/** Options of {@linkcode absmax}. */
export interface AbsmaxOptions {
  /** Bits per code, 2–8. */
  bits: number;
  /** Columns per group (must divide the columns), or -1 (default) for one group per row. */
  groupSize?: number;
}

/** Keys, types and bounds of {@linkcode AbsmaxOptions} (strict: unknown keys are refused). */
export const ABSMAX_OPTION_SPECS: Record<string, OptionSpec> = {
  bits: GRID_SPECS.bits,
  groupSize: GRID_SPECS.groupSize,
};

/** Absmax RTN of a `[rows, cols]` weight (synchronous core of {@linkcode absmax}). */
export function absmaxQuantize(
  W: Tensor,
  options: AbsmaxOptions & { layer?: string },
): QuantResult {
  const bits = validateBits(options.bits);
  const gs = resolveGroupSize(options.groupSize);
  const [rows, cols] = checkWeight("absmax", W, options.layer ?? "weight");
  if (gs > 0 && cols % gs !== 0) {
    throw new OptionError("groupSize", `${gs} does not divide the ${cols} columns`);
  }
  const Qp = 2 ** (bits - 1) - 1, zero = 2 ** (bits - 1);
  const width = gs > 0 ? gs : cols, ngroups = cols / width;
  const scales = new Float32Array(rows * ngroups);
  const zeros = new Float32Array(rows * ngroups).fill(zero);
  const codes = new Uint8Array(rows * cols), Wq = new Float32Array(rows * cols);
  let loss = 0;
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < ngroups; g++) {
      const i0 = r * cols + g * width;
      let amax = 0;
      for (let k = 0; k < width; k++) amax = Math.max(amax, Math.abs(W.data[i0 + k]));
      const s = amax > 0 ? Math.fround(amax / Qp) : 1;
      scales[r * ngroups + g] = s;
      for (let k = i0; k < i0 + width; k++) {
        const q = Math.min(Qp, Math.max(-Qp, roundHalfEven(Math.fround(W.data[k] / s))));
        codes[k] = q + zero;
        Wq[k] = s * (codes[k] - zero); // the grid decode, so `−0` never appears
        loss += (W.data[k] - Wq[k]) ** 2;
      }
    }
  }
  const meta: QuantMeta = {
    method: "absmax",
    bits,
    groupSize: gs,
    sym: true,
    shape: [rows, cols],
    codes,
    packed: packCodes(codes, bits),
    scales,
    zeros,
  };
  return { Wq: { shape: [rows, cols], data: Wq }, meta, bitsPerWeight: bitsPerWeight(meta), loss };
}

/**
 * Absmax round-to-nearest weight quantizer (no Hessian). `loss` is `Σ (w − q)²`.
 *
 * @example
 * ```ts
 * const r = await absmax({ bits: 8, groupSize: 64 }).quantizeWeight(W, { nsamples: 0 });
 * ```
 */
export function absmax(options: AbsmaxOptions): WeightQuantizer {
  checkOptions("absmax", options, ABSMAX_OPTION_SPECS);
  validateBits(options.bits);
  const o = { bits: options.bits, groupSize: resolveGroupSize(options.groupSize) };
  return {
    name: "absmax",
    needsHessian: false,
    options: { ...o },
    quantizeWeight: (W, _stats, ctx) =>
      Promise.resolve().then(() => absmaxQuantize(W, { ...o, layer: ctx?.layer })),
  };
}

/** Absmax's storage format: the plain grid with zero `2^(bits−1)`. */
export const absmaxFormat: QuantFormat = gridFormat("absmax");
