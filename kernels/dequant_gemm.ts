/**
 * Packed dequant GEMM (prefill): `Y[m, rows] = X[m, cols] · Wᵀ` for group-wise quantized W in the
 * layout of `packed_weights.ts`. The 128×128 register-blocked tile of `_gemm_tile.ts` with a
 * K-slice of 16 packed positions: the A stage gathers activation columns through `colIndex`
 * (zero for padding; direct reads when `identity`), the B stage unpacks 8 codes per thread and
 * dequantizes them with the chunk's (scale, zero) into workgroup memory.
 *
 * Binding layout: 0 = uniforms {M, N = rows, K = cols, chunks, groups}, 1 = X f32 [M, cols],
 * 2 = qweight (u32), 3 = scaleZero (vec2<f32>), 4 = chunkGroup, 5 = Y f32 [M, rows],
 * 6 = colIndex (only when not `identity`).
 * With `stream` (not `identity`), qweight is the quantizer's own code stream (`PackedWeights.stream`)
 * and the code of packed position `pos` is read at `row·cols + colIndex[pos]`; the same values
 * reach the tile, so outputs equal the chunk-word layout's bit for bit.
 * Dispatch: (ceil(rows / 128), ceil(M / 128), 1).
 * @module
 */
import { gemmTileBody, gemmTileShared } from "./_gemm_tile.ts";
import { NO_COL, type PackedBits, streamCodeWGSL } from "./packed_weights.ts";

/**
 * WGSL of the dequant GEMM for `bits`; `identity` skips the column gather; `stream` reads codes
 * from the quantizer's stream (with `identity` false).
 */
export function dequantGemmWGSL(
  opts: { bits: PackedBits; identity: boolean; stream?: boolean },
): string {
  const { bits, identity } = opts;
  const stream = !identity && opts.stream === true;
  const BK = 16;
  const mask = (1 << bits) - 1;
  const stage: string[] = [];
  for (let e = 0; e < 8; e++) {
    stage.push(`    { let l = tid + ${e * 256}u; let m = l / ${BK}u; let k = l % ${BK}u;
      let s = k * 128u + m; As[s >> 2u][s & 3u] = loadX(row0 + m, k0 + k); }`);
  }
  stage.push(`    {
      let n = tid >> 1u;
      let half = tid & 1u;
      let pos = k0 + half * 8u;
      let c = pos >> 5u;
      let j0 = pos & 31u;
      let row = col0 + n;
      var sc = 0.0; var ze = 0.0; var base = 0u;
      let ok = row < p.N;
      if (ok) {
        let sz = SZ[row * p.groups + CG[c]];
        sc = sz.x; ze = sz.y; base = (row * p.chunks + c) * ${bits}u;
      }
${
    Array.from({ length: 8 }, (_, jj) =>
      `      { var v = 0.0; if (ok) { v = sc * (f32(${
        stream ? `scode(row, pos + ${jj}u)` : `code_at(base, j0 + ${jj}u)`
      }) - ze); }
        let s = (half * 8u + ${jj}u) * 128u + n; Bs[s >> 2u][s & 3u] = v; }`).join("\n")
  }
    }`);
  return `
struct P { M: u32, N: u32, K: u32, chunks: u32, groups: u32, p0: u32, p1: u32, p2: u32 };
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> QW: array<u32>;
@group(0) @binding(3) var<storage, read> SZ: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> CG: array<u32>;
@group(0) @binding(5) var<storage, read_write> Y: array<f32>;
${identity ? "" : "@group(0) @binding(6) var<storage, read> CI: array<u32>;"}
${gemmTileShared("f32", BK)}

fn loadX(i: u32, pos: u32) -> f32 {
  if (i >= p.M) { return 0.0; }
${
    identity
      ? "  if (pos >= p.K) { return 0.0; }\n  return X[i * p.K + pos];"
      : `  let ci = CI[pos];\n  if (ci == ${NO_COL}u) { return 0.0; }\n  return X[i * p.K + ci];`
  }
}
fn code_at(base: u32, j: u32) -> u32 {
  let bit = j * ${bits}u;
  let wi = bit >> 5u;
  let sh = bit & 31u;
  var v = QW[base + wi] >> sh;
${bits === 3 ? "  if (sh > 29u) { v = v | (QW[base + wi + 1u] << (32u - sh)); }" : ""}
  return v & ${mask}u;
}
${
    stream
      ? `${streamCodeWGSL(bits, "p.K")}
fn scode(row: u32, pos: u32) -> u32 {
  let ci = CI[pos];
  if (ci == ${NO_COL}u) { return 0u; }
  return stream_code(row, ci);
}`
      : ""
  }
fn store(r: u32, c: u32, v: f32) {
  if (r < p.M && c < p.N) { Y[r * p.N + c] = v; }
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * 16u + tx;
  let row0 = wid.y * 128u;
  let col0 = wid.x * 128u;
${
    gemmTileBody({
      T: "f32",
      AT: "f32",
      BK,
      kEnd: "p.chunks * 32u",
      stage: stage.join("\n"),
      store: "store",
    })
  }
}
`;
}
