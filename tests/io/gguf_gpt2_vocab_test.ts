/**
 * GGUF export of a GPT-2 byte-level BPE vocabulary (`tokenizer.ggml.model` = "gpt2"): a tiny
 * seeded Llama-architecture checkpoint whose vocabulary is GPT-2's 50,257 tokens
 * (`tokenizers/gpt2-bpe`) is exported as F32 GGUF. Checks: the tokenizer metadata, parsed here
 * byte by byte against a transcription of the GGUF spec's value types and llama.cpp's key names,
 * equals vocab.json / merges.txt; quantlab's own GGUF reader tokenizes from that metadata alone as
 * quantlab's GPT-2 tokenizer does; and llama.cpp (node-llama-cpp 3.21.1, `tools/llama_peer`)
 * tokenizes several strings to the same ids and scores GPT-2-tokenized text (teacher-forced log-probs,
 * F32 KV cache) within 1e-4 of quantlab's forward (skipped, saying why, when node-llama-cpp is
 * absent).
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { getTokenizer, loadModel } from "../../src/models/load.ts";
import { forward } from "../../src/models/decoder.ts";
import { loadTokenizer } from "../../src/io/tokenizer.ts";
import { exportModel, gpt2VocabMetadata } from "../../src/io/export.ts";
import { tokenizerJsonFromGpt2, tokenizerJsonFromLlama2c } from "../../src/io/tokenizer.ts";
import { FormatError, UnsupportedError } from "../../src/errors.ts";
import { dataRoot } from "../../src/_paths.ts";
import { PRESETS, writeSyntheticCheckpoint } from "../../tools/synthetic_checkpoint.ts";
import { peerInstalled, runPeer } from "../../tools/llama_peer/run.ts";

const GPT2 = `${dataRoot()}/tokenizers/gpt2-bpe`;
const installed = await peerInstalled();
if (!installed) {
  console.log(
    "gguf_gpt2_vocab_test: llama.cpp check skipped — node-llama-cpp is not installed " +
      "(cd tools/llama_peer && npm ci)",
  );
}

const TEXTS = [
  "Hello world",
  "  two  spaces and\ttabs\n\nnew lines   ",
  "Punctuation: don't, can't; (a) [b] {c}!? ... --",
  "Numbers 1234567 and 3.14159, 2026-12-04",
  "Unicode: café naïve Ωμέγα 日本語 🤖 emoji",
  " leading space",
];

/** GGUF value types, transcribed from the spec (ggml/docs/gguf.md, gguf_metadata_value_type). */
const T = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
const SIZE: Record<number, number> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  10: 8,
  11: 8,
  12: 8,
};

interface Kv {
  type: number;
  itemType?: number;
  value: unknown;
}

/** A plain reader of a GGUF header's key/value section (little-endian, v3). */
function readKvs(bytes: Uint8Array): Map<string, Kv> {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const td = new TextDecoder("utf-8", { fatal: true });
  let o = 0;
  const u32 = () => (o += 4, dv.getUint32(o - 4, true));
  const u64 = () => (o += 8, Number(dv.getBigUint64(o - 8, true)));
  const str = () => {
    const n = u64();
    o += n;
    return td.decode(bytes.subarray(o - n, o));
  };
  const scalar = (t: number): unknown => {
    const at = o;
    if (t === T.STRING) return str();
    o += SIZE[t];
    switch (t) {
      case T.UINT8:
        return dv.getUint8(at);
      case T.BOOL:
        return dv.getUint8(at) !== 0;
      case T.UINT32:
        return dv.getUint32(at, true);
      case T.INT32:
        return dv.getInt32(at, true);
      case T.FLOAT32:
        return dv.getFloat32(at, true);
      case T.UINT64:
        return dv.getBigUint64(at, true);
      default:
        throw new Error(`type ${t} not expected here`);
    }
  };
  assertEquals(td.decode(bytes.subarray(0, 4)), "GGUF");
  o = 4;
  assertEquals(u32(), 3);
  u64(); // tensor count
  const nKv = u64();
  const out = new Map<string, Kv>();
  for (let k = 0; k < nKv; k++) {
    const key = str();
    const type = u32();
    if (type === T.ARRAY) {
      const itemType = u32();
      const n = u64();
      const value: unknown[] = new Array(n);
      for (let i = 0; i < n; i++) value[i] = scalar(itemType);
      out.set(key, { type, itemType, value });
    } else out.set(key, { type, value: scalar(type) });
  }
  return out;
}

