/**
 * Host side of the packed dequant-matmul kernels (GEMV for decode, GEMM for prefill) over the
 * layout of `kernels/packed_weights.ts`, and the resident packed weights of quantized models:
 * a quantizer's meta (codes, scales, zeros, g_idx) is packed once, checked to dequantize to the
 * model's weight bit for bit, uploaded, and kept on the GPU for every later product.
 * @module
 */
import type { Tensor } from "../tensor.ts";
import { unpackBits } from "../bitstream.ts";
import {
  type PackedBits,
  type PackedWeights,
  packWeights,
  streamWeights,
} from "../../kernels/packed_weights.ts";
import { isRecordedDecode } from "./backend.ts";
import { dequantGemvWGSL, GEMV_ROWS_PER_WORKGROUP } from "../../kernels/dequant_gemv.ts";
import { dequantGemmWGSL } from "../../kernels/dequant_gemm.ts";
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
  const pipe = pipeline(
    ctx,
    dequantGemvWGSL({ bits: m.bits, identity: m.identity, stream: m.stream }),
  );
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
  const pipe = pipeline(
    ctx,
    dequantGemmWGSL({ bits: w.bits, identity: w.identity, stream: w.stream }),
  );
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
  try {
    return new Float32Array(await runAndRead(ctx, list, yb, opts.m * pw.rows * 4));
  } finally {
    ctx.pool.release(xb, yb);
    releasePacked(ctx, gw);
  }
}

/**
 * The fields of a quantizer's meta (`QuantMeta` in `src/quant/core/types.ts`) that packing reads;
 * declared here so the backend does not import the quant layer.
 */
export interface QuantMetaLike {
  /** Bits per code. */
  bits: number;
  /** [rows, cols] of the weight. */
  shape: [number, number];
  /** Unpacked codes, row-major, original column order. */
  codes?: Uint8Array;
  /** LSB-first bitstream of the codes (used when `codes` is absent). */
  packed?: Uint32Array;
  /** Scale per (row, group), [rows, ngroups]. */
  scales: Float32Array;
  /** Zero point per (row, group), [rows, ngroups]. */
  zeros: Float32Array;
  /** Group of each column (act-order's g_idx). */
  gIdx?: Int32Array;
  /** Columns per group, or -1 (one group per row). */
  groupSize: number;
}

/**
 * Packs a quantizer's meta for the dequant kernels. Returns `undefined` when the kernels cannot
 * serve it (bits outside 2/3/4/8, missing fields, inconsistent groups) or, given `w`, when the
 * meta does not dequantize (`scale · (code − zero)` in float32) to `w` exactly, so a product from
 * the packed weights always stands for the same weight as the dense product.
 *
 * When `w` is the very array the quantizer returned with this meta (`recordDecoded` in
 * `backend.ts`: grid methods, whose `Wq` is the meta's decode by contract), there is no host
 * check. The quantizer's packed words (`meta.packed`, `grid.ts` `packCodes`) are the kernels'
 * `qweight` as they are (`streamWeights`: no unpack, no repack; on the identity layout they are
 * the chunk words, otherwise the kernels read them through `colIndex`); a meta with only `codes`
 * is packed into chunk words.
 */
export function packQuantMeta(meta: unknown, w?: Tensor): PackedWeights | undefined {
  if (!meta || typeof meta !== "object") return undefined;
  const m = meta as Partial<QuantMetaLike>;
  const bits = m.bits;
  if (bits !== 2 && bits !== 3 && bits !== 4 && bits !== 8) return undefined;
  if (!Array.isArray(m.shape) || m.shape.length !== 2) return undefined;
  const [rows, cols] = m.shape;
  if (w && (w.shape.length !== 2 || w.shape[0] !== rows || w.shape[1] !== cols)) return undefined;
  const { scales, zeros } = m;
  if (!(scales instanceof Float32Array) || !(zeros instanceof Float32Array)) return undefined;
  const ngroups = scales.length / rows;
  if (!Number.isInteger(ngroups) || ngroups < 1 || zeros.length !== scales.length) {
    return undefined;
  }
  const gs = m.groupSize ?? -1;
  const gIdx = new Int32Array(cols);
  for (let j = 0; j < cols; j++) {
    const g = m.gIdx ? m.gIdx[j] : gs > 0 ? Math.floor(j / gs) : 0;
    if (!(g >= 0 && g < ngroups)) return undefined;
    gIdx[j] = g;
  }
  const trusted = !w || isRecordedDecode(meta, w.data as Float32Array);
  let codes = m.codes instanceof Uint8Array ? m.codes : undefined;
  if (!trusted) {
    if (!codes && m.packed instanceof Uint32Array) {
      codes = unpackBits(m.packed, { bits, out: new Uint8Array(rows * cols) });
    }
    if (!codes || codes.length !== rows * cols) return undefined;
    const d = w!.data;
    const f = new Float32Array(1);
    for (let r = 0; r < rows; r++) {
      const pr = r * ngroups, wr = r * cols;
      for (let j = 0; j < cols; j++) {
        const g = pr + gIdx[j];
        f[0] = scales[g] * (codes[wr + j] - zeros[g]);
        if (f[0] !== d[wr + j]) return undefined;
      }
    }
  }
  // The quantizer's packed words as they are (no repack), in any group layout.
  if (m.packed instanceof Uint32Array) {
    return streamWeights(m.packed, { rows, cols, bits, scales, zeros, gIdx });
  }
  if (!codes || codes.length !== rows * cols) return undefined;
  try {
    return packWeights(codes, { rows, cols, bits: bits as PackedBits, scales, zeros, gIdx });
  } catch {
    return undefined; // e.g. a group that no column uses
  }
}

