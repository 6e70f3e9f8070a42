/**
 * Real layer statistics for method comparisons: the FP weight and the calibration Hessian
 * `H = 2/n Σ XᵀX` of every linear layer of stories260K, captured by running the real pipeline with
 * a recording quantizer (8-bit RTN, so later blocks see nearly-FP inputs). Cached per process.
 * @module
 */
import { loadModel } from "../../src/models/load.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { rtnQuantize } from "../../src/quant/weight_only/rtn.ts";
import type { WeightQuantizer } from "../../src/quant/core/types.ts";
import type { Tensor } from "../../src/tensor.ts";

/** Where the shared data lives (CI has ../shared beside the checkout). */
export const DATA = new URL("../../../shared/data/", import.meta.url).pathname;

/** One captured layer. */
export interface RealLayer {
  /** Layer name, e.g. "model.layers.0.mlp.down_proj". */
  name: string;
  /** FP weight `[rows, cols]`. */
  W: Tensor;
  /** Hessian `cols × cols` (float32, as the pipeline gives it). */
  H: Float32Array;
}

const cache = new Map<string, Promise<RealLayer[]>>();

/**
 * The 35 linear layers of stories260K with their calibration Hessians (TinyStories train sample,
 * `nsamples` × `seqlen` tokens, seed 0; defaults 32 × 256).
 */
export function realLayers(
  opts: { nsamples?: number; seqlen?: number } = {},
): Promise<RealLayer[]> {
  const nsamples = opts.nsamples ?? 32, seqlen = opts.seqlen ?? 256;
  const key = `${nsamples}x${seqlen}`;
  let p = cache.get(key);
  if (!p) {
    p = (async () => {
      const model = await loadModel(`${DATA}models/stories260K-hf`);
      const calib = await calibrationSet(model, "tinystories", { nsamples, seqlen, seed: 0 });
      const out: RealLayer[] = [];
      const recorder: WeightQuantizer = {
        name: "record",
        needsHessian: true,
        options: {},
        quantizeWeight: (W, stats, ctx) => {
          out.push({ name: ctx?.layer ?? "?", W, H: Float32Array.from(stats.H!) });
          return Promise.resolve(rtnQuantize(W, { bits: 8, partialGroups: true }));
        },
      };
      await quantize(model, recorder, { calib });
      return out;
    })();
    cache.set(key, p);
  }
  return p;
}
