/**
 * Issue 14's weight-activation knobs as quantizer specs on stories260K (`points.ts`):
 * - LLM.int8() as a `linearProduct` spec: its operands at threshold ∞ are plain vector-wise
 *   int8 (per-row absmax 8-bit of X and of W, the closed form written here); at threshold 0 the
 *   logits equal FP bit for bit; with planted outliers the product matches the integer-exact
 *   `llmInt8Matmul` (exact int32 sums, scaled once) to f32 rounding and finds the same columns;
 * - CPU vs WebGPU (lavapipe) resident decoder: each new spec kind alone — QRazor at a linear
 *   input (INT16 per tensor → 8 bits; INT8 per token → 4 bits), at Q, K (per channel) and V,
 *   ZeroQuant's token-wise DeepSpeed grid, LLM.int8() — gives logits within 1e-4 of the CPU
 *   forward run through the same calls (a prefill of 32, then 16 one-token steps). Placements
 *   were chosen where the data has no element at a rounding boundary: measured on the CPU alone,
 *   scaling the unit ranges by 1 − 1e-7 (an ulp-size input difference, which the backends' f32
 *   sums and exp produce) moves the logits by 8.4e-3 with the DeepSpeed A8 grid at o_proj and
 *   by 8.8e-4 / 3.0e-4 with the INT16→8 QRazor grid at q_proj / k_proj (one level of one element
 *   flips), against ~1e-5 at the placements below. The seed's INT16 per-tensor activation grid
 *   razored to 8 bits is flip-prone between backends in general (v_proj: 2e-2 here): SDR rounds
 *   integer codes to multiples of 2^k, so a code one step off an exact half-unit (common among
 *   integers) moves a whole unit. The kernels themselves agree bit for bit on equal input
 *   (tests/kernels/fake_quant_sdr_test.ts);
 * - whole qllm configurations (QRazor W4A8KV4, ZeroQuant W4/8A8, LLM.int8()) evaluate GPU-
 *   resident on WebGPU (`perplexity` reports `resident`), with the CPU's perplexity within
 *   0.5 % (measured: QRazor W4A8 4.2783 / 4.2810, W4KV4 21.04514 / 21.04513, ZeroQuant W4/8A8
 *   3.9355 / 3.9315, LLM.int8() 3.7188 / 3.7120 — threshold crossings and level flips over
 *   512 tokens, as above).
 */
import { assert, assertEquals, assertLess, assertThrows } from "@std/assert";
import { fakeQuantRef } from "../../kernels/fake_quant.ts";
import { cpuBackend } from "../../src/backend/cpu.ts";
import { getBackend, setBackend } from "../../src/backend/device.ts";
import { int8Operands } from "../../src/backend/ops.ts";
import { webgpuAvailable, type WebGPUBackend, webgpuBackend } from "../../src/backend/webgpu.ts";
import { OptionError } from "../../src/errors.ts";
import { perplexity } from "../../src/eval/perplexity.ts";
import { createKVCache, forward } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import { checkPoints, type QuantPoints } from "../../src/models/points.ts";
import { residentDecoder, residentUnsupported } from "../../src/models/resident.ts";
import { applyQllmConfig, resolveQllmConfig } from "../../src/quant/pipeline/qllm_config.ts";
import { int8Weight, llmInt8Matmul } from "../../src/quant/weight_activation/llm_int8.ts";
import { Rng } from "../_rng.ts";

/** Values as numbers, −0 as 0. */
const vals = (a: ArrayLike<number>) => Array.from(a, (v) => v + 0);

const STORIES = "../shared/data/models/stories260K-hf";
const model = await loadModel(STORIES);
const V = model.config.vocabSize;
const ids = Array.from({ length: 48 }, (_, i) => (i * 37 + 5) % V);

