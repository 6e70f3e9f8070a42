/**
 * llama2.c loader oracle tests. On the real stories260K checkpoint and its Hugging Face copy:
 * the two load paths agree, both agree with an independent run.c-semantics reference working on
 * the RAW llama2.c weights (interleaved RoPE, unpermuted wq/wk), and greedy decoding with the KV
 * cache is identical across all three. Also synthetic llama2.c files (GQA, shared and separate
 * classifier). Tolerance: 1e-4 max |Δlogit|.
 */
import { assert, assertEquals, assertLess, assertRejects } from "@std/assert";
import { loadModel } from "../../src/models/load.ts";
import { createKVCache, forward } from "../../src/models/decoder.ts";
import type { Model } from "../../src/models/model.ts";
import { FormatError } from "../../src/errors.ts";
import { Rng } from "../_rng.ts";
import { argmax, Llama2cReference, maxAbsDiffRows } from "./_reference.ts";

const TOL = 1e-4;
const DATA = decodeURIComponent(new URL("../../../shared/data/", import.meta.url).pathname);
const BIN = `${DATA}models/stories260K/stories260K.bin`;
const HF = `${DATA}models/stories260K-hf`;

/** Reference logits of `ids` fed one by one from position 0. */
function refLogits(ref: Llama2cReference, ids: number[]): Float64Array[] {
  ref.reset();
  return ids.map((id, pos) => ref.forward(id, pos));
}

function diffModels(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (Number.isNaN(d)) return NaN;
    if (d > m) m = d;
  }
  return m;
}

/** Greedy continuation with the library's KV cache: prompt, then `n` argmax tokens. */
async function greedyLib(model: Model, prompt: number[], n: number) {
  const cache = createKVCache(model.config, prompt.length + n);
  let logits = await forward(model, prompt, { cache });
  const V = model.config.vocabSize;
  const out: number[] = [];
  const rows: Float32Array[] = [];
  for (let i = 0; i < n; i++) {
    const last = logits.data.subarray(logits.data.length - V);
    rows.push(last.slice());
    const next = argmax(last);
    out.push(next);
    if (i + 1 < n) logits = await forward(model, [next], { cache });
  }
  return { tokens: out, rows };
}

function greedyRef(ref: Llama2cReference, prompt: number[], n: number) {
  ref.reset();
  let logits: Float64Array = new Float64Array();
  prompt.forEach((id, pos) => (logits = ref.forward(id, pos)));
  const out: number[] = [];
  const rows: Float64Array[] = [];
  for (let i = 0; i < n; i++) {
    rows.push(logits);
    const next = argmax(logits);
    out.push(next);
    if (i + 1 < n) logits = ref.forward(next, prompt.length + i);
  }
  return { tokens: out, rows };
}

Deno.test("llama2.c stories260K: .bin and HF copy vs run.c reference on raw weights", async (t) => {
  const [bin, hf, ref] = await Promise.all([
    loadModel(BIN),
    loadModel(HF),
    Llama2cReference.load(BIN),
  ]);
  assertEquals(bin.config.vocabSize, ref.cfg.vocabSize);
  assertEquals(hf.config.vocabSize, ref.cfg.vocabSize);
  assertEquals(bin.config.numKvHeads, ref.cfg.nKvHeads);
  const V = ref.cfg.vocabSize;
  const rng = new Rng(260);
  const prompt = [1, ...Array.from({ length: 63 }, () => 3 + rng.int(V - 3))];

  await t.step("(a)+(b) 64-token prompt: HF copy = .bin copy = reference (1e-4)", async () => {
    const a = await forward(bin, prompt);
    const b = await forward(hf, prompt);
    assertEquals(a.shape, [64, V]);
    assertEquals(b.shape, [64, V]);
    assertLess(diffModels(a.data, b.data), TOL);
    const r = refLogits(ref, prompt);
    assertLess(maxAbsDiffRows(a.data, r), TOL);
    assertLess(maxAbsDiffRows(b.data, r), TOL);
  });

  await t.step(
    "(c) 200-token greedy continuation identical across the copies and reference",
    async () => {
      const p = [1, prompt[1], prompt[2]];
      const n = 200;
      const ga = await greedyLib(bin, p, n);
      const gb = await greedyLib(hf, p, n);
      const gr = greedyRef(ref, p, n);
      assertEquals(ga.tokens, gr.tokens);
      assertEquals(gb.tokens, gr.tokens);
      // And the logits along the way, not just their argmax.
      for (let i = 0; i < n; i++) {
        assertLess(maxAbsDiffRows(ga.rows[i], [gr.rows[i]]), TOL, `bin step ${i}`);
        assertLess(maxAbsDiffRows(gb.rows[i], [gr.rows[i]]), TOL, `hf step ${i}`);
      }
      // The continuation is not degenerate (the check would be weak on one repeated token).
      assert(new Set(gr.tokens).size > 10, `greedy tokens: ${gr.tokens.slice(0, 20)}`);
    },
  );
});

