/**
 * Host side of GPTQ on the GPU: per block, the dynamic-group grid fit (`kernels/gptq_params.ts`,
 * for the groups whose first column lies in the block), the fused column loop with in-block error
 * feedback (`kernels/gptq_block.ts`) and the lazy trailing update through the tiled matmul
 * (`W[:, i2:] −= Err · Hinv[i1:i2, i2:]`), every block in one submission with one readback.
 * `gpuGptqColumns` is the WebGPU backend's `gptqColumns` (step 6 of `gptqQuantize`);
 * `gpuGptq` runs fixed grids on plain arrays (kernel tests, benchmarks).
 * @module
 */
import type { GptqColumnsArgs, GptqColumnsResult } from "./backend.ts";
import { UnsupportedError } from "../errors.ts";
import {
  GPTQ_MAX_BLOCK,
  GPTQ_ROWS_PER_WORKGROUP,
  gptqBlockWGSL,
} from "../../kernels/gptq_block.ts";
import {
  gatherWGSL,
  GPTQ_PARAMS_WORKGROUP,
  type GptqParamsRefOptions,
  gptqParamsWGSL,
  groupsStartingIn,
  setDiagonalWGSL,
} from "../../kernels/gptq_params.ts";
import {
  bindGroup,
  type Dispatch,
  grid,
  pipeline,
  runAndReadAll,
  scratch,
  uniforms,
  upload,
  type WebGPUContext,
} from "./_webgpu_device.ts";
import { matmulDispatch } from "./_webgpu_matmul.ts";
import { gpuMatrixBuffer } from "./_webgpu_hessian.ts";
import {
  checkCholeskyStatus,
  copyDispatch,
  decodeCholeskyStatus,
  upperCholeskyOfInverseDispatches,
  type UpperCholeskyOfInversePlan,
} from "./_webgpu_linalg.ts";

/** Buffers of a GPTQ run: W [rows, cols] (updated in place), Hinv [cols, cols], outputs. */
export interface GptqBuffers {
  /** W, f32 [rows, cols]; columns right of each block receive the trailing update. */
  w: GPUBuffer;
  /** Upper-triangular Cholesky factor of H⁻¹, f32 [cols, cols]. */
  hinv: GPUBuffer;
  /** Grid: vec2<f32> (scale, zero), [rows, ngroups]. */
  grid: GPUBuffer;
  /** Grid group of every processed column, u32 [cols]. */
  colGroup: GPUBuffer;
  /** Output dequantized values, f32 [rows, cols]. */
  q: GPUBuffer;
  /** Output codes, u32 [rows, cols]. */
  codes: GPUBuffer;
  /** Scratch error block, f32 [rows, blockSize]. */
  err: GPUBuffer;
  /** Loss accumulators, f32 [ceil(rows / GPTQ_ROWS_PER_WORKGROUP) · blockSize], zeroed first. */
  lossPart: GPUBuffer;
  /** Output column of every processed column, u32 [cols] (act-order's perm; else identity). */
  dstCol: GPUBuffer;
}

/** Options of {@linkcode gptqBlockDispatches}. */
export interface GptqBlockOptions {
  /** Rows of W. */
  rows: number;
  /** Columns of W. */
  cols: number;
  /** First column of the block. */
  i1: number;
  /** Columns in this block (≤ blockSize; the last block may be shorter). */
  b: number;
  /** Block size of the kernel (the `Err` and `lossPart` stride), 1–256. */
  blockSize: number;
  /** Largest code (2^bits − 1). */
  maxq: number;
  /** Groups per row of the grid (default 1). */
  ngroups?: number;
  /**
   * Dynamic groups: fit the grids of the groups whose first column lies in the block before the
   * column loop (min-max, as `findParams`).
   */
  fit?: { groupSize: number; sym: boolean };
}

/** Length (f32 elements) of the `lossPart` buffer for `rows` and a block size. */
export function gptqLossPartLength(rows: number, blockSize: number): number {
  return Math.ceil(rows / GPTQ_ROWS_PER_WORKGROUP) * blockSize;
}

