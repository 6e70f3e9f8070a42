/**
 * OA, outlier-aware INT4 for compute-in-memory hardware (seed 001, "The Outlier-Aware
 * Quantization Algorithm for LLM"): weight-only GPTQ (or round-to-nearest) on SpQR's bilevel grid
 * (`qq_*` second-level statistics), where in each block of `block_size` columns at most one weight
 * per row is kept as a BF16 outlier (16 bits, taking the place of four INT4 codes), and an
 * optional per-channel offset is chosen so the stored codes hold as few 1 bits as possible.
 *
 * The seed publishes options and tables but not the algorithm's code in our references, so these
 * semantics are this module's reading of its README, each stated where it applies:
 * - `blockSize` is the group of columns that shares one grid (the README's "number of weight
 *   columns quantized together") and the outlier block; without it the grid spans the row and no
 *   outliers are allowed;
 * - the outlier of a (row, block) is chosen when the block's grid is fitted, as the weight with
 *   the largest GPTQ saliency `((w − q(w))/Hinv_jj)²` on the weight as updated so far; the grid is
 *   then refitted without it (the row's mean stands in for it, as SpQR's pre-pass does) and the
 *   column pass keeps `bf16(w)` for it, propagating its (small) error like any other;
 * - the zero is not rounded before its second-level quantization (SpQR `round_zero=False`);
 * - the offset is storage-only: a symmetric code `c` is stored as the `wbits`-bit two's complement
 *   of `c − zero − offset` (mod 2^wbits), so the decoder adds the offset back and the dequantized
 *   weight is unchanged bit for bit. The per-row offset minimises the 1 bits over the row's
 *   non-outlier codes (ties: the smallest offset).
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import { OptionError, QuantlabError } from "../../errors.ts";
import { cpuBackend } from "../../backend/cpu.ts";
import type {
  LayerStats,
  QuantContext,
  QuantMeta,
  QuantResult,
  WeightQuantizer,
} from "../core/types.ts";
import type { QuantFormat } from "../core/types.ts";
import { checkLayerInputs } from "../core/inputs.ts";
import { resolvePercdamp, validateBits } from "../core/grid.ts";
import { NonFiniteError } from "../../errors.ts";
import {
  NotPositiveDefiniteError,
  onnxGemmF64,
  upperCholeskyOfInverse,
  upperCholeskyOfInverseBlocked,
} from "../core/linalg.ts";
import {
  type BilevelGroup,
  type BilevelOptions,
  codeOf,
  decode,
  dequantizeStats,
  fitBilevel,
  outlierColumns,
  type QuantizedStats,
} from "./_bilevel.ts";

/** Options of {@linkcode oa}, named after the seed's `main.py` flags. */
export interface OaOptions {
  /** `--wbits` (default 16 = BF16 base model, i.e. `baseline`); 2–8 quantizes. */
  wbits?: number;
  /** `--sym`: symmetric grid, codes read as signed `[−2^(b−1), 2^(b−1) − 1]` (default false). */
  sym?: boolean;
  /** `--per_out_dim`: one grid per output channel (default false: one per block for all rows). */
  perOutDim?: boolean;
  /** `--block_size`: columns sharing a grid; at most one outlier per row per block (default none). */
  blockSize?: number;
  /** `--outlier_mode`: keep one BF16 outlier per row per block (needs `blockSize`). */
  outlierMode?: boolean;
  /** `--offset_mode`: per-channel storage offset minimising the 1 bits (symmetric only). */
  offsetMode?: boolean;
  /** `--qq_scale_bits`: bits of the second-level quantized scales (default 16-bit scales). */
  qqScaleBits?: number;
  /** `--qq_zero_bits`: bits of the second-level quantized zeros (default 16-bit zeros). */
  qqZeroBits?: number;
  /** `--qq_zero_sym`: symmetric second-level grid for zeros (default false). */
  qqZeroSym?: boolean;
  /** `--qq_group_size`: rows per second-level group (default 16). */
  qqGroupSize?: number;
  /** `--nearest`: round to nearest instead of the GPTQ update (no Hessian needed). */
  nearest?: boolean;
  /** `--percdamp`: dampening fraction of the mean Hessian diagonal (default 0.01). */
  percdamp?: number;
  /**
   * `--true_sequential`: a pipeline-level switch (quantize q/k/v, o, up/gate, down in turn);
   * recorded here, applied by `quantize(..., { trueSequential })` (default true there).
   */
  trueSequential?: boolean;
  /** `--baseline`: BF16 emulation, round every weight to bfloat16 and nothing else. */
  baseline?: boolean;
}

