/**
 * GPTQ safetensors: `qweight`/`qzeros` packing checked against a transcription of AutoGPTQ's
 * `QuantLinear.pack` loops (written here, including its 3-bit word-straddling layout), v1's
 * `zero − 1` convention, act-order `g_idx` surviving a round trip, a checkpoint built by hand
 * (as another tool would write it) read by `loadModel`, and export → import of stories260K with
 * the same codes and logits.
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  fromGptqTensors,
  packAlong,
  toGptqTensors,
  unpackAlong,
} from "../../src/io/gptq_format.ts";
import { exportModel } from "../../src/io/export.ts";
import { loadModel } from "../../src/models/load.ts";
import { forward } from "../../src/models/decoder.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import { gptqQuantize } from "../../src/quant/weight_only/gptq.ts";
import { dequantize } from "../../src/quant/core/grid.ts";
import { withF16Scales } from "../../src/quant/core/f16_grid.ts";
import { readHeader, readTensor, writeSafetensors } from "../../src/io/safetensors.ts";
import { OptionError } from "../../src/errors.ts";
import { f16ToF32, f32ToF16 } from "../../src/tensor.ts";
import { dataRoot } from "../../src/_paths.ts";
import { Rng } from "../_rng.ts";

/**
 * AutoGPTQ `pack`: `intweight` is `[in, out]` (the transposed codes); rows of 32/bits inputs per
 * int32 for 2/4/8 bits; for 3 bits, 32 inputs fill 3 words with inputs 10 and 21 split.
 */
function autoGptqPack(intweight: number[][], bits: number): number[][] {
  const inn = intweight.length, out = intweight[0].length;
  const q: number[][] = Array.from({ length: (inn / 32) * bits }, () => new Array(out).fill(0));
  for (let c = 0; c < out; c++) {
    let i = 0, row = 0;
    while (row < q.length) {
      if (bits === 2 || bits === 4 || bits === 8) {
        for (let j = i; j < i + 32 / bits; j++) q[row][c] |= intweight[j][c] << (bits * (j - i));
        i += 32 / bits;
        row += 1;
      } else {
        for (let j = i; j < i + 10; j++) q[row][c] |= intweight[j][c] << (3 * (j - i));
        i += 10;
        q[row][c] |= intweight[i][c] << 30;
        row += 1;
        q[row][c] |= (intweight[i][c] >> 2) & 1;
        i += 1;
        for (let j = i; j < i + 10; j++) q[row][c] |= intweight[j][c] << (3 * (j - i) + 1);
        i += 10;
        q[row][c] |= intweight[i][c] << 31;
        row += 1;
        q[row][c] |= (intweight[i][c] >> 1) & 3;
        i += 1;
        for (let j = i; j < i + 10; j++) q[row][c] |= intweight[j][c] << (3 * (j - i) + 2);
        i += 10;
        row += 1;
      }
    }
  }
  return q.map((r) => r.map((v) => v | 0));
}

Deno.test("qweight matches AutoGPTQ's pack loops for 2, 3, 4 and 8 bits", () => {
  const rng = new Rng(7);
  const out = 24, inn = 64;
  for (const bits of [2, 3, 4, 8]) {
    const codes = Uint8Array.from({ length: out * inn }, () => rng.int(1 << bits));
    const intweight = Array.from(
      { length: inn },
      (_, i) => Array.from({ length: out }, (_, j) => codes[j * inn + i]),
    );
    const want = autoGptqPack(intweight, bits).flat();
    const got = packAlong(codes, out, inn, bits, true);
    assertEquals([...got], want, `${bits} bits`);
    assertEquals(unpackAlong(got, out, inn, bits, true), codes);
  }
});

