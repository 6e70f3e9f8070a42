/**
 * SpQR (Dettmers et al., 2023, "SpQR: A Sparse-Quantized Representation for Near-Lossless LLM
 * Weight Compression"; reference Vahe1994/SpQR `spqr_engine.py`, `quant_groups.py`): GPTQ over
 * small column groups (β1) whose per-row scales and zeros are themselves quantized (b_s, b_z bits
 * in groups of β2 rows with 16-bit second-level statistics), plus unstructured outliers kept in
 * 16 bits and stored as a sparse CSR list.
 *
 * Outliers, as the reference:
 * - before the pass, at each group start: the leave-one-out criterion
 *   (`get_leave_one_out_error`: how much the Hessian-weighted error of the row's group drops
 *   when one weight is left out of the min-max fit) marks likely outliers above the threshold;
 *   they are replaced by the row's mean of the others for fitting the group grid only
 *   (skipped with `simplifiedOutliers`);
 * - during the pass: a weight whose `((w − q)/Hinv_cc)²` exceeds the threshold is kept as is
 *   (its code is the code of 0) and its error is then 0.
 * The threshold is `outlierRelativeThreshold · mean_j(var_r(W[:, j]) / Hinv_jj²)` (unbiased
 * variance over rows, after permutation), the reference's `unstructured_outlier_threshold`.
 *
 * Deviations, measured or by construction: `Hinv` is computed in float64 (the reference float32)
 * as in `gptq.ts`; the act-order sort is stable (torch's `argsort` is not); a row count that is
 * not a multiple of β2 gets a shorter last second-level group (the reference's `reshape` fails);
 * a column count that is not a multiple of β1 gets a shorter last group, as the reference.
 * Outlier values are kept in float32 (the reference's fake-quantized weight), counted as 16-bit
 * value + 16-bit index in the bits.
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import { OptionError } from "../../errors.ts";
import { cpuBackend } from "../../backend/cpu.ts";
import { actOrderPermutation } from "../core/hessian.ts";
import type {
  LayerStats,
  QuantContext,
  QuantMeta,
  QuantResult,
  WeightQuantizer,
} from "../core/types.ts";
import type { QuantFormat } from "../core/types.ts";
import { checkLayerInputs } from "../core/inputs.ts";
import { resolveBlocksize, resolvePercdamp, validateBits } from "../core/grid.ts";
import {
  NotPositiveDefiniteError,
  onnxGemmF64,
  upperCholeskyOfInverse,
  upperCholeskyOfInverseBlocked,
} from "../core/linalg.ts";
import { NonFiniteError } from "../../errors.ts";
import {
  type BilevelGroup,
  type BilevelOptions,
  codeOf,
  decode,
  dequantizeStats,
  fitBilevel,
  fitMinMax,
  outlierColumns,
  type QuantizedStats,
} from "./_bilevel.ts";

/** Above this many columns `Hinv` uses the blocked float64 path (as `gptq.ts`). */
const BLOCKED_MIN = 384;

/** Options of {@linkcode spqr}, with the paper's symbols and the reference's flags. */
export interface SpqrOptions {
  /** b_w, bits per weight code, 1–8 (`--wbits`). */
  bits: number;
  /** β1, columns per group (`--groupsize`); default: the whole row (reference `None`). */
  groupSize?: number;
  /** b_s, bits of the quantized scales (`--qq_scale_bits`); default 16-bit scales (`None`). */
  qqScaleBits?: number;
  /** b_z, bits of the quantized zeros (`--qq_zero_bits`); default 16-bit zeros (`None`). */
  qqZeroBits?: number;
  /** β2, rows per second-level group (`--qq_groupsize`, default 16). */
  qqGroupSize?: number;
  /** Symmetric second-level grid for the zeros (`--qq_zero_sym`, default false). */
  qqZeroSym?: boolean;
  /** Round the first-level zero to an integer (`--round_zero`, default false). */
  roundZero?: boolean;
  /** Symmetric first-level grid (`--sym`, default false). */
  sym?: boolean;
  /** τ relative to the layer's mean error scale (`--outlier_threshold`, default ∞ = no outliers). */
  outlierRelativeThreshold?: number;
  /** Column order: "identity" (default) or "act_order" (`--permutation_order`). */
  permutationOrder?: "identity" | "act_order";
  /** Dampening, a fraction of mean |diag H| added to the diagonal (`--percdamp`, default 0.01). */
  percdamp?: number;
  /** Columns per lazy update block (`--blocksize`, default 128). */
  blocksize?: number;
  /** Skip the leave-one-out pre-pass (`--simplified_outliers`, default false). */
  simplifiedOutliers?: boolean;
}

