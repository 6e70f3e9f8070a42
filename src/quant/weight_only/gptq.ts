/**
 * GPTQ (Frantar et al., 2022): quantize a weight column by column and spread each column's error
 * over the not-yet-quantized columns through the inverse Hessian, with lazy batch updates.
 * Follows IST-DASLab/gptq `gptq.py` `GPTQ.fasterquant` (and its `g_idx` bookkeeping as in
 * GPTQ-for-LLaMa/AutoGPTQ); grids come from `grid.ts` (reference `quant.py` `Quantizer`).
 *
 * Differences from the reference, all documented at the option or below: on the CPU, `H⁻¹`'s
 * upper Cholesky factor is computed in float64 (the reference uses float32) and without forming
 * `H⁻¹` (plain TypeScript up to {@linkcode BLOCKED_LINALG_MIN} columns, blocked with onnxruntime
 * DGEMM above); on WebGPU it is float32 as in the reference, also without forming `H⁻¹`;
 * act-order's sort is stable; `groupSize` must divide the columns.
 * @module
 */
import { checkDeviceHessian, checkLayerInputs } from "../core/inputs.ts";
import {
  actOrderPermutation,
  dampening,
  type DeadInputs,
  deadInputs,
  deadInputsOfDiagonal,
  permuteColumns,
  processedHessian,
  stopwatch,
  zeroDeadColumns,
} from "../core/hessian.ts";
import type { Tensor } from "../../tensor.ts";
import { NonFiniteError } from "../../errors.ts";
import { checkOptions as checkStrict, GPTQ_SPECS } from "../core/options.ts";
import { blockUpdateSession, cpuBackend } from "../../backend/cpu.ts";
import { type GptqWasm, gptqWasm } from "./_gptq_wasm.ts";
import type { Backend, GptqColumnsResult } from "../../backend/backend.ts";
import type {
  LayerStats,
  QuantContext,
  QuantMeta,
  QuantResult,
  WeightQuantizer,
} from "../core/types.ts";
import type { QuantFormat } from "../core/types.ts";
import {
  bitsPerWeight,
  checkGroupColumns,
  findParams,
  gridFormat,
  type MseOptions,
  packCodes,
  resolveBlocksize,
  resolveGroupSize,
  resolveMse,
  resolvePercdamp,
  validateBits,
} from "../core/grid.ts";
import {
  NotPositiveDefiniteError,
  onnxGemmF64,
  upperCholeskyOfInverse,
  upperCholeskyOfInverseBlocked,
} from "../core/linalg.ts";

/** Above this many columns `Hinv` uses the blocked float64 path with onnxruntime DGEMM. */
export const BLOCKED_LINALG_MIN = 384;

/**
 * Options of {@linkcode gptq}, with the reference's flag names (`gptq.py`/`llama.py` CLI and
 * `fasterquant` arguments).
 */
export interface GptqOptions {
  /** Bits per weight code, 2–8 (`--wbits`). */
  bits: number;
  /** Columns per group; -1 (default) = one grid per output channel (`--groupsize`). */
  groupSize?: number;
  /** Symmetric grid (`--sym`; default false = asymmetric). */
  sym?: boolean;
  /** MSE clipping search of the grid (`Quantizer(mse=True)`; norm 2.4, grid 100, shrink 0.8). */
  mse?: boolean | MseOptions;
  /** Dampening, a fraction of the mean Hessian diagonal added to it (`--percdamp`, 0.01). */
  percdamp?: number;
  /** Columns per lazy batch update (`fasterquant(blocksize=128)`). */
  blocksize?: number;
  /** Quantize columns in order of descending `diag(H)` (`--act-order`; default false). */
  actOrder?: boolean;
  /**
   * Fit all group grids up front on the original weight in original column order
   * (`--static-groups`; default false). No effect without groups, as in the reference.
   */
  staticGroups?: boolean;
  /**
   * Allow a `groupSize` that does not divide the columns: the last group is shorter, as the
   * reference code does (`(i1 + i) % groupsize == 0` over `W[:, c:c+groupsize]`). Default false:
   * such a `groupSize` is an OptionError, since packed GPTQ formats need whole groups.
   */
  partialGroups?: boolean;
}

/** The timed steps of {@linkcode GptqTimings}. */
type TimedStep = "linalg" | "params" | "inBlock" | "trailing";

/**
 * A replacement for `grid.ts`'s `findParams` at every grid fit of {@linkcode gptqQuantize}
 * (per-channel, static and dynamic groups); internal, for methods that run GPTQ with their own
 * grid rule (FrameQuant's `gridFit: "reference"`). Setting it keeps the column pass on the CPU.
 */
export type GridFitter = (
  W: Tensor,
  range: { colStart?: number; colEnd?: number },
) => { scale: Float32Array; zero: Float32Array };

