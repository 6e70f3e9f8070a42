/**
 * QRazor (Lee et al. 2025, "Reliable and Effortless 4-bit LLM Quantization by Significant Data
 * Razoring"), as the qllm-infer reference runs it (`lib/qrazor/qrazor.py`,
 * `lib/quantization/quantizer.py`): a tensor is first quantized to a base integer grid of
 * `bits` (absmax, qllm-infer's `Quantizer`: symmetric `scale = max|x| / (2^(b−1) − 1)`, codes
 * clamped to ±maxq; asymmetric the GPTQ min–max grid), then *Significant Data Razoring* (SDR)
 * compresses the integer magnitudes: per group of `group` consecutive values (the flattened
 * tensor, zero-padded at its end), the leading one of the group's largest magnitude fixes a bit
 * position `b − 1`; every value of the group keeps `rBit − 1` magnitude bits below and including
 * it (a unit of `2^(b + 1 − rBit)`, round half to even), and the group stores the shift as a flag.
 * A group whose largest magnitude is `≥ 2^b − 2^(b−4)` would round its largest values up to
 * `2^b` (one bit more): its values `≥ ⌊2^b − 2^(b−4)⌋` are floored instead. Groups whose largest
 * magnitude is below `2^(rBit−1)` already fit and are unchanged. The sign is kept aside (the
 * reference razors `|q|` then multiplies the sign back; asymmetric grids razor `|q − zero|`).
 *
 * Measured facts of the reference kept here: the overflow margin `2^(b−4)` is written for
 * `rBit = 4` (half a unit only then); the group runs over the flattened tensor, so a group can
 * span two rows when the row length is not a multiple of `group` (kept, as the reference).
 *
 * Effective bits: `rBit + flagBits / group` with `flagBits = ⌈log2(qBit − rBit + 2)⌉` (shifts
 * 0 … qBit − rBit + 1): 4 + 3/g for INT8 → 4 bits, the seed's 4.38 / 4.19 / 4.10 / 4.05 / 4.03
 * for g = 8 … 128 (the seed rounds up to two decimals).
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import { OptionError } from "../../errors.ts";
import type { QuantMeta, QuantResult, WeightQuantizer } from "../core/types.ts";
import { checkOptions, QRAZOR_WEIGHT_SPECS } from "../core/options.ts";
import { packCodes, roundHalfEven } from "../core/grid.ts";

/** SDR parameters: base integer bits `qBit`, kept bits `rBit` (sign included), group length. */
export interface SdrOptions {
  /** Bits of the base integer grid (the reference's `q_bit`, e.g. 8 for weights, 16 for activations). */
  qBit: number;
  /** Bits kept per value, sign included (`r_bit`, e.g. 4). */
  rBit: number;
  /** Values per group sharing one shift flag (`group`, e.g. 8 … 128). */
  group: number;
}

function checkSdr(o: SdrOptions): void {
  if (!(Number.isInteger(o.qBit) && o.qBit >= 2 && o.qBit <= 16)) {
    throw new OptionError("qrazor.qBit", `must be an integer in 2..16, got ${o.qBit}`);
  }
  if (!(Number.isInteger(o.rBit) && o.rBit >= 2 && o.rBit <= o.qBit)) {
    throw new OptionError(
      "qrazor.rBit",
      `must be an integer in 2..qBit (${o.qBit}), got ${o.rBit}`,
    );
  }
  if (!(Number.isInteger(o.group) && o.group >= 1 && o.group <= 1 << 20)) {
    throw new OptionError("qrazor.group", `must be a positive integer, got ${o.group}`);
  }
}

/**
 * SDR of non-negative integer magnitudes `a` (in place; returns `a`): groups of `group`
 * consecutive values (the last one zero-padded), see the module doc. Values are the base grid's
 * magnitudes, `0 … 2^(qBit−1)` or `2^qBit − 1`.
 */