type Resolved = Required<Omit<SpqrOptions, "groupSize" | "qqScaleBits" | "qqZeroBits">> & {
  groupSize?: number;
  qqScaleBits?: number;
  qqZeroBits?: number;
};

function resolve(o: SpqrOptions): Resolved {
  validateBits(o.bits, { min: 1, max: 8 });
  if (o.qqScaleBits !== undefined) validateBits(o.qqScaleBits, { min: 1, option: "qqScaleBits" });
  if (o.qqZeroBits !== undefined) validateBits(o.qqZeroBits, { min: 1, option: "qqZeroBits" });
  const gs = o.groupSize;
  if (gs !== undefined && gs !== -1 && !(Number.isInteger(gs) && gs >= 2)) {
    throw new OptionError("groupSize", `must be an integer ≥ 2 or -1 (whole row), got ${gs}`);
  }
  const qg = o.qqGroupSize ?? 16;
  if (!(Number.isInteger(qg) && qg >= 1)) {
    throw new OptionError("qqGroupSize", `must be an integer ≥ 1, got ${qg}`);
  }
  const thr = o.outlierRelativeThreshold ?? Infinity;
  if (!(typeof thr === "number" && thr > 0)) {
    throw new OptionError("outlierRelativeThreshold", `must be > 0 (Infinity = off), got ${thr}`);
  }
  const po = o.permutationOrder ?? "identity";
  if (po !== "identity" && po !== "act_order") {
    throw new OptionError("permutationOrder", `must be "identity" or "act_order", got ${po}`);
  }
  return {
    bits: o.bits,
    groupSize: gs === -1 ? undefined : gs,
    qqScaleBits: o.qqScaleBits,
    qqZeroBits: o.qqZeroBits,
    qqGroupSize: qg,
    qqZeroSym: o.qqZeroSym ?? false,
    roundZero: o.roundZero ?? false,
    sym: o.sym ?? false,
    outlierRelativeThreshold: thr,
    permutationOrder: po,
    percdamp: resolvePercdamp(o.percdamp),
    blocksize: resolveBlocksize(o.blocksize),
    simplifiedOutliers: o.simplifiedOutliers ?? false,
  };
}

/** Inputs of {@linkcode spqrAverageBits} (the paper's symbols). */
export interface SpqrBitsInput {
  /** b_w. */
  wbits: number;
  /** b_s (undefined = 16). */
  qqScaleBits?: number;
  /** b_z (undefined = 16). */
  qqZeroBits?: number;
  /** β1 (columns per group). */
  groupSize: number;
  /** β2 (rows per second-level group). */
  qqGroupSize: number;
  /** Whether zeros are rounded (reference `round_zero`). */
  roundZero?: boolean;
  /** r_o, the share of weights kept as outliers (0–1). */
  outlierShare: number;
}

/**
 * Average bits per weight as the reference's `get_average_number_of_bits` counts it (unrounded):
 * `b_w + (b_s + b_z)/β1 + 2·(16 + 16)/(β1·β2) + 32·r_o` (each outlier 16-bit value + 16-bit
 * index); with `roundZero`, `b_w + (b_s + b_w)/β1 + (16 + 16)/(β1·β2) + 32·r_o`. Unquantized
 * statistics count 16 bits. The seed's configurations: b_w 2, b_s = b_z = 3, β1 32, β2 16,
 * r_o 2.358% → 3.07; b_w 3, β1 16, r_o 1.138% → 3.99.
 */
export function spqrAverageBits(i: SpqrBitsInput): number {
  const bs = i.qqScaleBits ?? 16, bz = i.qqZeroBits ?? 16;
  const b1 = i.groupSize, b2 = i.qqGroupSize;
  const stats = i.roundZero
    ? (bs + i.wbits) / b1 + 32 / (b1 * b2)
    : (bs + bz) / b1 + (2 * 32) / (b1 * b2);
  return i.wbits + stats + 32 * i.outlierShare;
}

/**
 * `get_leave_one_out_error` for one row of a group: for each weight `k`, the baseline
 * Hessian-weighted error `Σ ((q − w)/d)²` of the min-max fit on all weights minus that of the fit
 * on all weights but `k` (over the others). Large = removing `k` helps the rest.
 */
