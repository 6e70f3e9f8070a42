/**
 * Resume files of the pipeline: one safetensors file per finished block holding its quantized
 * weights, the hidden states it produced and the packed metas, written atomically (unique temp,
 * fsync, rename, fsync of the folder).
 *
 * Integrity: each block file records in its `__metadata__` the hash of the run identity (`run`:
 * model, recipe, calibration content, code version — computed by the pipeline) and a SHA-256
 * content hash (`content`) over the tensor table (names, dtypes, shapes, offsets), the metas,
 * the reports and every data byte. {@linkcode readBlock} re-hashes what it read: a truncated,
 * unparsable or altered file is reported `corrupt` (the pipeline recomputes that block); a file of
 * another run is a {@linkcode ResumeError} naming it. A block is never reused unverified.
 * @module
 */
import { ResumeError } from "../../errors.ts";
import {
  bytesToF32,
  encodeSafetensors,
  parseHeader,
  type SafetensorsHeader,
  type WriteEntry,
  writeSafetensors,
} from "../../io/safetensors.ts";
import { statPath } from "../../io/fs.ts";
import type { Tensor } from "../../tensor.ts";
import type { QuantMeta } from "../core/types.ts";

/** What one finished block leaves behind. */
export interface BlockCheckpoint {
  /** Quantized weights by tensor name. */
  weights: Map<string, Tensor>;
  /** Hidden-state chunks after the block. */
  hidden: Tensor[];
  /** Packed metas by layer. */
  metas: Record<string, QuantMeta>;
  /** Report rows of the block (JSON). */
  reports: unknown[];
}

type TypedCtor = new (b: ArrayBuffer) => ArrayBufferView;
/** The typed-array constructors a stored meta may hold, by name. */
export const TYPED: Record<string, TypedCtor> = {
  Uint8Array,
  Int8Array,
  Uint16Array,
  Int16Array,
  Uint32Array,
  Int32Array,
  Float32Array,
  Float64Array,
};

/**
 * Replaces every typed array inside `v` (at any depth: QuIP and FrameQuant metas nest them) by a
 * marker `{ $typed, $key }` and stores its bytes as a U8 tensor under `$key`.
 */
function encodeMeta(v: unknown, key: string, t: Record<string, WriteEntry>): unknown {
  if (ArrayBuffer.isView(v)) {
    const ctor = v.constructor.name;
    if (!TYPED[ctor]) throw new Error(`checkpoint: ${key}: cannot store a ${ctor}`);
    const bytes = new Uint8Array(v.buffer, v.byteOffset, v.byteLength).slice();
    t[key] = { shape: [bytes.length], data: bytes, dtype: "U8" };
    return { $typed: ctor, $key: key };
  }
  if (Array.isArray(v)) return v.map((x, i) => encodeMeta(x, `${key}.${i}`, t));
  if (v !== null && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = encodeMeta(x, `${key}:${k}`, t);
    return out;
  }
  return v;
}

async function decodeMeta(
  v: unknown,
  read: (key: string) => Promise<Uint8Array>,
): Promise<unknown> {
  if (Array.isArray(v)) return Promise.all(v.map((x) => decodeMeta(x, read)));
  if (v !== null && typeof v === "object") {
    const m = v as { $typed?: string; $key?: string };
    if (m.$typed !== undefined || m.$key !== undefined) {
      if (typeof m.$typed !== "string" || !Object.hasOwn(TYPED, m.$typed)) {
        throw new Error(`unknown typed-array marker ${JSON.stringify(m.$typed)}`);
      }
      if (typeof m.$key !== "string") throw new Error("typed-array marker without a key");
      return new TYPED[m.$typed]((await read(m.$key)).slice().buffer);
    }
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = await decodeMeta(x, read);
    return out;
  }
  return v;
}

/** Path of block `i`'s file in `workdir`. */
export function blockFile(workdir: string, i: number): string {
  return `${workdir}/block_${String(i).padStart(4, "0")}.safetensors`;
}

/** Version of the block-file layout and of the code that fills it (part of the run identity). */
export const CHECKPOINT_FORMAT = "quantlab-block-v2";

async function sha256Hex(parts: Uint8Array[]): Promise<string> {
  let n = 0;
  for (const p of parts) n += p.length;
  const all = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.length;
  }
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** SHA-256 (hex) of a string, e.g. the run identity. */
export function hashText(text: string): Promise<string> {
  return sha256Hex([new TextEncoder().encode(text)]);
}

/** The content hash of a parsed block file: tensor table + metadata (but `content`) + data. */
function contentHash(h: SafetensorsHeader, bytes: Uint8Array): Promise<string> {
  const table: unknown[] = [];
  let lo = Infinity, hi = 0;
  for (const t of h.tensors.values()) {
    table.push([t.name, t.dtype, t.shape, t.begin, t.end]);
    lo = Math.min(lo, t.begin);
    hi = Math.max(hi, t.end);
  }
  const meta = Object.entries(h.metadata).filter(([k]) => k !== "content").sort(([a], [b]) =>
    a < b ? -1 : a > b ? 1 : 0
  );
  const head = new TextEncoder().encode(JSON.stringify({ table, meta, lo, hi }));
  return sha256Hex([head, lo <= hi ? bytes.subarray(lo, hi) : new Uint8Array()]);
}

