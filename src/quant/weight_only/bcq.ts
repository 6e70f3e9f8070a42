/**
 * Binary-coding quantization (BCQ), the weight format of LUT-GEMM (Park et al., ICLR 2024; seed
 * 003's `lutgemm` section, reference `quantize_bcq.py` / `rtn_parameter.py`): every group of
 * weights is `w ≈ Σ_i α_i b_i` with `b_i ∈ {−1, +1}` (one bit plane per `i`) and per-group
 * scales `α_1 ≥ α_2 ≥ … ≥ α_q ≥ 0`, optionally plus an offset (the exact form of a uniform grid).
 *
 * Search, as the reference's `rounds`:
 * - greedy (rounds 0): `b_i = sign(r)`, `α_i = mean|r|`, `r −= α_i b_i`, plane by plane;
 * - refined greedy (rounds 1) and alternating (rounds ≥ 2; the seed's runs use 30): `rounds`
 *   times, `α` ← least squares for the current `B` (`(BᵀB) α = Bᵀw`), `α ← sort(|α|, desc)`,
 *   then `B` ← the nearest of the `2^q` values `Σ ±α_i` per weight (`use_bst`, the reference's
 *   binary search tree; or, with `useBst: false`, greedy signs on the residual).
 *
 * Deviations, by construction: the least-squares step is an exact float64 solve (the reference
 * runs q steps of batched conjugate gradient with 1e-6 guards, equal in exact arithmetic); a
 * zero residual takes the sign +1 (torch's `sign(0) = 0` is not storable in one bit); α are
 * kept in float32 and counted as 16 bits. Each round cannot increase the squared error (the LS
 * step is optimal for `B`, the nearest-value step optimal for `α`), so alternating ≤ refined ≤
 * greedy per group — a test checks it on seeded rows.
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import { OptionError, QuantlabError } from "../../errors.ts";
import type { QuantFormat, QuantMeta, QuantResult, WeightQuantizer } from "../core/types.ts";
import { checkGroupColumns, validateBits } from "../core/grid.ts";

/** Options of {@linkcode bcq}. */
export interface BcqOptions {
  /** q, binary planes per weight, 1–8 (reference `qbits`, the `wbits` of the run script). */
  bits: number;
  /** Weights per α group along the input dimension; -1 (default) = per output channel. */
  groupSize?: number;
  /** 0 greedy, 1 refined greedy, ≥ 2 alternating (reference `rounds`; default 30, the seed's). */
  rounds?: number;
  /** Nearest-value B update (`use_bst`, default true); false = greedy signs on the residual. */
  useBst?: boolean;
  /**
   * Allow a `groupSize` that does not divide the columns (the last group is shorter; a group
   * larger than the row is the row). Default false: the reference's `view` needs whole groups.
   */
  partialGroups?: boolean;
}

function resolve(o: BcqOptions): Required<BcqOptions> {
  validateBits(o.bits, { min: 1, max: 8 });
  const g = o.groupSize ?? -1;
  if (!(g === -1 || (Number.isInteger(g) && g >= 1))) {
    throw new OptionError("groupSize", `must be -1 or a positive integer, got ${g}`);
  }
  const rounds = o.rounds ?? 30;
  if (!(Number.isInteger(rounds) && rounds >= 0)) {
    throw new OptionError("rounds", `must be an integer ≥ 0, got ${rounds}`);
  }
  return {
    bits: o.bits,
    groupSize: g,
    rounds,
    useBst: o.useBst ?? true,
    partialGroups: o.partialGroups ?? false,
  };
}

/** The packed BCQ description (`meta.method === "bcq"`). */
export interface BcqMeta extends QuantMeta {
  /** Bit planes: plane `i`, row `r`, word `k` at `(i·rows + r)·words + k`; bit 1 = +1. */
  planes: Uint32Array;
  /** 32-bit words per row of a plane, `⌈cols/32⌉`. */
  words: number;
  /** α per (row, group, plane), row-major `[rows, ngroups, q]`. */
  alphas: Float32Array;
  /** Offset per (row, group) (uniform→BCQ conversion only), float64 so the form is exact. */
  offsets?: Float64Array;
  /** Search rounds used (−1 for a converted uniform grid). */
  rounds: number;
}