Deno.test("qzeros: v1 stores zero − 1 packed along outputs; v2 stores zero; v1 refuses zero 0", () => {
  const out = 16, inn = 64, rng = new Rng(9);
  const zeros = Float32Array.from({ length: out * 2 }, () => 1 + rng.int(15));
  const meta = {
    method: "rtn",
    bits: 4,
    groupSize: 32,
    sym: false,
    shape: [out, inn] as [number, number],
    codes: Uint8Array.from({ length: out * inn }, () => rng.int(16)),
    scales: Float32Array.from({ length: out * 2 }, () => f16ToF32(f32ToF16(rng.next() + 0.01))),
    zeros,
  };
  for (const fmt of ["gptq", "gptq_v2"] as const) {
    const t = toGptqTensors(meta, fmt, "x");
    assert(typeof t !== "string");
    // AutoGPTQ: qzeros[g, j / 8] |= (zero[g, j] − 1) << 4·(j mod 8) (v1).
    for (let g = 0; g < 2; g++) {
      for (let w = 0; w < 2; w++) {
        let v = 0;
        for (let k = 0; k < 8; k++) {
          const j = w * 8 + k;
          v |= ((zeros[j * 2 + g] - (fmt === "gptq" ? 1 : 0)) & 15) << (4 * k);
        }
        assertEquals(t.qzeros[g * 2 + w], v | 0, `${fmt} g${g} w${w}`);
      }
    }
    const back = fromGptqTensors({ ...t, scales: Float32Array.from(t.scales, f16ToF32) }, {
      out,
      in: inn,
      bits: 4,
      groups: 2,
    }, fmt);
    assertEquals(back.zeros, zeros);
    assertEquals(back.codes, meta.codes);
    assertEquals(back.scales, meta.scales);
  }
  const z0 = { ...meta, zeros: zeros.map((z, i) => (i === 3 ? 0 : z)) };
  const e = assertThrows(
    () => toGptqTensors(z0, "gptq", "model.layers.0.mlp.up_proj"),
    OptionError,
  );
  assert(e.message.includes("model.layers.0.mlp.up_proj") && e.message.includes("gptq_v2"));
  assert(typeof toGptqTensors(z0, "gptq_v2", "x") !== "string");
});

Deno.test("GPTQ act-order: g_idx and codes survive the round trip", async () => {
  const rng = new Rng(13);
  const out = 32, inn = 64, n = 256;
  const W = {
    shape: [out, inn],
    data: Float32Array.from({ length: out * inn }, () => rng.normal()),
  };
  const X = Float32Array.from({ length: n * inn }, (_, k) => rng.normal() * (1 + (k % inn) / 8));
  const H = new Float64Array(inn * inn);
  for (let r = 0; r < n; r++) {
    for (let a = 0; a < inn; a++) {
      for (let b = 0; b < inn; b++) H[a * inn + b] += (2 / n) * X[r * inn + a] * X[r * inn + b];
    }
  }
  const res = await gptqQuantize(W, { H, nsamples: n }, { bits: 4, groupSize: 16, actOrder: true });
  const meta = res.meta;
  assert(
    meta.gIdx && meta.gIdx.some((g, i) => g !== Math.floor(i / 16)),
    "act-order permutes groups",
  );
  const t = toGptqTensors(
    { ...meta, scales: meta.scales.map((s) => f16ToF32(f32ToF16(s))) },
    "gptq_v2",
    "x",
  );
  assert(typeof t !== "string");
  const back = fromGptqTensors({ ...t, scales: Float32Array.from(t.scales, f16ToF32) }, {
    out,
    in: inn,
    bits: 4,
    groups: t.groups,
  }, "gptq_v2");
  assertEquals(back.gIdx, meta.gIdx);
  assertEquals(back.codes, meta.codes);
  assertEquals(back.zeros, meta.zeros);
  const Wd = dequantize({ ...meta, scales: back.scales });
  const Wb = dequantize({
    ...meta,
    codes: back.codes,
    scales: back.scales,
    zeros: back.zeros,
    gIdx: back.gIdx,
  });
  assertEquals(Wb.data, Wd.data);
});