export function sdr(a: Float64Array | Float32Array, o: SdrOptions): typeof a {
  checkSdr(o);
  const { qBit, rBit, group } = o;
  for (let g0 = 0; g0 < a.length; g0 += group) {
    const g1 = Math.min(g0 + group, a.length);
    let m = 0;
    for (let i = g0; i < g1; i++) if (a[i] > m) m = a[i];
    if (m < 2 ** (rBit - 1)) continue; // already fits in rBit bits
    const b = Math.floor(Math.log2(m)) + 1; // m ∈ [2^(b−1), 2^b)
    if (b > qBit) continue; // outside the base grid: the reference leaves it
    const unit = 2 ** (b + 1 - rBit);
    const edge = 2 ** b - 2 ** (b - 4);
    const floorFrom = m >= edge ? Math.floor(edge) : Infinity;
    for (let i = g0; i < g1; i++) {
      const v = a[i];
      a[i] = (v >= floorFrom ? Math.floor(v / unit) : roundHalfEven(v / unit)) * unit;
    }
  }
  return a;
}

/** Flag bits per group: `⌈log2(qBit − rBit + 2)⌉` (shift 0 … qBit − rBit + 1). */
export function qrazorFlagBits(qBit: number, rBit: number): number {
  return Math.ceil(Math.log2(qBit - rBit + 2));
}

/**
 * Effective bits per value of SDR: `rBit + flagBits / group` (scales not counted, as the seed's
 * table). `roundUp` gives the seed's two-decimal display (⌈100·x⌉ / 100).
 */
export function qrazorEffectiveBits(
  o: SdrOptions,
  opts: { roundUp?: boolean } = {},
): number {
  checkSdr(o);
  const e = o.rBit + qrazorFlagBits(o.qBit, o.rBit) / o.group;
  return opts.roundUp ? Math.ceil(e * 100 - 1e-9) / 100 : e;
}

/** Which elements share a scale in {@linkcode qllmFakeQuant}. */
export type QllmUnit = "tensor" | "row" | "column";

/** Options of {@linkcode qllmFakeQuant}: qllm-infer's `Quantizer` + `quantize`. */
export interface QllmQuantOptions {
  /** Base bits (16 = unchanged, except with `qrazor`: then an INT16 base grid). */
  bits: number;
  /** Symmetric grid (`scale = max|x| / maxq`, clamp ±maxq) or asymmetric (GPTQ min–max). */
  sym: boolean;
  /** Scale sharing: whole tensor, each row (token, or weight output channel), each column. */
  unit: QllmUnit;
  /** With "row": elements per group along the row (`groupsize_*`; must divide cols). */
  groupSize?: number;
  /** SDR after the base grid (`*_qrazor`); `qrazor.bits` = `rBit`, `qrazor.group` = group. */
  qrazor?: { bits: number; group: number };
}

/**
 * qllm-infer's activation/weight fake quantization of `x` [rows, cols] (a new array): per unit
 * `xmin = min(min x, 0)`, `xmax = max(max x, 0)`; symmetric `xmax = max(|xmin|, xmax)`,
 * `scale = xmax / maxq` (`maxq = 2^(b−1) − 1`), `q = clamp(round(x/scale), −maxq, maxq)`;
 * asymmetric `scale = (xmax − xmin) / (2^b − 1)`, `zero = round(−xmin/scale)`,
 * `q = clamp(round(x/scale) + zero, 0, 2^b − 1)`; a unit with xmin = xmax = 0 takes [−1, 1].
 * With `qrazor`, SDR (qBit = bits) razors `|q − zero|` over the flattened tensor, sign kept;
 * `y = scale · (q − zero)`. Also returns the integer codes `q − zero` and scales per unit.
 */
