/**
 * `withF16Scales(quantizer)`: a grid quantizer whose scales are rounded to IEEE f16 during
 * quantization, so its packed layers map bit for bit onto formats that store f16 block scales
 * (GGUF Q8_0 / Q4_0 / Q4_1 with 32-column groups, see `src/io/export.ts`).
 *
 * - Each (row, group) scale becomes the nearest f16 value. For asymmetric grids (`exactMins`,
 *   default true) it becomes the nearest f16 value `s` for which `s · zero` is also an f16 value,
 *   so Q4_1's `m = −s · zero` is stored exactly (then `d·q + m = s·(q − zero)` exactly in
 *   float32). Measured: this moves a 4-bit scale by at most 2⁻⁷ relative (zero ≤ 15 needs up to
 *   4 trailing zero bits of the 11-bit significand), typically much less.
 * - A method without a Hessian (RTN) re-derives its codes with the rounded scale from `W`
 *   (`clamp(round(w / s) + zero, 0, maxq)`, the grid's own rounding), i.e. the rounding happens
 *   during quantization. A Hessian method (GPTQ, QuantEase) keeps its codes, which were chosen
 *   with error feedback on the unrounded scale; only the scales change (relative change ≤ 2⁻¹¹
 *   for symmetric grids), and `loss` stays the inner method's.
 * - `Wq` is always `dequantize(meta)` of the rounded meta; `meta.f16Scales = true`.
 *
 * Methods whose codes are not on a plain grid (QuIP, FrameQuant) are refused with an OptionError.
 * @module
 */
import { OptionError } from "../../errors.ts";
import { f16ToF32, f32ToF16 } from "../../tensor.ts";
import { dequantize, maxqOf, packCodes, roundHalfEven } from "./grid.ts";
import type { QuantResult, WeightQuantizer } from "./types.ts";

/** Options of {@linkcode withF16Scales}. */
export interface F16ScaleOptions {
  /** Asymmetric grids: also make `scale · zero` an f16 value (default true). */
  exactMins?: boolean;
}

const isF16 = (x: number) => f16ToF32(f32ToF16(x)) === x;

/** The f16 value nearest `s` (and, with `zero`, such that `s · zero` is also f16). */
export function f16Scale(s: number, zero?: number): number {
  const h = f32ToF16(s);
  const base = f16ToF32(h);
  if (zero === undefined || zero === 0 || isF16(Math.fround(base * zero))) return base;
  let best = base, bestErr = Infinity;
  for (let k = -32; k <= 32; k++) {
    const hb = h + k;
    if (hb < 1 || ((hb ^ h) & 0x8000) !== 0 || (hb & 0x7c00) === 0x7c00) continue;
    const c = f16ToF32(hb);
    if (!isF16(Math.fround(c * zero))) continue;
    const e = Math.abs(c - s);
    if (e < bestErr) {
      best = c;
      bestErr = e;
    }
  }
  return best;
}

/**
 * Wraps a grid quantizer (RTN, GPTQ, QuantEase) so its scales are f16 values (see the module
 * doc). The wrapper's name and options are the inner quantizer's, plus `f16Scales: true`.
 */
export function withF16Scales(
  quantizer: WeightQuantizer,
  options: F16ScaleOptions = {},
): WeightQuantizer {
  if (quantizer.name === "quip" || quantizer.name === "framequant") {
    throw new OptionError(
      "quantizer",
      `withF16Scales needs a grid method (rtn, gptq, quantease); ${quantizer.name} codes live in a transformed basis`,
    );
  }
  const exactMins = options.exactMins ?? true;
  return {
    name: quantizer.name,
    needsHessian: quantizer.needsHessian,
    options: { ...quantizer.options, f16Scales: true, exactMins },
    async quantizeWeight(W, stats, ctx): Promise<QuantResult> {
      const r = await quantizer.quantizeWeight(W, stats, ctx);
      const meta = { ...r.meta };
      const [rows, cols] = meta.shape;
      const ng = meta.scales.length / rows;
      const scales = new Float32Array(meta.scales.length);
      for (let i = 0; i < scales.length; i++) {
        scales[i] = f16Scale(meta.scales[i], !meta.sym && exactMins ? meta.zeros[i] : undefined);
      }
      meta.scales = scales;
      meta.f16Scales = true;
      let loss = r.loss;
      if (!quantizer.needsHessian) {
        const codes = new Uint8Array(rows * cols), maxq = maxqOf(meta.bits);
        loss = 0;
        for (let rr = 0; rr < rows; rr++) {
          for (let j = 0; j < cols; j++) {
            const g = rr * ng +
              (meta.gIdx ? meta.gIdx[j] : meta.groupSize > 0 ? Math.floor(j / meta.groupSize) : 0);
            const s = scales[g], z = meta.zeros[g], x = W.data[rr * cols + j];
            const t = roundHalfEven(Math.fround(x / s)) + z;
            const c = t >= 0 ? (t <= maxq ? t : maxq) : 0;
            codes[rr * cols + j] = c;
            const d = x - Math.fround(s * (c - z));
            loss += d * d;
          }
        }
        meta.codes = codes;
        meta.packed = packCodes(codes, meta.bits);
      }
      const Wq = dequantize(meta);
      return { Wq, meta, bitsPerWeight: r.bitsPerWeight, loss };
    },
  };
}
