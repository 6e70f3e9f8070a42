/**
 * Packed layout of group-wise quantized weights for the dequant-matmul kernels
 * (`dequant_gemv.ts`, `dequant_gemm.ts`), the CPU packer and the CPU references.
 *
 * Weight W has shape [rows = out, cols = in]; codes are unsigned `bits`-bit integers
 * (bits ∈ {2, 3, 4, 8}); groups run along the input dimension and `gIdx[col]` is the group of
 * input column `col` (act-order: any assignment); `w[r, col] = scale[r, g] · (code − zero[r, g])`
 * with `g = gIdx[col]`.
 *
 * Layout ("group-sorted 32-column chunks"):
 * - The input columns are reordered so that each group's columns are contiguous (groups in
 *   increasing order, columns within a group in increasing order), and each group's run is padded
 *   with empty slots to a multiple of 32. The result is `chunks` chunks of 32 packed positions;
 *   every chunk lies in exactly one group, `chunkGroup[c]`. Without act-order and with
 *   `cols % groupSize == 0`, `groupSize % 32 == 0`, the order is the identity and there is no
 *   padding (`identity = true`).
 * - `colIndex[p]` (length `chunks·32`) is the original column of packed position p, or
 *   {@linkcode NO_COL} for padding. Kernels gather `x[colIndex[p]]` (0 for padding) unless
 *   `identity`.
 * - `qweight` (u32, [rows, chunks, bits]): the 32 codes of a chunk of a row form a little-endian
 *   bit stream of `bits` 32-bit words: code j occupies bits [j·bits, (j+1)·bits) (3-bit codes
 *   straddle words). Padding codes are 0.
 * - `scaleZero` (f32, [rows, groups, 2]): (scale, zero) interleaved, kept in f32 so dequantization
 *   reproduces the quantizer's values exactly.
 * @module
 */

/** Marks a padding slot in `colIndex`. */
export const NO_COL = 0xffffffff;

/** Bit widths the kernels support. */
export type PackedBits = 2 | 3 | 4 | 8;

/** Packed group-wise weights (see the module doc for the layout). */
export interface PackedWeights {
  /** Bits per code. */
  bits: PackedBits;
  /** Output features (rows of W). */
  rows: number;
  /** Input features (columns of W). */
  cols: number;
  /** 32-column chunks per row (after group sorting and padding). */
  chunks: number;
  /** Number of groups. */
  groups: number;
  /** Codes, u32 [rows, chunks, bits]. */
  qweight: Uint32Array;
  /** (scale, zero) per row and group, f32 [rows, groups, 2]. */
  scaleZero: Float32Array;
  /** Group of each chunk, [chunks]. */
  chunkGroup: Uint32Array;
  /** Original column of each packed position, or NO_COL, [chunks·32]. */
  colIndex: Uint32Array;
  /** True when `colIndex[p] === p` for every p (no reordering, no padding). */
  identity: boolean;
  /**
   * True when `qweight` is not chunk words but the quantizer's own stream (`grid.ts`
   * `packCodes`: the codes of W row-major in the ORIGINAL column order, LSB-first, code `i` at
   * bits [i·bits, (i+1)·bits)): the kernels read packed position p's code at `row·cols +
   * colIndex[p]` (see {@linkcode streamWeights}). Only with `identity` false (on the identity
   * layout the stream is the chunk words).
   */
  stream?: boolean;
}

/** Options of {@linkcode packWeights}. */
export interface PackOptions {
  /** Rows (output features). */
  rows: number;
  /** Columns (input features). */
  cols: number;
  /** Bits per code. */
  bits: PackedBits;
  /** Scales, [rows, groups]. */
  scales: Float32Array;
  /** Zero points (integers stored as floats), [rows, groups]. */
  zeros: Float32Array;
  /** Group of each input column, [cols] (act-order). Default: `floor(col / groupSize)`. */
  gIdx?: ArrayLike<number>;
  /** Group size when `gIdx` is absent. */
  groupSize?: number;
}