export function qllmFakeQuant(
  x: Float32Array,
  rows: number,
  cols: number,
  o: QllmQuantOptions,
): { y: Float32Array; q: Float64Array; scale: Float64Array; zero: Float64Array } {
  const n = rows * cols;
  if (o.bits >= 16 && !o.qrazor) {
    return {
      y: new Float32Array(x),
      q: new Float64Array(0),
      scale: new Float64Array(0),
      zero: new Float64Array(0),
    };
  }
  const gs = o.unit === "row" && o.groupSize && o.groupSize > 0 ? o.groupSize : cols;
  if (cols % gs !== 0) throw new OptionError("groupsize", `${gs} does not divide ${cols} columns`);
  const units = o.unit === "tensor" ? 1 : o.unit === "column" ? cols : rows * (cols / gs);
  const unitOf = (i: number) =>
    o.unit === "tensor" ? 0 : o.unit === "column" ? i % cols : Math.floor(i / gs);
  const lo = new Float64Array(units), hi = new Float64Array(units);
  for (let i = 0; i < n; i++) {
    const u = unitOf(i), v = x[i];
    if (v < lo[u]) lo[u] = v;
    if (v > hi[u]) hi[u] = v;
  }
  const maxq = o.sym ? 2 ** (o.bits - 1) - 1 : 2 ** o.bits - 1;
  const scale = new Float64Array(units), zero = new Float64Array(units);
  for (let u = 0; u < units; u++) {
    let xmin = lo[u], xmax = hi[u];
    if (o.sym) {
      xmax = Math.max(Math.abs(xmin), xmax);
      if (xmin < 0) xmin = -xmax;
    }
    if (xmin === 0 && xmax === 0) [xmin, xmax] = [-1, 1];
    if (o.sym) scale[u] = Math.fround(xmax / maxq);
    else {
      scale[u] = Math.fround(Math.fround(xmax - xmin) / maxq); // f32 steps, as torch in float32
      zero[u] = roundHalfEven(Math.fround(-xmin / scale[u]));
    }
  }
  const q = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const u = unitOf(i);
    const t = roundHalfEven(Math.fround(x[i] / scale[u])) + zero[u];
    q[i] = (o.sym ? Math.min(Math.max(t, -maxq), maxq) : Math.min(Math.max(t, 0), maxq)) - zero[u];
  }
  if (o.qrazor) {
    const mag = new Float64Array(n);
    for (let i = 0; i < n; i++) mag[i] = Math.abs(q[i]);
    sdr(mag, { qBit: o.bits, rBit: o.qrazor.bits, group: o.qrazor.group });
    for (let i = 0; i < n; i++) q[i] = Math.sign(q[i]) * mag[i];
  }
  const y = new Float32Array(n);
  for (let i = 0; i < n; i++) y[i] = Math.fround(scale[unitOf(i)] * q[i]) + 0; // no −0
  return { y, q, scale, zero };
}

/** Options of {@linkcode qrazorWeight} (the seed's `bits_w`, `sym_w`, `groupsize_w`, …). */
export interface QrazorWeightOptions {
  /** Base integer bits (`bits_w`, e.g. 8). */
  bits: number;
  /** Symmetric base grid (`sym_w`, default true). */
  sym?: boolean;
  /** Columns per base-grid group (`groupsize_w`, default -1: one grid per output channel). */
  groupSize?: number;
  /** One grid per output channel (`w_per_channel`, default true); false: per tensor. */
  perChannel?: boolean;
  /** SDR kept bits (`w_qrazor_bits`); omit for the plain qllm-infer RTN grid. */
  qrazorBits?: number;
  /** SDR group (`w_qrazor_group`, default 8). */
  qrazorGroup?: number;
}

/**
 * qllm-infer's RTN weight quantizer, optionally with QRazor SDR on the integer codes: `W`
 * [rows, cols] on the {@linkcode qllmFakeQuant} grid per output channel (or per `groupSize`
 * columns of it, or per tensor), then SDR in groups of `qrazorGroup` consecutive values
 * of the flattened weight (the reference razors the flattened tensor, so without `groupSize` a
 * group spans two rows when `qrazorGroup` does not divide the columns; with `groupSize` the
 * reference razors each group's slice, the same groups when `qrazorGroup` divides it, required
 * here). `bitsPerWeight` is the effective bits (SDR: `rBit + flag/group`)
 * plus 16-bit scales (and zeros) per grid group.
 */
