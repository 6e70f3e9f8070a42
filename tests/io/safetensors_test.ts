/**
 * safetensors writer/reader: round trips for every dtype (F16/BF16 checked against an independent
 * closed-form rounding and decoding), `__metadata__`, one test per malformed input (each must
 * name the file), non-finite policy, and atomic writes. Files are built byte by byte here, not by
 * the library, for the malformed cases.
 */
import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import {
  encodeSafetensors,
  parseHeader,
  readHeader,
  readTensor,
  readTensorBytes,
  writeFileAtomic,
  writeSafetensors,
} from "../../src/io/safetensors.ts";
import { FormatError, NonFiniteError } from "../../src/errors.ts";
import { Rng } from "../_rng.ts";
import { decodeBf16Bits, decodeF16Bits, roundToBf16, roundToF16 } from "../models/_reference.ts";

/** A temp folder for the test body, removed afterwards. */
async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "quantlab_st_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Builds a safetensors file by hand: u64 LE header length, header JSON, data bytes. */
function rawFile(header: unknown, data: Uint8Array, claimedLen?: bigint): Uint8Array {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, claimedLen ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

/** Little-endian bytes of float32 values (written with DataView, independent of the library). */
function f32Bytes(values: number[]): Uint8Array {
  const b = new Uint8Array(4 * values.length);
  const dv = new DataView(b.buffer);
  values.forEach((v, i) => dv.setFloat32(4 * i, v, true));
  return b;
}

/** Parses the file's header JSON directly (for checks on what the writer wrote). */
function headerJson(bytes: Uint8Array): { json: Record<string, unknown>; dataStart: number } {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return {
    json: JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))),
    dataStart: 8 + n,
  };
}

/** Values whose F16/BF16 rounding is interesting: ties, subnormals, extremes, signed zero. */
function halfCases(rng: Rng): number[] {
  const special = [
    0,
    -0,
    1,
    -1,
    1 + 2 ** -11, // F16 tie below even → 1
    1 + 3 * 2 ** -11, // F16 tie → up to even
    1 + 2 ** -8, // BF16 tie → 1
    1 + 3 * 2 ** -8, // BF16 tie → up
    65504, // F16 max
    65519, // rounds to 65504
    2 ** -24, // F16 smallest subnormal
    3 * 2 ** -26, // F16 subnormal tie region
    2 ** -25, // F16 tie between 0 and 2^-24 → 0
    1e-30, // F16 underflow → 0; BF16 normal
    -1e-30,
    1e30, // F16 overflow (kept out of F16 round trips), BF16 finite
    3.14159265,
    -2.71828,
    Math.fround(0.1),
  ];
  return [...special, ...Array.from(rng.normals(200, 4)), ...Array.from(rng.normals(50, 1e-5))];
}

Deno.test("safetensors: F32/F16/BF16 round trip against closed-form rounding and decoding", async () => {
  await withTempDir(async (dir) => {
    const rng = new Rng(1);
    const all = halfCases(rng).map(Math.fround);
    const f16Vals = Float32Array.from(all.filter((v) => Math.abs(v) < 65520));
    const bf16Vals = Float32Array.from(all);
    const f32Vals = Float32Array.from(all);
    const path = `${dir}/rt.safetensors`;
    await writeSafetensors(path, {
      a32: { shape: [f32Vals.length], data: f32Vals },
      a16: { shape: [f16Vals.length], data: f16Vals, dtype: "F16" },
      abf: { shape: [bf16Vals.length], data: bf16Vals, dtype: "BF16" },
      m: { shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) },
    });
    const h = await readHeader(path);
    assertEquals([...h.tensors.keys()], ["a32", "a16", "abf", "m"]);
    assertEquals(h.tensors.get("a16")!.dtype, "F16");
    assertEquals(h.tensors.get("abf")!.dtype, "BF16");
    assertEquals(h.tensors.get("m")!.shape, [2, 3]);

    const r32 = await readTensor(h, "a32");
    assertEquals(Array.from(r32.data), Array.from(f32Vals)); // exact, -0 included
    const r16 = await readTensor(h, "a16");
    assertEquals(Array.from(r16.data), Array.from(f16Vals, roundToF16));
    const rbf = await readTensor(h, "abf");
    assertEquals(Array.from(rbf.data), Array.from(bf16Vals, roundToBf16));
    assertEquals(await readTensor(h, "m"), {
      shape: [2, 3],
      data: Float32Array.from([1, 2, 3, 4, 5, 6]),
    });

    // The stored bits, decoded by the closed forms, are the rounded values; 2 bytes each.
    const bytes = await Deno.readFile(path);
    const { json, dataStart } = headerJson(bytes);
    const spanOf = (n: string) => (json[n] as { data_offsets: [number, number] }).data_offsets;
    const [b16, e16] = spanOf("a16");
    assertEquals(e16 - b16, 2 * f16Vals.length);
    const dv = new DataView(bytes.buffer, bytes.byteOffset + dataStart);
    for (let i = 0; i < f16Vals.length; i++) {
      assertEquals(decodeF16Bits(dv.getUint16(b16 + 2 * i, true)), roundToF16(f16Vals[i]));
      // Cross-check with the engine's own binary16 rounding.
      assertEquals(decodeF16Bits(dv.getUint16(b16 + 2 * i, true)), Math.f16round(f16Vals[i]));
    }
    const [bbf] = spanOf("abf");
    for (let i = 0; i < bf16Vals.length; i++) {
      assertEquals(decodeBf16Bits(dv.getUint16(bbf + 2 * i, true)), roundToBf16(bf16Vals[i]));
    }
    // Data is 8-byte aligned (header padded).
    assertEquals(dataStart % 8, 0);
  });
});

