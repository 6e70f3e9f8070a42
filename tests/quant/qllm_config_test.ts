/**
 * The qllm-infer configuration space (src/quant/pipeline/qllm_config.ts):
 * - the seed's SmoothQuant and QRazor script blocks parse (shell-variable form, comments, the
 *   `k_per_token=true   #true = per-channel quant` line) and map onto points and weight
 *   quantizers as documented (K per channel under `k_per_token = true`, Q/V per token and head;
 *   QRazor A/Q/K/V/S as `qrazor` specs equal to qllm-infer's transcription `qllmFakeQuant`, the
 *   `hostHooks` escape hatch giving the same numbers through JS hooks);
 * - the per-token activation spec the plan emits computes exactly qllm-infer's per-token grid
 *   (`qllmFakeQuant`, itself checked against a plain reference in qrazor_test.ts);
 * - unknown keys and impossible combinations are OptionErrors naming the key; a malformed line is
 *   a FormatError naming the file and line; CLI flags override `--config`.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { FormatError, OptionError } from "../../src/errors.ts";
import { fakeQuant } from "../../src/backend/ops.ts";
import type { ModelConfig } from "../../src/models/config.ts";
import {
  applyQllmConfig,
  parseQllmFlags,
  parseQllmShell,
  qllmPlan,
  resolveQllmConfig,
} from "../../src/quant/pipeline/qllm_config.ts";
import { qllmFakeQuant } from "../../src/quant/weight_activation/qrazor.ts";
import { Rng } from "../_rng.ts";
import { modelIdentity } from "../../src/ledger/hash.ts";
import { loadModel } from "../../src/models/load.ts";

const MC = {
  family: "llama",
  hiddenSize: 64,
  numHeads: 8,
  numKvHeads: 4,
  headDim: 8,
  numLayers: 5,
  intermediateSize: 172,
} as unknown as ModelConfig;

/** The seed's SmoothQuant block (run_smoothquant.sh). */
const SMOOTHQUANT = `# Measuring Perplexity with SmoothQuant
eval_ppl=true
eval_ppl_seqlen=2048
# Quantization
a_per_tensor=false
a_per_token=true
bits_a=8
sym_a=true
groupsize_a=-1
w_per_channel=true
bits_w=8
sym_w=true
groupsize_w=-1
q_per_tensor=true
q_per_token=false
bits_q=16
sym_q=true
groupsize_q=-1
k_per_tensor=true
k_per_token=false
bits_k=16
sym_k=true
groupsize_k=-1
v_per_tensor=true
v_per_token=false
bits_v=16
sym_v=true
groupsize_v=-1
s_per_tensor=true
s_per_token=false
bits_s=16
sym_s=false
groupsize_s=-1
# SmoothQuant
smoothquant=true
smoothquant_alpha=0.55
smoothquant_dataset=pile
smoothquant_nsamples=512
smoothquant_seqlen=512
`;

/** The seed's QRazor block (run_qrazor.sh), KV part. */
const QRAZOR_KV = `a_per_tensor=false
a_per_token=true
bits_a=8
sym_a=false
groupsize_a=-1
a_qrazor=true
a_qrazor_bits=4
a_qrazor_group=8
w_per_channel=true
bits_w=8
sym_w=true
groupsize_w=128
w_qrazor=true
w_qrazor_bits=4
w_qrazor_group=8
k_pre_RoPE_quant=false
k_per_tensor=false
k_per_token=true   #true = per-channel quant, false = per-token quant
bits_k=8
sym_k=false
groupsize_k=-1
k_qrazor=true
k_qrazor_bits=4
k_qrazor_group=8
v_per_tensor=false
v_per_token=true
bits_v=8
sym_v=false
groupsize_v=-1
v_qrazor=true
v_qrazor_bits=4
`;

