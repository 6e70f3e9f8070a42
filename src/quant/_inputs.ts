/**
 * The input checks every Hessian-based quantizer makes before it starts: a 2-D weight, an `H` of
 * `cols × cols`, and finite values in both. Errors name the method and the layer.
 * @module
 */
import { NonFiniteError, QuantlabError } from "../errors.ts";
import type { Tensor } from "../tensor.ts";
import type { LayerStats } from "./types.ts";

/**
 * Checks `W` and `stats.H` and returns `[rows, cols]` and `H`. A non-finite `H` entry throws
 * {@linkcode NonFiniteError}; `hint`, when given, is appended to that message (e.g. the method's
 * dampening advice). A missing or mis-sized `H` or a non-2-D weight is a {@linkcode QuantlabError}.
 */
export function checkLayerInputs(
  method: string,
  W: Tensor,
  stats: LayerStats,
  opts: { layer: string; hint?: string },
): { rows: number; cols: number; H: Float32Array | Float64Array } {
  const { layer } = opts;
  if (W.shape.length !== 2) {
    throw new QuantlabError(`${method}: ${layer} must be 2-D, got shape [${W.shape}]`);
  }
  const [rows, cols] = W.shape;
  const H = stats.H;
  if (!H) throw new QuantlabError(`${method}: ${layer}: stats.H (the layer Hessian) is required`);
  if (H.length !== cols * cols) {
    throw new QuantlabError(
      `${method}: ${layer}: H has ${H.length} values, expected ${cols}×${cols} for [${W.shape}]`,
    );
  }
  for (let i = 0; i < H.length; i++) {
    if (!Number.isFinite(H[i])) {
      throw new NonFiniteError(
        `${method}: ${layer}: H has a non-finite value ${H[i]} at (${Math.floor(i / cols)}, ${
          i % cols
        })${opts.hint ? `; ${opts.hint}` : ""}`,
      );
    }
  }
  for (let i = 0; i < W.data.length; i++) {
    if (!Number.isFinite(W.data[i])) {
      throw new NonFiniteError(`${method}: ${layer}: weight has a non-finite value at index ${i}`);
    }
  }
  return { rows, cols, H };
}
