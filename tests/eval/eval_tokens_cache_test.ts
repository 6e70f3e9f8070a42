import { assert, assertEquals, assertStrictEquals } from "@std/assert";
import { evalTokens } from "../../src/eval/perplexity.ts";
import { loadTokenizer } from "../../src/io/tokenizer.ts";
import { getTokenizer, loadModel } from "../../src/models/load.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K-hf`;

Deno.test("evalTokens: the cached stream equals a fresh tokenization and is a copy per call", async () => {
  const m = await loadModel(MODEL);
  const tok = await getTokenizer(m);
  // A quantized copy (new weights object) shares the tokenizer loaded from the same file.
  const q = await quantize(m, rtn({ bits: 4 }));
  assertStrictEquals(await getTokenizer(q), tok);
  const a = await evalTokens(tok, "tinystories");
  const b = await evalTokens(tok, "tinystories");
  assert(a.ids !== b.ids, "each call returns its own array");
  assertEquals(a.ids, b.ids);
  assertEquals(a.source, b.source);
  a.ids[0] = -1; // a caller's edit does not reach the cache
  assertEquals((await evalTokens(tok, "tinystories")).ids[0], b.ids[0]);
  // Oracle: a separately loaded tokenizer object (its own cache entry) tokenizes from scratch.
  const fresh = await loadTokenizer(m.tokenizerPath!);
  assert(fresh !== tok);
  const c = await evalTokens(fresh, "tinystories");
  assertEquals(c.ids, b.ids);
  assert(b.ids.length > 300_000, `${b.ids.length} tokens`);
});
