/**
 * `exportModel(…, { format: "onnx" })`: MatMulNBits packing checked against a byte-level
 * transcription of onnxruntime's contrib-op spec (and run by onnxruntime on a small matrix), then
 * the exported stories260K (RTN and GPTQ, 4-bit g32, symmetric and asymmetric) run by
 * onnxruntime-node against quantlab's forward of the same quantized model (logits within 1e-3,
 * the same greedy tokens, a step-by-step decode through past key/values equal to the full
 * forward, left padding), and through a transformers.js `text-generation` pipeline from the
 * local folder (the same greedy text). Bad input: non-grid methods, grids MatMulNBits cannot
 * hold, options that do not apply, an existing folder.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { getTokenizer, loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import { createKVCache, forward } from "../../src/models/decoder.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { exportModel } from "../../src/io/export.ts";
import { packMatMulNBits, unpackMatMulNBits } from "../../src/io/onnx_export.ts";
import { ONNX_DTYPE, OnnxGraph } from "../../src/io/_onnx_graph.ts";
import { OptionError, UnsupportedError } from "../../src/errors.ts";
import { dataRoot } from "../../src/_paths.ts";

const HF = `${dataRoot()}/models/stories260K-hf`;
const IDS = [1, 403, 407, 261, 378, 300, 1, 17, 260, 511];
const NEW_TOKENS = 40;

// deno-lint-ignore no-explicit-any
type Ort = any;
let ortP: Promise<Ort> | null = null;
const ort = () => (ortP ??= import("onnxruntime-node").then((m) => m.default ?? m));

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assertEquals(a.length, b.length);
  let e = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d > e || Number.isNaN(d)) e = d;
  }
  return e;
}

function argmax(a: Float32Array, from = 0, n = a.length): number {
  let best = from;
  for (let i = from; i < from + n; i++) if (a[i] > a[best]) best = i;
  return best - from;
}

/**
 * The MatMulNBits byte layout transcribed from onnxruntime's ContribOperators.md (bits = 4):
 * B[n][blk][j] holds the codes of columns blk·bs + 2j (bits 0..3) and blk·bs + 2j + 1 (bits
 * 4..7); columns past K are padding; zero points: per row n, ceil(n_blocks / 2) bytes, block blk
 * in byte blk/2 at bit offset 4·(blk mod 2). Written here from the spec, with its own loops.
 */
function specPack(
  codes: number[][],
  zeros: number[][],
  bs: number,
  pad: (n: number, blk: number) => number,
): { B: number[]; zp: number[] } {
  const N = codes.length, K = codes[0].length, nb = Math.ceil(K / bs);
  const B: number[] = [];
  for (let n = 0; n < N; n++) {
    for (let blk = 0; blk < nb; blk++) {
      for (let j = 0; j < bs / 2; j++) {
        let byte = 0;
        for (const [bit, col] of [[0, blk * bs + 2 * j], [4, blk * bs + 2 * j + 1]]) {
          const c = col < K ? codes[n][col] : pad(n, blk);
          byte += c * 2 ** bit;
        }
        B.push(byte);
      }
    }
  }
  const zp: number[] = [];
  for (let n = 0; n < N; n++) {
    const row = new Array(Math.ceil(nb / 2)).fill(0);
    for (let blk = 0; blk < nb; blk++) row[Math.floor(blk / 2)] += zeros[n][blk] * 16 ** (blk % 2);
    zp.push(...row);
  }
  return { B, zp };
}

/** A small random grid layer: codes, scales, zeros (`sym`: all zeros 8). */
function randomLayer(N: number, K: number, bs: number, sym: boolean, seed: number) {
  let s = seed;
  const rnd = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  const nb = Math.ceil(K / bs);
  const codes = Array.from({ length: N }, () => Array.from({ length: K }, () => (rnd() * 16) | 0));
  const zeros = Array.from(
    { length: N },
    () => Array.from({ length: nb }, () => (sym ? 8 : (rnd() * 16) | 0)),
  );
  const scales = Array.from({ length: N * nb }, () => Math.fround(0.01 + rnd() * 0.1));
  return {
    codes,
    zeros,
    meta: {
      method: "rtn",
      bits: 4,
      groupSize: bs,
      sym,
      shape: [N, K] as [number, number],
      codes: Uint8Array.from(codes.flat()),
      scales: Float32Array.from(scales),
      zeros: Float32Array.from(zeros.flat()),
    },
  };
}

