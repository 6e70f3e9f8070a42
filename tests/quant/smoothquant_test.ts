/**
 * SmoothQuant (src/quant/weight_activation/smoothquant.ts):
 * - the factors follow `s_j = max|X_j|^α / max|W_j|^(1−α)` (closed form on a small case, with the
 *   reference's 1e-5 clamps);
 * - the transform alone leaves the logits unchanged (max |Δ| < 1e-4) on stories260K and on a tiny
 *   pre-LN OPT (LayerNorm weight and bias folded), while the weights really changed;
 * - migration: the smoothed model's per-channel max |X| equals max|X_j| / s_j (re-collected);
 * - W8A4 (qllm-infer per-channel weights, per-token activations): with α chosen by the α-sweep
 *   on calibration windows (as the seed picks α), the held-out TinyStories perplexity is below
 *   W8A4 RTN's on the same windows. At W8A8 stories260K sits at the noise floor (measured on 6
 *   windows of 256: FP 3.6633, RTN 3.6587, SmoothQuant α=0.5 3.6615 — RTN below FP), so the
 *   issue's "W8A8 SmoothQuant ≤ RTN" is not a property this model can show; 4-bit activations,
 *   where activation error dominates, are (RTN 4.88 vs SmoothQuant 4.61–4.76 for α 0.5–0.85).
 */
import { assert, assertAlmostEquals, assertEquals, assertLess, assertThrows } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { perplexity, windowNll } from "../../src/eval/perplexity.ts";
import { forward } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import {
  applyQllmConfig,
  qllmPlan,
  resolveQllmConfig,
} from "../../src/quant/pipeline/qllm_config.ts";
import {
  smoothingFactors,
  smoothQuant,
  smoothQuantAlphaSweep,
  smoothQuantStats,
} from "../../src/quant/weight_activation/smoothquant.ts";
import { CASES, setup } from "../models/_cases.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K-hf`;

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

Deno.test("smoothingFactors: the closed form with the reference's clamps", () => {
  const act = Float32Array.from([4, 0.25, 0, 9]);
  const W1 = { shape: [2, 4], data: Float32Array.from([1, -0.5, 0, 2, -3, 0.25, 0, 1]) };
  const W2 = { shape: [1, 4], data: Float32Array.from([0.5, 4, 0, -1]) };
  const s = smoothingFactors(act, [W1, W2], 0.5);
  const want = [
    Math.sqrt(4) / Math.sqrt(3),
    Math.sqrt(0.25) / Math.sqrt(4),
    1e-5,
    3 / Math.sqrt(2),
  ];
  want.forEach((w, j) => assertAlmostEquals(s[j], w, 1e-6));
  assertThrows(
    () => smoothingFactors(act, [{ shape: [1, 3], data: new Float32Array(3) }], 0.5),
    OptionError,
  );
});

async function invariance(model: Model, ids: number[][], tol: number) {
  const stats = await smoothQuantStats(model, ids);
  const { model: sm, factors } = await smoothQuant(model, stats, { alpha: 0.5 });
  let moved = 0;
  for (const s of factors.values()) for (const v of s) if (Math.abs(v - 1) > 0.05) moved++;
  assert(moved > 0, "the factors must move something");
  for (const w of ids.slice(0, 2)) {
    const d = maxAbsDiff((await forward(model, w)).data, (await forward(sm, w)).data);
    assertLess(d, tol);
  }
  return { stats, sm, factors };
}

Deno.test("SmoothQuant alone leaves stories260K's logits unchanged; max|X| migrates to max|X|/s", async () => {
  const m = await loadModel(MODEL);
  const cal = await calibrationSet(m, "tinystories", { nsamples: 4, seqlen: 128 });
  const { stats, sm, factors } = await invariance(m, cal.ids, 1e-4);
  const after = await smoothQuantStats(sm, cal.ids);
  for (const [norm, a] of stats) {
    const s = factors.get(norm)!, b = after.get(norm)!;
    for (let j = 0; j < a.length; j++) {
      assertAlmostEquals(b[j], a[j] / s[j], 1e-4 * (1 + a[j] / s[j]));
    }
  }
  await assertThrowsAsync(() => smoothQuant(m, stats, { alpha: 1.5 }));
});

async function assertThrowsAsync(f: () => Promise<unknown>) {
  let threw = false;
  try {
    await f();
  } catch (e) {
    threw = e instanceof OptionError;
  }
  assert(threw, "expected an OptionError");
}

