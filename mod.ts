/**
 * quantlab: LLM post-training quantization research in Deno. Load a checkpoint, quantize it with a
 * method from the literature, evaluate it, plot it.
 *
 * ```ts
 * import * as q from "./mod.ts";
 * const model = await q.loadModel("../shared/data/models/stories260K-hf");
 * const calib = await q.calibrationSet(model, "tinystories", { nsamples: 128, seqlen: 256, seed: 0 });
 * const qm = await q.quantize(model, q.gptq({ bits: 3, groupSize: 32, actOrder: true }), { calib });
 * console.log((await q.perplexity(qm, "tinystories")).ppl);
 * ```
 * @module
 */
export * from "./src/errors.ts";
export type { Tensor } from "./src/tensor.ts";
export { getTokenizer, loadModel, type LoadOptions } from "./src/models/load.ts";
export type { Model } from "./src/models/model.ts";
export type { ModelConfig } from "./src/models/config.ts";
export { createKVCache, forward, type ForwardHooks } from "./src/models/decoder.ts";
export { checkPoints, type QuantPoints, type QuantSpec } from "./src/models/points.ts";
export { collectChannelAbsMax, staticChannelSpec } from "./src/models/point_stats.ts";
export { type FamilyDescription, familyOf } from "./src/models/family.ts";
export { fakeQuant } from "./src/backend/ops.ts";
export { loadTokenizer, type Tokenizer } from "./src/io/tokenizer.ts";
export { readHeader, readTensor, writeSafetensors } from "./src/io/safetensors.ts";
export { type ExportOptions, type ExportReport, type GgufExportType } from "./src/io/export.ts";
export { openGguf } from "./src/io/gguf.ts";
export { evaluate, exportModel, perplexity, quantize } from "./src/api.ts";
export { type LedgerSwitch, type RunInfo } from "./src/ledger/tracked.ts";
export type { PerplexityOptions, PerplexityResult } from "./src/eval/perplexity.ts";
export { generate, type GenerateResult } from "./src/eval/generate.ts";
export { type CalibrationSet, calibrationSet } from "./src/quant/pipeline/calibration.ts";
export type { Recipe } from "./src/quant/core/recipe.ts";
export { rtn, type RtnOptions, rtnQuantize } from "./src/quant/weight_only/rtn.ts";
export { type F16ScaleOptions, withF16Scales } from "./src/quant/core/f16_grid.ts";
export { gptq, type GptqOptions, gptqQuantize } from "./src/quant/weight_only/gptq.ts";
export {
  quantease,
  type QuantEaseOptions,
  quanteaseQuantize,
} from "./src/quant/weight_only/quantease.ts";
export { quip, type QuipOptions, quipQuantize } from "./src/quant/weight_only/quip.ts";
export {
  framequant,
  type FramequantOptions,
  framequantQuantize,
} from "./src/quant/weight_only/framequant.ts";
export {
  spqr,
  spqrAverageBits,
  type SpqrOptions,
  spqrQuantize,
} from "./src/quant/weight_only/spqr.ts";
export { oa, type OaOptions, oaQuantize } from "./src/quant/weight_only/oa.ts";
export { bcq, bcqFromUniform, type BcqOptions, bcqQuantize } from "./src/quant/weight_only/bcq.ts";
export { dequantize, findParams, quantizeCode } from "./src/quant/core/grid.ts";
export { dequantizeMeta } from "./src/quant/dequantize.ts";
export { upperCholeskyOfInverse } from "./src/quant/core/linalg.ts";
export type { QuantMeta, QuantResult, WeightQuantizer } from "./src/quant/core/types.ts";
export {
  type DeviceChoice,
  type DeviceKind,
  getBackend,
  useDevice,
  type UseDeviceOptions,
} from "./src/backend/device.ts";
export {
  adapterInfo,
  webgpuAvailable,
  type WebGPUBackend,
  webgpuBackend,
  type WebGPUBackendOptions,
} from "./src/backend/webgpu.ts";
export * as plot from "./src/viz/mod.ts";
export * as ledger from "./src/ledger/mod.ts";
export {
  type EvalResult,
  type EvalSample,
  type EvaluateOptions,
  resultsMarkdown,
} from "./src/eval/evaluate.ts";
export { getTask, type TaskDef, taskNames } from "./src/eval/tasks.ts";
export {
  encodePair,
  loglikelihood,
  type LoglikelihoodRequest,
  type LoglikelihoodResult,
} from "./src/eval/loglikelihood.ts";
export { kld, type KldOptions, type KldResult, kldSummary } from "./src/eval/kld.ts";
export {
  chat,
  chatCompare,
  type ChatMessage,
  type ChatOptions,
  type ChatReply,
  renderChat,
} from "./src/eval/chat.ts";
