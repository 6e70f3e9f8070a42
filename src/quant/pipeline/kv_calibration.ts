/**
 * KVQuant's offline calibration driver: draws the calibration windows from a dataset's train split
 * (`calibration.ts`, as the weight quantizers do) and fits the quantizer on the model's K/V
 * (`src/quant/kv/kvquant.ts`). The reference (`llama_simquant.py`) calibrates on 16 windows of
 * wikitext2.
 * @module
 */
import type { Model } from "../../models/model.ts";
import { OptionError } from "../../errors.ts";
import { calibrationSet } from "./calibration.ts";
import {
  fitKvQuantizer,
  KVQUANT_CALIB_SPECS,
  type KvQuantCalibrationOptions,
  type KvQuantizer,
} from "../kv/kvquant.ts";

/**
 * Calibrates a KVQuant quantizer for `model` on `opts.dataset` (default "wikitext2", the
 * reference's; "tinystories" for the stories models), `nsamples` windows (default 16) of
 * `seqlen` tokens (default min(2048, context)), seed `seed` (default 0).
 */
export async function calibrateKvQuant(
  model: Model,
  opts: KvQuantCalibrationOptions = {},
): Promise<KvQuantizer> {
  const { dataset = "wikitext2", nsamples = 16, seqlen, seed, root, ...fit } = opts;
  for (const k of Object.keys(fit)) {
    if (!(k in KVQUANT_CALIB_SPECS)) {
      throw new OptionError(
        k,
        `unknown kvquant calibration option; known: dataset, nsamples, seqlen, seed, root, ${
          Object.keys(KVQUANT_CALIB_SPECS).join(", ")
        }`,
      );
    }
  }
  const cal = await calibrationSet(model, dataset, { nsamples, seqlen, seed, root });
  return fitKvQuantizer(model, cal, fit);
}
