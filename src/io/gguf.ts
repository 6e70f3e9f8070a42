/**
 * GGUF (llama.cpp / ggml) files: reader, streaming writer and the ggml block formats.
 *
 * Written from ggml's `docs/gguf.md` (file layout) and llama.cpp's `ggml-common.h` block structs
 * and `ggml-quants.c` reference (de)quantizers:
 *
 * - header: magic `"GGUF"`, u32 version (3 written, 2 and 3 read), u64 tensor count, u64 key/value
 *   count; then the key/value pairs (u64-length strings, u32 value type, value; arrays are u32 item
 *   type + u64 count + items); then per tensor its name, u32 dims, u64 `ne[]` (innermost first:
 *   `[cols, rows]` for a weight), u32 ggml type and u64 offset into the data section. The data
 *   section starts at the next multiple of `general.alignment` (default 32) and every tensor's
 *   offset is a multiple of it.
 * - blocks along `ne[0]` (a weight's input dimension): `Q8_0 {f16 d; i8 qs[32]}` (34 bytes,
 *   `x = d·q`); `Q4_0 {f16 d; u8 qs[16]}` (18 bytes, element `j < 16` in the low nibble of
 *   `qs[j]`, `j + 16` in the high nibble, `x = d·(q − 8)`); `Q4_1 {f16 d; f16 m; u8 qs[16]}`
 *   (20 bytes, `x = d·q + m`); the 256-wide K-quants `Q4_K {f16 d, dmin; u8 scales[12];
 *   u8 qs[128]}`, `Q5_K {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}` and
 *   `Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}`.
 *
 * Arithmetic follows the C reference in float32 (`Math.fround` after each operation, no fused
 * multiply-add): a dequantized value here equals llama.cpp's `dequantize_row_*` bit for bit when
 * the C compiler does not contract `x·d + m` into an FMA.
 * @module
 */
import { FormatError, UnsupportedError } from "../errors.ts";
import { bf16ToF32, f16ToF32, f32ToF16 } from "../tensor.ts";

/** The ggml tensor types this module reads (and, for F32/F16/Q8_0/Q4_0/Q4_1, writes). */
export const GGML_TYPE = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q8_0: 8,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  BF16: 30,
} as const;

/** A ggml type name ("F32", "Q4_0", ...). */
export type GgmlTypeName = keyof typeof GGML_TYPE;

/** `[elements per block, bytes per block]` of each supported ggml type. */
export const GGML_BLOCK: Record<GgmlTypeName, [number, number]> = {
  F32: [1, 4],
  F16: [1, 2],
  BF16: [1, 2],
  Q4_0: [32, 18],
  Q4_1: [32, 20],
  Q8_0: [32, 34],
  Q4_K: [256, 144],
  Q5_K: [256, 176],
  Q6_K: [256, 210],
};

/** The name of ggml type id `t`, or undefined for a type this module does not handle. */
export function ggmlTypeName(t: number): GgmlTypeName | undefined {
  for (const [k, v] of Object.entries(GGML_TYPE)) if (v === t) return k as GgmlTypeName;
  return undefined;
}

/** GGUF metadata value types (`gguf_metadata_value_type`). */
export const GGUF_VALUE = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;

/** A scalar GGUF value type name. */
export type GgufScalarType = Exclude<keyof typeof GGUF_VALUE, "array">;

/** A typed GGUF metadata value; `u64`/`i64` are bigint, arrays hold `itemType` scalars. */
export type GgufValue =
  | { type: Exclude<GgufScalarType, "u64" | "i64" | "bool" | "string">; value: number }
  | { type: "u64" | "i64"; value: bigint }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string }
  | { type: "array"; itemType: GgufScalarType; value: (number | bigint | boolean | string)[] };

/** One tensor's entry in a GGUF header. */
export interface GgufTensorInfo {
  /** Tensor name (`blk.0.attn_q.weight`). */
  name: string;
  /** `ne[]`, innermost first (`[cols, rows]` for a 2-D weight). */
  dims: number[];
  /** ggml type id. */
  type: number;
  /** Byte offset inside the data section. */
  offset: number;
}