export function leaveOneOutReduction(
  w: ArrayLike<number>,
  d: ArrayLike<number>,
  opts: { bits: number; sym: boolean },
): Float64Array {
  const n = w.length, maxq = 2 ** opts.bits - 1;
  const g = { maxq, sym: opts.sym, roundZero: false };
  const [s0, z0] = fitMinMax(w, g);
  let base = 0;
  for (let k = 0; k < n; k++) {
    const e = Math.fround(Math.fround(decode(codeOf(w[k], s0, z0, maxq), s0, z0) - w[k]) / d[k]);
    base += e * e;
  }
  const out = new Float64Array(n);
  const rest = new Float32Array(n - 1);
  for (let k = 0; k < n; k++) {
    for (let j = 0, m = 0; j < n; j++) if (j !== k) rest[m++] = w[j];
    const [s, z] = fitMinMax(rest, g);
    let err = 0;
    for (let j = 0; j < n; j++) {
      if (j === k) continue;
      const e = Math.fround(Math.fround(decode(codeOf(w[j], s, z, maxq), s, z) - w[j]) / d[j]);
      err += e * e;
    }
    out[k] = base - err;
  }
  return out;
}

/** The packed SpQR description (`meta.method === "spqr"`). */
export interface SpqrMeta extends QuantMeta {
  /** Dense codes, ORIGINAL column order. */
  codes: Uint8Array;
  /** Group (in processed order, β1 columns) of each original column. */
  gIdx: Int32Array;
  /** Whether zeros are rounded. */
  roundZero: boolean;
  /** Second-level scale codes per group (processed order), when b_s is set. */
  qqScale?: QuantizedStats[];
  /** Second-level zero codes per group, when b_z is set. */
  qqZero?: QuantizedStats[];
  /** CSR row pointers of the outliers (`rows + 1`). */
  outlierRowPtr: Int32Array;
  /** Original column of each outlier. */
  outlierCols: Int32Array;
  /** Outlier values (float32). */
  outlierValues: Float32Array;
  /** r_o, outliers / weights. */
  outlierShare: number;
  /** The absolute threshold used (`unstructured_outlier_threshold`). */
  outlierThreshold: number;
  /** β2. */
  qqGroupSize: number;
  /** b_s, b_z (undefined = 16-bit). */
  qqScaleBits?: number;
  /** b_z. */
  qqZeroBits?: number;
}

/**
 * Rebuilds the SpQR weight bit-exactly from its packed form: the group statistics from their
 * second-level codes (where quantized), `scale · (code − zero)` per weight, then the outliers.
 */
export function dequantizeSpqr(meta: QuantMeta): Tensor {
  const m = meta as SpqrMeta;
  const [rows, cols] = m.shape;
  const ngroups = m.scales.length / rows;
  const scales = m.scales.slice(), zeros = m.zeros.slice();
  for (let g = 0; g < ngroups; g++) {
    const qs = m.qqScale?.[g], qz = m.qqZero?.[g];
    const ds = qs ? dequantizeStats(qs) : undefined, dz = qz ? dequantizeStats(qz) : undefined;
    for (let r = 0; r < rows; r++) {
      if (ds) scales[r * ngroups + g] = ds[r];
      if (dz) zeros[r * ngroups + g] = dz[r];
    }
  }
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < cols; j++) {
      const g = r * ngroups + m.gIdx[j];
      out[r * cols + j] = decode(m.codes[r * cols + j], scales[g], zeros[g]);
    }
    for (let k = m.outlierRowPtr[r]; k < m.outlierRowPtr[r + 1]; k++) {
      out[r * cols + m.outlierCols[k]] = m.outlierValues[k];
    }
  }
  return { shape: [rows, cols], data: out };
}

/**
 * SpQR of one `[rows, cols]` weight given `stats.H`, following `SPQRUtil.quantize`:
 * permutation (identity / act-order by descending diag H); `H_ii += percdamp · mean|diag H|`;
 * dead inputs (`H_ii = 0`) get `H_ii = 1` and zero weight columns; `Hinv = chol(H⁻¹)` upper;
 * then the column loop of `_bilevel.ts` with the two outlier passes described in the module doc.
 * `loss` is `Σ ((w − q)/Hinv_cc)² / 2` (GPTQ's convention); `meta.timings.seconds` the wall time.
 */