type Resolved = Required<Omit<OaOptions, "blockSize" | "qqScaleBits" | "qqZeroBits">> & {
  blockSize?: number;
  qqScaleBits?: number;
  qqZeroBits?: number;
};

function resolve(o: OaOptions): Resolved {
  const wbits = o.wbits ?? 16;
  const baseline = (o.baseline ?? false) || wbits === 16;
  if (!baseline) validateBits(wbits, { min: 2, max: 8, option: "wbits" });
  const bs = o.blockSize;
  if (bs !== undefined && !(Number.isInteger(bs) && bs >= 2)) {
    throw new OptionError("blockSize", `must be an integer ≥ 2, got ${bs}`);
  }
  const sym = o.sym ?? false;
  if (o.offsetMode && !sym) {
    throw new OptionError(
      "offsetMode",
      "the per-channel offset is defined for symmetric quantization only (set sym: true, as the seed's --offset_mode requires --sym)",
    );
  }
  if (o.outlierMode && bs === undefined) {
    throw new OptionError("outlierMode", "needs blockSize (one outlier per row per block)");
  }
  if (baseline && (o.outlierMode || o.offsetMode)) {
    throw new OptionError(
      o.outlierMode ? "outlierMode" : "offsetMode",
      "has no meaning with baseline (BF16 only, wbits 16)",
    );
  }
  if (o.qqScaleBits !== undefined) validateBits(o.qqScaleBits, { min: 1, option: "qqScaleBits" });
  if (o.qqZeroBits !== undefined) validateBits(o.qqZeroBits, { min: 1, option: "qqZeroBits" });
  const qg = o.qqGroupSize ?? 16;
  if (!(Number.isInteger(qg) && qg >= 1)) {
    throw new OptionError("qqGroupSize", `must be an integer ≥ 1, got ${qg}`);
  }
  return {
    wbits,
    sym,
    perOutDim: o.perOutDim ?? false,
    blockSize: bs,
    outlierMode: o.outlierMode ?? false,
    offsetMode: o.offsetMode ?? false,
    qqScaleBits: o.qqScaleBits,
    qqZeroBits: o.qqZeroBits,
    qqZeroSym: o.qqZeroSym ?? false,
    qqGroupSize: qg,
    nearest: o.nearest ?? false,
    percdamp: resolvePercdamp(o.percdamp),
    trueSequential: o.trueSequential ?? true,
    baseline,
  };
}

const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);

/** The bfloat16 bits of a float32 (round to nearest, ties to even; NaN stays NaN). */
export function toBf16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0];
  if ((b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0) return (b >>> 16) | 0x40;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** The float32 value of bfloat16 bits. */
export function fromBf16Bits(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0];
}

/** `x` rounded to bfloat16, as a number. */
export function bf16(x: number): number {
  return fromBf16Bits(toBf16Bits(x));
}

/** Number of 1 bits in the low `bits` bits of `v`. */
function popcount(v: number): number {
  let n = 0;
  for (; v; v &= v - 1) n++;
  return n;
}

/** The packed OA description (`meta.method === "oa"`). */
export interface OaMeta extends QuantMeta {
  /** BF16 emulation only: every weight's bfloat16 bits, and nothing else. */
  baseline: boolean;
  /** bfloat16 bits of every weight (baseline only). */
  bf16?: Uint16Array;
  /** Stored code bit patterns (after the offset), row-major; an outlier's slot holds 0. */
  stored?: Uint8Array;
  /** Per-row offset (offset mode; else absent = 0). */
  offsets?: Uint8Array;
  /** Outlier mask, row-major `[rows, cols]` (at most one 1 per row per block). */
  outlierMask?: Uint8Array;
  /** bfloat16 bits of the outliers, in mask order. */
  outlierBf16?: Uint16Array;
  /** Second-level quantized scales per block. */
  qqScale?: QuantizedStats[];
  /** Second-level quantized zeros per block. */
  qqZero?: QuantizedStats[];
  /** 1 bits in the stored codes without an offset (two's complement for symmetric grids). */
  onesBefore?: number;
  /** 1 bits in the stored codes with the chosen offsets (= `onesBefore` without offset mode). */
  onesAfter?: number;
  /** Outliers in all. */
  outliers?: number;
  /** Largest number of outliers in one (row, block). */
  maxOutliersPerBlock?: number;
}