/** A parsed GGUF header. */
export interface GgufHeader {
  /** Format version (2 or 3). */
  version: number;
  /** Metadata in file order. */
  metadata: Map<string, GgufValue>;
  /** Tensor entries in file order. */
  tensors: GgufTensorInfo[];
  /** `general.alignment` (default 32). */
  alignment: number;
  /** Absolute byte offset of the data section. */
  dataOffset: number;
}

/** Byte size of a tensor of ggml type `type` with dims `ne` (innermost first). */
export function ggmlTensorBytes(type: number, ne: readonly number[], where = "<gguf>"): number {
  const name = ggmlTypeName(type);
  if (!name) throw new UnsupportedError(`${where}: ggml type ${type} is not supported`);
  const [bs, ts] = GGML_BLOCK[name];
  if (ne[0] % bs !== 0) {
    throw new FormatError(
      where,
      `${name} needs rows that are multiples of ${bs}, got ne[0]=${ne[0]}`,
    );
  }
  let rows = 1;
  for (let i = 1; i < ne.length; i++) rows *= ne[i];
  return (ne[0] / bs) * ts * rows;
}

// ---- header parsing ------------------------------------------------------------------------

class NeedMore extends Error {}

class Cursor {
  off = 0;
  readonly dv: DataView;
  constructor(readonly bytes: Uint8Array, readonly file: string) {
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  need(n: number): void {
    if (this.off + n > this.bytes.length) throw new NeedMore();
  }
  u32(): number {
    this.need(4);
    const v = this.dv.getUint32(this.off, true);
    this.off += 4;
    return v;
  }
  u64(): number {
    this.need(8);
    const v = this.dv.getBigUint64(this.off, true);
    this.off += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new FormatError(this.file, `u64 ${v} at byte ${this.off - 8} is implausibly large`);
    }
    return Number(v);
  }
  str(): string {
    const n = this.u64();
    if (n > 1 << 24) throw new FormatError(this.file, `string of ${n} bytes at ${this.off - 8}`);
    this.need(n);
    const s = new TextDecoder("utf-8", { fatal: false }).decode(
      this.bytes.subarray(this.off, this.off + n),
    );
    this.off += n;
    return s;
  }
  scalar(t: GgufScalarType): number | bigint | boolean | string {
    const o = this.off;
    switch (t) {
      case "u8":
        this.need(1);
        this.off += 1;
        return this.dv.getUint8(o);
      case "i8":
        this.need(1);
        this.off += 1;
        return this.dv.getInt8(o);
      case "u16":
        this.need(2);
        this.off += 2;
        return this.dv.getUint16(o, true);
      case "i16":
        this.need(2);
        this.off += 2;
        return this.dv.getInt16(o, true);
      case "u32":
        this.need(4);
        this.off += 4;
        return this.dv.getUint32(o, true);
      case "i32":
        this.need(4);
        this.off += 4;
        return this.dv.getInt32(o, true);
      case "f32":
        this.need(4);
        this.off += 4;
        return this.dv.getFloat32(o, true);
      case "bool":
        this.need(1);
        this.off += 1;
        return this.dv.getUint8(o) !== 0;
      case "string":
        return this.str();
      case "u64":
        this.need(8);
        this.off += 8;
        return this.dv.getBigUint64(o, true);
      case "i64":
        this.need(8);
        this.off += 8;
        return this.dv.getBigInt64(o, true);
      case "f64":
        this.need(8);
        this.off += 8;
        return this.dv.getFloat64(o, true);
    }
  }
}

function scalarTypeOf(id: number, file: string, key: string): GgufScalarType {
  for (const [k, v] of Object.entries(GGUF_VALUE)) {
    if (v === id && k !== "array") return k as GgufScalarType;
  }
  throw new FormatError(file, `metadata "${key}" has unknown value type ${id}`);
}

