/**
 * The quantizer's packed words are the GPU layout (issue 12 item 3): `grid.ts` `packCodes` (one
 * LSB-first stream of the row-major codes) read by the dequant kernels as is (`streamWeights`),
 * checked against independent oracles:
 * - `streamWeights` hands the quantizer's own array over (no copy); on the identity layout it
 *   equals `packWeights(codes)`'s chunk words word for word, otherwise (act-order, padding) the
 *   kernels read it through `colIndex` (`stream: true`) and the CPU decode is still Wq;
 * - the kernels reading those words give the quantizer's `Wq` bit for bit: the GEMM with X = I
 *   returns Wqᵀ, the GEMV with one-hot x returns Wq's columns (each output is one
 *   `scale·(code − zero)`, no sum that could round);
 * - a layer served by the backend from a recorded (meta, Wq) pair uploads exactly the packed
 *   words, scales and chunk tables (no repacked copy), while a weight that is not the recorded
 *   array still goes through the host check (then the same words) and is refused when it differs;
 * - on random activations the stream layout's outputs equal the repacked chunk words' bit for bit.
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

/**
 * GPTQ and RTN results: 2/3/4/8 bits, per-row and 32/96-column groups (identity layout), GPTQ
 * act-order (interleaved groups) and RTN on 100 columns in groups of 25 (padded chunks).
 */
async function cases(): Promise<{ label: string; q: QuantResult }[]> {
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
    const act = { bits, groupSize: 32, actOrder: true };
    out.push({
      label: `gptq ${JSON.stringify(act)}`,
      q: await gptqQuantize(W, { H, nsamples: 9 }, { ...act, backend: cpuBackend }),
    });
    const W100 = {
      shape: [rows, 100] as [number, number],
      data: randomArray(rows * 100, { seed: 7 }),
    };
    out.push({ label: `rtn 100 cols g25 ${bits}b`, q: rtnQuantize(W100, { bits, groupSize: 25 }) });
  }
  return out;
}

function streamOf(q: QuantResult) {
  const m = q.meta;
  const c = m.shape[1];
  return streamWeights(m.packed!, {
    rows,
    cols: c,
    bits: m.bits as PackedBits,
    scales: m.scales,
    zeros: m.zeros,
    gIdx: m.gIdx,
    groupSize: m.groupSize > 0 ? m.groupSize : c,
  });
}

function repacked(q: QuantResult) {
  const m = q.meta;
  const c = m.shape[1];
  return packWeights(m.codes!, {
    rows,
    cols: c,
    bits: m.bits as PackedBits,
    scales: m.scales,
    zeros: m.zeros,
    gIdx: m.gIdx,
    groupSize: m.groupSize > 0 ? m.groupSize : c,
  });
}

Deno.test("streamWeights: the quantizer's own packed words, uncopied; decode = Wq", async () => {
  let identities = 0, streams = 0;
  for (const { label, q } of await cases()) {
    const pw = streamOf(q);
    assert(pw, label);
    assertStrictEquals(pw.qweight, q.meta.packed, `${label}: the quantizer's own array`);
    const ref = repacked(q);
    assertEquals(pw.identity, ref.identity, label);
    assertEquals(pw.stream === true, !ref.identity, label);
    assertEquals(pw.scaleZero, ref.scaleZero, label);
    assertEquals(pw.chunkGroup, ref.chunkGroup, label);
    assertEquals(pw.colIndex, ref.colIndex, label);
    if (ref.identity) {
      assertEquals(pw.qweight, ref.qweight, `${label}: the stream is the chunk words`);
      identities++;
    } else streams++;
    assertEquals(dequantRef(pw), q.Wq.data, `${label}: CPU decode of the stream = Wq`);
  }
  assertEquals([identities, streams], [24, 8]);
});

Deno.test({
  ...gpu,
  name: "dequant kernels reading the quantizer's own packed words give its Wq bit for bit",
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    for (const { label, q } of await cases()) {
      const cols = q.meta.shape[1];
      const I = new Float32Array(cols * cols);
      for (let i = 0; i < cols; i++) I[i * cols + i] = 1;
      const Wt = new Float32Array(cols * rows);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) Wt[c * rows + r] = q.Wq.data[r * cols + c];
      }
      const pw = streamOf(q)!;
      const y = await gpuDequantMatmul(ctx, I, pw, { m: cols, gemm: true });
      assertEquals(y, Wt, `${label}: GEMM(I) = Wqᵀ`);
      for (const c of [0, 37, cols - 1]) {
        const x = new Float32Array(cols);
        x[c] = 1;
        const v = await gpuDequantMatmul(ctx, x, pw, { m: 1 });
        assertEquals(v, Wt.subarray(c * rows, (c + 1) * rows), `${label}: GEMV col ${c}`);
      }
      // Random activations: the stream layout = the repacked chunk words, bit for bit.
      const ref = repacked(q);
      for (const m of [1, 5]) {
        const x = randomArray(m * cols, { seed: 40 + m });
        assertEquals(
          await gpuDequantMatmul(ctx, x, pw, { m }),
          await gpuDequantMatmul(ctx, x, ref, { m }),
          `${label}: m=${m}`,
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
    // Same layer from an equal weight in another array: the host check runs and passes, and the
    // stream is still uploaded as is.
    const copy = { ...q.Wq, data: q.Wq.data.slice() };
    assertStrictEquals(packQuantMeta(q.meta, copy)!.qweight, q.meta.packed);
    // A weight the meta does not give: refused.
    copy.data[7] += 1e-3;
    assertEquals(packQuantMeta(q.meta, copy), undefined);
    be.release();
  },
});
