/**
 * Uniform quantization grids shared by every weight quantizer: asymmetric and symmetric grids of
 * 1–16 bits (codes above 8 bits are `Uint16Array`s, packed by `src/bitstream.ts`), per-tensor / per-output-channel / group-wise parameters, min-max or MSE clipping
 * search, code packing, dequantization and bits-per-weight accounting.
 *
 * Semantics follow IST-DASLab/gptq `quant.py` (`Quantizer.find_params`, `quantize`) in float32:
 * every intermediate is rounded to float32 (`Math.fround`) where torch would hold a float32
 * tensor, and rounding is half-to-even like `torch.round`. `Wq = scale · (code − zero)`.
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import { OptionError, QuantlabError } from "../../errors.ts";
import { packBits, unpackBits } from "../../bitstream.ts";
import type { QuantFormat, QuantMeta } from "./types.ts";
import { declareGridMethod } from "../../backend/backend.ts";

/** The MSE clipping search of the reference `Quantizer(mse=True)`. */
export interface MseOptions {
  /** Error exponent `Σ |q − x|^norm` (reference `norm`, default 2.4). */
  norm?: number;
  /** Shrink steps per unit (reference `grid`, default 100): candidates `p = 1 − i/grid`. */
  grid?: number;
  /** Largest shrink tried (reference `maxshrink`, default 0.8): `i < maxshrink · grid`. */
  maxshrink?: number;
}

/** Defaults of the MSE search, as the reference `Quantizer.configure`. */
export const DEFAULT_MSE: Required<MseOptions> = { norm: 2.4, grid: 100, maxshrink: 0.8 };

/** Options of a uniform grid. */
export interface GridOptions {
  /** Bits per code, 1–8 (methods restrict this further). `maxq = 2^bits − 1`. */
  bits: number;
  /** Symmetric grid (reference `sym`, default false): zero fixed at `(maxq + 1) / 2`. */
  sym?: boolean;
  /** MSE clipping search (reference `mse`/`--mse`); `true` uses {@linkcode DEFAULT_MSE}. */
  mse?: boolean | MseOptions;
}

/** Options of {@linkcode findParams}. */
export interface FindParamsOptions extends GridOptions {
  /** First column of the slice the grid is fitted to (default 0). */
  colStart?: number;
  /** End column (exclusive) of the slice (default: all columns). */
  colEnd?: number;
  /** One grid per row (default true, reference `perchannel`); false = one grid for the slice. */
  perChannel?: boolean;
}

/** Grid parameters for the rows of a matrix: `scale[r]`, `zero[r]`, and `maxq`. */
export interface GridParams {
  /** Scale per row (float32). */
  scale: Float32Array;
  /** Integer-valued zero point per row. */
  zero: Float32Array;
  /** Largest code, `2^bits − 1`. */
  maxq: number;
}

/** One scalar grid, the argument of {@linkcode quantize} and {@linkcode quantizeCode}. */
export interface ScalarGrid {
  /** Step size. */
  scale: number;
  /** Zero point (integer). */
  zero: number;
  /** Largest code. */
  maxq: number;
}

/** `2^bits − 1`. */
export function maxqOf(bits: number): number {
  return 2 ** bits - 1;
}

/**
 * Throws {@linkcode OptionError} unless `bits` is an integer in `[min, max]` (default 2–8; grids
 * themselves accept 1–8 where a method asks for it).
 */
export function validateBits(
  bits: unknown,
  options: { min?: number; max?: number; option?: string } = {},
): number {
  const min = options.min ?? 2, max = options.max ?? 8;
  if (typeof bits !== "number" || !Number.isInteger(bits) || bits < min || bits > max) {
    throw new OptionError(
      options.option ?? "bits",
      `must be an integer in ${min}–${max}, got ${bits}`,
    );
  }
  return bits;
}

/** `groupSize` with its default -1 (per output channel); OptionError unless -1 or an integer ≥ 1. */
export function resolveGroupSize(groupSize: number | undefined): number {
  const g = groupSize ?? -1;
  if (!(g === -1 || (Number.isInteger(g) && g > 0))) {
    throw new OptionError("groupSize", `must be -1 or a positive integer, got ${g}`);
  }
  return g;
}

