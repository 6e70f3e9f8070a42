/**
 * GPTQ + QRazor (src/quant/weight_activation/gptq_qrazor.ts):
 * - with H = I (no input correlations) GPTQ propagates nothing: the result is qllm-infer's
 *   per-channel grid (`qrazorWeight` without SDR) followed by SDR down each column's rows in
 *   groups of `rGroup` (computed here with `sdr`, itself checked against the reference forward);
 * - on stories260K's layer-0 q_proj with its real Hessian (captured here from 8 TinyStories
 *   windows), the output error `tr(ΔW H ΔWᵀ)` is below that of the same grid and SDR without
 *   error propagation, with and without act-order; the meta dequantizes bit-exactly;
 * - `gptq=true` with `w_qrazor=true` in a qllm config runs it through the pipeline.
 */
import { assert, assertEquals, assertLess } from "@std/assert";
import { forward } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { dequantize } from "../../src/quant/core/grid.ts";
import { gptqQrazor } from "../../src/quant/weight_activation/gptq_qrazor.ts";
import { applyQllmConfig, resolveQllmConfig } from "../../src/quant/pipeline/qllm_config.ts";
import { qrazorWeight, sdr } from "../../src/quant/weight_activation/qrazor.ts";
import type { Tensor } from "../../src/tensor.ts";
import { Rng } from "../_rng.ts";

const MODEL = new URL("../../../shared/data/models/stories260K-hf", import.meta.url).pathname;

Deno.test("H = I: qllm grid per channel, then SDR down each column", async () => {
  const rng = new Rng(12);
  const rows = 20, cols = 16;
  const W = { shape: [rows, cols], data: rng.normals(rows * cols, 0.1) };
  const H = new Float64Array(cols * cols);
  for (let i = 0; i < cols; i++) H[i * cols + i] = 1;
  const got = await gptqQrazor({ bits: 8, rBit: 4, rGroup: 8, actOrder: false }).quantizeWeight(W, {
    H,
    nsamples: 1,
  });
  const plain = await qrazorWeight({ bits: 8 }).quantizeWeight(W, { nsamples: 0 });
  for (let c = 0; c < cols; c++) {
    const col = Float64Array.from(
      { length: rows },
      (_, r) => Math.abs(plain.meta.codes[r * cols + c] - 127),
    );
    sdr(col, { qBit: 8, rBit: 4, group: 8 });
    for (let r = 0; r < rows; r++) {
      const q = plain.meta.codes[r * cols + c] - 127;
      assertEquals(got.meta.codes[r * cols + c] - 127, Math.sign(q) * col[r] + 0, `(${r}, ${c})`);
    }
  }
  assertEquals(dequantize(got.meta).data, got.Wq.data);
});

Deno.test("real Hessian: GPTQ + QRazor beats the same rounding without error propagation", async () => {
  const m = await loadModel(MODEL);
  const NAME = "model.layers.0.self_attn.q_proj";
  const cal = await calibrationSet(m, "tinystories", { nsamples: 8, seqlen: 128 });
  const W = await m.weights.get(`${NAME}.weight`);
  const cols = W.shape[1];
  const H = new Float64Array(cols * cols);
  let n = 0;
  for (const ids of cal.ids) {
    await forward(m, ids, {
      observe: (p, site, x: Tensor) => {
        if (p !== "linearInput" || site !== NAME) return;
        const rows = x.data.length / cols;
        for (let t = 0; t < rows; t++) {
          for (let i = 0; i < cols; i++) {
            const xi = x.data[t * cols + i];
            for (let j = 0; j < cols; j++) H[i * cols + j] += xi * x.data[t * cols + j];
          }
        }
        n += rows;
      },
    });
  }
  for (let i = 0; i < H.length; i++) H[i] *= 2 / n;
  const I = new Float64Array(cols * cols);
  for (let i = 0; i < cols; i++) I[i * cols + i] = 1;
  const outErr = (Wq: Tensor) => {
    const [R, C] = W.shape;
    let e = 0;
    for (let r = 0; r < R; r++) {
      for (let i = 0; i < C; i++) {
        const di = W.data[r * C + i] - Wq.data[r * C + i];
        if (di === 0) continue;
        for (let j = 0; j < C; j++) {
          e += di * H[i * C + j] * (W.data[r * C + j] - Wq.data[r * C + j]);
        }
      }
    }
    return e;
  };
  for (const actOrder of [false, true]) {
    const opts = { bits: 8, rBit: 4, rGroup: 8, actOrder };
    const g = await gptqQrazor(opts).quantizeWeight(W, { H, nsamples: n });
    const r = await gptqQrazor({ ...opts, actOrder: false }).quantizeWeight(W, {
      H: I,
      nsamples: 1,
    });
    const eg = outErr(g.Wq), er = outErr(r.Wq);
    console.log(
      `act-order ${actOrder}: tr(ΔW H ΔWᵀ) GPTQ+QRazor ${eg.toFixed(4)}, no propagation ${
        er.toFixed(4)
      }`,
    );
    assertLess(eg, er * 0.9);
    assertEquals(dequantize(g.meta).data, g.Wq.data);
  }
});

Deno.test("qllm config gptq=true + w_qrazor=true runs GPTQ + QRazor in the pipeline", async () => {
  const m = await loadModel(MODEL);
  const c = resolveQllmConfig({
    bits_w: 8,
    w_qrazor: true,
    w_qrazor_bits: 4,
    w_qrazor_group: 16,
    gptq: true,
    gptq_nsamples: 4,
    gptq_seqlen: 128,
  });
  const a = await applyQllmConfig(m, c, { calibDataset: "tinystories" });
  const layers = a.model.report.layers as { method: string; bitsPerWeight: number }[];
  assert(layers.every((l) => l.method === "gptq-qrazor"));
  assertEquals(layers.length, 35);
});
