/**
 * The issue-14 table (src/eval/wa_table.ts): every row the "Must show" lists is present
 * with its effective bits (QRazor's from the formula: 4.38 … 4.03), and a measured row equals the
 * perplexity of the same qllm configuration applied and evaluated directly (one window per
 * forward).
 */
import { assert, assertAlmostEquals, assertEquals } from "@std/assert";
import { waTable, waTableConfigs, waTableMarkdown } from "../../src/eval/wa_table.ts";
import { perplexity } from "../../src/eval/perplexity.ts";
import { loadModel } from "../../src/models/load.ts";
import { applyQllmConfig, resolveQllmConfig } from "../../src/quant/pipeline/qllm_config.ts";

const MODEL = new URL("../../../shared/data/models/stories260K-hf", import.meta.url).pathname;

Deno.test("the table lists the issue's rows with their effective bits", () => {
  const names = waTableConfigs().map((r) => r.name);
  for (
    const want of [
      "W8A8 RTN",
      "W8A8 SmoothQuant",
      "W8A8 LLM.int8()",
      "W8A8 ZeroQuant",
      "W4/8A16 ZeroQuant",
      "W4/8A8 ZeroQuant",
      "W4A4 ZeroQuant",
    ]
  ) assert(names.some((n) => n.startsWith(want)), want);
  const eff = { 8: "4.38", 16: "4.19", 32: "4.10", 64: "4.05", 128: "4.03" };
  for (const kind of ["W4A16", "W4A8", "W4A4", "W4KV4", "W4A4KV4"]) {
    for (const [g, e] of Object.entries(eff)) {
      const r = waTableConfigs().find((r) => r.name === `QRazor ${kind} (g${g})`);
      assertEquals(r?.effBits, e, `${kind} g${g}`);
    }
  }
  assertEquals(waTableConfigs().filter((r) => r.name.startsWith("GPTQ + QRazor")).length, 5);
  assertEquals(waTableConfigs({ only: ["W4KV4"] }).length, 5);
});

Deno.test("a measured row = the configuration's perplexity computed directly", async () => {
  const model = await loadModel(MODEL);
  const rows = await waTable(model, { windows: 1, only: ["QRazor W4A8 (g32)"], lkdSteps: [] });
  assertEquals(rows.length, 1);
  const cfg = waTableConfigs().find((r) => r.name === "QRazor W4A8 (g32)")!.cfg;
  const m = (await applyQllmConfig(model, resolveQllmConfig(cfg))).model;
  const want = await perplexity(m, "tinystories", { nsamples: 1, seqlen: 512, batch: 1 });
  assertAlmostEquals(rows[0].ppl, want.ppl, 1e-9);
  assert(waTableMarkdown(rows).includes(`| QRazor W4A8 (g32) | 4.10 | ${want.ppl.toFixed(4)} |`));
});
