/**
 * Host side of the elementwise/row kernels: RMSNorm, LayerNorm, softmax, RoPE and causal
 * attention over a KV cache (also in the `Backend.attention` layout, `gpuBatchedAttention`). `*Dispatch` functions work on resident buffers; `gpu*` functions take
 * and return typed arrays.
 * @module
 */
import { rmsnormWGSL } from "../../kernels/rmsnorm.ts";
import { layernormWGSL } from "../../kernels/layernorm.ts";
import { softmaxWGSL } from "../../kernels/softmax.ts";
import { ropeWGSL } from "../../kernels/rope.ts";
import { copyWGSL } from "../../kernels/copy.ts";
import { type AttentionOptions, attentionWGSL } from "../../kernels/attention.ts";
import {
  bindGroup,
  type Dispatch,
  grid,
  pipeline,
  readF32,
  runAndRead,
  runDispatches,
  scratch,
  uniforms,
  upload,
  type WebGPUContext,
} from "./_webgpu_device.ts";

function dispatch(
  ctx: WebGPUContext,
  code: string,
  u: (number | { f: number })[],
  bufs: GPUBuffer[],
  groups: number,
): Dispatch {
  const pipe = pipeline(ctx, code);
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [uniforms(ctx, u), ...bufs]),
    workgroups: grid(ctx, groups),
  };
}

async function runOne(
  ctx: WebGPUContext,
  d: Dispatch,
  out: GPUBuffer,
  n: number,
  inputs: GPUBuffer[],
): Promise<Float32Array> {
  await runDispatches(ctx, [d]);
  const res = await readF32(ctx, out, n);
  ctx.pool.release(out, ...inputs);
  return res;
}

/** RMSNorm dispatch over rows of X [rows, d] into Y. */
export function rmsnormDispatch(
  ctx: WebGPUContext,
  b: { x: GPUBuffer; weight: GPUBuffer; y: GPUBuffer },
  o: { rows: number; d: number; eps: number },
): Dispatch {
  return dispatch(ctx, rmsnormWGSL(), [o.rows, o.d, { f: o.eps }, 0], [b.x, b.weight, b.y], o.rows);
}

/** RMSNorm on the GPU: `x / sqrt(mean(x²) + eps) · weight` per row. */
export function gpuRmsnorm(
  ctx: WebGPUContext,
  x: Float32Array,
  weight: Float32Array,
  o: { rows: number; d: number; eps: number },
): Promise<Float32Array> {
  const xb = upload(ctx, x), wb = upload(ctx, weight), yb = scratch(ctx, x.byteLength);
  return runOne(ctx, rmsnormDispatch(ctx, { x: xb, weight: wb, y: yb }, o), yb, x.length, [xb, wb]);
}

/** LayerNorm on the GPU: `(x − mean) / sqrt(var + eps) · weight + bias` per row. */
export function gpuLayernorm(
  ctx: WebGPUContext,
  x: Float32Array,
  params: { weight: Float32Array; bias: Float32Array },
  o: { rows: number; d: number; eps: number },
): Promise<Float32Array> {
  const xb = upload(ctx, x), wb = upload(ctx, params.weight), bb = upload(ctx, params.bias);
  const yb = scratch(ctx, x.byteLength);
  const d = dispatch(
    ctx,
    layernormWGSL(),
    [o.rows, o.d, { f: o.eps }, 0],
    [xb, wb, bb, yb],
    o.rows,
  );
  return runOne(ctx, d, yb, x.length, [xb, wb, bb]);
}

/** Row softmax on the GPU. */
export function gpuSoftmax(
  ctx: WebGPUContext,
  x: Float32Array,
  o: { rows: number; d: number },
): Promise<Float32Array> {
  const xb = upload(ctx, x), yb = scratch(ctx, x.byteLength);
  const d = dispatch(ctx, softmaxWGSL(), [o.rows, o.d, 0, 0], [xb, yb], o.rows);
  return runOne(ctx, d, yb, x.length, [xb]);
}

/** RoPE dispatch, in place on X [T, heads, headDim]. */
export function ropeDispatch(
  ctx: WebGPUContext,
  b: { x: GPUBuffer; cos: GPUBuffer; sin: GPUBuffer },
  o: { T: number; heads: number; headDim: number; posOffset: number; period?: number },
): Dispatch {
  const n = o.T * o.heads * (o.headDim / 2);
  return dispatch(
    ctx,
    ropeWGSL(),
    [o.T, o.heads, o.headDim, o.posOffset, o.period ?? 0, 0, 0, 0],
    [b.x, b.cos, b.sin],
    Math.ceil(n / 256),
  );
}

/** RoPE on the GPU (HF rotate-half) with tables from `ropeTables`; returns the rotated copy. */
export function gpuRope(
  ctx: WebGPUContext,
  x: Float32Array,
  tables: { cos: Float32Array; sin: Float32Array },
  o: { T: number; heads: number; headDim: number; posOffset: number; period?: number },
): Promise<Float32Array> {
  const xb = upload(ctx, x), cb = upload(ctx, tables.cos), sb = upload(ctx, tables.sin);
  return runOne(ctx, ropeDispatch(ctx, { x: xb, cos: cb, sin: sb }, o), xb, x.length, [cb, sb]);
}