/** GPTQ-style dampening `percdamp` (default 0.01); OptionError unless finite and > 0. */
export function resolvePercdamp(percdamp: number | undefined): number {
  const d = percdamp ?? 0.01;
  if (!(typeof d === "number" && Number.isFinite(d) && d > 0)) {
    throw new OptionError("percdamp", `must be a finite number > 0, got ${d}`);
  }
  return d;
}

/** Lazy-batch `blocksize` (default 128); OptionError unless an integer ≥ 1. */
export function resolveBlocksize(blocksize: number | undefined): number {
  const b = blocksize ?? 128;
  if (!(Number.isInteger(b) && b >= 1)) {
    throw new OptionError("blocksize", `must be an integer ≥ 1, got ${b}`);
  }
  return b;
}

/** Resolves the `mse` option to full search settings, or undefined for min-max. */
export function resolveMse(
  mse: boolean | MseOptions | undefined,
): Required<MseOptions> | undefined {
  if (!mse) return undefined;
  const o = { ...DEFAULT_MSE, ...(mse === true ? {} : mse) };
  if (!(o.grid >= 1) || !(o.maxshrink > 0 && o.maxshrink <= 1) || !(o.norm > 0)) {
    throw new OptionError(
      "mse",
      `needs grid ≥ 1, 0 < maxshrink ≤ 1, norm > 0; got ${JSON.stringify(o)}`,
    );
  }
  return o;
}

/** Round half to even, like `torch.round`. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x); // half rounds up (toward +∞)
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The code `clamp(round(x/scale) + zero, 0, maxq)` in float32 arithmetic; NaN maps to 0. */
function codeOf(x: number, scale: number, zero: number, maxq: number): number {
  const q = roundHalfEven(Math.fround(x / scale)) + zero;
  return q >= 0 ? (q <= maxq ? q : maxq) : 0;
}

/** The integer code of `x` on a grid: `clamp(round(x / scale) + zero, 0, maxq)`. */
export function quantizeCode(x: number, grid: ScalarGrid): number {
  return codeOf(x, grid.scale, grid.zero, grid.maxq);
}

/**
 * The reference `quantize(x, scale, zero, maxq) = scale · (clamp(round(x/scale) + zero, 0, maxq)
 * − zero)`, in float32 with half-to-even rounding.
 */
export function quantize(x: number, grid: ScalarGrid): number {
  return Math.fround(grid.scale * (codeOf(x, grid.scale, grid.zero, grid.maxq) - grid.zero));
}

