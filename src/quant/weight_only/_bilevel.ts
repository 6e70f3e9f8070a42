/**
 * Shared core of the outlier-aware quantizers (SpQR, OA): the bilevel grid of SpQR's
 * `quant_groups.py` (`Quantizer` with `qq_scale_bits` / `qq_zero_bits`: the per-row scales and
 * zeros of a column group are themselves quantized in groups of `qqGroupSize` consecutive rows,
 * whose own statistics are kept in 16 bits), and the GPTQ-style column loop of `spqr_engine.py`
 * (group grids fitted when `column % groupSize == 0` on the weight as updated so far, an outlier
 * hook per weight, lazy block updates).
 *
 * Arithmetic mirrors the reference's float32 tensors: `code = clamp(round(x / max(scale, 1e-9)
 * + zero), 0, maxq)` (round half to even, the sum rounded to float32 first) and `q = scale ·
 * (code − zero)`, every step rounded to float32.
 * @module
 */
import type { Backend } from "../../backend/backend.ts";
import { roundHalfEven } from "../core/grid.ts";

const f = Math.fround;

/** `clamp(round(x / max(scale, 1e-9) + zero), 0, maxq)` as `quant_groups.quantize`. */
export function codeOf(x: number, scale: number, zero: number, maxq: number): number {
  const t = roundHalfEven(f(f(x / (scale > 1e-9 ? scale : f(1e-9))) + zero));
  return t >= 0 ? (t <= maxq ? t + 0 : maxq) : 0; // + 0: a code is never −0 (Uint8 storage)
}

/** `scale · (code − zero)` in float32, as `quant_groups.dequantize`. */
export function decode(code: number, scale: number, zero: number): number {
  return f(scale * f(code - zero));
}

/**
 * Min-max grid of `quant_groups.Quantizer.find_params` (no MSE search): the range always holds
 * 0; symmetric uses `±max|x|` and zero `(maxq + 1)/2`; an all-zero range becomes `[−1, 1]`;
 * `roundZero` rounds the asymmetric zero (reference `round_zero`, default false there).
 */