export function qrazorWeight(options: QrazorWeightOptions): WeightQuantizer {
  checkOptions("qrazorWeight", options, QRAZOR_WEIGHT_SPECS);
  const o = {
    bits: options.bits,
    sym: options.sym ?? true,
    groupSize: options.groupSize ?? -1,
    perChannel: options.perChannel ?? true,
    qrazorBits: options.qrazorBits,
    qrazorGroup: options.qrazorGroup ?? 8,
  };
  if (!o.perChannel && o.groupSize > 0) {
    throw new OptionError("perChannel", "false (per tensor) cannot be combined with groupSize");
  }
  if (o.qrazorBits !== undefined) {
    checkSdr({ qBit: o.bits, rBit: o.qrazorBits, group: o.qrazorGroup });
  }
  const name = o.qrazorBits !== undefined ? "qrazor" : "qllm-rtn";
  return {
    name,
    needsHessian: false,
    options: { ...o },
    quantizeWeight: (W: Tensor, _stats, ctx) => {
      const [rows, cols] = W.shape;
      const layer = ctx?.layer ?? "weight";
      if (o.groupSize > 0 && cols % o.groupSize !== 0) {
        throw new OptionError(
          "groupsize_w",
          `${o.groupSize} does not divide the ${cols} columns of ${layer}`,
        );
      }
      if (o.qrazorBits !== undefined && o.groupSize > 0 && o.groupSize % o.qrazorGroup !== 0) {
        throw new OptionError(
          "w_qrazor_group",
          `${o.qrazorGroup} does not divide groupsize_w ${o.groupSize} (${layer}): the reference ` +
            "razors each grid group's slice on its own",
        );
      }
      const r = qllmFakeQuant(W.data, rows, cols, {
        bits: o.bits,
        sym: o.sym,
        unit: o.perChannel ? "row" : "tensor",
        groupSize: o.groupSize,
        qrazor: o.qrazorBits !== undefined
          ? { bits: o.qrazorBits, group: o.qrazorGroup }
          : undefined,
      });
      const ngroups = o.perChannel && o.groupSize > 0 ? cols / o.groupSize : 1;
      const scales = new Float32Array(rows * ngroups), zeros = new Float32Array(rows * ngroups);
      const off = o.sym ? 2 ** (o.bits - 1) - 1 : 0; // codes = q + off ≥ 0
      for (let rI = 0; rI < rows; rI++) {
        for (let g = 0; g < ngroups; g++) {
          const u = o.perChannel ? rI * ngroups + g : 0;
          scales[rI * ngroups + g] = r.scale[u];
          zeros[rI * ngroups + g] = o.sym ? off : r.zero[u];
        }
      }
      const codes = new Uint8Array(rows * cols);
      let loss = 0;
      for (let i = 0; i < codes.length; i++) {
        const u = o.perChannel ? Math.floor(i / (o.groupSize > 0 ? o.groupSize : cols)) : 0;
        codes[i] = r.q[i] + (o.sym ? off : r.zero[u]);
        const d = W.data[i] - r.y[i];
        loss += d * d;
      }
      const meta: QuantMeta = {
        method: name,
        bits: o.bits,
        groupSize: o.perChannel ? o.groupSize : -1,
        sym: false, // zeros stored explicitly (qllm-infer's grid is centred on maxq, not 2^(b−1))
        shape: [rows, cols],
        codes,
        packed: packCodes(codes, o.bits),
        scales,
        zeros,
        perTensor: !o.perChannel,
        qrazor: o.qrazorBits !== undefined
          ? { rBit: o.qrazorBits, group: o.qrazorGroup }
          : undefined,
      };
      const perGroup = o.perChannel ? (o.groupSize > 0 ? o.groupSize : cols) : rows * cols;
      const valueBits = o.qrazorBits !== undefined
        ? qrazorEffectiveBits({ qBit: o.bits, rBit: o.qrazorBits, group: o.qrazorGroup })
        : o.bits;
      const res: QuantResult = {
        Wq: { shape: [rows, cols], data: r.y },
        meta,
        bitsPerWeight: valueBits + (o.sym ? 16 : 32) / perGroup,
        loss,
      };
      return Promise.resolve(res);
    },
  };
}
