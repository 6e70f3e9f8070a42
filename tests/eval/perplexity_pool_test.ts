import {
  assert,
  assertEquals,
  assertInstanceOf,
  assertRejects,
  assertStrictEquals,
} from "@std/assert";
import { OptionError, UnsupportedError } from "../../src/errors.ts";
import { perplexity } from "../../src/eval/perplexity.ts";
import { loadModel } from "../../src/models/load.ts";
import { ortForwardGraph, ortForwardNext } from "../../src/models/ort_forward.ts";
import { OrtForwardPool } from "../../src/models/ort_pool.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K-hf`;

Deno.test("perplexity (ort): two workers give the same ppl as the in-process session, progress in order", async () => {
  const m = await loadModel(MODEL);
  const opts = { nsamples: 10, batch: 2 };
  const seen: Array<[number, number]> = [];
  const one = await perplexity(m, "tinystories", { ...opts, workers: 1 });
  const two = await perplexity(m, "tinystories", {
    ...opts,
    workers: 2,
    onProgress: (d, t) => seen.push([d, t]),
  });
  assert(one.ort && two.ort, `${one.ortFallback} / ${two.ortFallback}`);
  assertEquals(one.workers, 1);
  assertEquals(two.workers, 2, two.workersFallback);
  assertEquals(two.workersFallback, undefined);
  assertEquals(one.windows, 10);
  // Summed in window order: the same number, not merely close.
  assertStrictEquals(two.ppl, one.ppl);
  assertStrictEquals(two.nll, one.nll);
  assertEquals(seen, [[2, 10], [4, 10], [6, 10], [8, 10], [10, 10]]);
  // An odd last batch and three workers over four batches: still the same number.
  const three = await perplexity(m, "tinystories", { nsamples: 7, batch: 2, workers: 3 });
  const ref = await perplexity(m, "tinystories", { nsamples: 7, batch: 2, workers: 1 });
  assertEquals(three.workers, 3, three.workersFallback);
  assertStrictEquals(three.ppl, ref.ppl);
  // A quantized model: its fake-quant graph on the workers, the same number as in-process.
  const q = await quantize(m, rtn({ bits: 4, groupSize: 4 }));
  const q1 = await perplexity(q, "tinystories", { nsamples: 6, batch: 2, workers: 1 });
  const q2 = await perplexity(q, "tinystories", { nsamples: 6, batch: 2, workers: 2 });
  assertEquals(q2.workers, 2, q2.workersFallback);
  assertStrictEquals(q2.ppl, q1.ppl);
  assert(q1.ppl !== (await perplexity(m, "tinystories", { nsamples: 6, batch: 2 })).ppl);
  // "auto" on a short run: the in-process session, no pool.
  const auto = await perplexity(m, "tinystories", { nsamples: 4 });
  assertEquals(auto.workers, 1);
  assertStrictEquals(
    auto.ppl,
    (await perplexity(m, "tinystories", { nsamples: 4, workers: 2 })).ppl,
  );
});

Deno.test("perplexity (ort): auto workers on a long run; a throwing callback still ends the pool", async () => {
  const m = await loadModel(MODEL);
  const auto = await perplexity(m, "tinystories", { nsamples: 128, batch: 8 });
  const cores = navigator.hardwareConcurrency;
  assertEquals(auto.workers, Math.min(cores, 16), auto.workersFallback);
  const one = await perplexity(m, "tinystories", { nsamples: 128, batch: 8, workers: 1 });
  assertStrictEquals(auto.ppl, one.ppl);
  // The error surfaces and the workers are terminated (the sanitizers see no leak).
  await assertRejects(
    () =>
      perplexity(m, "tinystories", {
        nsamples: 8,
        batch: 2,
        workers: 2,
        onProgress: (d) => {
          if (d === 4) throw new Error("stop at 4");
        },
      }),
    Error,
    "stop at 4",
  );
});

Deno.test("perplexity: a bad workers value is an OptionError naming it", async () => {
  const m = await loadModel(MODEL);
  for (const workers of [0, -1, 1.5, NaN, Infinity]) {
    const e = await assertRejects(
      () => perplexity(m, "tinystories", { nsamples: 1, workers }),
      OptionError,
      "workers",
    );
    assertEquals(e.option, "workers", String(workers));
  }
});

Deno.test("perplexity: workers only count on the onnxruntime path", async () => {
  const m = await loadModel(MODEL);
  const r = await perplexity(m, "tinystories", { seqlen: 64, nsamples: 2, ort: false, workers: 2 });
  assertEquals(r.ort, false);
  assertEquals(r.workers, 1);
});

Deno.test("OrtForwardPool: rows equal the in-process session's; workers that cannot start leave the batches to the local runner", async () => {
  const m = await loadModel(MODEL);
  const bytes = await ortForwardGraph(m);
  const ids = Array.from({ length: 3 * 64 }, (_, i) => (i * 37 + 11) % m.config.vocabSize);
  const ref = await ortForwardNext(m, ids, { batch: 3 });
  {
    using pool = new OrtForwardPool(bytes, { workers: 2 });
    const rows = await Promise.all([pool.run(ids, { batch: 3 }), pool.run(ids, { batch: 3 })]);
    for (const r of rows) {
      assertEquals(r.lse, ref.lse);
      assertEquals(r.next, ref.next);
    }
    await pool.ready;
    assertEquals(pool.started, 2);
    assertEquals(pool.failures, []);
    assertEquals(pool.localRuns, 0);
  }
  // Not a graph: both workers fail to build a session.
  const junk = new Uint8Array([1, 2, 3, 4]);
  {
    let local = 0;
    using pool = new OrtForwardPool(junk, {
      workers: 2,
      local: (x, b) => {
        local++;
        return ortForwardNext(m, x, { batch: b });
      },
    });
    const r = await pool.run(ids, { batch: 3 });
    assertEquals(r.lse, ref.lse);
    await pool.ready;
    const r2 = await pool.run(ids, { batch: 3 });
    assertEquals(r2.next, ref.next);
    assertEquals(pool.started, 0);
    assertEquals(pool.failures.length, 2);
    assertEquals(local, 2);
    assertEquals(pool.localRuns, 2);
  }
  {
    using pool = new OrtForwardPool(junk, { workers: 1 });
    const e = await assertRejects(() => pool.run(ids, { batch: 3 }), UnsupportedError);
    assert(e.message.includes("no onnxruntime worker"), e.message);
  }
  {
    const pool = new OrtForwardPool(bytes, { workers: 1 });
    const p = pool.run(ids, { batch: 3 });
    pool.close();
    assertInstanceOf(await p.catch((e) => e), UnsupportedError);
    await assertRejects(() => pool.run(ids, { batch: 3 }), UnsupportedError, "closed");
  }
  for (const workers of [0, 2.5, NaN]) {
    try {
      new OrtForwardPool(bytes, { workers });
      throw new Error(`workers ${workers} accepted`);
    } catch (e) {
      assertInstanceOf(e, OptionError);
      assertEquals(e.option, "workers");
    }
  }
});