/**
 * The grid-fit dispatch for the groups `g0 .. g0+ng−1` (`kernels/gptq_params.ts`): reads W, writes
 * those groups' (scale, zero) into the grid.
 */
export function gptqParamsDispatch(
  ctx: WebGPUContext,
  bufs: { w: GPUBuffer; grid: GPUBuffer },
  o: GptqParamsRefOptions,
): Dispatch {
  const pipe = pipeline(ctx, gptqParamsWGSL());
  const u = uniforms(ctx, [
    o.rows,
    o.cols,
    o.groupSize,
    o.g0,
    o.ng,
    o.ngroups,
    o.maxq,
    o.sym ? 1 : 0,
  ]);
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [u, bufs.w, bufs.grid]),
    workgroups: grid(ctx, Math.ceil((o.rows * o.ng) / GPTQ_PARAMS_WORKGROUP)),
  };
}

/**
 * The dispatches of one GPTQ block [i1, i1+b): the grid fit of the dynamic groups starting in it
 * (with `fit`, when any start there), the fused quantize-with-error-feedback kernel, then the
 * trailing update `W[:, i1+b:] −= Err · Hinv[i1:i1+b, i1+b:]` through the tiled matmul.
 */
export function gptqBlockDispatches(
  ctx: WebGPUContext,
  bufs: GptqBuffers,
  o: GptqBlockOptions,
): Dispatch[] {
  const ngroups = o.ngroups ?? 1;
  const i2 = o.i1 + o.b;
  const out: Dispatch[] = [];
  if (o.fit) {
    const { g0, ng } = groupsStartingIn(o.i1, i2, o.fit.groupSize);
    if (ng > 0) {
      out.push(gptqParamsDispatch(ctx, bufs, {
        rows: o.rows,
        cols: o.cols,
        groupSize: o.fit.groupSize,
        g0,
        ng,
        ngroups,
        maxq: o.maxq,
        sym: o.fit.sym,
      }));
    }
  }
  const pipe = pipeline(ctx, gptqBlockWGSL({ blockSize: o.blockSize }));
  const u = uniforms(ctx, [o.rows, o.cols, o.i1, o.b, { f: o.maxq }, ngroups, 0, 0]);
  out.push({
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [
      u,
      bufs.w,
      bufs.hinv,
      bufs.grid,
      bufs.colGroup,
      bufs.q,
      bufs.codes,
      bufs.err,
      bufs.lossPart,
      bufs.dstCol,
    ]),
    workgroups: grid(ctx, Math.ceil(o.rows / GPTQ_ROWS_PER_WORKGROUP)),
  });
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

/** The dispatches of every block of a `[rows, cols]` pass ({@linkcode gptqBlockDispatches}). */
export function gptqPassDispatches(
  ctx: WebGPUContext,
  bufs: GptqBuffers,
  o: Omit<GptqBlockOptions, "i1" | "b">,
): Dispatch[] {
  const list: Dispatch[] = [];
  for (let i1 = 0; i1 < o.cols; i1 += o.blockSize) {
    list.push(
      ...gptqBlockDispatches(ctx, bufs, { ...o, i1, b: Math.min(o.blockSize, o.cols - i1) }),
    );
  }
  return list;
}

/** One GPTQ problem for {@linkcode runGptq}. */
interface Problem {
  rows: number;
  cols: number;
  /** W [rows, cols]: processed order, or original order with `perm` (gathered on the device). */
  w: Float32Array;
  /** Hinv (processed order), or `h` from which the device computes it first. */
  hinv?: Float32Array;
  /**
   * H: processed order and damped, or original order with `perm` and/or `diagonal`: the device
   * gathers rows/columns by `perm`, then sets the diagonal to `diagonal`.
   */
  h?: Float32Array;
  /** Instead of `h`: H on the device, original order (read only: the pass works on a copy). */
  hBuf?: GPUBuffer;
  /** Processed column c is original column `perm[c]`: W and H are gathered, Q/codes scattered. */
  perm?: Int32Array;
  /** The damped diagonal of H in processed order (with `h`). */
  diagonal?: Float32Array;
  blockSize: number;
  maxq: number;
  ngroups: number;
  colGroup: Int32Array | Uint32Array;
  /** Interleaved (scale, zero) [rows, ngroups]; undefined: every group is fitted (`fit`). */
  grid?: Float32Array;
  fit?: { groupSize: number; sym: boolean };
}