export function fitMinMax(
  values: ArrayLike<number>,
  opts: { maxq: number; sym: boolean; roundZero: boolean },
): [number, number] {
  let xmin = 0, xmax = 0;
  for (let k = 0; k < values.length; k++) {
    const v = values[k];
    if (v < xmin) xmin = v;
    if (v > xmax) xmax = v;
  }
  if (opts.sym) {
    xmax = Math.max(Math.abs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin === 0 && xmax === 0) {
    xmin = -1;
    xmax = 1;
  }
  const scale = f(f(xmax - xmin) / opts.maxq);
  const z = f(-xmin / scale);
  const zero = opts.sym ? (opts.maxq + 1) / 2 : opts.roundZero ? roundHalfEven(z) : z;
  return [scale, zero];
}

/** A vector of statistics quantized in groups of consecutive entries (second level). */
export interface QuantizedStats {
  /** Bits per code (`qq_scale_bits` / `qq_zero_bits`). */
  bits: number;
  /** Entries per second-level group (`qq_groupsize`, β2); the last group may be shorter. */
  groupSize: number;
  /** Symmetric second-level grid (`qq_zero_sym` for zeros; scales are always asymmetric). */
  sym: boolean;
  /** One code per entry. */
  codes: Uint8Array;
  /** Second-level scale per group (kept in 16 bits in the accounting, float32 here). */
  scale: Float32Array;
  /** Second-level zero per group (unrounded, as the reference's `round_zero=False`). */
  zero: Float32Array;
}

/** Quantizes `v` in groups of `groupSize` entries; writes the dequantized values into `out`. */
export function quantizeStats(
  v: Float32Array,
  opts: { bits: number; groupSize: number; sym: boolean },
  out: Float32Array,
): QuantizedStats {
  const n = v.length, gs = opts.groupSize, ng = Math.ceil(n / gs), maxq = 2 ** opts.bits - 1;
  const codes = new Uint8Array(n), scale = new Float32Array(ng), zero = new Float32Array(ng);
  for (let g = 0; g < ng; g++) {
    const a = g * gs, b = Math.min(a + gs, n);
    const [s, z] = fitMinMax(v.subarray(a, b), { maxq, sym: opts.sym, roundZero: false });
    scale[g] = s;
    zero[g] = z;
    for (let k = a; k < b; k++) {
      codes[k] = codeOf(v[k], s, z, maxq);
      out[k] = decode(codes[k], s, z);
    }
  }
  return { ...opts, codes, scale, zero };
}

/** The dequantized statistics of {@linkcode QuantizedStats}. */
export function dequantizeStats(q: QuantizedStats): Float32Array {
  const out = new Float32Array(q.codes.length);
  for (let k = 0; k < out.length; k++) {
    const g = Math.floor(k / q.groupSize);
    out[k] = decode(q.codes[k], q.scale[g], q.zero[g]);
  }
  return out;
}

/** Options of the bilevel grid (SpQR `Quantizer.configure`). */
export interface BilevelOptions {
  /** Bits per weight code (b_w). */
  bits: number;
  /** Symmetric first-level grid. */
  sym: boolean;
  /** Round the first-level zero (reference `round_zero`). */
  roundZero: boolean;
  /** One grid per row (true) or one for the whole slice (false). */
  perChannel: boolean;
  /** Bits of the quantized scales (b_s); undefined = 16-bit scales. */
  qqScaleBits?: number;
  /** Bits of the quantized zeros (b_z); undefined = 16-bit zeros. */
  qqZeroBits?: number;
  /** Rows per second-level group (β2). */
  qqGroupSize: number;
  /** Symmetric second-level grid for zeros (`qq_zero_sym`). */
  qqZeroSym: boolean;
}

/** One fitted column group: per-row scale and zero (already second-level quantized). */
export interface BilevelGroup {
  /** Scale per row. */
  scale: Float32Array;
  /** Zero per row. */
  zero: Float32Array;
  /** Second-level quantized scales, when `qqScaleBits` is set. */
  qqScale?: QuantizedStats;
  /** Second-level quantized zeros, when `qqZeroBits` is set (and applies). */
  qqZero?: QuantizedStats;
}

/**
 * Fits the grid of a `[rows, len]` slice given row by row by `row(r)`: per-row min-max (or one
 * for the slice), then the scales and zeros quantized over `qqGroupSize` rows as
 * `find_params` does (zeros only when `!roundZero || qqZeroBits < bits`, as the reference).
 */
export function fitBilevel(
  rows: number,
  row: (r: number) => ArrayLike<number>,
  o: BilevelOptions,
): BilevelGroup {
  const maxq = 2 ** o.bits - 1;
  const scale = new Float32Array(rows), zero = new Float32Array(rows);
  if (o.perChannel) {
    for (let r = 0; r < rows; r++) {
      const [s, z] = fitMinMax(row(r), { maxq, sym: o.sym, roundZero: o.roundZero });
      scale[r] = s;
      zero[r] = z;
    }
  } else {
    const all: number[] = [];
    for (let r = 0; r < rows; r++) for (const v of Array.from(row(r))) all.push(v);
    const [s, z] = fitMinMax(all, { maxq, sym: o.sym, roundZero: o.roundZero });
    scale.fill(s);
    zero.fill(z);
  }
  const out: BilevelGroup = { scale, zero };
  if (o.qqScaleBits !== undefined) {
    out.qqScale = quantizeStats(
      scale.slice(),
      { bits: o.qqScaleBits, groupSize: o.qqGroupSize, sym: false },
      scale,
    );
  }
  if (o.qqZeroBits !== undefined && (!o.roundZero || o.qqZeroBits < o.bits)) {
    out.qqZero = quantizeStats(
      zero.slice(),
      { bits: o.qqZeroBits, groupSize: o.qqGroupSize, sym: o.qqZeroSym },
      zero,
    );
  }
  return out;
}

/** Hooks of {@linkcode outlierColumns}. */
export interface ColumnHooks {
  /** Fits the grid of processed columns `[c0, c1)` from the current weight `Wc`. */
  group(c0: number, c1: number, Wc: Float32Array): BilevelGroup;
  /**
   * Whether weight `(r, c)` is kept out of the grid: returns the value stored for it, or
   * undefined. `err = (w − q)/Hinv_cc` is its error on the grid.
   */
  outlier(r: number, c: number, w: number, err: number): number | undefined;
}

/** Result of {@linkcode outlierColumns}, all in processed column order. */
export interface ColumnsResult {
  /** Codes `[rows, cols]` (an outlier's code is the code of 0, as the reference). */
  codes: Uint8Array;
  /** Reconstructed weight `[rows, cols]`. */
  Q: Float32Array;
  /** Outlier mask `[rows, cols]`. */
  outlier: Uint8Array;
  /** The fitted groups, in order. */
  groups: BilevelGroup[];
  /** `Σ ((w − q)/Hinv_cc)²` (SpQR's `quantization_errors` squared and summed). */
  loss: number;
}

/**
 * The column loop of `spqr_engine.SPQRUtil.quantize` on a weight already in processed order
 * (`Wc`, modified in place). `Hinv` is the float32 upper Cholesky factor of `H⁻¹`, or undefined
 * for round-to-nearest (no error propagation, `Hinv_cc = 1`). Per block of `blocksize`
 * columns, per column: fit the group at `c % groupSize == 0`; round every row; ask the hook
 * whether it is an outlier (then its code is the code of 0 and its value the hook's); error
 * `(w − q)/Hinv_cc`; update `Wc[:, c+1:blockEnd]`; after the block, `Wc[:, blockEnd:] −= Err ·
 * Hinv[block, blockEnd:]` through `backend.matmul`.
 */
export async function outlierColumns(
  Wc: Float32Array,
  Hinv: Float32Array | undefined,
  o: {
    rows: number;
    cols: number;
    bits: number;
    groupSize: number;
    blocksize: number;
    backend: Backend;
    hooks: ColumnHooks;
  },
): Promise<ColumnsResult> {
  const { rows, cols, hooks } = o;
  const maxq = 2 ** o.bits - 1;
  const codes = new Uint8Array(rows * cols), Q = new Float32Array(rows * cols);
  const outlier = new Uint8Array(rows * cols);
  const groups: BilevelGroup[] = [];
  let cur: BilevelGroup | undefined;
  let loss = 0;
  for (let i1 = 0; i1 < cols; i1 += o.blocksize) {
    const i2 = Math.min(i1 + o.blocksize, cols), count = i2 - i1;
    const Err = new Float32Array(rows * count);
    for (let c = i1; c < i2; c++) {
      if (c % o.groupSize === 0) {
        cur = hooks.group(c, Math.min(c + o.groupSize, cols), Wc);
        groups.push(cur);
      }
      const g = cur!;
      const d = Hinv ? Hinv[c * cols + c] : 1;
      const hr = c * cols;
      for (let r = 0; r < rows; r++) {
        const i = r * cols + c;
        const w = Wc[i], s = g.scale[r], z = g.zero[r];
        let code = codeOf(w, s, z, maxq);
        let q = decode(code, s, z);
        let err = f(f(w - q) / d);
        const keep = hooks.outlier(r, c, w, err);
        if (keep !== undefined) {
          code = codeOf(0, s, z, maxq);
          q = keep;
          err = f(f(w - q) / d);
          outlier[i] = 1;
        }
        codes[i] = code;
        Q[i] = q;
        Wc[i] = q;
        Err[r * count + c - i1] = err;
        loss += err * err;
        if (Hinv && err !== 0) {
          for (let j = c + 1; j < i2; j++) Wc[r * cols + j] -= err * Hinv[hr + j];
        }
      }
    }
    if (Hinv && i2 < cols) {
      const rest = cols - i2;
      const B = new Float32Array(count * rest);
      for (let i = 0; i < count; i++) {
        B.set(Hinv.subarray((i1 + i) * cols + i2, (i1 + i + 1) * cols), i * rest);
      }
      const R = (await o.backend.matmul(
        { shape: [rows, count], data: Err },
        { shape: [count, rest], data: B },
      )).data;
      for (let r = 0; r < rows; r++) {
        const wr = r * cols + i2, rr = r * rest;
        for (let j = 0; j < rest; j++) Wc[wr + j] -= R[rr + j];
      }
    }
  }
  return { codes, Q, outlier, groups, loss };
}
