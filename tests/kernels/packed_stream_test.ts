/**
 * The quantizer's packed words are the GPU layout (issue 12 item 3): `grid.ts` `packCodes` (one
 * LSB-first stream of the row-major codes) read by the dequant kernels as is when the layout is
 * the identity (`streamWeights`), checked against independent oracles:
 * - the stream equals `packWeights(codes)`'s `qweight` word for word, and `streamWeights` hands
 *   the quantizer's own array over (no copy);
 * - the kernels reading those words give the quantizer's `Wq` bit for bit: the GEMM with X = I
 *   returns Wqᵀ, the GEMV with one-hot x returns Wq's columns (each output is one
 *   `scale·(code − zero)`, no sum that could round);
 * - a layer served by the backend from a recorded (meta, Wq) pair uploads exactly the packed
 *   words, scales and chunk tables (no repacked copy), while a weight that is not the recorded
 *   array still goes through the host check and is refused when it differs;
 * - act-order metas (interleaved groups) are not the identity layout: `streamWeights` declines
 *   and the repacked path serves them.
 */
import { assert, assertEquals, assertStrictEquals } from "@std/assert";
import {
  getWebGPU,
  gpuDequantMatmul,
  webgpuAvailable,
  webgpuBackend,
} from "../../src/backend/webgpu.ts";
import { packQuantMeta } from "../../src/backend/_webgpu_quant.ts";
import { recordDecoded } from "../../src/backend/backend.ts";
import { randomArray } from "../../src/backend/_webgpu_check.ts";
import {
  dequantRef,
  type PackedBits,
  packWeights,
  streamWeights,
} from "../../kernels/packed_weights.ts";
import { gptqQuantize } from "../../src/quant/weight_only/gptq.ts";
import { rtnQuantize } from "../../src/quant/weight_only/rtn.ts";
import { cpuBackend } from "../../src/backend/cpu.ts";
import type { QuantResult } from "../../src/quant/core/types.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("packed_stream_test: SKIPPED — no WebGPU adapter");
const gpu = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

const [rows, cols] = [24, 96];
const W = { shape: [rows, cols] as [number, number], data: randomArray(rows * cols, { seed: 5 }) };
const X = randomArray(cols * 9, { seed: 6 });
const H = new Float32Array(cols * cols);
for (let i = 0; i < cols; i++) {
  for (let j = 0; j < cols; j++) {
    let s = i === j ? 0.5 : 0;
    for (let t = 0; t < 9; t++) s += X[t * cols + i] * X[t * cols + j];
    H[i * cols + j] = s;
  }
}

/** GPTQ and RTN results on the identity layout: 2/3/4/8 bits, per-row and 32/96-column groups. */
async function identityCases(): Promise<{ label: string; q: QuantResult }[]> {
  const out: { label: string; q: QuantResult }[] = [];
  for (const bits of [2, 3, 4, 8]) {
    for (const groupSize of [-1, 32, 96]) {
      const o = { bits, groupSize };
      out.push({
        label: `gptq ${JSON.stringify(o)}`,
        q: await gptqQuantize(W, { H, nsamples: 9 }, { ...o, backend: cpuBackend }),
      });
      out.push({ label: `rtn ${JSON.stringify(o)}`, q: rtnQuantize(W, o) });
    }
  }
  return out;
}

function streamOf(q: QuantResult) {
  const m = q.meta;
  return streamWeights(m.packed!, {
    rows,
    cols,
    bits: m.bits as PackedBits,
    scales: m.scales,
    zeros: m.zeros,
    gIdx: m.gIdx,
    groupSize: m.groupSize > 0 ? m.groupSize : cols,
  });
}

Deno.test("streamWeights: the quantizer's packed words are packWeights' qweight, uncopied", async () => {
  for (const { label, q } of await identityCases()) {
    const pw = streamOf(q);
    assert(pw, `${label}: identity layout`);
    assertStrictEquals(pw.qweight, q.meta.packed, `${label}: the quantizer's own array`);
    const ref = packWeights(q.meta.codes!, {
      rows,
      cols,
      bits: q.meta.bits as PackedBits,
      scales: q.meta.scales,
      zeros: q.meta.zeros,
      groupSize: q.meta.groupSize > 0 ? q.meta.groupSize : cols,
    });
    assert(ref.identity);
    assertEquals(pw.qweight, ref.qweight, label);
    assertEquals(pw.scaleZero, ref.scaleZero, label);
    assertEquals(pw.chunkGroup, ref.chunkGroup, label);
    assertEquals(pw.colIndex, ref.colIndex, label);
    assertEquals(dequantRef(pw), q.Wq.data, `${label}: CPU decode of the stream = Wq`);
  }
  // Act-order interleaves groups: not the identity layout.
  const act = await gptqQuantize(W, { H, nsamples: 9 }, {
    bits: 4,
    groupSize: 32,
    actOrder: true,
    backend: cpuBackend,
  });
  assertEquals(streamOf(act), undefined);
});

Deno.test({
  ...gpu,
  name: "dequant kernels reading the quantizer's own packed words give its Wq bit for bit",
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const I = new Float32Array(cols * cols);
    for (let i = 0; i < cols; i++) I[i * cols + i] = 1;
    const Wt = (d: Float32Array) => {
      const t = new Float32Array(cols * rows);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) t[c * rows + r] = d[r * cols + c];
      }
      return t;
    };
    for (const { label, q } of await identityCases()) {
      const pw = streamOf(q)!;
      const y = await gpuDequantMatmul(ctx, I, pw, { m: cols, gemm: true });
      assertEquals(y, Wt(q.Wq.data), `${label}: GEMM(I) = Wqᵀ`);
      for (const c of [0, 37, cols - 1]) {
        const x = new Float32Array(cols);
        x[c] = 1;
        const v = await gpuDequantMatmul(ctx, x, pw, { m: 1 });
        assertEquals(
          v,
          Wt(q.Wq.data).subarray(c * rows, (c + 1) * rows),
          `${label}: GEMV col ${c}`,
        );
      }
    }
  },
});

Deno.test({
  ...gpu,
  name: "backend: a recorded (meta, Wq) pair uploads the packed words as is; others are checked",
  fn: async () => {
    const be = await webgpuBackend({ allowFallback: true });
    const q = await gptqQuantize(W, { H, nsamples: 9 }, { bits: 4, groupSize: 32 });
    recordDecoded(q.meta, q.Wq.data);
    const pw = packQuantMeta(q.meta, q.Wq)!;
    assertStrictEquals(pw.qweight, q.meta.packed, "recorded: the stream itself");
    const x = { shape: [3, cols] as [number, number], data: randomArray(3 * cols, { seed: 8 }) };
    const t0 = be.transfer();
    const y = await be.packedMatmulTransB!(x, q.Wq, q.meta);
    const t1 = be.transfer();
    assert(y);
    const groups = cols / 32;
    const expect = q.meta.packed!.byteLength + rows * groups * 8 + groups * 4 + cols * 4 +
      x.data.byteLength;
    assertEquals(t1.uploaded - t0.uploaded, expect, "bytes up: stream + scales + tables + x");
    // Same layer from an equal weight in another array: the host check runs, and passes.
    const copy = { ...q.Wq, data: q.Wq.data.slice() };
    const pc = packQuantMeta(q.meta, copy)!;
    assert(pc.qweight !== q.meta.packed, "checked path repacks");
    assertEquals(pc.qweight, pw.qweight);
    // A weight the meta does not give: refused.
    copy.data[7] += 1e-3;
    assertEquals(packQuantMeta(q.meta, copy), undefined);
    be.release();
  },
});
