/**
 * Quantization points (`src/models/points.ts`) on stories260K:
 * - host forward: specs at `linearInput` / `linearOutput` / `kvWrite` give exactly the logits of
 *   the same fake quantization (`fakeQuantRef`, itself checked against a QuaRot transcription in
 *   tests/kernels/fake_quant_test.ts) done by JS hooks at the matching hook points; 16-bit specs
 *   leave the logits bit-identical; a 2-bit spec at each point changes them;
 * - CPU vs WebGPU (lavapipe): each point's spec alone (every point the GPU serves: linear
 *   input per token / groups + clip / per tensor, linear output, Q and K before and after RoPE,
 *   K per channel, V, the KV-cache write) gives resident-decoder logits within 1e-4 of the CPU
 *   forward run through the same calls (a prefill of 32, then 16 one-token steps);
 * - all together (8-bit inputs of every linear, a 4-bit KV cache): the same greedy text through
 *   `generate`, whose result says the GPU path stayed resident. Logits are not held to 1e-4
 *   there: inputs that differ by an ulp between backends (f32 sums in another order, the GPU's
 *   f32 exp in SwiGLU) sometimes fall on the other side of a rounding boundary, one level of one
 *   element, and with several specs in series the flip moves later scales (measured max |Δ|
 *   printed, about 0.9 of the specs' own 4.7); the kernels themselves agree bit for bit on equal
 *   input;
 * - activation and K/V specs together at 8 bits (every linear's input per token, the K/V cache
 *   per head, symmetric and not): the resident GPU logits within 1e-4 of the CPU, the same greedy
 *   text, resident;
 * - why richer sets (BROAD above) are not held to 1e-4, on the CPU alone: the same specs run
 *   through hooks on inputs moved by one ulp (seeded) move the logits by ~0.1–3, while the same
 *   noise without specs moves them by ~1e-5. One element landing on the other side of a rounding
 *   boundary changes a later quantizer's input by a whole level, which flips more elements there
 *   (a 4-bit KV entry, a per-tensor scale): an avalanche from a one-ulp cause. CPU and GPU inputs
 *   differ by ulps (ORT/MLAS or TypeScript sums vs the GPU's tiled and GEMV sums, f64 vs the GPU's
 *   f32 exp in softmax and SwiGLU), so whether a given set avalanches is luck of the draw;
 * - bad specs are OptionErrors naming the point and field; a `probs` spec (host only) makes the
 *   resident decoder decline with the reason, and `generate` falls back and says so.
 */
import { assert, assertEquals, assertLess, assertNotEquals, assertThrows } from "@std/assert";
import { cpuBackend } from "../../src/backend/cpu.ts";
import { getBackend, setBackend } from "../../src/backend/device.ts";
import { webgpuAvailable, type WebGPUBackend, webgpuBackend } from "../../src/backend/webgpu.ts";
import { OptionError } from "../../src/errors.ts";
import { generate } from "../../src/eval/generate.ts";
import { createKVCache, forward } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import { checkPoints, linearSpec, type QuantPoints } from "../../src/models/points.ts";
import { residentDecoder, residentUnsupported } from "../../src/models/resident.ts";
import { fakeQuantRef, type FakeQuantSpec } from "../../kernels/fake_quant.ts";
import type { Tensor } from "../../src/tensor.ts";

const STORIES = "../shared/data/models/stories260K-hf";
const model = await loadModel(STORIES);
const V = model.config.vocabSize;
const ids = Array.from({ length: 48 }, (_, i) => (i * 37 + 5) % V);

