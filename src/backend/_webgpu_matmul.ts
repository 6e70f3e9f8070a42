/**
 * Host side of the matrix kernels: tiled matmul (f32/f16) and XᵀX accumulation (GPTQ's fused
 * column pass lives in `_webgpu_gptq.ts`). Low-level `*Dispatch` functions work on GPU buffers (for
 * benchmarks and pipelines that keep data resident); high-level `gpu*` functions take and return
 * typed arrays.
 * @module
 */
import { UnsupportedError } from "../errors.ts";
import { MATMUL_TILE, matmulWGSL } from "../../kernels/matmul.ts";
import { xtxWGSL } from "../../kernels/xtx.ts";
import { GEMV_F32_ROWS, gemvWGSL } from "../../kernels/gemv.ts";
import {
  bindGroup,
  type Dispatch,
  grid,
  pipeline,
  readF16Bits,
  readF32,
  runAndRead,
  runDispatches,
  scratch,
  uniforms,
  upload,
  type WebGPUContext,
} from "./_webgpu_device.ts";

/** Operand description of {@linkcode matmulDispatch}. */
export interface MatmulDispatchOptions {
  /** Rows of op(A) and C. */
  m: number;
  /** Inner dimension. */
  k: number;
  /** Columns of op(B) and C. */
  n: number;
  /** A stored [k, m]. */
  transA?: boolean;
  /** B stored [n, k]. */
  transB?: boolean;
  /** Leading dimensions (row strides, elements); default dense. */
  lda?: number;
  /** Leading dimension of B. */
  ldb?: number;
  /** Leading dimension of C. */
  ldc?: number;
  /** Element offsets into A, B, C (default 0). */
  offA?: number;
  /** Element offset into B. */
  offB?: number;
  /** Element offset into C. */
  offC?: number;
  /** Scale of the product (default 1). */
  alpha?: number;
  /** When set, `C = alpha·AB + beta·C` (reads C). */
  beta?: number;
  /** "f32" (default) or "f16". */
  dtype?: "f32" | "f16";
  /** f16 only: accumulate in f32. */
  accF32?: boolean;
  /** Staged K-slice depth (default 8). */
  bk?: number;
}

/** One dispatch of the tiled matmul over resident buffers. */
export function matmulDispatch(
  ctx: WebGPUContext,
  bufs: { a: GPUBuffer; b: GPUBuffer; c: GPUBuffer },
  o: MatmulDispatchOptions,
): Dispatch {
  if (o.dtype === "f16" && !ctx.f16) {
    throw new UnsupportedError("webgpu matmul: dtype f16 needs the shader-f16 feature");
  }
  const code = matmulWGSL({
    transA: o.transA,
    transB: o.transB,
    dtype: o.dtype,
    accF32: o.accF32,
    accumulate: o.beta !== undefined,
    bk: o.bk,
  });
  const pipe = pipeline(ctx, code);
  const u = uniforms(ctx, [
    o.m,
    o.n,
    o.k,
    o.lda ?? (o.transA ? o.m : o.k),
    o.ldb ?? (o.transB ? o.k : o.n),
    o.ldc ?? o.n,
    o.offA ?? 0,
    o.offB ?? 0,
    o.offC ?? 0,
    { f: o.alpha ?? 1 },
    { f: o.beta ?? 0 },
    0,
  ]);
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [u, bufs.a, bufs.b, bufs.c]),
    workgroups: [Math.ceil(o.n / MATMUL_TILE), Math.ceil(o.m / MATMUL_TILE), 1],
  };
}

/**
 * One dense GEMV dispatch `y[n] = W[n, k] · x[k]` over resident buffers (`kernels/gemv.ts`); `y`
 * may be a binding into a larger buffer (offset a multiple of minStorageBufferOffsetAlignment).
 */