/** Seconds spent in each phase of one {@linkcode gptqQuantize} call (in `meta.timings`). */
export interface GptqTimings {
  /**
   * Damping and `H⁻¹`'s upper Cholesky factor (float64; TypeScript or blocked DGEMM); with the
   * backend's column pass only the damping (the device's float32 factorization is in `inBlock`).
   */
  linalg: number;
  /**
   * Grid fitting at group boundaries and the CPU preparation before the blocks (per-channel and
   * static grids, dead inputs, act-order permutation); the dynamic group fits of the backend's
   * column pass are counted in `inBlock`.
   */
  params: number;
  /**
   * Column loop inside blocks (TypeScript); with the backend's column pass, the whole pass on
   * the device (grid fits, blocks, trailing updates, transfers) and un-permuting the result.
   */
  inBlock: number;
  /**
   * Trailing updates `W[:, i2:] −= Err1 · Hinv[i1:i2, i2:]` (backend matmul + subtraction; the
   * left-looking Scan with its tile copies); 0 with the backend's column pass (counted in
   * `inBlock`).
   */
  trailing: number;
  /** Floating point operations of the trailing matmuls (`Σ 2·rows·count·(cols − i2)`). */
  trailingFlops: number;
  /** Floating point operations of the in-block updates (`Σ 2·rows·(count − 1 − i)`). */
  inBlockFlops: number;
  /** Where step 6 ran: "cpu" (the TypeScript loop) or the backend's name (`gptqColumns`). */
  columnPass: string;
  /** The CPU column pass's lazy batch update, "right" or "left" ({@linkcode BlockUpdate}). */
  blockUpdate?: "right" | "left";
  /** The CPU column pass's four-row update, "wasm" or "ts" ({@linkcode InBlockKernel}). */
  inBlockKernel?: "wasm" | "ts";
}

type Resolved = Required<Omit<GptqOptions, "mse">> & { mse?: boolean | MseOptions };

function resolveOptions(opts: GptqOptions): Resolved {
  checkStrict("gptq", opts, GPTQ_SPECS, { unknown: "ignore" });
  validateBits(opts.bits);
  const groupSize = resolveGroupSize(opts.groupSize);
  const percdamp = resolvePercdamp(opts.percdamp);
  const blocksize = resolveBlocksize(opts.blocksize);
  resolveMse(opts.mse);
  return {
    bits: opts.bits,
    groupSize,
    sym: opts.sym ?? false,
    mse: opts.mse,
    percdamp,
    blocksize,
    actOrder: opts.actOrder ?? false,
    staticGroups: opts.staticGroups ?? false,
    partialGroups: opts.partialGroups ?? false,
  };
}

/** Buffers of {@linkcode quantizeBlock}. */
interface BlockBuffers {
  W1: Float32Array;
  Err1: Float32Array;
  Hinv: Float32Array;
  codes: Uint8Array;
  Q: Float32Array;
  /** Scratch of at least rows × count: the block's codes and weights in processed order. */
  codes1: Uint8Array;
  Q1: Float32Array;
  /**
   * The WebAssembly four-row update, with `W1` at byte `w1` of its memory and the block's
   * `Hinv[i1:i2, i1:i2]` (row-major, `count` wide) at byte `h` (see {@linkcode columnLoop}).
   */
  wasm?: { k: GptqWasm; w1: number; h: number };
  scales: Float32Array;
  zeros: Float32Array;
  colGroup: Int32Array;
  perm: Int32Array | undefined;
}

/** Dimensions of {@linkcode quantizeBlock} and {@linkcode quantizeEntry}. */
interface BlockDims {
  rows: number;
  cols: number;
  ngroups: number;
  i1: number;
  i2: number;
  maxq: number;
}

/**
 * One entry of {@linkcode quantizeBlock}: rounds `W1[r, i]` on its group's grid, records code
 * and weight in the block's scratch (`codes1`, `Q1` at `[r, i]`), stores `err = (w − q)/d` in
 * `Err1[r, i]` and returns the loss term `(w − q)²/d²` (`d = Hinv_ii`).
 */
function quantizeEntry(buf: BlockBuffers, o: BlockDims, r: number, i: number, d: number): number {
  const { W1, Err1, codes1, Q1, scales, zeros, colGroup } = buf;
  const count = o.i2 - o.i1, c = o.i1 + i, wb = r * count;
  const g = r * o.ngroups + colGroup[c];
  const s = scales[g], z = zeros[g];
  const w = W1[wb + i];
  // roundHalfEven(x) + z, written out (a call per entry was ~10 % of the column loop).
  const x = Math.fround(w / s);
  let t = Math.round(x);
  if (t - x === 0.5 && t % 2 !== 0) t -= 1;
  t += z;
  const code = t >= 0 ? (t <= o.maxq ? t : o.maxq) : 0;
  const q = Math.fround(s * (code - z));
  codes1[wb + i] = code;
  Q1[wb + i] = q;
  const diff = Math.fround(w - q);
  Err1[wb + i] = Math.fround(diff / d);
  return (diff * diff) / (d * d);
}