export async function spqrQuantize(
  W: Tensor,
  stats: LayerStats,
  options: SpqrOptions & QuantContext,
): Promise<QuantResult> {
  const t0 = performance.now();
  const o = resolve(options);
  const layer = options.layer ?? "weight";
  const backend = options.backend ?? cpuBackend;
  const { rows, cols, H: H0 } = checkLayerInputs("spqr", W, stats, { layer });
  const gs = o.groupSize ?? cols;
  const bil: BilevelOptions = {
    bits: o.bits,
    sym: o.sym,
    roundZero: o.roundZero,
    perChannel: true,
    qqScaleBits: o.qqScaleBits,
    qqZeroBits: o.qqZeroBits,
    qqGroupSize: o.qqGroupSize,
    qqZeroSym: o.qqZeroSym,
  };
  const diag0 = new Float64Array(cols);
  for (let i = 0; i < cols; i++) diag0[i] = H0[i * cols + i];
  const perm = o.permutationOrder === "act_order"
    ? actOrderPermutation(diag0)
    : Int32Array.from({ length: cols }, (_, i) => i);
  const Wc = new Float32Array(rows * cols);
  const H = new Float64Array(cols * cols);
  let mean = 0;
  for (let i = 0; i < cols; i++) {
    const pi = perm[i];
    mean += Math.abs(diag0[pi]);
    for (let r = 0; r < rows; r++) Wc[r * cols + i] = diag0[pi] === 0 ? 0 : W.data[r * cols + pi];
    for (let j = 0; j < cols; j++) H[i * cols + j] = H0[pi * cols + perm[j]];
  }
  const damp = (o.percdamp * mean) / cols;
  for (let i = 0; i < cols; i++) {
    H[i * cols + i] = diag0[perm[i]] === 0 ? 1 : H[i * cols + i] + damp;
  }
  let Hinv64: Float64Array;
  try {
    Hinv64 = cols > BLOCKED_MIN
      ? await upperCholeskyOfInverseBlocked(H, cols, { gemm: await onnxGemmF64() })
      : upperCholeskyOfInverse(H, cols);
  } catch (e) {
    if (e instanceof NotPositiveDefiniteError) {
      throw new NonFiniteError(
        `spqr: ${layer}: the damped Hessian is not positive definite (${e.message}); increase percdamp (now ${o.percdamp})`,
        { cause: e },
      );
    }
    throw e;
  }
  const Hinv = Float32Array.from(Hinv64);
  const dInv = new Float32Array(cols);
  for (let i = 0; i < cols; i++) dInv[i] = Hinv[i * cols + i];
  // unstructured_outlier_threshold = τ · mean_j(var_r W[:, j] / Hinv_jj²)
  let threshold = Infinity;
  if (Number.isFinite(o.outlierRelativeThreshold)) {
    let acc = 0;
    for (let j = 0; j < cols; j++) {
      let s = 0, s2 = 0;
      for (let r = 0; r < rows; r++) s += Wc[r * cols + j];
      const mu = s / rows;
      for (let r = 0; r < rows; r++) s2 += (Wc[r * cols + j] - mu) ** 2;
      acc += s2 / Math.max(rows - 1, 1) / (dInv[j] * dInv[j]);
    }
    threshold = o.outlierRelativeThreshold * (acc / cols);
  }
  const detect = Number.isFinite(threshold);
  const res = await outlierColumns(Wc, Hinv, {
    rows,
    cols,
    bits: o.bits,
    groupSize: gs,
    blocksize: o.blocksize,
    backend,
    hooks: {
      group(c0, c1, cur): BilevelGroup {
        const len = c1 - c0;
        if (!detect || o.simplifiedOutliers) {
          return fitBilevel(rows, (r) => cur.subarray(r * cols + c0, r * cols + c1), bil);
        }
        const d = dInv.subarray(c0, c1);
        const tmp = new Float32Array(len);
        return fitBilevel(rows, (r) => {
          const w = cur.subarray(r * cols + c0, r * cols + c1);
          const red = leaveOneOutReduction(w, d, { bits: o.bits, sym: o.sym });
          let s = 0, n = 0;
          for (let k = 0; k < len; k++) {
            if (!(red[k] > threshold)) {
              s += w[k];
              n++;
            }
          }
          const mu = Math.fround(s / Math.max(n, 1));
          for (let k = 0; k < len; k++) tmp[k] = red[k] > threshold ? mu : w[k];
          return tmp;
        }, bil);
      },
      outlier: (_r, _c, w, err) => (detect && err * err > threshold ? w : undefined),
    },
  });
  // Back to the original column order; CSR outliers.
  const ngroups = Math.ceil(cols / gs);
  const codes = new Uint8Array(rows * cols), Q = new Float32Array(rows * cols);
  const gIdx = new Int32Array(cols);
  for (let c = 0; c < cols; c++) gIdx[perm[c]] = Math.floor(c / gs);
  const rowPtr = new Int32Array(rows + 1);
  const oc: number[] = [], ov: number[] = [];
  for (let r = 0; r < rows; r++) {
    const ent: [number, number][] = [];
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c, j = r * cols + perm[c];
      codes[j] = res.codes[i];
      Q[j] = res.Q[i];
      if (res.outlier[i]) ent.push([perm[c], res.Q[i]]);
    }
    ent.sort((a, b) => a[0] - b[0]);
    for (const [c, v] of ent) {
      oc.push(c);
      ov.push(v);
    }
    rowPtr[r + 1] = oc.length;
  }
  const scales = new Float32Array(rows * ngroups), zeros = new Float32Array(rows * ngroups);
  res.groups.forEach((g, k) => {
    for (let r = 0; r < rows; r++) {
      scales[r * ngroups + k] = g.scale[r];
      zeros[r * ngroups + k] = g.zero[r];
    }
  });
  const outlierShare = oc.length / (rows * cols);
  const meta: SpqrMeta = {
    method: "spqr",
    bits: o.bits,
    groupSize: gs,
    sym: o.sym,
    shape: [rows, cols],
    codes,
    scales,
    zeros,
    gIdx,
    perm: o.permutationOrder === "act_order" ? perm : undefined,
    roundZero: o.roundZero,
    qqScale: o.qqScaleBits !== undefined ? res.groups.map((g) => g.qqScale!) : undefined,
    qqZero: res.groups[0]?.qqZero ? res.groups.map((g) => g.qqZero!) : undefined,
    qqScaleBits: o.qqScaleBits,
    qqZeroBits: res.groups[0]?.qqZero ? o.qqZeroBits : undefined,
    qqGroupSize: o.qqGroupSize,
    outlierRowPtr: rowPtr,
    outlierCols: Int32Array.from(oc),
    outlierValues: Float32Array.from(ov),
    outlierShare,
    outlierThreshold: threshold,
    timings: { seconds: (performance.now() - t0) / 1000 },
  };
  const bitsPerWeight = spqrAverageBits({
    wbits: o.bits,
    qqScaleBits: o.qqScaleBits,
    qqZeroBits: o.qqZeroBits,
    groupSize: gs,
    qqGroupSize: o.qqGroupSize,
    roundZero: o.roundZero,
    outlierShare,
  });
  return { Wq: { shape: [rows, cols], data: Q }, meta, bitsPerWeight, loss: res.loss / 2 };
}