/** `{ codes: pattern per weight (bit i = plane i), planes }` from ±1 signs `[n, q]`. */
function packPlanes(
  signs: (r: number, j: number, i: number) => boolean,
  rows: number,
  cols: number,
  q: number,
): { planes: Uint32Array; words: number; codes: Uint8Array } {
  const words = Math.ceil(cols / 32);
  const planes = new Uint32Array(q * rows * words), codes = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < cols; j++) {
      let c = 0;
      for (let i = 0; i < q; i++) {
        if (signs(r, j, i)) {
          c |= 1 << i;
          planes[(i * rows + r) * words + (j >>> 5)] |= 1 << (j & 31);
        }
      }
      codes[r * cols + j] = c;
    }
  }
  return { planes, words, codes };
}

/** Group of column `j` in a BCQ meta. */
function groupOf(m: QuantMeta, j: number): number {
  return m.gIdx ? m.gIdx[j] : m.groupSize > 0 ? Math.floor(j / m.groupSize) : 0;
}

/**
 * Rebuilds the BCQ weight bit-exactly: `fround(Σ_i α_i b_i + offset)`, summed in float64 in
 * plane order (for a converted uniform grid every term is exact, so this equals the grid's
 * `fround(scale · (code − zero))`).
 */
export function dequantizeBcq(meta: QuantMeta): Tensor {
  const m = meta as BcqMeta;
  const [rows, cols] = m.shape;
  const q = m.bits, ngroups = m.alphas.length / (rows * q);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < cols; j++) {
      const g = r * ngroups + groupOf(m, j);
      let s = 0;
      for (let i = 0; i < q; i++) {
        const bit = (m.planes[(i * rows + r) * m.words + (j >>> 5)] >>> (j & 31)) & 1;
        s += bit ? m.alphas[g * q + i] : -m.alphas[g * q + i];
      }
      out[r * cols + j] = m.offsets ? s + m.offsets[g] : s;
    }
  }
  return { shape: [rows, cols], data: out };
}

/** Storage bits per weight: `q` planes + 16-bit α per plane per group (+ a 16-bit offset). */
export function bcqBitsPerWeight(meta: QuantMeta): number {
  const m = meta as BcqMeta;
  const [rows, cols] = m.shape;
  const sets = m.alphas.length / m.bits;
  return m.bits + ((16 * m.bits + (m.offsets ? 16 : 0)) * sets) / (rows * cols);
}

/** Solves the small SPD-or-singular system `A x = b` (`q×q`) by pivoted elimination; a zero pivot zeroes that unknown. */
function solveSmall(A: Float64Array, b: Float64Array, q: number): Float64Array {
  const M = A.slice(), y = b.slice();
  const piv = Array.from({ length: q }, (_, i) => i);
  const x = new Float64Array(q);
  const scale = Math.max(1e-300, ...Array.from({ length: q }, (_, i) => Math.abs(A[i * q + i])));
  const used = new Array<boolean>(q).fill(false);
  for (let k = 0; k < q; k++) {
    let p = -1, best = 1e-12 * scale;
    for (let i = 0; i < q; i++) {
      if (!used[i] && Math.abs(M[i * q + k]) > best) {
        best = Math.abs(M[i * q + k]);
        p = i;
      }
    }
    piv[k] = p;
    if (p < 0) continue;
    used[p] = true;
    for (let i = 0; i < q; i++) {
      if (i === p) continue;
      const fct = M[i * q + k] / M[p * q + k];
      if (fct === 0) continue;
      for (let j = k; j < q; j++) M[i * q + j] -= fct * M[p * q + j];
      y[i] -= fct * y[p];
    }
  }
  for (let k = 0; k < q; k++) if (piv[k] >= 0) x[k] = y[piv[k]] / M[piv[k] * q + k];
  return x;
}

