/**
 * FrameQuant (Adepu, Zeng, Zhang, Singh, ICML 2024, arXiv 2403.06082): quantize a weight not in
 * its own basis but in a redundant tight-frame representation, `C = A_r · W · A_cᵀ`, running GPTQ
 * there with the frame-domain Hessian `A_c · H · A_cᵀ`, and reconstruct `Wq = A_rᵀ · Ĉ · A_c`.
 * Redundancy `r` (`k = ⌈r·n⌉` frame coefficients per `n` dimensions) buys fractional bit widths:
 * GPTQ may push error into directions the synthesis annihilates, and the synthesis projection
 * averages away part of the rest. Follows vsingh-group/FrameQuant `gptq.py` `fasterquant(
 * tff_transform=True)`:
 * 1. `H ← H · cols / tr(H) + normDamp · I` (reference: fixed 1e-2);
 * 2. frames on both sides: `A_c` (input side, reference `P_prev`) and `A_r` (output side, `P_l`);
 *    `C = A_r W A_cᵀ`, `H_f = A_c H A_cᵀ`;
 * 3. each frame row clipped to `mean ± clipSigma · std` (reference: 2σ, `--x_sigma 2`);
 * 4. GPTQ on `(C, H_f)` with the grid, groups, act-order and blocks of `gptq.ts`;
 * 5. `Wq = A_rᵀ Ĉ A_c` (frame synthesis; the reference's `inv_tff`). No denoising filter: the
 *    paper mentions closed-form ones, the reference code applies none.
 *
 * The reference (@a6fece7) quantizes with frames on both sides since commit 7619ef7 (`gptq.py`
 * projects `W` with `P_prev_T` and then `Wᵀ` with `P_l_T`), as here; its packed `--save` layer
 * (`quant.py` `Quant3Linear.pack`) still uses a one-sided frame (rows only Hadamard-rotated),
 * which `rowR: 1` counts.
 *
 * Differences from the reference, each documented at its option: the frames (default
 * `frames: "hadamard"`, `_frames.ts`: zero padding plus randomized Hadamard passes, tight for
 * every `n` and `k`; `frames: "reference"` is the reference's construction at r = 1, a Hadamard
 * then the same DFT-like 16×16 complex fusion transform on every block — measured in issue 19 to
 * give a 17× (2-bit) and 45× (3-bit) larger proxy loss on one real test layer, because it
 * re-concentrates outlier columns that the 2σ clip then cuts (with Hadamard-only frames patched
 * into the reference the two agreed within 0.996–1.002), and 1.07–1.15× summed over the 64 × 64
 * stories260K layers (`bench/reference_fidelity.ts`), which is why the default stays
 * `"hadamard"`); the grid (default `gridFit: "minmax"`: GPTQ's min-max grid of the clipped rows
 * and groups; `gridFit: "reference"`: the reference's `find_params_FrameQuant`, `mean ±
 * x_sigma·σ` per row — fitted on the unclipped frame weight — and per group, refitted as GPTQ
 * reaches it; the two agree per channel whenever a row reaches both clip bounds, not with
 * groups; with Hadamard frames the reference grid gave a 1.5–2.6% higher summed proxy loss on
 * stories260K's 64 × 64 layers); the reference's `H += H + damp·I` doubles `H`,
 * so its effective dampening is `percdamp / 2` (pass `percdamp: 0.005` to match it); one seed per
 * quantizer rather than `seed + layer index`; bits 9–16 round to nearest in the frame domain.
 * @module
 */
import { checkLayerInputs } from "../core/inputs.ts";
import type { Tensor } from "../../tensor.ts";
import { OptionError, QuantlabError } from "../../errors.ts";
import { packBits, unpackBits } from "../../bitstream.ts";
import type {
  LayerStats,
  QuantContext,
  QuantMeta,
  QuantResult,
  WeightQuantizer,
} from "../core/types.ts";
import type { QuantFormat } from "../core/types.ts";
import {
  type BitsAccounting,
  bitsPerWeight,
  findGridParams,
  type MseOptions,
  quantizeCode,
  roundHalfEven,
  validateBits,
} from "../core/grid.ts";
import {
  checkOptions as checkStrict,
  GPTQ_SPECS,
  type OptionSpec,
  pickOptions,
} from "../core/options.ts";
import { gptq, gptqQuantize } from "./gptq.ts";
import {
  analyzeMatrix,
  type FrameKind,
  frameSize,
  makeFrame,
  synthesizeMatrix,
  validateRedundancy,
} from "./_frames.ts";