/**
 * Parses a GGUF header from the first bytes of a file. Throws {@linkcode FormatError} (naming
 * `file`) on a bad magic, version, type or truncated header; returns null when `bytes` ends
 * before the header does (read more and call again).
 */
export function parseGgufHeader(bytes: Uint8Array, file = "<memory>"): GgufHeader | null {
  const c = new Cursor(bytes, file);
  try {
    if (bytes.length >= 4 && new TextDecoder().decode(bytes.subarray(0, 4)) !== "GGUF") {
      throw new FormatError(file, 'not a GGUF file (magic is not "GGUF")');
    }
    c.off = 4;
    const version = c.u32();
    if (version !== 2 && version !== 3) {
      throw new UnsupportedError(`${file}: GGUF version ${version} (2 and 3 are supported)`);
    }
    const nTensors = c.u64(), nKv = c.u64();
    if (nTensors > 1 << 20 || nKv > 1 << 20) {
      throw new FormatError(file, `implausible counts: ${nTensors} tensors, ${nKv} keys`);
    }
    const metadata = new Map<string, GgufValue>();
    for (let i = 0; i < nKv; i++) {
      const key = c.str();
      const tid = c.u32();
      if (tid === GGUF_VALUE.array) {
        const itemType = scalarTypeOf(c.u32(), file, key);
        const n = c.u64();
        const value: (number | bigint | boolean | string)[] = new Array(n);
        for (let k = 0; k < n; k++) value[k] = c.scalar(itemType);
        metadata.set(key, { type: "array", itemType, value });
      } else {
        const type = scalarTypeOf(tid, file, key);
        metadata.set(key, { type, value: c.scalar(type) } as GgufValue);
      }
    }
    const tensors: GgufTensorInfo[] = [];
    for (let i = 0; i < nTensors; i++) {
      const name = c.str();
      const nd = c.u32();
      if (nd < 1 || nd > 4) throw new FormatError(file, `tensor "${name}" has ${nd} dims`);
      const dims: number[] = [];
      for (let d = 0; d < nd; d++) dims.push(c.u64());
      const type = c.u32();
      const offset = c.u64();
      tensors.push({ name, dims, type, offset });
    }
    const al = metadata.get("general.alignment");
    const alignment = al && typeof al.value === "number" ? al.value : 32;
    if (!(alignment > 0 && (alignment & (alignment - 1)) === 0)) {
      throw new FormatError(file, `general.alignment ${alignment} is not a power of two`);
    }
    const dataOffset = Math.ceil(c.off / alignment) * alignment;
    return { version, metadata, tensors, alignment, dataOffset };
  } catch (e) {
    if (e instanceof NeedMore) return null;
    throw e;
  }
}

/** An open GGUF file: its header and lazy per-tensor reads. */
export interface GgufReader {
  /** The file path. */
  file: string;
  /** The parsed header. */
  header: GgufHeader;
  /** Raw bytes of tensor `name`. */
  rawTensor(name: string): Promise<Uint8Array>;
  /** Tensor `name` dequantized to float32 (row-major, `ne[0]` innermost). */
  tensor(name: string): Promise<Float32Array>;
}

/**
 * Opens a GGUF file: reads and checks the header (every tensor's type, size and offset within
 * the file), and reads tensors lazily on demand.
 */