/**
 * BCQ search for one group `w` (length n): returns `α` (length q) and the signs `B` (`[n, q]`,
 * +1 = true), following the module doc. Exported for tests and scripts.
 */
export function bcqGroup(
  w: ArrayLike<number>,
  opts: { bits: number; rounds: number; useBst: boolean },
): { alpha: Float64Array; B: Uint8Array } {
  const n = w.length, q = opts.bits;
  const B = new Uint8Array(n * q);
  let alpha = new Float64Array(q);
  const r = Float64Array.from(w);
  // greedy
  for (let i = 0; i < q; i++) {
    let a = 0;
    for (let k = 0; k < n; k++) a += Math.abs(r[k]);
    a /= n;
    alpha[i] = a;
    for (let k = 0; k < n; k++) {
      const pos = r[k] >= 0;
      B[k * q + i] = pos ? 1 : 0;
      r[k] -= pos ? a : -a;
    }
  }
  const nv = 1 << q;
  const vals = new Float64Array(nv), order = new Int32Array(nv);
  for (let round = 0; round < opts.rounds && q > 1; round++) {
    // α ← LS for B
    const A = new Float64Array(q * q), bt = new Float64Array(q);
    for (let k = 0; k < n; k++) {
      for (let i = 0; i < q; i++) {
        const si = B[k * q + i] ? 1 : -1;
        bt[i] += si * w[k];
        for (let j = 0; j < q; j++) A[i * q + j] += si * (B[k * q + j] ? 1 : -1);
      }
    }
    alpha = solveSmall(A, bt, q).map(Math.abs).sort((a, b) => b - a);
    // B ← nearest of Σ ±α_i (or greedy signs)
    if (opts.useBst) {
      for (let c = 0; c < nv; c++) {
        let s = 0;
        for (let i = 0; i < q; i++) s += (c >>> i) & 1 ? alpha[i] : -alpha[i];
        vals[c] = s;
        order[c] = c;
      }
      order.sort((a, b) => vals[a] - vals[b]);
      for (let k = 0; k < n; k++) {
        let lo = 0, hi = nv - 1;
        const x = w[k];
        while (lo < hi) {
          const mid = (lo + hi) >>> 1;
          if (x < (vals[order[mid]] + vals[order[mid + 1]]) / 2) hi = mid;
          else lo = mid + 1;
        }
        const c = order[lo];
        for (let i = 0; i < q; i++) B[k * q + i] = (c >>> i) & 1;
      }
    } else {
      for (let k = 0; k < n; k++) {
        let rr = w[k];
        for (let i = 0; i < q; i++) {
          const pos = rr >= 0;
          B[k * q + i] = pos ? 1 : 0;
          rr -= pos ? alpha[i] : -alpha[i];
        }
      }
    }
  }
  return { alpha, B };
}

/**
 * BCQ of a `[rows, cols]` weight, each (row, group) searched independently by
 * {@linkcode bcqGroup}. `loss` is `Σ (w − ŵ)²`.
 */
export function bcqQuantize(W: Tensor, options: BcqOptions & { layer?: string }): QuantResult {
  const t0 = performance.now();
  const o = resolve(options);
  if (W.shape.length !== 2) {
    throw new QuantlabError(`bcq: ${options.layer ?? "weight"} must be 2-D, got [${W.shape}]`);
  }
  const [rows, cols] = W.shape, q = o.bits;
  const gs = o.groupSize > 0 ? o.groupSize : cols;
  checkGroupColumns(cols, { ...o, layer: options.layer });
  const ngroups = Math.ceil(cols / gs);
  const alphas = new Float32Array(rows * ngroups * q);
  const signs = new Uint8Array(rows * cols * q);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < ngroups; g++) {
      const w = W.data.subarray(r * cols + g * gs, r * cols + Math.min(g * gs + gs, cols));
      const { alpha, B } = bcqGroup(w, o);
      for (let i = 0; i < q; i++) alphas[(r * ngroups + g) * q + i] = alpha[i];
      signs.set(B, (r * cols + g * gs) * q);
    }
  }
  const { planes, words, codes } = packPlanes(
    (r, j, i) => signs[(r * cols + j) * q + i] === 1,
    rows,
    cols,
    q,
  );
  const meta: BcqMeta = {
    method: "bcq",
    bits: q,
    groupSize: o.groupSize,
    sym: true,
    shape: [rows, cols],
    codes,
    scales: new Float32Array(0),
    zeros: new Float32Array(0),
    planes,
    words,
    alphas,
    rounds: o.rounds,
    timings: { seconds: 0 },
  };
  const Wq = dequantizeBcq(meta);
  let loss = 0;
  for (let i = 0; i < Wq.data.length; i++) loss += (W.data[i] - Wq.data[i]) ** 2;
  meta.timings = { seconds: (performance.now() - t0) / 1000 };
  return { Wq, meta, bitsPerWeight: bcqBitsPerWeight(meta), loss };
}

