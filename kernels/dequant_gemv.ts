/**
 * Packed dequant GEMV (decode, batch 1): `y[rows] = W · x` for group-wise quantized W in the
 * layout of `packed_weights.ts`. Bandwidth-bound: the kernel reads each code word once.
 *
 * Mapping: a workgroup of `GEMV_LANES × GEMV_ROW_GROUPS` threads owns
 * `GEMV_ROWS_PER_WORKGROUP` rows; lane t walks the chunks t, t+LANES, ... (consecutive lanes read
 * consecutive chunks: coalesced), loads the chunk's 32 activations once and reuses them for its
 * `GEMV_ROWS_PER_THREAD` rows. Per chunk and row, `acc += scale · (Σ code·x − zero · Σ x)`, so the
 * inner loop is 32 multiply-adds on codes unpacked with constant shifts. Lanes are reduced in
 * workgroup memory.
 *
 * Binding layout: 0 = uniforms {rows, cols, chunks, groups}, 1 = x (f32 [cols]; read as vec4 when
 * `identity`), 2 = qweight, 3 = scaleZero (vec2<f32>), 4 = chunkGroup, 5 = y (f32 [rows]),
 * 6 = colIndex (only when not `identity`).
 * With `stream` (not `identity`), qweight is the quantizer's own code stream (`PackedWeights.stream`,
 * u32 words) and each code is read at `row·cols + colIndex[p]`; same arithmetic otherwise, so the
 * outputs equal the chunk-word layout's bit for bit.
 * Dispatch: ceil(rows / GEMV_ROWS_PER_WORKGROUP) workgroups, as an (x, y) grid.
 * @module
 */
import { codeExprWGSL, NO_COL, type PackedBits, streamCodeWGSL } from "./packed_weights.ts";

/** Lanes (threads along the input dimension) per row group. */
export const GEMV_LANES = 64;
/** Row groups per workgroup. */
export const GEMV_ROW_GROUPS = 4;
/** Rows per thread. */
export const GEMV_ROWS_PER_THREAD = 2;
/** Rows per workgroup. */
export const GEMV_ROWS_PER_WORKGROUP = GEMV_ROW_GROUPS * GEMV_ROWS_PER_THREAD;

/**
 * WGSL of the dequant GEMV for `bits`; `identity` skips the column gather; `stream` reads codes
 * from the quantizer's stream (with `identity` false).
 */
