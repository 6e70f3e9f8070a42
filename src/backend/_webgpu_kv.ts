/**
 * Host side of `kernels/kv_attention.ts`: a KIVI-packed KV cache resident on the device
 * (`Backend.packedKvAttention`). Per layer it holds, sized for the cache's capacity, the packed K
 * words and (scale, min) pairs (by blocks of R tokens, the host quantizer's layout), the packed V
 * words and pairs (one row per token) and the full-precision rings (K: R rows, V: R + 1 rows).
 * Every write goes through `queue.writeBuffer` at its final offset (append in place, nothing
 * re-uploaded); each decode attention uploads the query and the uniforms, runs one dispatch and
 * reads the [nH·hd] output back. A byte counter records what crosses the bus.
 * @module
 */
import type { PackedKvDevice, PackedKvGroups, PackedKvLayout, PackedKvTraffic } from "./backend.ts";
import {
  checkKvAttention,
  type KvAttentionOptions,
  kvAttentionUniforms,
  kvAttentionWGSL,
  kvGroupWords,
} from "../../kernels/kv_attention.ts";
import {
  bindGroup,
  type Dispatch,
  pipeline,
  runAndRead,
  scratch,
  uniforms,
  type WebGPUContext,
  writeUniforms,
} from "./_webgpu_device.ts";

/** The buffers of one packed-KV attention dispatch (bindings 1..7 of the kernel). */
export interface KvAttentionBuffers {
  /** Query [nH·hd]. */
  q: GPUBuffer;
  /** Packed K words. */
  kCodes: GPUBuffer;
  /** K (scale, min) pairs. */
  kPar: GPUBuffer;
  /** Packed V words. */
  vCodes: GPUBuffer;
  /** V (scale, min) pairs. */
  vPar: GPUBuffer;
  /** Full-precision rings [2R + 1, nKV·hd]. */
  res: GPUBuffer;
  /** Output [nH·hd]. */
  o: GPUBuffer;
}

/**
 * One packed-KV decode attention dispatch (`kernels/kv_attention.ts`) over `b`, with uniforms
 * from `o` in `uni` (a buffer made by `uniforms`, rewritten by the caller) or a fresh one.
 */
export function kvAttentionDispatch(
  ctx: WebGPUContext,
  b: KvAttentionBuffers,
  o: KvAttentionOptions,
  uni?: GPUBuffer,
): Dispatch {
  checkKvAttention(o);
  const pipe = pipeline(ctx, kvAttentionWGSL({ headDim: o.headDim }));
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [
      uni ?? uniforms(ctx, kvAttentionUniforms(o)),
      b.q,
      b.kCodes,
      b.kPar,
      b.vCodes,
      b.vPar,
      b.res,
      b.o,
    ]),
    workgroups: [o.nH, 1, 1],
  };
}

interface LayerBuffers {
  kCodes: GPUBuffer;
  kPar: GPUBuffer;
  vCodes: GPUBuffer;
  vPar: GPUBuffer;
  res: GPUBuffer;
  uni: GPUBuffer;
  dispatch: Dispatch;
}

/** Interleaves scales and minima into (scale, min) pairs. */
function pairs(g: PackedKvGroups): Float32Array {
  const out = new Float32Array(2 * g.scale.length);
  for (let i = 0; i < g.scale.length; i++) {
    out[2 * i] = g.scale[i];
    out[2 * i + 1] = g.mn[i];
  }
  return out;
}

/**
 * A packed KV cache on the device for `layout`, or `undefined` when the kernel cannot serve it
 * (bits outside 2..8, head dimension over 256, a layer's buffer over `maxBindingBytes` — default
 * the device's storage-binding limit).
 */
