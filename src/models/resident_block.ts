/**
 * One decoder block of a {@linkcode Model} resident on the GPU for the layer-wise quantization
 * pipeline: hands the model to the backend's block runner (`backend/webgpu/block_runner.ts`) as
 * plain data ({@linkcode gpuModelOf}) and adds the model-level refusal (quantization points: the
 * runner collects unquantized inputs).
 * @module
 */
import type { Model } from "./model.ts";
import { QuantlabError } from "../errors.ts";
import { familyOf } from "./family.ts";
import { gpuModelOf } from "./resident.ts";
import type { WebGPUBackend } from "../backend/webgpu.ts";
import {
  type BlockRunOptions,
  type DeviceRows,
  gpuBlockRunner,
  gpuBlockRunnerUnsupported,
  type InputStats,
  type ResidentBlockRunner,
} from "../backend/webgpu/block_runner.ts";

export type { BlockRunOptions, DeviceRows, InputStats, ResidentBlockRunner };

/** Why block runs cannot be resident for `model` (a sentence), or `undefined`. */
export function residentBlockUnsupported(
  model: Model,
  backend: WebGPUBackend,
  seqLen: number,
): string | undefined {
  if (model.points) return "quantization points (the resident runner collects unquantized inputs)";
  return gpuBlockRunnerUnsupported(
    { config: model.config, family: familyOf(model.config) },
    backend,
    seqLen,
  );
}

/**
 * Uploads block `i` of `model` (its current weights: earlier blocks' quantized overrides apply
 * through `model.weights`) and returns a {@linkcode ResidentBlockRunner} for sequences of
 * `seqLen` tokens (see `backend/webgpu/block_runner.ts`).
 */
export async function residentBlockRunner(
  model: Model,
  i: number,
  backend: WebGPUBackend,
  opts: {
    seqLen: number;
    /** Override of the binding limit that sizes sub-batches (tests force splits with it). */
    maxBindingBytes?: number;
    /**
     * Keep a host chunk's rows on the device after its first run (reused by later runs of the
     * same tensor; default true); false: every run uploads them again.
     */
    keepInputs?: boolean;
  },
): Promise<ResidentBlockRunner> {
  const why = residentBlockUnsupported(model, backend, opts.seqLen);
  if (why) throw new QuantlabError(`residentBlockRunner: ${why}`);
  return await gpuBlockRunner(gpuModelOf(model, { points: false }), i, backend, opts);
}
