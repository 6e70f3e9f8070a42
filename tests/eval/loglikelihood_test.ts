/**
 * The log-likelihood engine: lm-eval's context/continuation split on the GPT-2 and Llama-2
 * tokenizers (oracle: vocabulary lookups), scores against an independent per-request forward
 * with a float64 log-softmax written here, prefix reuse equal to full forwards, left
 * truncation, and greedy generation with stop strings.
 */
import { assert, assertAlmostEquals, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import {
  encodePair,
  greedyUntil,
  loglikelihood,
  loglikelihoodEngine,
  loglikelihoodTokens,
  modelInput,
} from "../../src/eval/loglikelihood.ts";
import { loadTokenizer, parseSentencePieceModel } from "../../src/io/tokenizer.ts";
import { forward } from "../../src/models/decoder.ts";
import { getTokenizer, loadModel } from "../../src/models/load.ts";
import { type EvalResult, evaluate } from "../../src/eval/evaluate.ts";
import type { Model } from "../../src/models/model.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;

Deno.test("encodePair on GPT-2 BPE: no BOS, ' yes' is one token Ġyes, trailing space moves", async () => {
  const tok = await loadTokenizer(`${DATA}tokenizers/gpt2-bpe`);
  const vocab = JSON.parse(await Deno.readTextFile(`${DATA}tokenizers/gpt2-bpe/vocab.json`));
  const p = encodePair(tok, "Question: Is it?\nAnswer:", " yes");
  assertEquals(
    p.context,
    ["Question", ":", "ĠIs", "Ġit", "?", "Ċ", "Answer", ":"].map((t) => vocab[t]),
  );
  assertEquals(p.continuation, [vocab["Ġyes"]]);
  // Trailing whitespace of the context goes to the continuation (lm-eval _encode_pair).
  assertEquals(encodePair(tok, "Question: Is it?\nAnswer: ", "yes"), p);
  // A multi-token continuation is the whole string's tail.
  const q = encodePair(tok, "Question: x\nAnswer:", " Sunlight is energy.");
  assertEquals(q.continuation, ["ĠSun", "light", "Ġis", "Ġenergy", "."].map((t) => vocab[t]));
  // Empty context: the prefix token (GPT-2: <|endoftext|>, its EOS) then the continuation.
  assertEquals(encodePair(tok, "", "Hello"), { context: [50256], continuation: [vocab["Hello"]] });
  assertThrows(() => encodePair(tok, "a", ""), OptionError, "continuation");
});

Deno.test("encodePair on the Llama-2 SentencePiece tokenizer: BOS stays in the context", async () => {
  const dir = `${DATA}tokenizers/llama2-sentencepiece/tokenizer.model`;
  const tok = await loadTokenizer(dir);
  const { pieces } = parseSentencePieceModel(await Deno.readFile(dir));
  const id = (s: string) => pieces.findIndex((p) => p.piece === s);
  const p = encodePair(tok, "Question: Is it?\nAnswer:", " yes");
  assertEquals(p.context[0], 1);
  assertEquals(p.context.filter((t) => t === 1).length, 1);
  assertEquals(p.continuation, [id("▁yes")]);
  assertEquals(tok.encode("Question: Is it?\nAnswer: yes"), [...p.context, ...p.continuation]);
  // "\n" is byte-fallback <0x0A>; a continuation starting with it keeps it.
  const q = encodePair(tok, "Answer:", "\nB");
  assertEquals(q.continuation[0], id("<0x0A>"));
  assertEquals(
    encodePair(tok, "Answer:  ", "B").continuation,
    encodePair(tok, "Answer:", "  B").continuation,
  );
  // addBos false: no BOS anywhere.
  assert(!encodePair(tok, "Answer:", " yes", { addBos: false }).context.includes(1));
});

/** Independent scorer: one full forward of context+continuation, float64 log-softmax per row. */
async function oracle(m: Model, ctx: number[], cont: number[]) {
  const all = [...ctx, ...cont];
  const L = (await forward(m, all.slice(0, -1))).data;
  const V = m.config.vocabSize;
  let lp = 0, greedy = true;
  for (let i = 0; i < cont.length; i++) {
    const row = Array.from(L.subarray((ctx.length - 1 + i) * V, (ctx.length + i) * V));
    const mx = Math.max(...row);
    const lse = mx + Math.log(row.reduce((s, x) => s + Math.exp(x - mx), 0));
    lp += row[cont[i]] - lse;
    if (row.indexOf(mx) !== cont[i]) greedy = false;
  }
  return { lp, greedy };
}

Deno.test("loglikelihood on stories260K equals an independent forward; reuse equals no reuse", async () => {
  const m = await loadModel(`${DATA}models/stories260K`);
  const tok = await getTokenizer(m);
  const reqs = [
    { context: "Once upon a time, there was a little", continuation: " girl", group: 0 },
    { context: "Once upon a time, there was a little", continuation: " dog named Max.", group: 0 },
    { context: "Once upon a time, there was a little", continuation: " car", group: 0 },
    { context: "Lily liked to", continuation: " play in the park.", group: 1 },
    { context: "Tom was sad so Lily", continuation: " hugged him.", group: 2 },
    { context: "Tom was sad so Tom", continuation: " hugged him.", group: 2 },
  ];
  // Default: the onnxruntime engine; then the TypeScript forward with and without reuse.
  const a = await loglikelihood(m, reqs, { tokenizer: tok });
  const b = await loglikelihood(m, reqs, { tokenizer: tok, reuse: false, batch: 4, ort: false });
  const c = await loglikelihood(m, reqs, { tokenizer: tok, ort: false });
  for (let i = 0; i < reqs.length; i++) {
    const p = encodePair(tok, reqs[i].context, reqs[i].continuation);
    const o = await oracle(m, p.context, p.continuation);
    for (const r of [a[i], b[i], c[i]]) {
      assertAlmostEquals(r.logprob, o.lp, 1e-4);
      assertEquals(r.isGreedy, o.greedy);
    }
    assertEquals(a[i].tokens, p.continuation.length);
    assertEquals(a[i].truncated, false);
  }
  assert(a[0].logprob > a[2].logprob, "' girl' is likelier than ' car' after 'a little'");
});

Deno.test("left truncation: input = last maxLength + 1 tokens minus the last; long continuations flagged", async () => {
  const m = await loadModel(`${DATA}models/stories260K`);
  const ctx = Array.from({ length: 30 }, (_, i) => 100 + i);
  const cont = [300, 301, 302];
  const mi = modelInput({ context: ctx, continuation: cont }, 16);
  assertEquals(mi.input, [...ctx, ...cont].slice(-17, -1));
  assertEquals(mi.targets, cont);
  const [r] = await loglikelihoodTokens(m, [{ context: ctx, continuation: cont }], {
    maxLength: 16,
  });
  // Oracle: the 16-token window scored on its own.
  const w = [...ctx, ...cont].slice(-17);
  const o = await oracle(m, w.slice(0, w.length - cont.length), cont);
  assertAlmostEquals(r.logprob, o.lp, 1e-4);
  // A continuation longer than maxLength: only its last maxLength tokens are scored.
  const long = Array.from({ length: 20 }, (_, i) => 200 + i);
  const [t] = await loglikelihoodTokens(m, [{ context: [1, 5], continuation: long }], {
    maxLength: 8,
  });
  assertEquals(t.truncated, true);
  assertEquals(t.tokens, 8);
  const o2 = await oracle(m, long.slice(11, 12), long.slice(12));
  assertAlmostEquals(t.logprob, o2.lp, 1e-4);
  await loglikelihoodTokens(m, [{ context: [1], continuation: [5] }], { maxLength: 1 });
  let threw = false;
  try {
    await loglikelihoodTokens(m, [{ context: [1], continuation: [5] }], { maxLength: 4096 });
  } catch (e) {
    threw = e instanceof OptionError;
  }
  assert(threw, "maxLength above the model context is an OptionError");
});

Deno.test("greedyUntil: greedy tokens as an argmax loop, cut before the first stop string", async () => {
  const m = await loadModel(`${DATA}models/stories260K`);
  const tok = await getTokenizer(m);
  const prompt = "Once upon a time";
  const free = await greedyUntil(m, prompt, { until: [], maxGenToks: 24, tokenizer: tok });
  // Oracle: argmax loop with full forwards (no cache).
  const ids = tok.encode(prompt);
  const gen: number[] = [];
  for (let i = 0; i < 24; i++) {
    const L = (await forward(m, [...ids, ...gen])).data;
    const V = m.config.vocabSize;
    const row = Array.from(L.subarray(L.length - V));
    const a = row.indexOf(Math.max(...row));
    if (a === tok.eosId) break;
    gen.push(a);
  }
  assertEquals(free.text, tok.decode(gen));
  const word = free.text.trim().split(" ")[1];
  const cut = await greedyUntil(m, prompt, { until: [word], maxGenToks: 24, tokenizer: tok });
  assertEquals(cut.text, free.text.slice(0, free.text.indexOf(word)));
  await assertRejects(
    () => greedyUntil(m, prompt, { until: [], maxGenToks: 512, tokenizer: tok }),
    OptionError,
    "maxGenToks",
  );
});

/** Per-request [logprob, isGreedy] of a result's samples, flattened. */
function resps(r: EvalResult): [number, boolean][] {
  return r.samples!.flatMap((s) => s.resps as [number, boolean][]);
}

Deno.test("onnxruntime engine equals the TypeScript forward on real PIQA, MMLU, HellaSwag, LAMBADA requests", async () => {
  const m = await loadModel(`${DATA}models/stories260K`);
  assertEquals(await loglikelihoodEngine(m), { engine: "onnxruntime" });
  // Hooks (activation quantizers and the like) and ort: false take the TypeScript forward.
  const hooked = { ...m, hooks: { linearInput: (_n: string, x: never) => x } };
  assertEquals((await loglikelihoodEngine(hooked)).engine, "typescript");
  assertEquals(await loglikelihoodEngine(m, { ort: false }), {
    engine: "typescript",
    fallback: "ort: false",
  });
  // mmlu_anatomy: 5-shot prompts left-truncated to 512 tokens, the four letters one pass.
  for (
    const [task, limit] of [["piqa", 12], ["mmlu_anatomy", 6], ["hellaswag", 6], [
      "lambada_openai",
      8,
    ]] as const
  ) {
    const go = { limit, logSamples: true, progress: false, bootstrapIters: 10 };
    const [a] = await evaluate(m, [task], go);
    const [b] = await evaluate(m, [task], { ...go, ort: false });
    assertEquals(a.protocol.engine?.engine, "onnxruntime", task);
    assertEquals(b.protocol.engine?.engine, "typescript", task);
    const ra = resps(a), rb = resps(b);
    assertEquals(ra.length, rb.length);
    assert(ra.length >= limit);
    for (let i = 0; i < ra.length; i++) {
      assertAlmostEquals(ra[i][0], rb[i][0], 1e-4, `${task} request ${i}`);
      assertEquals(ra[i][1], rb[i][1], `${task} request ${i} is-greedy`);
    }
  }
});
