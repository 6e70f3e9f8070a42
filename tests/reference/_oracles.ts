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

/** Lower Cholesky factor of a row-major SPD `n × n` matrix (plain float64). */
export function choleskyLower(A: ArrayLike<number>, n: number): Float64Array {
  const L = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    let s = A[j * n + j];
    for (let k = 0; k < j; k++) s -= L[j * n + k] * L[j * n + k];
    if (!(s > 0)) throw new Error(`not positive definite at ${j}`);
    const ljj = Math.sqrt(s);
    L[j * n + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      let t = A[i * n + j];
      for (let k = 0; k < j; k++) t -= L[i * n + k] * L[j * n + k];
      L[i * n + j] = t / ljj;
    }
  }
  return L;
}

/**
 * QuIP's `round_ldl(w, H, nbits, n_greedy_passes)` (vector_balance.py): `L = chol(H)·diag(L)⁻¹
 * − I` (strictly lower); columns from last to first,
 * `ŵ_i = clamp(⌊w_i + (w_{i:} − ŵ_{i:})·L_{i:,i} + ½⌋, 0, maxq)`; then greedy passes from last
 * to first, `wr_i ← round(wr_i − (s·H)_i / H_ii)` unclamped with `s ← s + Δ`, the whole `wr`
 * clamped after each pass (`s` keeps the unclamped values), stop when a pass leaves `wr`
 * unchanged. `sortByDiag` is `round_sorted_ldlqRG`: the columns permuted by the (stable)
 * ascending `argsort(diag H)` first. Returns codes (float64, row-major).
 */
export function roundLdlReference(
  w: Float64Array,
  H: Float64Array,
  o: { rows: number; cols: number; maxq: number; npasses: number; sortByDiag?: boolean },
): Float64Array {
  const { rows: m, cols: d, maxq } = o;
  let p = Array.from({ length: d }, (_, i) => i);
  if (o.sortByDiag) p = p.sort((a, b) => H[a * d + a] - H[b * d + b]);
  const wp = new Float64Array(m * d), Hp = new Float64Array(d * d);
  for (let r = 0; r < m; r++) for (let c = 0; c < d; c++) wp[r * d + c] = w[r * d + p[c]];
  for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) Hp[i * d + j] = H[p[i] * d + p[j]];
  const L = choleskyLower(Hp, d);
  const U = new Float64Array(d * d); // unit-lower minus I
  for (let i = 0; i < d; i++) {
    for (let k = i + 1; k < d; k++) U[k * d + i] = L[k * d + i] / L[i * d + i];
  }
  const what = wp.slice();
  const clamp = (x: number) => Math.min(Math.max(x, 0), maxq);
  for (let i = d - 1; i >= 0; i--) {
    for (let r = 0; r < m; r++) {
      let fb = 0;
      for (let k = i; k < d; k++) fb += (wp[r * d + k] - what[r * d + k]) * U[k * d + i];
      what[r * d + i] = clamp(Math.floor(wp[r * d + i] + fb + 0.5));
    }
  }
  const wr = what.slice();
  const s = new Float64Array(m * d);
  for (let i = 0; i < s.length; i++) s[i] = what[i] - wp[i];
  for (let pass = 0; pass < o.npasses; pass++) {
    for (let i = d - 1; i >= 0; i--) {
      for (let r = 0; r < m; r++) {
        let hs = 0;
        for (let k = 0; k < d; k++) hs += s[r * d + k] * Hp[k * d + i];
        const nv = roundEven(wr[r * d + i] - hs / Hp[i * d + i]);
        s[r * d + i] += nv - wr[r * d + i];
        wr[r * d + i] = nv;
      }
    }
    let same = true;
    for (let i = 0; i < wr.length; i++) {
      wr[i] = clamp(wr[i]);
      if (wr[i] !== what[i]) same = false;
    }
    if (same) break;
    what.set(wr);
  }
  const out = new Float64Array(m * d);
  for (let r = 0; r < m; r++) for (let c = 0; c < d; c++) out[r * d + p[c]] = wr[r * d + c];
  return out;
}

/** Dense normalized Sylvester–Hadamard matrix `H_n/√n` (n a power of two), row-major. */
export function hadamardMatrix(n: number): Float64Array {
  const M = new Float64Array(n * n);
  const s = 1 / Math.sqrt(n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let x = i & j, p = 0;
      while (x) {
        p ^= x & 1;
        x >>= 1;
      }
      M[i * n + j] = p ? -s : s;
    }
  }
  return M;
}

/**
 * FrameQuant's analysis matrix (`k × d`, dense) at redundancy 1 for `d` a multiple of
 * `2·lDen`, built the way the reference builds it: `construct_real_tff(K, l, n)` (spectral
 * tetris rows of ones — `n/l` is an integer here —, modulation `e^{2πi·k·n/K}/√K`, the real
 * representation with even rows `[Re, −Im]` and odd rows `[Im, Re]`), `get_tff_blks` (per
 * subspace `l` the `(2, K, cols)` block viewed as `2K × cols`), then `tff_project`: signs `D`
 * and `H/√d₂` on each block of `d₂`, and the einsum/permute layout (coefficient `j·U + u`).
 */