Deno.test("MatMulNBits packing equals the spec's byte layout and onnxruntime computes A·(scale·(q − zp))ᵀ", async () => {
  const o = await ort();
  for (const [bs, K] of [[32, 72], [64, 128], [128, 200], [16, 40]]) {
    for (const sym of [true, false]) {
      const N = 5;
      const { codes, zeros, meta } = randomLayer(N, K, bs, sym, bs + K + (sym ? 1 : 2));
      const w = packMatMulNBits(meta);
      const nb = Math.ceil(K / bs);
      const spec = specPack(codes, zeros, bs, (n, blk) => zeros[n][blk]);
      assertEquals(Array.from(w.B), spec.B, `B bs=${bs} sym=${sym}`);
      assertEquals(w.nBlocks, nb);
      if (sym) assertEquals(w.zeroPoints, undefined, "symmetric: default zero point 8");
      else assertEquals(Array.from(w.zeroPoints!), spec.zp, `zero_points bs=${bs}`);
      // With explicit zero points a symmetric grid packs 8s.
      if (sym) {
        assertEquals(
          Array.from(packMatMulNBits(meta, { zeroPoints: true }).zeroPoints!),
          spec.zp,
        );
      }
      // The plain dequantized weight and a float reference product.
      const Wref = new Float32Array(N * K);
      for (let n = 0; n < N; n++) {
        for (let k = 0; k < K; k++) {
          const blk = Math.floor(k / bs);
          Wref[n * K + k] = Math.fround((codes[n][k] - zeros[n][blk]) * meta.scales[n * nb + blk]);
        }
      }
      assertEquals(maxDiff(unpackMatMulNBits(w), Wref), 0);
      const M = 3;
      const A = Float32Array.from({ length: M * K }, (_, i) => Math.sin(i * 0.37));
      const g = new OnnxGraph();
      g.input("A", ONNX_DTYPE.FLOAT, ["M", K]);
      const ins = [
        "A",
        g.init("B", ONNX_DTYPE.UINT8, [N, nb, bs / 2], w.B),
        g.f32("scales", [N * nb], w.scales),
      ];
      if (w.zeroPoints) {
        ins.push(g.init("zp", ONNX_DTYPE.UINT8, [w.zeroPoints.length], w.zeroPoints));
      }
      g.node("MatMulNBits", ins, {
        domain: "com.microsoft",
        attrs: { K, N, bits: 4, block_size: bs },
        outputs: ["Y"],
      });
      g.output("Y", ONNX_DTYPE.FLOAT, ["M", N]);
      const s = await o.InferenceSession.create(g.encode(), { intraOpNumThreads: 1 });
      const y = (await s.run({ A: new o.Tensor("float32", A, [M, K]) })).Y.data as Float32Array;
      const ref = new Float64Array(M * N);
      for (let m = 0; m < M; m++) {
        for (let n = 0; n < N; n++) {
          let acc = 0;
          for (let k = 0; k < K; k++) acc += A[m * K + k] * Wref[n * K + k];
          ref[m * N + n] = acc;
        }
      }
      assert(maxDiff(y, ref) < 1e-5, `onnxruntime bs=${bs} sym=${sym}: ${maxDiff(y, ref)}`);
    }
  }
  // Act-order: column j belongs to group gIdx[j]; B holds the columns of group 0, then group 1,
  // ... (ascending column index inside a group), so each block is one group.
  const N = 3, K = 48, bs = 16;
  const { codes, zeros, meta } = randomLayer(N, K, bs, false, 7);
  const gIdx = Int32Array.from({ length: K }, (_, j) => (j * 7) % 3); // 16 columns per group
  const order: number[] = [];
  for (let grp = 0; grp < 3; grp++) for (let j = 0; j < K; j++) if (gIdx[j] === grp) order.push(j);
  const w = packMatMulNBits({ ...meta, gIdx });
  assertEquals(Array.from(w.perm!), order);
  const permuted = codes.map((row) => order.map((j) => row[j]));
  assertEquals(Array.from(w.B), specPack(permuted, zeros, bs, (n, b) => zeros[n][b]).B);
  const Wref = new Float32Array(N * K);
  for (let n = 0; n < N; n++) {
    for (let j = 0; j < K; j++) {
      Wref[n * K + j] = Math.fround(
        (codes[n][j] - zeros[n][gIdx[j]]) * meta.scales[n * 3 + gIdx[j]],
      );
    }
  }
  assertEquals(maxDiff(unpackMatMulNBits(w), Wref), 0);
});