/** Writes block `i`'s checkpoint atomically, with its content hash and the run identity `run`. */
export async function writeBlock(
  workdir: string,
  i: number,
  ck: BlockCheckpoint,
  run = "",
): Promise<void> {
  const t: Record<string, WriteEntry> = {};
  for (const [n, w] of ck.weights) t[`w:${n}`] = { shape: w.shape, data: w.data };
  ck.hidden.forEach((h, c) => (t[`h:${c}`] = { shape: h.shape, data: h.data }));
  const metaJson: Record<string, unknown> = {};
  for (const [layer, meta] of Object.entries(ck.metas)) {
    metaJson[layer] = encodeMeta(meta, `m:${layer}`, t);
  }
  const metadata: Record<string, string> = {
    metas: JSON.stringify(metaJson),
    reports: JSON.stringify(ck.reports),
    hidden: String(ck.hidden.length),
    run,
    format: CHECKPOINT_FORMAT,
    block: String(i),
  };
  // The content hash covers the bytes as they will lie in the file; tensor offsets (absolute) do
  // not depend on the metadata, so hash a provisional encoding with the final header length.
  const provisional = encodeSafetensors(t, { ...metadata, content: "0".repeat(64) });
  const h = parseHeader(provisional, { file: blockFile(workdir, i), fileSize: provisional.length });
  metadata.content = await contentHash(h, provisional);
  await writeSafetensors(blockFile(workdir, i), t, { metadata });
}

/** What {@linkcode readBlock} found. */
export type BlockRead =
  | { status: "absent" }
  | { status: "ok"; checkpoint: BlockCheckpoint }
  | { status: "corrupt"; file: string; reason: string };

/**
 * Reads and verifies block `i`'s checkpoint. `absent`: no file. `corrupt` (with the reason): not
 * a readable safetensors file, truncated, no or a wrong content hash, undecodable metas — the
 * caller recomputes the block. A file written for another run identity than `run` throws
 * {@linkcode ResumeError} naming it.
 */
export async function readBlock(workdir: string, i: number, run = ""): Promise<BlockRead> {
  const file = blockFile(workdir, i);
  const st = await statPath(file);
  if (!st) return { status: "absent" };
  if (!st.isFile) return { status: "corrupt", file, reason: "not a regular file" };
  let bytes: Uint8Array;
  let h: SafetensorsHeader;
  try {
    bytes = await Deno.readFile(file);
    h = parseHeader(bytes, { file, fileSize: bytes.length });
  } catch (e) {
    return { status: "corrupt", file, reason: (e as Error).message.slice(0, 300) };
  }
  if (h.metadata.format !== CHECKPOINT_FORMAT || typeof h.metadata.content !== "string") {
    return { status: "corrupt", file, reason: `not a ${CHECKPOINT_FORMAT} block file` };
  }
  if (h.metadata.run !== run) {
    throw new ResumeError(
      file,
      "was written by a different run (model, recipe, calibration or code version differ); " +
        "it is not reused — use another workdir or delete the folder",
    );
  }
  if ((await contentHash(h, bytes)) !== h.metadata.content) {
    return { status: "corrupt", file, reason: "content hash mismatch" };
  }
  if (h.metadata.block !== String(i)) {
    // A whole, valid file of another block (copied or renamed): its content is not this block's.
    return { status: "corrupt", file, reason: `holds block ${h.metadata.block}, not block ${i}` };
  }
  try {
    const f32 = (name: string) => {
      const info = h.tensors.get(name);
      if (!info) throw new Error(`no tensor "${name}"`);
      return {
        shape: info.shape.length ? [...info.shape] : [1],
        data: bytesToF32(bytes.subarray(info.begin, info.end), info.dtype),
      };
    };
    const weights = new Map<string, Tensor>();
    const hidden: Tensor[] = [];
    for (const name of h.tensors.keys()) {
      if (name.startsWith("w:")) weights.set(name.slice(2), f32(name));
    }
    const nh = Number(h.metadata.hidden);
    if (!(Number.isInteger(nh) && nh >= 0)) {
      throw new Error(`bad hidden count ${h.metadata.hidden}`);
    }
    for (let c = 0; c < nh; c++) hidden.push(f32(`h:${c}`));
    const metaJson = JSON.parse(h.metadata.metas) as Record<string, unknown>;
    const metas: Record<string, QuantMeta> = {};
    const read = (key: string) => {
      const info = h.tensors.get(key);
      if (!info) return Promise.reject(new Error(`no tensor "${key}"`));
      return Promise.resolve(bytes.subarray(info.begin, info.end));
    };
    for (const [layer, plain] of Object.entries(metaJson)) {
      metas[layer] = await decodeMeta(plain, read) as QuantMeta;
    }
    const reports = JSON.parse(h.metadata.reports);
    if (!Array.isArray(reports)) throw new Error("reports is not an array");
    return { status: "ok", checkpoint: { weights, hidden, metas, reports } };
  } catch (e) {
    return {
      status: "corrupt",
      file,
      reason: `undecodable (${(e as Error).message.slice(0, 300)})`,
    };
  }
}