export function referenceFrameMatrix(d: number, signs: ArrayLike<number>, lDen = 16): Float64Array {
  const lTff = Math.floor(d / lDen);
  const K = Math.round(Math.floor(d / lTff) * 1);
  const l = Math.floor(lTff / 2), nC = d / 2;
  const per = nC / l; // complex columns per subspace (an integer here)
  // tff_lxn: row `row` has ones in complex columns [row·per, (row+1)·per).
  // Real TFF: tffsReal[k][2·row + p][c], c over 2n real columns.
  const U = l, width = 2 * per; // real block width
  const blocks: Float64Array[] = []; // each (2K × width), row index p·K + k
  for (let row = 0; row < l; row++) {
    const B = new Float64Array(2 * K * width);
    for (let p = 0; p < 2; p++) {
      for (let k = 0; k < K; k++) {
        for (let m = 0; m < per; m++) {
          const nGlobal = row * per + m;
          const th = (2 * Math.PI * k * nGlobal) / K;
          const re = Math.cos(th) / Math.sqrt(K), im = Math.sin(th) / Math.sqrt(K);
          const r0 = (p * K + k) * width;
          if (p === 0) {
            B[r0 + 2 * m] = re;
            B[r0 + 2 * m + 1] = -im;
          } else {
            B[r0 + 2 * m] = im;
            B[r0 + 2 * m + 1] = re;
          }
        }
      }
    }
    blocks.push(B);
  }
  let d2 = 1;
  while (d % (d2 * 2) === 0) d2 *= 2;
  const Hd = hadamardMatrix(d2);
  // Hadamard step as a dense d × d matrix: y = blockdiag(H·D) x.
  const T = new Float64Array(d * d);
  for (let b = 0; b < d; b += d2) {
    for (let i = 0; i < d2; i++) {
      for (let j = 0; j < d2; j++) T[(b + i) * d + b + j] = Hd[i * d2 + j] * signs[j];
    }
  }
  const rowsOut = 2 * K;
  const A = new Float64Array(rowsOut * U * d);
  for (let u = 0; u < U; u++) {
    const B = blocks[u];
    for (let j = 0; j < rowsOut; j++) {
      const outRow = j * U + u;
      for (let c = 0; c < width; c++) {
        const coef = B[j * width + c];
        if (coef === 0) continue;
        const src = u * width + c;
        for (let x = 0; x < d; x++) A[outRow * d + x] += coef * T[src * d + x];
      }
    }
  }
  return A;
}

/**
 * FrameQuant's `find_params_FrameQuant` for one row slice (float64 statistics, unbiased σ):
 * `scale = x_sigma·σ/(maxq/2)`, `zero = round((1 − mean/(2σ))·maxq/2)` (asymmetric).
 */
export function frameQuantGridRow(
  x: ArrayLike<number>,
  bits: number,
  xSigma: number,
): { scale: number; zero: number } {
  const maxq = 2 ** bits - 1, n = x.length;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += x[i];
  mean /= n;
  let v = 0;
  for (let i = 0; i < n; i++) v += (x[i] - mean) ** 2;
  const std = Math.sqrt(v / (n - 1));
  return {
    scale: f((xSigma * std) / (maxq / 2)),
    zero: roundEven((1 - mean / (2 * std)) * maxq / 2),
  };
}

/**
 * QuIP's `mul_ortho_butterfly((B, p_in, p_out), I)` (method.py) as a dense `n × n` matrix, for
 * given blocks and permutations: rows gathered by `p_in`; for factor `i` (`pre = Π pfn[:i]`,
 * `post = Π pfn[i+1:]`) the tensor viewed as `(pre, p, post, n)` is permuted to
 * `(pre·post, p, n)` and multiplied by the batch `B[i]` (`pre·post` blocks `p × p`), then viewed
 * back; finally rows gathered by `p_out`.
 */
export function butterflyMatrix(
  factors: number[],
  B: Float64Array[][],
  pIn: ArrayLike<number>,
  pOut: ArrayLike<number>,
): Float64Array {
  const n = factors.reduce((a, b) => a * b, 1);
  let X = new Float64Array(n * n);
  for (let r = 0; r < n; r++) X[r * n + pIn[r]] = 1; // I[p_in, :]
  for (let i = 0; i < factors.length; i++) {
    const p = factors[i];
    const pre = factors.slice(0, i).reduce((a, b) => a * b, 1);
    const post = factors.slice(i + 1).reduce((a, b) => a * b, 1);
    const Y = new Float64Array(n * n);
    for (let m0 = 0; m0 < pre; m0++) {
      for (let s = 0; s < post; s++) {
        const blk = B[i][m0 * post + s];
        for (let j = 0; j < p; j++) {
          const row = (m0 * p + j) * post + s;
          for (let c = 0; c < p; c++) {
            const src = (m0 * p + c) * post + s;
            const m = blk[j * p + c];
            for (let q = 0; q < n; q++) Y[row * n + q] += m * X[src * n + q];
          }
        }
      }
    }
    X = Y;
  }
  const Z = new Float64Array(n * n);
  for (let r = 0; r < n; r++) Z.set(X.subarray(pOut[r] * n, (pOut[r] + 1) * n), r * n);
  return Z;
}