/**
 * Storage bits per weight of an OA meta: `wbits` per code; each outlier 16 bits in place of its
 * code (+16 − wbits); its position as a `⌈log2 blockSize⌉`-bit index per (row, block) in outlier
 * mode; per (row, block) — or per block without `perOutDim` — a scale (`qqScaleBits` or 16) and a
 * zero (`qqZeroBits` or 16; none for symmetric grids); second-level statistics 16 + 16 bits per
 * quantized vector per `qqGroupSize` rows per block; offsets `wbits` per row. Baseline: 16.
 */
export function oaBitsPerWeight(meta: QuantMeta): number {
  const m = meta as OaMeta;
  if (m.baseline) return 16;
  const [rows, cols] = m.shape;
  const n = rows * cols, b = m.bits, gs = m.groupSize;
  const nblocks = Math.ceil(cols / gs);
  const perOutDim = m.perOutDim as boolean;
  const statSets = perOutDim ? rows * nblocks : nblocks;
  const sBits = (m.qqScaleBits as number | undefined) ?? 16;
  const zBits = m.sym ? 0 : (m.qqZeroBits as number | undefined) ?? 16;
  let bits = b * n + (sBits + zBits) * statSets;
  const qqSets = perOutDim ? Math.ceil(rows / (m.qqGroupSize as number)) * nblocks : nblocks;
  if (m.qqScale) bits += 32 * qqSets;
  if (m.qqZero) bits += 32 * qqSets;
  if (m.outlierMask) {
    bits += (16 - b) * (m.outliers ?? 0) + Math.ceil(Math.log2(gs)) * rows * nblocks;
  }
  if (m.offsets) bits += b * rows;
  return bits / n;
}

/** Rebuilds the OA weight bit-exactly from its stored form (codes after offset, stats, outliers). */
export function dequantizeOa(meta: QuantMeta): Tensor {
  const m = meta as OaMeta;
  const [rows, cols] = m.shape;
  const out = new Float32Array(rows * cols);
  if (m.baseline) {
    for (let i = 0; i < out.length; i++) out[i] = fromBf16Bits(m.bf16![i]);
    return { shape: [rows, cols], data: out };
  }
  const ngroups = m.scales.length / rows, maxq = 2 ** m.bits - 1;
  const scales = m.scales.slice(), zeros = m.zeros.slice();
  for (let g = 0; g < ngroups; g++) {
    const ds = m.qqScale ? dequantizeStats(m.qqScale[g]) : undefined;
    const dz = m.qqZero ? dequantizeStats(m.qqZero[g]) : undefined;
    for (let r = 0; r < rows; r++) {
      if (ds) scales[r * ngroups + g] = ds[r];
      if (dz) zeros[r * ngroups + g] = dz[r];
    }
  }
  const zc = (maxq + 1) / 2;
  let k = 0;
  for (let r = 0; r < rows; r++) {
    const off = m.offsets ? m.offsets[r] : 0;
    for (let j = 0; j < cols; j++) {
      const i = r * cols + j;
      if (m.outlierMask?.[i]) {
        out[i] = fromBf16Bits(m.outlierBf16![k++]);
        continue;
      }
      const s = m.stored![i];
      const code = m.sym ? (s + off + zc) & maxq : s;
      const g = r * ngroups + Math.floor(j / m.groupSize);
      out[i] = decode(code, scales[g], zeros[g]);
    }
  }
  return { shape: [rows, cols], data: out };
}

/**
 * OA of one `[rows, cols]` weight (module doc for the semantics). Needs `stats.H` unless
 * `nearest` or `baseline`. `loss` is `Σ ((w − q)/Hinv_cc)² / 2` (GPTQ's convention; `Σ (w − q)²
 * / 2` with `nearest`).
 */