/** One spec per point type the GPU serves (hidden 64, heads 8/4, hd 8, ff 172). */
const SINGLE: Record<string, QuantPoints> = {
  "linearInput q_proj (groups of 32, clip 0.95)": {
    linearInput: { "*.self_attn.q_proj": { bits: 8, groupSize: 32, clip: 0.95 } },
  },
  "linearInput o_proj (per tensor, 6 bits)": {
    linearInput: { "*.self_attn.o_proj": { bits: 6, granularity: "tensor" } },
  },
  "linearInput up_proj (asym)": { linearInput: { "*.mlp.up_proj": { bits: 8, sym: false } } },
  "linearInput down_proj (static per-channel scales)": {
    linearInput: {
      "*.mlp.down_proj": {
        bits: 6,
        granularity: "channel",
        scales: Float32Array.from({ length: 172 }, (_, j) => 0.01 + 0.0002 * j),
      },
    },
  },
  "linearOutput k_proj": { linearOutput: { "*.self_attn.k_proj": { bits: 8 } } },
  "qPreRope": { qPreRope: { bits: 8, groupSize: 8 } },
  "kPreRope (per channel)": { kPreRope: { bits: 8, granularity: "channel" } },
  "q": { q: { bits: 8 } },
  "k (asym, per head)": { k: { bits: 6, sym: false, groupSize: 8 } },
  "v (per head)": { v: { bits: 4, groupSize: 8 } },
  "kvWrite (4-bit K and V)": {
    kvWrite: { k: { bits: 4, groupSize: 8 }, v: { bits: 4, sym: false, groupSize: 8 } },
  },
};
/** Every linear too (MLP included: ff 172), W8A8-style per-token, and a 4-bit KV cache. */
const BROAD: QuantPoints = {
  ...SINGLE["kvWrite (4-bit K and V)"],
  linearInput: {
    "*.mlp.down_proj": { bits: 8, sym: false },
    "*.self_attn.o_proj": { bits: 6, granularity: "tensor" },
    "*": { bits: 8 },
  },
  linearOutput: { "*.mlp.up_proj": { bits: 8, groupSize: 4 } },
};
/** Activation and K/V specs together, 8 bits: every linear's input per token, K/V per head. */
const TOGETHER: QuantPoints = {
  linearInput: { "*": { bits: 8 } },
  kvWrite: { k: { bits: 8, groupSize: 8 }, v: { bits: 8, sym: false, groupSize: 8 } },
};

const q = (t: Tensor, s: FakeQuantSpec): Tensor => {
  const cols = t.shape[t.shape.length - 1];
  return { shape: t.shape, data: fakeQuantRef(t.data, t.data.length / cols, cols, s) };
};

Deno.test("host forward: points = the same fake quantization through JS hooks", async () => {
  const points: QuantPoints = {
    linearInput: { "*.mlp.*": { bits: 4, sym: false }, "*": { bits: 6, groupSize: 16 } },
    linearOutput: { "*.k_proj": { bits: 5, granularity: "tensor" } },
    kvWrite: { k: { bits: 3, groupSize: 8 }, v: { bits: 4, granularity: "channel" } },
  };
  const hooks = {
    linearInput: (n: string, x: Tensor) =>
      q(x, n.includes(".mlp.") ? points.linearInput!["*.mlp.*"] : points.linearInput!["*"]),
    linearOutput: (n: string, y: Tensor) =>
      n.endsWith(".k_proj") ? q(y, points.linearOutput!["*.k_proj"]) : undefined,
    attentionKV: (_l: number, kv: { k: Tensor; v: Tensor }) => ({
      k: q(kv.k, points.kvWrite!.k!),
      v: q(kv.v, points.kvWrite!.v!),
    }),
  };
  const a = await forward(model, ids, { backend: cpuBackend, points });
  const b = await forward(model, ids, { backend: cpuBackend, hooks });
  assertEquals(a.data, b.data);
  const fp = await forward(model, ids, { backend: cpuBackend });
  assertNotEquals(a.data, fp.data);
  // model.points is the default
  const withPts: Model = { ...model, points };
  assertEquals((await forward(withPts, ids, { backend: cpuBackend })).data, a.data);
});

Deno.test("host forward: 16-bit specs are the identity, 2-bit specs at every point change logits", async () => {
  const fp = await forward(model, ids, { backend: cpuBackend });
  const all = (s: FakeQuantSpec): QuantPoints => ({
    linearInput: { "*": s },
    linearOutput: { "*": s },
    qPreRope: s,
    kPreRope: s,
    q: s,
    k: s,
    v: s,
    probs: s,
    kvWrite: { k: s, v: s },
  });
  assertEquals(
    (await forward(model, ids, { backend: cpuBackend, points: all({ bits: 16 }) })).data,
    fp.data,
  );
  for (const key of ["qPreRope", "kPreRope", "q", "k", "v", "probs"] as const) {
    const y = await forward(model, ids, { backend: cpuBackend, points: { [key]: { bits: 2 } } });
    assertNotEquals(y.data, fp.data, key);
  }
});

