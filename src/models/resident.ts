/**
 * The GPU-resident decoder for a {@linkcode Model}: this module hands the model down to the
 * backend's executor (`backend/webgpu/decoder.ts`) as plain data — dimensions, the family table
 * (`family.ts`), lazy weights, packed codes, RoPE frequencies and the quantizer specs of
 * `model.points` resolved per point — and adds the refusals that are about the model, not the
 * device: JS forward hooks (they need host tensors) and a `probs` spec (the fused online-softmax
 * attention kernel never holds a row of probabilities). `models/` builds no pipeline and no
 * bind group; the executor never imports `models/`.
 * @module
 */
import type { Model } from "./model.ts";
import { UnsupportedError } from "../errors.ts";
import { familyOf } from "./family.ts";
import { ropeInvFreq } from "./decoder.ts";
import { checkPoints, linearSpec, type QuantPoints } from "./points.ts";
import type { Backend } from "../backend/backend.ts";
import { getBackend } from "../backend/device.ts";
import type { WebGPUBackend } from "../backend/webgpu.ts";
import type { GpuModel, GpuPoints } from "../backend/webgpu/model.ts";
import {
  gpuDecoder,
  gpuDecoderUnsupported,
  GREEDY_CHUNK,
  type ResidentDecoder,
  type ResidentOptions,
  type StepOptions,
} from "../backend/webgpu/decoder.ts";

export { GREEDY_CHUNK, type ResidentDecoder, type ResidentOptions, type StepOptions };

/** `points` resolved for the executor: linear specs looked up by name (first match wins). */
function gpuPoints(points: QuantPoints): GpuPoints {
  return {
    linearInput: (name) => linearSpec(points.linearInput, name),
    linearOutput: (name) => linearSpec(points.linearOutput, name),
    linearProduct: (name) => linearSpec(points.linearProduct, name),
    qPreRope: points.qPreRope,
    q: points.q,
    kPreRope: points.kPreRope,
    k: points.k,
    v: points.v,
    kvWrite: points.kvWrite,
    hasLinearInput: points.linearInput !== undefined,
  };
}

/**
 * `model` as the GPU executor's plain data ({@linkcode GpuModel}); `points` (default
 * `model.points`, checked) are resolved per point, `false` leaves them out.
 */
export function gpuModelOf(model: Model, opts: { points?: QuantPoints | false } = {}): GpuModel {
  const cfg = model.config;
  const family = familyOf(cfg);
  const points = opts.points === false ? undefined : opts.points ?? model.points;
  if (points) checkPoints(points, cfg);
  return {
    config: cfg,
    family,
    weights: model.weights,
    packed: model.packed,
    ropeInvFreq: family.positions === "rope" ? ropeInvFreq(cfg) : undefined,
    points: points && gpuPoints(points),
  };
}

/**
 * Why `model` cannot run resident on `backend` (a sentence), or `undefined` when it can: forward
 * hooks, a `probs` spec, then the executor's own checks (family features, the KV cache against
 * the binding limit).
 */
export function residentUnsupported(
  model: Model,
  backend: WebGPUBackend,
  opts: ResidentOptions & { hooks?: unknown } = {},
): string | undefined {
  if (opts.hooks ?? model.hooks) return "forward hooks need host tensors";
  if (model.points?.probs) {
    return "a probs spec (the fused attention kernel never materializes the probabilities)";
  }
  const prod = model.points?.linearProduct;
  const packedInt8 = prod && Object.keys(model.packed ?? {}).find((n) => linearSpec(prod, n));
  if (packedInt8) {
    return `an LLM.int8() product spec on packed ${packedInt8} (needs its dense weight)`;
  }
  return gpuDecoderUnsupported({ config: model.config, family: familyOf(model.config) }, backend, {
    capacity: opts.capacity,
    maxBindingBytes: opts.maxBindingBytes,
  });
}

/**
 * Uploads `model` to the GPU of `backend` and returns a {@linkcode ResidentDecoder} (see
 * `backend/webgpu/decoder.ts`). Throws `UnsupportedError` naming the reason when the model
 * cannot run resident.
 */
export async function residentDecoder(
  model: Model,
  backend: WebGPUBackend,
  opts: ResidentOptions = {},
): Promise<ResidentDecoder> {
  const why = residentUnsupported(model, backend, opts);
  if (why) {
    throw new UnsupportedError(`residentDecoder: ${why}; use the host forward`);
  }
  return await gpuDecoder(gpuModelOf(model), backend, opts);
}

/**
 * The resident decoder evaluators use: one for the active (or given) backend when it is WebGPU,
 * `resident` is not false and {@linkcode residentUnsupported} finds nothing; otherwise
 * `undefined` (the caller runs the host forward).
 */
export async function residentFor(
  model: Model,
  opts: ResidentOptions & { hooks?: unknown; resident?: boolean; backend?: Backend } = {},
): Promise<ResidentDecoder | undefined> {
  if (opts.resident === false) return undefined;
  const be = opts.backend ?? getBackend();
  if (be.name !== "webgpu" || !("ctx" in be)) return undefined;
  const gpu = be as WebGPUBackend;
  if (residentUnsupported(model, gpu, opts)) return undefined;
  return await residentDecoder(model, gpu, opts);
}
