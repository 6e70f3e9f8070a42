import { assert, assertEquals, assertLess, assertRejects } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { generate, sampleToken } from "../../src/eval/generate.ts";
import { forward } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import { mulberry32 } from "../../src/rng.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K-hf`;

Deno.test("generate: greedy with the KV cache equals argmax over full re-forwards", async () => {
  const m = await loadModel(MODEL);
  const g = await generate(m, "Once upon a time", { maxNewTokens: 24, stopAtEos: false });
  const ids = [...g.promptIds];
  const V = m.config.vocabSize;
  for (let s = 0; s < 24; s++) {
    const L = (await forward(m, ids)).data.subarray((ids.length - 1) * V);
    let best = 0;
    for (let j = 1; j < V; j++) if (L[j] > L[best]) best = j;
    ids.push(best);
  }
  assertEquals(g.ids, ids.slice(g.promptIds.length));
  assert(g.text.startsWith("Once upon a time"));
});

Deno.test("sampleToken: frequencies follow softmax(logits / T) with top-p truncation", () => {
  const logits = new Float32Array([2, 1, 0.5, -1]);
  const T = 0.8;
  const p = Array.from(logits, (x) => Math.exp(x / T));
  const z = p.reduce((a, b) => a + b);
  const rand = mulberry32(7);
  const n = 40000;
  const counts = [0, 0, 0, 0];
  for (let i = 0; i < n; i++) counts[sampleToken(logits, { temperature: T, topP: 1, rand })]++;
  // 4-sigma binomial bound per bin.
  for (let j = 0; j < 4; j++) {
    const q = p[j] / z;
    assertLess(Math.abs(counts[j] / n - q), 4 * Math.sqrt(q * (1 - q) / n), `bin ${j}`);
  }
  // top-p 0.7 keeps the smallest prefix with mass ≥ 0.7 of the sorted distribution.
  const kept = new Set<number>();
  for (let i = 0; i < 2000; i++) kept.add(sampleToken(logits, { temperature: T, topP: 0.7, rand }));
  const sorted = p.map((x) => x / z);
  const keep = sorted[0] >= 0.7 ? 1 : sorted[0] + sorted[1] >= 0.7 ? 2 : 3;
  assertEquals(kept.size, keep);
});

Deno.test("generate: seeded sampling is reproducible; bad options are typed errors", async () => {
  const m = await loadModel(MODEL);
  const a = await generate(m, "Once", { maxNewTokens: 16, temperature: 1, topP: 0.9, seed: 5 });
  const b = await generate(m, "Once", { maxNewTokens: 16, temperature: 1, topP: 0.9, seed: 5 });
  assertEquals(a.ids, b.ids);
  await assertRejects(() => generate(m, "x", { temperature: -1 }), OptionError, "temperature");
  await assertRejects(() => generate(m, "x", { topP: 0 }), OptionError, "topP");
});
