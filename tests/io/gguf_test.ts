/**
 * GGUF format: block layouts checked against byte-level transcriptions of llama.cpp's
 * `ggml-common.h` structs written here (not produced by the exporter), K-quant decoders against
 * per-element formulas of the spec, the reference quantizers against closed forms (inputs on the
 * grid come back exactly), and the header against hand-built bytes; malformed files each give a
 * FormatError naming the file.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import {
  dequantizeGgml,
  encodeGgufHeader,
  GGML_TYPE,
  gv,
  openGguf,
  packGgmlBlocks,
  parseGgufHeader,
  quantizeGgml,
  unpackGgmlBlocks,
  writeGguf,
} from "../../src/io/gguf.ts";
import { FormatError } from "../../src/errors.ts";
import { f16ToF32, f32ToF16 } from "../../src/tensor.ts";
import { Rng } from "../_rng.ts";

const codes32 = (f: (j: number) => number) => Uint8Array.from({ length: 32 }, (_, j) => f(j));

Deno.test("Q4_0 block: {f16 d; u8 qs[16]} with element j low nibble, j+16 high nibble", () => {
  const c = codes32((j) => (j * 7 + 3) % 16);
  // d = 0.5 → f16 0x3800, little-endian bytes 00 38.
  const expected = [0x00, 0x38];
  for (let j = 0; j < 16; j++) expected.push(c[j] | (c[j + 16] << 4));
  const got = packGgmlBlocks("Q4_0", { codes: c, d: Uint16Array.of(0x3800) });
  assertEquals([...got], expected);
  const y = dequantizeGgml(Uint8Array.from(expected), GGML_TYPE.Q4_0, 32);
  assertEquals([...y], [...c].map((q) => 0.5 * (q - 8)));
  assertEquals([...unpackGgmlBlocks("Q4_0", got).codes], [...c]);
});

Deno.test("Q4_1 block: {f16 d; f16 m; u8 qs[16]}, x = d·q + m", () => {
  const c = codes32((j) => (j * 5 + 1) % 16);
  // d = 0.25 → 0x3400; m = −1.5 → 0xBE00.
  const expected = [0x00, 0x34, 0x00, 0xbe];
  for (let j = 0; j < 16; j++) expected.push(c[j] | (c[j + 16] << 4));
  const got = packGgmlBlocks("Q4_1", {
    codes: c,
    d: Uint16Array.of(0x3400),
    m: Uint16Array.of(0xbe00),
  });
  assertEquals([...got], expected);
  const y = dequantizeGgml(got, GGML_TYPE.Q4_1, 32);
  assertEquals([...y], [...c].map((q) => 0.25 * q - 1.5));
});

Deno.test("Q8_0 block: {f16 d; i8 qs[32]}, code − 128 stored as two's complement", () => {
  const c = codes32((j) => (j * 37 + 11) % 256);
  // d = 0.125 → 0x3000.
  const expected = [0x00, 0x30, ...[...c].map((q) => (q - 128) & 0xff)];
  const got = packGgmlBlocks("Q8_0", { codes: c, d: Uint16Array.of(0x3000) });
  assertEquals([...got], expected);
  const y = dequantizeGgml(got, GGML_TYPE.Q8_0, 32);
  assertEquals([...y], [...c].map((q) => 0.125 * (q - 128)));
  assertThrows(() => packGgmlBlocks("Q4_0", { codes: codes32(() => 16), d: Uint16Array.of(0) }));
});

Deno.test("reference quantizers reproduce values on their grid exactly (closed form)", () => {
  const rng = new Rng(3);
  const d = f16ToF32(f32ToF16(0.0371)), m = f16ToF32(f32ToF16(-0.41));
  // Q8_0: x = d·k with max |k| = 127 → d_file = amax/127 = d, codes k.
  const k8 = Array.from({ length: 32 }, () => rng.int(255) - 127);
  k8[5] = 127;
  const x8 = Float32Array.from(k8, (k) => d * k);
  assertEquals([...dequantizeGgml(quantizeGgml(x8, "Q8_0"), GGML_TYPE.Q8_0, 32)], [...x8]);
  // Q4_0: x = d·(q − 8) with the largest |x| at q = 0 (−8d) → d_file = max/−8 = d.
  const q4 = Array.from({ length: 32 }, () => 1 + rng.int(15));
  q4[9] = 0;
  const x4 = Float32Array.from(q4, (q) => d * (q - 8));
  assertEquals([...dequantizeGgml(quantizeGgml(x4, "Q4_0"), GGML_TYPE.Q4_0, 32)], [...x4]);
  // Q4_1: x = d·q + m spanning q = 0..15 → d_file = (max − min)/15 = d, m_file = min = m.
  const q1 = Array.from({ length: 32 }, () => rng.int(16));
  q1[0] = 0;
  q1[1] = 15;
  const x1 = Float32Array.from(q1, (q) => Math.fround(Math.fround(d * q) + m));
  const y1 = dequantizeGgml(quantizeGgml(x1, "Q4_1"), GGML_TYPE.Q4_1, 32);
  for (let j = 0; j < 32; j++) assert(Math.abs(y1[j] - x1[j]) <= 1e-6, `Q4_1 at ${j}`);
  // Off-grid data: error within half a step (Q8_0: amax/254; Q4_0: |max|/16).
  const xr = Float32Array.from({ length: 64 }, () => rng.normal());
  for (const [t, bound] of [["Q8_0", 1 / 254], ["Q4_0", 1 / 16 + 1e-3]] as const) {
    const y = dequantizeGgml(quantizeGgml(xr, t), GGML_TYPE[t], 64);
    for (let b = 0; b < 2; b++) {
      let amax = 0;
      for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(xr[b * 32 + j]));
      for (let j = 0; j < 32; j++) {
        const i = b * 32 + j;
        assert(Math.abs(y[i] - xr[i]) <= amax * bound * 1.01, `${t} at ${i}`);
      }
    }
  }
});

/** Random K-quant block bytes with finite, small f16 `d` (and `dmin`) at the given offsets. */
function kBlock(rng: Rng, size: number, halfOffsets: number[]): Uint8Array {
  const b = Uint8Array.from({ length: size }, () => rng.int(256));
  for (const o of halfOffsets) {
    const h = f32ToF16((rng.next() + 0.1) * 0.01);
    b[o] = h & 0xff;
    b[o + 1] = h >> 8;
  }
  return b;
}