/**
 * The column loop of one block (rows are independent inside a block once the grids are fixed):
 * for each column, {@linkcode quantizeEntry}, then `W1[r, i+1:] −= err · Hinv[i, i+1:]`. Four rows
 * go through the columns together so each `Hinv` row is read once per four rows; every entry
 * sees exactly the operations of a row-by-row loop, and the loss terms are summed in row-major
 * order (rows `r+1..r+3` are buffered), so codes, weights and loss are bit-identical to it.
 * With `buf.wasm` the four-row update runs in the WebAssembly kernel (`_gptq_wasm.ts`, the same
 * float operations). Returns `Σ (w − q)²/Hinv_ii²`.
 */
function quantizeBlock(buf: BlockBuffers, dims: BlockDims): number {
  const { W1, Err1, Hinv, wasm } = buf;
  const { rows, cols, i1, i2 } = dims;
  const count = i2 - i1;
  const hw = wasm ? wasm.h : 0;
  const terms = new Float64Array(3 * count);
  let loss = 0;
  let r = 0;
  for (; r + 3 < rows; r += 4) {
    const b0 = r * count, b1 = b0 + count, b2 = b1 + count, b3 = b2 + count;
    for (let i = 0; i < count; i++) {
      const hr = (i1 + i) * cols + i1;
      const d = Hinv[hr + i];
      loss += quantizeEntry(buf, dims, r, i, d);
      terms[i] = quantizeEntry(buf, dims, r + 1, i, d);
      terms[count + i] = quantizeEntry(buf, dims, r + 2, i, d);
      terms[2 * count + i] = quantizeEntry(buf, dims, r + 3, i, d);
      const e0 = Err1[b0 + i], e1 = Err1[b1 + i], e2 = Err1[b2 + i], e3 = Err1[b3 + i];
      if (wasm && e0 !== 0 && e1 !== 0 && e2 !== 0 && e3 !== 0) {
        const o = wasm.w1 + 4 * (b0 + i + 1), rb = 4 * count;
        wasm.k.upd4(
          o,
          o + rb,
          o + 2 * rb,
          o + 3 * rb,
          hw + 4 * (i * count + i + 1),
          count - i - 1,
          e0,
          e1,
          e2,
          e3,
        );
      } else if (e0 !== 0 && e1 !== 0 && e2 !== 0 && e3 !== 0) {
        for (let j = i + 1; j < count; j++) {
          const h = Hinv[hr + j];
          W1[b0 + j] -= e0 * h;
          W1[b1 + j] -= e1 * h;
          W1[b2 + j] -= e2 * h;
          W1[b3 + j] -= e3 * h;
        }
      } else {
        for (const [b, e] of [[b0, e0], [b1, e1], [b2, e2], [b3, e3]]) {
          if (e !== 0) { for (let j = i + 1; j < count; j++) W1[b + j] -= e * Hinv[hr + j]; }
        }
      }
    }
    for (let k = 0; k < 3 * count; k++) loss += terms[k];
  }
  for (; r < rows; r++) {
    const wb = r * count;
    for (let i = 0; i < count; i++) {
      const hr = (i1 + i) * cols + i1;
      loss += quantizeEntry(buf, dims, r, i, Hinv[hr + i]);
      const err = Err1[wb + i];
      if (err !== 0) {
        for (let j = i + 1; j < count; j++) W1[wb + j] -= err * Hinv[hr + j];
      }
    }
  }
  // Codes and weights to their ORIGINAL columns, row by row (a column-wise scatter into the
  // row-major [rows, cols] outputs missed the cache on every entry).
  const { codes, Q, codes1, Q1, perm } = buf;
  for (let r = 0; r < rows; r++) {
    const wb = r * count, ob = r * cols;
    for (let i = 0; i < count; i++) {
      const oc = ob + (perm === undefined ? i1 + i : perm[i1 + i]);
      codes[oc] = codes1[wb + i];
      Q[oc] = Q1[wb + i];
    }
  }
  return loss;
}

/** `W[:, i2:] −= R` for the row-major `[rows, cols − i2]` product `R`. */
function subtractTrailing(
  W: Float32Array,
  R: Float32Array,
  dims: { rows: number; cols: number; i2: number },
): void {
  const { rows, cols, i2 } = dims, rest = cols - i2;
  for (let r = 0; r < rows; r++) {
    const wr = r * cols + i2, rr = r * rest;
    for (let j = 0; j < rest; j++) W[wr + j] -= R[rr + j];
  }
}

