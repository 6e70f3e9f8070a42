/**
 * WebGPU backend: device acquisition (`getWebGPU`), adapter reports, the `Backend` whose
 * matmul/matmulTransB run the tiled WGSL kernel, and the kernel entry points (dequant matmul,
 * XᵀX, fused GPTQ, norms, softmax, RoPE, attention) re-exported from the private host modules.
 *
 * Needs `deno run --unstable-webgpu`. Software adapters (lavapipe, llvmpipe, SwiftShader) are
 * refused unless `allowFallback: true`, so the default device choice falls back to the CPU there.
 * @module
 */
import type { Tensor } from "../tensor.ts";
import { type Backend, gemmDims } from "./backend.ts";
import { getWebGPU, type WebGPUOptions } from "./_webgpu_device.ts";
import { gpuMatmul } from "./_webgpu_matmul.ts";

export {
  adapterInfo,
  type AdapterReport,
  BufferPool,
  type Dispatch,
  getWebGPU,
  hasWebGPU,
  type KernelTiming,
  runDispatches,
  timeKernel,
  type TimeKernelOptions,
  webgpuAvailable,
  type WebGPUContext,
  type WebGPUOptions,
} from "./_webgpu_device.ts";
export {
  gptqBlockDispatches,
  type GptqBuffers,
  gpuGptq,
  type GpuGptqOptions,
  gpuMatmul,
  gpuMatmulF16,
  type GpuMatmulOptions,
  gpuXtx,
  matmulDispatch,
  type MatmulDispatchOptions,
  xtxDispatch,
} from "./_webgpu_matmul.ts";
export {
  dequantGemmDispatch,
  dequantGemvDispatch,
  gpuDequantMatmul,
  type GpuPackedWeights,
  releasePacked,
  uploadPacked,
} from "./_webgpu_quant.ts";
export { gpuAttention, gpuLayernorm, gpuRmsnorm, gpuRope, gpuSoftmax } from "./_webgpu_nn.ts";

/** Options of {@linkcode webgpuBackend}. */
export interface WebGPUBackendOptions extends WebGPUOptions {
  /**
   * Override of the device's maxStorageBufferBindingSize used to split A into row blocks (tests
   * force the split with a small value). Default: the device limit.
   */
  maxBindingBytes?: number;
}

/**
 * A {@linkcode Backend} named "webgpu" whose products run the tiled f32 WGSL matmul. Acquires
 * the device (throws `UnsupportedError` if none, or a software one without `allowFallback`).
 */
export async function webgpuBackend(opts: WebGPUBackendOptions = {}): Promise<Backend> {
  const ctx = await getWebGPU(opts);
  const run = async (a: Tensor, b: Tensor, transB: boolean): Promise<Tensor> => {
    const [m, k, n] = gemmDims(a, b, transB);
    const data = await gpuMatmul(ctx, a.data, b.data, {
      m,
      k,
      n,
      transB,
      maxBindingBytes: opts.maxBindingBytes,
    });
    return { shape: [m, n], data };
  };
  return {
    name: "webgpu",
    description: `WebGPU ${ctx.info.description}${ctx.fallback ? " (software adapter)" : ""}`,
    matmul: (a, b) => run(a, b, false),
    matmulTransB: (a, b) => run(a, b, true),
  };
}