export async function openGguf(file: string): Promise<GgufReader> {
  const size = (await Deno.stat(file)).size;
  const f = await Deno.open(file);
  let header: GgufHeader | null = null;
  try {
    for (let n = Math.min(size, 1 << 20);; n = Math.min(size, n * 4)) {
      const buf = new Uint8Array(n);
      await f.seek(0, Deno.SeekMode.Start);
      let got = 0;
      while (got < n) {
        const r = await f.read(buf.subarray(got));
        if (r === null) break;
        got += r;
      }
      header = parseGgufHeader(buf.subarray(0, got), file);
      if (header || n >= size) break;
    }
  } finally {
    f.close();
  }
  if (!header) {
    throw new FormatError(file, `truncated: the header runs past the file (${size} bytes)`);
  }
  const byName = new Map<string, GgufTensorInfo>();
  for (const t of header.tensors) {
    const bytes = ggmlTensorBytes(t.type, t.dims, `${file}: tensor "${t.name}"`);
    if (t.offset % header.alignment !== 0) {
      throw new FormatError(file, `tensor "${t.name}" offset ${t.offset} is not aligned`);
    }
    if (header.dataOffset + t.offset + bytes > size) {
      throw new FormatError(
        file,
        `tensor "${t.name}" needs bytes up to ${
          header.dataOffset + t.offset + bytes
        }; file has ${size}`,
      );
    }
    byName.set(t.name, t);
  }
  const h = header;
  const rawTensor = async (name: string): Promise<Uint8Array> => {
    const t = byName.get(name);
    if (!t) throw new FormatError(file, `no tensor named "${name}"`);
    const n = ggmlTensorBytes(t.type, t.dims);
    const out = new Uint8Array(n);
    const fh = await Deno.open(file);
    try {
      await fh.seek(h.dataOffset + t.offset, Deno.SeekMode.Start);
      let got = 0;
      while (got < n) {
        const r = await fh.read(out.subarray(got));
        if (r === null) throw new FormatError(file, `tensor "${name}" truncated`);
        got += r;
      }
    } finally {
      fh.close();
    }
    return out;
  };
  return {
    file,
    header: h,
    rawTensor,
    tensor: async (name) => {
      const t = byName.get(name)!;
      const raw = await rawTensor(name);
      let count = 1;
      for (const d of t.dims) count *= d;
      return dequantizeGgml(raw, t.type, count);
    },
  };
}

// ---- block decoders (ggml-quants.c dequantize_row_*) ---------------------------------------

const fr = Math.fround;

