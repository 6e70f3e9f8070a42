/**
 * WebGPU backend: device acquisition (`getWebGPU`), adapter reports, the `Backend` whose
 * matmul/matmulTransB run the tiled WGSL kernel and whose `gptqColumns` runs GPTQ's whole column
 * pass on the GPU, and the kernel entry points (dequant matmul, XᵀX, fused GPTQ, norms, softmax,
 * RoPE, attention) re-exported from the private host modules.
 *
 * Needs `deno run --unstable-webgpu`. Software adapters (lavapipe, llvmpipe, SwiftShader) are
 * refused unless `allowFallback: true`, so the default device choice falls back to the CPU there.
 * @module
 */
import type { Tensor } from "../tensor.ts";
import { type Backend, gemmDims } from "./backend.ts";
import {
  type AdapterReport,
  getWebGPU,
  type PoolStats,
  type Transfer,
  type WebGPUContext,
  type WebGPUOptions,
} from "./_webgpu_device.ts";
import { gpuMatmul, type ResidentB } from "./_webgpu_matmul.ts";
import { gpuGptqColumns } from "./_webgpu_gptq.ts";
import { gpuMatrixBuffer } from "./_webgpu_hessian.ts";
import { UnsupportedError } from "../errors.ts";
import { gpuBatchedAttention } from "./_webgpu_nn.ts";
import { gpuPackedKv } from "./_webgpu_kv.ts";
import { gpuKvQuant } from "./_webgpu_kvquant.ts";
import {
  gpuPackedMatmul,
  releaseResidentPacked,
  residentPacked,
  residentPackedStats,
} from "./_webgpu_quant.ts";

export {
  adapterInfo,
  type AdapterReport,
  bindGroup,
  BufferPool,
  countUpload,
  type Dispatch,
  getWebGPU,
  grid,
  hasWebGPU,
  type KernelTiming,
  pipeline,
  type PoolStats,
  readback,
  runAndRead,
  runDispatches,
  runStepsAndRead,
  scratch,
  timeKernel,
  type TimeKernelOptions,
  type Transfer,
  uniforms,
  upload,
  webgpuAvailable,
  type WebGPUContext,
  type WebGPUOptions,
  writeUniforms,
} from "./_webgpu_device.ts";
export {
  gemvDispatch,
  gpuMatmul,
  gpuMatmulF16,
  type GpuMatmulOptions,
  gpuXtx,
  matmulDispatch,
  type MatmulDispatchOptions,
  type ResidentB,
  xtxDispatch,
} from "./_webgpu_matmul.ts";
export {
  gptqBlockDispatches,
  type GptqBlockOptions,
  type GptqBuffers,
  gptqFits,
  gptqParamsDispatch,
  gpuGptq,
  gpuGptqColumns,
  type GpuGptqOptions,
} from "./_webgpu_gptq.ts";
export { gpuHessianFromSums, gpuMatrixBuffer, hessianScaleDispatch } from "./_webgpu_hessian.ts";
export {
  checkCholeskyStatus,
  CholeskyPivotError,
  type CholeskyStatus,
  decodeCholeskyStatus,
  gpuUpperCholeskyOfInverse,
  maxCholeskyOrder,
  upperCholeskyOfInverseDispatches,
  type UpperCholeskyOfInverseOptions,
  type UpperCholeskyOfInversePlan,
} from "./_webgpu_linalg.ts";
export {
  dequantGemmDispatch,
  dequantGemvDispatch,
  gpuDequantMatmul,
  gpuPackedMatmul,
  type GpuPackedWeights,
  packQuantMeta,
  type QuantMetaLike,
  releasePacked,
  releaseResidentPacked,
  residentPacked,
  residentPackedStats,
  uploadPacked,
} from "./_webgpu_quant.ts";
export {
  gpuAttention,
  gpuBatchedAttention,
  gpuLayernorm,
  gpuRmsnorm,
  gpuRope,
  gpuSoftmax,
  isCausalMask,
} from "./_webgpu_nn.ts";
export {
  type FakeQuantBuffers,
  fakeQuantDispatch,
  fakeQuantDispatches,
  gpuFakeQuant,
} from "./_webgpu_fake_quant.ts";
export { type Int8ProductBuffers, int8ProductDispatches, int8Scratch } from "./_webgpu_llm_int8.ts";
export { gpuPackedKv, type KvAttentionBuffers, kvAttentionDispatch } from "./_webgpu_kv.ts";
export {
  gpuKvQuant,
  type KvQuantAttentionBuffers,
  kvquantAttentionDispatch,
} from "./_webgpu_kvquant.ts";
export {
  type ElementwiseKernel,
  type Fields,
  kernelDispatch,
  type RowKernel,
} from "./_webgpu_forward.ts";

