/**
 * GPTQ + QRazor, as qllm-infer runs it (`lib/gptq/gptq.py` `fasterquant(..., qrazor=True)` with
 * its `Quantizer`): GPTQ's column loop on qllm-infer's grid (symmetric `max|w| / (2^(b−1) − 1)`,
 * clamp ±maxq, or the asymmetric min–max grid; per output channel, or refit every `groupSize`
 * processed columns as the reference's dynamic groups), where each column's quantization is
 * followed by QRazor's SDR — the reference quantizes `w.unsqueeze(1)`, so SDR groups are
 * `rGroup` consecutive *rows* of the column (zero-padded) — and the rounding error is spread on
 * the remaining columns through `Hinv = chol(H⁻¹)ᵀ`. Act-order (descending `H_ii`, the seed's
 * `gptq_act_order=true`), dead inputs (`H_ii = 0` → 1, weight column 0) and damping
 * (`percdamp · mean diag H`) as GPTQ. Unblocked column loop in float64 (the lazy-batch scheme
 * gives the same result up to rounding). Without `rBit` it is GPTQ on qllm-infer's grid.
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import { OptionError } from "../../errors.ts";
import type { QuantMeta, QuantResult, WeightQuantizer } from "../core/types.ts";
import { checkLayerInputs } from "../core/inputs.ts";
import { upperCholeskyOfInverse } from "../core/linalg.ts";
import { packCodes, roundHalfEven } from "../core/grid.ts";
import { qllmFakeQuant, qrazorEffectiveBits, sdr } from "./qrazor.ts";

/** Options of {@linkcode gptqQrazor} (the seed's `bits_w`, `w_qrazor_*`, `gptq_*`). */
export interface GptqQrazorOptions {
  /** Base integer bits (`bits_w`, 2–8). */
  bits: number;
  /** SDR kept bits (`w_qrazor_bits`); omit for plain GPTQ on qllm-infer's grid. */
  rBit?: number;
  /** SDR group along a column's rows (`w_qrazor_group`, default 8). */
  rGroup?: number;
  /** Columns per grid group (`groupsize_w`, default -1: per output channel). */
  groupSize?: number;
  /** Symmetric grid (`sym_w`, default true). */
  sym?: boolean;
  /** Act-order (`gptq_act_order`, default true as the seed). */
  actOrder?: boolean;
  /** Dampening (`gptq_percdamp`, default 0.01). */
  percdamp?: number;
}

