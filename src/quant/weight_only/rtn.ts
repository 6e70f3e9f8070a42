/**
 * Round-to-nearest (RTN): every weight goes to its nearest grid point, independently. The
 * baseline of the GPTQ paper (`--nearest` in IST-DASLab/gptq).
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import { OptionError } from "../../errors.ts";
import type { QuantFormat, QuantMeta, QuantResult, WeightQuantizer } from "../core/types.ts";
import { checkOptions as checkStrict, GRID_SPECS, type OptionSpec } from "../core/options.ts";
import { checkWeight } from "../core/inputs.ts";

/** Keys, types and bounds of {@linkcode RtnOptions} (strict: unknown keys are refused). */
export const RTN_OPTION_SPECS: Record<string, OptionSpec> = {
  ...GRID_SPECS,
  perChannel: { type: "boolean" },
};
import {
  bitsPerWeight,
  checkGroupColumns,
  findParams,
  gridFormat,
  type MseOptions,
  packCodes,
  quantizeCode,
  resolveGroupSize,
  resolveMse,
  validateBits,
} from "../core/grid.ts";

/** Options of {@linkcode rtn}. */
export interface RtnOptions {
  /** Bits per weight code, 2–8 (reference `--wbits`). */
  bits: number;
  /** Columns per group, or -1 (default) for one grid per output channel (`--groupsize`). */
  groupSize?: number;
  /** Symmetric grid (default false; reference `--sym`). */
  sym?: boolean;
  /** MSE clipping search (reference `Quantizer(mse=True)`); `true` = norm 2.4, grid 100. */
  mse?: boolean | MseOptions;
  /** One grid per output channel (default true, reference `perchannel`); false = per tensor. */
  perChannel?: boolean;
  /**
   * Allow a `groupSize` that does not divide the columns: the last group is shorter, as the
   * reference code does (`(i1 + i) % groupsize == 0` over `W[:, c:c+groupsize]`). Default false:
   * such a `groupSize` is an OptionError, since packed GPTQ formats need whole groups.
   */
  partialGroups?: boolean;
}

function checkOptions(opts: RtnOptions): Required<Omit<RtnOptions, "mse">> & RtnOptions {
  checkStrict("rtn", opts, RTN_OPTION_SPECS, { unknown: "ignore" });
  validateBits(opts.bits);
  const groupSize = resolveGroupSize(opts.groupSize);
  const perChannel = opts.perChannel ?? true;
  if (!perChannel && groupSize !== -1) {
    throw new OptionError("perChannel", "false (per-tensor) cannot be combined with groupSize");
  }
  resolveMse(opts.mse);
  return {
    ...opts,
    groupSize,
    sym: opts.sym ?? false,
    perChannel,
    partialGroups: opts.partialGroups ?? false,
  };
}

/**
 * Round-to-nearest quantization of a `[rows, cols]` weight with per-tensor, per-channel or
 * group-wise grids from {@linkcode findParams}. Synchronous core of {@linkcode rtn}; `layer`
 * names the weight in errors.
 */
export function rtnQuantize(W: Tensor, options: RtnOptions & { layer?: string }): QuantResult {
  const o = checkOptions(options);
  checkWeight("rtn", W, options.layer ?? "weight");
  const [rows, cols] = W.shape;
  const gs = o.groupSize;
  checkGroupColumns(cols, {
    groupSize: gs,
    partialGroups: options.partialGroups,
    layer: options.layer,
  });
  const ngroups = gs > 0 ? Math.ceil(cols / gs) : 1;
  const scales = new Float32Array(rows * ngroups), zeros = new Float32Array(rows * ngroups);
  const codes = new Uint8Array(rows * cols);
  const out = new Float32Array(rows * cols);
  let loss = 0;
  for (let g = 0; g < ngroups; g++) {
    const c0 = gs > 0 ? g * gs : 0, c1 = gs > 0 ? Math.min(c0 + gs, cols) : cols;
    const p = findParams(W, { ...o, colStart: c0, colEnd: c1 });
    for (let r = 0; r < rows; r++) {
      const s = p.scale[r], z = p.zero[r], grid = { scale: s, zero: z, maxq: p.maxq };
      scales[r * ngroups + g] = s;
      zeros[r * ngroups + g] = z;
      for (let j = c0; j < c1; j++) {
        const i = r * cols + j, x = W.data[i];
        const c = quantizeCode(x, grid);
        codes[i] = c;
        out[i] = s * (c - z);
        const d = x - out[i];
        loss += d * d;
      }
    }
  }
  const meta: QuantMeta = {
    method: "rtn",
    bits: o.bits,
    groupSize: gs,
    sym: o.sym,
    shape: [rows, cols],
    codes,
    packed: packCodes(codes, o.bits),
    scales,
    zeros,
    perTensor: !o.perChannel,
  };
  return { Wq: { shape: [rows, cols], data: out }, meta, bitsPerWeight: bitsPerWeight(meta), loss };
}

/**
 * Round-to-nearest weight quantizer (no Hessian). `loss` is `Σ (w − q)²`.
 *
 * @example
 * ```ts
 * const r = await rtn({ bits: 4, groupSize: 128 }).quantizeWeight(W, { nsamples: 0 });
 * ```
 */
export function rtn(options: RtnOptions): WeightQuantizer {
  checkStrict("rtn", options, RTN_OPTION_SPECS);
  const o = checkOptions(options);
  return {
    name: "rtn",
    needsHessian: false,
    options: { ...o },
    checkColumns: (cols, layer) => checkGroupColumns(cols, { ...o, layer }),
    quantizeWeight: (W, _stats, ctx) =>
      new Promise((resolve) => resolve(rtnQuantize(W, { ...o, layer: ctx?.layer }))),
  };
}

/** RTN's storage format: the plain uniform grid (`grid.ts`). */
export const rtnFormat: QuantFormat = gridFormat("rtn");