/** Feeds for `ids` (batch 1) after `past` cached tokens (`pkv`: the previous step's presents). */
function feeds(o: Ort, m: Model, ids: number[], past: number, pkv: Record<string, unknown> | null) {
  const c = m.config, T = ids.length;
  const f: Record<string, unknown> = {
    input_ids: new o.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, T]),
    attention_mask: new o.Tensor("int64", new BigInt64Array(past + T).fill(1n), [1, past + T]),
    position_ids: new o.Tensor("int64", BigInt64Array.from(ids, (_, i) => BigInt(past + i)), [
      1,
      T,
    ]),
  };
  for (let l = 0; l < c.numLayers; l++) {
    for (const kv of ["key", "value"]) {
      f[`past_key_values.${l}.${kv}`] = pkv?.[`present.${l}.${kv}`] ??
        new o.Tensor("float32", new Float32Array(0), [1, c.numKvHeads, 0, c.headDim]);
    }
  }
  return f;
}

/** quantlab's greedy continuation of `prompt` (KV cache), stopping at EOS. */
async function quantlabGreedy(m: Model, prompt: number[], n: number): Promise<number[]> {
  const cache = createKVCache(m.config, prompt.length + n + 1);
  const V = m.config.vocabSize;
  let lg = (await forward(m, prompt, { cache })).data;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = argmax(lg, lg.length - V, V);
    out.push(t);
    if (t === m.config.eosTokenId) break;
    lg = (await forward(m, [t], { cache })).data;
  }
  return out;
}

/** onnxruntime's greedy continuation through past key/values; also the per-step logits. */
async function ortGreedy(s: Ort, m: Model, prompt: number[], n: number) {
  const o = await ort();
  const V = m.config.vocabSize;
  let r = await s.run(feeds(o, m, prompt, 0, null));
  let past = prompt.length;
  const out: number[] = [];
  const steps: Float32Array[] = [];
  for (let i = 0; i < n; i++) {
    const lg = r.logits.data as Float32Array;
    steps.push(lg.slice(lg.length - V));
    const t = argmax(lg, lg.length - V, V);
    out.push(t);
    if (t === m.config.eosTokenId) break;
    r = await s.run(feeds(o, m, [t], past, r));
    past++;
  }
  return { out, steps };
}

async function quantized(
  m: Model,
  method: "rtn" | "gptq" | "gptq-actorder",
  sym: boolean,
): Promise<Model> {
  const opts = { bits: 4, groupSize: 32, sym, partialGroups: true };
  if (method === "rtn") return await quantize(m, rtn(opts), { progress: false } as never);
  const calib = await calibrationSet(m, "tinystories", { nsamples: 8, seqlen: 64, seed: 0 });
  const q = gptq({ ...opts, actOrder: method === "gptq-actorder" });
  return await quantize(m, q, { calib, progress: false } as never);
}