export function gemvDispatch(
  ctx: WebGPUContext,
  bufs: { x: GPUBuffer; w: GPUBuffer; y: GPUBuffer | GPUBufferBinding },
  o: { n: number; k: number },
): Dispatch {
  const vec4 = o.k % 4 === 0;
  const pipe = pipeline(ctx, gemvWGSL({ vec4 }));
  const u = uniforms(ctx, [o.n, vec4 ? o.k / 4 : o.k, 0, 0]);
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [u, bufs.x, bufs.w, bufs.y]),
    workgroups: grid(ctx, Math.ceil(o.n / GEMV_F32_ROWS)),
  };
}

/** Options of {@linkcode gpuMatmul}. */
export interface GpuMatmulOptions {
  /** Rows of A. */
  m: number;
  /** Inner dimension. */
  k: number;
  /** Columns of C. */
  n: number;
  /** B stored [n, k]. */
  transB?: boolean;
  /** Override of the device's maxStorageBufferBindingSize (tests force the M split with it). */
  maxBindingBytes?: number;
  /**
   * Largest A or C row block in bytes (default 64 MiB): bounds the GPU memory of one product to
   * B plus three such blocks, at the cost of one more round trip per block.
   */
  maxBlockBytes?: number;
  /**
   * Keeps B's uploaded blocks on the GPU, keyed by B's array, for later products with the same
   * B (resident weights for decoding). The caller owns the buffers (see `ResidentB`).
   */
  residentB?: ResidentB;
  /**
   * B already on the device, whole (`b` is then not read): no upload of B. The product must not
   * need a column split (B within the binding limit), else an `UnsupportedError`.
   */
  bDevice?: GPUBuffer;
}

/** A cache of uploaded B blocks (resident dense weights), keyed by the host array. */
export interface ResidentB {
  /** The buffer of B's column block at `c0` (length `nn`), if resident. */
  get(b: Float32Array, c0: number, nn: number): GPUBuffer | undefined;
  /** Records a freshly uploaded block. */
  set(b: Float32Array, c0: number, nn: number, buf: GPUBuffer): void;
}

/**
 * `C[m,n] = A[m,k]·B` (f32) on the GPU, B either [k,n] or [n,k] (`transB`). Where an operand
 * exceeds the binding limit (maxStorageBufferBindingSize), the product is split: C's columns into
 * blocks whose slice of B fits, A's rows into blocks whose A and C slices fit (and stay under
 * `maxBlockBytes`). Each block is one
 * submission and one readback; a one-row block with Bᵀ runs the dense GEMV kernel. Throws {@linkcode UnsupportedError} only when a single
 * `k`-long row exceeds the limit.
 */
export async function gpuMatmul(
  ctx: WebGPUContext,
  a: Float32Array,
  b: Float32Array,
  opts: GpuMatmulOptions,
): Promise<Float32Array> {
  const { m, k, n } = opts;
  const transB = opts.transB ?? false;
  const limit = opts.maxBindingBytes ?? ctx.device.limits.maxStorageBufferBindingSize;
  const colsPer = Math.min(n, Math.floor(limit / (4 * Math.max(k, 1))));
  if (colsPer < 1) {
    throw new UnsupportedError(
      `webgpu matmul: one ${k}-long row of B [${transB ? [n, k] : [k, n]}] exceeds the binding ` +
        `limit ${limit} B`,
    );
  }
  // Row blocks also stay under maxBlockBytes (A, C and C's readback copy are live per block).
  const rowLimit = Math.min(limit, opts.maxBlockBytes ?? 64 * 2 ** 20);
  const rowsPer = Math.max(1, Math.min(m, Math.floor(rowLimit / (4 * Math.max(k, colsPer)))));
  if (opts.bDevice && colsPer < n) {
    throw new UnsupportedError(
      `webgpu matmul: a device-resident B [${transB ? [n, k] : [k, n]}] exceeds the binding ` +
        `limit ${limit} B`,
    );
  }
  const out = new Float32Array(m * n);
  for (let c0 = 0; c0 < n; c0 += colsPer) {
    const nn = Math.min(colsPer, n - c0);
    let bBlock = b;
    if (nn !== n) {
      if (transB) bBlock = b.subarray(c0 * k, (c0 + nn) * k);
      else {
        bBlock = new Float32Array(k * nn);
        for (let p = 0; p < k; p++) bBlock.set(b.subarray(p * n + c0, p * n + c0 + nn), p * nn);
      }
    }
    let bb = opts.bDevice ?? opts.residentB?.get(b, c0, nn);
    const keep = bb !== undefined || opts.residentB !== undefined;
    if (!bb) {
      bb = upload(ctx, bBlock);
      opts.residentB?.set(b, c0, nn, bb);
    }
    try {
      for (let r0 = 0; r0 < m; r0 += rowsPer) {
        const mm = Math.min(rowsPer, m - r0);
        const ab = upload(ctx, a.subarray(r0 * k, (r0 + mm) * k));
        const cb = scratch(ctx, mm * nn * 4);
        try {
          const d = mm === 1 && transB
            ? gemvDispatch(ctx, { x: ab, w: bb, y: cb }, { n: nn, k })
            : matmulDispatch(ctx, { a: ab, b: bb, c: cb }, { m: mm, k, n: nn, transB });
          const res = new Float32Array(await runAndRead(ctx, [d], cb, mm * nn * 4));
          if (nn === n) out.set(res, r0 * n);
          else {
            for (let i = 0; i < mm; i++) {
              out.set(res.subarray(i * nn, (i + 1) * nn), (r0 + i) * n + c0);
            }
          }
        } finally {
          ctx.pool.release(ab, cb);
        }
      }
    } finally {
      if (!keep) ctx.pool.release(bb);
    }
  }
  return out;
}

