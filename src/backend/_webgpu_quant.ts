/**
 * Host side of the packed dequant-matmul kernels (GEMV for decode, GEMM for prefill) over the
 * layout of `kernels/packed_weights.ts`.
 * @module
 */
import type { PackedWeights } from "../../kernels/packed_weights.ts";
import { dequantGemvWGSL, GEMV_ROWS_PER_WORKGROUP } from "../../kernels/dequant_gemv.ts";
import { dequantGemmWGSL } from "../../kernels/dequant_gemm.ts";
import {
  bindGroup,
  type Dispatch,
  grid,
  pipeline,
  readF32,
  runDispatches,
  scratch,
  uniforms,
  upload,
  type WebGPUContext,
} from "./_webgpu_device.ts";

/** Packed weights resident on the GPU. */
export interface GpuPackedWeights {
  /** The CPU-side description (arrays are not used after upload). */
  meta: PackedWeights;
  /** Codes. */
  qweight: GPUBuffer;
  /** (scale, zero) pairs. */
  scaleZero: GPUBuffer;
  /** Group of each chunk. */
  chunkGroup: GPUBuffer;
  /** Original column of each packed position. */
  colIndex: GPUBuffer;
}

/** Uploads packed weights (pooled buffers; free them with {@linkcode releasePacked}). */
export function uploadPacked(ctx: WebGPUContext, pw: PackedWeights): GpuPackedWeights {
  return {
    meta: pw,
    qweight: upload(ctx, pw.qweight),
    scaleZero: upload(ctx, pw.scaleZero),
    chunkGroup: upload(ctx, pw.chunkGroup),
    colIndex: upload(ctx, pw.colIndex),
  };
}

/** Returns the buffers of {@linkcode uploadPacked} to the pool. */
export function releasePacked(ctx: WebGPUContext, gw: GpuPackedWeights): void {
  ctx.pool.release(gw.qweight, gw.scaleZero, gw.chunkGroup, gw.colIndex);
}

/** One GEMV dispatch: `y[rows] = W · x` (x f32 [cols], y f32 [rows]). */
export function dequantGemvDispatch(
  ctx: WebGPUContext,
  gw: GpuPackedWeights,
  io: { x: GPUBuffer; y: GPUBuffer },
): Dispatch {
  const m = gw.meta;
  const pipe = pipeline(ctx, dequantGemvWGSL({ bits: m.bits, identity: m.identity }));
  const u = uniforms(ctx, [m.rows, m.cols, m.chunks, m.groups]);
  const bufs = [u, io.x, gw.qweight, gw.scaleZero, gw.chunkGroup, io.y];
  if (!m.identity) bufs.push(gw.colIndex);
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, bufs),
    workgroups: grid(ctx, Math.ceil(m.rows / GEMV_ROWS_PER_WORKGROUP)),
  };
}

/** One GEMM dispatch: `Y[m, rows] = X[m, cols] · Wᵀ`. */
export function dequantGemmDispatch(
  ctx: WebGPUContext,
  gw: GpuPackedWeights,
  io: { x: GPUBuffer; y: GPUBuffer; m: number },
): Dispatch {
  const w = gw.meta;
  const pipe = pipeline(ctx, dequantGemmWGSL({ bits: w.bits, identity: w.identity }));
  const u = uniforms(ctx, [io.m, w.rows, w.cols, w.chunks, w.groups, 0, 0, 0]);
  const bufs = [u, io.x, gw.qweight, gw.scaleZero, gw.chunkGroup, io.y];
  if (!w.identity) bufs.push(gw.colIndex);
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, bufs),
    workgroups: [Math.ceil(w.rows / 128), Math.ceil(io.m / 128), 1],
  };
}

/**
 * `Y[m, rows] = X[m, cols] · Wᵀ` with packed W: the GEMV kernel when m = 1, else the GEMM kernel.
 */
export async function gpuDequantMatmul(
  ctx: WebGPUContext,
  x: Float32Array,
  pw: PackedWeights,
  opts: { m: number; gemm?: boolean },
): Promise<Float32Array> {
  const useGemm = opts.gemm ?? opts.m > 1;
  if (!useGemm && opts.m !== 1) throw new Error("gpuDequantMatmul: the GEMV path takes m = 1");
  const gw = uploadPacked(ctx, pw);
  const xb = upload(ctx, x);
  const yb = scratch(ctx, opts.m * pw.rows * 4);
  const list = [
    useGemm
      ? dequantGemmDispatch(ctx, gw, { x: xb, y: yb, m: opts.m })
      : dequantGemvDispatch(ctx, gw, { x: xb, y: yb }),
  ];
  await runDispatches(ctx, list);
  const out = await readF32(ctx, yb, opts.m * pw.rows);
  ctx.pool.release(xb, yb);
  releasePacked(ctx, gw);
  return out;
}