export {
  analyzeMatrix,
  frameMatrix,
  frameSize,
  makeFrame,
  referenceFrame,
  synthesizeMatrix,
  tightFrame,
} from "./_frames.ts";
export type { FrameKind, TightFrame } from "./_frames.ts";

/** Options of {@linkcode framequant}, with the reference's names in parentheses. */
export interface FramequantOptions {
  /**
   * Bits per frame coefficient, 2–16 (`--wbits`). 2–8: GPTQ in the frame domain. 9–16: the
   * frame-domain step is round-to-nearest on a min-max grid (`gptq.ts` keeps 8-bit codes; at
   * these widths the error feedback changes nothing measurable); codes then live in `packed`.
   */
  bits: number;
  /**
   * Redundancy of the input-side frame (`--tff_redundancy`, default 1): `⌈r·cols⌉` frame columns.
   * The reference rounds to `round(l_den·r)/l_den` (r = 1.1 → 1.125); here `k = ⌈r·n⌉`.
   */
  r?: number;
  /**
   * Redundancy of the output-side frame (default: `r`, as `fasterquant` uses `--tff_redundancy`
   * on both sides). The paper's "2.2 bits at r = 1.1" counts one redundant side, as does the
   * reference's packed layer (`Quant3Linear`: `in_features` grow by r, rows only rotated): that
   * storage is `rowR: 1`.
   */
  rowR?: number;
  /** Frame columns per group; -1 (default) = one grid per frame row (`--groupsize`). */
  groupSize?: number;
  /** Symmetric grid (`--sym`; default false). */
  sym?: boolean;
  /** GPTQ's MSE grid search (2–8 bits only; the reference runs without it). */
  mse?: boolean | MseOptions;
  /** GPTQ dampening fraction of the mean frame-Hessian diagonal (`--percdamp`, 0.01). */
  percdamp?: number;
  /** GPTQ lazy-batch block size (`fasterquant(blocksize=128)`). */
  blocksize?: number;
  /** GPTQ act-order over frame columns (`--act-order`; default false). */
  actOrder?: boolean;
  /** GPTQ static groups (`--static-groups`; default false). */
  staticGroups?: boolean;
  /** Allow a `groupSize` that does not divide the frame columns (shorter last group). */
  partialGroups?: boolean;
  /**
   * Seed of the frames' random signs (`--seed`, default 0). Input frame: mulberry32 seed
   * `seed·10000 + 1234`, output frame `seed·10000 + 4321` (the reference's offsets; it also adds
   * the layer index, here every layer of a shape shares its frames).
   */
  seed?: number;
  /**
   * Clip each frame-domain row to `mean ± clipSigma · std` before GPTQ (`--x_sigma`, default 2;
   * the reference's clip is a fixed 2σ and `x_sigma` sets its grid). `false` disables it (needed
   * for near-lossless reconstruction at high bit widths).
   */
  clipSigma?: number | false;
  /** Added to the diagonal of the trace-normalized `H` before the transform (reference 1e-2). */
  normDamp?: number;
  /**
   * Frame construction (default "hadamard": quantlab's randomized-Hadamard Parseval frames, any
   * `n` and `r`); "reference": the reference's r = 1 frames (Hadamard, then a DFT-like 16×16
   * complex fusion transform per block of 32; needs `r = rowR = 1` and both dimensions multiples
   * of 32; see `referenceFrame` in `_frames.ts`). Random signs are seeded here, not torch's.
   */
  frames?: FrameKind;
  /**
   * Grid rule (default "minmax": GPTQ's min-max grid of the clipped frame rows / groups);
   * "reference": `find_params_FrameQuant` — `scale = x_sigma·σ/(maxq/2)`, `zero =
   * round((1 − mean/(2σ))·maxq/2)` (asymmetric; symmetric: `(maxq+1)/2`), σ the unbiased std of
   * the row (per channel: the unclipped frame row, as the reference fits before its clip) or of
   * the group as GPTQ reaches it. `x_sigma` is `clipSigma` (2 when `clipSigma: false`); a slice
   * with σ = 0 gets scale 1 (the reference divides by zero). 2–8 bits, no `mse`.
   */
  gridFit?: "minmax" | "reference";
}

