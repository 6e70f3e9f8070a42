/**
 * The public entry points with progress attached: `perplexity` and `quantize` report progress in
 * Jupyter (one live display) or on a terminal's stderr, unless `{ progress: false }`.
 * @module
 */
import {
  perplexity as perplexityCore,
  type PerplexityOptions,
  type PerplexityResult,
} from "./eval/perplexity.ts";
import type { Model } from "./models/model.ts";
import { quantize as quantizeCore, type QuantizeOptions } from "./quant/pipeline.ts";
import type { Recipe } from "./quant/recipe.ts";
import type { WeightQuantizer } from "./quant/types.ts";
import { progressCallback } from "./viz/progress.ts";

/** Progress switch shared by the wrapped entry points. */
export interface ProgressSwitch {
  /** true: always show; false: never; default: in Jupyter or on a terminal. */
  progress?: boolean;
}

/**
 * Perplexity with the GPTQ protocol (see `src/eval/perplexity.ts`), with a progress bar over the
 * evaluation windows.
 */
export function perplexity(
  model: Model,
  dataset: string,
  opts: PerplexityOptions & ProgressSwitch = {},
): Promise<PerplexityResult> {
  const onProgress = opts.onProgress ??
    (opts.progress === false
      ? undefined
      : progressCallback(`perplexity ${dataset}`, { enabled: opts.progress }));
  return perplexityCore(model, dataset, { ...opts, onProgress });
}

/**
 * Layer-wise quantization (see `src/quant/pipeline.ts`), with a progress bar over the blocks that
 * names the layer being quantized.
 */
export function quantize(
  model: Model,
  recipe: Recipe | WeightQuantizer,
  opts: QuantizeOptions & ProgressSwitch = {},
): Promise<Model> {
  const onProgress = opts.onProgress ??
    (opts.progress === false
      ? undefined
      : progressCallback("quantize", { enabled: opts.progress }));
  return quantizeCore(model, recipe, { ...opts, onProgress });
}