/**
 * f16 product on the GPU: A, B as IEEE half bits (Uint16Array), result as half bits.
 * `accF32` accumulates in f32 (default: f16 accumulation, as GPU.md measured).
 */
export async function gpuMatmulF16(
  ctx: WebGPUContext,
  a: Uint16Array,
  b: Uint16Array,
  opts: { m: number; k: number; n: number; transB?: boolean; accF32?: boolean },
): Promise<Uint16Array> {
  const { m, n } = opts;
  const ab = upload(ctx, a), bb = upload(ctx, b), cb = scratch(ctx, m * n * 2);
  await runDispatches(ctx, [
    matmulDispatch(ctx, { a: ab, b: bb, c: cb }, { ...opts, dtype: "f16" }),
  ]);
  const out = await readF16Bits(ctx, cb, m * n);
  ctx.pool.release(ab, bb, cb);
  return out;
}

/** One dispatch of `H = beta·H + alpha·XᵀX` over resident buffers (X [n, d], H [d, d]). */
export function xtxDispatch(
  ctx: WebGPUContext,
  bufs: { x: GPUBuffer; h: GPUBuffer },
  o: { n: number; d: number; alpha: number; beta: number },
): Dispatch {
  const pipe = pipeline(ctx, xtxWGSL());
  const u = uniforms(ctx, [o.d, o.d, o.n, o.d, o.d, o.d, 0, 0, 0, { f: o.alpha }, {
    f: o.beta,
  }, 0]);
  const t = Math.ceil(o.d / MATMUL_TILE);
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [u, bufs.x, bufs.x, bufs.h]),
    workgroups: [t, t, 1],
  };
}

/**
 * Hessian accumulation on the GPU: returns `beta·H + alpha·XᵀX` for X [n, d] (a token batch).
 * GPTQ's running form is `alpha = 2/nTotal`, `beta = nSeen/nTotal`.
 */
export async function gpuXtx(
  ctx: WebGPUContext,
  x: Float32Array,
  h: Float32Array,
  opts: { n: number; d: number; alpha: number; beta?: number },
): Promise<Float32Array> {
  const xb = upload(ctx, x), hb = upload(ctx, h);
  await runDispatches(ctx, [
    xtxDispatch(ctx, { x: xb, h: hb }, { ...opts, beta: opts.beta ?? 1 }),
  ]);
  const out = await readF32(ctx, hb, opts.d * opts.d);
  ctx.pool.release(xb, hb);
  return out;
}
