/**
 * Host side of the fake-quant kernel (`kernels/fake_quant.ts`): one dispatch that fake-quantizes
 * a resident [rows, cols] activation by a {@linkcode QuantSpec}, in place or into another buffer,
 * and a typed-array entry point for tests.
 * @module
 */
import {
  fakeQuantFields,
  type FakeQuantSpec,
  fakeQuantUnits,
  fakeQuantWGSL,
} from "../../kernels/fake_quant.ts";
import {
  bindGroup,
  type Dispatch,
  grid,
  pipeline,
  runAndRead,
  scratch,
  uniforms,
  upload,
  type WebGPUContext,
} from "./_webgpu_device.ts";
import { checkQuantSpec } from "./ops.ts";
import {
  isSdrSpec,
  SDR_RAZOR_WG,
  sdrGridFields,
  sdrGridWGSL,
  sdrRazorFields,
  sdrRazorWGSL,
} from "../../kernels/fake_quant_sdr.ts";

/** Buffers of {@linkcode fakeQuantDispatch}: `y` written from `x` (in place when `x` is absent). */
export interface FakeQuantBuffers {
  /** Input [rows, cols]; omitted: `y` is read and overwritten. */
  x?: GPUBuffer;
  /** Output [rows, cols]. */
  y: GPUBuffer;
  /** Static per-channel scales [cols] (required when `spec.scales` is set). */
  scales?: GPUBuffer;
}

/**
 * The dispatch fake-quantizing [rows, cols] by `spec` (checked; `where` names it in errors), or
 * `undefined` for a 16-bit spec (the identity) done in place.
 */
export function fakeQuantDispatch(
  ctx: WebGPUContext,
  bufs: FakeQuantBuffers,
  o: { spec: FakeQuantSpec; rows: number; cols: number; where?: string },
): Dispatch | undefined {
  checkQuantSpec(o.spec, o.where ?? "spec", o.cols);
  if (o.spec.scales && !bufs.scales) {
    throw new Error("fakeQuantDispatch: a spec with static scales needs the scales buffer");
  }
  // 16 bits is the identity: nothing to do in place, a copy otherwise.
  if (o.spec.bits >= 16 && !bufs.x) return undefined;
  const pipe = pipeline(ctx, fakeQuantWGSL({ inPlace: !bufs.x }));
  const sv = bufs.scales ?? placeholder(ctx);
  const u = uniforms(ctx, fakeQuantFields(o.spec, o.rows, o.cols));
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, bufs.x ? [u, bufs.x, bufs.y, sv] : [u, bufs.y, sv]),
    workgroups: grid(ctx, fakeQuantUnits(o.spec, o.rows, o.cols).units),
  };
}

/**
 * The dispatches fake-quantizing [rows, cols] by any spec (checked; `where` names it in errors):
 * {@linkcode fakeQuantDispatch}'s one for QuaRot grids, one for the DeepSpeed grid and two for
 * QRazor (`kernels/fake_quant_sdr.ts`: base grid writing codes and unit scales, then the razor);
 * none for the identity in place.
 */
export function fakeQuantDispatches(
  ctx: WebGPUContext,
  bufs: FakeQuantBuffers,
  o: { spec: FakeQuantSpec; rows: number; cols: number; where?: string },
): Dispatch[] {
  if (!isSdrSpec(o.spec)) {
    const d = fakeQuantDispatch(ctx, bufs, o);
    return d ? [d] : [];
  }
  checkQuantSpec(o.spec, o.where ?? "spec", o.cols);
  const { spec, rows, cols } = o;
  if (!spec.qrazor && spec.bits >= 16) {
    // DeepSpeed at 16 bits is the identity: a copy when out of place (QuaRot's kernel copies).
    const d = fakeQuantDispatch(ctx, bufs, { ...o, spec: { bits: 16 } });
    return d ? [d] : [];
  }
  const units = fakeQuantUnits(spec, rows, cols).units;
  const su = unitScales(ctx, units);
  const p1 = pipeline(ctx, sdrGridWGSL({ inPlace: !bufs.x }));
  const u1 = uniforms(ctx, sdrGridFields(spec, rows, cols));
  const out: Dispatch[] = [{
    pipeline: p1,
    bindGroup: bindGroup(ctx, p1, bufs.x ? [u1, bufs.x, bufs.y, su] : [u1, bufs.y, su]),
    workgroups: grid(ctx, units),
  }];
  if (spec.qrazor) {
    const p2 = pipeline(ctx, sdrRazorWGSL());
    const { fields, groups } = sdrRazorFields(spec, rows, cols);
    out.push({
      pipeline: p2,
      bindGroup: bindGroup(ctx, p2, [uniforms(ctx, fields), bufs.y, su]),
      workgroups: grid(ctx, Math.ceil(groups / SDR_RAZOR_WG)),
    });
  }
  return out;
}

const unitScaleBufs = new WeakMap<WebGPUContext, GPUBuffer>();
/**
 * The per-unit scales between the two QRazor passes: one grow-only buffer per device, shared
 * (dispatches of one queue run in order, and each razor pass reads what its grid pass wrote).
 */
function unitScales(ctx: WebGPUContext, units: number): GPUBuffer {
  let b = unitScaleBufs.get(ctx);
  if (!b || b.size < units * 4) {
    b = ctx.device.createBuffer({ size: Math.max(256, units * 4), usage: 0x80 | 0x8 | 0x4 });
    unitScaleBufs.set(ctx, b);
  }
  return b;
}

const placeholders = new WeakMap<WebGPUContext, GPUBuffer>();
/** A 16-byte storage buffer bound where a spec has no static scales (one per device). */
function placeholder(ctx: WebGPUContext): GPUBuffer {
  let b = placeholders.get(ctx);
  if (!b) {
    b = ctx.device.createBuffer({ size: 16, usage: 0x80 | 0x8 });
    placeholders.set(ctx, b);
  }
  return b;
}

/** Fake-quantizes `x` [rows, cols] on the GPU (tests and one-off use). */
export async function gpuFakeQuant(
  ctx: WebGPUContext,
  x: Float32Array,
  spec: FakeQuantSpec,
  shape: { rows: number; cols: number },
): Promise<Float32Array> {
  const xb = upload(ctx, x);
  const yb = scratch(ctx, Math.max(16, x.byteLength));
  const sb = spec.scales ? upload(ctx, spec.scales) : undefined;
  try {
    const d = fakeQuantDispatches(ctx, { x: xb, y: yb, scales: sb }, { spec, ...shape });
    return new Float32Array(await runAndRead(ctx, d, yb, x.byteLength));
  } finally {
    ctx.pool.release(xb, yb, ...(sb ? [sb] : []));
  }
}
