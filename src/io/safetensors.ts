/**
 * safetensors: a validated header parser, lazy per-tensor reads (converted to float32) and an atomic
 * writer. Format: u64 little-endian header length N, N bytes of JSON header
 * `{ name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__"?: {...} }`, then the data
 * buffer; offsets are relative to the buffer start.
 * @module
 */
import { FormatError, NonFiniteError } from "../errors.ts";
import { clip, openForRead, writeFileAtomic } from "./fs.ts";
import {
  bf16ArrayToF32,
  f16ArrayToF32,
  f32ToBf16,
  f32ToF16,
  firstNonFinite,
  numel,
  type Tensor,
} from "../tensor.ts";

/** Dtypes this reader accepts, with their byte sizes. */
export const DTYPE_BYTES: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** Largest header accepted (the reference implementation's limit is 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

/**
 * Deepest JSON nesting accepted in a header. A valid header nests 3 deep (`{name: {shape: [..]}}`);
 * the limit is checked by one linear scan before `JSON.parse`, so a deeply nested header is
 * refused in time linear in its size (an 8 MB one of brackets took 24 s before this check).
 */
export const MAX_HEADER_DEPTH = 8;

/** Longest value echoed in an error message (longer ones are cut, saying how much). */
export const MAX_ECHO = 200;

/**
 * The first byte offset at which `bytes` (JSON text) nests deeper than `max`, or -1. Brackets
 * inside strings (with backslash escapes) do not count. One pass, O(n).
 */
export function jsonDepthExceeds(bytes: Uint8Array, max: number): number {
  let depth = 0, inStr = false;
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    if (inStr) {
      if (c === 0x5c) i++; // backslash: skip the escaped byte
      else if (c === 0x22) inStr = false;
    } else if (c === 0x22) inStr = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > max) return i;
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  return -1;
}

const echo = (v: unknown) => clip(JSON.stringify(v) ?? String(v), MAX_ECHO);

/** One tensor's entry in the header. */
export interface TensorInfo {
  /** Tensor name. */
  name: string;
  /** safetensors dtype string (F32, F16, BF16, I8, U8, I16, I32, I64, BOOL, F64). */
  dtype: string;
  /** Shape. */
  shape: number[];
  /** Absolute byte offset of the first byte in the file. */
  begin: number;
  /** Absolute byte offset one past the last byte. */
  end: number;
}

/** A parsed safetensors header. */
export interface SafetensorsHeader {
  /** The file (for error messages and lazy reads). */
  file: string;
  /** Tensors by name, in header order. */
  tensors: Map<string, TensorInfo>;
  /** `__metadata__` string map, if any. */
  metadata: Record<string, string>;
  /** Total file size in bytes. */
  fileSize: number;
}