/** Attention dispatch (see `kernels/attention.ts`). */
export function attentionDispatch(
  ctx: WebGPUContext,
  b: { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer; o: GPUBuffer },
  o: AttentionOptions,
): Dispatch {
  const scale = o.scale ?? 1 / Math.sqrt(o.headDim);
  return dispatch(
    ctx,
    attentionWGSL({ headDim: o.headDim }),
    [o.T, o.S, o.nH, o.nKV, o.posOffset, { f: scale }, o.batch ?? 1, 0],
    [b.q, b.k, b.v, b.o],
    (o.batch ?? 1) * o.T * o.nH,
  );
}

/** Causal GQA attention of q [T, nH, hd] over the cache k/v [S, nKV, hd] on the GPU. */
export function gpuAttention(
  ctx: WebGPUContext,
  qkv: { q: Float32Array; k: Float32Array; v: Float32Array },
  o: AttentionOptions,
): Promise<Float32Array> {
  if (o.nH % o.nKV !== 0) throw new Error(`attention: nH ${o.nH} not a multiple of nKV ${o.nKV}`);
  const qb = upload(ctx, qkv.q), kb = upload(ctx, qkv.k), vb = upload(ctx, qkv.v);
  const ob = scratch(ctx, qkv.q.byteLength);
  return runOne(
    ctx,
    attentionDispatch(ctx, { q: qb, k: kb, v: vb, o: ob }, o),
    ob,
    qkv.q.length,
    [qb, kb, vb],
  );
}

/** Copy dispatch (vec4 per thread) of `n4` vec4s from `src` to `dst`. */
export function copyDispatch(
  ctx: WebGPUContext,
  b: { src: GPUBuffer; dst: GPUBuffer },
  n4: number,
): Dispatch {
  return dispatch(ctx, copyWGSL(), [n4, 0, 0, 0], [b.src, b.dst], Math.ceil(n4 / 256));
}

/** True when `mask` [T, S] is exactly the causal mask with queries at positions S−T..S−1. */
export function isCausalMask(mask: Float32Array, T: number, S: number): boolean {
  const off = S - T;
  for (let t = 0; t < T; t++) {
    const row = t * S, vis = off + t + 1;
    for (let s = 0; s < S; s++) {
      const m = mask[row + s];
      if (s < vis ? m !== 0 : m !== -Infinity) return false;
    }
  }
  return true;
}

/**
 * The `Backend.attention` contract on the GPU: `softmax(Q·Kᵀ + mask)·V` for Q
 * [G, T, d] (already scaled), Kᵀ [G, d, S], V [G, S, d], returning [G, T, d], through the
 * flash-style causal kernel of `kernels/attention.ts` (groups as heads, scale 1). Groups are
 * split into chunks whose K/V fit the binding limit. Resolves to `undefined` when the mask is not
 * the plain causal one (a sliding window), or d is not a multiple of 4 in 4..256.
 */
export async function gpuBatchedAttention(
  ctx: WebGPUContext,
  q: Float32Array,
  kT: Float32Array,
  v: Float32Array,
  mask: Float32Array,
  dims: { G: number; T: number; S: number; d: number; maxBindingBytes?: number },
): Promise<Float32Array | undefined> {
  const { G, T, S, d } = dims;
  if (d % 4 !== 0 || d < 4 || d > 256 || T > S || !isCausalMask(mask, T, S)) return undefined;
  const limit = dims.maxBindingBytes ?? ctx.device.limits.maxStorageBufferBindingSize;
  const per = Math.max(1, Math.min(G, Math.floor(limit / (4 * d * Math.max(S, T)))));
  const out = new Float32Array(G * T * d);
  for (let g0 = 0; g0 < G; g0 += per) {
    const g = Math.min(per, G - g0);
    // [g, T, d] → [T, g, d];  Kᵀ [g, d, S] → [S, g, d];  V [g, S, d] → [S, g, d].
    const qh = new Float32Array(T * g * d), kh = new Float32Array(S * g * d);
    const vh = new Float32Array(S * g * d);
    for (let j = 0; j < g; j++) {
      const gq = (g0 + j) * T * d, gk = (g0 + j) * d * S, gv = (g0 + j) * S * d;
      for (let t = 0; t < T; t++) qh.set(q.subarray(gq + t * d, gq + (t + 1) * d), (t * g + j) * d);
      for (let s = 0; s < S; s++) {
        vh.set(v.subarray(gv + s * d, gv + (s + 1) * d), (s * g + j) * d);
        const kb = (s * g + j) * d;
        for (let i = 0; i < d; i++) kh[kb + i] = kT[gk + i * S + s];
      }
    }
    const qb = upload(ctx, qh), kb = upload(ctx, kh), vb = upload(ctx, vh);
    const ob = scratch(ctx, qh.byteLength);
    try {
      const disp = attentionDispatch(ctx, { q: qb, k: kb, v: vb, o: ob }, {
        T,
        S,
        nH: g,
        nKV: g,
        headDim: d,
        posOffset: S - T,
        scale: 1,
      });
      const o = new Float32Array(await runAndRead(ctx, [disp], ob, qh.byteLength));
      for (let j = 0; j < g; j++) {
        const go = (g0 + j) * T * d;
        for (let t = 0; t < T; t++) {
          out.set(o.subarray((t * g + j) * d, (t * g + j + 1) * d), go + t * d);
        }
      }
    } finally {
      ctx.pool.release(qb, kb, vb, ob);
    }
  }
  return out;
}
