import { assert, assertEquals, assertLess } from "@std/assert";
import { getWebGPU, gpuDequantMatmul, webgpuAvailable } from "../../src/backend/webgpu.ts";
import { randomArray, rng, scaledErr } from "../../src/backend/_webgpu_check.ts";
import {
  dequantMatmulRef,
  dequantRef,
  NO_COL,
  type PackedBits,
  packedCode,
  packWeights,
} from "../../kernels/packed_weights.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("dequant_matmul_test: SKIPPED — no WebGPU adapter");
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

function quantized(rows: number, cols: number, o: { bits: PackedBits; gs: number; act: boolean }) {
  const r = rng(rows * 131 + cols + o.bits);
  const maxq = 2 ** o.bits - 1;
  const codes = Uint8Array.from({ length: rows * cols }, () => Math.floor(r() * (maxq + 1)));
  const groups = Math.ceil(cols / o.gs);
  const perm = Array.from({ length: cols }, (_, i) => i);
  if (o.act) {
    for (let i = cols - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [perm[i], perm[j]] = [perm[j], perm[i]];
    }
  }
  const gIdx = new Int32Array(cols);
  for (let i = 0; i < cols; i++) gIdx[perm[i]] = Math.floor(i / o.gs);
  const scales = randomArray(rows * groups, { seed: 3, lo: 0.01, hi: 0.1 });
  const zeros = Float32Array.from({ length: rows * groups }, () => Math.floor(r() * (maxq + 1)));
  return { codes, gIdx, scales, zeros };
}

Deno.test("packWeights round-trips codes and dequantizes as scale·(code − zero)", () => {
  for (const bits of [2, 3, 4, 8] as PackedBits[]) {
    const [rows, cols] = [5, 100];
    const q = quantized(rows, cols, { bits, gs: 24, act: true });
    const pw = packWeights(q.codes, { rows, cols, bits, ...q });
    assertEquals(pw.identity, false);
    const w = dequantRef(pw);
    for (let c = 0; c < pw.chunks; c++) {
      for (let j = 0; j < 32; j++) {
        const col = pw.colIndex[c * 32 + j];
        if (col === NO_COL) continue;
        assertEquals(pw.chunkGroup[c], q.gIdx[col]);
        for (let r = 0; r < rows; r++) {
          assertEquals(packedCode(pw, r, c, j), q.codes[r * cols + col]);
        }
      }
    }
    const g = q.gIdx[7];
    assertEquals(
      w[2 * cols + 7],
      Math.fround(q.scales[2 * 5 + g] * (q.codes[2 * cols + 7] - q.zeros[2 * 5 + g])),
    );
  }
  const plain = quantized(3, 256, { bits: 4, gs: 128, act: false });
  assert(packWeights(plain.codes, { rows: 3, cols: 256, bits: 4, ...plain }).identity);
});

Deno.test({
  name: "dequant GEMV (m=1) and GEMM match the CPU reference, 2/3/4/8 bits, act-order (tol 1e-5)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const cases: [PackedBits, number, number, number, boolean][] = [
      [4, 37, 256, 64, false], // identity layout
      [4, 20, 200, 48, true], // act-order, padded groups
      [3, 9, 4096, 128, true], // large K
      [2, 130, 96, 32, true],
      [8, 1, 160, 32, false],
    ];
    for (const [bits, rows, cols, gs, act] of cases) {
      const q = quantized(rows, cols, { bits, gs, act });
      const pw = packWeights(q.codes, { rows, cols, bits, ...q });
      for (const m of [1, 3, 130]) {
        if (m === 130 && cols > 1000) continue;
        const x = randomArray(m * cols, { seed: m + bits });
        const want = dequantMatmulRef(x, pw, m);
        const y = await gpuDequantMatmul(ctx, x, pw, { m });
        const err = scaledErr(y, want);
        assertLess(err, 1e-5, `${bits}-bit [${rows},${cols}] g${gs} act=${act} m=${m}: ${err}`);
        if (m === 1) {
          const yg = await gpuDequantMatmul(ctx, x, pw, { m, gemm: true });
          assertLess(scaledErr(yg, want), 1e-5, "GEMM with m=1");
        }
      }
    }
  },
});