export async function oaQuantize(
  W: Tensor,
  stats: LayerStats,
  options: OaOptions & QuantContext,
): Promise<QuantResult> {
  const t0 = performance.now();
  const o = resolve(options);
  const layer = options.layer ?? "weight";
  if (W.shape.length !== 2) {
    throw new QuantlabError(`oa: ${layer} must be 2-D, got shape [${W.shape}]`);
  }
  const [rows, cols] = W.shape;
  if (o.baseline) {
    const bits = new Uint16Array(rows * cols), data = new Float32Array(rows * cols);
    for (let i = 0; i < data.length; i++) {
      bits[i] = toBf16Bits(W.data[i]);
      data[i] = fromBf16Bits(bits[i]);
    }
    let loss = 0;
    for (let i = 0; i < data.length; i++) loss += (W.data[i] - data[i]) ** 2;
    const meta: OaMeta = {
      method: "oa",
      bits: 16,
      groupSize: -1,
      sym: false,
      shape: [rows, cols],
      codes: new Uint8Array(0),
      scales: new Float32Array(0),
      zeros: new Float32Array(0),
      baseline: true,
      bf16: bits,
    };
    return { Wq: { shape: [rows, cols], data }, meta, bitsPerWeight: 16, loss: loss / 2 };
  }
  const Wc = new Float32Array(W.data);
  let Hinv: Float32Array | undefined;
  if (!o.nearest) {
    const { H: H0 } = checkLayerInputs("oa", W, stats, { layer });
    const H = Float64Array.from(H0);
    let mean = 0;
    for (let i = 0; i < cols; i++) {
      if (H[i * cols + i] === 0) {
        H[i * cols + i] = 1;
        for (let r = 0; r < rows; r++) Wc[r * cols + i] = 0;
      }
      mean += H[i * cols + i];
    }
    const damp = (o.percdamp * mean) / cols;
    for (let i = 0; i < cols; i++) H[i * cols + i] += damp;
    try {
      Hinv = Float32Array.from(
        cols > 384
          ? await upperCholeskyOfInverseBlocked(H, cols, { gemm: await onnxGemmF64() })
          : upperCholeskyOfInverse(H, cols),
      );
    } catch (e) {
      if (e instanceof NotPositiveDefiniteError) {
        throw new NonFiniteError(
          `oa: ${layer}: the damped Hessian is not positive definite (${e.message}); increase percdamp (now ${o.percdamp})`,
          { cause: e },
        );
      }
      throw e;
    }
  } else {
    for (let i = 0; i < Wc.length; i++) {
      if (!Number.isFinite(Wc[i])) {
        throw new NonFiniteError(`oa: ${layer}: weight has a non-finite value at index ${i}`);
      }
    }
  }
  const gs = o.blockSize ?? cols;
  const maxq = 2 ** o.wbits - 1;
  const bil: BilevelOptions = {
    bits: o.wbits,
    sym: o.sym,
    roundZero: false,
    perChannel: o.perOutDim,
    qqScaleBits: o.qqScaleBits,
    qqZeroBits: o.qqZeroBits,
    qqGroupSize: o.qqGroupSize,
    qqZeroSym: o.qqZeroSym,
  };
  const chosen = new Int32Array(rows).fill(-1);
  const res = await outlierColumns(Wc, Hinv, {
    rows,
    cols,
    bits: o.wbits,
    groupSize: gs,
    blocksize: Hinv ? Math.max(gs, 128 - (128 % gs)) : cols,
    backend: options.backend ?? cpuBackend,
    hooks: {
      group(c0, c1, cur): BilevelGroup {
        const slice = (r: number) => cur.subarray(r * cols + c0, r * cols + c1);
        const g = fitBilevel(rows, slice, bil);
        if (!o.outlierMode) return g;
        const tmp: Float32Array[] = [];
        for (let r = 0; r < rows; r++) {
          const w = slice(r);
          let best = 0, arg = -1, sum = 0;
          for (let k = 0; k < w.length; k++) {
            const d = Hinv ? Hinv[(c0 + k) * cols + c0 + k] : 1;
            const e =
              (w[k] - decode(codeOf(w[k], g.scale[r], g.zero[r], maxq), g.scale[r], g.zero[r])) / d;
            if (e * e > best) {
              best = e * e;
              arg = k;
            }
            sum += w[k];
          }
          chosen[r] = arg < 0 ? -1 : c0 + arg;
          const t = w.slice();
          if (arg >= 0 && w.length > 1) t[arg] = Math.fround((sum - w[arg]) / (w.length - 1));
          tmp.push(t);
        }
        return fitBilevel(rows, (r) => tmp[r], bil);
      },
      outlier: (r, c, w) => (o.outlierMode && chosen[r] === c ? bf16(w) : undefined),
    },
  });
  // Storage: two's complement codes for symmetric grids, offsets, outlier list.
  const zc = (maxq + 1) / 2;
  const stored = new Uint8Array(rows * cols);
  const offsets = o.offsetMode ? new Uint8Array(rows) : undefined;
  let onesBefore = 0, onesAfter = 0;
  const hist = new Int32Array(maxq + 1);
  for (let r = 0; r < rows; r++) {
    hist.fill(0);
    for (let j = 0; j < cols; j++) {
      const i = r * cols + j;
      if (!res.outlier[i]) hist[o.sym ? (res.codes[i] - zc) & maxq : res.codes[i]]++;
    }
    let base = 0;
    for (let v = 0; v <= maxq; v++) base += hist[v] * popcount(v);
    onesBefore += base;
    let bestOff = 0, best = base;
    if (offsets) {
      for (let off = 1; off <= maxq; off++) {
        let n = 0;
        for (let v = 0; v <= maxq; v++) n += hist[v] * popcount((v - off) & maxq);
        if (n < best) {
          best = n;
          bestOff = off;
        }
      }
      offsets[r] = bestOff;
    }
    onesAfter += best;
    for (let j = 0; j < cols; j++) {
      const i = r * cols + j;
      if (res.outlier[i]) continue;
      stored[i] = o.sym ? (res.codes[i] - zc - bestOff) & maxq : res.codes[i];
    }
  }
  const ngroups = Math.ceil(cols / gs);
  const scales = new Float32Array(rows * ngroups), zeros = new Float32Array(rows * ngroups);
  res.groups.forEach((g, k) => {
    for (let r = 0; r < rows; r++) {
      scales[r * ngroups + k] = g.scale[r];
      zeros[r * ngroups + k] = g.zero[r];
    }
  });
  const ol: number[] = [];
  let maxPer = 0;
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < ngroups; b++) {
      let n = 0;
      for (let j = b * gs; j < Math.min(b * gs + gs, cols); j++) {
        if (res.outlier[r * cols + j]) {
          n++;
          ol.push(toBf16Bits(res.Q[r * cols + j]));
        }
      }
      maxPer = Math.max(maxPer, n);
    }
  }
  const meta: OaMeta = {
    method: "oa",
    bits: o.wbits,
    groupSize: gs,
    sym: o.sym,
    shape: [rows, cols],
    codes: res.codes,
    scales,
    zeros,
    baseline: false,
    perOutDim: o.perOutDim,
    stored,
    offsets,
    outlierMask: o.outlierMode ? res.outlier : undefined,
    outlierBf16: o.outlierMode ? Uint16Array.from(ol) : undefined,
    qqScale: res.groups[0]?.qqScale ? res.groups.map((g) => g.qqScale!) : undefined,
    qqZero: res.groups[0]?.qqZero ? res.groups.map((g) => g.qqZero!) : undefined,
    qqScaleBits: o.qqScaleBits,
    qqZeroBits: o.qqZeroBits,
    qqGroupSize: o.qqGroupSize,
    onesBefore,
    onesAfter,
    outliers: ol.length,
    maxOutliersPerBlock: maxPer,
    timings: { seconds: (performance.now() - t0) / 1000 },
  };
  return {
    Wq: { shape: [rows, cols], data: res.Q },
    meta,
    bitsPerWeight: oaBitsPerWeight(meta),
    loss: res.loss / 2,
  };
}