interface Resolved {
  bits: number;
  r: number;
  rowR: number;
  groupSize: number;
  sym: boolean;
  mse?: boolean | MseOptions;
  percdamp: number;
  blocksize: number;
  actOrder: boolean;
  staticGroups: boolean;
  partialGroups: boolean;
  seed: number;
  clipSigma: number | false;
  normDamp: number;
  frames: FrameKind;
  gridFit: "minmax" | "reference";
}

/** Keys, types and bounds of {@linkcode FramequantOptions} (strict: unknown keys are refused). */
export const FRAMEQUANT_OPTION_SPECS: Record<string, OptionSpec> = {
  ...GPTQ_SPECS,
  r: { type: "number", min: 1, max: 64 },
  rowR: { type: "number", min: 1, max: 64 },
  seed: { type: "int", min: 0, max: 2 ** 32 - 1 },
  clipSigma: {
    type: "oneOf",
    want: "false or a finite number > 0",
    of: [{ type: "enum", values: [false] }, { type: "number", gt: 0, lt: 1e9 }],
  },
  normDamp: { type: "number", min: 0, max: 1e6 },
  frames: { type: "enum", values: ["hadamard", "reference"] },
  gridFit: { type: "enum", values: ["minmax", "reference"] },
};

function resolveOptions(opts: FramequantOptions): Resolved {
  checkStrict("framequant", opts, FRAMEQUANT_OPTION_SPECS, { unknown: "ignore" });
  const bits = validateBits(opts.bits, { max: 16 });
  const r = validateRedundancy(opts.r ?? 1, "r");
  const rowR = validateRedundancy(opts.rowR ?? r, "rowR");
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new OptionError("seed", `must be an integer in [0, 2^32), got ${seed}`);
  }
  const clipSigma = opts.clipSigma ?? 2;
  if (clipSigma !== false && !(typeof clipSigma === "number" && clipSigma > 0 && clipSigma < 1e9)) {
    throw new OptionError("clipSigma", `must be false or a finite number > 0, got ${clipSigma}`);
  }
  const normDamp = opts.normDamp ?? 1e-2;
  if (!(typeof normDamp === "number" && Number.isFinite(normDamp) && normDamp >= 0)) {
    throw new OptionError("normDamp", `must be a finite number ≥ 0, got ${normDamp}`);
  }
  if (bits > 8 && opts.mse) throw new OptionError("mse", "is only available for 2–8 bits");
  const frames = opts.frames ?? "hadamard";
  if (frames === "reference" && (r !== 1 || rowR !== 1)) {
    throw new OptionError(
      "frames",
      `"reference" frames are implemented at redundancy 1 only (r ${r}, rowR ${rowR})`,
    );
  }
  const gridFit = opts.gridFit ?? "minmax";
  if (gridFit === "reference" && (bits > 8 || opts.mse)) {
    throw new OptionError("gridFit", `"reference" needs 2–8 bits and no mse`);
  }
  // GPTQ validates its own options (groupSize, percdamp, blocksize, mse).
  const g = gptq({ ...pickOptions(opts, GPTQ_SPECS), bits: Math.min(bits, 8) })
    .options as Record<string, unknown>;
  return {
    bits,
    r,
    rowR,
    groupSize: g.groupSize as number,
    sym: g.sym as boolean,
    mse: opts.mse,
    percdamp: g.percdamp as number,
    blocksize: g.blocksize as number,
    actOrder: g.actOrder as boolean,
    staticGroups: g.staticGroups as boolean,
    partialGroups: g.partialGroups as boolean,
    seed,
    clipSigma,
    normDamp,
    frames,
    gridFit,
  };
}

/**
 * The reference's `find_params_FrameQuant` over a column range of `W` (see
 * {@linkcode FramequantOptions.gridFit}), float32 results.
 */
