/**
 * Host side of the matrix kernels: tiled matmul (f32/f16), XᵀX accumulation, and the fused GPTQ
 * block step plus its trailing update. Low-level `*Dispatch` functions work on GPU buffers (for
 * benchmarks and pipelines that keep data resident); high-level `gpu*` functions take and return
 * typed arrays.
 * @module
 */
import { UnsupportedError } from "../errors.ts";
import { MATMUL_TILE, matmulWGSL } from "../../kernels/matmul.ts";
import { xtxWGSL } from "../../kernels/xtx.ts";
import { GEMV_F32_ROWS, gemvWGSL } from "../../kernels/gemv.ts";
import { GPTQ_ROWS_PER_WORKGROUP, gptqBlockWGSL } from "../../kernels/gptq_block.ts";
import {
  bindGroup,
  type Dispatch,
  grid,
  pipeline,
  readF16Bits,
  readF32,
  readU32,
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

/** One dense GEMV dispatch `y[n] = W[n, k] · x[k]` over resident buffers (`kernels/gemv.ts`). */
export function gemvDispatch(
  ctx: WebGPUContext,
  bufs: { x: GPUBuffer; w: GPUBuffer; y: GPUBuffer },
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
    let bb = opts.residentB?.get(b, c0, nn);
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

/** Buffers of a GPTQ run: W [rows, cols] (updated in place), Hinv [cols, cols], outputs. */
export interface GptqBuffers {
  /** W, f32 [rows, cols]; columns right of each block receive the trailing update. */
  w: GPUBuffer;
  /** Upper-triangular Cholesky factor of H⁻¹, f32 [cols, cols]. */
  hinv: GPUBuffer;
  /** Grid: vec2<f32> (scale, zero), [rows] or [rows, groups] (groups aligned with blocks). */
  grid: GPUBuffer;
  /** Output dequantized values, f32 [rows, cols]. */
  q: GPUBuffer;
  /** Output codes, u32 [rows, cols]. */
  codes: GPUBuffer;
  /** Scratch error block, f32 [rows, blockSize]. */
  err: GPUBuffer;
}

/**
 * The dispatches of one GPTQ block [i1, i1+b): the fused quantize-with-error-feedback kernel,
 * then the trailing update `W[:, i1+b:] -= Err · Hinv[i1:i1+b, i1+b:]` through the tiled matmul.
 */
export function gptqBlockDispatches(
  ctx: WebGPUContext,
  bufs: GptqBuffers,
  o: {
    rows: number;
    cols: number;
    i1: number;
    b: number;
    blockSize: number;
    maxq: number;
    /** Groups per row of the grid (1: one grid per row). */
    groups?: number;
  },
): Dispatch[] {
  const pipe = pipeline(ctx, gptqBlockWGSL({ blockSize: o.blockSize }));
  const groups = o.groups ?? 1;
  const g = groups === 1 ? 0 : o.i1 / o.blockSize;
  const u = uniforms(ctx, [o.rows, o.cols, o.i1, o.b, { f: o.maxq }, groups, g, 0]);
  const out: Dispatch[] = [{
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [
      u,
      bufs.w,
      bufs.hinv,
      bufs.grid,
      bufs.q,
      bufs.codes,
      bufs.err,
    ]),
    workgroups: [Math.ceil(o.rows / GPTQ_ROWS_PER_WORKGROUP), 1, 1],
  }];
  const i2 = o.i1 + o.b;
  if (i2 < o.cols) {
    out.push(matmulDispatch(ctx, { a: bufs.err, b: bufs.hinv, c: bufs.w }, {
      m: o.rows,
      k: o.b,
      n: o.cols - i2,
      lda: o.blockSize,
      ldb: o.cols,
      ldc: o.cols,
      offB: o.i1 * o.cols + i2,
      offC: i2,
      alpha: -1,
      beta: 1,
    }));
  }
  return out;
}

/** Options of {@linkcode gpuGptq}. */
export interface GpuGptqOptions {
  /** Rows (output features) of W. */
  rows: number;
  /** Columns (input features) of W and the size of Hinv. */
  cols: number;
  /**
   * Scale per row [rows], or per row and group [rows, groups] with groups of exactly `blockSize`
   * columns (g128 with block 128; the grid is fixed before the pass, as GPTQ's static_groups).
   */
  scale: Float32Array;
  /** Zero points, same shape as `scale`. */
  zero: Float32Array;
  /** Largest code (2^bits - 1). */
  maxq: number;
  /** Columns per block (default 128, at most 256). */
  blockSize?: number;
}

/**
 * GPTQ over a whole matrix on the GPU with fixed grids (per row, or per row and block): for each
 * block, the fused kernel quantizes column by column with error feedback inside the block, then
 * the matmul kernel applies the lazy trailing update. Returns dequantized Q, codes and the final
 * (updated) W.
 */
export async function gpuGptq(
  ctx: WebGPUContext,
  w: Float32Array,
  hinv: Float32Array,
  opts: GpuGptqOptions,
): Promise<{ q: Float32Array; codes: Uint32Array; w: Float32Array }> {
  const { rows, cols } = opts;
  const bs = opts.blockSize ?? 128;
  const groups = opts.scale.length / rows;
  if (groups !== 1 && groups !== Math.ceil(cols / bs)) {
    throw new UnsupportedError(
      `webgpu gptq: grid has ${groups} groups per row; need 1 or one per ${bs}-column block`,
    );
  }
  const grid = new Float32Array(rows * groups * 2);
  for (let i = 0; i < rows * groups; i++) {
    grid[2 * i] = opts.scale[i];
    grid[2 * i + 1] = opts.zero[i];
  }
  const bufs: GptqBuffers = {
    w: upload(ctx, w),
    hinv: upload(ctx, hinv),
    grid: upload(ctx, grid),
    q: scratch(ctx, rows * cols * 4),
    codes: scratch(ctx, rows * cols * 4),
    err: scratch(ctx, rows * bs * 4),
  };
  const list: Dispatch[] = [];
  for (let i1 = 0; i1 < cols; i1 += bs) {
    list.push(
      ...gptqBlockDispatches(ctx, bufs, {
        rows,
        cols,
        i1,
        b: Math.min(bs, cols - i1),
        blockSize: bs,
        maxq: opts.maxq,
        groups,
      }),
    );
  }
  await runDispatches(ctx, list);
  const res = {
    q: await readF32(ctx, bufs.q, rows * cols),
    codes: await readU32(ctx, bufs.codes, rows * cols),
    w: await readF32(ctx, bufs.w, rows * cols),
  };
  ctx.pool.release(...Object.values(bufs));
  return res;
}