/** Dequantizes `count` elements of ggml type `type` from `raw` (exactly as llama.cpp's reference). */
export function dequantizeGgml(raw: Uint8Array, type: number, count: number): Float32Array {
  const name = ggmlTypeName(type);
  if (!name) throw new UnsupportedError(`gguf: cannot dequantize ggml type ${type}`);
  const [bs, ts] = GGML_BLOCK[name];
  if (count % bs !== 0 || raw.length !== (count / bs) * ts) {
    throw new FormatError("<gguf>", `${name}: ${raw.length} bytes cannot hold ${count} values`);
  }
  if (name === "F32" && LITTLE_ENDIAN) return new Float32Array(raw.slice().buffer);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const y = new Float32Array(count);
  const tab = f16Table();
  const h = (o: number) => tab[dv.getUint16(o, true)];
  const nb = count / bs;
  switch (name) {
    case "F32":
      for (let i = 0; i < count; i++) y[i] = dv.getFloat32(4 * i, true);
      break;
    case "F16":
      for (let i = 0; i < count; i++) y[i] = h(2 * i);
      break;
    case "BF16":
      for (let i = 0; i < count; i++) y[i] = bf16ToF32(dv.getUint16(2 * i, true));
      break;
    case "Q8_0":
      for (let b = 0; b < nb; b++) {
        const o = b * 34, d = h(o);
        for (let j = 0; j < 32; j++) y[b * 32 + j] = fr(dv.getInt8(o + 2 + j) * d);
      }
      break;
    case "Q4_0":
      for (let b = 0; b < nb; b++) {
        const o = b * 18, d = h(o);
        for (let j = 0; j < 16; j++) {
          const q = raw[o + 2 + j];
          y[b * 32 + j] = fr(((q & 15) - 8) * d);
          y[b * 32 + j + 16] = fr(((q >> 4) - 8) * d);
        }
      }
      break;
    case "Q4_1":
      for (let b = 0; b < nb; b++) {
        const o = b * 20, d = h(o), m = h(o + 2);
        for (let j = 0; j < 16; j++) {
          const q = raw[o + 4 + j];
          y[b * 32 + j] = fr(fr((q & 15) * d) + m);
          y[b * 32 + j + 16] = fr(fr((q >> 4) * d) + m);
        }
      }
      break;
    case "Q4_K":
    case "Q5_K": {
      const five = name === "Q5_K";
      for (let b = 0; b < nb; b++) {
        const o = b * ts, d = h(o), dmin = h(o + 2);
        const sc = raw.subarray(o + 4, o + 16);
        const qh = five ? raw.subarray(o + 16, o + 48) : raw;
        let ql = o + (five ? 48 : 16);
        let out = b * 256, is = 0, u1 = 1, u2 = 2;
        for (let j = 0; j < 256; j += 64) {
          const [s1, m1r] = scaleMinK4(is, sc), [s2, m2r] = scaleMinK4(is + 1, sc);
          const d1 = fr(d * s1), m1 = fr(dmin * m1r), d2 = fr(d * s2), m2 = fr(dmin * m2r);
          for (let l = 0; l < 32; l++) {
            const q = (raw[ql + l] & 15) + (five && (qh[l] & u1) ? 16 : 0);
            y[out++] = fr(fr(d1 * q) - m1);
          }
          for (let l = 0; l < 32; l++) {
            const q = (raw[ql + l] >> 4) + (five && (qh[l] & u2) ? 16 : 0);
            y[out++] = fr(fr(d2 * q) - m2);
          }
          ql += 32;
          is += 2;
          u1 <<= 2;
          u2 <<= 2;
        }
      }
      break;
    }
    case "Q6_K":
      for (let b = 0; b < nb; b++) {
        const o = b * 210, d = h(o + 208);
        let ql = o, qh = o + 128, sc = o + 192, out = b * 256;
        for (let n = 0; n < 256; n += 128) {
          for (let l = 0; l < 32; l++) {
            const is = l >> 4;
            const q1 = ((raw[ql + l] & 15) | (((raw[qh + l] >> 0) & 3) << 4)) - 32;
            const q2 = ((raw[ql + l + 32] & 15) | (((raw[qh + l] >> 2) & 3) << 4)) - 32;
            const q3 = ((raw[ql + l] >> 4) | (((raw[qh + l] >> 4) & 3) << 4)) - 32;
            const q4 = ((raw[ql + l + 32] >> 4) | (((raw[qh + l] >> 6) & 3) << 4)) - 32;
            y[out + l] = fr(fr(d * dv.getInt8(sc + is)) * q1);
            y[out + l + 32] = fr(fr(d * dv.getInt8(sc + is + 2)) * q2);
            y[out + l + 64] = fr(fr(d * dv.getInt8(sc + is + 4)) * q3);
            y[out + l + 96] = fr(fr(d * dv.getInt8(sc + is + 6)) * q4);
          }
          out += 128;
          ql += 64;
          qh += 32;
          sc += 8;
        }
      }
      break;
  }
  return y;
}

const LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;
let F16_TABLE: Float32Array | null = null;

/** All 65,536 f16 bit patterns as float32 values (built once). */
function f16Table(): Float32Array {
  if (!F16_TABLE) {
    F16_TABLE = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) F16_TABLE[i] = f16ToF32(i);
  }
  return F16_TABLE;
}

/** llama.cpp's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0–7). */
export function scaleMinK4(j: number, q: Uint8Array): [number, number] {
  if (j < 4) return [q[j] & 63, q[j + 4] & 63];
  return [(q[j + 4] & 15) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)];
}

// ---- block encoders ----------------------------------------------------------------------

/** The int8 cast of C (truncation toward zero, wrapped to −128..127). */
function toInt8(x: number): number {
  return (Math.trunc(x) << 24) >> 24;
}

/** C `roundf`: half away from zero. */
function roundf(x: number): number {
  return x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5);
}

/**
 * llama.cpp's reference quantizers (`quantize_row_q8_0_ref`, `_q4_0_ref`, `_q4_1_ref`) and the
 * plain F32/F16 encodings, for a row-major float array whose row length is a multiple of the
 * block. Float32 arithmetic as the C code.
 */
