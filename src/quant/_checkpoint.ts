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

const TYPED: Record<string, [string, new (b: ArrayBuffer) => ArrayBufferView]> = {
  Uint8Array: ["U8", Uint8Array],
  Float32Array: ["F32", Float32Array],
  Int32Array: ["I32", Int32Array],
  Uint32Array: ["I32", Uint32Array],
  Float64Array: ["F64", Float64Array],
};

/** Path of block `i`'s file in `workdir`. */
export function blockFile(workdir: string, i: number): string {
  return `${workdir}/block_${String(i).padStart(4, "0")}.safetensors`;
}

/** Writes block `i`'s checkpoint atomically. */
export async function writeBlock(workdir: string, i: number, ck: BlockCheckpoint): Promise<void> {
  const t: Record<string, WriteEntry> = {};
  for (const [n, w] of ck.weights) t[`w:${n}`] = { shape: w.shape, data: w.data };
  ck.hidden.forEach((h, c) => (t[`h:${c}`] = { shape: h.shape, data: h.data }));
  const metaJson: Record<string, Record<string, unknown>> = {};
  for (const [layer, meta] of Object.entries(ck.metas)) {
    const plain: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(meta)) {
      const ctor = (v as object)?.constructor?.name;
      if (ArrayBuffer.isView(v) && ctor && TYPED[ctor]) {
        const view = v as ArrayBufferView;
        t[`m:${layer}:${k}`] = {
          shape: [
            view.byteLength / (TYPED[ctor][0] === "F64" ? 8 : TYPED[ctor][0] === "U8" ? 1 : 4),
          ],
          data: new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice(),
          dtype: TYPED[ctor][0],
        };
        plain[k] = { $typed: ctor };
      } else plain[k] = v;
    }
    metaJson[layer] = plain;
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
  const metaJson = JSON.parse(h.metadata.metas) as Record<string, Record<string, unknown>>;
  const metas: Record<string, QuantMeta> = {};
  for (const [layer, plain] of Object.entries(metaJson)) {
    const m: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(plain)) {
      const typed = (v as { $typed?: string })?.$typed;
      if (typed) {
        const bytes = (await readTensorBytes(h, `m:${layer}:${k}`)).slice();
        m[k] = new TYPED[typed][1](bytes.buffer);
      } else m[k] = v;
    }
    metas[layer] = m as QuantMeta;
  }
  return { weights, hidden, metas, reports: JSON.parse(h.metadata.reports) };
}