/** Parses and validates a header from the first bytes of a file of `fileSize` bytes. */
export function parseHeader(
  head: Uint8Array,
  opts: { file: string; fileSize: number },
): SafetensorsHeader {
  const { file, fileSize } = opts;
  if (head.length < 8 || fileSize < 8) {
    throw new FormatError(
      file,
      `safetensors: file is ${fileSize} bytes, shorter than the 8-byte header length`,
    );
  }
  const n = Number(new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true));
  if (n > MAX_HEADER_BYTES) {
    throw new FormatError(
      file,
      `safetensors: header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`,
    );
  }
  if (8 + n > fileSize) {
    throw new FormatError(
      file,
      `safetensors: header length ${n} runs beyond the end of the ${fileSize}-byte file`,
    );
  }
  if (head.length < 8 + n) throw new FormatError(file, "safetensors: header bytes not provided");
  const deep = jsonDepthExceeds(head.subarray(8, 8 + n), MAX_HEADER_DEPTH);
  if (deep >= 0) {
    throw new FormatError(
      file,
      `safetensors: header nests deeper than ${MAX_HEADER_DEPTH} levels (at header byte ${deep})`,
    );
  }
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(head.subarray(8, 8 + n)));
  } catch (e) {
    throw new FormatError(
      file,
      `safetensors: header is not valid UTF-8 JSON (${clip((e as Error).message, MAX_ECHO)})`,
    );
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new FormatError(file, "safetensors: header is not a JSON object");
  }
  const dataStart = 8 + n;
  const dataLen = fileSize - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  const spans: [number, number, string][] = [];
  for (const [name, v] of Object.entries(json)) {
    if (name === "__metadata__") {
      if (
        v === null || typeof v !== "object" || Array.isArray(v) ||
        !Object.values(v).every((x) => typeof x === "string")
      ) {
        throw new FormatError(
          file,
          `safetensors: __metadata__ must map strings to strings, got ${echo(v)}`,
        );
      }
      metadata = v as Record<string, string>;
      continue;
    }
    const tn = clip(name, MAX_ECHO);
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e?.dtype !== "string" || !Object.hasOwn(DTYPE_BYTES, e.dtype)) {
      throw new FormatError(
        file,
        `safetensors: tensor "${tn}" has unknown dtype ${echo(e?.dtype)} (known: ${
          Object.keys(DTYPE_BYTES).join(", ")
        })`,
      );
    }
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new FormatError(
        file,
        `safetensors: tensor "${tn}" has an invalid shape ${echo(e.shape)}`,
      );
    }
    const off = e.data_offsets;
    if (
      !Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isInteger(d) && d >= 0) ||
      off[0] > off[1]
    ) {
      throw new FormatError(
        file,
        `safetensors: tensor "${tn}" has invalid data_offsets ${echo(off)}`,
      );
    }
    if (off[1] > dataLen) {
      throw new FormatError(
        file,
        `safetensors: tensor "${tn}" data_offsets [${off}] run beyond the ${dataLen}-byte data buffer`,
      );
    }
    const expected = numel(e.shape as number[]) * DTYPE_BYTES[e.dtype];
    if (off[1] - off[0] !== expected) {
      throw new FormatError(
        file,
        `safetensors: tensor "${tn}" ${e.dtype}${
          echo(e.shape)
        } needs ${expected} bytes, data_offsets span ${off[1] - off[0]}`,
      );
    }
    spans.push([off[0], off[1], name]);
    tensors.set(name, {
      name,
      dtype: e.dtype,
      shape: e.shape as number[],
      begin: dataStart + off[0],
      end: dataStart + off[1],
    });
  }
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (let i = 1; i < spans.length; i++) {
    const [b, , nm] = spans[i];
    const [, pe, pn] = spans[i - 1];
    if (b < pe) {
      throw new FormatError(
        file,
        `safetensors: tensors "${clip(pn, MAX_ECHO)}" and "${
          clip(nm, MAX_ECHO)
        }" overlap in the data buffer`,
      );
    }
  }
  return { file, tensors, metadata, fileSize };
}

/** Reads and validates the header of a safetensors file (reads only the header bytes). */
export async function readHeader(file: string): Promise<SafetensorsHeader> {
  const f = await openForRead(file, "safetensors file");
  try {
    const { size } = await f.stat();
    const lenBuf = new Uint8Array(8);
    const got = size >= 8 ? await readFully(f, lenBuf) : 0;
    if (got < 8) return parseHeader(lenBuf.subarray(0, got), { file, fileSize: size });
    const n = Number(new DataView(lenBuf.buffer).getBigUint64(0, true));
    if (n > MAX_HEADER_BYTES || 8 + n > size) return parseHeader(lenBuf, { file, fileSize: size });
    const head = new Uint8Array(8 + n);
    head.set(lenBuf);
    await readFully(f, head.subarray(8));
    return parseHeader(head, { file, fileSize: size });
  } finally {
    f.close();
  }
}

async function readFully(f: Deno.FsFile, buf: Uint8Array): Promise<number> {
  let o = 0;
  while (o < buf.length) {
    const r = await f.read(buf.subarray(o));
    if (r === null) break;
    o += r;
  }
  return o;
}

/** Raw bytes of one tensor (lazy: opens the file, seeks, reads only that range). */
export async function readTensorBytes(h: SafetensorsHeader, name: string): Promise<Uint8Array> {
  const info = h.tensors.get(name);
  if (!info) throw new FormatError(h.file, `safetensors: no tensor named "${name}"`);
  const f = await openForRead(h.file, "safetensors file");
  try {
    await f.seek(info.begin, Deno.SeekMode.Start);
    const buf = new Uint8Array(info.end - info.begin);
    const got = await readFully(f, buf);
    if (got !== buf.length) {
      throw new FormatError(
        h.file,
        `safetensors: tensor "${name}" truncated (${got} of ${buf.length} bytes)`,
      );
    }
    return buf;
  } finally {
    f.close();
  }
}