export function quantizeGgml(
  x: Float32Array,
  type: "F32" | "F16" | "Q8_0" | "Q4_0" | "Q4_1",
): Uint8Array {
  const [bs, ts] = GGML_BLOCK[type];
  if (x.length % bs !== 0) {
    throw new FormatError("<gguf>", `${type}: ${x.length} values are not whole blocks of ${bs}`);
  }
  const out = new Uint8Array((x.length / bs) * ts);
  const dv = new DataView(out.buffer);
  if (type === "F32") {
    if (LITTLE_ENDIAN) out.set(new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
    else for (let i = 0; i < x.length; i++) dv.setFloat32(4 * i, x[i], true);
    return out;
  }
  if (type === "F16") {
    for (let i = 0; i < x.length; i++) dv.setUint16(2 * i, f32ToF16(x[i]), true);
    return out;
  }
  for (let b = 0; b < x.length / 32; b++) {
    const o = b * ts, xb = x.subarray(b * 32, b * 32 + 32);
    if (type === "Q8_0") {
      let amax = 0;
      for (const v of xb) amax = Math.max(amax, Math.abs(v));
      const d = fr(amax / 127), id = d ? fr(1 / d) : 0;
      dv.setUint16(o, f32ToF16(d), true);
      for (let j = 0; j < 32; j++) dv.setInt8(o + 2 + j, roundf(fr(xb[j] * id)));
    } else if (type === "Q4_0") {
      let amax = 0, max = 0;
      for (const v of xb) {
        if (amax < Math.abs(v)) {
          amax = Math.abs(v);
          max = v;
        }
      }
      const d = fr(max / -8), id = d ? fr(1 / d) : 0;
      dv.setUint16(o, f32ToF16(d), true);
      for (let j = 0; j < 16; j++) {
        const a = Math.min(15, toInt8(fr(fr(xb[j] * id) + 8.5)));
        const c = Math.min(15, toInt8(fr(fr(xb[j + 16] * id) + 8.5)));
        out[o + 2 + j] = a | (c << 4);
      }
    } else {
      let min = Infinity, max = -Infinity;
      for (const v of xb) {
        if (v < min) min = v;
        if (v > max) max = v;
      }
      const d = fr((max - min) / 15), id = d ? fr(1 / d) : 0;
      dv.setUint16(o, f32ToF16(d), true);
      dv.setUint16(o + 2, f32ToF16(min), true);
      for (let j = 0; j < 16; j++) {
        const a = Math.min(15, toInt8(fr(fr(fr(xb[j] - min) * id) + 0.5)));
        const c = Math.min(15, toInt8(fr(fr(fr(xb[j + 16] - min) * id) + 0.5)));
        out[o + 4 + j] = a | (c << 4);
      }
    }
  }
  return out;
}

/**
 * Packs given integer codes and f16 block parameters into Q8_0 / Q4_0 / Q4_1 blocks (no
 * rounding decisions: the caller's codes are stored as they are). `codes` are unsigned grid
 * codes (`0..255` for Q8_0, stored as `code − 128`; `0..15` for Q4_0/Q4_1), `d` and `m` are f16
 * bit patterns, one per block of 32.
 */
export function packGgmlBlocks(
  type: "Q8_0" | "Q4_0" | "Q4_1",
  blocks: { codes: Uint8Array; d: Uint16Array; m?: Uint16Array },
): Uint8Array {
  const { codes, d, m } = blocks;
  const [, ts] = GGML_BLOCK[type];
  const nb = codes.length / 32;
  if (!Number.isInteger(nb) || d.length !== nb || (type === "Q4_1" && m?.length !== nb)) {
    throw new FormatError(
      "<gguf>",
      `${type}: ${codes.length} codes, ${d.length} scales do not form blocks`,
    );
  }
  const out = new Uint8Array(nb * ts);
  const dv = new DataView(out.buffer);
  const lim = type === "Q8_0" ? 255 : 15;
  for (let b = 0; b < nb; b++) {
    const o = b * ts, c = codes.subarray(b * 32, b * 32 + 32);
    for (const v of c) {
      if (v > lim) throw new FormatError("<gguf>", `${type}: code ${v} out of range 0..${lim}`);
    }
    dv.setUint16(o, d[b], true);
    if (type === "Q8_0") {
      for (let j = 0; j < 32; j++) dv.setInt8(o + 2 + j, c[j] - 128);
    } else {
      const q = type === "Q4_1" ? o + 4 : o + 2;
      if (type === "Q4_1") dv.setUint16(o + 2, m![b], true);
      for (let j = 0; j < 16; j++) out[q + j] = c[j] | (c[j + 16] << 4);
    }
  }
  return out;
}

/**
 * Unpacks Q8_0 / Q4_0 / Q4_1 blocks into unsigned codes (the inverse of
 * {@linkcode packGgmlBlocks}) and the blocks' f16 `d` (and `m`) bit patterns.
 */
export function unpackGgmlBlocks(
  type: "Q8_0" | "Q4_0" | "Q4_1",
  raw: Uint8Array,
): { codes: Uint8Array; d: Uint16Array; m?: Uint16Array } {
  const [, ts] = GGML_BLOCK[type];
  const nb = raw.length / ts;
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const codes = new Uint8Array(nb * 32), d = new Uint16Array(nb);
  const m = type === "Q4_1" ? new Uint16Array(nb) : undefined;
  for (let b = 0; b < nb; b++) {
    const o = b * ts;
    d[b] = dv.getUint16(o, true);
    if (type === "Q8_0") {
      for (let j = 0; j < 32; j++) codes[b * 32 + j] = dv.getInt8(o + 2 + j) + 128;
    } else {
      if (m) m[b] = dv.getUint16(o + 2, true);
      const q = m ? o + 4 : o + 2;
      for (let j = 0; j < 16; j++) {
        codes[b * 32 + j] = raw[q + j] & 15;
        codes[b * 32 + j + 16] = raw[q + j] >> 4;
      }
    }
  }
  return { codes, d, m };
}

// ---- writer ------------------------------------------------------------------------------

/** A tensor to write: dims innermost first, its ggml type and a producer of its bytes. */
export interface GgufTensorEntry {
  /** Name. */
  name: string;
  /** `ne[]`, innermost first. */
  dims: number[];
  /** ggml type id. */
  type: number;
  /** Produces the tensor's bytes when the writer reaches it (streamed; one tensor in memory). */
  bytes: () => Promise<Uint8Array> | Uint8Array;
}

class Buf {
  chunks: Uint8Array[] = [];
  len = 0;
  push(b: Uint8Array) {
    this.chunks.push(b);
    this.len += b.length;
  }
  num(n: number, bytes: number, set: (dv: DataView) => void) {
    const b = new Uint8Array(bytes);
    set(new DataView(b.buffer));
    this.push(b);
    void n;
  }
  u32(v: number) {
    this.num(v, 4, (dv) => dv.setUint32(0, v, true));
  }
  u64(v: number | bigint) {
    this.num(0, 8, (dv) => dv.setBigUint64(0, BigInt(v), true));
  }
  str(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.push(b);
  }
  scalar(t: GgufScalarType, v: number | bigint | boolean | string) {
    switch (t) {
      case "u8":
        return this.num(0, 1, (dv) => dv.setUint8(0, v as number));
      case "i8":
        return this.num(0, 1, (dv) => dv.setInt8(0, v as number));
      case "u16":
        return this.num(0, 2, (dv) => dv.setUint16(0, v as number, true));
      case "i16":
        return this.num(0, 2, (dv) => dv.setInt16(0, v as number, true));
      case "u32":
        return this.u32(v as number);
      case "i32":
        return this.num(0, 4, (dv) => dv.setInt32(0, v as number, true));
      case "f32":
        return this.num(0, 4, (dv) => dv.setFloat32(0, v as number, true));
      case "bool":
        return this.num(0, 1, (dv) => dv.setUint8(0, v ? 1 : 0));
      case "string":
        return this.str(v as string);
      case "u64":
        return this.u64(v as bigint);
      case "i64":
        return this.num(0, 8, (dv) => dv.setBigInt64(0, BigInt(v as bigint), true));
      case "f64":
        return this.num(0, 8, (dv) => dv.setFloat64(0, v as number, true));
    }
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.len);
    let o = 0;
    for (const c of this.chunks) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }
}