const dir = await Deno.makeTempDir({ prefix: "quantlab_gpt2_gguf_" });
let ready: Promise<string> | null = null;
/** The exported model.gguf (built once): 1 block, width 64, vocab 50257, GPT-2 tokenizer. */
function exported(): Promise<string> {
  ready ??= (async () => {
    const ck = `${dir}/ck`;
    await writeSyntheticCheckpoint(ck, {
      preset: { ...PRESETS.tiny, vocab_size: 50257, bos_token_id: 50256, eos_token_id: 50256 },
      layers: 1,
      seed: 7,
    });
    await Deno.copyFile(`${GPT2}/vocab.json`, `${ck}/vocab.json`);
    await Deno.copyFile(`${GPT2}/merges.txt`, `${ck}/merges.txt`);
    const m = await loadModel(ck, { tokenizer: ck });
    await exportModel(m, `${dir}/out`, { format: "gguf", type: "f32" });
    // Alone in a folder, so a reader can only tokenize from tokenizer.ggml.*.
    await Deno.mkdir(`${dir}/alone`);
    await Deno.copyFile(`${dir}/out/model.gguf`, `${dir}/alone/model.gguf`);
    return `${dir}/alone/model.gguf`;
  })();
  return ready;
}

Deno.test({
  name: "gguf gpt2 vocab: tokenizer.ggml.* bytes match the spec's types and vocab.json/merges.txt",
  sanitizeResources: false,
  fn: async () => {
    const kv = readKvs(await Deno.readFile(await exported()));
    const expectType = (key: string, type: number, itemType?: number) => {
      const v = kv.get(key);
      assert(v, `${key} missing`);
      assertEquals([v.type, v.itemType], [type, itemType], key);
      return v.value;
    };
    assertEquals(expectType("tokenizer.ggml.model", T.STRING), "gpt2");
    assertEquals(expectType("tokenizer.ggml.pre", T.STRING), "gpt-2");
    assertEquals(expectType("general.architecture", T.STRING), "llama");
    const tokens = expectType("tokenizer.ggml.tokens", T.ARRAY, T.STRING) as string[];
    const types = expectType("tokenizer.ggml.token_type", T.ARRAY, T.INT32) as number[];
    const merges = expectType("tokenizer.ggml.merges", T.ARRAY, T.STRING) as string[];
    const vocab: Record<string, number> = JSON.parse(await Deno.readTextFile(`${GPT2}/vocab.json`));
    assertEquals(tokens.length, 50257);
    assertEquals(types.length, 50257);
    for (const [t, id] of Object.entries(vocab)) assertEquals(tokens[id], t);
    assertEquals(tokens[50256], "<|endoftext|>");
    assertEquals(tokens[220], "\u0120"); // " " in GPT-2's byte-to-unicode map
    // llama_token_type: 1 normal, 3 control (the one special token).
    assertEquals(types.filter((t) => t !== 1), [3]);
    assertEquals(types[50256], 3);
    const mergeLines = (await Deno.readTextFile(`${GPT2}/merges.txt`)).split(/\r?\n/)
      .filter((l, i) => l !== "" && !(i === 0 && l.startsWith("#version")));
    assertEquals(merges.length, mergeLines.length);
    assertEquals(merges, mergeLines);
    assertEquals(expectType("tokenizer.ggml.bos_token_id", T.UINT32), 50256);
    assertEquals(expectType("tokenizer.ggml.eos_token_id", T.UINT32), 50256);
    assertEquals(expectType("tokenizer.ggml.add_bos_token", T.BOOL), false);
    assertEquals(expectType("tokenizer.ggml.add_eos_token", T.BOOL), false);
    assertEquals(expectType("llama.vocab_size", T.UINT32), 50257);
  },
});