/** Fits scale and zero to the values `data[start + k]`, `k < len`, for each start. */
function fitGrid(
  data: Float32Array,
  starts: number[],
  len: number,
  maxq: number,
  sym: boolean,
  mse: Required<MseOptions> | undefined,
): [number, number] {
  let xmin = 0, xmax = 0; // torch.minimum(x.min, 0), torch.maximum(x.max, 0)
  for (const s of starts) {
    for (let k = 0; k < len; k++) {
      const v = data[s + k];
      if (v < xmin) xmin = v;
      if (v > xmax) xmax = v;
    }
  }
  if (sym) {
    xmax = Math.max(Math.abs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin === 0 && xmax === 0) {
    xmin = -1;
    xmax = 1;
  }
  let scale = Math.fround(Math.fround(xmax - xmin) / maxq);
  let zero = sym ? (maxq + 1) / 2 : roundHalfEven(Math.fround(-xmin / scale));
  if (mse) {
    let best = Infinity;
    const steps = Math.floor(mse.maxshrink * mse.grid);
    for (let i = 0; i < steps; i++) {
      const p = Math.fround(1 - i / mse.grid);
      const xmin1 = Math.fround(p * xmin), xmax1 = Math.fround(p * xmax);
      const scale1 = Math.fround(Math.fround(xmax1 - xmin1) / maxq);
      const zero1 = sym ? zero : roundHalfEven(Math.fround(-xmin1 / scale1));
      let err = 0;
      for (const s of starts) {
        for (let k = 0; k < len; k++) {
          const x = data[s + k];
          const q = Math.fround(scale1 * (codeOf(x, scale1, zero1, maxq) - zero1));
          err += Math.abs(q - x) ** mse.norm;
        }
      }
      if (err < best) {
        best = err;
        scale = scale1;
        zero = zero1;
      }
    }
  }
  return [scale, zero];
}

/**
 * {@linkcode findGridParams} for grids of 1–8 bits (the reference's `Quantizer`, codes in a
 * `Uint8Array`); OptionError above 8 bits.
 */
export function findParams(W: Tensor, options: FindParamsOptions): GridParams {
  validateBits(options.bits, { min: 1 });
  return findGridParams(W, options);
}

/**
 * Grid parameters (any width 1–16 bits: the one min-max / MSE fit of every method) of the columns `[colStart, colEnd)` of a 2-D weight, per row (default) or one
 * for the whole slice (repeated per row, as the reference does). Reference `find_params(x,
 * weight=True)`: the range always includes 0; symmetric grids use `±max|x|`; an all-zero range
 * becomes `[−1, 1]`; the MSE search shrinks the range by `p = 1 − i/grid` and keeps the first
 * best `Σ |q − x|^norm`.
 */
export function findGridParams(W: Tensor, options: FindParamsOptions): GridParams {
  if (W.shape.length !== 2) {
    throw new QuantlabError(`findParams: expected a 2-D weight, got shape [${W.shape}]`);
  }
  const [rows, cols] = W.shape;
  const c0 = options.colStart ?? 0, c1 = options.colEnd ?? cols;
  if (!(0 <= c0 && c0 < c1 && c1 <= cols)) {
    throw new QuantlabError(`findParams: bad column range [${c0}, ${c1}) of ${cols} columns`);
  }
  const bits = validateBits(options.bits, { min: 1, max: 16 });
  const maxq = maxqOf(bits);
  const sym = options.sym ?? false;
  const mse = resolveMse(options.mse);
  const scale = new Float32Array(rows), zero = new Float32Array(rows);
  if (options.perChannel ?? true) {
    for (let r = 0; r < rows; r++) {
      const [s, z] = fitGrid(W.data, [r * cols + c0], c1 - c0, maxq, sym, mse);
      scale[r] = s;
      zero[r] = z;
    }
  } else {
    const starts = Array.from({ length: rows }, (_, r) => r * cols + c0);
    const [s, z] = fitGrid(W.data, starts, c1 - c0, maxq, sym, mse);
    scale.fill(s);
    zero.fill(z);
  }
  return { scale, zero, maxq };
}

/** Methods whose codes live in a transformed basis, so the plain grid decode does not apply. */
const TRANSFORMED_DOMAIN = new Set(["quip", "framequant"]);
/** Methods with their own format (outliers, second-level stats, storage offsets, bit planes). */
const OWN_FORMAT = new Set(["spqr", "oa", "bcq"]);

/**
 * Rebuilds the dequantized weight of a grid `meta` (RTN, GPTQ, QuantEase's grid part):
 * `Wq[r, j] = fround(scale · (code − zero))` with the (row, group) parameters of column `j`.
 * A meta whose codes live in a rotated or frame basis (QuIP, FrameQuant) is refused with an
 * OptionError; `dequantizeMeta` (`dequantize.ts`) decodes every method.
 */
export function dequantize(meta: QuantMeta): Tensor {
  if (TRANSFORMED_DOMAIN.has(meta.method)) {
    throw new OptionError(
      "meta",
      `${meta.method} codes live in a transformed basis; use dequantizeMeta (src/quant/dequantize.ts)`,
    );
  }
  if (OWN_FORMAT.has(meta.method)) {
    throw new OptionError(
      "meta",
      `${meta.method} has its own format (outliers / second-level statistics / offsets / bit planes); use dequantizeMeta (src/quant/dequantize.ts)`,
    );
  }
  const [rows, cols] = meta.shape;
  const codes = meta.codes ?? unpackCodes(meta.packed!, { bits: meta.bits, count: rows * cols });
  if (codes.length !== rows * cols) {
    throw new QuantlabError(`dequantize: ${codes.length} codes for shape [${meta.shape}]`);
  }
  const ngroups = meta.scales.length / rows;
  const group = new Int32Array(cols);
  for (let j = 0; j < cols; j++) {
    group[j] = meta.gIdx ? meta.gIdx[j] : meta.groupSize > 0 ? Math.floor(j / meta.groupSize) : 0;
  }
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const pr = r * ngroups, wr = r * cols;
    for (let j = 0; j < cols; j++) {
      const g = pr + group[j];
      out[wr + j] = meta.scales[g] * (codes[wr + j] - meta.zeros[g]);
    }
  }
  return { shape: [rows, cols], data: out };
}