/** The 6-bit scale and min of sub-block s (0–7) of a Q4_K/Q5_K `scales[12]`, per the spec. */
function sm(sc: Uint8Array, s: number): [number, number] {
  // Sub-blocks 0–3: low 6 bits of bytes 0–3 (scale) and 4–7 (min). Sub-blocks 4–7: low nibble
  // (scale) / high nibble (min) of bytes 8–11, top 2 bits from the top bits of bytes 0–3 / 4–7.
  if (s < 4) return [sc[s] % 64, sc[s + 4] % 64];
  const lo = sc[s + 4];
  return [
    (lo % 16) + 16 * Math.floor(sc[s - 4] / 64),
    Math.floor(lo / 16) + 16 * Math.floor(sc[s] / 64),
  ];
}

Deno.test("Q4_K / Q5_K / Q6_K decoders match per-element formulas of the block structs", () => {
  const rng = new Rng(11);
  const fr = Math.fround;
  // Q4_K {f16 d, dmin; u8 scales[12]; u8 qs[128]}: element i, chunk c = i/64, sub-block
  // s = i/32; q = low nibble of qs[32c + i%32] for even s, high nibble for odd s.
  for (const five of [false, true]) {
    const size = five ? 176 : 144;
    const blk = kBlock(rng, 2 * size, [0, 2, size, size + 2]);
    const y = dequantizeGgml(blk, five ? GGML_TYPE.Q5_K : GGML_TYPE.Q4_K, 512);
    for (let b = 0; b < 2; b++) {
      const o = b * size, d = f16ToF32(blk[o] | (blk[o + 1] << 8));
      const dmin = f16ToF32(blk[o + 2] | (blk[o + 3] << 8));
      const sc = blk.subarray(o + 4, o + 16);
      const qs = blk.subarray(o + (five ? 48 : 16), o + size);
      for (let i = 0; i < 256; i++) {
        const s = Math.floor(i / 32), c = Math.floor(i / 64), l = i % 32;
        const byte = qs[32 * c + l];
        let q = s % 2 === 0 ? byte % 16 : Math.floor(byte / 16);
        // Q5_K {.. scales[12]; u8 qh[32]; u8 qs[128]}: the fifth bit of element i is bit s of qh[l].
        if (five) q += (Math.floor(blk[o + 16 + l] / 2 ** s) % 2) * 16;
        const [scale, min] = sm(sc, s);
        const want = fr(fr(fr(d * scale) * q) - fr(dmin * min));
        assertEquals(y[b * 256 + i], want, `${five ? "Q5_K" : "Q4_K"} block ${b} element ${i}`);
      }
    }
  }
  // Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: element i, half n = i/128, quarter
  // k = (i%128)/32, l = i%32: low 4 bits from ql[64n + l + 32·(k%2)] (low nibble for k < 2,
  // high for k ≥ 2), high 2 bits = bits 2k..2k+1 of qh[32n + l], scale scales[8n + l/16 + 2k].
  const blk = kBlock(rng, 420, [208, 418]);
  const y = dequantizeGgml(blk, GGML_TYPE.Q6_K, 512);
  for (let b = 0; b < 2; b++) {
    const o = b * 210, d = f16ToF32(blk[o + 208] | (blk[o + 209] << 8));
    for (let i = 0; i < 256; i++) {
      const n = Math.floor(i / 128), k = Math.floor((i % 128) / 32), l = i % 32;
      const lb = blk[o + 64 * n + l + 32 * (k % 2)];
      const low = k < 2 ? lb % 16 : Math.floor(lb / 16);
      const high = Math.floor(blk[o + 128 + 32 * n + l] / 4 ** k) % 4;
      const scByte = blk[o + 192 + 8 * n + Math.floor(l / 16) + 2 * k];
      const scale = scByte >= 128 ? scByte - 256 : scByte;
      const want = fr(fr(d * scale) * (low + 16 * high - 32));
      assertEquals(y[b * 256 + i], want, `Q6_K block ${b} element ${i}`);
    }
  }
});

