import { assert, assertEquals, assertNotEquals, assertRejects, assertThrows } from "@std/assert";
import { DatabaseSync } from "node:sqlite";
import { dataRoot } from "../../src/_paths.ts";
import { evaluate, exportModel, perplexity, quantize } from "../../src/api.ts";
import { LedgerError } from "../../src/errors.ts";
import { canonicalJson, NotCanonicalError, sha256Hex } from "../../src/ledger/hash.ts";
import { Ledger } from "../../src/ledger/ledger.ts";
import { loadModel } from "../../src/models/load.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";

const HF = `${dataRoot()}/models/stories260K-hf`;

Deno.test("canonicalJson: key order and neutral keys do not matter; callbacks are refused", () => {
  const a = canonicalJson({ b: 1, a: { y: [1, 2], x: "s" }, onProgress: () => {}, progress: true });
  const b = canonicalJson({ a: { x: "s", y: [1, 2] }, b: 1 });
  assertEquals(a, b);
  assertEquals(a, '{"a":{"x":"s","y":[1,2]},"b":1}');
  assertNotEquals(canonicalJson({ a: 1 }), canonicalJson({ a: 2 }));
  assertEquals(
    canonicalJson({ x: NaN, y: undefined, z: new Float32Array([0.5]) }),
    '{"x":"NaN","z":[0.5]}',
  );
  assertThrows(() => canonicalJson({ hooks: { f: () => 1 } }), NotCanonicalError);
  // sha256 against the FIPS 180-2 test vector for "abc".
  assertEquals(
    sha256Hex("abc"),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
});

async function tempCopyOfModel(): Promise<string> {
  const dir = await Deno.makeTempDir();
  for (const f of ["config.json", "model.safetensors"]) {
    await Deno.copyFile(`${HF}/${f}`, `${dir}/${f}`);
  }
  return dir;
}

Deno.test("ledger: the run key changes with model bytes, options, data, seed and protocol, and only then", async () => {
  const tmp = await Deno.makeTempDir();
  const ledger = await Ledger.open(`${tmp}/l.sqlite`);
  const model = await loadModel(HF);
  const opts = { ledger, progress: false as const, nsamples: 1 };
  const p0 = await perplexity(model, "tinystories", opts);
  assert(p0.run && !p0.run.cached);
  // Identical call (other key order, progress switch): read back, not recomputed.
  const p1 = await perplexity(model, "tinystories", { progress: true, nsamples: 1, ledger });
  assert(p1.run?.cached, "identical perplexity was recomputed");
  assertEquals(p1.run.key, p0.run.key);
  assertEquals(p1.ppl, p0.ppl);
  // force: recomputed and recorded again, same number.
  const pf = await perplexity(model, "tinystories", { ...opts, force: true });
  assert(!pf.run?.cached);
  assertEquals(pf.run!.key, p0.run.key);
  assertEquals(pf.ppl, p0.ppl);
  // Protocol.
  const p2 = await perplexity(model, "tinystories", { ...opts, nsamples: 2 });
  assert(!p2.run?.cached);
  assertNotEquals(p2.run!.key, p0.run.key);
  // Data: a different text file.
  const txt = `${tmp}/stories.txt`;
  await Deno.writeTextFile(txt, "Once upon a time there was a cat.\n<|endoftext|>\nThe dog ran.\n");
  const pA = await perplexity(model, "tinystories", { ...opts, seqlen: 8 });
  const pB = await perplexity(model, "tinystories", { ...opts, seqlen: 8, path: txt });
  assertNotEquals(pB.run!.key, pA.run!.key);
  assert(ledger.compare(pA.run!.id, pB.run!.id).config.every((d) => d.path.startsWith("data.")));
  // Model bytes: one weight value changed in a copy of the checkpoint.
  const dir = await tempCopyOfModel();
  const m2 = await loadModel(dir, { tokenizer: model.tokenizerPath });
  const same = await perplexity(m2, "tinystories", opts);
  assertEquals(same.run!.key, p0.run.key, "a byte-identical copy must have the same key");
  const f = await Deno.open(`${dir}/model.safetensors`, { read: true, write: true });
  const st = await f.stat();
  await f.seek(st.size - 3, Deno.SeekMode.Start);
  await f.write(new Uint8Array([0x3f]));
  f.close();
  const m3 = await loadModel(dir, { tokenizer: model.tokenizerPath });
  const changed = await perplexity(m3, "tinystories", opts);
  assertNotEquals(changed.run!.key, p0.run.key);
  // Quantized models: the key covers the quantized tensors.
  const q4 = await quantize(model, rtn({ bits: 4 }), { ledger, progress: false });
  const q3 = await quantize(model, rtn({ bits: 3 }), { ledger, progress: false });
  const e4 = await perplexity(q4, "tinystories", opts);
  const e3 = await perplexity(q3, "tinystories", opts);
  assertNotEquals(e4.run!.key, e3.run!.key);
  assertNotEquals(e4.run!.key, p0.run.key);
  // Quantize identity: recipe option and calibration seed change it; option key order does not.
  const c0 = await calibrationSet(model, "tinystories", { nsamples: 2, seqlen: 32, seed: 0 });
  const c1 = await calibrationSet(model, "tinystories", { nsamples: 2, seqlen: 32, seed: 1 });
  const k = async (q: ReturnType<typeof rtn>, calib = c0) =>
    ((await quantize(model, q, { ledger, progress: false, calib })) as { run?: { key: string } })
      .run!.key;
  const kA = await k(rtn({ bits: 4, groupSize: 16, partialGroups: true }));
  assertEquals(await k(rtn({ partialGroups: true, groupSize: 16, bits: 4 })), kA);
  assertNotEquals(await k(rtn({ bits: 4, groupSize: 16, partialGroups: true, sym: true })), kA);
  assertNotEquals(await k(rtn({ bits: 4, groupSize: 16, partialGroups: true }), c1), kA);
  // Every quantize call is recorded with its report; compare() names what differs.
  const qs = ledger.runs({ kind: "quantize" });
  assert(
    qs.length >= 6 &&
      qs.every((r) =>
        r.status === "done" && Array.isArray((r.report as { layers: unknown[] }).layers)
      ),
  );
  const cmp = ledger.compare(p2.run!.id, p0.run.id);
  assertEquals(cmp.config.map((d) => d.path), ["protocol.nsamples"]);
  assert(cmp.results.some((d) => d.path === "metrics.ppl"));
  ledger.close();
  await Deno.remove(dir, { recursive: true });
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("ledger: a failed run is recorded with its error class and rethrown", async () => {
  const tmp = await Deno.makeTempDir();
  const ledger = await Ledger.open(`${tmp}/l.sqlite`);
  const model = await loadModel(HF);
  await assertRejects(() =>
    quantize(model, rtn({ bits: 4, groupSize: 32 }), { ledger, progress: false })
  );
  const [r] = ledger.runs({ kind: "quantize" });
  assertEquals(r.status, "failed");
  assert(r.error!.startsWith("OptionError: option groupSize"), r.error!);
  ledger.close();
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("ledger: two processes recording at once lose nothing", async () => {
  const tmp = await Deno.makeTempDir();
  const path = `${tmp}/l.sqlite`;
  const child = new URL("./_writer_child.ts", import.meta.url).pathname;
  const procs = [0, 1].map((w) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", child, path, String(w), "150"],
      stdout: "null",
      stderr: "inherit",
    }).spawn()
  );
  const st = await Promise.all(procs.map((p) => p.status));
  assert(st.every((s) => s.success));
  const ledger = await Ledger.open(path);
  const rows = ledger.runs();
  assertEquals(rows.length, 300);
  assert(rows.every((r) => r.status === "done"));
  for (const w of [0, 1]) {
    const mine = rows.filter((r) => r.label === `w${w}`).map((r) => r.metrics.i).sort((a, b) =>
      a - b
    );
    assertEquals(mine, Array.from({ length: 150 }, (_, i) => i));
  }
  ledger.close();
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("ledger: corrupted, foreign or future files give a LedgerError naming the file", async () => {
  const tmp = await Deno.makeTempDir();
  const garbage = `${tmp}/garbage.sqlite`;
  await Deno.writeFile(garbage, new Uint8Array(4096).map((_, i) => (i * 7919) & 255));
  const e1 = await assertRejects(() => Ledger.open(garbage), LedgerError);
  assert(e1.message.includes(garbage) && e1.message.includes("recover"), e1.message);
  // A real ledger with its header page destroyed.
  const good = `${tmp}/good.sqlite`;
  const l = await Ledger.open(good);
  l.begin({
    key: "k",
    kind: "x",
    identity: { model: { hash: "m" }, config: {}, code: "c" },
    cacheable: true,
  });
  l.close();
  const bytes = await Deno.readFile(good);
  bytes.fill(0x41, 0, 100);
  await Deno.writeFile(good, bytes);
  await assertRejects(() => Ledger.open(good), LedgerError);
  // Someone else's SQLite database.
  const foreign = `${tmp}/foreign.sqlite`;
  const db = new DatabaseSync(foreign);
  db.exec("CREATE TABLE t(x)");
  db.close();
  const e3 = await assertRejects(() => Ledger.open(foreign), LedgerError);
  assert(e3.message.includes("not a quantlab ledger"));
  // A newer schema.
  const future = `${tmp}/future.sqlite`;
  const db2 = new DatabaseSync(future);
  db2.exec("PRAGMA user_version = 99");
  db2.close();
  const e4 = await assertRejects(() => Ledger.open(future), LedgerError);
  assert(e4.message.includes("schema version 99"));
  // A folder where the file should be.
  await Deno.mkdir(`${tmp}/dir.sqlite`);
  await assertRejects(() => Ledger.open(`${tmp}/dir.sqlite`), LedgerError);
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("ledger: shards merge by run uid; a running row takes the shard's finished state", async () => {
  const tmp = await Deno.makeTempDir();
  const id = { model: { hash: "m" }, config: { a: 1 }, code: "c" };
  const shard = await Ledger.open(`${tmp}/shard.sqlite`);
  const r1 = shard.begin({
    key: "k1",
    kind: "sweep-task",
    identity: id,
    cacheable: true,
    sweep: "s",
    task: 0,
  });
  const main = await Ledger.open(`${tmp}/main.sqlite`);
  assertEquals(main.merge(`${tmp}/shard.sqlite`), 1);
  assertEquals(main.runs()[0].status, "running");
  shard.finish(r1, { metrics: { ppl: 3.5 } });
  shard.begin({
    key: "k2",
    kind: "sweep-task",
    identity: id,
    cacheable: true,
    sweep: "s",
    task: 1,
  });
  assertEquals(main.merge(`${tmp}/shard.sqlite`), 2);
  assertEquals(main.merge(`${tmp}/shard.sqlite`), 0);
  const rows = main.runs({ sweep: "s" });
  assertEquals(rows.length, 2);
  assertEquals(rows.find((r) => r.task === 0)!.metrics.ppl, 3.5);
  main.close();
  shard.close();
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("ledger: an export is recorded with its files' bytes and exactness; never answered from the ledger", async () => {
  const tmp = await Deno.makeTempDir();
  const ledger = await Ledger.open(`${tmp}/l.sqlite`);
  const model = await loadModel(HF);
  const q4 = await quantize(
    model,
    rtn({ bits: 4, groupSize: 32, sym: true, partialGroups: true }),
    {
      ledger: false,
      progress: false,
    },
  );
  const a = await exportModel(q4, `${tmp}/a`, { format: "gguf", ledger });
  const b = await exportModel(q4, `${tmp}/a`, { format: "gguf", overwrite: true, ledger });
  assert(a.run && b.run && !a.run.cached && !b.run.cached);
  const rows = ledger.runs({ kind: "export" });
  assertEquals(rows.length, 2);
  // The recorded bytes are the files' sizes on disk (an independent stat here).
  let bytes = 0;
  for (const f of a.files) bytes += (await Deno.stat(`${tmp}/a/${f}`)).size;
  const m = rows[0].metrics as { bytes: number; tensors: number; exact: number };
  assertEquals(m.bytes, bytes);
  assertEquals(m.tensors, a.tensors.length);
  assertEquals(m.exact, a.tensors.filter((t) => t.maxAbsErr === 0).length);
  // A failed export (existing folder without overwrite) is recorded as failed and rethrown.
  await assertRejects(() => exportModel(q4, `${tmp}/a`, { format: "gguf", ledger }));
  assert(ledger.runs({ kind: "export" }).some((r) => r.status === "failed"));
  ledger.close();
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("ledger: evaluate is recorded per task metric; an identical evaluation comes from the ledger", async () => {
  const tmp = await Deno.makeTempDir();
  const ledger = await Ledger.open(`${tmp}/l.sqlite`);
  const model = await loadModel(HF);
  const opts = { ledger, limit: 4, progress: false, bootstrapIters: 10 };
  const a = await evaluate(model, ["piqa"], opts);
  const b = await evaluate(model, ["piqa"], opts);
  assert(a.run && b.run && !a.run.cached && b.run.cached);
  assertEquals(b.run.key, a.run.key);
  assertEquals(b[0].metrics, a[0].metrics);
  const c = await evaluate(model, ["piqa"], { ...opts, limit: 3 });
  assertNotEquals(c.run!.key, a.run.key);
  const row = ledger.runs({ kind: "evaluate" }).find((r) => r.id === a.run!.id)!;
  const m = row.metrics as Record<string, number>;
  assertEquals(m["piqa/acc"], a[0].metrics.find((v) => v.metric === "acc")!.value);
  assert(Number.isFinite(m["piqa/acc_stderr"]));
  ledger.close();
  await Deno.remove(tmp, { recursive: true });
});