Deno.test("SmoothQuant alone leaves a tiny pre-LN OPT's logits unchanged (LayerNorm bias folded)", async () => {
  const c = CASES.find((x) => x.name.startsWith("opt: pre-LN"))!;
  const { dir, model, rng } = await setup(c);
  try {
    const ids = Array.from({ length: 3 }, () => Array.from({ length: 24 }, () => rng.int(97)));
    const { sm } = await invariance(model, ids, 1e-4);
    const norm = "model.decoder.layers.0.self_attn_layer_norm.bias";
    assert(
      model.weights.has(norm) ||
        [...sm.weights.overrides().keys()].some((k) => k.endsWith("_layer_norm.bias")),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("W8A4 per-token: SmoothQuant (α from the calibration sweep) ppl < RTN on stories260K", async () => {
  const m = await loadModel(MODEL);
  const plan = qllmPlan(resolveQllmConfig({ bits_w: 8, bits_a: 4 }), m.config);
  const w8a4 = async (x: Model) => ({ ...(await quantize(x, plan.recipe!)), points: plan.points });
  const cal = await calibrationSet(m, "tinystories", { nsamples: 8, seqlen: 256 });
  const stats = await smoothQuantStats(m, cal.ids);
  // α sweep on the calibration windows (mean NLL), as the seed picks α empirically.
  const sweep = await smoothQuantAlphaSweep(m, stats, [0.3, 0.5, 0.7, 0.85], async (s) => {
    const q = await w8a4(s);
    let sum = 0, n = 0;
    for (const w of cal.ids) {
      const r = windowNll(await forward(q, w), w, w.length);
      sum += r.sum;
      n += r.count;
    }
    return sum / n;
  });
  assertEquals(sweep.length, 4);
  const best = sweep.reduce((a, b) => (b.value < a.value ? b : a));
  const evalOpts = { nsamples: 6, seqlen: 256 };
  const rtn = (await perplexity(await w8a4(m), "tinystories", evalOpts)).ppl;
  const { model: sm } = await smoothQuant(m, stats, { alpha: best.alpha });
  const sq = (await perplexity(await w8a4(sm), "tinystories", evalOpts)).ppl;
  const fp = (await perplexity(m, "tinystories", evalOpts)).ppl;
  console.log(
    `FP ${fp.toFixed(4)}  W8A4 RTN ${rtn.toFixed(4)}  SmoothQuant α=${best.alpha} ${sq.toFixed(4)}`,
  );
  console.log(
    `sweep (calibration NLL): ${sweep.map((s) => `${s.alpha}: ${s.value.toFixed(5)}`).join(", ")}`,
  );
  assert(sq < rtn, `SmoothQuant ${sq} > RTN ${rtn}`);
});

Deno.test("SmoothQuant composes with GPTQ (the seed's gptq=true beside smoothquant=true)", async () => {
  const m = await loadModel(MODEL);
  const cfg = resolveQllmConfig({
    smoothquant: true,
    smoothquant_alpha: 0.5,
    smoothquant_nsamples: 4,
    smoothquant_seqlen: 128,
    gptq: true,
    gptq_nsamples: 8,
    gptq_seqlen: 128,
    bits_w: 4,
  });
  const a = await applyQllmConfig(m, cfg, { calibDataset: "tinystories" });
  assertEquals(a.smoothquant, {
    nsamples: 4,
    seqlen: 128,
    dataset: a.smoothquant!.dataset,
    alpha: 0.5,
  });
  assertEquals(a.gptq?.nsamples, 8);
  const layers = a.model.report.layers as { method: string }[];
  assertEquals(layers.length, 35);
  assert(layers.every((l) => l.method === "gptq"));
  // The smoothed norm (the same statistics recomputed) is in the quantized model.
  const cal = await calibrationSet(m, "tinystories", { nsamples: 4, seqlen: 128, seed: 0 });
  const { model: sm } = await smoothQuant(m, await smoothQuantStats(m, cal.ids), { alpha: 0.5 });
  const NORM = "model.layers.1.input_layernorm.weight";
  assertEquals((await a.model.weights.get(NORM)).data, (await sm.weights.get(NORM)).data);
  const ppl = (await perplexity(a.model, "tinystories", { nsamples: 2, seqlen: 256 })).ppl;
  assert(Number.isFinite(ppl) && ppl < 10, `W4 GPTQ after smoothing: ppl ${ppl}`);
});