/**
 * How step 6 applies the lazy batch updates on the CPU: "right" (the reference's order of
 * work: after each block, `W[:, i2:] −= Err1 · Hinv[i1:i2, i2:]` through `backend.matmul`),
 * "left" (before each block, the same products of every earlier block, subtracted in the same
 * order, one onnxruntime Scan: {@linkcode blockUpdateSession}; bit-identical, and far fewer bytes
 * leave onnxruntime), or "auto" (default: "left" on the CPU backend for layers of at least
 * {@linkcode LEFT_LOOKING_MIN} weights, else "right"). "left" needs more than one block and
 * dynamic groups that never cross a block (a group's grid fit reads columns that, left-looking,
 * have not received the earlier blocks' updates yet); otherwise "right" runs. The update used is
 * in `meta.timings.blockUpdate`. Internal (an option of `gptqQuantize`, not of the quantizer):
 * it changes where the time goes; results match bit for bit wherever the right-looking products
 * run on onnxruntime too (above the CPU backend's TypeScript threshold;
 * `tests/quant/gptq_left_looking_test.ts`).
 */
export type BlockUpdate = "auto" | "right" | "left";

/** Below this many weights (rows × cols) "auto" keeps the right-looking update. */
export const LEFT_LOOKING_MIN = 1 << 18;

/**
 * Whether the left-looking update applies: more than one block, and no dynamic group that
 * starts in one block and ends in another (its grid fit reads columns the later block has not
 * received its updates for yet).
 */
function leftLookingApplies(
  o: { cols: number; blocksize: number; gs: number; fitGroups: boolean },
): boolean {
  if (o.cols <= o.blocksize) return false;
  return !o.fitGroups || (o.gs <= o.blocksize && o.blocksize % o.gs === 0);
}

/** Options of {@linkcode cpuColumns}. */
interface ColumnOptions {
  rows: number;
  cols: number;
  ngroups: number;
  maxq: number;
  blocksize: number;
  gs: number;
  fitGroups: boolean;
  grid: { bits: number; sym: boolean; mse?: boolean | MseOptions };
  backend: Backend;
  timings: GptqTimings;
  setGroup: (g: number, p: { scale: Float32Array; zero: Float32Array }) => void;
  fit?: GridFitter;
  blockUpdate?: BlockUpdate;
  inBlockKernel?: InBlockKernel;
}

/**
 * The CPU column pass's four-row update: "auto" (default: the WebAssembly SIMD kernel of
 * `_gptq_wasm.ts` where WebAssembly SIMD exists) or "ts" (the TypeScript loop). Same float
 * operations, same bits; internal, like {@linkcode BlockUpdate}. The one used is in
 * `meta.timings.inBlockKernel`.
 */
export type InBlockKernel = "auto" | "ts";

/**
 * Step 6 on the CPU: per block, fit the dynamic groups starting in it (`findParams` on the
 * columns as the lazy scheme holds them), run {@linkcode quantizeBlock} (TypeScript), with the
 * earlier blocks' updates applied right- or left-looking ({@linkcode BlockUpdate}). Writes
 * codes/Q at the original columns; returns `Σ (w − q)²/Hinv_ii²`.
 */
async function cpuColumns(
  buf: ColumnBuffers & { Wc: Float32Array },
  o: ColumnOptions,
): Promise<number> {
  const mode = o.blockUpdate ?? "auto";
  const left = mode !== "right" && leftLookingApplies(o) &&
    (mode === "left" || (o.backend === cpuBackend && o.rows * o.cols >= LEFT_LOOKING_MIN));
  o.timings.blockUpdate = left ? "left" : "right";
  o.timings.inBlockKernel = o.inBlockKernel !== "ts" && gptqWasm() ? "wasm" : "ts";
  return left ? await leftLookingColumns(buf, o) : await rightLookingColumns(buf, o);
}

/** Fits the dynamic groups that start in columns [i1, i2) of `Wt` (`colStart` offset by `c0`). */
function fitBlockGroups(
  Wt: Tensor,
  o: ColumnOptions,
  block: { i1: number; i2: number; c0: number },
) {
  for (let c = block.i1; c < block.i2; c++) {
    if (c % o.gs === 0) {
      const range = { colStart: c - block.c0, colEnd: Math.min(c + o.gs, o.cols) - block.c0 };
      o.setGroup(c / o.gs, o.fit ? o.fit(Wt, range) : findParams(Wt, { ...o.grid, ...range }));
    }
  }
}

/** The layers' buffers every block's column loop reads or fills. */
type ColumnBuffers = Omit<BlockBuffers, "W1" | "Err1" | "codes1" | "Q1" | "wasm">;

/**
 * Per-layer scratch of the column loop, `rows × bs` each, allocated once (first touches of fresh
 * pages are slow on virtual machines): the gathered block weights and the block's codes/weights.
 */
function columnScratch(rows: number, bs: number) {
  return {
    W1: new Float32Array(rows * bs),
    codes1: new Uint8Array(rows * bs),
    Q1: new Float32Array(rows * bs),
  };
}

