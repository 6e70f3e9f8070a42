/**
 * Oracle tests of `loadModel` + `forward` on tiny seeded models (Llama GQA, Llama 3 rope_scaling
 * with tied embeddings, Qwen2 biases, Mistral head_dim, OPT pre-/post-LN with projections),
 * stored as F32 / F16 / BF16 / sharded safetensors, against the independent reference in
 * `_reference.ts`. Tolerance: 1e-4 max |Δlogit| (logits are O(1); float32 products vs float64).
 */
import { assert, assertEquals, assertLess, assertThrows } from "@std/assert";
import { createKVCache, forward } from "../../src/models/decoder.ts";
import type { Model } from "../../src/models/model.ts";
import { Rng } from "../_rng.ts";
import {
  maxAbsDiffRows,
  referenceForward,
  referenceForwardIncremental,
  roundToBf16,
  roundToF16,
} from "./_reference.ts";
import { CASES, CTX, setup, VOCAB } from "./_cases.ts";

const TOL = 1e-4;
/** Reference self-consistency (full vs incremental, both float64). */
const REF_SELF_TOL = 1e-9;

function rowsOf(model: Model) {
  return model.config.vocabSize;
}

for (const c of CASES) {
  Deno.test(`forward vs reference — ${c.name}`, async (t) => {
    const { rng, dir, refW, model } = await setup(c);
    try {
      assertEquals(model.config.vocabSize, VOCAB);

      await t.step("(a) full sequence over the whole context", async () => {
        const ids = [1, ...rng.ids(CTX - 1, VOCAB)];
        const got = await forward(model, ids);
        assertEquals(got.shape, [CTX, rowsOf(model)]);
        const ref = referenceForward(c.config, refW, ids);
        const inc = referenceForwardIncremental(c.config, refW, ids);
        assertLess(maxAbsDiffRows(got.data, ref), TOL);
        // The reference's two paths agree with each other.
        assertLess(
          maxAbsDiffRows(Float64Array.from(ref.flatMap((r) => [...r])), inc),
          REF_SELF_TOL,
        );
      });

      await t.step("(b) batch of 2 sequences: no attention across sequences", async () => {
        const T = 17;
        const s0 = rng.ids(T, VOCAB);
        const s1 = rng.ids(T, VOCAB);
        const got = await forward(model, [...s0, ...s1], { batch: 2 });
        assertEquals(got.shape, [2 * T, VOCAB]);
        const ref = [
          ...referenceForward(c.config, refW, s0),
          ...referenceForward(c.config, refW, s1),
        ];
        assertLess(maxAbsDiffRows(got.data, ref), TOL);
      });

      await t.step(
        "(c) incremental: prefill 9, a chunk of 4, then one at a time (KV cache)",
        async () => {
          const ids = rng.ids(30, VOCAB);
          const ref = referenceForwardIncremental(c.config, refW, ids);
          const cache = createKVCache(model.config, CTX);
          const pre = await forward(model, ids.slice(0, 9), { cache });
          assertEquals(cache.length, 9);
          assertLess(maxAbsDiffRows(pre.data, ref.slice(0, 9)), TOL);
          const chunk = await forward(model, ids.slice(9, 13), { cache });
          assertEquals(cache.length, 13);
          assertLess(maxAbsDiffRows(chunk.data, ref.slice(9, 13)), TOL);
          for (let i = 13; i < ids.length; i++) {
            const step = await forward(model, [ids[i]], { cache });
            assertEquals(step.shape, [1, VOCAB]);
            assertLess(maxAbsDiffRows(step.data, [ref[i]]), TOL, `token ${i}`);
          }
          assertEquals(cache.length, ids.length);
        },
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("forward: a sequence longer than the context is refused", async () => {
  // OPT: learned positions end at max_position_embeddings.
  const c = CASES.find((k) => k.name.startsWith("opt: post-LN (do_layer_norm_before false)"))!;
  const { rng, dir, model } = await setup(c);
  try {
    let threw = false;
    try {
      await forward(model, rng.ids(CTX + 1, VOCAB));
    } catch {
      threw = true;
    }
    assert(threw, "forward over CTX+1 tokens should throw");
    const cache = createKVCache(model.config, 4);
    await forward(model, [1, 2, 3, 4], { cache });
    let threwCache = false;
    try {
      await forward(model, [5], { cache });
    } catch {
      threwCache = true;
    }
    assert(threwCache, "a full KV cache should refuse another token");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("reference self-check: F16/BF16 closed-form rounding matches Math.f16round", () => {
  const rng = new Rng(99);
  const xs = rng.normals(2000, 3);
  for (const x of xs) assertEquals(roundToF16(x), Math.f16round(x));
  // bf16 keeps 8 significant bits: exact on values with ≤ 8 bits, ties to even.
  assertEquals(roundToBf16(1 + 2 ** -8), 1);
  assertEquals(roundToBf16(1 + 3 * 2 ** -8), 1 + 2 ** -6);
  assertThrows(() => referenceForward({ model_type: "gpt_neox" }, {}, [0]));
});