Deno.test("bad points are OptionErrors naming the point and field", async () => {
  const cfg = model.config;
  const e1 = assertThrows(
    () => checkPoints({ kvWrite: { k: { bits: 4, groupSize: 5 } } }, cfg),
    OptionError,
  );
  assert(e1.message.includes("points.kvWrite.k.groupSize"), e1.message);
  const e2 = assertThrows(() => checkPoints({ q: { bits: 1 } }, cfg), OptionError);
  assert(e2.message.includes("points.q.bits"), e2.message);
  const e3 = assertThrows(
    () => checkPoints({ kv: {} } as unknown as QuantPoints, cfg),
    OptionError,
  );
  assert(e3.message.includes("points.kv"), e3.message);
  const e4 = assertThrows(
    () => checkPoints({ probs: { bits: 4, granularity: "tensor" } }, cfg),
    OptionError,
  );
  assert(e4.message.includes("points.probs"), e4.message);
  // a linear spec whose group does not divide the linear's width (down_proj takes 172)
  let err: unknown;
  try {
    await forward(model, ids.slice(0, 4), {
      backend: cpuBackend,
      points: { linearInput: { "*": { bits: 4, groupSize: 64 } } },
    });
  } catch (e) {
    err = e;
  }
  assert(err instanceof OptionError && err.message.includes("down_proj"), String(err));
});