Deno.test("LLM.int8() spec operands: threshold ∞ = vector-wise int8, 0 = FP; matches llmInt8Matmul", async () => {
  const rng = new Rng(3);
  const rows = 19, cols = 96, out = 40;
  const x = Float32Array.from(rng.normals(rows * cols));
  for (const j of [5, 70]) x[7 * cols + j] = j === 5 ? 9.5 : -12; // planted outlier columns
  const W = Float32Array.from(rng.normals(out * cols, 0.1));
  const X = { shape: [rows, cols], data: x }, Wt = { shape: [out, cols], data: W };
  // ∞: per-row absmax int8 of X and of W (QuaRot's 8-bit symmetric grid is exactly that)
  const inf = int8Operands(X, Wt, { method: "llm_int8", threshold: Infinity });
  assertEquals(inf.outliers, []);
  assertEquals(vals(inf.x.data), vals(fakeQuantRef(x, rows, cols, { bits: 8 })));
  assertEquals(vals(inf.w.data), vals(fakeQuantRef(W, out, cols, { bits: 8 })));
  // 0: every dimension an outlier, both operands exact
  const zero = int8Operands(X, Wt, { method: "llm_int8", threshold: 0 });
  assertEquals(zero.x.data, x);
  assertEquals(zero.w.data, W);
  // 6: the planted columns found and exact; the product = the integer-exact LLM.int8() product
  const six = int8Operands(X, Wt, { method: "llm_int8", threshold: 6 });
  assertEquals(six.outliers, [5, 70]);
  const ref = llmInt8Matmul(X, int8Weight(Wt), { threshold: 6 });
  assertEquals(ref.outliers, [5, 70]);
  const y = (await cpuBackend.matmulTransB(six.x, six.w)).data;
  let worst = 0, scale = 0;
  for (let i = 0; i < y.length; i++) {
    worst = Math.max(worst, Math.abs(y[i] - ref.y.data[i]));
    scale = Math.max(scale, Math.abs(ref.y.data[i]));
  }
  assertLess(worst, 1e-5 * scale, `spec product vs integer-exact product: ${worst}`);
  for (const j of [5, 70]) {
    for (let r = 0; r < rows; r++) assertEquals(six.x.data[r * cols + j], x[r * cols + j]);
  }
  const e = assertThrows(
    () => checkPoints({ linearProduct: { "*": { method: "int4" as "llm_int8" } } }, model.config),
    OptionError,
  );
  assert(e.message.includes("points.linearProduct[*].method"), e.message);
});

Deno.test("LLM.int8() spec on stories260K: threshold 0 = FP logits exactly; 6 moves them", async () => {
  const fp = (await forward(model, ids, { backend: cpuBackend })).data;
  const at = async (threshold: number) =>
    (await forward(
      { ...model, points: { linearProduct: { "*": { method: "llm_int8", threshold } } } },
      ids,
      {
        backend: cpuBackend,
      },
    )).data;
  assertEquals(await at(0), fp);
  const q = await at(6);
  let moved = 0;
  for (let i = 0; i < fp.length; i++) moved = Math.max(moved, Math.abs(q[i] - fp[i]));
  assert(moved > 1e-3, `int8 products must move the logits (${moved})`);
});

/** One spec per new kind (hidden 64, heads 8/4, hd 8, ff 172). */
const SINGLE: Record<string, QuantPoints> = {
  "QRazor v_proj input (INT8 per tensor → 4 bits, g16)": {
    linearInput: {
      "*.self_attn.v_proj": { bits: 8, granularity: "tensor", qrazor: { bits: 4, group: 16 } },
    },
  },
  "QRazor up_proj input (INT8 per token → 4 bits, g8)": {
    linearInput: { "*.mlp.up_proj": { bits: 8, qrazor: { bits: 4, group: 8 } } },
  },
  "QRazor q (per head, g16)": { q: { bits: 8, groupSize: 8, qrazor: { bits: 4, group: 16 } } },
  "QRazor k (per channel, asym, g8)": {
    k: { bits: 8, sym: false, granularity: "channel", qrazor: { bits: 4, group: 8 } },
  },
  "QRazor v (per tensor, g32)": {
    v: { bits: 8, granularity: "tensor", qrazor: { bits: 4, group: 32 } },
  },
  "ZeroQuant A8 (deepspeed grid per token) at gate_proj and down_proj": {
    linearInput: {
      "*.mlp.gate_proj": { bits: 8, grid: "deepspeed" },
      "*.mlp.down_proj": { bits: 8, grid: "deepspeed" },
    },
  },
  "LLM.int8() at gate_proj (threshold 1)": {
    linearProduct: { "*.mlp.gate_proj": { method: "llm_int8", threshold: 1 } },
  },
  "LLM.int8() at every linear (threshold 6)": {
    linearProduct: { "*": { method: "llm_int8", threshold: 6 } },
  },
};

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("wa_specs_test: SKIPPED (GPU part) — no WebGPU adapter");
let gpu: WebGPUBackend | undefined;

