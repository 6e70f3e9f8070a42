/**
 * `waCommand` (src/cli_wa.ts): a qllm-infer shell block given with `--config` plus an overriding
 * flag gives the perplexity of the same configuration applied through the library; unknown keys
 * are OptionErrors naming the key; `--help` prints every knob.
 */
import { assert, assertAlmostEquals, assertEquals, assertRejects } from "@std/assert";
import { waCommand } from "../../src/cli_wa.ts";
import { OptionError } from "../../src/errors.ts";
import { perplexity } from "../../src/eval/perplexity.ts";
import { loadModel } from "../../src/models/load.ts";
import { applyQllmConfig, resolveQllmConfig } from "../../src/quant/pipeline/qllm_config.ts";

const MODEL = new URL("../../../shared/data/models/stories260K-hf", import.meta.url).pathname;

async function captured(f: () => Promise<number>): Promise<{ code: number; out: string[] }> {
  const out: string[] = [];
  const log = console.log;
  console.log = (...a: unknown[]) => out.push(a.join(" "));
  try {
    return { code: await f(), out };
  } finally {
    console.log = log;
  }
}

Deno.test("wa: --config shell block + flag override = the library's perplexity", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/w8a8.sh`,
      "# W8A8\nbits_w=8\nsym_w=true\nbits_a=8\na_per_token=true   # per token\nsym_a=true\n",
    );
    const { code, out } = await captured(() =>
      waCommand([
        "--config",
        `${dir}/w8a8.sh`,
        "--bits_a=6",
        "--model",
        MODEL,
        "--nsamples",
        "2",
        "--seqlen",
        "128",
        "--json",
      ])
    );
    assertEquals(code, 0);
    const r = JSON.parse(out[0]);
    assertEquals(r.config.bits_a, 6);
    assertEquals(r.effectiveWeightBits, 8);
    const m = await loadModel(MODEL);
    const a = await applyQllmConfig(m, resolveQllmConfig({ bits_w: 8, bits_a: 6 }));
    const want = (await perplexity(a.model, "tinystories", { nsamples: 2, seqlen: 128 })).ppl;
    assertAlmostEquals(r.ppl, want, 1e-9);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("wa: unknown keys are OptionErrors; --help lists the knobs", async () => {
  const u = await assertRejects(() => waCommand(["--bits_w", "8", "--bits_x", "4"]), OptionError);
  assertEquals((u as OptionError).option, "bits_x");
  const e = await assertRejects(
    () => waCommand(["--bits_a", "8", "--a_per_tensor", "--model", MODEL]),
    OptionError,
  );
  assertEquals((e as OptionError).option, "a_per_token");
  const { out } = await captured(() => waCommand(["--help"]));
  assert(out[0].includes("k_pre_RoPE_quant") && out[0].includes("w_qrazor_group"));
});

Deno.test("wa: q_qrazor / s_qrazor flags = the library's perplexity; LLM.int8() lists outliers", async () => {
  const flags = [
    "--bits_q=8",
    "--q_qrazor",
    "--s_per_tensor=false",
    "--s_per_token",
    "--s_qrazor",
    "--s_qrazor_bits=6",
  ];
  const { code, out } = await captured(() =>
    waCommand([...flags, "--model", MODEL, "--nsamples", "1", "--seqlen", "128", "--json"])
  );
  assertEquals(code, 0);
  const r = JSON.parse(out[0]);
  assertEquals(r.config.q_qrazor, true);
  assertEquals(r.config.s_qrazor, true);
  const m = await loadModel(MODEL);
  const cfg = {
    bits_q: 8,
    q_qrazor: true,
    s_per_tensor: false,
    s_per_token: true,
    s_qrazor: true,
    s_qrazor_bits: 6,
  };
  const a = await applyQllmConfig(m, resolveQllmConfig(cfg));
  assert(a.model.points?.q?.qrazor && a.model.points.probs?.qrazor);
  const want = (await perplexity(a.model, "tinystories", { nsamples: 1, seqlen: 128 })).ppl;
  const fp = (await perplexity(m, "tinystories", { nsamples: 1, seqlen: 128 })).ppl;
  assertAlmostEquals(r.ppl, want, 1e-9);
  assert(Math.abs(want - fp) > 1e-4, `Q/S razoring must change the perplexity (${want} vs ${fp})`);
  // LLM.int8() as a spec: the outlier dimensions come from one host pass with the reporting hook
  const int8 = await captured(() =>
    waCommand([
      "--llm_int8",
      "--llm_int8_threshold=2",
      "--model",
      MODEL,
      "--nsamples",
      "1",
      "--seqlen",
      "64",
      "--json",
    ])
  );
  const o = JSON.parse(int8.out[0]).llmInt8Outliers as Record<string, number[]>;
  assertEquals(Object.keys(o).length, 5 * 7);
  assert(Object.values(o).some((v) => v.length > 0), "threshold 2 finds outlier dimensions");
});