/**
 * Packs codes of `bits` (1–8) bits into 32-bit words as an LSB-first bitstream (`src/bitstream.ts`,
 * the library's one layout): code `k` occupies stream bits `[k·bits, (k+1)·bits)`, bit `b` of the
 * stream being bit `b % 32` of word `⌊b/32⌋`. For 2/4/8 bits this is `32/bits` codes per word,
 * lowest code in the lowest bits (GPTQ's `qweight`); for 3 bits, 32 codes fill 3 words with codes
 * 10 and 21 straddling word boundaries, exactly GPTQ's 3-bit layout. GPTQ packs along the input
 * dimension of the transposed weight; an exporter packs the transposed codes with this function.
 */
export function packCodes(codes: Uint8Array, bits: number): Uint32Array {
  validateBits(bits, { min: 1 });
  return packBits(codes, bits);
}

/** Inverse of {@linkcode packCodes}: the first `count` codes of `bits` bits. */
export function unpackCodes(
  packed: Uint32Array,
  options: { bits: number; count: number },
): Uint8Array {
  validateBits(options.bits, { min: 1 });
  return unpackBits(packed, { bits: options.bits, out: new Uint8Array(options.count) });
}

/** Storage assumptions of {@linkcode bitsPerWeight}. */
export interface BitsAccounting {
  /** Bits per stored scale (default 16, an fp16 scale). */
  scaleBits?: number;
  /** Bits per stored zero (default 16 for asymmetric grids, 0 for symmetric: a constant). */
  zeroBits?: number;
  /** Bits per `g_idx` entry when stored (act-order without static groups; default 32). */
  indexBits?: number;
}

/**
 * Storage bits per weight: `bits + (scaleBits + zeroBits) · (#parameter sets) / (rows·cols) +
 * indexBits · cols / (rows·cols)`, the last term only when `meta.gIdxStored` (GPTQ act-order
 * without static groups needs the `g_idx` vector; otherwise the group of column `j` is
 * `⌊j / groupSize⌋`). Per-tensor grids count one parameter set; per-channel one per row;
 * group-wise one per (row, group). Examples: 4-bit asym g128 → 4.25; 4-bit sym per-channel on
 * 4096 columns → 4 + 16/4096.
 */
export function bitsPerWeight(meta: QuantMeta, accounting: BitsAccounting = {}): number {
  const [rows, cols] = meta.shape;
  const scaleBits = accounting.scaleBits ?? 16;
  const zeroBits = accounting.zeroBits ?? (meta.sym ? 0 : 16);
  const indexBits = accounting.indexBits ?? 32;
  const n = rows * cols;
  const paramSets = meta.perTensor ? 1 : meta.scales.length;
  let bpw = meta.bits + ((scaleBits + zeroBits) * paramSets) / n;
  if (meta.gIdxStored) bpw += (indexBits * cols) / n;
  return bpw;
}

/**
 * The plain uniform-grid format: `Wq = fround(scale · (code − zero))` per (row, group), codes
 * packed by {@linkcode packCodes}, bits by {@linkcode bitsPerWeight}. Methods whose meta is just
 * a grid (RTN, GPTQ, GGUF imports) register it under their own name with {@linkcode gridFormat}.
 */
export function gridFormat(method: string): QuantFormat {
  declareGridMethod(method);
  return {
    method,
    dequantize,
    bitsPerWeight: (meta) => bitsPerWeight(meta),
    pack: packCodes,
    unpack: unpackCodes,
  };
}

/**
 * The one group-size rule of the grid methods: `groupSize` > 0 must divide a layer's `cols` input
 * columns unless `partialGroups` (a shorter last group; GPTQ's and RTN's reference codes allow it). Throws an
 * OptionError naming `groupSize` and the layer. Also the quantizers' static `checkColumns`.
 */
export function checkGroupColumns(
  cols: number,
  o: { groupSize: number; partialGroups?: boolean; layer?: string },
): void {
  const gs = o.groupSize;
  if (gs > 0 && cols % gs !== 0 && !o.partialGroups) {
    throw new OptionError(
      "groupSize",
      `${gs} does not divide the ${cols} input columns of ${
        o.layer ?? "the weight"
      } (pass partialGroups: true for a shorter last group)`,
    );
  }
}