/** One-ulp noise: every other element of a tensor moved one ulp up or down (seeded LCG). */
function ulpNoise(seed: number): (x: Float32Array) => Float32Array {
  let st = seed >>> 0;
  const next = () => (st = (Math.imul(st, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  return (x) =>
    x.map((v) => {
      if (v === 0 || next() < 0.5) return v;
      f[0] = v;
      u[0] += next() < 0.5 ? 1 : -1;
      return f[0];
    });
}

/**
 * `points`' linear and KV-write specs as JS hooks (the same fake quantization, checked equal to
 * the points in the first test), each applied to its input after `noise`.
 */
function noisyHooks(points: QuantPoints, noise: (x: Float32Array) => Float32Array) {
  const nq = (t: Tensor, s: FakeQuantSpec | undefined): Tensor => {
    const d = noise(t.data);
    return s ? q({ shape: t.shape, data: d }, s) : { shape: t.shape, data: d };
  };
  return {
    linearInput: (n: string, x: Tensor) => nq(x, linearSpec(points.linearInput, n)),
    linearOutput: (n: string, y: Tensor) => nq(y, linearSpec(points.linearOutput, n)),
    attentionKV: (_l: number, kv: { k: Tensor; v: Tensor }) => ({
      k: nq(kv.k, points.kvWrite?.k),
      v: nq(kv.v, points.kvWrite?.v),
    }),
  };
}

Deno.test("CPU alone: one-ulp input noise makes BROAD's specs avalanche, not the float forward", async () => {
  // The same calls as the GPU comparison: a prefill of 32, then one token at a time.
  const run = async (hooks: ReturnType<typeof noisyHooks>) => {
    const cache = createKVCache(model.config, 64);
    const out = new Float32Array(ids.length * V);
    out.set((await forward(model, ids.slice(0, 32), { backend: cpuBackend, cache, hooks })).data);
    for (let k = 32; k < ids.length; k++) {
      const l = await forward(model, [ids[k]], { backend: cpuBackend, cache, hooks });
      out.set(l.data, k * V);
    }
    return out;
  };
  const maxDiff = (a: Float32Array, b: Float32Array) => {
    let m = 0;
    for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
    return m;
  };
  const exact = (x: Float32Array) => x;
  const fp = await run(noisyHooks({}, exact));
  const broad = await run(noisyHooks(BROAD, exact));
  const noFloat: number[] = [], noBroad: number[] = [];
  for (const seed of [1, 2, 3]) {
    noFloat.push(maxDiff(fp, await run(noisyHooks({}, ulpNoise(seed)))));
    noBroad.push(maxDiff(broad, await run(noisyHooks(BROAD, ulpNoise(seed)))));
  }
  console.log(
    `  one-ulp noise moves the float logits by ${noFloat.map((x) => x.toExponential(1))}, ` +
      `BROAD's by ${noBroad.map((x) => x.toExponential(1))}`,
  );
  for (const x of noFloat) assertLess(x, 1e-4);
  assert(Math.max(...noBroad) > 1e-2, "BROAD should amplify one-ulp noise");
});

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("points_test: SKIPPED (GPU part) — no WebGPU adapter");
let gpu: WebGPUBackend | undefined;

/** Max |Δ| of the resident decoder's logits (prefill 32, then 16 single steps) vs the CPU. */
async function residentVsCpu(points: QuantPoints): Promise<{ worst: number; moved: number }> {
  const qm: Model = { ...model, points };
  assertEquals(residentUnsupported(qm, gpu!, { capacity: 64 }), undefined);
  // Specs see the rows of each call (per-tensor / per-channel stats over the step's tokens), so
  // the CPU runs the same calls through its KV cache: a prefill of 32, then one token at a time.
  const steps = async (m: Model) => {
    const cache = createKVCache(m.config, 64);
    const out = new Float32Array(ids.length * V);
    out.set((await forward(m, ids.slice(0, 32), { backend: cpuBackend, cache })).data);
    for (let k = 32; k < ids.length; k++) {
      out.set((await forward(m, [ids[k]], { backend: cpuBackend, cache })).data, k * V);
    }
    return { data: out };
  };
  const ref = await steps(qm);
  const fp = await steps(model);
  let moved = 0;
  for (let i = 0; i < fp.data.length; i++) {
    moved = Math.max(moved, Math.abs(fp.data[i] - ref.data[i]));
  }
  const dec = await residentDecoder(qm, gpu!, { capacity: 64 });
  let worst = 0;
  try {
    const pre = await dec.step(ids.slice(0, 32), { allLogits: true });
    for (let i = 0; i < pre.length; i++) worst = Math.max(worst, Math.abs(pre[i] - ref.data[i]));
    for (let k = 32; k < ids.length; k++) {
      const l = await dec.step([ids[k]]);
      for (let j = 0; j < V; j++) worst = Math.max(worst, Math.abs(l[j] - ref.data[k * V + j]));
    }
  } finally {
    dec.release();
  }
  return { worst, moved };
}

/** Greedy continuations on the resident GPU decoder and on the CPU. */
async function greedyBoth(points: QuantPoints, maxNewTokens = 40) {
  const qm: Model = { ...model, points };
  const prev = getBackend();
  const go = { maxNewTokens, stopAtEos: false };
  try {
    setBackend(gpu!);
    const a = await generate(qm, "Once upon a time", go);
    setBackend(cpuBackend);
    const b = await generate(qm, "Once upon a time", go);
    return { a, b };
  } finally {
    setBackend(prev);
  }
}

Deno.test({
  name: "each point's spec on CPU and on the resident WebGPU decoder: logits < 1e-4",
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
  name: "activation + K/V specs together (A8, KV8): logits < 1e-4, same greedy text, resident",
  ignore: !available,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    gpu ??= await webgpuBackend({ allowFallback: true });
    const { worst, moved } = await residentVsCpu(TOGETHER);
    console.log(
      `  A8 + KV8: specs move the logits by ${moved.toExponential(2)}; ` +
        `CPU vs resident GPU ${worst.toExponential(2)}`,
    );
    assert(moved > 1e-3, "the specs must change the logits");
    assertLess(worst, 1e-4);
    const { a, b } = await greedyBoth(TOGETHER);
    assert(a.resident && !b.resident);
    assertEquals(a.ids, b.ids);
  },
});

Deno.test({
  name: "8-bit inputs of every linear + a 4-bit KV cache together: same greedy text, resident",
  ignore: !available,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    gpu ??= await webgpuBackend({ allowFallback: true });
    // Inputs that differ by an ulp between backends (f32 sums in another order, the GPU's exp
    // in SwiGLU) land on the other side of a rounding boundary now and then: one 8-bit level of
    // one element. That bounds this comparison, not the kernels (equal bit for bit on equal input,
    // tests/kernels/fake_quant_test.ts).
    const { worst, moved } = await residentVsCpu(BROAD);
    console.log(
      `  broad: specs move the logits by ${moved.toExponential(2)}; ` +
        `CPU vs resident GPU ${worst.toExponential(2)} (level flips)`,
    );
    assertLess(worst, 0.25 * moved);
    const { a, b } = await greedyBoth(BROAD);
    assert(a.resident && !b.resident);
    assertEquals(a.ids, b.ids);
    console.log(`  greedy with specs: ${JSON.stringify(a.completion)}`);
    // a probs spec is host-only: the decoder declines and says why
    const withProbs: Model = { ...model, points: { ...BROAD, probs: { bits: 8 } } };
    assert(residentUnsupported(withProbs, gpu, { capacity: 64 })?.includes("probs"));
    const prev = getBackend();
    setBackend(gpu);
    try {
      const c = await generate(withProbs, "Once upon a time", { maxNewTokens: 4 });
      assertEquals(c.resident, false);
    } finally {
      setBackend(prev);
    }
  },
});
