/**
 * Host side of the elementwise/row kernels: RMSNorm, LayerNorm, softmax, RoPE and causal
 * attention over a KV cache. `*Dispatch` functions work on resident buffers; `gpu*` functions take
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
  o: { T: number; heads: number; headDim: number; posOffset: number },
): Dispatch {
  const n = o.T * o.heads * (o.headDim / 2);
  return dispatch(
    ctx,
    ropeWGSL(),
    [o.T, o.heads, o.headDim, o.posOffset],
    [b.x, b.cos, b.sin],
    Math.ceil(n / 256),
  );
}

/** RoPE on the GPU (HF rotate-half) with tables from `ropeTables`; returns the rotated copy. */
export function gpuRope(
  ctx: WebGPUContext,
  x: Float32Array,
  tables: { cos: Float32Array; sin: Float32Array },
  o: { T: number; heads: number; headDim: number; posOffset: number },
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
    [o.T, o.S, o.nH, o.nKV, o.posOffset, { f: scale }, 0, 0],
    [b.q, b.k, b.v, b.o],
    o.T * o.nH,
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