/** Columns [i1, i2) of the row-major `[rows, cols]` `W` into `out` as `[rows, i2 − i1]`. */
function gatherColumns(
  W: Float32Array,
  out: Float32Array,
  o: { rows: number; cols: number; i1: number; i2: number },
): Float32Array {
  const { rows, cols, i1, i2 } = o, count = i2 - i1;
  const W1 = out.subarray(0, rows * count);
  for (let r = 0; r < rows; r++) W1.set(W.subarray(r * cols + i1, r * cols + i2), r * count);
  return W1;
}

/**
 * {@linkcode quantizeBlock} on block [i1, i2) with weights `W1` (overwritten by the lazy
 * updates). With the WebAssembly kernel, `W1` and the tile `Hinv[i1:i2, i1:i2]` are copied into
 * its memory first, in the same synchronous stretch as the loop: the memory is shared and may
 * grow (and be rewritten) during another layer's awaits. Returns the block's loss.
 */
function columnLoop(
  buf: ColumnBuffers,
  o: ColumnOptions,
  b: {
    i1: number;
    i2: number;
    W1: Float32Array;
    Err1: Float32Array;
    scratch: { codes1: Uint8Array; Q1: Float32Array };
  },
): number {
  const { rows, cols, ngroups, maxq } = o, { i1, i2 } = b, count = i2 - i1;
  const { Hinv, codes, Q, scales, zeros, colGroup, perm } = buf;
  const { codes1, Q1 } = b.scratch;
  const k = o.inBlockKernel === "ts" ? null : gptqWasm();
  let W1 = b.W1, wasm: BlockBuffers["wasm"];
  if (k) {
    const buffer = k.memory(4 * (rows * count + count * count));
    const h = 4 * rows * count;
    const tile = new Float32Array(buffer, h, count * count);
    for (let i = 0; i < count; i++) {
      tile.set(Hinv.subarray((i1 + i) * cols + i1, (i1 + i) * cols + i2), i * count);
    }
    W1 = new Float32Array(buffer, 0, rows * count);
    W1.set(b.W1);
    wasm = { k, w1: 0, h };
  }
  return quantizeBlock(
    { W1, Err1: b.Err1, Hinv, codes, Q, codes1, Q1, scales, zeros, colGroup, perm, wasm },
    { rows, cols, ngroups, i1, i2, maxq },
  );
}

/** {@linkcode cpuColumns}, right-looking: the trailing product after each block. */
async function rightLookingColumns(
  buf: ColumnBuffers & { Wc: Float32Array },
  o: ColumnOptions,
): Promise<number> {
  const { Wc, Hinv } = buf;
  const { rows, cols, timings } = o;
  const Wt: Tensor = { shape: [rows, cols], data: Wc };
  const clock = stopwatch<TimedStep>(timings);
  const scratch = columnScratch(rows, Math.min(o.blocksize, cols));
  const Err1s = new Float32Array(rows * Math.min(o.blocksize, cols));
  let loss = 0;
  for (let i1 = 0; i1 < cols; i1 += o.blocksize) {
    const i2 = Math.min(i1 + o.blocksize, cols), count = i2 - i1;
    clock.restart();
    if (o.fitGroups) {
      fitBlockGroups(Wt, o, { i1, i2, c0: 0 });
      clock.lap("params");
    }
    const W1 = gatherColumns(Wc, scratch.W1, { rows, cols, i1, i2 });
    const Err1 = Err1s.subarray(0, rows * count); // every entry written by quantizeEntry
    loss += columnLoop(buf, o, { i1, i2, W1, Err1, scratch });
    clock.lap("inBlock");
    if (i2 < cols) {
      const rest = cols - i2;
      const B = new Float32Array(count * rest);
      for (let i = 0; i < count; i++) {
        B.set(Hinv.subarray((i1 + i) * cols + i2, (i1 + i + 1) * cols), i * rest);
      }
      const R = (await o.backend.matmul(
        { shape: [rows, count], data: Err1 },
        { shape: [count, rest], data: B },
      )).data;
      subtractTrailing(Wc, R, { rows, cols, i2 });
      clock.lap("trailing");
    }
  }
  return loss;
}

/**
 * {@linkcode cpuColumns}, left-looking: before block b, its columns receive `−E_b'·H_b'` of
 * every earlier block b' in order (one Scan, {@linkcode blockUpdateSession}); the earlier
 * blocks' `Err1` are kept stacked. `Wc` is only read.
 */
