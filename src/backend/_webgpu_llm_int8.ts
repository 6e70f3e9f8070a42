/**
 * Host side of the LLM.int8() operand kernels (`kernels/llm_int8.ts`): the dispatches turning a
 * resident input X [rows, in] and weight W [out, in] into `X̃` and `W̃` (outlier columns of this
 * call exact), whose plain product is the int8 product with the FP outlier part.
 * @module
 */
import { INT8_WG, int8MaskWGSL, int8RowsWGSL, type ProductSpec } from "../../kernels/llm_int8.ts";
import {
  bindGroup,
  type Dispatch,
  grid,
  pipeline,
  uniforms,
  type WebGPUContext,
} from "./_webgpu_device.ts";

/** Buffers of {@linkcode int8ProductDispatches}. */
export interface Int8ProductBuffers {
  /** Input X [rows, cols] (read). */
  x: GPUBuffer;
  /** Dense weight W [out, cols] (read). */
  w: GPUBuffer;
  /** X̃ [rows, cols] (written). */
  xq: GPUBuffer;
  /** W̃ [out, cols] (written). */
  wq: GPUBuffer;
  /** Outlier flags [cols] (scratch). */
  mask: GPUBuffer;
}

/** The three dispatches writing `xq` and `wq` for `spec` (mask, X̃, W̃). */
export function int8ProductDispatches(
  ctx: WebGPUContext,
  b: Int8ProductBuffers,
  o: { spec: ProductSpec; rows: number; out: number; cols: number },
): Dispatch[] {
  const thr = o.spec.threshold ?? 6;
  const pm = pipeline(ctx, int8MaskWGSL());
  const pr = pipeline(ctx, int8RowsWGSL());
  const um = uniforms(ctx, [o.rows, o.cols, thr === Infinity ? 0 : 1, { f: Math.min(thr, 3e38) }]);
  const ux = uniforms(ctx, [o.rows, o.cols, 0, 0]);
  const uw = uniforms(ctx, [o.out, o.cols, 1, 0]);
  return [
    {
      pipeline: pm,
      bindGroup: bindGroup(ctx, pm, [um, b.x, b.mask]),
      workgroups: grid(ctx, Math.ceil(o.cols / INT8_WG)),
    },
    {
      pipeline: pr,
      bindGroup: bindGroup(ctx, pr, [ux, b.x, b.xq, b.mask]),
      workgroups: grid(ctx, o.rows),
    },
    {
      pipeline: pr,
      bindGroup: bindGroup(ctx, pr, [uw, b.w, b.wq, b.mask]),
      workgroups: grid(ctx, o.out),
    },
  ];
}

const growing = new WeakMap<WebGPUContext, Map<string, GPUBuffer>>();
/**
 * A grow-only storage buffer of at least `bytes` per device and `key`, shared by every recorded
 * product (the dispatches of one queue run in order; each product reads what its own operand
 * dispatches just wrote).
 */
export function int8Scratch(ctx: WebGPUContext, key: string, bytes: number): GPUBuffer {
  let m = growing.get(ctx);
  if (!m) growing.set(ctx, m = new Map());
  let b = m.get(key);
  if (!b || b.size < bytes) {
    b = ctx.device.createBuffer({ size: Math.max(256, bytes), usage: 0x80 | 0x8 | 0x4 });
    m.set(key, b);
  }
  return b;
}