Deno.test("safetensors: F16 overflow becomes Inf and is refused on read by default", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/ovf.safetensors`;
    await writeSafetensors(path, {
      x: { shape: [2], data: Float32Array.from([1, 1e6]), dtype: "F16" },
    });
    const h = await readHeader(path);
    const e = await assertRejects(() => readTensor(h, "x"), NonFiniteError);
    assertStringIncludes(e.message, path);
    const ok = await readTensor(h, "x", { nonFinite: "allow" });
    assertEquals(Array.from(ok.data), [1, Infinity]);
  });
});

Deno.test("safetensors: integer and bool dtypes round trip their bytes and values", async () => {
  await withTempDir(async (dir) => {
    const i8 = Int8Array.from([-128, -1, 0, 1, 127]);
    const u8 = Uint8Array.from([0, 1, 128, 255]);
    const i16 = Int16Array.from([-32768, -2, 0, 3, 32767]);
    const i32 = Int32Array.from([-(2 ** 31), -5, 0, 7, 2 ** 31 - 1]);
    const i64 = BigInt64Array.from([-(2n ** 40n), -1n, 0n, 12345678901n]);
    const bool = Uint8Array.from([0, 1, 1, 0, 1, 0]);
    const bytesOf = (a: ArrayBufferView) =>
      new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();
    const tensors = {
      i8: { shape: [5], data: bytesOf(i8), dtype: "I8" },
      u8: { shape: [2, 2], data: bytesOf(u8), dtype: "U8" },
      i16: { shape: [5], data: bytesOf(i16), dtype: "I16" },
      i32: { shape: [5, 1], data: bytesOf(i32), dtype: "I32" },
      i64: { shape: [4], data: bytesOf(i64), dtype: "I64" },
      bool: { shape: [2, 3], data: bytesOf(bool), dtype: "BOOL" },
    };
    const path = `${dir}/ints.safetensors`;
    await writeSafetensors(path, tensors);
    const h = await readHeader(path);
    const expect: Record<string, number[]> = {
      i8: [...i8],
      u8: [...u8],
      i16: [...i16],
      i32: [...i32],
      i64: [...i64].map(Number),
      bool: [...bool],
    };
    for (const [name, t] of Object.entries(tensors)) {
      const info = h.tensors.get(name)!;
      assertEquals(info.dtype, t.dtype);
      assertEquals(info.shape, t.shape);
      assertEquals(await readTensorBytes(h, name), t.data, name);
      const v = await readTensor(h, name);
      assertEquals(v.shape, t.shape);
      assertEquals(Array.from(v.data), expect[name].map(Math.fround), name);
    }
  });
});

Deno.test("safetensors: __metadata__ is written and read back; absent metadata reads as {}", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/meta.safetensors`;
    const metadata = { format: "pt", note: "quantlab ✓ test" };
    await writeSafetensors(path, { w: { shape: [1], data: Float32Array.from([2]) } }, { metadata });
    const h = await readHeader(path);
    assertEquals(h.metadata, metadata);
    assertEquals([...h.tensors.keys()], ["w"]);
    assertEquals(headerJson(await Deno.readFile(path)).json.__metadata__, metadata);
    // A file written elsewhere without metadata.
    const p2 = `${dir}/nometa.safetensors`;
    await Deno.writeFile(
      p2,
      rawFile({ w: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }, f32Bytes([3])),
    );
    const h2 = await readHeader(p2);
    assertEquals(h2.metadata, {});
    assertEquals(Array.from((await readTensor(h2, "w")).data), [3]);
    // encodeSafetensors gives the same bytes writeSafetensors wrote.
    assertEquals(
      encodeSafetensors({ w: { shape: [1], data: Float32Array.from([2]) } }, metadata),
      await Deno.readFile(path),
    );
  });
});