export function dequantGemvWGSL(
  opts: { bits: PackedBits; identity: boolean; stream?: boolean },
): string {
  const { bits, identity } = opts;
  const stream = !identity && opts.stream === true;
  const TPR = GEMV_LANES, RG = GEMV_ROW_GROUPS, RPT = GEMV_ROWS_PER_THREAD;
  const qwType = stream
    ? "u32"
    : bits === 4 || bits === 8
    ? "vec4<u32>"
    : bits === 2
    ? "vec2<u32>"
    : "u32";
  const words: string[] = [];
  if (stream) words.push("// codes from the stream (stream_code)");
  else if (bits === 4) {
    words.push("let wv = QW[q];", "let w0 = wv.x; let w1 = wv.y; let w2 = wv.z; let w3 = wv.w;");
  } else if (bits === 8) {
    words.push(
      "let wa = QW[2u * q]; let wb = QW[2u * q + 1u];",
      "let w0 = wa.x; let w1 = wa.y; let w2 = wa.z; let w3 = wa.w;",
      "let w4 = wb.x; let w5 = wb.y; let w6 = wb.z; let w7 = wb.w;",
    );
  } else if (bits === 2) words.push("let wv = QW[q]; let w0 = wv.x; let w1 = wv.y;");
  else words.push("let w0 = QW[3u * q]; let w1 = QW[3u * q + 1u]; let w2 = QW[3u * q + 2u];");
  const dots: string[] = [];
  for (let v = 0; v < 8; v++) {
    const cs = [0, 1, 2, 3].map((i) =>
      stream ? `scode(row, cb + ${4 * v + i}u)` : codeExprWGSL(bits, 4 * v + i)
    );
    dots.push(`dot(vec4<f32>(vec4<u32>(${cs.join(", ")})), x${v})`);
  }
  const xload = identity
    ? Array.from({ length: 8 }, (_, v) => `    let x${v} = X[c * 8u + ${v}u];`).join("\n")
    : `    let cb = c * 32u;\n` +
      Array.from(
        { length: 8 },
        (_, v) =>
          `    let x${v} = vec4<f32>(${
            [0, 1, 2, 3].map((i) => `xg(cb + ${4 * v + i}u)`).join(", ")
          });`,
      ).join("\n");
  const rowsCode = Array.from({ length: RPT }, (_, r) => `
    {
      let row = rowBase + ${r}u;
      if (row < p.rows) {
        let q = row * p.chunks + c;
        ${words.join("\n        ")}
        let d = ${dots.join("\n          + ")};
        let sz = SZ[row * p.groups + g];
        acc${r} = acc${r} + sz.x * (d - sz.y * xsum);
      }
    }`).join("");
  const red: string[] = [];
  for (let s = TPR / 2; s > 0; s >>= 1) {
    red.push(`  if (lane < ${s}u) {
${
      Array.from({ length: RPT }, (_, r) => {
        const b = `(rg * ${RPT}u + ${r}u) * ${TPR}u + lane`;
        return `    red[${b}] = red[${b}] + red[${b} + ${s}u];`;
      }).join("\n")
    }
  }
  workgroupBarrier();`);
  }
  return `
struct P { rows: u32, cols: u32, chunks: u32, groups: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<${identity ? "vec4<f32>" : "f32"}>;
@group(0) @binding(2) var<storage, read> QW: array<${qwType}>;
@group(0) @binding(3) var<storage, read> SZ: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> CG: array<u32>;
@group(0) @binding(5) var<storage, read_write> Y: array<f32>;
${identity ? "" : "@group(0) @binding(6) var<storage, read> CI: array<u32>;"}
var<workgroup> red: array<f32, ${TPR * RG * RPT}>;
${
    identity ? "" : `
fn xg(i: u32) -> f32 {
  let ci = CI[i];
  if (ci == ${NO_COL}u) { return 0.0; }
  return X[ci];
}`
  }
${
    stream
      ? `${streamCodeWGSL(bits, "p.cols")}
fn scode(row: u32, pos: u32) -> u32 {
  let ci = CI[pos];
  if (ci == ${NO_COL}u) { return 0u; }
  return stream_code(row, ci);
}`
      : ""
  }

@compute @workgroup_size(${TPR}, ${RG}, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let lane = lid.x;
  let rg = lid.y;
  let wg = wid.x + wid.y * nwg.x;
  let rowBase = wg * ${RG * RPT}u + rg * ${RPT}u;
${Array.from({ length: RPT }, (_, r) => `  var acc${r} = 0.0;`).join("\n")}
  for (var c = lane; c < p.chunks; c = c + ${TPR}u) {
${xload}
    let xs4 = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7));
    let xsum = (xs4.x + xs4.y) + (xs4.z + xs4.w);
    let g = CG[c];${rowsCode}
  }
${
    Array.from(
      { length: RPT },
      (_, r) => `  red[(rg * ${RPT}u + ${r}u) * ${TPR}u + lane] = acc${r};`,
    )
      .join("\n")
  }
  workgroupBarrier();
${red.join("\n")}
  if (lane == 0u) {
${
    Array.from({ length: RPT }, (_, r) =>
      `    if (rowBase + ${r}u < p.rows) { Y[rowBase + ${r}u] = red[(rg * ${RPT}u + ${r}u) * ${TPR}u]; }`)
      .join("\n")
  }
  }
}
`;
}
