/**
 * Host side of `kernels/kvquant_attention.ts`: a KVQuant cache resident on the device
 * (`Backend.kvquantAttention`). Per layer it holds, sized for the cache's capacity, the per-token
 * words (K and V codebook indices, V's offset and range, where the token's outliers start and how
 * many), the sparse outlier pool (channel, value pairs; it grows by doubling, copied on the
 * device, when a sequence has more outliers than expected), the quantizer's offsets, ranges and
 * codebooks, and the first-few unquantized rows; one RoPE table (cos, sin per position, as the
 * host rounds them) is shared by the layers when keys are stored before RoPE. Every token is
 * written once through `queue.writeBuffer` at its final place; each decode attention uploads the
 * query and the uniforms, runs one dispatch and reads the [nH·hd] output back. A byte counter
 * records what crosses the bus.
 * @module
 */
import type { KvQuantDevice, KvQuantLayout, PackedKvTraffic } from "./backend.ts";
import {
  checkKvQuantAttention,
  type KvQuantAttentionOptions,
  kvquantAttentionUniforms,
  kvquantAttentionWGSL,
  kvquantRowWords,
  kvquantTokenWords,
} from "../../kernels/kvquant_attention.ts";
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

/** The buffers of one KVQuant attention dispatch (bindings 1..7 of the kernel). */
export interface KvQuantAttentionBuffers {
  /** Query [nH·hd]. */
  q: GPUBuffer;
  /** Per-token words. */
  tok: GPUBuffer;
  /** Outlier pool. */
  sp: GPUBuffer;
  /** Offsets, ranges and codebooks. */
  par: GPUBuffer;
  /** First-few unquantized rows. */
  raw: GPUBuffer;
  /** RoPE table. */
  rope: GPUBuffer;
  /** Output [nH·hd]. */
  o: GPUBuffer;
}

/**
 * One KVQuant decode attention dispatch (`kernels/kvquant_attention.ts`) over `b`, with uniforms
 * from `o` in `uni` (rewritten by the caller) or a fresh buffer.
 */
export function kvquantAttentionDispatch(
  ctx: WebGPUContext,
  b: KvQuantAttentionBuffers,
  o: KvQuantAttentionOptions,
  uni?: GPUBuffer,
): Dispatch {
  checkKvQuantAttention(o);
  const pipe = pipeline(ctx, kvquantAttentionWGSL({ headDim: o.headDim }));
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [
      uni ?? uniforms(ctx, kvquantAttentionUniforms(o)),
      b.q,
      b.tok,
      b.sp,
      b.par,
      b.raw,
      b.rope,
      b.o,
    ]),
    workgroups: [o.nH, 1, 1],
  };
}

interface LayerBuffers {
  tok: GPUBuffer;
  sp: GPUBuffer;
  /** Outlier entries the pool holds / has room for. */
  spUsed: number;
  spCap: number;
  par: GPUBuffer;
  raw: GPUBuffer;
  uni: GPUBuffer;
  dispatch: Dispatch;
  /** The next position to write. */
  next: number;
}

/**
 * A KVQuant cache on the device for `layout`, or `undefined` when the kernel cannot serve it
 * (bits outside 2..8, head dimension over 256, an odd head with RoPE, a layer's buffer over
 * `maxBindingBytes` — default the device's storage-binding limit).
 */