// ---- malformed files: each must raise FormatError whose message (and .file) names the file ----

async function expectFormatError(
  dir: string,
  name: string,
  bytes: Uint8Array,
  mentions: RegExp,
): Promise<FormatError> {
  const path = `${dir}/${name}.safetensors`;
  await Deno.writeFile(path, bytes);
  const e = await assertRejects(() => readHeader(path), FormatError);
  assertEquals(e.file, path);
  assertStringIncludes(e.message, path);
  assert(mentions.test(e.message), `message should match ${mentions}: ${e.message}`);
  return e;
}

const goodEntry = { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] };

Deno.test("safetensors bad input: header length runs beyond the end of the file", async () => {
  await withTempDir(async (dir) => {
    const bytes = rawFile({ w: goodEntry }, f32Bytes([1, 2, 3, 4]), 5000n);
    await expectFormatError(dir, "hdr_beyond", bytes, /header/i);
  });
});

Deno.test("safetensors bad input: claimed header > 100 MB is refused before reading it", async () => {
  await withTempDir(async (dir) => {
    const bytes = rawFile({ w: goodEntry }, f32Bytes([1, 2, 3, 4]), 200_000_000n);
    await expectFormatError(dir, "hdr_huge", bytes, /limit|exceed|large/i);
    // Also when the file really is that big is not needed: the check is on the claim. A claim of
    // 2^63 must not overflow into something plausible.
    await expectFormatError(dir, "hdr_2p63", rawFile({}, new Uint8Array(), 2n ** 63n), /header/i);
  });
});

Deno.test("safetensors bad input: file shorter than the 8-byte length prefix", async () => {
  await withTempDir(async (dir) => {
    await expectFormatError(dir, "tiny", Uint8Array.from([1, 2, 3]), /8/);
  });
});

Deno.test("safetensors bad input: header is not JSON / not an object", async () => {
  await withTempDir(async (dir) => {
    await expectFormatError(dir, "notjson", rawFile("{not json", new Uint8Array()), /JSON/);
    await expectFormatError(dir, "array", rawFile("[1,2]", new Uint8Array()), /object/);
  });
});

Deno.test("safetensors bad input: data_offsets beyond the data buffer", async () => {
  await withTempDir(async (dir) => {
    const header = { w: { dtype: "F32", shape: [2, 2], data_offsets: [8, 24] } };
    await expectFormatError(dir, "offs", rawFile(header, f32Bytes([1, 2, 3, 4])), /"w"/);
    const neg = { w: { dtype: "F32", shape: [1], data_offsets: [-4, 0] } };
    await expectFormatError(dir, "neg", rawFile(neg, f32Bytes([1])), /"w"/);
    const rev = { w: { dtype: "F32", shape: [0], data_offsets: [4, 0] } };
    await expectFormatError(dir, "rev", rawFile(rev, f32Bytes([1])), /"w"/);
  });
});

Deno.test("safetensors bad input: overlapping tensors", async () => {
  await withTempDir(async (dir) => {
    const header = {
      a: { dtype: "F32", shape: [4], data_offsets: [0, 16] },
      b: { dtype: "F32", shape: [4], data_offsets: [8, 24] },
    };
    await expectFormatError(
      dir,
      "overlap",
      rawFile(header, f32Bytes([1, 2, 3, 4, 5, 6])),
      /overlap/,
    );
  });
});

Deno.test("safetensors bad input: unknown dtype", async () => {
  await withTempDir(async (dir) => {
    const header = { w: { dtype: "F8_E9M9", shape: [4], data_offsets: [0, 4] } };
    await expectFormatError(dir, "dtype", rawFile(header, new Uint8Array(4)), /F8_E9M9/);
  });
});

