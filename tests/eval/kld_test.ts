/**
 * KL divergence (llama.cpp `--kl-divergence` statistics): closed forms on hand-made rows,
 * percentile interpolation, a model against itself, and RTN-3 vs GPTQ-3 on TinyStories valid.
 */
import { assert, assertAlmostEquals, assertEquals } from "@std/assert";
import { kld, kldSummary, percentile, rowStats } from "../../src/eval/kld.ts";
import { loadModel } from "../../src/models/load.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;

Deno.test("rowStats: KLD of two 2-token distributions in closed form; argmax and p(target)", () => {
  // base logits (0, ln 3) → p = (1/4, 3/4); quant logits (0, 0) → q = (1/2, 1/2).
  const r = rowStats([0, Math.log(3)], [0, 0], 1);
  const want = 0.25 * Math.log(0.25 / 0.5) + 0.75 * Math.log(0.75 / 0.5);
  assertAlmostEquals(r.kld, want, 1e-12);
  assertAlmostEquals(r.pBase, 0.75, 1e-12);
  assertAlmostEquals(r.pQuant, 0.5, 1e-12);
  assertEquals(r.same, false); // argmax 1 vs argmax 0 (first of a tie)
  assertEquals(rowStats([1, 2, 3], [1, 2, 3], 0).kld, 0);
});

Deno.test("percentile interpolates linearly between sorted values (llama.cpp)", () => {
  const s = [0, 10, 20, 30, 40];
  assertEquals(percentile(s, 0.5), 20);
  assertAlmostEquals(percentile(s, 0.1), 4, 1e-12); // p = 0.4 → 0.6·0 + 0.4·10
  assertAlmostEquals(percentile(s, 0.99), 39.6, 1e-12);
  assertEquals(percentile(s, 0), 0);
  assertEquals(percentile(s, 1), 40);
});

Deno.test("kld: a model against itself is 0 with top-1 agreement 1; RTN-3 > GPTQ-3 on TinyStories", async () => {
  const m = await loadModel(`${DATA}models/stories260K`);
  const opts = { ctx: 256, nsamples: 6 };
  const self = await kld(m, m, "tinystories", opts);
  assertAlmostEquals(self.meanKld, 0, 1e-9);
  assertEquals(self.sameTop, 1);
  assertEquals(self.tokens, 6 * (256 - 1 - 128));
  assertAlmostEquals(self.pplBase, self.pplQuant, 1e-9);
  const calib = await calibrationSet(m, "tinystories", { nsamples: 32, seqlen: 256, seed: 0 });
  const r3 = await quantize(m, rtn({ bits: 3 }), { calib });
  const g3 = await quantize(m, gptq({ bits: 3 }), { calib });
  const kr = await kld(m, r3, "tinystories", opts);
  const kg = await kld(m, g3, "tinystories", opts);
  assert(kr.meanKld > kg.meanKld, `RTN-3 ${kr.meanKld} vs GPTQ-3 ${kg.meanKld}`);
  assert(kr.sameTop < 1 && kr.meanKld > 0);
  // Consistency: mean ln PPL ratio ≈ −mean of ln(pQ/pB), PPLs ordered as the KLDs.
  assert(kr.pplQuant > kr.pplBase);
  assert(kr.kld["Maximum"] >= kr.kld["99.0%"] && kr.kld["99.0%"] >= kr.kld["Median"]);
  assert(kldSummary(kr).includes("Mean    KLD:"));
  console.log(
    `RTN-3 KLD ${kr.meanKld.toFixed(4)} ± ${kr.kldStderr.toFixed(4)}, GPTQ-3 ${
      kg.meanKld.toFixed(4)
    } ± ${kg.kldStderr.toFixed(4)}`,
  );
});