Deno.test("F16 / BF16 / F32 decode", () => {
  const raw = Uint8Array.of(0x00, 0x3c, 0x00, 0xc0, 0x80, 0x3f, 0x00, 0x00, 0x80, 0xbf);
  assertEquals([...dequantizeGgml(raw.subarray(0, 4), GGML_TYPE.F16, 2)], [1, -2]);
  assertEquals([...dequantizeGgml(raw.subarray(4, 6), GGML_TYPE.BF16, 1)], [1]);
  assertEquals([...dequantizeGgml(raw.subarray(6, 10), GGML_TYPE.F32, 1)], [-1]);
});

Deno.test("header bytes: magic, v3, counts, KV, tensor info, padding to 32", () => {
  const { header } = encodeGgufHeader([["a", gv.u32(7)]], [{ name: "t", dims: [2], type: 0 }]);
  const e: number[] = [];
  const u32 = (v: number) => e.push(v & 255, (v >> 8) & 255, (v >> 16) & 255, v >>> 24);
  const u64 = (v: number) => (u32(v), u32(0));
  e.push(0x47, 0x47, 0x55, 0x46); // "GGUF"
  u32(3);
  u64(1); // tensors
  u64(1); // kv
  u64(1), e.push(0x61), u32(4), u32(7); // "a": u32 7
  u64(1), e.push(0x74), u32(1), u64(2), u32(0), u64(0); // "t": 1 dim [2], F32, offset 0
  while (e.length % 32) e.push(0);
  assertEquals([...header], e);
});

Deno.test("write → open round trip: every value type, arrays, tensors and alignment", async () => {
  const dir = await Deno.makeTempDir({ prefix: "quantlab_gguf_" });
  try {
    const file = `${dir}/x.gguf`;
    const md: [string, import("../../src/io/gguf.ts").GgufValue][] = [
      ["general.architecture", gv.str("llama")],
      ["u8", { type: "u8", value: 200 }],
      ["i8", { type: "i8", value: -5 }],
      ["u16", { type: "u16", value: 60000 }],
      ["i16", { type: "i16", value: -300 }],
      ["i32", gv.i32(-7)],
      ["f32", gv.f32(0.5)],
      ["bool", gv.bool(true)],
      ["u64", { type: "u64", value: 1n << 40n }],
      ["i64", { type: "i64", value: -3n }],
      ["f64", { type: "f64", value: 1e-300 }],
      ["arr", gv.arr("string", ["▁a", "<0x0A>", ""])],
      ["arrf", gv.arr("f32", [1.5, -2])],
    ];
    const rng = new Rng(5);
    const w = Float32Array.from({ length: 64 * 3 }, () => rng.normal());
    await writeGguf(file, md, [
      { name: "w8", dims: [64, 3], type: GGML_TYPE.Q8_0, bytes: () => quantizeGgml(w, "Q8_0") },
      {
        name: "v",
        dims: [3],
        type: GGML_TYPE.F32,
        bytes: () => quantizeGgml(w.slice(0, 3), "F32"),
      },
      { name: "w4", dims: [64, 3], type: GGML_TYPE.Q4_1, bytes: () => quantizeGgml(w, "Q4_1") },
    ], { alignment: 64 });
    const g = await openGguf(file);
    assertEquals(g.header.version, 3);
    assertEquals(g.header.alignment, 64);
    for (const [k, v] of md) assertEquals(g.header.metadata.get(k), v, k);
    assertEquals(g.header.tensors.map((t) => t.offset % 64), [0, 0, 0]);
    assertEquals([...(await g.tensor("v"))], [...w.slice(0, 3)]);
    assertEquals(
      [...(await g.tensor("w8"))],
      [...dequantizeGgml(quantizeGgml(w, "Q8_0"), GGML_TYPE.Q8_0, w.length)],
    );
    assertEquals(
      [...(await g.tensor("w4"))],
      [...dequantizeGgml(quantizeGgml(w, "Q4_1"), GGML_TYPE.Q4_1, w.length)],
    );
    // Malformed files: each a FormatError naming the file.
    const bytes = await Deno.readFile(file);
    const bad = `${dir}/bad.gguf`;
    await Deno.writeFile(bad, bytes.slice(0, bytes.length - 40)); // truncated data
    const e1 = await assertRejects(() => openGguf(bad), FormatError);
    assert(e1.message.includes(bad) && e1.message.includes("w4"), e1.message);
    await Deno.writeFile(bad, bytes.slice(0, 100)); // truncated header
    await assertRejects(() => openGguf(bad), FormatError, "truncated");
    const magic = bytes.slice();
    magic[0] = 0x4e;
    await Deno.writeFile(bad, magic);
    await assertRejects(() => openGguf(bad), FormatError, "magic");
    assertEquals(parseGgufHeader(bytes.slice(0, 30)), null); // needs more bytes
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