interface ResidentEntry {
  ctx: WebGPUContext;
  gw: GpuPackedWeights;
}

interface Resident {
  /** The weight the packed codes were checked against. */
  w: Tensor;
  /** The uploaded weights (alive while in `residentAll`), or null when the meta cannot be served. */
  entry: ResidentEntry | null;
}

const resident = new WeakMap<object, Resident>();
const residentAll = new Set<ResidentEntry>();
const finalizer = new FinalizationRegistry<ResidentEntry>((e) => {
  if (residentAll.delete(e)) destroyPacked(e.ctx, e.gw);
});

function destroyPacked(ctx: WebGPUContext, gw: GpuPackedWeights): void {
  ctx.pool.destroy(gw.qweight, gw.scaleZero, gw.chunkGroup, gw.colIndex);
}

function packedGpuBytes(gw: GpuPackedWeights): number {
  return gw.qweight.size + gw.scaleZero.size + gw.chunkGroup.size + gw.colIndex.size;
}

/** Drops the CPU arrays of a PackedWeights (the kernels' dispatch needs only the sizes). */
function sizesOnly(pw: PackedWeights): PackedWeights {
  return {
    ...pw,
    qweight: new Uint32Array(0),
    scaleZero: new Float32Array(0),
    chunkGroup: new Uint32Array(0),
    colIndex: new Uint32Array(0),
  };
}

/**
 * The GPU-resident packed weights of a quantized layer: packed and uploaded on first use (after
 * {@linkcode packQuantMeta}'s exactness check against `w`), then reused while `meta` lives.
 * Returns `undefined` when the layer cannot run from packed codes. Buffers are freed when `meta`
 * is garbage-collected or by {@linkcode releaseResidentPacked} (a later use uploads again).
 */
export function residentPacked(
  ctx: WebGPUContext,
  meta: object,
  w: Tensor,
): GpuPackedWeights | undefined {
  const r = resident.get(meta);
  if (r && r.w === w) {
    if (r.entry === null) return undefined;
    if (residentAll.has(r.entry)) return r.entry.gw;
  }
  if (r?.entry && residentAll.delete(r.entry)) destroyPacked(r.entry.ctx, r.entry.gw);
  let entry: ResidentEntry | null = null;
  // The exactness check ran already when only the upload was released.
  const pw = r && r.w === w && r.entry ? packQuantMeta(meta) : packQuantMeta(meta, w);
  if (pw) {
    const gw = uploadPacked(ctx, pw);
    gw.meta = sizesOnly(pw);
    entry = { ctx, gw };
    residentAll.add(entry);
    finalizer.register(meta, entry);
  }
  resident.set(meta, { w, entry });
  return entry?.gw;
}

/** Frees every resident packed weight on the GPU; returns the bytes freed. */
export function releaseResidentPacked(): number {
  let bytes = 0;
  for (const e of residentAll) {
    bytes += packedGpuBytes(e.gw);
    destroyPacked(e.ctx, e.gw);
  }
  residentAll.clear();
  return bytes;
}

/** Resident packed weights now on the GPU: count and bytes. */
export function residentPackedStats(): { layers: number; bytes: number } {
  let bytes = 0;
  for (const e of residentAll) bytes += packedGpuBytes(e.gw);
  return { layers: residentAll.size, bytes };
}

/**
 * `Y[m, rows] = X[m, cols] · Wᵀ` from resident packed weights: GEMV when m = 1, else GEMM, with
 * X split into row blocks where X or Y would exceed the binding limit. One submission and one
 * readback per block.
 */
export async function gpuPackedMatmul(
  ctx: WebGPUContext,
  x: Float32Array,
  gw: GpuPackedWeights,
  opts: { m: number; maxBindingBytes?: number },
): Promise<Float32Array> {
  const { rows, cols } = gw.meta;
  const m = opts.m;
  const limit = opts.maxBindingBytes ?? ctx.device.limits.maxStorageBufferBindingSize;
  const rowsPer = Math.max(1, Math.min(m, Math.floor(limit / (4 * Math.max(rows, cols)))));
  const out = new Float32Array(m * rows);
  for (let r0 = 0; r0 < m; r0 += rowsPer) {
    const mm = Math.min(rowsPer, m - r0);
    const xb = upload(ctx, x.subarray(r0 * cols, (r0 + mm) * cols));
    const yb = scratch(ctx, mm * rows * 4);
    try {
      const d = mm === 1
        ? dequantGemvDispatch(ctx, gw, { x: xb, y: yb })
        : dequantGemmDispatch(ctx, gw, { x: xb, y: yb, m: mm });
      out.set(new Float32Array(await runAndRead(ctx, [d], yb, mm * rows * 4)), r0 * rows);
    } finally {
      ctx.pool.release(xb, yb);
    }
  }
  return out;
}
