/**
 * Layer Hessians that stay on the GPU: `H = 2/n · S` is formed on the device from the summed
 * `S = Σ XᵀX` the resident block runner accumulated (`kernels/xtx.ts` `hessianScaleWGSL`), with
 * its diagonal in a second buffer, and handed to the quantization pipeline as a
 * {@linkcode DeviceMatrix}: the backend's `gptqColumns` and `matmulDeviceB` read the buffer in
 * place, the host reads back the diagonal (`d` floats) and never the `d²` matrix unless a
 * consumer without a device path asks (`read()`).
 * @module
 */
import type { DeviceMatrix } from "./backend.ts";
import { QuantlabError, UnsupportedError } from "../errors.ts";
import { hessianScaleFields, hessianScaleWGSL } from "../../kernels/xtx.ts";
import {
  bindGroup,
  type Dispatch,
  grid,
  pipeline,
  readback,
  scratch,
  uniforms,
  type WebGPUContext,
} from "./_webgpu_device.ts";

/** A {@linkcode DeviceMatrix} of the WebGPU backend: H and its diagonal in pooled buffers. */
class GpuHessian implements DeviceMatrix {
  #released = false;
  constructor(
    readonly ctx: WebGPUContext,
    readonly buf: GPUBuffer,
    readonly diag: GPUBuffer,
    readonly size: number,
  ) {}
  /** True once released. */
  get released(): boolean {
    return this.#released;
  }
  #live(): void {
    if (this.#released) throw new QuantlabError("device Hessian used after release()");
  }
  #diag?: Float32Array;
  /** Read back once; later calls return a copy of the same values. */
  async diagonal(): Promise<Float32Array> {
    this.#live();
    this.#diag ??= new Float32Array(await readback(this.ctx, this.diag, this.size * 4));
    return this.#diag.slice();
  }
  async read(): Promise<Float32Array> {
    this.#live();
    return new Float32Array(await readback(this.ctx, this.buf, this.size * this.size * 4));
  }
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.ctx.pool.release(this.buf, this.diag);
  }
}

/**
 * The dispatch forming `H = 2/n · S` and `diag(H)` on the device (`hessianScaleWGSL`): `s` is
 * S f32 [d, d], `h` and `diag` receive H [d, d] and its diagonal [d].
 */
export function hessianScaleDispatch(
  ctx: WebGPUContext,
  bufs: { s: GPUBuffer; h: GPUBuffer; diag: GPUBuffer },
  o: { d: number; n: number },
): Dispatch {
  if (!(Number.isInteger(o.n) && o.n >= 1)) {
    throw new UnsupportedError(`webgpu hessian: ${o.n} rows; needs a positive integer count`);
  }
  const pipe = pipeline(ctx, hessianScaleWGSL());
  const u = uniforms(ctx, hessianScaleFields(o));
  return {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [u, bufs.s, bufs.h, bufs.diag]),
    workgroups: grid(ctx, Math.ceil((o.d * o.d) / 256)),
  };
}

/**
 * Allocates H [d, d] and its diagonal and returns the dispatch filling them from `s` (to be
 * recorded by the caller) with the {@linkcode DeviceMatrix} that owns the two buffers.
 */
export function gpuHessianFromSums(
  ctx: WebGPUContext,
  s: GPUBuffer,
  o: { d: number; n: number },
): { dispatch: Dispatch; matrix: DeviceMatrix } {
  const h = scratch(ctx, o.d * o.d * 4), diag = scratch(ctx, o.d * 4);
  try {
    return {
      dispatch: hessianScaleDispatch(ctx, { s, h, diag }, o),
      matrix: new GpuHessian(ctx, h, diag, o.d),
    };
  } catch (e) {
    ctx.pool.release(h, diag);
    throw e;
  }
}

/**
 * The H buffer of `m` when it is a matrix of this WebGPU context (made by
 * {@linkcode gpuHessianFromSums}), else `undefined` (another backend's, or a released one).
 */
export function gpuMatrixBuffer(ctx: WebGPUContext, m: DeviceMatrix): GPUBuffer | undefined {
  return m instanceof GpuHessian && m.ctx === ctx && !m.released ? m.buf : undefined;
}