export function referenceGridFit(
  W: Tensor,
  range: { colStart?: number; colEnd?: number },
  o: { bits: number; sym: boolean; xSigma: number },
): { scale: Float32Array; zero: Float32Array } {
  const [rows, cols] = W.shape;
  const c0 = range.colStart ?? 0, c1 = range.colEnd ?? cols, n = c1 - c0;
  const maxq = 2 ** o.bits - 1;
  const scale = new Float32Array(rows), zero = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let mean = 0;
    for (let j = c0; j < c1; j++) mean += W.data[r * cols + j];
    mean /= n;
    let v = 0;
    for (let j = c0; j < c1; j++) v += (W.data[r * cols + j] - mean) ** 2;
    const std = n > 1 ? Math.sqrt(v / (n - 1)) : 0;
    if (!(std > 0)) {
      scale[r] = 1;
      zero[r] = o.sym ? (maxq + 1) / 2 : roundHalfEven(maxq / 2);
      continue;
    }
    scale[r] = Math.fround((o.xSigma * std) / (maxq / 2));
    zero[r] = o.sym ? (maxq + 1) / 2 : roundHalfEven((1 - mean / (2 * std)) * (maxq / 2));
  }
  return { scale, zero };
}

/** Mulberry32 seeds of the input-side (`col`) and output-side (`row`) frames. */
export function frameSeeds(seed: number): { colSeed: number; rowSeed: number } {
  return { colSeed: (seed * 10000 + 1234) % 2 ** 32, rowSeed: (seed * 10000 + 4321) % 2 ** 32 };
}

/** Clips each row of `C` (`rows × cols`) to `mean ± sigma · std` (unbiased std, as torch.var). */
function clipRows(C: Float32Array, rows: number, cols: number, sigma: number): void {
  if (cols < 2) return;
  for (let i = 0; i < rows; i++) {
    const row = C.subarray(i * cols, (i + 1) * cols);
    let mean = 0;
    for (let j = 0; j < cols; j++) mean += row[j];
    mean /= cols;
    let v = 0;
    for (let j = 0; j < cols; j++) v += (row[j] - mean) ** 2;
    const s = sigma * Math.sqrt(v / (cols - 1));
    const lo = Math.fround(mean - s), hi = Math.fround(mean + s);
    for (let j = 0; j < cols; j++) row[j] = row[j] < lo ? lo : row[j] > hi ? hi : row[j];
  }
}

/** Min-max round-to-nearest of `C` for 9–16 bits: `grid.ts`'s `findParams` and `quantizeCode`. */
function rtnWide(C: Float32Array, rows: number, cols: number, o: Resolved) {
  const gs = o.groupSize;
  const ngroups = gs > 0 ? Math.ceil(cols / gs) : 1, width = gs > 0 ? gs : cols;
  const scales = new Float32Array(rows * ngroups), zeros = new Float32Array(rows * ngroups);
  const codes = new Uint16Array(rows * cols);
  const Ct = { shape: [rows, cols], data: C };
  const grids = Array.from({ length: ngroups }, (_, g) =>
    findGridParams(Ct, {
      bits: o.bits,
      sym: o.sym,
      colStart: g * width,
      colEnd: Math.min((g + 1) * width, cols),
    }));
  let loss = 0;
  for (let i = 0; i < rows; i++) {
    for (let g = 0; g < ngroups; g++) {
      const c0 = i * cols + g * width, c1 = i * cols + Math.min((g + 1) * width, cols);
      const grid = { scale: grids[g].scale[i], zero: grids[g].zero[i], maxq: grids[g].maxq };
      scales[i * ngroups + g] = grid.scale;
      zeros[i * ngroups + g] = grid.zero;
      for (let j = c0; j < c1; j++) {
        codes[j] = quantizeCode(C[j], grid);
        loss += (C[j] - Math.fround(grid.scale * (codes[j] - grid.zero))) ** 2;
      }
    }
  }
  return { codes, scales, zeros, loss };
}

/** The frame-domain weight `Ĉ = scale · (code − zero)` (float32, `frameShape`) of a meta. */
export function frameWeights(meta: QuantMeta): Float32Array {
  const [kr, kc] = meta.frameShape as [number, number];
  const codes: ArrayLike<number> = meta.codes.length === kr * kc
    ? meta.codes
    : unpackBits(meta.packed!, { bits: meta.bits, out: new Uint16Array(kr * kc) });
  const ngroups = meta.scales.length / kr;
  const gs = meta.groupSize;
  const out = new Float32Array(kr * kc);
  for (let i = 0; i < kr; i++) {
    for (let j = 0; j < kc; j++) {
      const g = i * ngroups + (meta.gIdx ? meta.gIdx[j] : gs > 0 ? Math.floor(j / gs) : 0);
      out[i * kc + j] = meta.scales[g] * (codes[i * kc + j] - meta.zeros[g]);
    }
  }
  return out;
}