Deno.test("a hand-built v1 checkpoint (another tool's layout) loads as a quantized model", async () => {
  const dir = await Deno.makeTempDir({ prefix: "quantlab_gptq_" });
  try {
    const src = `${dataRoot()}/models/stories260K-hf`;
    const h = await readHeader(`${src}/model.safetensors`);
    const tensors: Record<
      string,
      { shape: number[]; data: Float32Array | Uint8Array; dtype?: string }
    > = {};
    for (const n of h.tensors.keys()) tensors[n] = await readTensor(h, n);
    const p = "model.layers.0.self_attn.q_proj";
    delete tensors[`${p}.weight`];
    const rng = new Rng(21);
    const out = 64, inn = 64, gs = 32, groups = 2;
    const codes = Array.from({ length: inn }, () => Array.from({ length: out }, () => rng.int(16)));
    const zeros = Array.from(
      { length: groups },
      () => Array.from({ length: out }, () => 1 + rng.int(15)),
    );
    const scales = Array.from(
      { length: groups },
      () => Array.from({ length: out }, () => f32ToF16(0.01 + rng.next() * 0.02)),
    );
    const i32 = (a: number[]) => new Uint8Array(Int32Array.from(a).buffer);
    tensors[`${p}.qweight`] = {
      shape: [inn / 8, out],
      data: i32(autoGptqPack(codes, 4).flat()),
      dtype: "I32",
    };
    const qz: number[] = [];
    for (let g = 0; g < groups; g++) {
      for (let w = 0; w < out / 8; w++) {
        let v = 0;
        for (let k = 0; k < 8; k++) v |= ((zeros[g][w * 8 + k] - 1) & 15) << (4 * k);
        qz.push(v);
      }
    }
    tensors[`${p}.qzeros`] = { shape: [groups, out / 8], data: i32(qz), dtype: "I32" };
    tensors[`${p}.scales`] = {
      shape: [groups, out],
      data: new Uint8Array(Uint16Array.from(scales.flat()).buffer),
      dtype: "F16",
    };
    tensors[`${p}.g_idx`] = {
      shape: [inn],
      data: i32(Array.from({ length: inn }, (_, i) => Math.floor(i / gs))),
      dtype: "I32",
    };
    await writeSafetensors(`${dir}/model.safetensors`, tensors);
    const cfg = JSON.parse(await Deno.readTextFile(`${src}/config.json`));
    cfg.quantization_config = {
      quant_method: "gptq",
      bits: 4,
      group_size: gs,
      desc_act: false,
      sym: false,
    };
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(cfg));
    const m = await loadModel(dir);
    const W = await m.weights.get(`${p}.weight`);
    for (let j = 0; j < out; j++) {
      for (let i = 0; i < inn; i++) {
        const g = Math.floor(i / gs);
        const want = Math.fround(f16ToF32(scales[g][j]) * (codes[i][j] - zeros[g][j]));
        assertEquals(W.data[j * inn + i], want, `W[${j}, ${i}]`);
      }
    }
    assertEquals(Object.keys(m.packed!), [p]);
    assertEquals(m.packed![p].codes[5 * inn + 7], codes[7][5]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("stories260K export → import: same codes and logits (f16 scales)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "quantlab_gptq_" });
  try {
    const m = await loadModel(`${dataRoot()}/models/stories260K-hf`);
    const qm = await quantize(
      m,
      withF16Scales(rtn({ bits: 4, groupSize: 32, sym: true, partialGroups: true })),
      {
        progress: false,
      } as never,
    );
    const rep = await exportModel(qm, `${dir}/g`, { format: "gptq" });
    const cfg = JSON.parse(await Deno.readTextFile(`${dir}/g/config.json`));
    assertEquals(cfg.quantization_config.checkpoint_format, "gptq");
    assertEquals([
      cfg.quantization_config.bits,
      cfg.quantization_config.group_size,
      cfg.quantization_config.sym,
    ], [4, 32, true]);
    // 172-wide MLP: qweight (down_proj inputs) and qzeros (gate/up outputs) need whole int32 words.
    assertEquals(cfg.quantization_config.modules_to_not_convert.length, 15);
    assert(rep.tensors.every((t) => t.maxAbsErr === 0));
    const back = await loadModel(`${dir}/g`);
    assertEquals(Object.keys(back.packed!).length, 20);
    for (const [name, meta] of Object.entries(back.packed!)) {
      assertEquals(meta.codes, qm.packed![name].codes, name);
      assertEquals(meta.zeros, qm.packed![name].zeros, name);
    }
    const ids = [1, 403, 407, 261, 378, 300];
    const a = (await forward(qm, ids)).data, b = (await forward(back, ids)).data;
    assertEquals(a, b);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
