/**
 * `offset` slices and `mergeSlices`: two slices of a task merged equal one run over the same
 * documents (samples, metrics, standard errors), and a document's few-shot examples do not
 * depend on where a slice starts (gsm8k's sampler draws for every document in order).
 */
import { assertAlmostEquals, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { evaluate, mergeSlices } from "../../src/eval/evaluate.ts";
import { loadModel } from "../../src/models/load.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;

Deno.test("evaluate offset + mergeSlices equal one run (piqa, gsm8k prompts)", async () => {
  const m = await loadModel(`${DATA}models/stories260K`);
  const go = { logSamples: true, progress: false };
  const [whole] = await evaluate(m, ["piqa"], { ...go, limit: 7 });
  const [a] = await evaluate(m, ["piqa"], { ...go, limit: 3 });
  const [b] = await evaluate(m, ["piqa"], { ...go, offset: 3, limit: 4 });
  assertEquals(b.samples!.map((s) => s.docId), [3, 4, 5, 6]);
  const merged = mergeSlices([a, b]);
  assertEquals(merged.samples!.map((s) => s.arguments), whole.samples!.map((s) => s.arguments));
  assertEquals(merged.protocol.docs, whole.protocol.docs);
  assertEquals(merged.requests, 14);
  merged.metrics.forEach((x, i) => {
    assertEquals(x.metric, whole.metrics[i].metric);
    assertAlmostEquals(x.value, whole.metrics[i].value, 1e-12);
    assertAlmostEquals(x.stderr, whole.metrics[i].stderr, 1e-12);
  });
  // gsm8k: document 2's 5-shot prompt is the same in a slice starting at 2 as in a full run.
  const short = { ...go, maxGenToks: 2 };
  const [g] = await evaluate(m, ["gsm8k"], { ...short, limit: 3 });
  const [h] = await evaluate(m, ["gsm8k"], { ...short, offset: 2, limit: 1 });
  assertEquals(h.samples![0].docId, 2);
  assertEquals(h.samples![0].arguments, g.samples![2].arguments);
  const mg = mergeSlices([
    (await evaluate(m, ["gsm8k"], { ...short, limit: 2 }))[0],
    h,
  ]);
  assertEquals(mg.samples!.map((s) => s.resps), g.samples!.map((s) => s.resps));
  assertEquals(mg.metrics.map((x) => x.value), g.metrics.map((x) => x.value));
  // Bad slices.
  assertThrows(() => mergeSlices([b, a]), OptionError, "not consecutive");
  assertThrows(() => mergeSlices([a, g]), OptionError, "mixes tasks");
  await assertRejects(() => evaluate(m, ["piqa"], { offset: 1838 }), OptionError, "offset");
});