async function leftLookingColumns(
  buf: ColumnBuffers & { Wc: Float32Array },
  o: ColumnOptions,
): Promise<number> {
  const { Wc, Hinv } = buf;
  const { rows, cols, timings } = o;
  const bs = o.blocksize, nblocks = Math.ceil(cols / bs);
  const clock = stopwatch<TimedStep>(timings);
  const update = await blockUpdateSession();
  // Err1 of blocks 0..nblocks−2 ([nb, rows, bs]) and the Hinv tiles above the current block.
  const E = new Float32Array((nblocks - 1) * rows * bs);
  const Ht = new Float32Array((nblocks - 1) * bs * bs);
  const scratch = columnScratch(rows, bs), lastErr = new Float32Array(rows * bs);
  let loss = 0;
  for (let b = 0; b < nblocks; b++) {
    const i1 = b * bs, i2 = Math.min(i1 + bs, cols), count = i2 - i1;
    clock.restart();
    for (let k = 0; k < i1; k++) Ht.set(Hinv.subarray(k * cols + i1, k * cols + i2), k * count);
    const W1 = await update(gatherColumns(Wc, scratch.W1, { rows, cols, i1, i2 }), { E, H: Ht }, {
      rows,
      count,
      k: bs,
      nb: b,
    });
    clock.lap("trailing");
    if (o.fitGroups) {
      fitBlockGroups({ shape: [rows, count], data: W1 }, o, { i1, i2, c0: i1 });
      clock.lap("params");
    }
    // Err1 straight into its slot of the stack (the last block's is never read again).
    const Err1 = b < nblocks - 1
      ? E.subarray(b * rows * bs, (b + 1) * rows * bs)
      : lastErr.subarray(0, rows * count);
    loss += columnLoop(buf, o, { i1, i2, W1, Err1, scratch });
    clock.lap("inBlock");
  }
  return loss;
}

function dampHint(percdamp: number): string {
  return `increase the dampening (percdamp, now ${percdamp}) or use more calibration samples`;
}

function notPd(layer: string, percdamp: number, detail: string, cause?: unknown): NonFiniteError {
  return new NonFiniteError(`gptq: ${layer}: ${detail}; ${dampHint(percdamp)}`, { cause });
}

/**
 * GPTQ of one `[rows, cols]` weight (rows = output channels) given `stats.H` (`cols × cols`).
 * The math of {@linkcode gptq}, exported for scripts and tests. Steps, as `fasterquant`:
 * 1. per-channel grids (no groups) are fitted on `W` before anything else;
 * 2. dead inputs (`H_ii = 0`) get `H_ii = 1` and zero weight columns;
 * 3. `staticGroups`: all group grids fitted now, on this `W`, in original column order;
 * 4. `actOrder`: columns permuted by descending `diag(H)` (stable sort);
 * 5. `H += percdamp · mean(diag H) · I`; `Hinv` = upper Cholesky factor of `H⁻¹` (float64,
 *    then rounded to float32 for the updates as the reference holds it);
 * 6. blocks of `blocksize` columns: each column is rounded, its error `(w − q)/Hinv_ii`
 *    updates the rest of the block (TypeScript), then `W[:, i2:] −= Err1 · Hinv[i1:i2, i2:]`
 *    through `backend.matmul`. Dynamic groups are fitted when `col % groupSize == 0`, on
 *    `W[:, col:col+groupSize]` as the lazy scheme holds it then (the reference's `W`, which has
 *    every earlier block's update but not those of earlier columns of the same block).
 *    When the backend has `gptqColumns` (WebGPU) and `mse` is off, `Hinv` (in float32, as the
 *    reference) and the whole step run there in one submission: same semantics, so codes can
 *    differ from the CPU path's (float64 `Hinv`) by rare one-step rounding flips; where it
 *    declines (a layer over the binding limit), or for `mse`, the CPU path runs. To force the
 *    CPU path with device products, pass `{ ...backend, gptqColumns: undefined }`.
 *
 * `stats.Hdevice` instead of `stats.H` (the resident pipeline's H on the backend's device): with
 * the backend's column pass only `diag(H)` is read back (steps 2, 4, 5 need nothing else; the
 * checks are the diagonal's: finite, ≥ 0) and the device works on a copy of H; otherwise H is read
 * back whole and everything runs as with `stats.H`. Same results either way.
 *
 * `loss` is the reference's `Σ Losses = Σ (w − q)² / Hinv_ii² / 2`.
 */
