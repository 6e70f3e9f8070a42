/**
 * The streamed result of the pipeline (`QuantizeOptions.stream`): every finished block lives in
 * its workdir file (`_checkpoint.ts`) as packed metas, and the result model reads a quantized
 * layer back on demand — decode the meta with its registered format (`dequantize.ts`), or read
 * the float32 weight stored beside it when the format does not reproduce the quantizer's `Wq` bit
 * for bit (checked when the block is written, see {@linkcode streamWeightsToStore}). Nothing of a
 * finished block stays in memory: a caller that evicts the result's cache after each block
 * (`Weights.evict`, as the layer-wise perplexity does) holds one block of float32 weights at most.
 * @module
 */
import { FormatError } from "../../errors.ts";
import { bytesToF32, parseHeader, type SafetensorsHeader } from "../../io/safetensors.ts";
import type { WeightSource } from "../../io/weight_source.ts";
import type { Model } from "../../models/model.ts";
import type { Tensor } from "../../tensor.ts";
import type { QuantMeta } from "../core/types.ts";
import { dequantizeMeta } from "../dequantize.ts";
import { blockFile, TYPED } from "./_checkpoint.ts";

/**
 * The layers of a block whose quantized weight must be stored as float32 in the block file:
 * those whose meta does not decode to exactly `Wq` (no registered format, or a format that is
 * not bit-exact). The others are stored only packed.
 */
export async function streamWeightsToStore(
  weights: ReadonlyMap<string, Tensor>,
  metas: Record<string, QuantMeta>,
): Promise<Map<string, Tensor>> {
  const keep = new Map<string, Tensor>();
  for (const [name, Wq] of weights) {
    const meta = metas[name.replace(/\.weight$/, "")];
    let same = false;
    if (meta) {
      try {
        const d = await dequantizeMeta(meta);
        same = sameBits(d.data, Wq.data);
      } catch {
        same = false;
      }
    }
    if (!same) keep.set(name, Wq);
  }
  return keep;
}

/** True when two float32 arrays hold the same bit patterns (NaN payloads and ±0 included). */
function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let j = 0; j < x.length; j++) if (x[j] !== y[j]) return false;
  return true;
}

function readHeaderSync(file: string): { h: SafetensorsHeader; f: Deno.FsFile } {
  const f = Deno.openSync(file, { read: true });
  try {
    const size = f.statSync().size;
    const len = new Uint8Array(8);
    readFullySync(f, len);
    const n = Number(new DataView(len.buffer).getBigUint64(0, true));
    if (8 + n > size) throw new FormatError(file, "block file: header runs past the end");
    const head = new Uint8Array(8 + n);
    head.set(len);
    readFullySync(f, head.subarray(8));
    return { h: parseHeader(head, { file, fileSize: size }), f };
  } catch (e) {
    f.close();
    throw e;
  }
}

function readFullySync(f: Deno.FsFile, buf: Uint8Array): void {
  let o = 0;
  while (o < buf.length) {
    const r = f.readSync(buf.subarray(o));
    if (r === null) throw new FormatError("block file", "truncated");
    o += r;
  }
}

function readRangeSync(f: Deno.FsFile, h: SafetensorsHeader, key: string): Uint8Array {
  const info = h.tensors.get(key);
  if (!info) throw new FormatError(h.file, `block file: no tensor "${key}"`);
  f.seekSync(info.begin, Deno.SeekMode.Start);
  const buf = new Uint8Array(info.end - info.begin);
  readFullySync(f, buf);
  return buf;
}

/** Block `block`'s meta of `layer`, read from its workdir file (only that layer's bytes). */
export function readStreamedMeta(workdir: string, block: number, layer: string): QuantMeta {
  const { h, f } = readHeaderSync(blockFile(workdir, block));
  try {
    const metas = JSON.parse(h.metadata.metas ?? "{}") as Record<string, unknown>;
    if (!(layer in metas)) throw new FormatError(h.file, `block file: no meta for "${layer}"`);
    return decodeSync(metas[layer], (key) => readRangeSync(f, h, key)) as QuantMeta;
  } finally {
    f.close();
  }
}

/** The synchronous form of `_checkpoint.ts`'s meta decoding (markers `{ $typed, $key }`). */
function decodeSync(v: unknown, read: (key: string) => Uint8Array): unknown {
  if (Array.isArray(v)) return v.map((x) => decodeSync(x, read));
  if (v !== null && typeof v === "object") {
    const m = v as { $typed?: string; $key?: string };
    if (typeof m.$typed === "string" && typeof m.$key === "string") {
      if (!Object.hasOwn(TYPED, m.$typed)) {
        throw new FormatError("block file", `unknown typed-array marker ${m.$typed}`);
      }
      return new TYPED[m.$typed](read(m.$key).buffer as ArrayBuffer);
    }
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = decodeSync(x, read);
    return out;
  }
  return v;
}

/** Where each quantized layer of a streamed run lives: layer name → block index. */
export type StreamIndex = Map<string, number>;

/**
 * A weight source over a streamed run: quantized linears (`<layer>.weight` for each layer of
 * `index`) decode from the workdir's block files; every other tensor comes from `base` (the
 * input model), which is asked to forget it again so that one cache (the result's) holds it.
 */
export function streamedSource(base: Model, workdir: string, index: StreamIndex): WeightSource {
  return {
    names: () => base.weights.names(),
    shape: (name) => {
      const layer = name.replace(/\.weight$/, "");
      const b = index.get(layer);
      if (b === undefined || !name.endsWith(".weight")) return undefined;
      // The meta's shape is plain JSON in the header: no typed array is read.
      const { h, f } = readHeaderSync(blockFile(workdir, b));
      f.close();
      const m = JSON.parse(h.metadata.metas ?? "{}")[layer] as { shape?: number[] } | undefined;
      return m?.shape ? [...m.shape] : undefined;
    },
    load: async (name) => {
      const layer = name.replace(/\.weight$/, "");
      const b = index.get(layer);
      if (b === undefined || !name.endsWith(".weight")) {
        const t = await base.weights.get(name);
        base.weights.evict([name]);
        return t;
      }
      const { h, f } = readHeaderSync(blockFile(workdir, b));
      try {
        const w = h.tensors.get(`w:${name}`);
        if (w) {
          return {
            shape: [...w.shape],
            data: bytesToF32(readRangeSync(f, h, `w:${name}`), w.dtype),
          };
        }
      } finally {
        f.close();
      }
      return await dequantizeMeta(readStreamedMeta(workdir, b, layer));
    },
  };
}

/**
 * The `packed` record of a streamed result: one enumerable getter per layer that reads the
 * layer's meta from its block file on each access (nothing is retained here).
 */
export function streamedPacked(workdir: string, index: StreamIndex): Record<string, QuantMeta> {
  const out: Record<string, QuantMeta> = {};
  for (const [layer, b] of index) {
    Object.defineProperty(out, layer, {
      enumerable: true,
      get: () => readStreamedMeta(workdir, b, layer),
    });
  }
  return out;
}