/** Encodes a GGUF v3 header (metadata and tensor infos, padded to `alignment`). */
export function encodeGgufHeader(
  metadata: [string, GgufValue][],
  tensors: { name: string; dims: number[]; type: number }[],
  alignment = 32,
): { header: Uint8Array; offsets: number[]; sizes: number[] } {
  const b = new Buf();
  b.push(new TextEncoder().encode("GGUF"));
  b.u32(3);
  b.u64(tensors.length);
  b.u64(metadata.length);
  for (const [key, v] of metadata) {
    b.str(key);
    b.u32(GGUF_VALUE[v.type]);
    if (v.type === "array") {
      b.u32(GGUF_VALUE[v.itemType]);
      b.u64(v.value.length);
      for (const x of v.value) b.scalar(v.itemType, x);
    } else {
      b.scalar(v.type, v.value);
    }
  }
  const offsets: number[] = [], sizes: number[] = [];
  let off = 0;
  for (const t of tensors) {
    const n = ggmlTensorBytes(t.type, t.dims, `tensor "${t.name}"`);
    b.str(t.name);
    b.u32(t.dims.length);
    for (const d of t.dims) b.u64(d);
    b.u32(t.type);
    b.u64(off);
    offsets.push(off);
    sizes.push(n);
    off = Math.ceil((off + n) / alignment) * alignment;
  }
  const pad = Math.ceil(b.len / alignment) * alignment - b.len;
  b.push(new Uint8Array(pad));
  return { header: b.bytes(), offsets, sizes };
}

