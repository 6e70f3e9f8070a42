/**
 * The compute interface every backend implements. Matrix products are async because the CPU path
 * goes through onnxruntime-node and the GPU path through WebGPU queues.
 * @module
 */
import type { Tensor } from "../tensor.ts";

/** A compute backend: matrix products over row-major float32 tensors. */
export interface Backend {
  /** "cpu" or "webgpu". */
  readonly name: string;
  /** Human-readable description (e.g. onnxruntime version, adapter name). */
  readonly description: string;
  /** `C[m,n] = A[m,k] · B[k,n]`. A may be 2-D only. */
  matmul(a: Tensor, b: Tensor): Promise<Tensor>;
  /** `C[m,n] = A[m,k] · B[n,k]ᵀ` (a linear layer with weight B in [out, in] layout). */
  matmulTransB(a: Tensor, b: Tensor): Promise<Tensor>;
  /**
   * Optional batched attention core: `softmax(Q·Kᵀ + mask)·V` with Q [G, T, d] (already scaled),
   * Kᵀ [G, d, S], V [G, S, d] and an additive mask [T, S]. Returns [G, T, d].
   */
  attention?(q: Tensor, kT: Tensor, v: Tensor, mask: Tensor): Promise<Tensor>;
  /**
   * Optional quantized linear: `x · Wᵀ` computed from `meta` (a quantizer's packed description,
   * `model.packed[name]`) instead of the dense `W`. A backend that keeps packed weights resident
   * (WebGPU: the dequant GEMV/GEMM kernels) implements it; it resolves to `undefined` when it
   * cannot serve this layer (unsupported bit width, or `meta` does not dequantize to `W` bit for
   * bit), and the caller then uses {@linkcode Backend.matmulTransB}.
   */
  packedMatmulTransB?(x: Tensor, w: Tensor, meta: unknown): Promise<Tensor | undefined>;
}

/** Checks 2-D operands and returns [m, k, n]. Throws with both shapes in the message. */
export function gemmDims(a: Tensor, b: Tensor, transB: boolean): [number, number, number] {
  if (a.shape.length !== 2 || b.shape.length !== 2) {
    throw new Error(`matmul: expected 2-D operands, got [${a.shape}] and [${b.shape}]`);
  }
  const [m, k] = a.shape;
  const [b0, b1] = b.shape;
  const kb = transB ? b1 : b0;
  if (kb !== k) {
    throw new Error(
      `matmul${transB ? "TransB" : ""}: inner dims differ: [${a.shape}] and [${b.shape}]`,
    );
  }
  return [m, k, transB ? b0 : b1];
}
