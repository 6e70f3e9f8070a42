/**
 * Resume files of the pipeline: one safetensors file per finished block holding its quantized
 * weights, the hidden states it produced and the packed metas, written atomically.
 * @module
 */
import {
  readHeader,
  readTensor,
  readTensorBytes,
  type WriteEntry,
  writeSafetensors,
} from "../io/safetensors.ts";
import type { Tensor } from "../tensor.ts";
import type { QuantMeta } from "./types.ts";

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
const TYPED: Record<string, TypedCtor> = {
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
    if (m.$typed && m.$key) return new TYPED[m.$typed]((await read(m.$key)).slice().buffer);
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

/** Writes block `i`'s checkpoint atomically. */
export async function writeBlock(workdir: string, i: number, ck: BlockCheckpoint): Promise<void> {
  const t: Record<string, WriteEntry> = {};
  for (const [n, w] of ck.weights) t[`w:${n}`] = { shape: w.shape, data: w.data };
  ck.hidden.forEach((h, c) => (t[`h:${c}`] = { shape: h.shape, data: h.data }));
  const metaJson: Record<string, unknown> = {};
  for (const [layer, meta] of Object.entries(ck.metas)) {
    metaJson[layer] = encodeMeta(meta, `m:${layer}`, t);
  }
  await writeSafetensors(blockFile(workdir, i), t, {
    metadata: {
      metas: JSON.stringify(metaJson),
      reports: JSON.stringify(ck.reports),
      hidden: String(ck.hidden.length),
    },
  });
}

/** Reads block `i`'s checkpoint, or null when it does not exist. */
export async function readBlock(workdir: string, i: number): Promise<BlockCheckpoint | null> {
  const file = blockFile(workdir, i);
  try {
    await Deno.stat(file);
  } catch {
    return null;
  }
  const h = await readHeader(file);
  const weights = new Map<string, Tensor>();
  const hidden: Tensor[] = [];
  for (const name of h.tensors.keys()) {
    if (name.startsWith("w:")) weights.set(name.slice(2), await readTensor(h, name));
  }
  const nh = Number(h.metadata.hidden);
  for (let c = 0; c < nh; c++) hidden.push(await readTensor(h, `h:${c}`));
  const metaJson = JSON.parse(h.metadata.metas) as Record<string, unknown>;
  const metas: Record<string, QuantMeta> = {};
  const read = (key: string) => readTensorBytes(h, key);
  for (const [layer, plain] of Object.entries(metaJson)) {
    metas[layer] = await decodeMeta(plain, read) as QuantMeta;
  }
  return { weights, hidden, metas, reports: JSON.parse(h.metadata.reports) };
}
