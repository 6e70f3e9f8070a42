import { assert, assertEquals } from "@std/assert";
import { block, type BlockReuse, embed } from "../../src/models/decoder.ts";
import { familyOf } from "../../src/models/family.ts";
import type { Model } from "../../src/models/model.ts";
import type { Tensor } from "../../src/tensor.ts";
import { CASES, CTX, setup, VOCAB } from "./_cases.ts";

/** Every element equal (the reused pass must give the same float32 numbers, not close ones). */
function assertSameBits(a: Tensor, b: Tensor, what: string) {
  assertEquals(a.shape, b.shape, what);
  for (let j = 0; j < a.data.length; j++) {
    if (!Object.is(a.data[j], b.data[j])) {
      throw new Error(`${what}: element ${j}: ${a.data[j]} vs ${b.data[j]}`);
    }
  }
}

/** The model with weight `name` scaled by 0.9 (a new tensor object, as a quantizer returns). */
async function changed(m: Model, name: string): Promise<Model> {
  const W = await m.weights.get(name);
  const data = W.data.map((v) => v * 0.9);
  return { ...m, weights: m.weights.with(new Map([[name, { shape: W.shape, data }]])) };
}

for (const c of CASES) {
  Deno.test(`block reuse: ${c.name}: the same numbers as full passes, skipped work skipped`, async () => {
    const { dir, model } = await setup(c);
    try {
      const batch = 2, T = Math.min(CTX, 24);
      const ids = Array.from({ length: batch * T }, (_, j) => (j * 31 + 7) % VOCAB);
      const h = await embed(model, ids, { seqLen: T });
      const names = familyOf(model.config).block(0);
      const calls: string[] = [];
      const hooks = { linearInput: (n: string) => void calls.push(n) };
      const memo: BlockReuse = {};
      // Oracle: the plain pass of the same model (no memo).
      const plain = await block(model, 0, h, { batch });
      assertSameBits(await block(model, 0, h, { batch, reuse: memo, hooks }), plain, "first");
      assert(memo.attn && memo.mlp, "the pass recorded both stages");
      calls.length = 0;
      assertSameBits(await block(model, 0, h, { batch, reuse: memo, hooks }), plain, "second");
      // Nothing changed: only the MLP's last linear runs again.
      assertEquals(calls, [names.mlp[names.mlp.length - 1]]);

      // A changed output projection: the attention output is reused, the rest recomputed.
      const mo = await changed(model, `${names.o}.weight`);
      calls.length = 0;
      const got = await block(mo, 0, h, { batch, reuse: memo, hooks });
      assertSameBits(got, await block(mo, 0, h, { batch }), "new o_proj");
      assert(got.data.some((v, j) => v !== plain.data[j]), "the change shows in the output");
      assertEquals(calls, [names.o, ...names.mlp]);

      // A changed query projection: everything recomputed.
      const mq = await changed(mo, `${names.q}.weight`);
      calls.length = 0;
      assertSameBits(
        await block(mq, 0, h, { batch, reuse: memo, hooks }),
        await block(mq, 0, h, { batch }),
        "new q_proj",
      );
      assertEquals(calls, [names.q, names.k, names.v, names.o, ...names.mlp]);

      // Another input object (same values) clears the records.
      calls.length = 0;
      const h2 = { shape: h.shape, data: h.data.slice() };
      await block(mq, 0, h2, { batch, reuse: memo, hooks });
      assertEquals(calls.length, 4 + names.mlp.length);
      assert(memo.h === h2);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