/**
 * `softmax(Q·Kᵀ + mask)·V` in TypeScript (float64 sums) for masks the GPU kernel does not take
 * (sliding windows): Q [G, T, d], Kᵀ [G, d, S], V [G, S, d], mask [T, S] → [G, T, d].
 */
export function attentionTS(q: Tensor, kT: Tensor, v: Tensor, mask: Tensor): Tensor {
  const [G, T, d] = q.shape, S = kT.shape[2];
  const out = new Float32Array(G * T * d);
  const sc = new Float64Array(S);
  for (let g = 0; g < G; g++) {
    for (let t = 0; t < T; t++) {
      let mx = -Infinity;
      for (let s = 0; s < S; s++) {
        let a = mask.data[t * S + s];
        if (a !== -Infinity) {
          for (let i = 0; i < d; i++) {
            a += q.data[(g * T + t) * d + i] * kT.data[(g * d + i) * S + s];
          }
        }
        sc[s] = a;
        if (a > mx) mx = a;
      }
      let sum = 0;
      for (let s = 0; s < S; s++) sum += sc[s] = Math.exp(sc[s] - mx);
      const o = (g * T + t) * d;
      for (let s = 0; s < S; s++) {
        const p = sc[s] / sum;
        if (p === 0) continue;
        for (let i = 0; i < d; i++) out[o + i] += p * v.data[(g * S + s) * d + i];
      }
    }
  }
  return { shape: [G, T, d], data: out };
}

/** Options of {@linkcode webgpuBackend}. */
export interface WebGPUBackendOptions extends WebGPUOptions {
  /**
   * Override of the device's maxStorageBufferBindingSize used to split products into blocks
   * (tests force the split with a small value) and to decide whether `gptqColumns` can hold a
   * layer. Default: the device limit.
   */
  maxBindingBytes?: number;
  /**
   * Run quantized layers (`model.packed[name]`) from packed codes resident on the GPU through
   * the dequant GEMV/GEMM kernels (default true). False: every product uses the dense weight.
   */
  packed?: boolean;
  /**
   * Keep dense weights (the B of `matmulTransB`, a linear layer's weight) on the GPU after their
   * first use, so decoding does not upload them every token (default false: the GPTQ pipeline's
   * claim, one product's operands on the GPU at a time, needs uploads per product). Freed when
   * the host array is garbage-collected or by `release()`.
   */
  residentWeights?: boolean;
}

interface DenseEntry {
  ctx: WebGPUContext;
  /** Column blocks of one weight, by "c0:nn". */
  blocks: Map<string, GPUBuffer>;
}

const denseByArray = new WeakMap<Float32Array, DenseEntry>();
const denseAll = new Set<DenseEntry>();
const denseFinalizer = new FinalizationRegistry<DenseEntry>((e) => {
  if (denseAll.delete(e)) e.ctx.pool.destroy(...e.blocks.values());
});

function residentStore(ctx: WebGPUContext): ResidentB {
  return {
    get: (b, c0, nn) => denseByArray.get(b)?.blocks.get(`${c0}:${nn}`),
    set: (b, c0, nn, buf) => {
      let e = denseByArray.get(b);
      if (!e) {
        e = { ctx, blocks: new Map() };
        denseByArray.set(b, e);
        denseFinalizer.register(b, e);
      }
      denseAll.add(e);
      e.blocks.set(`${c0}:${nn}`, buf);
    },
  };
}

function releaseResidentDense(): void {
  for (const e of denseAll) {
    e.ctx.pool.destroy(...e.blocks.values());
    e.blocks.clear();
  }
  denseAll.clear();
}

function residentDenseBytes(): number {
  let n = 0;
  for (const e of denseAll) for (const b of e.blocks.values()) n += b.size;
  return n;
}

/** GPU memory of a {@linkcode WebGPUBackend}: the buffer pool plus resident packed weights. */
export interface WebGPUMemory extends PoolStats {
  /** Quantized layers whose packed codes are resident. */
  residentPackedLayers: number;
  /** Bytes of those packed codes, scales and indices (included in `liveBytes`). */
  residentPackedBytes: number;
  /** Bytes of resident dense weights (`residentWeights`; included in `liveBytes`). */
  residentDenseBytes: number;
}

/** The WebGPU {@linkcode Backend}, with its device and memory accounting. */
export interface WebGPUBackend extends Backend {
  /** "webgpu". */
  readonly name: "webgpu";
  /** Always true: decoder blocks can run resident (`src/backend/webgpu/block_runner.ts`). */
  readonly residentBlocks: true;
  /** The device context (shared by every WebGPU backend of the process). */
  readonly ctx: WebGPUContext;
  /** The adapter report (name, vendor, features, limits, software flag). */
  readonly adapter: AdapterReport;
  /** Pool and resident-weight byte counts. */
  memory(): WebGPUMemory;
  /** Host↔device bytes moved on this backend's device so far (a copy of the counters). */
  transfer(): Transfer;
  /** Frees resident packed and dense weights and every free pooled buffer. */
  release(): void;
}