Deno.test("the seed's SmoothQuant block: W8 per-channel weights, A8 per-token specs", () => {
  const raw = parseQllmShell(SMOOTHQUANT, "run_smoothquant.sh");
  assertEquals(raw.bits_a, 8);
  assertEquals(raw.smoothquant_dataset, "pile");
  const c = resolveQllmConfig(raw);
  assertEquals(c.smoothquant_alpha, 0.55);
  const plan = qllmPlan(c, MC);
  assertEquals(plan.points, { linearInput: { "*": { bits: 8, sym: true, granularity: "token" } } });
  assertEquals(plan.hooks, undefined);
  assertEquals(plan.weight?.name, "qllm-rtn");
  assertEquals(plan.weight?.options, {
    bits: 8,
    sym: true,
    groupSize: -1,
    perChannel: true,
    qrazorBits: undefined,
    qrazorGroup: 8,
  });
});

Deno.test("the seed's QRazor block: A and KV as QRazor specs (hooks with hostHooks), W8→4 QRazor weights", async () => {
  const c = resolveQllmConfig(parseQllmShell(QRAZOR_KV));
  const plan = qllmPlan(c, MC);
  const qr = { bits: 4, group: 8 };
  // K per channel (k_per_token = true), asymmetric 8-bit, razored to 4 bits in g8; V per head.
  assertEquals(plan.points, {
    linearInput: { "*": { bits: 8, sym: false, granularity: "token", qrazor: qr } },
    k: { bits: 8, sym: false, granularity: "channel", qrazor: qr },
    v: { bits: 8, sym: false, granularity: "token", groupSize: 8, qrazor: qr },
  });
  assertEquals(plan.hooks, undefined);
  assertEquals(plan.weight?.name, "qrazor");
  assertEquals(plan.weight?.options.groupSize, 128);
  // The specs compute qllm-infer's transcription; the escape hatch's hooks give the same numbers.
  const host = qllmPlan(c, MC, { hostHooks: true });
  assertEquals(host.points, undefined);
  assert(host.hooks?.linearInput && host.hooks.attentionKV);
  const rng = new Rng(1);
  const k = rng.normals(12 * 32), v = rng.normals(12 * 32), x = rng.normals(12 * 64);
  const wantK = qllmFakeQuant(k, 12, 32, { bits: 8, sym: false, unit: "column", qrazor: qr }).y;
  const wantV =
    qllmFakeQuant(v, 12, 32, { bits: 8, sym: false, unit: "row", groupSize: 8, qrazor: qr }).y;
  const wantX = qllmFakeQuant(x, 12, 64, { bits: 8, sym: false, unit: "row", qrazor: qr }).y;
  assertEquals(fakeQuant({ shape: [12, 32], data: k }, plan.points!.k!).data, wantK);
  assertEquals(fakeQuant({ shape: [12, 32], data: v }, plan.points!.v!).data, wantV);
  assertEquals(fakeQuant({ shape: [12, 64], data: x }, plan.points!.linearInput!["*"]).data, wantX);
  const out = host.hooks.attentionKV(0, {
    k: { shape: [12, 32], data: k },
    v: { shape: [12, 32], data: v },
  }) as { k: { data: Float32Array }; v: { data: Float32Array } };
  assertEquals(out.k.data, wantK);
  assertEquals(out.v.data, wantV);
  const hx = (await host.hooks.linearInput("l", { shape: [12, 64], data: x })) as {
    data: Float32Array;
  };
  assertEquals(hx.data, wantX);
});

Deno.test("q_qrazor and s_qrazor: QRazor specs at the Q and attention-probabilities points", () => {
  const p = qllmPlan(
    resolveQllmConfig({
      bits_q: 8,
      q_per_tensor: false,
      q_per_token: true,
      q_qrazor: true,
      q_qrazor_group: 16,
      s_per_tensor: false,
      s_per_token: true,
      s_qrazor: true,
      s_qrazor_bits: 6,
    }),
    MC,
  ).points!;
  assertEquals(p.q, {
    bits: 8,
    sym: true,
    granularity: "token",
    groupSize: 8,
    qrazor: { bits: 4, group: 16 },
  });
  // bits_s 16 with s_qrazor: an INT16 asymmetric base grid per row, razored to 6 bits in g8
  assertEquals(p.probs, {
    bits: 16,
    sym: false,
    granularity: "token",
    qrazor: { bits: 6, group: 8 },
  });
  const row = new Float32Array(64);
  for (let j = 0; j < 40; j++) row[j] = Math.exp(-j / 5) / 5;
  const got = fakeQuant({ shape: [1, 64], data: row }, p.probs!).data;
  const want = qllmFakeQuant(row, 1, 64, {
    bits: 16,
    sym: false,
    unit: "row",
    qrazor: { bits: 6, group: 8 },
  }).y;
  assertEquals(got, want);
  assert(got.some((v, i) => Math.abs(v - row[i]) > 1e-4), "6 kept bits move the probabilities");
});