/** Max |Δ| of the resident decoder's logits (prefill 32, then 16 single steps) vs the CPU. */
async function residentVsCpu(points: QuantPoints): Promise<{ worst: number; moved: number }> {
  const qm: Model = { ...model, points };
  assertEquals(residentUnsupported(qm, gpu!, { capacity: 64 }), undefined);
  const steps = async (m: Model) => {
    const cache = createKVCache(m.config, 64);
    const out = new Float32Array(ids.length * V);
    out.set((await forward(m, ids.slice(0, 32), { backend: cpuBackend, cache })).data);
    for (let k = 32; k < ids.length; k++) {
      out.set((await forward(m, [ids[k]], { backend: cpuBackend, cache })).data, k * V);
    }
    return out;
  };
  const ref = await steps(qm);
  const fp = await steps(model);
  let moved = 0;
  for (let i = 0; i < fp.length; i++) moved = Math.max(moved, Math.abs(fp[i] - ref[i]));
  const dec = await residentDecoder(qm, gpu!, { capacity: 64 });
  let worst = 0;
  try {
    const pre = await dec.step(ids.slice(0, 32), { allLogits: true });
    for (let i = 0; i < pre.length; i++) worst = Math.max(worst, Math.abs(pre[i] - ref[i]));
    for (let k = 32; k < ids.length; k++) {
      const l = await dec.step([ids[k]]);
      for (let j = 0; j < V; j++) worst = Math.max(worst, Math.abs(l[j] - ref[k * V + j]));
    }
  } finally {
    dec.release();
  }
  return { worst, moved };
}

Deno.test({
  name: "each new spec kind on CPU and on the resident WebGPU decoder: logits < 1e-4",
  ignore: !available,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    gpu ??= await webgpuBackend({ allowFallback: true });
    for (const [name, points] of Object.entries(SINGLE)) {
      const { worst, moved } = await residentVsCpu(points);
      console.log(
        `  ${name}: moves the logits by ${moved.toExponential(2)}; ` +
          `CPU vs resident GPU ${worst.toExponential(2)}`,
      );
      assert(moved > 1e-3, `${name}: the spec must change the logits`);
      assertLess(worst, 1e-4, name);
    }
  },
});

Deno.test({
  name: "qllm configurations evaluate GPU-resident on WebGPU with the CPU's perplexity",
  ignore: !available,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    gpu ??= await webgpuBackend({ allowFallback: true });
    const configs: Record<string, Record<string, unknown>> = {
      "QRazor W4A8 g16": {
        bits_w: 8,
        w_qrazor: true,
        w_qrazor_group: 16,
        a_per_tensor: true,
        a_per_token: false,
        a_qrazor: true,
        a_qrazor_bits: 8,
        a_qrazor_group: 16,
      },
      "QRazor W4KV4 g16": {
        bits_w: 8,
        w_qrazor: true,
        w_qrazor_group: 16,
        bits_k: 8,
        k_qrazor: true,
        k_qrazor_group: 16,
        bits_v: 8,
        v_qrazor: true,
        v_qrazor_group: 16,
      },
      "ZeroQuant W4/8A8": { zeroquant: true, bits_w: 8, zeroquant_ffn_bits: 4, bits_a: 8 },
      "LLM.int8()": { llm_int8: true },
    };
    // batch 1: a per-tensor spec (and SDR's flattened groups) spans the rows of one call
    const opts = { nsamples: 2, seqlen: 256, batch: 1 };
    const prev = getBackend();
    try {
      for (const [name, cfg] of Object.entries(configs)) {
        setBackend(cpuBackend);
        const m = (await applyQllmConfig(model, resolveQllmConfig(cfg))).model;
        const cpu = await perplexity(m, "tinystories", opts);
        setBackend(gpu);
        const g = await perplexity(m, "tinystories", opts);
        console.log(
          `  ${name}: CPU ppl ${cpu.ppl.toFixed(5)}, WebGPU ${
            g.ppl.toFixed(5)
          } (resident ${g.resident})`,
        );
        assert(g.resident, `${name}: the WebGPU evaluation must stay resident`);
        assert(!cpu.resident);
        assertLess(Math.abs(g.ppl / cpu.ppl - 1), 5e-3, name);
      }
    } finally {
      setBackend(prev);
    }
  },
});