/**
 * Writes a GGUF v3 file to `path`, streaming: the header first, then each tensor's bytes as its
 * producer returns them (each checked against the size its type and dims imply), padded to
 * `alignment`. Not atomic on its own: callers write into a temporary folder (see `export.ts`).
 */
export async function writeGguf(
  path: string,
  metadata: [string, GgufValue][],
  tensors: GgufTensorEntry[],
  options: { alignment?: number } = {},
): Promise<void> {
  const alignment = options.alignment ?? 32;
  const md = metadata.filter(([k]) => k !== "general.alignment");
  if (alignment !== 32) md.push(["general.alignment", { type: "u32", value: alignment }]);
  const { header, sizes } = encodeGgufHeader(md, tensors, alignment);
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    await writeAll(f, header);
    for (let i = 0; i < tensors.length; i++) {
      const bytes = await tensors[i].bytes();
      if (bytes.length !== sizes[i]) {
        throw new FormatError(
          path,
          `tensor "${tensors[i].name}" produced ${bytes.length} bytes, its type needs ${sizes[i]}`,
        );
      }
      await writeAll(f, bytes);
      const pad = Math.ceil(bytes.length / alignment) * alignment - bytes.length;
      if (pad) await writeAll(f, new Uint8Array(pad));
    }
  } finally {
    f.close();
  }
}

async function writeAll(f: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let o = 0;
  while (o < bytes.length) o += await f.write(bytes.subarray(o));
}

/** Typed metadata value helpers for writers. */
export const gv = {
  /** A u32 value. */
  u32: (value: number): GgufValue => ({ type: "u32", value }),
  /** An i32 value. */
  i32: (value: number): GgufValue => ({ type: "i32", value }),
  /** An f32 value. */
  f32: (value: number): GgufValue => ({ type: "f32", value }),
  /** A bool value. */
  bool: (value: boolean): GgufValue => ({ type: "bool", value }),
  /** A string value. */
  str: (value: string): GgufValue => ({ type: "string", value }),
  /** An array of `itemType` values. */
  arr: (itemType: GgufScalarType, value: (number | string | boolean)[]): GgufValue => ({
    type: "array",
    itemType,
    value,
  }),
};