Deno.test("a_qrazor with bits_a 16: an INT16 per-tensor base grid razored to 8 bits", () => {
  const c = resolveQllmConfig({
    a_qrazor: true,
    a_qrazor_bits: 8,
    a_qrazor_group: 16,
    a_per_tensor: true,
    a_per_token: false,
  });
  const plan = qllmPlan(c, MC);
  const x = new Rng(4).normals(6 * 64, 2);
  const y = fakeQuant({ shape: [6, 64], data: x }, plan.points!.linearInput!["*"]);
  const want =
    qllmFakeQuant(x, 6, 64, { bits: 16, sym: true, unit: "tensor", qrazor: { bits: 8, group: 16 } })
      .y;
  assertEquals(y.data, want);
  let changed = 0;
  for (let i = 0; i < x.length; i++) if (Math.abs(y.data[i] - x[i]) > 1e-3) changed++;
  assert(changed > 0, "8 kept bits of an INT16 grid must move values");
});

Deno.test("granularity switches: K's per-token flag is per channel; Q/V per token are per head", () => {
  const base = {
    bits_q: 8,
    bits_k: 8,
    bits_v: 6,
    q_per_tensor: false,
    k_per_tensor: false,
    v_per_tensor: false,
  };
  let p = qllmPlan(
    resolveQllmConfig({ ...base, q_per_token: true, k_per_token: true, v_per_token: true }),
    MC,
  )
    .points!;
  assertEquals(p.q, { bits: 8, sym: true, granularity: "token", groupSize: 8 });
  assertEquals(p.k, { bits: 8, sym: true, granularity: "channel" });
  assertEquals(p.v, { bits: 6, sym: true, granularity: "token", groupSize: 8 });
  p = qllmPlan(resolveQllmConfig({ ...base, k_per_token: false, k_pre_RoPE_quant: true }), MC)
    .points!;
  assertEquals(p.kPreRope, { bits: 8, sym: true, granularity: "token", groupSize: 8 });
  assertEquals(p.k, undefined);
  assertEquals(p.q?.granularity, "channel");
  p = qllmPlan(
    resolveQllmConfig({
      bits_a: 4,
      groupsize_a: 16,
      bits_s: 8,
      s_per_tensor: false,
      s_per_token: true,
    }),
    MC,
  )
    .points!;
  assertEquals(p.linearInput, { "*": { bits: 4, sym: true, granularity: "token", groupSize: 16 } });
  assertEquals(p.probs, { bits: 8, sym: false, granularity: "token" });
  p = qllmPlan(resolveQllmConfig({ bits_a: 8, a_per_tensor: true, a_per_token: false }), MC)
    .points!;
  assertEquals(p.linearInput?.["*"].granularity, "tensor");
});

Deno.test("the per-token A8 spec computes qllm-infer's per-token grid exactly", () => {
  const rng = new Rng(9);
  const x = rng.normals(16 * 64, 3);
  for (const sym of [true, false]) {
    const spec =
      qllmPlan(resolveQllmConfig({ bits_a: 8, sym_a: sym }), MC).points!.linearInput!["*"];
    const got = fakeQuant({ shape: [16, 64], data: x }, spec).data;
    const want = qllmFakeQuant(x, 16, 64, { bits: 8, sym, unit: "row" }).y;
    for (let i = 0; i < x.length; i++) assertEquals(got[i] + 0, want[i], `sym ${sym} element ${i}`);
  }
});