export async function gptqQuantize(
  W: Tensor,
  stats: LayerStats,
  options: GptqOptions & QuantContext & {
    fitGrid?: GridFitter;
    blockUpdate?: BlockUpdate;
    inBlockKernel?: InBlockKernel;
  },
): Promise<QuantResult> {
  const o = resolveOptions(options);
  const layer = options.layer ?? "weight";
  const backend = options.backend ?? cpuBackend;
  const fit = options.fitGrid;
  const hint = dampHint(o.percdamp);
  // H on the backend's device (the resident pipeline): when the column pass runs there too, only
  // diag(H) is read back (dead inputs, act-order, damping need nothing else); otherwise H is
  // read back whole and checked as a host H.
  const devicePass = !o.mse && !fit && backend.gptqColumns !== undefined;
  const Hdev = stats.H === undefined ? stats.Hdevice : undefined;
  let H0: Float32Array | Float64Array | undefined;
  let rows: number, cols: number, di: DeadInputs;
  if (Hdev && devicePass) {
    const diag = await Hdev.diagonal();
    ({ rows, cols } = checkDeviceHessian("gptq", W, { size: Hdev.size, diag }, { layer, hint }));
    di = deadInputsOfDiagonal(diag);
  } else {
    const st = Hdev ? { ...stats, H: await Hdev.read() } : stats;
    ({ rows, cols, H: H0 } = checkLayerInputs("gptq", W, st, { layer, hint }));
    di = deadInputs(H0, cols);
  }
  const gs = o.groupSize;
  checkGroupColumns(cols, { ...o, layer });
  const timings: GptqTimings = {
    linalg: 0,
    params: 0,
    inBlock: 0,
    trailing: 0,
    trailingFlops: 0,
    inBlockFlops: 0,
    columnPass: "cpu",
  };
  const clock = stopwatch<TimedStep>(timings);
  const grid = { bits: o.bits, sym: o.sym, mse: o.mse };
  const maxq = 2 ** o.bits - 1;
  const ngroups = gs > 0 ? Math.ceil(cols / gs) : 1;
  const scales = new Float32Array(rows * ngroups), zeros = new Float32Array(rows * ngroups);
  const setGroup = (g: number, p: { scale: Float32Array; zero: Float32Array }) => {
    for (let r = 0; r < rows; r++) {
      scales[r * ngroups + g] = p.scale[r];
      zeros[r * ngroups + g] = p.zero[r];
    }
  };

  // 1. per-channel grid on the original weight (the reference's `quantizer.find_params(W)`).
  if (gs === -1) setGroup(0, fit ? fit(W, {}) : findParams(W, grid));
  // 2. dead inputs: H_ii = 1 (in `diag`, applied to H below) and zero weight columns.
  const { diag, dead } = di;
  const W0 = zeroDeadColumns(W.data, { rows, cols, dead }); // original column order
  // 3. static groups, original order.
  const isStatic = o.staticGroups && gs > 0;
  if (isStatic) {
    for (let g = 0; g < ngroups; g++) {
      const range = { colStart: g * gs, colEnd: Math.min(g * gs + gs, cols) };
      const W0t = { shape: [rows, cols], data: W0 };
      setGroup(g, fit ? fit(W0t, range) : findParams(W0t, { ...grid, ...range }));
    }
  }
  // 4. act-order: processed column c is original column perm[c] (descending diag, stable).
  const perm = o.actOrder ? actOrderPermutation(diag) : undefined;
  // 5. damping: percdamp · mean(diag H), summed in processed order.
  const damp = dampening(diag, { percdamp: o.percdamp, perm });
  clock.lap("params");

  // Group of each (processed) column in the scales layout.
  const colGroup = new Int32Array(cols);
  for (let c = 0; c < cols; c++) {
    colGroup[c] = gs <= 0
      ? 0
      : isStatic
      ? Math.floor((perm ? perm[c] : c) / gs)
      : Math.floor(c / gs);
  }
  let codes: Uint8Array = new Uint8Array(0);
  let Q: Float32Array = new Float32Array(0);
  const dims = { rows, cols, ngroups, maxq, blocksize: o.blocksize };
  const fitGroups = gs > 0 && !isStatic;

  // On the backend's device when it offers the column pass (min-max grids only): W and H go up
  // in the original order; the device permutes them (act-order), fixes dead inputs, damps,
  // computes Hinv in float32 (as the reference does on the GPU), runs every block and writes
  // codes/Q back in the original order, in one submission.
  let dev: GptqColumnsResult | undefined;
  if (devicePass) {
    clock.restart();
    try {
      dev = await backend.gptqColumns!({
        ...dims,
        W: W0,
        ...(H0 === undefined
          ? { Hdevice: Hdev }
          : { H: H0 instanceof Float32Array ? H0 : Float32Array.from(H0) }),
        perm,
        diagonal: Float32Array.from({ length: cols }, (_, i) => diag[perm ? perm[i] : i] + damp),
        bits: o.bits,
        sym: o.sym,
        groupSize: gs,
        colGroup,
        scales,
        zeros,
        fitGroups,
      });
    } catch (e) {
      if (e instanceof NonFiniteError) {
        throw notPd(
          layer,
          o.percdamp,
          `the damped Hessian is not positive definite in float32 (${e.message})`,
          e,
        );
      }
      throw e;
    }
  }
  let loss: number;
  if (dev) {
    codes = Uint8Array.from(dev.codes);
    Q = dev.Q;
    scales.set(dev.scales);
    zeros.set(dev.zeros);
    loss = dev.loss;
    clock.lap("inBlock");
    timings.columnPass = backend.name;
  } else {
    // The CPU path: W and H in processed order (float64 H), Hinv = chol(H⁻¹)ᵀ-upper in
    // float64, then the column loop.
    clock.restart();
    // The device declined the pass (a layer over its binding limit): H comes back whole.
    H0 ??= checkLayerInputs("gptq", W, { ...stats, H: await Hdev!.read() }, { layer, hint }).H;
    const Wc = W0 === W.data || perm ? permuteColumns(W0, { rows, cols, perm }) : W0;
    let H = processedHessian(H0, { diag, damp, perm });
    clock.lap("params");
    let Hinv: Float32Array;
    try {
      // float64 factorization, each entry rounded to float32 on store (as Float32Array.from).
      Hinv = cols > BLOCKED_LINALG_MIN
        ? await upperCholeskyOfInverseBlocked(H, cols, {
          gemm: await onnxGemmF64(),
          overwrite: true,
          out: new Float32Array(cols * cols),
        })
        : Float32Array.from(upperCholeskyOfInverse(H, cols));
    } catch (e) {
      if (e instanceof NotPositiveDefiniteError) {
        throw notPd(
          layer,
          o.percdamp,
          `the damped Hessian is not positive definite (${e.message})`,
          e,
        );
      }
      throw e;
    }
    H = new Float64Array(0);
    for (let i = 0; i < cols; i++) {
      const d = Hinv[i * cols + i];
      if (!(d > 0) || !Number.isFinite(d)) {
        throw notPd(layer, o.percdamp, `Hinv[${i}, ${i}] is ${d} in float32`);
      }
    }
    clock.lap("linalg");
    codes = new Uint8Array(rows * cols);
    Q = new Float32Array(rows * cols);
    loss = await cpuColumns(
      { Wc, Hinv, codes, Q, scales, zeros, colGroup, perm },
      {
        ...dims,
        grid,
        fitGroups,
        gs,
        backend,
        timings,
        setGroup,
        fit,
        blockUpdate: options.blockUpdate,
        inBlockKernel: options.inBlockKernel,
      },
    );
  }

  for (let i1 = 0; i1 < cols; i1 += o.blocksize) {
    const i2 = Math.min(i1 + o.blocksize, cols), count = i2 - i1;
    timings.inBlockFlops += rows * count * (count - 1);
    timings.trailingFlops += 2 * rows * count * (cols - i2);
  }

  let gIdx: Int32Array | undefined;
  const gIdxStored = gs > 0 && o.actOrder && !isStatic;
  if (gs > 0) {
    gIdx = new Int32Array(cols);
    for (let i = 0; i < cols; i++) {
      if (gIdxStored) gIdx[perm![i]] = Math.floor(i / gs);
      else gIdx[i] = Math.floor(i / gs);
    }
  }
  const meta: QuantMeta = {
    method: "gptq",
    bits: o.bits,
    groupSize: gs,
    sym: o.sym,
    shape: [rows, cols],
    codes,
    packed: packCodes(codes, o.bits),
    scales,
    zeros,
    gIdx,
    perm,
    gIdxStored,
    actOrder: o.actOrder,
    staticGroups: isStatic,
    percdamp: o.percdamp,
    blocksize: o.blocksize,
    timings,
  };
  return {
    Wq: { shape: [rows, cols], data: Q },
    meta,
    bitsPerWeight: bitsPerWeight(meta),
    loss: loss / 2,
  };
}

