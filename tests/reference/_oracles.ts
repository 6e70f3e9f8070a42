/**
 * Plain-TS transcriptions of the reference codes' semantics, written from the reference sources
 * (not from quantlab's code) so the tests in this folder compare two independent programs:
 * - `Quantizer.find_params` / `quantize` of IST-DASLab/gptq `quant.py` (as copied into
 *   linkedin/QuantEase `method/quant.py`), float32 like the reference's tensors;
 * - QuantEase's default CD (`method/quantease.py` @e417741), float64;
 * - QuIP's `ldlq` / `ldlqRG` visiting order and `qfn a`/greedy clamping
 *   (Cornell-RelaxML/QuIP `method.py`, `quant.py`).
 * @module
 */
const f = Math.fround;

/** Round half to even (`torch.round`). */
export function roundEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** One row grid: `scale`, `zero` (float32) and `maxq`. */
export interface RowGrid {
  scale: number;
  zero: number;
  maxq: number;
}

/** `find_params(x, weight=True)` for one row slice (min/max including 0, float32). */
export function findParamsRow(x: ArrayLike<number>, bits: number, sym: boolean): RowGrid {
  const maxq = 2 ** bits - 1;
  let xmin = 0, xmax = 0;
  for (let i = 0; i < x.length; i++) {
    xmin = Math.min(xmin, x[i]);
    xmax = Math.max(xmax, x[i]);
  }
  if (sym) {
    xmax = Math.max(Math.abs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin === 0 && xmax === 0) {
    xmin = -1;
    xmax = 1;
  }
  const scale = f(f(xmax - xmin) / maxq);
  const zero = sym ? f((maxq + 1) / 2) : roundEven(f(-xmin / scale));
  return { scale, zero, maxq };
}

/** `quantize(x, scale, zero, maxq)` → the code (`clamp(round(x/s) + z, 0, maxq)`). */
export function codeOf(x: number, g: RowGrid): number {
  return Math.min(Math.max(roundEven(f(x / g.scale)) + g.zero, 0), g.maxq);
}

/** The dequantized value of a code. */
export function valueOf(code: number, g: RowGrid): number {
  return f(g.scale * (code - g.zero));
}

/**
 * QuantEase as `method/quantease.py` runs by default: grids fitted once on `W` (per row, or per
 * group of `groupSize` columns), `Ŵ = W`, then `numIter` Gauss–Seidel sweeps
 * `u = (Σ_k W[:,k] Σ_kj − Σ_{k≠j} Ŵ[:,k] Σ_kj) / Σ_jj`, rounded onto the grid unless
 * `relax` and `t % 3 == 1 && t != numIter − 1 && t ≤ 25`. Columns with `Σ_jj = 0` are re-rounded.
 * Returns the codes (row-major) of the final `Ŵ`. Plain float64 arithmetic, O(rows·cols²) per sweep.
 */
export function quanteaseReference(
  W: Float32Array,
  H: Float64Array,
  o: {
    rows: number;
    cols: number;
    bits: number;
    groupSize: number;
    numIter: number;
    relax: boolean;
    sym?: boolean;
    /** `"rtn"`: start from the rounded `W` instead (quantlab's variant). */
    init?: "weight" | "rtn";
  },
): Uint8Array {
  const { rows, cols, bits, groupSize, numIter, relax } = o;
  const gs = groupSize > 0 ? groupSize : cols;
  const grids: RowGrid[][] = [];
  for (let r = 0; r < rows; r++) {
    const row: RowGrid[] = [];
    for (let g0 = 0; g0 < cols; g0 += gs) {
      row.push(findParamsRow(W.subarray(r * cols + g0, r * cols + g0 + gs), bits, !!o.sym));
    }
    grids.push(row);
  }
  const What = Float64Array.from(W);
  const codes = new Uint8Array(rows * cols);
  if (o.init === "rtn") {
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < cols; j++) {
        const g = grids[r][Math.floor(j / gs)];
        codes[r * cols + j] = codeOf(W[r * cols + j], g);
        What[r * cols + j] = valueOf(codes[r * cols + j], g);
      }
    }
  }
  for (let t = 0; t < numIter; t++) {
    const round = !relax || t % 3 !== 1 || t === numIter - 1 || t > 25;
    for (let j = 0; j < cols; j++) {
      const d = H[j * cols + j];
      for (let r = 0; r < rows; r++) {
        const g = grids[r][Math.floor(j / gs)];
        let u: number;
        if (d === 0) u = What[r * cols + j];
        else {
          let s = 0;
          for (let k = 0; k < cols; k++) {
            s += W[r * cols + k] * H[k * cols + j];
            if (k !== j) s -= What[r * cols + k] * H[k * cols + j];
          }
          u = s / d;
        }
        if (round || d === 0) {
          const c = codeOf(u, g);
          codes[r * cols + j] = c;
          What[r * cols + j] = valueOf(c, g);
        } else What[r * cols + j] = u;
      }
    }
  }
  return codes;
}