export function gpuKvQuant(
  ctx: WebGPUContext,
  layout: KvQuantLayout,
  opts: { maxBindingBytes?: number } = {},
): KvQuantDevice | undefined {
  const { layers, nH, nKV, hd, bits, capacity: cap, firstFew, perChannel } = layout;
  const kw = nKV * hd;
  const rotate = layout.rope !== undefined;
  if (
    !(bits >= 2 && bits <= 8) || hd > 256 || nH % nKV !== 0 || (rotate && hd % 2 !== 0) ||
    kw > 65535 || layout.params.length !== layers
  ) {
    return undefined;
  }
  const nc = 2 ** bits;
  const ts = kvquantTokenWords(kw, bits);
  const wpr = kvquantRowWords(kw, bits);
  const ff = Math.min(firstFew, cap);
  const spCap0 = Math.max(64, Math.ceil(layout.outliersPerToken * cap));
  const bytes = {
    tok: Math.max(1, cap) * ts * 4,
    sp: spCap0 * 8,
    par: (2 * kw + nc + (perChannel ? kw * nc : nc)) * 4,
    raw: Math.max(1, ff) * 2 * kw * 4,
  };
  const ropeBytes = rotate ? Math.max(4, layout.rope!.byteLength) : 4;
  const limit = opts.maxBindingBytes ?? ctx.device.limits.maxStorageBufferBindingSize;
  if ([...Object.values(bytes), ropeBytes].some((b) => b > limit)) return undefined;
  const qBytes = nH * hd * 4;
  const qb = scratch(ctx, qBytes), ob = scratch(ctx, qBytes);
  const base = { nH, nKV, headDim: hd, bits, perChannel, rotate };
  const at0 = { ...base, pos: 0, nraw: 0 };
  const fields0 = kvquantAttentionUniforms(at0);
  const uniBytes = Math.ceil(fields0.length / 4) * 16;
  const traffic: PackedKvTraffic = { up: 0, down: 0, resident: 0 };
  let released = false;
  const write = (buf: GPUBuffer, offset: number, data: Float32Array | Uint32Array) => {
    if (released) throw new Error("KVQuant device cache: used after release()");
    const ab = data.buffer as ArrayBuffer;
    ctx.device.queue.writeBuffer(buf, offset, ab, data.byteOffset, data.byteLength);
    traffic.up += data.byteLength;
  };
  const ropeBuf = scratch(ctx, ropeBytes);
  if (rotate && layout.rope!.length) write(ropeBuf, 0, layout.rope!);
  const L: LayerBuffers[] = [];
  for (let l = 0; l < layers; l++) {
    const P = layout.params[l];
    const par = new Float32Array(bytes.par / 4);
    par.set(P.kOff, 0);
    par.set(P.kRng, kw);
    par.set(P.vLut, 2 * kw);
    par.set(P.kLut, 2 * kw + nc);
    const b = {
      tok: scratch(ctx, bytes.tok),
      sp: scratch(ctx, bytes.sp),
      par: scratch(ctx, bytes.par),
      raw: scratch(ctx, bytes.raw),
      uni: uniforms(ctx, fields0),
    };
    write(b.par, 0, par);
    L.push({
      ...b,
      spUsed: 0,
      spCap: spCap0,
      next: 0,
      dispatch: kvquantAttentionDispatch(ctx, { ...b, q: qb, o: ob, rope: ropeBuf }, at0, b.uni),
    });
  }
  const resident = () =>
    L.reduce((a, b) => a + bytes.tok + b.spCap * 8 + bytes.par + bytes.raw + uniBytes, 0) +
    2 * qBytes + ropeBytes;
  const layer = (l: number) => {
    const b = L[l];
    if (!b) throw new RangeError(`KVQuant device cache: layer ${l} not in 0..${layers - 1}`);
    return b;
  };
  const nextPos = (b: LayerBuffers, pos: number) => {
    if (pos !== b.next || pos >= cap) {
      throw new RangeError(
        `KVQuant device cache: position ${pos} written out of order (next ${b.next}, capacity ${cap})`,
      );
    }
    b.next++;
  };
  /** Grows the outlier pool of `b` to hold `n` entries (device-side copy; no bus traffic). */
  const grow = (b: LayerBuffers, n: number) => {
    let c = b.spCap;
    while (c < n) c *= 2;
    if (c * 8 > limit) throw new RangeError("KVQuant device cache: outlier pool over the limit");
    const nb = scratch(ctx, c * 8);
    const enc = ctx.device.createCommandEncoder();
    if (b.spUsed) enc.copyBufferToBuffer(b.sp, 0, nb, 0, b.spUsed * 8);
    ctx.device.queue.submit([enc.finish()]);
    ctx.pool.release(b.sp);
    b.sp = nb;
    b.spCap = c;
    b.dispatch = kvquantAttentionDispatch(
      ctx,
      { tok: b.tok, sp: nb, par: b.par, raw: b.raw, q: qb, o: ob, rope: ropeBuf },
      at0,
      b.uni,
    );
  };
  return {
    writeRaw(l, pos, k, v) {
      const b = layer(l);
      if (pos >= ff) throw new RangeError(`KVQuant device cache: raw row ${pos} ≥ firstFew ${ff}`);
      nextPos(b, pos);
      write(b.raw, pos * 2 * kw * 4, k);
      write(b.raw, (pos * 2 + 1) * kw * 4, v);
    },
    appendToken(l, pos, t) {
      const b = layer(l);
      nextPos(b, pos);
      const nnz = t.idx?.length ?? 0;
      if (b.spUsed + nnz > b.spCap) grow(b, b.spUsed + nnz);
      const w = new Uint32Array(ts);
      w.set(t.codes.subarray(0, 2 * wpr));
      const f = new Float32Array(w.buffer);
      f[2 * wpr] = t.vp[0];
      f[2 * wpr + 1] = t.vp[1];
      w[2 * wpr + 2] = b.spUsed;
      w[2 * wpr + 3] = nnz ? t.nnz![0] | (t.nnz![1] << 16) : 0;
      write(b.tok, pos * ts * 4, w);
      if (nnz) {
        const e = new Uint32Array(2 * nnz);
        const ef = new Float32Array(e.buffer);
        for (let j = 0; j < nnz; j++) {
          e[2 * j] = t.idx![j];
          ef[2 * j + 1] = t.val![j];
        }
        write(b.sp, b.spUsed * 8, e);
        b.spUsed += nnz;
      }
    },
    async attend(l, q, at) {
      const b = layer(l);
      if (!(at.pos >= 0 && at.pos < b.next)) {
        throw new RangeError(`KVQuant device cache: query at ${at.pos}, ${b.next} tokens written`);
      }
      const o = { ...base, pos: at.pos, nraw: Math.min(ff, at.pos + 1), scale: at.scale };
      checkKvQuantAttention(o);
      writeUniforms(ctx, b.uni, kvquantAttentionUniforms(o));
      traffic.up += uniBytes;
      write(qb, 0, q);
      const y = new Float32Array(await runAndRead(ctx, [b.dispatch], ob, qBytes));
      traffic.down += qBytes;
      return y;
    },
    traffic: () => ({ ...traffic, resident: resident() }),
    release() {
      if (released) return;
      released = true;
      for (const b of L) {
        ctx.pool.release(b.tok, b.sp, b.par, b.raw);
        b.uni.destroy();
      }
      ctx.pool.release(qb, ob, ropeBuf);
    },
  };
}