/** Writes a random llama2.c checkpoint in export.py legacy layout. */
async function writeLlama2c(
  file: string,
  h: {
    dim: number;
    hidden: number;
    layers: number;
    heads: number;
    kvHeads: number;
    vocab: number;
    seq: number;
    shared: boolean;
  },
  rng: Rng,
): Promise<void> {
  const hd = h.dim / h.heads;
  const kvDim = h.kvHeads * hd;
  const L = h.layers;
  const parts: [number, number, number][] = [
    // [count, std, mean]
    [h.vocab * h.dim, 1, 0], // token_embedding
    [L * h.dim, 0.2, 1], // rms_att
    [L * h.dim * h.dim, 1 / Math.sqrt(h.dim), 0], // wq
    [L * kvDim * h.dim, 1 / Math.sqrt(h.dim), 0], // wk
    [L * kvDim * h.dim, 1 / Math.sqrt(h.dim), 0], // wv
    [L * h.dim * h.dim, 1 / Math.sqrt(h.dim), 0], // wo
    [L * h.dim, 0.2, 1], // rms_ffn
    [L * h.hidden * h.dim, 1 / Math.sqrt(h.dim), 0], // w1
    [L * h.dim * h.hidden, 1 / Math.sqrt(h.hidden), 0], // w2
    [L * h.hidden * h.dim, 1 / Math.sqrt(h.dim), 0], // w3
    [h.dim, 0.2, 1], // rms_final
    [(h.seq * hd) / 2, 1, 0], // freq_cis_real (ignored by run.c; random on purpose)
    [(h.seq * hd) / 2, 1, 0], // freq_cis_imag
  ];
  if (!h.shared) parts.push([h.vocab * h.dim, 1 / Math.sqrt(h.dim), 0]); // wcls
  const total = parts.reduce((s, p) => s + p[0], 0);
  const buf = new ArrayBuffer(28 + 4 * total);
  const dv = new DataView(buf);
  const hdr = [h.dim, h.hidden, h.layers, h.heads, h.kvHeads, h.shared ? h.vocab : -h.vocab, h.seq];
  hdr.forEach((v, i) => dv.setInt32(4 * i, v, true));
  let o = 28;
  for (const [n, std, mean] of parts) {
    for (const v of rng.normals(n, std, mean)) {
      dv.setFloat32(o, v, true);
      o += 4;
    }
  }
  await Deno.writeFile(file, new Uint8Array(buf));
}

Deno.test("llama2.c synthetic checkpoints (GQA; shared and separate classifier) vs reference", async () => {
  const dir = await Deno.makeTempDir({ prefix: "quantlab_l2c_" });
  try {
    const rng = new Rng(7);
    for (const shared of [true, false]) {
      const file = `${dir}/model_${shared ? "shared" : "wcls"}.bin`;
      await writeLlama2c(
        file,
        { dim: 48, hidden: 80, layers: 2, heads: 4, kvHeads: 2, vocab: 61, seq: 32, shared },
        rng,
      );
      const model = await loadModel(file);
      assertEquals(model.config.tieWordEmbeddings, shared);
      const ref = await Llama2cReference.load(file);
      const ids = [1, ...rng.ids(31, 61)];
      const got = await forward(model, ids);
      assertLess(maxAbsDiffRows(got.data, refLogits(ref, ids)), TOL, `shared=${shared}`);
      // Incremental through the KV cache too.
      const cache = createKVCache(model.config, 32);
      const r = refLogits(ref, ids);
      await forward(model, ids.slice(0, 5), { cache });
      for (let i = 5; i < ids.length; i++) {
        const s = await forward(model, [ids[i]], { cache });
        assertLess(maxAbsDiffRows(s.data, [r[i]]), TOL, `shared=${shared} token ${i}`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("llama2.c: a truncated checkpoint is a FormatError naming the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "quantlab_l2c_" });
  try {
    const file = `${dir}/trunc.bin`;
    const rng = new Rng(8);
    await writeLlama2c(
      file,
      { dim: 16, hidden: 32, layers: 1, heads: 2, kvHeads: 2, vocab: 20, seq: 8, shared: true },
      rng,
    );
    const bytes = await Deno.readFile(file);
    await Deno.writeFile(file, bytes.subarray(0, bytes.length - 40));
    const e = await assertRejects(() => loadModel(file), FormatError);
    assertEquals(e.file, file);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