/**
 * Rebuilds FrameQuant's `Wq` from its meta: regenerates both frames from the stored seeds and
 * redundancies, dequantizes the frame-domain codes and synthesizes `A_rᵀ Ĉ A_c` (float64, then
 * float32). {@linkcode framequantQuantize} computes its `Wq` with this function, so they agree
 * bit for bit. (`grid.ts` `dequantize` does not apply: the codes describe the frame domain.)
 */
export function dequantizeFramequant(meta: QuantMeta): Tensor {
  if (meta.method !== "framequant") {
    throw new QuantlabError(`dequantizeFramequant: meta is for method "${meta.method}"`);
  }
  const [rows, cols] = meta.shape;
  const [kr, kc] = meta.frameShape as [number, number];
  const kind = (meta.frames as FrameKind | undefined) ?? "hadamard";
  const fr = makeFrame(kind, rows, meta.rowR as number, meta.rowSeed as number);
  const fc = makeFrame(kind, cols, meta.r as number, meta.colSeed as number);
  if (fr.k !== kr || fc.k !== kc) {
    throw new QuantlabError(
      `dequantizeFramequant: frames of [${fr.k}, ${fc.k}] coefficients, meta has [${kr}, ${kc}]`,
    );
  }
  const W = synthesizeMatrix(frameWeights(meta), fr, fc);
  return { shape: [rows, cols], data: Float32Array.from(W) };
}

/**
 * Storage bits per ORIGINAL weight: frame-domain codes plus grid parameters (and `g_idx` when
 * stored), `(bits·kr·kc + (scaleBits + zeroBits)·#grids + [indexBits·kc]) / (rows·cols)`, i.e.
 * `grid.ts` `bitsPerWeight` of the frame weight times `kr·kc / (rows·cols)`. The two 32-bit frame
 * seeds per layer are not counted. With `rowR = 1` this is `bits · ⌈r·cols⌉/cols` + overhead, the
 * paper's `bits × r`; with both sides redundant about `bits × r²`.
 */
export function framequantBitsPerWeight(meta: QuantMeta, accounting: BitsAccounting = {}): number {
  const [rows, cols] = meta.shape;
  const [kr, kc] = meta.frameShape as [number, number];
  return (bitsPerWeight({ ...meta, shape: [kr, kc] }, accounting) * kr * kc) / (rows * cols);
}

/**
 * FrameQuant of one `[rows, cols]` weight given `stats.H` (`cols × cols`); the math of
 * {@linkcode framequant} (steps in the module notes). `loss` is GPTQ's frame-domain loss on the
 * normalized frame Hessian (`Σ (c − ĉ)²` above 8 bits); compare methods with the proxy loss
 * `tr((W − Wq) H (W − Wq)ᵀ)` in the original basis.
 */