/** Packs codes [rows, cols] (row-major, values < 2^bits) into {@linkcode PackedWeights}. */
export function packWeights(codes: ArrayLike<number>, opts: PackOptions): PackedWeights {
  const { rows, cols, bits } = opts;
  if (![2, 3, 4, 8].includes(bits)) throw new Error(`packWeights: bits=${bits} not in 2/3/4/8`);
  if (codes.length !== rows * cols) {
    throw new Error(`packWeights: ${codes.length} codes for [${rows}, ${cols}]`);
  }
  const { chunks, groups, chunkGroup, colIndex, identity } = chunkLayout(opts);
  const mask = (1 << bits) - 1;
  const qweight = new Uint32Array(rows * chunks * bits);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < chunks; c++) {
      const base = (r * chunks + c) * bits;
      for (let j = 0; j < 32; j++) {
        const col = colIndex[c * 32 + j];
        if (col === NO_COL) continue;
        const v = codes[r * cols + col];
        if (v < 0 || v > mask || !Number.isInteger(v)) {
          throw new Error(`packWeights: code ${v} at [${r}, ${col}] out of range for ${bits} bits`);
        }
        const bit = j * bits, w = bit >> 5, sh = bit & 31;
        qweight[base + w] |= (v << sh) >>> 0;
        if (sh + bits > 32) qweight[base + w + 1] |= v >>> (32 - sh);
      }
    }
  }
  return {
    bits,
    rows,
    cols,
    chunks,
    groups,
    qweight,
    scaleZero: interleaveScaleZero(opts.scales, opts.zeros),
    chunkGroup,
    colIndex,
    identity,
  };
}

/** The group-sorted chunk layout of {@linkcode PackOptions} (the module doc), without codes. */
function chunkLayout(opts: PackOptions): {
  chunks: number;
  groups: number;
  chunkGroup: Uint32Array;
  colIndex: Uint32Array;
  identity: boolean;
} {
  const { rows, cols } = opts;
  let gIdx = opts.gIdx;
  if (!gIdx) {
    const gs = opts.groupSize ?? cols;
    gIdx = Array.from({ length: cols }, (_, c) => Math.floor(c / gs));
  }
  let groups = 0;
  for (let c = 0; c < cols; c++) groups = Math.max(groups, gIdx[c] + 1);
  if (opts.scales.length !== rows * groups || opts.zeros.length !== rows * groups) {
    throw new Error(`packWeights: scales/zeros need [${rows}, ${groups}] values`);
  }
  const byGroup: number[][] = Array.from({ length: groups }, () => []);
  for (let c = 0; c < cols; c++) byGroup[gIdx[c]].push(c);
  const colList: number[] = [];
  const chunkGroup: number[] = [];
  for (let g = 0; g < groups; g++) {
    const cs = byGroup[g];
    if (cs.length === 0) continue;
    const padded = Math.ceil(cs.length / 32) * 32;
    for (let i = 0; i < padded; i++) colList.push(i < cs.length ? cs[i] : NO_COL);
    for (let i = 0; i < padded / 32; i++) chunkGroup.push(g);
  }
  const colIndex = Uint32Array.from(colList);
  let identity = colIndex.length === cols;
  for (let p = 0; identity && p < cols; p++) identity = colIndex[p] === p;
  return {
    chunks: chunkGroup.length,
    groups,
    chunkGroup: Uint32Array.from(chunkGroup),
    colIndex,
    identity,
  };
}

function interleaveScaleZero(scales: Float32Array, zeros: Float32Array): Float32Array {
  const scaleZero = new Float32Array(scales.length * 2);
  for (let i = 0; i < scales.length; i++) {
    scaleZero[2 * i] = scales[i];
    scaleZero[2 * i + 1] = zeros[i];
  }
  return scaleZero;
}

/** The code at packed position (row r, chunk c, slot j). */
export function packedCode(pw: PackedWeights, r: number, c: number, j: number): number {
  if (pw.stream) {
    const col = pw.colIndex[c * 32 + j];
    if (col === NO_COL) return 0;
    const bit = (r * pw.cols + col) * pw.bits, w = Math.floor(bit / 32), sh = bit % 32;
    let v = pw.qweight[w] >>> sh;
    if (sh + pw.bits > 32) v |= pw.qweight[w + 1] << (32 - sh);
    return v & ((1 << pw.bits) - 1);
  }
  const base = (r * pw.chunks + c) * pw.bits;
  const bit = j * pw.bits, w = bit >> 5, sh = bit & 31;
  let v = pw.qweight[base + w] >>> sh;
  if (sh + pw.bits > 32) v |= pw.qweight[base + w + 1] << (32 - sh);
  return v & ((1 << pw.bits) - 1);
}