Deno.test({
  name: "gguf gpt2 vocab: loadModel(x.gguf) tokenizes from tokenizer.ggml.* as GPT-2 does",
  sanitizeResources: false,
  fn: async () => {
    const m = await loadModel(await exported());
    const fromGguf = await getTokenizer(m);
    const ref = await loadTokenizer(GPT2);
    assertEquals(fromGguf.bosId, null);
    assertEquals(fromGguf.eosId, 50256);
    assertEquals(ref.encode("Hello world"), [15496, 995]); // published GPT-2 ids
    for (const s of TEXTS) {
      assertEquals(fromGguf.encode(s), ref.encode(s), s);
      assertEquals(fromGguf.decode(fromGguf.encode(s)), s);
    }
  },
});

Deno.test({
  name: "gguf gpt2 vocab: llama.cpp tokenizes like quantlab's GPT-2 tokenizer",
  ignore: !installed,
  sanitizeResources: false,
  fn: async () => {
    const file = await exported();
    const { ids } = await runPeer<{ ids: number[][] }>(
      { model: file, texts: TEXTS },
      "tokenize.mjs",
    );
    const ref = await loadTokenizer(GPT2);
    TEXTS.forEach((s, i) => assertEquals(ids[i], ref.encode(s), JSON.stringify(s)));
  },
});

Deno.test({
  name: "gguf gpt2 vocab: llama.cpp scores GPT-2-tokenized text like quantlab's forward",
  ignore: !installed,
  sanitizeResources: false,
  fn: async () => {
    const file = await exported();
    const ref = await loadTokenizer(GPT2);
    const ids = ref.encode("Hello world, this is a test of the GPT-2 vocabulary: 42 ünïcödé!");
    const prompt = ids.slice(0, 3), teacher = ids.slice(3);
    const r = await runPeer({ model: file, prompt, n: 1, teacher, kvF32: true });
    const m = await loadModel(file);
    const V = m.config.vocabSize;
    assertEquals(V, 50257);
    const logits = (await forward(m, ids.slice(0, -1))).data;
    let gap = 0;
    teacher.forEach((t, i) => {
      const row = logits.subarray((prompt.length - 1 + i) * V, (prompt.length + i) * V);
      let mx = -Infinity;
      for (const v of row) mx = Math.max(mx, v);
      let z = 0;
      for (const v of row) z += Math.exp(v - mx);
      gap = Math.max(gap, Math.abs(r.logprobs[i] - (row[t] - mx - Math.log(z))));
    });
    console.log(
      `gpt2-vocab F32 GGUF: ${teacher.length} tokens, max |Δ log p| ${gap.toExponential(2)}`,
    );
    assertEquals(r.logprobs.length, teacher.length);
    assert(gap <= 1e-4, `max |Δ log p| ${gap}`);
  },
});

Deno.test("gguf gpt2 vocab: pads, id overflow and non-GPT-2 tokenizers", async () => {
  const json = tokenizerJsonFromGpt2(
    await Deno.readTextFile(`${GPT2}/vocab.json`),
    await Deno.readTextFile(`${GPT2}/merges.txt`),
  );
  const md = new Map(gpt2VocabMetadata(json, { vocabSize: 50260, bosId: null, eosId: 50256 }));
  const tokens = md.get("tokenizer.ggml.tokens")!.value as string[];
  const types = md.get("tokenizer.ggml.token_type")!.value as number[];
  // convert_hf_to_gguf.py: ids past the tokenizer's vocabulary are "[PAD<id>]", type 5 (unused).
  assertEquals(tokens.slice(50256), ["<|endoftext|>", "[PAD50257]", "[PAD50258]", "[PAD50259]"]);
  assertEquals(types.slice(50256), [3, 5, 5, 5]);
  assertThrows(
    () => gpt2VocabMetadata(json, { vocabSize: 50000, bosId: null, eosId: 50256 }),
    FormatError,
    "outside the model's 50000 rows",
  );
  const tokBin = await Deno.readFile(`${dataRoot()}/models/stories260K/tok512.bin`);
  assertThrows(
    () =>
      gpt2VocabMetadata(tokenizerJsonFromLlama2c(tokBin), { vocabSize: 512, bosId: 1, eosId: 2 }),
    UnsupportedError,
    "byte fallback",
  );
});

globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(dir, { recursive: true });
  } catch { /* already gone */ }
});