/**
 * A {@linkcode Backend} named "webgpu" whose products run the tiled f32 WGSL matmul, whose
 * batched attention runs the flash-style causal kernel (TypeScript for sliding-window masks), and
 * whose quantized layers run the packed dequant GEMV (one token) or GEMM (prefill) kernels from codes
 * kept on the GPU, and whose `gptqColumns` runs GPTQ's column pass (dynamic-group grid fits, fused
 * block kernel, trailing matmuls) in one submission (`undefined` when W or Hinv exceeds the
 * binding limit, so `gptqQuantize` runs its CPU loop). Acquires the device (throws `UnsupportedError` if none, or a software one
 * without `allowFallback`). Uploads of dense operands are per product and go back to the pool
 * afterwards, so a pipeline walking a model block by block holds on the GPU only the current
 * product's operands (plus the pool's capped free list).
 */
export async function webgpuBackend(opts: WebGPUBackendOptions = {}): Promise<WebGPUBackend> {
  const ctx = await getWebGPU(opts);
  const store = opts.residentWeights ? residentStore(ctx) : undefined;
  const run = async (a: Tensor, b: Tensor, transB: boolean): Promise<Tensor> => {
    const [m, k, n] = gemmDims(a, b, transB);
    const data = await gpuMatmul(ctx, a.data, b.data, {
      m,
      k,
      n,
      transB,
      maxBindingBytes: opts.maxBindingBytes,
      residentB: transB ? store : undefined,
    });
    return { shape: [m, n], data };
  };
  const packed = async (x: Tensor, w: Tensor, meta: unknown): Promise<Tensor | undefined> => {
    if (!meta || typeof meta !== "object") return undefined;
    const [m, k] = x.shape;
    if (x.shape.length !== 2 || w.shape.length !== 2 || w.shape[1] !== k) return undefined;
    const gw = residentPacked(ctx, meta, w);
    if (!gw) return undefined;
    const data = await gpuPackedMatmul(ctx, x.data, gw, {
      m,
      maxBindingBytes: opts.maxBindingBytes,
    });
    return { shape: [m, w.shape[0]], data };
  };
  return {
    name: "webgpu",
    description: `WebGPU ${ctx.info.description}${ctx.fallback ? " (software adapter)" : ""}`,
    ctx,
    adapter: ctx.info,
    matmul: (a, b) => run(a, b, false),
    matmulTransB: (a, b) => run(a, b, true),
    attention: async (q, kT, v, mask) => {
      const [G, T, d] = q.shape;
      const S = kT.shape[2];
      const y = await gpuBatchedAttention(ctx, q.data, kT.data, v.data, mask.data, {
        G,
        T,
        S,
        d,
        maxBindingBytes: opts.maxBindingBytes,
      });
      return y ? { shape: [G, T, d], data: y } : attentionTS(q, kT, v, mask);
    },
    ...(opts.packed === false ? {} : { packedMatmulTransB: packed }),
    matmulDeviceB: async (a, b) => {
      const buf = gpuMatrixBuffer(ctx, b);
      if (!buf) throw new UnsupportedError("webgpu matmulDeviceB: B is not a live matrix here");
      const [m, k, n] = gemmDims(a, { shape: [b.size, b.size], data: new Float32Array(0) }, false);
      const data = await gpuMatmul(ctx, a.data, new Float32Array(0), {
        m,
        k,
        n,
        maxBindingBytes: opts.maxBindingBytes,
        bDevice: buf,
      });
      return { shape: [m, n], data };
    },
    gptqColumns: (args) => gpuGptqColumns(ctx, args, { maxBindingBytes: opts.maxBindingBytes }),
    packedKvAttention: (layout) =>
      gpuPackedKv(ctx, layout, { maxBindingBytes: opts.maxBindingBytes }),
    kvquantAttention: (layout) =>
      gpuKvQuant(ctx, layout, { maxBindingBytes: opts.maxBindingBytes }),
    residentBlocks: true,
    memory: () => {
      const r = residentPackedStats();
      return {
        ...ctx.pool.stats(),
        residentPackedLayers: r.layers,
        residentPackedBytes: r.bytes,
        residentDenseBytes: residentDenseBytes(),
      };
    },
    transfer: () => ({ ...ctx.transfer }),
    release: () => {
      releaseResidentPacked();
      releaseResidentDense();
      ctx.pool.clear();
    },
  };
}