export function gpuPackedKv(
  ctx: WebGPUContext,
  layout: PackedKvLayout,
  opts: { maxBindingBytes?: number } = {},
): PackedKvDevice | undefined {
  const { layers, nH, nKV, hd, bits, groupSize: G, vGroupSize: Gv, residualLength: R } = layout;
  const kw = nKV * hd;
  if (!(bits >= 2 && bits <= 8) || hd > 256 || nH % nKV !== 0 || R % G !== 0 || kw % Gv !== 0) {
    return undefined;
  }
  const cap = layout.capacity;
  const blocks = Math.max(1, Math.floor(cap / R));
  const kGroups = blocks * kw * (R / G);
  const vGroups = Math.max(1, cap) * (kw / Gv);
  const bytes = {
    kCodes: kGroups * kvGroupWords(G, bits) * 4,
    kPar: kGroups * 8,
    vCodes: vGroups * kvGroupWords(Gv, bits) * 4,
    vPar: vGroups * 8,
    res: (2 * R + 1) * kw * 4,
  };
  const limit = opts.maxBindingBytes ?? ctx.device.limits.maxStorageBufferBindingSize;
  if (Object.values(bytes).some((b) => b > limit)) return undefined;
  const qBytes = nH * hd * 4;
  const qb = scratch(ctx, qBytes), ob = scratch(ctx, qBytes);
  const base = { nH, nKV, headDim: hd, R, G, Gv, bits };
  const at0 = { ...base, pos: 0, qk: 0, qv: 0 };
  const fields0 = kvAttentionUniforms(at0);
  const uniBytes = Math.ceil(fields0.length / 4) * 16;
  const L: LayerBuffers[] = [];
  for (let l = 0; l < layers; l++) {
    const b = {
      kCodes: scratch(ctx, bytes.kCodes),
      kPar: scratch(ctx, bytes.kPar),
      vCodes: scratch(ctx, bytes.vCodes),
      vPar: scratch(ctx, bytes.vPar),
      res: scratch(ctx, bytes.res),
      uni: uniforms(ctx, fields0),
    };
    L.push({ ...b, dispatch: kvAttentionDispatch(ctx, { ...b, q: qb, o: ob }, at0, b.uni) });
  }
  const resident = layers * (Object.values(bytes).reduce((a, b) => a + b, 0) + uniBytes) +
    2 * qBytes;
  const traffic: PackedKvTraffic = { up: 0, down: 0, resident };
  let released = false;
  const write = (buf: GPUBuffer, offset: number, data: Float32Array | Uint32Array) => {
    if (released) throw new Error("packed KV cache: used after release()");
    const ab = data.buffer as ArrayBuffer;
    ctx.device.queue.writeBuffer(buf, offset, ab, data.byteOffset, data.byteLength);
    traffic.up += data.byteLength;
  };
  const layer = (l: number) => {
    const b = L[l];
    if (!b) throw new RangeError(`packed KV cache: layer ${l} not in 0..${layers - 1}`);
    return b;
  };
  const inCapacity = (pos: number) => {
    if (!(pos >= 0 && pos < cap)) {
      throw new RangeError(`packed KV cache: position ${pos} not in 0..${cap - 1}`);
    }
  };
  return {
    writeRows(l, pos, k, v) {
      inCapacity(pos);
      const b = layer(l);
      write(b.res, (pos % R) * kw * 4, k);
      write(b.res, (R + (pos % (R + 1))) * kw * 4, v);
    },
    appendKeyBlock(l, block, g) {
      if (!(block >= 0 && block < blocks && (block + 1) * R <= cap)) {
        throw new RangeError(`packed KV cache: key block ${block} past capacity ${cap}`);
      }
      const b = layer(l);
      const n = kw * (R / G);
      write(b.kCodes, block * n * kvGroupWords(G, bits) * 4, g.codes);
      write(b.kPar, block * n * 8, pairs(g));
    },
    appendValueRow(l, pos, g) {
      inCapacity(pos);
      const b = layer(l);
      const n = kw / Gv;
      write(b.vCodes, pos * n * kvGroupWords(Gv, bits) * 4, g.codes);
      write(b.vPar, pos * n * 8, pairs(g));
    },
    async attend(l, q, at) {
      inCapacity(at.pos);
      const o = { ...base, pos: at.pos, qk: at.qk, qv: at.qv, scale: at.scale };
      checkKvAttention(o);
      const b = layer(l);
      const f = kvAttentionUniforms(o);
      writeUniforms(ctx, b.uni, f);
      traffic.up += uniBytes;
      write(qb, 0, q);
      const y = new Float32Array(await runAndRead(ctx, [b.dispatch], ob, qBytes));
      traffic.down += qBytes;
      return y;
    },
    traffic: () => ({ ...traffic }),
    release() {
      if (released) return;
      released = true;
      for (const b of L) {
        ctx.pool.release(b.kCodes, b.kPar, b.vCodes, b.vPar, b.res);
        b.uni.destroy();
      }
      ctx.pool.release(qb, ob);
    },
  };
}