/**
 * The GPTQ weight quantizer (needs `stats.H`). Option names map to the reference as documented
 * on {@linkcode GptqOptions}: `bits` ↔ `--wbits`, `groupSize` ↔ `--groupsize`, `sym` ↔ `--sym`,
 * `percdamp` ↔ `--percdamp`, `actOrder` ↔ `--act-order`, `staticGroups` ↔ `--static-groups`,
 * `blocksize` ↔ `fasterquant(blocksize)`, `mse` ↔ `Quantizer(mse=True)`. Bad options throw
 * {@linkcode OptionError} here; a `groupSize` that does not divide a layer's columns throws at
 * quantize time, naming the layer. A non-finite or non-positive-definite Hessian throws
 * {@linkcode NonFiniteError} naming the layer and suggesting more dampening.
 *
 * @example
 * ```ts
 * const q = gptq({ bits: 4, groupSize: 128, actOrder: true });
 * const { Wq, meta } = await q.quantizeWeight(W, { H, nsamples: 128 }, { layer: "mlp.down_proj" });
 * ```
 */
export function gptq(options: GptqOptions): WeightQuantizer {
  checkStrict("gptq", options, GPTQ_SPECS);
  const o = resolveOptions(options);
  return {
    name: "gptq",
    needsHessian: true,
    acceptsDeviceHessian: true,
    options: { ...o },
    checkColumns: (cols, layer) => checkGroupColumns(cols, { ...o, layer }),
    quantizeWeight: (W, stats, ctx) => gptqQuantize(W, stats, { ...o, ...ctx }),
  };
}

/** GPTQ's storage format: the plain uniform grid (`grid.ts`), `g_idx` counted when stored. */
export const gptqFormat: QuantFormat = gridFormat("gptq");