/**
 * The SpQR weight quantizer (needs `stats.H`). Options ↔ paper ↔ reference flag: `bits` b_w
 * `--wbits`; `groupSize` β1 `--groupsize`; `qqScaleBits` b_s `--qq_scale_bits`; `qqZeroBits` b_z
 * `--qq_zero_bits`; `qqGroupSize` β2 `--qq_groupsize`; `outlierRelativeThreshold` τ
 * `--outlier_threshold`; `permutationOrder` `--permutation_order`; `percdamp` `--percdamp`;
 * `blocksize` `--blocksize`; `simplifiedOutliers` `--simplified_outliers`; `roundZero`
 * `--round_zero`; `qqZeroSym` `--qq_zero_sym`; `sym` `--sym`.
 *
 * @example
 * ```ts
 * const q = spqr({ bits: 3, groupSize: 16, qqScaleBits: 3, qqZeroBits: 3, outlierRelativeThreshold: 0.2 });
 * const { meta, bitsPerWeight } = await q.quantizeWeight(W, { H, nsamples: 128 });
 * ```
 */
export function spqr(options: SpqrOptions): WeightQuantizer {
  const o = resolve(options);
  return {
    name: "spqr",
    needsHessian: true,
    options: { ...o },
    quantizeWeight: (W, stats, ctx) => spqrQuantize(W, stats, { ...o, ...ctx }),
  };
}

/** SpQR's storage format: bilevel grid statistics plus CSR outliers. */
export const spqrFormat: QuantFormat = {
  method: "spqr",
  dequantize: dequantizeSpqr,
  bitsPerWeight: (meta) => {
    const m = meta as SpqrMeta;
    return spqrAverageBits({
      wbits: m.bits,
      qqScaleBits: m.qqScaleBits,
      qqZeroBits: m.qqZeroBits,
      groupSize: m.groupSize,
      qqGroupSize: m.qqGroupSize,
      roundZero: m.roundZero,
      outlierShare: m.outlierShare,
    });
  },
};
