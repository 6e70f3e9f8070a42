import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import {
  dataRoot,
  loadCalibText,
  loadEvalText,
  loadPiqa,
  readJsonLinesText,
  splitTinyStories,
  wikitextRowsFromRaw,
} from "../../src/io/datasets.ts";
import { FormatError, OfflineError, OptionError } from "../../src/errors.ts";

const DATA = Deno.env.get("QUANTLAB_DATA") ??
  decodeURIComponent(new URL("../../../shared/data", import.meta.url).pathname);
const DS = `${DATA}/datasets`;

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// ---------------------------------------------------------------------------------------------
// A minimal parquet writer (one REQUIRED UTF8 BYTE_ARRAY column, PLAIN, uncompressed), written
// from the format spec (thrift compact protocol), to test the parquet branch without a writer
// dependency.

class Thrift {
  bytes: number[] = [];
  #last: number[] = [0];
  varint(n: number): void {
    while (n >= 0x80) {
      this.bytes.push((n & 0x7f) | 0x80);
      n = Math.floor(n / 128);
    }
    this.bytes.push(n);
  }
  field(id: number, type: number): void {
    const delta = id - this.#last[this.#last.length - 1];
    assert(delta > 0 && delta < 16);
    this.bytes.push((delta << 4) | type);
    this.#last[this.#last.length - 1] = id;
  }
  i32(id: number, v: number): void {
    this.field(id, 5);
    this.varint(v >= 0 ? 2 * v : -2 * v - 1);
  }
  i64(id: number, v: number): void {
    this.field(id, 6);
    this.varint(v >= 0 ? 2 * v : -2 * v - 1);
  }
  binary(id: number | null, v: string): void {
    if (id !== null) this.field(id, 8);
    const b = new TextEncoder().encode(v);
    this.varint(b.length);
    this.bytes.push(...b);
  }
  list(id: number, elemType: number, n: number): void {
    this.field(id, 9);
    assert(n < 15);
    this.bytes.push((n << 4) | elemType);
  }
  begin(id: number | null): void {
    if (id !== null) this.field(id, 12);
    this.#last.push(0);
  }
  end(): void {
    this.bytes.push(0);
    this.#last.pop();
  }
}

function writeParquet(column: string, values: string[]): Uint8Array {
  const te = new TextEncoder();
  const data: number[] = [];
  for (const v of values) {
    const b = te.encode(v);
    data.push(b.length & 255, (b.length >> 8) & 255, (b.length >> 16) & 255, b.length >>> 24);
    data.push(...b);
  }
  const page = new Thrift(); // PageHeader
  page.begin(null);
  page.i32(1, 0); // DATA_PAGE
  page.i32(2, data.length);
  page.i32(3, data.length);
  page.begin(5); // DataPageHeader
  page.i32(1, values.length);
  page.i32(2, 0); // PLAIN
  page.i32(3, 3); // RLE
  page.i32(4, 3);
  page.end();
  page.end();
  const chunkSize = page.bytes.length + data.length;
  const meta = new Thrift(); // FileMetaData
  meta.begin(null);
  meta.i32(1, 1);
  meta.list(2, 12, 2);
  meta.begin(null); // root SchemaElement
  meta.binary(4, "schema");
  meta.i32(5, 1);
  meta.end();
  meta.begin(null); // the column
  meta.i32(1, 6); // BYTE_ARRAY
  meta.i32(3, 0); // REQUIRED
  meta.binary(4, column);
  meta.i32(6, 0); // UTF8
  meta.end();
  meta.i64(3, values.length);
  meta.list(4, 12, 1);
  meta.begin(null); // RowGroup
  meta.list(1, 12, 1);
  meta.begin(null); // ColumnChunk
  meta.i64(2, 4);
  meta.begin(3); // ColumnMetaData
  meta.i32(1, 6);
  meta.list(2, 5, 1);
  meta.varint(0); // PLAIN (zigzag 0)
  meta.list(3, 8, 1);
  meta.binary(null, column);
  meta.i32(4, 0); // UNCOMPRESSED
  meta.i64(5, values.length);
  meta.i64(6, chunkSize);
  meta.i64(7, chunkSize);
  meta.i64(9, 4);
  meta.end();
  meta.end();
  meta.i64(2, chunkSize);
  meta.i64(3, values.length);
  meta.end();
  meta.end();
  const magic = [0x50, 0x41, 0x52, 0x31]; // "PAR1"
  const n = meta.bytes.length;
  return new Uint8Array([
    ...magic,
    ...page.bytes,
    ...data,
    ...meta.bytes,
    n & 255,
    (n >> 8) & 255,
    (n >> 16) & 255,
    n >>> 24,
    ...magic,
  ]);
}