/** Converts raw little-endian bytes of `dtype` to float32 values. */
export function bytesToF32(bytes: Uint8Array, dtype: string): Float32Array {
  const buf = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
  const ab = buf.buffer as ArrayBuffer;
  const o = buf.byteOffset;
  const len = buf.byteLength;
  switch (dtype) {
    case "F32":
      return new Float32Array(ab.slice(o, o + len));
    case "F16":
      return f16ArrayToF32(new Uint16Array(ab, o, len / 2));
    case "BF16":
      return bf16ArrayToF32(new Uint16Array(ab, o, len / 2));
    case "F64":
      return Float32Array.from(new Float64Array(ab, o, len / 8));
    case "I64": {
      const src = new BigInt64Array(ab, o, len / 8);
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = Number(src[i]);
      return out;
    }
    case "I32":
      return Float32Array.from(new Int32Array(ab, o, len / 4));
    case "I16":
      return Float32Array.from(new Int16Array(ab, o, len / 2));
    case "I8":
      return Float32Array.from(new Int8Array(ab, o, len));
    case "U8":
    case "BOOL":
      return Float32Array.from(new Uint8Array(ab, o, len));
  }
  throw new FormatError("<memory>", `safetensors: unknown dtype ${dtype}`);
}

/** What to do with NaN/Inf weights: throw (default), warn (log once and keep), or allow. */
export type NonFinitePolicy = "refuse" | "warn" | "allow";

/** Reads one tensor as float32 (lazy; only its byte range is read). */
export async function readTensor(
  h: SafetensorsHeader,
  name: string,
  opts: { nonFinite?: NonFinitePolicy } = {},
): Promise<Tensor> {
  const info = h.tensors.get(name)!;
  const data = bytesToF32(await readTensorBytes(h, name), info?.dtype);
  const policy = opts.nonFinite ?? "refuse";
  if (policy !== "allow" && (info.dtype[0] === "F" || info.dtype === "BF16")) {
    const bad = firstNonFinite(data);
    if (bad >= 0) {
      const msg = `${h.file}: tensor "${name}" holds a non-finite value (${
        data[bad]
      }) at flat index ${bad}`;
      if (policy === "refuse") {
        throw new NonFiniteError(
          `${msg}; refusing to load it (pass { nonFinite: "warn" } to load anyway)`,
        );
      }
      console.warn(`warning: ${msg}; loading it anyway (nonFinite: "warn")`);
    }
  }
  return { shape: info.shape.length ? [...info.shape] : [1], data };
}

/** A tensor to write: float32 data (written as `dtype`, default F32) or raw bytes for other dtypes. */
export interface WriteEntry {
  /** Shape. */
  shape: number[];
  /** Float data (for F32/F16/BF16) or raw little-endian bytes for any dtype. */
  data: Float32Array | Uint8Array;
  /** Output dtype; F32 when `data` is Float32Array and this is absent. */
  dtype?: string;
}

/** Encodes tensors to safetensors bytes (8-byte aligned data, header padded with spaces). */
export function encodeSafetensors(
  tensors: Record<string, WriteEntry | Tensor>,
  metadata?: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const chunks: Uint8Array[] = [];
  let off = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const e = t as WriteEntry;
    const dtype = e.dtype ?? "F32";
    let bytes: Uint8Array;
    if (e.data instanceof Float32Array) {
      bytes = f32ToDtypeBytes(e.data, dtype);
    } else {
      bytes = e.data;
    }
    const expected = numel(e.shape) * (DTYPE_BYTES[dtype] ?? NaN);
    if (bytes.length !== expected) {
      throw new FormatError(
        "<writer>",
        `safetensors: tensor "${name}" ${dtype}[${e.shape}] needs ${expected} bytes, got ${bytes.length}`,
      );
    }
    header[name] = { dtype, shape: e.shape, data_offsets: [off, off + bytes.length] };
    chunks.push(bytes);
    off += bytes.length;
  }
  let hjson = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - (hjson.length % 8)) % 8;
  if (pad) hjson = new TextEncoder().encode(JSON.stringify(header) + " ".repeat(pad));
  const out = new Uint8Array(8 + hjson.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(hjson.length), true);
  out.set(hjson, 8);
  let o = 8 + hjson.length;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

function f32ToDtypeBytes(data: Float32Array, dtype: string): Uint8Array {
  if (dtype === "F32") return new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
  if (dtype === "F16" || dtype === "BF16") {
    const out = new Uint16Array(data.length);
    const conv = dtype === "F16" ? f32ToF16 : f32ToBf16;
    for (let i = 0; i < data.length; i++) out[i] = conv(data[i]);
    return new Uint8Array(out.buffer);
  }
  throw new FormatError(
    "<writer>",
    `safetensors: cannot write float data as ${dtype}; pass raw bytes`,
  );
}

export { writeFileAtomic };

/** Writes a safetensors file atomically (temp file + rename). */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, WriteEntry | Tensor>,
  opts: { metadata?: Record<string, string> } = {},
): Promise<void> {
  await writeFileAtomic(path, encodeSafetensors(tensors, opts.metadata));
}
