/**
 * Host side of the LUT-GEMV (`kernels/lut_gemv.ts`) for BCQ weights (`src/quant/weight_only/bcq.ts`'s
 * packed planes and α): upload once, one dispatch per product of a batch of 1–3 rows.
 * @module
 */
import { OptionError } from "../errors.ts";
import { LUT_MAX_BATCH, LUT_ROWS_PER_WORKGROUP, lutGemvWGSL } from "../../kernels/lut_gemv.ts";
import {
  bindGroup,
  type Dispatch,
  grid,
  pipeline,
  runAndRead,
  scratch,
  uniforms,
  upload,
  type WebGPUContext,
} from "./_webgpu_device.ts";

/** A BCQ weight as the kernel reads it (the fields of a `BcqMeta`). */
export interface LutWeightsLike {
  /** `[rows, cols]`. */
  shape: [number, number];
  /** Planes q. */
  bits: number;
  /** Columns per α group (-1 or ≥ cols = the row). */
  groupSize: number;
  /** Plane bits `[(i·rows + n)·words + k/32]`. */
  planes: Uint32Array;
  /** α `[rows, groups, q]`. */
  alphas: Float32Array;
  /** Offsets `[rows, groups]` (optional). */
  offsets?: ArrayLike<number>;
}

/** BCQ weights resident on the GPU. */
export interface GpuLutWeights {
  /** rows, cols, q, groups, gsWords, words. */
  dims: { rows: number; cols: number; q: number; groups: number; gsWords: number; words: number };
  /** Whether offsets are applied. */
  hasOffset: boolean;
  /** Plane words. */
  planes: GPUBuffer;
  /** α. */
  alphas: GPUBuffer;
  /** Offsets (one zero when absent). */
  offsets: GPUBuffer;
}

/**
 * Uploads a BCQ weight. OptionError unless `cols` and the group size are multiples of 32 (the
 * kernel reads one 32-column plane word per α group step).
 */
export function uploadLut(ctx: WebGPUContext, w: LutWeightsLike): GpuLutWeights {
  const [rows, cols] = w.shape;
  const gs = w.groupSize > 0 && w.groupSize < cols ? w.groupSize : cols;
  if (cols % 32 !== 0 || gs % 32 !== 0) {
    throw new OptionError(
      "groupSize",
      `the LUT-GEMV needs cols (${cols}) and the group size (${gs}) to be multiples of 32`,
    );
  }
  const groups = cols / gs, words = cols / 32;
  return {
    dims: { rows, cols, q: w.bits, groups, gsWords: gs / 32, words },
    hasOffset: w.offsets !== undefined,
    planes: upload(ctx, w.planes),
    alphas: upload(ctx, w.alphas),
    offsets: upload(ctx, w.offsets ? Float32Array.from(w.offsets) : new Float32Array(1)),
  };
}

/** Returns the buffers of {@linkcode uploadLut} to the pool. */
export function releaseLut(ctx: WebGPUContext, g: GpuLutWeights): void {
  ctx.pool.release(g.planes, g.alphas, g.offsets);
}

/** One LUT-GEMV dispatch: `y[m, rows] = x[m, cols] · Wᵀ`, m in 1–3. */
export function lutGemvDispatch(
  ctx: WebGPUContext,
  g: GpuLutWeights,
  io: { x: GPUBuffer; y: GPUBuffer; m: number },
): Dispatch {
  if (!(Number.isInteger(io.m) && io.m >= 1 && io.m <= LUT_MAX_BATCH)) {
    throw new OptionError("m", `the LUT-GEMV takes a batch of 1–${LUT_MAX_BATCH}, got ${io.m}`);
  }
  const d = g.dims;
  const pipe = pipeline(ctx, lutGemvWGSL({ m: io.m }));
  const u = uniforms(ctx, [
    d.rows,
    d.cols,
    d.words,
    d.groups,
    d.q,
    d.gsWords,
    g.hasOffset ? 1 : 0,
    0,
  ]);
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [u, io.x, g.planes, g.alphas, g.offsets, io.y]),
    workgroups: grid(ctx, Math.ceil(d.rows / LUT_ROWS_PER_WORKGROUP)),
  };
}

/** `x[m, cols] · Wᵀ` → `[m, rows]` through the LUT-GEMV (uploads x, reads y back). */
export async function gpuLutGemv(
  ctx: WebGPUContext,
  x: Float32Array,
  g: GpuLutWeights,
  m: number,
): Promise<Float32Array> {
  const xb = upload(ctx, x), yb = scratch(ctx, m * g.dims.rows * 4);
  try {
    const d = lutGemvDispatch(ctx, g, { x: xb, y: yb, m });
    return new Float32Array(await runAndRead(ctx, [d], yb, m * g.dims.rows * 4));
  } finally {
    ctx.pool.release(xb, yb);
  }
}
