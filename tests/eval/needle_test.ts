import { assert, assertAlmostEquals, assertEquals, assertRejects } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { loadHaystack, needleEval, SEED_NEEDLES } from "../../src/eval/needle.ts";
import { forward } from "../../src/models/decoder.ts";
import { getTokenizer, loadModel } from "../../src/models/load.ts";
import { needleHeatmap } from "../../src/viz/needle_heatmap.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K-hf`;

Deno.test("needle: layout, teacher-forced log-prob against a full forward, KIVI-16 = FP, limits", async () => {
  const m = await loadModel(MODEL);
  const tok = await getTokenizer(m);
  const book = await loadHaystack(DATA);
  assert(book.startsWith("Chapter") || book.length > 700_000, book.slice(0, 40));
  assert(!book.includes("\r") && !book.includes("PROJECT GUTENBERG EBOOK"));
  const opts = {
    contextLengths: [128, 200],
    depths: [0, 0.5, 1],
    needles: SEED_NEEDLES.slice(0, 2),
  };
  const r = await needleEval(m, { ...opts, root: DATA });
  assertEquals(r.cells.length, 12);
  const V = m.config.vocabSize;
  for (const c of r.cells) {
    // The prompt plus the answer fills the context; the needle holds the value.
    assertEquals(c.promptIds.length + c.answerIds.length, c.contextLength);
    const text = tok.decode(c.promptIds);
    assert(text.includes(`The pass key is ${c.needle}.`));
    assert(text.endsWith("What is the pass key? The pass key is"));
    assertEquals(tok.decode(c.answerIds).trim(), c.needle);
    // Oracle: one full forward over prompt + answer, log-softmax in float64.
    const ids = [...c.promptIds, ...c.answerIds];
    const L = (await forward(m, ids)).data;
    let lp = 0;
    for (let i = 0; i < c.answerIds.length; i++) {
      const row = L.subarray((c.promptIds.length - 1 + i) * V, (c.promptIds.length + i) * V);
      const mx = Math.max(...row);
      const z = row.reduce((a, x) => a + Math.exp(x - mx), 0);
      lp += row[c.answerIds[i]] - mx - Math.log(z);
    }
    assertAlmostEquals(c.logProb, lp / c.answerIds.length, 1e-4);
  }
  assertEquals(r.accuracy.length, 2);
  const kv = await needleEval(m, {
    ...opts,
    root: DATA,
    kv: { method: "kivi", bits: 16, groupSize: 8, residualLength: 16, prefillWithQuant: true },
  });
  assertEquals(kv.logProb, r.logProb);
  const fig = needleHeatmap([r, kv], { metric: "logProb" });
  assertEquals(fig.data.length, 2);
  assertEquals(fig.data[1].z, kv.logProb);
  await assertRejects(
    () => needleEval(m, { contextLengths: [513], root: DATA }),
    OptionError,
    "context limit",
  );
  await assertRejects(() => needleEval(m, { depths: [1.5], root: DATA }), OptionError, "depths");
});