Deno.test("unknown keys and impossible combinations are OptionErrors naming the key", () => {
  const e = assertThrows(() => resolveQllmConfig({ bits_x: 8 }), OptionError);
  assertEquals((e as OptionError).option, "bits_x");
  assertThrows(() => resolveQllmConfig({ Bits_A: 8 }), OptionError, 'did you mean "bits_a"');
  const cases: [Record<string, unknown>, string][] = [
    [{ bits_a: 8, a_per_tensor: true, a_per_token: true }, "a_per_token"],
    [{ bits_q: 8, q_per_tensor: false, q_per_token: true, groupsize_q: 4 }, "groupsize_q"],
    [{ bits_a: 8, a_per_tensor: true, a_per_token: false, groupsize_a: 16 }, "groupsize_a"],
    [{ bits_s: 8 }, "s_per_token"],
    [{ w_qrazor: true }, "w_qrazor"],
    [{ bits_w: 4, w_qrazor: true, w_qrazor_bits: 6 }, "w_qrazor_bits"],
    [{ s_qrazor: true }, "s_per_token"],
    [{ bits_k: 8, k_qrazor: true, k_pre_RoPE_quant: true }, "k_qrazor"],
    [{ bits_w: 12 }, "bits_w"],
    [{ bits_w: 4, w_per_channel: false, groupsize_w: 32 }, "groupsize_w"],
    [{ llm_int8: true, bits_a: 8 }, "llm_int8"],
    [{ zeroquant: true, gptq: true, bits_w: 4 }, "zeroquant"],
    [{ bits_a: "8" }, "bits_a"],
    [{ groupsize_a: 0 }, "groupsize_a"],
  ];
  for (const [cfg, key] of cases) {
    const err = assertThrows(() => resolveQllmConfig(cfg), OptionError);
    assertEquals((err as OptionError).option, key, JSON.stringify(cfg));
  }
});

Deno.test("shell form: bad lines are FormatErrors; CLI flags override --config", async () => {
  assertThrows(() => parseQllmShell("bits_a=8\nbits_w 4\n", "x.sh"), FormatError, "line 2");
  assertEquals(parseQllmShell('export bits_a="4"\nllm_int8_threshold=inf # none'), {
    bits_a: 4,
    llm_int8_threshold: Infinity,
  });
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/c.sh`, SMOOTHQUANT);
    const r = await parseQllmFlags([
      "--config",
      `${dir}/c.sh`,
      "--bits_a=6",
      "--sym_a",
      "false",
      "--smoothquant",
      "--model",
      "m",
    ]);
    assertEquals(r.config.bits_a, 6);
    assertEquals(r.config.sym_a, false);
    assertEquals(r.config.smoothquant, true);
    assertEquals(r.config.bits_w, 8);
    assertEquals(r.rest, ["--model", "m"]);
    await assertRejects(() => parseQllmFlags(["--bits_a"]), OptionError, "bits_a");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the ledger's model identity includes the quantization-point specs", async () => {
  const m = await loadModel(
    new URL("../../../shared/data/models/stories260K-hf", import.meta.url).pathname,
  );
  const ids = new Set<string>();
  for (const bits_a of [16, 8, 4]) {
    const points = qllmPlan(resolveQllmConfig({ bits_a }), m.config).points;
    ids.add((await modelIdentity({ ...m, points })).hash);
  }
  assertEquals(ids.size, 3);
});

Deno.test("applyQllmConfig resumes the weight quantization from its workdir", async () => {
  const m = await loadModel(
    new URL("../../../shared/data/models/stories260K-hf", import.meta.url).pathname,
  );
  const dir = await Deno.makeTempDir();
  try {
    const c = resolveQllmConfig({
      bits_w: 8,
      w_qrazor: true,
      w_qrazor_bits: 4,
      w_qrazor_group: 16,
      bits_a: 8,
    });
    const first = await applyQllmConfig(m, c, { workdir: dir });
    const again = await applyQllmConfig(m, c, { workdir: dir });
    assertEquals(first.model.report.resumedBlocks, 0);
    assertEquals(again.model.report.resumedBlocks, 5);
    const name = "model.layers.3.mlp.down_proj.weight";
    assertEquals(
      (await again.model.weights.get(name)).data,
      (await first.model.weights.get(name)).data,
    );
    assertEquals(again.model.points, first.model.points);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