Deno.test("stories260K 4-bit g32 (RTN/GPTQ, sym/asym) in onnxruntime: logits within 1e-3, same greedy tokens, KV decode = full forward", async () => {
  const o = await ort();
  const dir = await Deno.makeTempDir({ prefix: "quantlab_onnx_" });
  try {
    const m = await loadModel(HF);
    const V = m.config.vocabSize;
    for (
      const [method, sym] of [
        ["rtn", true],
        ["rtn", false],
        ["gptq", true],
        ["gptq", false],
        ["gptq-actorder", false],
      ] as const
    ) {
      const tag = `${method} ${sym ? "sym" : "asym"}`;
      const qm = await quantized(m, method, sym);
      const out = `${dir}/${method}_${sym ? "sym" : "asym"}`;
      const rep = await exportModel(qm, out, { format: "onnx" });
      assertEquals(rep.format, "onnx");
      const lin = rep.tensors.filter((t) => t.type.startsWith("MatMulNBits"));
      assertEquals(lin.length, 35, tag); // 5 blocks × 7 linears, the 172-wide down_proj included
      assert(lin.every((t) => t.how === "codes" && t.maxAbsErr === 0), tag);
      const suffix = `${sym ? "" : "-zp"}${method === "gptq-actorder" ? "-actorder" : ""}`;
      assert(lin.every((t) => t.type === `MatMulNBits-4bit-b32${suffix}`), tag);
      if (method === "gptq-actorder") {
        const gi = qm.packed!["model.layers.0.self_attn.q_proj"].gIdx as Int32Array;
        assert(gi.some((g, j) => g !== Math.floor(j / 32)), "act-order permutes the groups");
      }
      const s = await o.InferenceSession.create(`${out}/onnx/model.onnx`, {
        intraOpNumThreads: 1,
      });
      // Full-sequence logits.
      const r = await s.run(feeds(o, qm, IDS, 0, null));
      assertEquals(r.logits.dims, [1, IDS.length, V]);
      assertEquals(r["present.0.key"].dims, [1, 4, IDS.length, 8]);
      const ref = (await forward(qm, IDS)).data;
      const d = maxDiff(r.logits.data, ref);
      assert(d < 1e-3, `${tag}: max |Δlogit| ${d}`);
      // Greedy through past key/values; each step's logits against quantlab's full forward.
      const prompt = IDS.slice(0, 4);
      const want = await quantlabGreedy(qm, prompt, NEW_TOKENS);
      const got = await ortGreedy(s, qm, prompt, NEW_TOKENS);
      assertEquals(got.out, want, tag);
      assert(want.length >= 32, `${tag}: ${want.length} tokens before EOS`);
      const full = (await forward(qm, [...prompt, ...want.slice(0, -1)])).data;
      let stepErr = 0;
      got.steps.forEach((lg, i) => {
        const row = full.subarray((prompt.length - 1 + i) * V, (prompt.length + i) * V);
        stepErr = Math.max(stepErr, maxDiff(lg, row));
      });
      assert(stepErr < 1e-3, `${tag}: step-by-step vs full forward ${stepErr}`);
      console.log(`${tag}: max |Δlogit| ${d.toExponential(2)}, decode ${stepErr.toExponential(2)}`);
      if (method === "rtn" && !sym) {
        // Left padding (batch 2): the padded row's logits equal the unpadded sequence's.
        const short = IDS.slice(0, 8), T = IDS.length;
        const f = feeds(o, qm, IDS, 0, null);
        const ids2 = [...IDS, 0, 0, ...short];
        const mask2 = [...new Array(T).fill(1), 0, 0, ...new Array(8).fill(1)];
        const pos2 = [...IDS.map((_, i) => i), 1, 1, ...short.map((_, i) => i)];
        f.input_ids = new o.Tensor("int64", BigInt64Array.from(ids2.map(BigInt)), [2, T]);
        f.attention_mask = new o.Tensor("int64", BigInt64Array.from(mask2.map(BigInt)), [2, T]);
        f.position_ids = new o.Tensor("int64", BigInt64Array.from(pos2.map(BigInt)), [2, T]);
        for (let l = 0; l < 5; l++) {
          for (const kv of ["key", "value"]) {
            f[`past_key_values.${l}.${kv}`] = new o.Tensor("float32", new Float32Array(0), [
              2,
              4,
              0,
              8,
            ]);
          }
        }
        const lg = (await s.run(f)).logits.data as Float32Array;
        const refShort = (await forward(qm, short)).data;
        assert(maxDiff(lg.subarray(T * V + 2 * V), refShort) < 1e-3, "left-padded row");
        assert(maxDiff(lg.subarray(0, T * V), ref) < 1e-3, "unpadded row");
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("transformers.js text-generation from the exported folder (inline and external data) gives quantlab's greedy text", async () => {
  const tf = await import("@huggingface/transformers");
  const o = await ort();
  const dir = await Deno.makeTempDir({ prefix: "quantlab_onnx_tfjs_" });
  try {
    const m = await loadModel(HF);
    const qm = await quantized(m, "rtn", false);
    const tok = await getTokenizer(qm);
    const prompt = "Once upon a time";
    const ids = tok.encode(prompt);
    const want = await quantlabGreedy(qm, ids, NEW_TOKENS);
    assert(want.length >= 32);
    tf.env.allowRemoteModels = false;
    tf.env.localModelPath = `${dir}/`;
    for (const externalData of [false, true]) {
      const name = externalData ? "ext" : "inline";
      const rep = await exportModel(qm, `${dir}/${name}`, { format: "onnx", externalData });
      const onnxSize = (await Deno.stat(`${dir}/${name}/onnx/model.onnx`)).size;
      if (externalData) {
        assert(rep.files.includes("onnx/model.onnx_data"));
        const dataSize = (await Deno.stat(`${dir}/${name}/onnx/model.onnx_data`)).size;
        assert(onnxSize < 64 * 1024 && dataSize > 250_000, `${onnxSize} + ${dataSize}`);
        // onnxruntime resolves the data file beside the model.
        const s = await o.InferenceSession.create(`${dir}/${name}/onnx/model.onnx`, {
          intraOpNumThreads: 1,
        });
        const lg = (await s.run(feeds(o, qm, IDS, 0, null))).logits.data;
        assert(maxDiff(lg, (await forward(qm, IDS)).data) < 1e-3, "external data logits");
      } else {
        assert(!rep.files.includes("onnx/model.onnx_data") && onnxSize > 250_000);
      }
      // deno-lint-ignore no-explicit-any
      const gen: any = await tf.pipeline("text-generation", name, {
        local_files_only: true, // dtype (fp32) and external data come from config.json
        device: "cpu",
      } as never);
      // The folder's tokenizer.json tokenizes as quantlab's llama2.c tokenizer does.
      assertEquals(Array.from(gen.tokenizer.encode(prompt)), ids);
      const r = await gen(prompt, { max_new_tokens: NEW_TOKENS, do_sample: false });
      const text = r[0].generated_text as string;
      assertEquals(text, tok.decode([...ids, ...want]), name);
      assertStringIncludes(text, prompt);
      await gen.dispose?.();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bad input: non-grid methods, grids MatMulNBits cannot hold, options, an existing folder", async () => {
  const dir = await Deno.makeTempDir({ prefix: "quantlab_onnx_bad_" });
  try {
    const m = await loadModel(HF);
    const quip: Model = {
      ...m,
      packed: {
        "model.layers.0.self_attn.q_proj": {
          method: "quip",
          bits: 2,
          groupSize: -1,
          sym: false,
          shape: [64, 64],
        },
      },
    };
    const e = await assertRejects(
      () => exportModel(quip, `${dir}/q`, { format: "onnx" }),
      UnsupportedError,
    );
    for (const s of ["model.layers.0.self_attn.q_proj", "quip", "onnx", "MatMulNBits"]) {
      assertStringIncludes(e.message, s);
    }
    const r = await exportModel(quip, `${dir}/q`, { format: "onnx", nonGrid: "dequantize" });
    const t = r.tensors.find((x) => x.name === "model.layers.0.self_attn.q_proj.weight")!;
    assertEquals([t.type, t.how], ["F32", "dequantized"]);
    assert(r.notes.some((n) => n.includes("quip")));
    // 3-bit and per-row grids: float MatMul of the fake-quant weight, reported; still runs right.
    const q3 = await quantize(m, rtn({ bits: 3, groupSize: 32, sym: false, partialGroups: true }), {
      progress: false,
    } as never);
    const r3 = await exportModel(q3, `${dir}/q3`, { format: "onnx" });
    const t3 = r3.tensors.filter((x) => x.how === "dequantized");
    assertEquals(t3.length, 35);
    assertStringIncludes(t3[0].note!, "3-bit");
    const o = await ort();
    const s = await o.InferenceSession.create(`${dir}/q3/onnx/model.onnx`, {
      intraOpNumThreads: 1,
    });
    const lg = (await s.run(feeds(o, q3, IDS, 0, null))).logits.data;
    assert(maxDiff(lg, (await forward(q3, IDS)).data) < 1e-3);
    const gPerRow = await quantize(m, rtn({ bits: 4, groupSize: -1, sym: true }), {
      progress: false,
    } as never);
    const rr = await exportModel(gPerRow, `${dir}/pr`, { format: "onnx" });
    assertStringIncludes(rr.tensors.find((x) => x.how === "dequantized")!.note!, "power of two");
    // Options that do not apply to ONNX, and an existing folder.
    const eo = await assertRejects(
      () => exportModel(m, `${dir}/x`, { format: "onnx", type: "q4_0" }),
      OptionError,
    );
    assertEquals(eo.option, "type");
    const ee = await assertRejects(
      () => exportModel(m, `${dir}/x`, { format: "onnx", externalData: "yes" as never }),
      OptionError,
    );
    assertEquals(ee.option, "externalData");
    const ex = await assertRejects(
      () => exportModel(m, `${dir}/q`, { format: "onnx" }),
      OptionError,
    );
    assertEquals(ex.option, "overwrite");
    await exportModel(m, `${dir}/q`, { format: "onnx", overwrite: true });
    const left = [];
    for await (const d of Deno.readDir(dir)) left.push(d.name);
    assertEquals(left.sort(), ["pr", "q", "q3"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