/**
 * The exactly equivalent BCQ form of a uniform grid meta (RTN/GPTQ: `w = s·(c − z)`, integer
 * code `c` of `q` bits), as the reference's `rtn_parameter.py` conversion: with `c = Σ 2^i·bit_i`
 * and `b_i = 2·bit_i − 1`, `w = Σ_i (s·2^(i−1)) b_i + s·((2^q − 1)/2 − z)`: `α_i = s·2^(i−1)`
 * (exact in float32) and a float64 offset per group. {@linkcode dequantizeBcq} of the result
 * equals the grid's dequantized weight bit for bit.
 */
export function bcqFromUniform(meta: QuantMeta): BcqMeta {
  if (!["rtn", "gptq"].includes(meta.method)) {
    throw new OptionError("meta", `bcqFromUniform needs an RTN or GPTQ grid, got ${meta.method}`);
  }
  const [rows, cols] = meta.shape, q = meta.bits;
  const ngroups = meta.scales.length / rows;
  const alphas = new Float32Array(rows * ngroups * q), offsets = new Float64Array(rows * ngroups);
  for (let k = 0; k < rows * ngroups; k++) {
    const s = meta.scales[k], z = meta.zeros[k];
    for (let i = 0; i < q; i++) alphas[k * q + i] = s * 2 ** (i - 1);
    offsets[k] = s * ((2 ** q - 1) / 2 - z);
  }
  const { planes, words, codes } = packPlanes(
    (r, j, i) => ((meta.codes[r * cols + j] >>> i) & 1) === 1,
    rows,
    cols,
    q,
  );
  return {
    method: "bcq",
    bits: q,
    groupSize: meta.groupSize,
    sym: false,
    shape: [rows, cols],
    codes,
    scales: new Float32Array(0),
    zeros: new Float32Array(0),
    gIdx: meta.gIdx,
    planes,
    words,
    alphas,
    offsets,
    rounds: -1,
  };
}

/**
 * The BCQ weight quantizer (no Hessian). Options ↔ reference: `bits` ↔ `qbits`, `groupSize` ↔
 * `group_size`, `rounds` ↔ `rounds` (the run script's third argument), `useBst` ↔ `use_bst`.
 *
 * @example
 * ```ts
 * const r = await bcq({ bits: 3, groupSize: 128, rounds: 30 }).quantizeWeight(W, { nsamples: 0 });
 * ```
 */
export function bcq(options: BcqOptions): WeightQuantizer {
  const o = resolve(options);
  return {
    name: "bcq",
    needsHessian: false,
    options: { ...o },
    checkColumns: (cols, layer) => checkGroupColumns(cols, { ...o, layer }),
    quantizeWeight: (W, _stats, ctx) =>
      new Promise((res) => res(bcqQuantize(W, { ...o, layer: ctx?.layer }))),
  };
}

/** BCQ's storage format: binary planes with per-group scales (and offsets). */
export const bcqFormat: QuantFormat = {
  method: "bcq",
  dequantize: dequantizeBcq,
  bitsPerWeight: bcqBitsPerWeight,
};
