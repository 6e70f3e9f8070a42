/**
 * LLM.int8() (Dettmers et al. 2022): vector-wise int8 matrix multiplication with mixed-precision
 * decomposition. For `Y = X Wᵀ` (X [rows, in], W [out, in]):
 *
 * - outlier feature dimensions `O = { j : ∃i |X_ij| ≥ threshold }` (bitsandbytes' test
 *   `A.abs() >= threshold`, default 6.0) are multiplied in 16-bit (here float32/64): `X_O W_Oᵀ`;
 * - the rest is vector-wise int8: each row i of X (outlier columns zeroed) gets `c_x,i = max_j
 *   |X_ij|`, each output row o of W (each column of the paper's `W` [in, out]) `c_w,o = max_j
 *   |W_oj|`; codes `round(127 · x / c)` (half to even, as `torch.round`), the int32 product
 *   `C_io = Σ_j qx_ij qw_oj` exactly, then `Y_io = C_io · c_x,i · c_w,o / 127²` (the paper's Eq. 3–4).
 *
 * Deviation, measured from the reference: bitsandbytes keeps only the int8 weight and
 * dequantizes its outlier columns (`CB[:, idx] · SCB / 127`); here the outlier columns use the
 * FP weight, as the paper's decomposition `X_f16^O W_f16^O` writes it — so threshold 0 (every
 * dimension an outlier) is exactly the FP product and threshold ∞ plain vector-wise int8.
 * `c_w` spans every column of W (outlier columns included), as bitsandbytes quantizes W once.
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import type { Model } from "../../models/model.ts";
import type { ForwardHooks } from "../../models/decoder.ts";
import { checkOptions, LLM_INT8_SPECS } from "../core/options.ts";
import { roundHalfEven } from "../core/grid.ts";

/** Row-wise absmax int8 codes of `x` [rows, cols]: codes and the absmax per row. */
export function int8Rowwise(
  x: Float32Array,
  rows: number,
  cols: number,
  skip?: Uint8Array,
): { q: Int8Array; absmax: Float32Array } {
  const q = new Int8Array(rows * cols);
  const absmax = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let m = 0;
    for (let j = 0; j < cols; j++) {
      if (skip?.[j]) continue;
      const a = Math.abs(x[r * cols + j]);
      if (a > m) m = a;
    }
    absmax[r] = m;
    if (m === 0) continue;
    const f = 127 / m;
    for (let j = 0; j < cols; j++) {
      if (skip?.[j]) continue;
      q[r * cols + j] = roundHalfEven(x[r * cols + j] * f);
    }
  }
  return { q, absmax };
}

/** `C = A Bᵀ` of int8 codes A [m, k], B [n, k] with exact integer (int32-range) sums. */
export function int8MatmulTransB(
  A: Int8Array,
  B: Int8Array,
  dims: { m: number; n: number; k: number },
): Int32Array {
  const { m, n, k } = dims;
  const C = new Int32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let o = 0; o < n; o++) {
      let s = 0;
      for (let j = 0; j < k; j++) s += A[i * k + j] * B[o * k + j];
      C[i * n + o] = s;
    }
  }
  return C;
}

/** A weight prepared for LLM.int8(): int8 codes per output row and the row absmax. */
export interface Int8Weight {
  /** Codes [out, in]. */
  q: Int8Array;
  /** max |W_o·| per output row. */
  absmax: Float32Array;
  /** The FP weight (outlier columns). */
  W: Tensor;
}

/** Quantizes `W` [out, in] once for {@linkcode llmInt8Matmul}. */
export function int8Weight(W: Tensor): Int8Weight {
  const [rows, cols] = W.shape;
  const { q, absmax } = int8Rowwise(W.data, rows, cols);
  return { q, absmax, W };
}

/**
 * `X Wᵀ` by LLM.int8() (see the module doc) and the outlier columns found in `X`.
 */
export function llmInt8Matmul(
  X: Tensor,
  w: Int8Weight,
  opts: { threshold?: number } = {},
): { y: Tensor; outliers: number[] } {
  const threshold = opts.threshold ?? 6.0;
  const [out, k] = w.W.shape;
  const rows = X.data.length / k;
  const isOut = new Uint8Array(k);
  const outliers: number[] = [];
  for (let j = 0; j < k; j++) {
    for (let r = 0; r < rows; r++) {
      if (Math.abs(X.data[r * k + j]) >= threshold) {
        isOut[j] = 1;
        outliers.push(j);
        break;
      }
    }
  }
  const { q: qx, absmax: cx } = int8Rowwise(X.data, rows, k, isOut);
  const C = int8MatmulTransB(qx, w.q, { m: rows, n: out, k });
  const y = new Float32Array(rows * out);
  const W = w.W.data;
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < out; o++) {
      let acc = C[r * out + o] * (cx[r] * w.absmax[o] / (127 * 127));
      for (const j of outliers) acc += X.data[r * k + j] * W[o * k + j];
      y[r * out + o] = acc;
    }
  }
  return { y: { shape: [rows, out], data: y }, outliers };
}

/** Options of {@linkcode llmInt8}. */
export interface LlmInt8Options {
  /** Outlier threshold on |x| (default 6.0, bitsandbytes' `llm_int8_threshold`); Infinity = none. */
  threshold?: number;
}

/** What {@linkcode llmInt8} reports: the outlier dimensions seen per linear (union over calls). */
export interface LlmInt8Report {
  /** Linear name → sorted outlier input dimensions. */
  outliers: Map<string, Set<number>>;
}

/**
 * The model with every block linear's product replaced by {@linkcode llmInt8Matmul} (a
 * `linearProduct` forward hook, host forward only) and a live report of the outlier dimensions
 * each linear met. Weights are quantized on first use and kept. This is the host-only escape
 * hatch (exact int32 sums); the spec form `points.linearProduct = { "*": { method: "llm_int8" } }`
 * (`kernels/llm_int8.ts`, what `applyQllmConfig` uses) runs on both backends.
 */
export function llmInt8(
  model: Model,
  opts: LlmInt8Options = {},
): { model: Model; report: LlmInt8Report } {
  checkOptions("llmInt8", opts, LLM_INT8_SPECS);
  const threshold = opts.threshold ?? 6.0;
  const cache = new Map<string, Int8Weight>();
  const report: LlmInt8Report = { outliers: new Map() };
  const prev: ForwardHooks = model.hooks ?? {};
  const hooks: ForwardHooks = {
    ...prev,
    linearProduct: (name, x, W) => {
      let w = cache.get(name);
      if (!w || w.W !== W) cache.set(name, w = int8Weight(W));
      const r = llmInt8Matmul(x, w, { threshold });
      let set = report.outliers.get(name);
      if (!set) report.outliers.set(name, set = new Set());
      for (const j of r.outliers) set.add(j);
      return r.y;
    },
  };
  return { model: { ...model, hooks }, report };
}