Deno.test("safetensors bad input: shape and byte count disagree", async () => {
  await withTempDir(async (dir) => {
    const header = { w: { dtype: "F32", shape: [3], data_offsets: [0, 16] } };
    await expectFormatError(dir, "count", rawFile(header, f32Bytes([1, 2, 3, 4])), /"w"/);
    const f16 = { w: { dtype: "F16", shape: [2, 2], data_offsets: [0, 16] } };
    await expectFormatError(dir, "count16", rawFile(f16, f32Bytes([1, 2, 3, 4])), /"w"/);
    const badShape = { w: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } };
    await expectFormatError(dir, "shape", rawFile(badShape, f32Bytes([1])), /"w"/);
  });
});

Deno.test("safetensors: parseHeader on memory bytes names the given file", () => {
  const bytes = rawFile(
    { w: { dtype: "F32", shape: [9], data_offsets: [0, 16] } },
    f32Bytes([1, 2, 3, 4]),
  );
  const e = assertThrows(
    () => parseHeader(bytes, { file: "mem.safetensors", fileSize: bytes.length }),
    FormatError,
  );
  assertEquals(e.file, "mem.safetensors");
});

Deno.test("safetensors: non-finite weights are refused by default, loaded with nonFinite warn", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/nan.safetensors`;
    await Deno.writeFile(
      path,
      rawFile(
        {
          ok: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          bad: { dtype: "F32", shape: [3], data_offsets: [8, 20] },
        },
        f32Bytes([1, 2, 0.5, NaN, -Infinity]),
      ),
    );
    const h = await readHeader(path); // the header itself is fine
    assertEquals(Array.from((await readTensor(h, "ok")).data), [1, 2]);
    const e = await assertRejects(() => readTensor(h, "bad"), NonFiniteError);
    assertStringIncludes(e.message, path);
    assertStringIncludes(e.message, "bad");
    const warnings: string[] = [];
    const orig = console.warn;
    console.warn = (...a: unknown[]) => void warnings.push(a.map(String).join(" "));
    try {
      const t = await readTensor(h, "bad", { nonFinite: "warn" });
      assertEquals(t.shape, [3]);
      assertEquals(t.data[0], 0.5);
      assert(Number.isNaN(t.data[1]));
      assertEquals(t.data[2], -Infinity);
    } finally {
      console.warn = orig;
    }
    assertEquals(warnings.length, 1);
    assertStringIncludes(warnings[0], path);
  });
});

// ---- atomic writes ----

Deno.test("safetensors: atomic write leaves only the target file, replaces it whole", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/w.safetensors`;
    await writeSafetensors(path, { a: { shape: [2], data: Float32Array.from([1, 2]) } });
    await writeSafetensors(path, { b: { shape: [3], data: Float32Array.from([4, 5, 6]) } });
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assertEquals(names, ["w.safetensors"]);
    const h = await readHeader(path);
    assertEquals([...h.tensors.keys()], ["b"]);
    assertEquals(Array.from((await readTensor(h, "b")).data), [4, 5, 6]);
  });
});

Deno.test("safetensors: a failed write keeps the old file and leaves no temp file", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/keep.safetensors`;
    await writeSafetensors(path, { a: { shape: [2], data: Float32Array.from([1, 2]) } });
    const before = await Deno.readFile(path);
    const listing = async () => {
      const n: string[] = [];
      for await (const e of Deno.readDir(dir)) n.push(e.name);
      return n.sort();
    };

    // 1. Into a folder that does not exist: rejects, creates nothing.
    await assertRejects(() =>
      writeSafetensors(`${dir}/missing/sub/x.safetensors`, {
        a: { shape: [1], data: Float32Array.from([1]) },
      })
    );
    assertEquals(await listing(), ["keep.safetensors"]);

    // 2. Over the old file with an invalid tensor (byte count ≠ shape): old bytes untouched.
    await assertRejects(
      () => writeSafetensors(path, { a: { shape: [5], data: Float32Array.from([1, 2]) } }),
      FormatError,
    );
    assertEquals(await Deno.readFile(path), before);
    assertEquals(await listing(), ["keep.safetensors"]);

    // 3. The final rename fails (the target is a non-empty folder): the temp file is removed.
    await Deno.mkdir(`${dir}/adir`);
    await Deno.writeTextFile(`${dir}/adir/inside`, "x");
    await assertRejects(() => writeFileAtomic(`${dir}/adir`, new Uint8Array([1, 2, 3])));
    assertEquals(await listing(), ["adir", "keep.safetensors"]);
    assertEquals(await Deno.readTextFile(`${dir}/adir/inside`), "x");
    assertEquals(await Deno.readFile(path), before);
  });
});