export async function framequantQuantize(
  W: Tensor,
  stats: LayerStats,
  options: FramequantOptions & QuantContext,
): Promise<QuantResult> {
  const o = resolveOptions(options);
  const layer = options.layer ?? "weight";
  const { rows, cols, H: H0 } = checkLayerInputs("framequant", W, stats, { layer });
  const kr = frameSize(rows, o.rowR), kc = frameSize(cols, o.r);
  const gs = o.groupSize;
  if (gs > 0 && kc % gs !== 0 && !o.partialGroups) {
    throw new OptionError(
      "groupSize",
      `${gs} does not divide the ${kc} frame columns (⌈r·${cols}⌉, r = ${o.r}) of ${layer}; ` +
        `choose r or groupSize so it does, or pass partialGroups: true`,
    );
  }
  const { colSeed, rowSeed } = frameSeeds(o.seed);
  const fr = makeFrame(o.frames, rows, o.rowR, rowSeed);
  const fc = makeFrame(o.frames, cols, o.r, colSeed);

  // 1–2. Normalized Hessian into the frame domain; the weight into its frame representation.
  const Hn = Float64Array.from(H0);
  let tr = 0;
  for (let i = 0; i < cols; i++) tr += Hn[i * cols + i];
  const s = cols / (tr + 1e-8);
  for (let i = 0; i < Hn.length; i++) Hn[i] *= s;
  for (let i = 0; i < cols; i++) Hn[i * cols + i] += o.normDamp;
  const Hf = analyzeMatrix(Hn, fc, fc);
  for (let i = 0; i < kc; i++) {
    for (let j = 0; j < i; j++) {
      Hf[i * kc + j] = Hf[j * kc + i] = (Hf[i * kc + j] + Hf[j * kc + i]) / 2;
    }
  }
  const C = Float32Array.from(analyzeMatrix(W.data, fr, fc));
  const unclipped = o.gridFit === "reference" ? C.slice() : undefined;
  // 3. σ-clipping of the frame rows.
  if (o.clipSigma !== false) clipRows(C, kr, kc, o.clipSigma);

  // 4. Frame-domain quantization.
  const base = {
    method: "framequant",
    bits: o.bits,
    groupSize: gs,
    sym: o.sym,
    shape: [rows, cols] as [number, number],
    frameShape: [kr, kc],
    r: o.r,
    rowR: o.rowR,
    seed: o.seed,
    colSeed,
    rowSeed,
    clipSigma: o.clipSigma,
    normDamp: o.normDamp,
    frames: o.frames,
    gridFit: o.gridFit,
    percdamp: o.percdamp,
    blocksize: o.blocksize,
  };
  let meta: QuantMeta, loss: number;
  if (o.bits <= 8) {
    const res = await gptqQuantize({ shape: [kr, kc], data: C }, {
      H: Hf,
      nsamples: stats.nsamples,
    }, {
      ...o,
      bits: o.bits,
      backend: options.backend,
      layer: `${layer} (frame domain)`,
      fitGrid: unclipped
        ? (Wt, range) =>
          referenceGridFit(
            range.colStart === undefined ? { shape: [kr, kc], data: unclipped } : Wt,
            range,
            { bits: o.bits, sym: o.sym, xSigma: o.clipSigma === false ? 2 : o.clipSigma },
          )
        : undefined,
    });
    const f = res.meta;
    meta = {
      ...base,
      codes: f.codes,
      packed: f.packed,
      scales: f.scales,
      zeros: f.zeros,
      gIdx: f.gIdx,
      perm: f.perm,
      gIdxStored: f.gIdxStored,
      actOrder: o.actOrder,
      staticGroups: f.staticGroups,
      timings: f.timings,
    };
    loss = res.loss;
  } else {
    const q = rtnWide(C, kr, kc, o);
    let gIdx: Int32Array | undefined;
    if (gs > 0) gIdx = Int32Array.from({ length: kc }, (_, j) => Math.floor(j / gs));
    meta = {
      ...base,
      codes: new Uint8Array(0),
      packed: packBits(q.codes, o.bits),
      scales: q.scales,
      zeros: q.zeros,
      gIdx,
      gIdxStored: false,
    };
    loss = q.loss;
  }
  // 5. Synthesis, through the same function a reader of `meta` uses.
  return {
    Wq: dequantizeFramequant(meta),
    meta,
    bitsPerWeight: framequantBitsPerWeight(meta),
    loss,
  };
}

/**
 * The FrameQuant weight quantizer (needs `stats.H`). Bad options throw {@linkcode OptionError}
 * naming the option; a `groupSize` that does not divide a layer's frame columns throws at
 * quantize time, naming the layer.
 *
 * @example
 * ```ts
 * const q = framequant({ bits: 2, r: 1.1 });            // ≈ 2·1.1² bits + grid overhead
 * const { Wq, meta, bitsPerWeight } = await q.quantizeWeight(W, { H, nsamples: 128 });
 * dequantizeFramequant(meta);                            // === Wq, bit for bit
 * ```
 */
export function framequant(options: FramequantOptions): WeightQuantizer {
  checkStrict("framequant", options, FRAMEQUANT_OPTION_SPECS);
  const o = resolveOptions(options);
  return {
    name: "framequant",
    needsHessian: true,
    options: { ...o },
    quantizeWeight: (W, stats, ctx) => framequantQuantize(W, stats, { ...o, ...ctx }),
  };
}

/** FrameQuant's storage format: grid codes of the frame-domain weight, synthesized back. */
export const framequantFormat: QuantFormat = {
  method: "framequant",
  dequantize: dequantizeFramequant,
  bitsPerWeight: (meta) => framequantBitsPerWeight(meta),
};