/** Uploads, runs every block in one submission, reads back Q, codes, loss (grid, W on request). */
async function runGptq(
  ctx: WebGPUContext,
  p: Problem,
  read: { grid: boolean; w: boolean },
): Promise<
  { q: Float32Array; codes: Uint32Array; loss: number; grid?: Float32Array; w?: Float32Array }
> {
  const { rows, cols, blockSize: bs } = p;
  const n = rows * cols, nLoss = gptqLossPartLength(rows, bs);
  const owned: GPUBuffer[] = [];
  const keep = (b: GPUBuffer) => (owned.push(b), b);
  let chol: UpperCholeskyOfInversePlan | undefined;
  try {
    const list: Dispatch[] = [];
    const idx = p.perm ? keep(upload(ctx, Uint32Array.from(p.perm))) : undefined;
    /** `src` [r, cols] gathered by `perm` (columns; rows too for H) into a new buffer. */
    const gather = (src: GPUBuffer, r: number, rowsToo: boolean) => {
      const dst = keep(scratch(ctx, r * cols * 4));
      const pipe = pipeline(ctx, gatherWGSL());
      list.push({
        pipeline: pipe,
        bindGroup: bindGroup(ctx, pipe, [
          uniforms(ctx, [r, cols, rowsToo ? 0 : 1, 0]),
          src,
          idx!,
          idx!,
          dst,
        ]),
        workgroups: grid(ctx, Math.ceil((r * cols) / 256)),
      });
      return dst;
    };
    const hinv = keep(p.hinv ? upload(ctx, p.hinv) : scratch(ctx, cols * cols * 4));
    if (!p.hinv) {
      let h: GPUBuffer;
      if (p.hBuf && idx) h = gather(p.hBuf, cols, true);
      else if (p.hBuf) {
        h = keep(scratch(ctx, cols * cols * 4));
        list.push(copyDispatch(ctx, p.hBuf, h, cols * cols));
      } else {
        h = keep(upload(ctx, p.h!));
        if (idx) h = gather(h, cols, true);
      }
      if (p.diagonal) {
        const pipe = pipeline(ctx, setDiagonalWGSL());
        const db = keep(upload(ctx, p.diagonal));
        list.push({
          pipeline: pipe,
          bindGroup: bindGroup(ctx, pipe, [uniforms(ctx, [cols, 0, 0, 0]), h, db]),
          workgroups: [Math.ceil(cols / 256), 1, 1],
        });
      }
      chol = upperCholeskyOfInverseDispatches(ctx, { h, u: hinv }, cols, { inPlace: true });
      list.push(...chol.dispatches);
    }
    let w = keep(upload(ctx, p.w));
    if (idx) w = gather(w, rows, false);
    const bufs: GptqBuffers = {
      w,
      hinv,
      dstCol: idx ?? keep(upload(ctx, Uint32Array.from({ length: cols }, (_, c) => c))),
      grid: keep(p.grid ? upload(ctx, p.grid) : scratch(ctx, rows * p.ngroups * 8)),
      colGroup: keep(upload(ctx, p.colGroup)),
      q: keep(scratch(ctx, n * 4)),
      codes: keep(scratch(ctx, n * 4)),
      err: keep(scratch(ctx, rows * bs * 4)),
      lossPart: keep(upload(ctx, new Float32Array(nLoss))),
    };
    list.push(...gptqPassDispatches(ctx, bufs, {
      rows,
      cols,
      blockSize: bs,
      maxq: p.maxq,
      ngroups: p.ngroups,
      fit: p.fit,
    }));
    const outs = [
      { buffer: bufs.q, bytes: n * 4 },
      { buffer: bufs.codes, bytes: n * 4 },
      { buffer: bufs.lossPart, bytes: nLoss * 4 },
    ];
    if (read.grid) outs.push({ buffer: bufs.grid, bytes: rows * p.ngroups * 8 });
    if (read.w) outs.push({ buffer: bufs.w, bytes: n * 4 });
    if (chol) outs.push({ buffer: chol.status, bytes: 16 });
    const res = await runAndReadAll(ctx, list, outs);
    if (chol) checkCholeskyStatus(decodeCholeskyStatus(res[res.length - 1]));
    const lossPart = new Float32Array(res[2]);
    let loss = 0;
    for (let i = 0; i < nLoss; i++) loss += lossPart[i];
    let k = 3;
    return {
      q: new Float32Array(res[0]),
      codes: new Uint32Array(res[1]),
      loss,
      grid: read.grid ? new Float32Array(res[k++]) : undefined,
      w: read.w ? new Float32Array(res[k++]) : undefined,
    };
  } finally {
    chol?.release();
    ctx.pool.release(...owned);
  }
}