/** CPU reference dequantization: W [rows, cols] in the original column order (f32). */
export function dequantRef(pw: PackedWeights): Float32Array {
  const out = new Float32Array(pw.rows * pw.cols);
  for (let r = 0; r < pw.rows; r++) {
    for (let c = 0; c < pw.chunks; c++) {
      const g = pw.chunkGroup[c];
      const s = pw.scaleZero[2 * (r * pw.groups + g)],
        z = pw.scaleZero[2 * (r * pw.groups + g) + 1];
      for (let j = 0; j < 32; j++) {
        const col = pw.colIndex[c * 32 + j];
        if (col === NO_COL) continue;
        out[r * pw.cols + col] = s * (packedCode(pw, r, c, j) - z);
      }
    }
  }
  return out;
}

/** CPU reference of the dequant matmul: `Y[m, rows] = X[m, cols] · Wᵀ` (float64 sums). */
export function dequantMatmulRef(x: Float32Array, pw: PackedWeights, m: number): Float32Array {
  const w = dequantRef(pw);
  const out = new Float32Array(m * pw.rows);
  for (let i = 0; i < m; i++) {
    for (let r = 0; r < pw.rows; r++) {
      let s = 0;
      for (let k = 0; k < pw.cols; k++) s += x[i * pw.cols + k] * w[r * pw.cols + k];
      out[i * pw.rows + r] = s;
    }
  }
  return out;
}

/** Bytes the kernels read from the packed weights (codes + scales/zeros). */
export function packedBytes(pw: PackedWeights): number {
  return pw.qweight.byteLength + pw.scaleZero.byteLength;
}

/**
 * WGSL expression (u32) of code `j` of a chunk whose words are the WGSL values `w0..w{bits-1}`
 * (`j` a compile-time constant, so shifts are constants).
 */
export function codeExprWGSL(bits: number, j: number): string {
  const bit = j * bits, w = bit >> 5, sh = bit & 31, mask = (1 << bits) - 1;
  if (sh + bits <= 32) return `((w${w} >> ${sh}u) & ${mask}u)`;
  return `(((w${w} >> ${sh}u) | (w${w + 1} << ${32 - sh}u)) & ${mask}u)`;
}

/**
 * The quantizer's own packed words (`grid.ts` `packCodes`: the codes of W [rows, cols] in
 * row-major order as one LSB-first bit stream, code i at bits [i·bits, (i+1)·bits)) as
 * {@linkcode PackedWeights}, without repacking: `qweight` is `stream` itself (no copy). On the
 * identity layout (`cols % 32 == 0`, groups of whole 32-column chunks in order) the stream IS the
 * chunk words: row r's chunk c starts at stream bit `(r·cols + 32c)·bits`, i.e. word
 * `(r·chunks + c)·bits`, code j of it at bit `j·bits`. Any other layout (act-order's interleaved
 * groups, padding) keeps the group-sorted chunk tables (`chunkGroup`, `colIndex`) and marks
 * `stream: true`: the kernels read position p's code at `row·cols + colIndex[p]` of the stream.
 * Returns `undefined` when `stream` is not `rows·cols` codes of `bits` bits or the groups do not
 * match the scales (as {@linkcode packWeights} would throw).
 */
export function streamWeights(stream: Uint32Array, opts: PackOptions): PackedWeights | undefined {
  const { rows, cols, bits } = opts;
  if (![2, 3, 4, 8].includes(bits)) return undefined;
  if (stream.length !== Math.ceil((rows * cols * bits) / 32)) return undefined;
  let layout;
  try {
    layout = chunkLayout(opts);
  } catch {
    return undefined;
  }
  return {
    bits,
    rows,
    cols,
    ...layout,
    qweight: stream,
    scaleZero: interleaveScaleZero(opts.scales, opts.zeros),
    ...(layout.identity ? {} : { stream: true }),
  };
}

/**
 * WGSL function `stream_code(row: u32, col: u32) -> u32`: the code of W[row, col] in a
 * {@linkcode PackedWeights.stream} `qweight` bound as `QW: array<u32>` (`K` = cols, a WGSL
 * expression). The word index is formed without the `(row·cols + col)·bits` product (32 codes
 * take exactly `bits` words), so it stays in u32 for any matrix that fits a binding.
 */
export function streamCodeWGSL(bits: number, K: string): string {
  const mask = (1 << bits) - 1;
  return `
fn stream_code(row: u32, col: u32) -> u32 {
  let idx = row * ${K} + col;
  let bit = (idx & 31u) * ${bits}u;
  let wi = (idx >> 5u) * ${bits}u + (bit >> 5u);
  let sh = bit & 31u;
  var v = QW[wi] >> sh;
  if (sh + ${bits}u > 32u) { v = v | (QW[wi + 1u] << (32u - sh)); }
  return v & ${mask}u;
}`;
}
