/**
 * Dispatch helpers for the decoder kernels a GPU-resident forward records (embedding gather,
 * ranged copy, residual/bias add, SwiGLU, ReLU/GELU, RMSNorm/LayerNorm, RoPE, attention, NLL,
 * argmax), so a forward executor names the operation and its buffers and never touches WGSL,
 * pipelines or bind-group layouts. Binding layouts are the kernels' (`kernels/*.ts` module docs).
 * @module
 */
import {
  activationWGSL,
  addWGSL,
  biasWGSL,
  copyRangeWGSL,
  ELEMENTWISE_WG,
  embedWGSL,
  swigluWGSL,
} from "../../kernels/elementwise.ts";
import { attentionWGSL } from "../../kernels/attention.ts";
import { rmsnormWGSL } from "../../kernels/rmsnorm.ts";
import { layernormWGSL } from "../../kernels/layernorm.ts";
import { ropeWGSL } from "../../kernels/rope.ts";
import { nllWGSL } from "../../kernels/nll.ts";
import { argmaxWGSL } from "../../kernels/argmax.ts";
import {
  bindGroup,
  type Dispatch,
  grid,
  pipeline,
  uniforms,
  type WebGPUContext,
} from "./_webgpu_device.ts";

/** Uniform fields: u32 numbers or `{ f }` floats. */
export type Fields = (number | { f: number })[];

/** The elementwise kernels (one thread per element; `kernels/elementwise.ts`). */
export type ElementwiseKernel = "embed" | "copyRange" | "add" | "bias" | "swiglu" | "relu" | "gelu";

/** The row kernels (one workgroup per row, head or token). */
export type RowKernel =
  | "rmsnorm"
  | "layernorm"
  | "rope"
  | "nll"
  | "argmax"
  | { attention: { headDim: number } };

function code(k: ElementwiseKernel | RowKernel): string {
  if (typeof k === "object") return attentionWGSL(k.attention);
  switch (k) {
    case "embed":
      return embedWGSL();
    case "copyRange":
      return copyRangeWGSL();
    case "add":
      return addWGSL();
    case "bias":
      return biasWGSL();
    case "swiglu":
      return swigluWGSL();
    case "relu":
    case "gelu":
      return activationWGSL(k);
    case "rmsnorm":
      return rmsnormWGSL();
    case "layernorm":
      return layernormWGSL();
    case "rope":
      return ropeWGSL();
    case "nll":
      return nllWGSL();
    case "argmax":
      return argmaxWGSL();
  }
}

/**
 * One dispatch of kernel `k` with uniforms `u` (a recorded buffer, or fields) at binding 0 and
 * `bufs` at 1, 2, ...: `n` elements for an {@linkcode ElementwiseKernel}, `n` workgroups for a
 * {@linkcode RowKernel} (rows for norms and NLL, 1 for argmax, heads·rows for attention,
 * ceil(pairs / 256) for RoPE).
 */
export function kernelDispatch(
  ctx: WebGPUContext,
  k: ElementwiseKernel | RowKernel,
  u: GPUBuffer | Fields,
  bufs: (GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number })[],
  n: number,
): Dispatch {
  const pipe = pipeline(ctx, code(k));
  const ub = Array.isArray(u) ? uniforms(ctx, u) : u;
  const elementwise = typeof k === "string" &&
    ["embed", "copyRange", "add", "bias", "swiglu", "relu", "gelu"].includes(k);
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [ub, ...bufs]),
    workgroups: grid(ctx, elementwise ? Math.ceil(n / ELEMENTWISE_WG) : n),
  };
}