/**
 * Whether a `[rows, cols]` GPTQ problem fits the device: W (also Q and codes, same size) and
 * Hinv each within the binding limit (`maxBindingBytes`, default the device's
 * maxStorageBufferBindingSize), and a block of at most 256 columns.
 */
export function gptqFits(
  ctx: WebGPUContext,
  o: { rows: number; cols: number; blockSize: number; maxBindingBytes?: number },
): boolean {
  const limit = o.maxBindingBytes ?? ctx.device.limits.maxStorageBufferBindingSize;
  return o.blockSize >= 1 && o.blockSize <= GPTQ_MAX_BLOCK &&
    Math.max(o.rows * o.cols, o.cols * o.cols) * 4 <= limit;
}

function interleave(scale: Float32Array, zero: Float32Array): Float32Array {
  const g = new Float32Array(scale.length * 2);
  for (let i = 0; i < scale.length; i++) {
    g[2 * i] = scale[i];
    g[2 * i + 1] = zero[i];
  }
  return g;
}

/**
 * GPTQ's column pass on the GPU (the WebGPU backend's `gptqColumns`): uploads W, Hinv (or the
 * damped H, factored on the device first by `upperCholeskyOfInverseDispatches`, float32), the
 * grid and `colGroup`; then for every block, [the grid fit of the dynamic groups starting in it] →
 * the fused block kernel → the trailing-update matmul, all in one submission; one readback of Q,
 * codes, the loss parts and (dynamic groups) the fitted grid. Every pooled buffer goes back to the
 * pool, also on errors. GPU memory while it runs: W, Q and codes (4·rows·cols bytes each), Hinv
 * (4·cols²), the error block, and staging copies of Q and codes for the readback.
 *
 * Resolves to `undefined`, so that the caller falls back to its CPU loop, when W or Hinv exceeds
 * the device's binding limit (`maxBindingBytes` overrides it) or `blocksize` exceeds 256.
 */