/**
 * The OA weight quantizer. Options ↔ seed flags: `wbits` `--wbits`, `sym` `--sym`, `perOutDim`
 * `--per_out_dim`, `blockSize` `--block_size`, `outlierMode` `--outlier_mode`, `offsetMode`
 * `--offset_mode`, `qqScaleBits` `--qq_scale_bits`, `qqZeroBits` `--qq_zero_bits`, `qqZeroSym`
 * `--qq_zero_sym`, `qqGroupSize` `--qq_group_size`, `nearest` `--nearest`, `percdamp`
 * `--percdamp`, `trueSequential` `--true_sequential` (pipeline), `baseline` `--baseline`.
 * `--save_true_quant` corresponds to the pipeline's packed metas (stored codes, mask, BF16
 * outliers, scales, zeros, offsets), which {@linkcode dequantizeOa} decodes bit-exactly.
 * Bad combinations (offset mode with an asymmetric grid, outliers without blocks) throw
 * {@linkcode OptionError}.
 *
 * @example
 * ```ts
 * const q = oa({ wbits: 4, sym: true, perOutDim: true, blockSize: 32, outlierMode: true, offsetMode: true });
 * const { meta } = await q.quantizeWeight(W, { H, nsamples: 128 });
 * ```
 */
export function oa(options: OaOptions): WeightQuantizer {
  const o = resolve(options);
  return {
    name: "oa",
    needsHessian: !o.nearest && !o.baseline,
    options: { ...o },
    quantizeWeight: (W, stats, ctx) => oaQuantize(W, stats, { ...o, ...ctx }),
  };
}

/** OA's storage format: offset codes, bilevel statistics, outlier mask. */
export const oaFormat: QuantFormat = {
  method: "oa",
  dequantize: dequantizeOa,
  bitsPerWeight: oaBitsPerWeight,
};
