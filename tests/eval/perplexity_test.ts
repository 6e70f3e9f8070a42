import { assert, assertAlmostEquals, assertEquals, assertRejects } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { evalTokens, perplexity, windowNll } from "../../src/eval/perplexity.ts";
import { forward } from "../../src/models/decoder.ts";
import { getTokenizer, loadModel } from "../../src/models/load.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K-hf`;

Deno.test("windowNll: uniform logits give log V per predicted token (closed form)", () => {
  const V = 7, T = 5, ids = [0, 1, 2, 3, 4, 5, 6, 0, 1, 2];
  const r = windowNll({ shape: [ids.length, V], data: new Float32Array(ids.length * V) }, ids, T);
  assertEquals(r.count, 8); // (T − 1) predictions per window, 2 windows
  assertAlmostEquals(r.sum / r.count, Math.log(V), 1e-12);
});

Deno.test("perplexity: GPTQ protocol on stories260K equals an independent per-token loop", async () => {
  const m = await loadModel(MODEL);
  const seqlen = 128, n = 3;
  const r = await perplexity(m, "tinystories", { seqlen, nsamples: n, batch: 2 });
  assertEquals(r.windows, n);
  // Oracle: every window forwarded on its own, log-softmax in float64 over each predicted token.
  const tok = await getTokenizer(m);
  const { ids } = await evalTokens(tok, "tinystories");
  let sum = 0, count = 0;
  for (let w = 0; w < n; w++) {
    const win = ids.slice(w * seqlen, (w + 1) * seqlen);
    const L = (await forward(m, win)).data;
    const V = m.config.vocabSize;
    for (let t = 0; t + 1 < seqlen; t++) {
      const row = Array.from(L.subarray(t * V, (t + 1) * V));
      const mx = Math.max(...row);
      const lse = mx + Math.log(row.reduce((s, x) => s + Math.exp(x - mx), 0));
      sum += lse - row[win[t + 1]];
      count++;
    }
  }
  assertAlmostEquals(r.nll, sum / count, 1e-5);
  assertAlmostEquals(r.ppl, Math.exp(sum / count), 1e-4);
  // TinyStories protocol: stories stripped, BOS before each.
  assertEquals(ids[0], tok.bosId);
  assert(ids.filter((x) => x === tok.bosId).length === 1000, "one BOS per story");
});

Deno.test("perplexity: bad seqlen and nsamples are typed errors", async () => {
  const m = await loadModel(MODEL);
  await assertRejects(() => perplexity(m, "tinystories", { seqlen: 1024 }), OptionError, "seqlen");
  await assertRejects(() => perplexity(m, "tinystories", { nsamples: 0 }), OptionError, "nsamples");
});