export async function gpuGptqColumns(
  ctx: WebGPUContext,
  a: GptqColumnsArgs,
  opts: { maxBindingBytes?: number } = {},
): Promise<GptqColumnsResult | undefined> {
  const t0 = performance.now();
  const { rows, cols } = a;
  const bs = Math.min(a.blocksize, cols);
  if (!gptqFits(ctx, { rows, cols, blockSize: bs, maxBindingBytes: opts.maxBindingBytes })) {
    return undefined;
  }
  const given = [a.Hinv, a.H, a.Hdevice].filter((x) => x !== undefined).length;
  if (given !== 1) {
    throw new UnsupportedError("webgpu gptq: pass exactly one of Hinv, H and Hdevice");
  }
  const hBuf = a.Hdevice ? gpuMatrixBuffer(ctx, a.Hdevice) : undefined;
  if (a.Hdevice && !hBuf) {
    throw new UnsupportedError("webgpu gptq: Hdevice is not a live matrix of this device");
  }
  const hLen = a.Hdevice ? a.Hdevice.size ** 2 : (a.Hinv ?? a.H)!.length;
  if (a.W.length !== rows * cols || hLen !== cols * cols || a.colGroup.length !== cols) {
    throw new UnsupportedError(`webgpu gptq: operand sizes do not match [${rows}, ${cols}]`);
  }
  const fit = a.fitGroups && a.groupSize > 0 ? { groupSize: a.groupSize, sym: a.sym } : undefined;
  const res = await runGptq(ctx, {
    rows,
    cols,
    w: a.W,
    hinv: a.Hinv,
    h: a.H,
    hBuf,
    perm: a.perm,
    diagonal: a.diagonal,
    blockSize: bs,
    maxq: 2 ** a.bits - 1,
    ngroups: a.ngroups,
    colGroup: a.colGroup,
    grid: fit ? undefined : interleave(a.scales, a.zeros),
    fit,
  }, { grid: fit !== undefined, w: false });
  let scales = a.scales.slice(), zeros = a.zeros.slice();
  if (res.grid) {
    const m = rows * a.ngroups;
    scales = new Float32Array(m);
    zeros = new Float32Array(m);
    for (let i = 0; i < m; i++) {
      scales[i] = res.grid[2 * i];
      zeros[i] = res.grid[2 * i + 1];
    }
  }
  return {
    codes: res.codes,
    Q: res.q,
    scales,
    zeros,
    loss: res.loss,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Options of {@linkcode gpuGptq}. */
export interface GpuGptqOptions {
  /** Rows (output features) of W. */
  rows: number;
  /** Columns (input features) of W and the size of Hinv. */
  cols: number;
  /** Scale per row [rows], or per row and group [rows, groups], fixed before the pass. */
  scale: Float32Array;
  /** Zero points, same shape as `scale`. */
  zero: Float32Array;
  /** Largest code (2^bits - 1). */
  maxq: number;
  /** Columns per block (default 128, at most 256). */
  blockSize?: number;
  /**
   * Grid group of every column [cols]. Default: 0 with one group per row, else the column's
   * block (groups of exactly `blockSize` columns).
   */
  colGroup?: Int32Array | Uint32Array;
}

/**
 * GPTQ over a whole matrix on the GPU with fixed grids (any per-column group index): for each
 * block, the fused kernel quantizes column by column with error feedback inside the block, then
 * the matmul kernel applies the lazy trailing update; one submission. Returns dequantized Q,
 * codes, the final (updated) W and `loss = Σ ((w − Q)/Hinv_ii)²`.
 */
export async function gpuGptq(
  ctx: WebGPUContext,
  w: Float32Array,
  hinv: Float32Array,
  opts: GpuGptqOptions,
): Promise<{ q: Float32Array; codes: Uint32Array; w: Float32Array; loss: number }> {
  const { rows, cols } = opts;
  const bs = opts.blockSize ?? 128;
  const ngroups = opts.scale.length / rows;
  let colGroup = opts.colGroup;
  if (!colGroup) {
    if (ngroups !== 1 && ngroups !== Math.ceil(cols / bs)) {
      throw new UnsupportedError(
        `webgpu gptq: grid has ${ngroups} groups per row; pass colGroup, or need 1 or one per ` +
          `${bs}-column block`,
      );
    }
    colGroup = new Uint32Array(cols);
    if (ngroups !== 1) { for (let c = 0; c < cols; c++) colGroup[c] = Math.floor(c / bs); }
  }
  if (bs > GPTQ_MAX_BLOCK) {
    throw new UnsupportedError(`webgpu gptq: blockSize ${bs} exceeds ${GPTQ_MAX_BLOCK}`);
  }
  const res = await runGptq(ctx, {
    rows,
    cols,
    w,
    hinv,
    blockSize: bs,
    maxq: opts.maxq,
    ngroups,
    colGroup,
    grid: interleave(opts.scale, opts.zero),
  }, { grid: false, w: true });
  return { q: res.q, codes: res.codes, w: res.w!, loss: res.loss };
}