/** GPTQ with QRazor SDR rounding (see the module doc). Needs the layer Hessian. */
export function gptqQrazor(options: GptqQrazorOptions): WeightQuantizer {
  const o = {
    bits: options.bits,
    rBit: options.rBit,
    rGroup: options.rGroup ?? 8,
    groupSize: options.groupSize ?? -1,
    sym: options.sym ?? true,
    actOrder: options.actOrder ?? true,
    percdamp: options.percdamp ?? 0.01,
  };
  if (!(Number.isInteger(o.bits) && o.bits >= 2 && o.bits <= 8)) {
    throw new OptionError("bits", `must be an integer in 2..8, got ${o.bits}`);
  }
  if (!(o.percdamp > 0)) throw new OptionError("percdamp", `must be > 0, got ${o.percdamp}`);
  if (o.groupSize === 0 || !Number.isInteger(o.groupSize) || o.groupSize < -1) {
    throw new OptionError("groupSize", `must be -1 or a positive integer, got ${o.groupSize}`);
  }
  if (o.rBit !== undefined) qrazorEffectiveBits({ qBit: o.bits, rBit: o.rBit, group: o.rGroup });
  const name = o.rBit !== undefined ? "gptq-qrazor" : "gptq-qllm";
  return {
    name,
    needsHessian: true,
    options: { ...o },
    quantizeWeight: (W: Tensor, stats, ctx) => {
      const layer = ctx?.layer ?? "weight";
      const { rows, cols, H: H0 } = checkLayerInputs(name, W, stats, { layer });
      const gs = o.groupSize;
      if (gs > 0 && cols % gs !== 0) {
        throw new OptionError("groupSize", `${gs} does not divide the ${cols} columns of ${layer}`);
      }
      const diag = Float64Array.from({ length: cols }, (_, i) => H0[i * cols + i]);
      const W0 = Float32Array.from(W.data);
      for (let i = 0; i < cols; i++) {
        if (diag[i] === 0) {
          diag[i] = 1;
          for (let r = 0; r < rows; r++) W0[r * cols + i] = 0;
        }
      }
      const perm = Int32Array.from({ length: cols }, (_, i) => i);
      if (o.actOrder) perm.sort((a, b) => diag[b] - diag[a] || a - b);
      // Permuted, dead-fixed, damped H and its upper Cholesky factor of the inverse.
      let mean = 0;
      for (let i = 0; i < cols; i++) mean += diag[i];
      const damp = (o.percdamp * mean) / cols;
      const Hp = new Float64Array(cols * cols);
      for (let i = 0; i < cols; i++) {
        for (let j = 0; j < cols; j++) Hp[i * cols + j] = H0[perm[i] * cols + perm[j]];
        Hp[i * cols + i] = diag[perm[i]] + damp;
      }
      const U = upperCholeskyOfInverse(Hp, cols);
      const Wp = new Float64Array(rows * cols);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) Wp[r * cols + c] = W0[r * cols + perm[c]];
      }
      const ngroups = gs > 0 ? cols / gs : 1;
      const scales = new Float32Array(rows * ngroups), zeros = new Float32Array(rows * ngroups);
      const fit = (c0: number, c1: number, g: number, src: Float32Array, srcCols: number) => {
        const n = c1 - c0, sl = new Float32Array(rows * n);
        for (let r = 0; r < rows; r++) {
          for (let j = 0; j < n; j++) sl[r * n + j] = src[r * srcCols + c0 + j];
        }
        const p = qllmFakeQuant(sl, rows, n, { bits: o.bits, sym: o.sym, unit: "row" });
        for (let r = 0; r < rows; r++) {
          scales[r * ngroups + g] = p.scale[r];
          zeros[r * ngroups + g] = p.zero[r];
        }
      };
      if (gs === -1) fit(0, cols, 0, W0, cols); // the reference's find_params(W) up front
      const maxq = o.sym ? 2 ** (o.bits - 1) - 1 : 2 ** o.bits - 1;
      const off = o.sym ? maxq : 0;
      const codes = new Uint8Array(rows * cols), Q = new Float32Array(rows * cols);
      const qi = new Float64Array(rows), mag = new Float64Array(rows), err = new Float64Array(rows);
      let loss = 0;
      for (let c = 0; c < cols; c++) {
        const g = gs > 0 ? Math.floor(c / gs) : 0;
        if (gs > 0 && c % gs === 0) {
          fit(c, c + gs, g, Float32Array.from(Wp), cols); // dynamic groups on the updated weight
        }
        for (let r = 0; r < rows; r++) {
          const s = scales[r * ngroups + g], z = zeros[r * ngroups + g];
          const t = roundHalfEven(Math.fround(Wp[r * cols + c] / s)) + z;
          qi[r] = (o.sym ? Math.min(Math.max(t, -maxq), maxq) : Math.min(Math.max(t, 0), maxq)) - z;
        }
        if (o.rBit !== undefined) {
          for (let r = 0; r < rows; r++) mag[r] = Math.abs(qi[r]);
          sdr(mag, { qBit: o.bits, rBit: o.rBit, group: o.rGroup });
          for (let r = 0; r < rows; r++) qi[r] = Math.sign(qi[r]) * mag[r];
        }
        const d = U[c * cols + c];
        for (let r = 0; r < rows; r++) {
          const s = scales[r * ngroups + g], z = zeros[r * ngroups + g];
          const q = Math.fround(s * qi[r]) + 0;
          const oc = r * cols + perm[c];
          Q[oc] = q;
          codes[oc] = qi[r] + (o.sym ? off : z);
          const w = Wp[r * cols + c];
          loss += ((w - q) / d) ** 2;
          err[r] = (w - q) / d;
        }
        for (let r = 0; r < rows; r++) {
          if (err[r] === 0) continue;
          for (let j = c + 1; j < cols; j++) Wp[r * cols + j] -= err[r] * U[c * cols + j];
        }
      }
      const gIdx = gs > 0 ? new Int32Array(cols) : undefined;
      if (gIdx) { for (let c = 0; c < cols; c++) gIdx[perm[c]] = Math.floor(c / gs); }
      if (o.sym) zeros.fill(off);
      const meta: QuantMeta = {
        method: name,
        bits: o.bits,
        groupSize: gs,
        sym: false, // zeros stored explicitly (qllm-infer's grid is centred on maxq)
        shape: [rows, cols],
        codes,
        packed: packCodes(codes, o.bits),
        scales,
        zeros,
        gIdx,
        perm: o.actOrder ? perm : undefined,
        gIdxStored: gIdx !== undefined && o.actOrder,
        qrazor: o.rBit !== undefined ? { rBit: o.rBit, group: o.rGroup, along: "rows" } : undefined,
      };
      const valueBits = o.rBit !== undefined
        ? qrazorEffectiveBits({ qBit: o.bits, rBit: o.rBit, group: o.rGroup })
        : o.bits;
      const res: QuantResult = {
        Wq: { shape: [rows, cols], data: Q },
        meta,
        bitsPerWeight: valueBits + (o.sym ? 16 : 32) / (gs > 0 ? gs : cols),
        loss: loss / 2,
      };
      return Promise.resolve(res);
    },
  };
}