// ---------------------------------------------------------------------------------------------

Deno.test("dataRoot: QUANTLAB_DATA or ../shared/data beside the repo, holding datasets/", async () => {
  const root = dataRoot();
  const env = Deno.env.get("QUANTLAB_DATA");
  if (env) assertEquals(root, env.replace(/\/+$/, ""));
  else assertEquals(await Deno.realPath(root), await Deno.realPath(DATA));
  assert((await Deno.stat(`${root}/datasets/wikitext2/test.rows.json`)).isFile);
});

Deno.test("wikitext2: test rows joined with \\n\\n; raw file and rows JSON agree", async () => {
  const rows: string[] = JSON.parse(await Deno.readTextFile(`${DS}/wikitext2/test.rows.json`));
  assertEquals(rows.length, 4358);
  const ev = await loadEvalText("wikitext2");
  assertEquals(ev.text, rows.join("\n\n"));
  assertEquals(ev.docs, undefined);
  // Independent length oracle: sum of row lengths plus 2 chars per separator.
  const sum = rows.reduce((a, r) => a + r.length, 0);
  assertEquals(ev.text!.length, sum + 2 * 4357);
  assert(ev.text!.startsWith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is"));
  assertStringIncludes(ev.source, "test.rows.json");
  // wiki.test.raw (one row per line, blank rows as " ") gives the very same rows.
  const raw = await Deno.readTextFile(`${DS}/wikitext2/wiki.test.raw`);
  assertEquals(wikitextRowsFromRaw(raw), rows);
  const fromRaw = await loadEvalText("wikitext2", { path: `${DS}/wikitext2/wiki.test.raw` });
  assertEquals(fromRaw.text, ev.text);
  assertEquals(wikitextRowsFromRaw("a\n \nb"), ["a\n", "", "b"]);
});

Deno.test("wikitext2: a parquet file with a text column (HF layout) loads the same rows", async () => {
  const rows: string[] = JSON.parse(await Deno.readTextFile(`${DS}/wikitext2/test.rows.json`));
  const some = [...rows.slice(0, 12), "ünïcödé — 東京 😀", ""];
  await withTempDir(async (dir) => {
    const path = `${dir}/test-00000-of-00001.parquet`;
    await Deno.writeFile(path, writeParquet("text", some));
    const ev = await loadEvalText("wikitext2", { path });
    assertEquals(ev.text, some.join("\n\n"));
    await Deno.writeFile(`${dir}/bad.parquet`, new TextEncoder().encode("not parquet at all"));
    await assertRejects(
      () => loadEvalText("wikitext2", { path: `${dir}/bad.parquet` }),
      FormatError,
      "bad.parquet",
    );
    const objs = some.map((text) => ({ text }));
    await Deno.writeTextFile(`${dir}/rows.json`, JSON.stringify(objs));
    assertEquals((await loadEvalText("wikitext2", { path: `${dir}/rows.json` })).text, ev.text);
  });
});

Deno.test("ptb: 3,761 test sentences (wc -l says 3,760: no final newline), 78,669 words", async () => {
  const ev = await loadEvalText("ptb");
  const raw = await Deno.readTextFile(`${DS}/ptb/ptb.test.txt`);
  const lines = raw.split("\n");
  assertEquals(raw.endsWith("\n"), false);
  assertEquals(lines.length, 3761);
  assertEquals((raw.match(/\n/g) ?? []).length, 3760);
  assertEquals(ev.text, lines.map((l) => l.trim()).join(" "));
  assertEquals(ev.text!.split(" ").length, 78669); // one word per space-separated field
  assert(ev.text!.startsWith("no it was n't black monday but while"));
  assertStringIncludes(ev.source, "3761 lines");
  const val = await loadEvalText("ptb", { split: "validation" });
  assertStringIncludes(val.source, "ptb.valid.txt");
  assertEquals(
    val.text!.split(" ").length,
    (await Deno.readTextFile(`${DS}/ptb/ptb.valid.txt`))
      .split(/\s+/).filter((w) => w).length,
  );
});

Deno.test("tinystories: 1,000 valid and 2,316 train stories, stripped", async () => {
  const ev = await loadEvalText("tinystories");
  assertEquals(ev.docs!.length, 1000);
  assertEquals(ev.text, undefined);
  assert(ev.docs![0].startsWith('Spot. Spot saw the shiny car and said, "Wow, Kitty,'));
  // README: 806,451 characters = stories + 1,000 separators of 15 chars (no story is padded).
  assertEquals(ev.docs!.reduce((a, d) => a + d.length, 0) + 1000 * 15, 806451);
  const cal = await loadCalibText("tinystories");
  assertEquals(cal.docs!.length, 2316);
  assert(cal.docs![0].startsWith("One day, a little girl named Lily found a needle in her room."));
  assert(cal.docs![1].startsWith("Once upon a time, there was a little car named Beep."));
  assert(cal.docs!.every((d) => d === d.trim() && d !== ""));
  assertStringIncludes(cal.source, "train_sample.txt");
  // Calibration and evaluation text never overlap.
  const valid = new Set(ev.docs);
  assertEquals(cal.docs!.filter((d) => valid.has(d)).length, 0);
  assertEquals(splitTinyStories("a\n<|endoftext|>\n b \n<|endoftext|>\n"), ["a", "b"]);
});

Deno.test("calibration fallbacks say which text was used", async () => {
  const wt = await loadCalibText("wikitext2");
  assertStringIncludes(wt.source, "FALLBACK");
  assertStringIncludes(wt.source, "wiki.valid.tokens");
  const tokens = await Deno.readTextFile(`${DS}/wikitext2/wiki.valid.tokens`);
  assertEquals(tokens.split("\n").length - 1, 3760); // one row per line, file ends with "\n"
  assertEquals(wt.text, wikitextRowsFromRaw(tokens).join(" "));
  assertStringIncludes(wt.text!, "<unk>");
  const ptb = await loadCalibText("ptb");
  assertStringIncludes(ptb.source, "FALLBACK");
  assertStringIncludes(ptb.source, "ptb.valid.txt");
  assertStringIncludes(ptb.source, "3370 lines");
  await assertRejects(() => loadCalibText("c4"), OfflineError, "c4-train.00000-of-01024.json");
});

Deno.test("c4: JSON-lines shards, plain and gzip, from a root or a path", async () => {
  const docs = ["First document.\nWith a newline.", 'Second "quoted" — ünïcödé', "Third"];
  const jsonl = docs.map((text, i) => JSON.stringify({ text, timestamp: `t${i}`, url: "u" }))
    .join("\n") + "\n";
  await withTempDir(async (dir) => {
    await Deno.mkdir(`${dir}/datasets/c4`, { recursive: true });
    const gz = `${dir}/datasets/c4/c4-validation.00000-of-00008.json.gz`;
    const gzBytes = await gzip(new TextEncoder().encode(jsonl));
    assertEquals([gzBytes[0], gzBytes[1]], [0x1f, 0x8b]);
    await Deno.writeFile(gz, gzBytes);
    const ev = await loadEvalText("c4", { root: dir });
    assertEquals(ev.docs, docs);
    assertStringIncludes(ev.source, gz);
    const plain = `${dir}/c4-train.00000-of-01024.json`;
    await Deno.writeTextFile(plain, jsonl);
    const cal = await loadCalibText("c4", { path: plain });
    assertEquals(cal.docs, docs);
    // A gzip file without the .gz suffix is recognized by its magic bytes.
    await Deno.writeFile(`${dir}/shard.json`, gzBytes);
    assertEquals(await readJsonLinesText(`${dir}/shard.json`), docs);
    await Deno.writeTextFile(`${dir}/bad.json`, jsonl + '{"txt": "no text field"}\n');
    await assertRejects(() => readJsonLinesText(`${dir}/bad.json`), FormatError, "line 4");
    await Deno.writeFile(`${dir}/bad.json.gz`, gzBytes.slice(0, 20));
    await assertRejects(() => readJsonLinesText(`${dir}/bad.json.gz`), FormatError, "gzip");
  });
  await assertRejects(
    () => loadEvalText("c4"),
    OfflineError,
    "c4-validation.00000-of-00008.json.gz",
  );
});

Deno.test("piqa: 1,838 items with line-aligned 0/1 labels", async () => {
  const items = await loadPiqa();
  assertEquals(items.length, 1838);
  assertEquals(items[0].goal, "How do I ready a guinea pig cage for it's new occupants?");
  assertEquals(items[0].label, 0);
  assertEquals(items[1].goal, "dresser");
  assertEquals(items[1].label, 1);
  const labels = (await Deno.readTextFile(`${DS}/piqa/valid-labels.lst`)).trim().split("\n");
  assertEquals(items.filter((x) => x.label === 1).length, labels.filter((l) => l === "1").length);
  await withTempDir(async (dir) => {
    const lines = (await Deno.readTextFile(`${DS}/piqa/valid.jsonl`)).split("\n").slice(0, 5);
    await Deno.writeTextFile(`${dir}/valid.jsonl`, lines.join("\n") + "\n");
    await Deno.writeTextFile(`${dir}/valid-labels.lst`, "0\n1\n1\n0\n");
    await assertRejects(() => loadPiqa({ path: dir }), FormatError, "4 labels for 5 items");
    await Deno.writeTextFile(`${dir}/valid-labels.lst`, "0\n1\n1\n0\n2\n");
    await assertRejects(() => loadPiqa({ path: dir }), FormatError, "line 5");
    await Deno.writeTextFile(`${dir}/valid-labels.lst`, "0\n1\n1\n0\n1\n");
    assertEquals((await loadPiqa({ path: dir })).map((x) => x.label), [0, 1, 1, 0, 1]);
  });
});

Deno.test("errors: missing files name the path and the way out; unknown names list the known", async () => {
  await withTempDir(async (root) => {
    const e = await assertRejects(() => loadEvalText("ptb", { root }), OfflineError, root);
    assertStringIncludes(e.message, "datasets/ptb/ptb.test.txt");
    assertStringIncludes(e.message, "QUANTLAB_DATA");
    assertStringIncludes(e.message, "{ path:");
    await assertRejects(() => loadPiqa({ root }), OfflineError, "valid.jsonl");
    await assertRejects(
      () => loadEvalText("wikitext2", { path: `${root}/nope.raw` }),
      OfflineError,
      `${root}/nope.raw`,
    );
    await assertRejects(() => loadCalibText("tinystories", { root }), OfflineError, "train");
  });
  const e = await assertRejects(() => loadEvalText("lambada"), OptionError, "lambada");
  assertStringIncludes(e.message, "wikitext2, ptb, c4, tinystories");
  await assertRejects(() => loadEvalText("ptb", { split: "train" }), OptionError, "split");
});
