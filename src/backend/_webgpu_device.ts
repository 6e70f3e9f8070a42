/**
 * WebGPU device plumbing: adapter/device acquisition with the adapter's real limits, a buffer pool
 * keyed by size, a pipeline cache keyed by WGSL source, dispatch helpers that split large grids,
 * upload/readback, and `timeKernel` (timestamp queries when present, else wall clock).
 *
 * Deno exposes WebGPU behind `--unstable-webgpu`; without the flag `navigator.gpu` is undefined and
 * {@linkcode hasWebGPU} answers false.
 * @module
 */
import { QuantlabError, UnsupportedError } from "../errors.ts";
import { ensureRuntimeDir } from "./_runtime_dir.ts";

/** Options of {@linkcode getWebGPU}. */
export interface WebGPUOptions {
  /**
   * Accept software adapters (isFallbackAdapter, or lavapipe/llvmpipe/SwiftShader in the
   * description). Tests set it; the default refuses them, so `useDevice` falls back to CPU.
   */
  allowFallback?: boolean;
}

/** A short description of the adapter, for reports. */
export interface AdapterReport {
  /** Adapter description, e.g. "NVIDIA H100 80GB HBM3" or "llvmpipe (LLVM 15.0.6, 256 bits)". */
  description: string;
  /** Vendor id or name as the adapter reports it. */
  vendor: string;
  /** Architecture string (often empty). */
  architecture: string;
  /** True for software adapters (flag or a known software rasterizer name). */
  fallback: boolean;
  /** Device features that quantlab uses and got: "shader-f16", "timestamp-query". */
  features: string[];
  /** Limits granted to the device (the ones that matter for compute). */
  limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupStorageSize: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxComputeWorkgroupsPerDimension: number;
  };
}

/** One compute dispatch: pipeline, bind group and workgroup counts. */
export interface Dispatch {
  /** The compute pipeline. */
  pipeline: GPUComputePipeline;
  /** Bind group 0. */
  bindGroup: GPUBindGroup;
  /** Workgroup counts (x, y, z). */
  workgroups: [number, number, number];
}

/** Result of {@linkcode timeKernel}. */
export interface KernelTiming {
  /** Seconds per repetition (median over trials). */
  seconds: number;
  /** "timestamp" (GPU timestamp queries) or "wall" (submit → onSubmittedWorkDone). */
  method: "timestamp" | "wall";
  /** Seconds per repetition of every trial. */
  trials: number[];
}

/** Byte counts of a {@linkcode BufferPool} (see {@linkcode BufferPool.stats}). */
export interface PoolStats {
  /** Bytes of pooled buffers handed out and not yet released. */
  liveBytes: number;
  /** Bytes of released buffers kept for reuse. */
  freeBytes: number;
  /** `liveBytes + freeBytes`: what the pool holds on the device now. */
  allocatedBytes: number;
  /** Largest `liveBytes` since creation or {@linkcode BufferPool.resetPeaks}. */
  peakLiveBytes: number;
  /** Largest `allocatedBytes` since creation or {@linkcode BufferPool.resetPeaks}. */
  peakAllocatedBytes: number;
  /** Buffers created / destroyed so far. */
  created: number;
  /** Buffers destroyed so far (evicted, trimmed or destroyed on purpose). */
  destroyed: number;
}

/**
 * A pool of GPU buffers keyed by (size, usage): `acquire` reuses a released buffer if any. Free
 * buffers are capped at {@linkcode BufferPool.maxFreeBytes}; past it the least recently released
 * ones are destroyed, so a long run (the GPTQ pipeline walking every block) holds on the device
 * only what the current product needs plus that cap. {@linkcode BufferPool.stats} reports live,
 * free and peak bytes.
 */
export class BufferPool {
  #device: GPUDevice;
  #free = new Map<string, GPUBuffer[]>();
  /** Free buffers in release order (oldest first), for eviction. */
  #freeOrder = new Set<GPUBuffer>();
  #meta = new WeakMap<GPUBuffer, string>();
  #live = 0;
  #peakLive = 0;
  #peakAlloc = 0;
  #created = 0;
  #destroyed = 0;
  /** Bytes currently held by free buffers. */
  freeBytes = 0;
  /** Most bytes kept in free buffers (default 512 MiB); excess is destroyed on release. */
  maxFreeBytes: number;

  /** Creates a pool over `device`. */
  constructor(device: GPUDevice, opts: { maxFreeBytes?: number } = {}) {
    this.#device = device;
    this.maxFreeBytes = opts.maxFreeBytes ?? 512 * 2 ** 20;
  }

  /** A buffer of at least `size` bytes (rounded up to 16) with `usage`. */
  acquire(size: number, usage: number): GPUBuffer {
    const bytes = Math.max(16, Math.ceil(size / 16) * 16);
    const key = `${bytes}:${usage}`;
    const list = this.#free.get(key);
    let b = list?.pop();
    if (b) {
      this.#freeOrder.delete(b);
      this.freeBytes -= bytes;
    } else {
      b = this.#device.createBuffer({ size: bytes, usage });
      this.#meta.set(b, key);
      this.#created++;
    }
    this.#live += bytes;
    this.#peakLive = Math.max(this.#peakLive, this.#live);
    this.#peakAlloc = Math.max(this.#peakAlloc, this.#live + this.freeBytes);
    return b;
  }

  /** Returns buffers to the pool (buffers it did not create, or already free, are ignored). */
  release(...bufs: GPUBuffer[]): void {
    for (const b of bufs) {
      const key = this.#meta.get(b);
      if (!key || this.#freeOrder.has(b)) continue;
      let list = this.#free.get(key);
      if (!list) this.#free.set(key, list = []);
      list.push(b);
      this.#freeOrder.add(b);
      this.#live -= b.size;
      this.freeBytes += b.size;
    }
    if (this.freeBytes > this.maxFreeBytes) this.trim(this.maxFreeBytes);
  }

  /** Destroys live buffers now instead of keeping them (e.g. resident weights being dropped). */
  destroy(...bufs: GPUBuffer[]): void {
    for (const b of bufs) {
      if (!this.#meta.has(b) || this.#freeOrder.has(b)) continue;
      this.#meta.delete(b);
      this.#live -= b.size;
      this.#destroyed++;
      b.destroy();
    }
  }

  /** Destroys the least recently released free buffers until at most `keepBytes` stay free. */
  trim(keepBytes = 0): void {
    for (const b of this.#freeOrder) {
      if (this.freeBytes <= keepBytes) break;
      this.#freeOrder.delete(b);
      const list = this.#free.get(this.#meta.get(b)!)!;
      list.splice(list.indexOf(b), 1);
      this.freeBytes -= b.size;
      this.#meta.delete(b);
      this.#destroyed++;
      b.destroy();
    }
  }

  /** Destroys every free buffer. */
  clear(): void {
    this.trim(0);
    this.#free.clear();
  }

  /** Live, free and peak bytes. */
  stats(): PoolStats {
    return {
      liveBytes: this.#live,
      freeBytes: this.freeBytes,
      allocatedBytes: this.#live + this.freeBytes,
      peakLiveBytes: this.#peakLive,
      peakAllocatedBytes: this.#peakAlloc,
      created: this.#created,
      destroyed: this.#destroyed,
    };
  }

  /** Restarts the peak counters from the current values. */
  resetPeaks(): void {
    this.#peakLive = this.#live;
    this.#peakAlloc = this.#live + this.freeBytes;
  }
}

/** An acquired device plus its caches. */
export interface WebGPUContext {
  /** The adapter. */
  adapter: GPUAdapter;
  /** The device, created with the adapter's limits and the features below. */
  device: GPUDevice;
  /** True when `shader-f16` is enabled. */
  f16: boolean;
  /** True when `timestamp-query` is enabled. */
  timestamp: boolean;
  /** True for software adapters. */
  fallback: boolean;
  /** Adapter report. */
  info: AdapterReport;
  /** Buffer pool. */
  pool: BufferPool;
  /** Pipeline cache keyed by WGSL source. */
  pipelines: Map<string, GPUComputePipeline>;
  /** Validation results of pipelines created since the last check (see `checkErrors`). */
  pending: Promise<string | null>[];
  /** Bytes moved between host and device since the context was made (see {@linkcode Transfer}). */
  transfer: Transfer;
}

/**
 * Host↔device byte counters of a context: `uploaded` counts `upload` (and `countUpload` for
 * other `queue.writeBuffer` data), `uniforms` the uniform writes, `readBack` every readback. Plain
 * numbers; read them before and after a piece of work and subtract.
 */
export interface Transfer {
  /** Data bytes written to the device (storage buffers). */
  uploaded: number;
  /** Uniform bytes written (`uniforms`, `writeUniforms`). */
  uniforms: number;
  /** Bytes copied back to the host. */
  readBack: number;
}

/** Counts `bytes` written to the device by a direct `queue.writeBuffer` (not through `upload`). */
export function countUpload(ctx: WebGPUContext, bytes: number): void {
  ctx.transfer.uploaded += bytes;
}

const SOFTWARE = /lavapipe|llvmpipe|swiftshader|software|warp/i;

let ctxPromise: Promise<WebGPUContext> | undefined;

/** Cheap check: `navigator.gpu` exists (needs `--unstable-webgpu`). Does not request an adapter. */
export function hasWebGPU(): boolean {
  return typeof navigator !== "undefined" && "gpu" in navigator &&
    (navigator as { gpu?: unknown }).gpu !== undefined;
}

async function acquire(): Promise<WebGPUContext> {
  if (!hasWebGPU()) {
    throw new UnsupportedError(
      "webgpu: navigator.gpu is missing (run Deno with --unstable-webgpu)",
    );
  }
  ensureRuntimeDir(); // quiets Mesa's XDG_RUNTIME_DIR error
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) {
    throw new UnsupportedError("webgpu: no adapter found (no Vulkan/Metal/DX12 driver)");
  }
  const ai = adapter.info;
  const fallback = Boolean((ai as { isFallbackAdapter?: boolean }).isFallbackAdapter) ||
    SOFTWARE.test(ai.description ?? "") || SOFTWARE.test(ai.device ?? "");
  const wanted: GPUFeatureName[] = ["shader-f16", "timestamp-query"];
  const features = wanted.filter((f) => adapter.features.has(f));
  const al = adapter.limits;
  const requiredLimits: Record<string, number> = {
    maxStorageBufferBindingSize: al.maxStorageBufferBindingSize,
    maxBufferSize: al.maxBufferSize,
    maxComputeWorkgroupStorageSize: al.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: al.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupSizeX: al.maxComputeWorkgroupSizeX,
    maxComputeWorkgroupSizeY: al.maxComputeWorkgroupSizeY,
    maxStorageBuffersPerShaderStage: al.maxStorageBuffersPerShaderStage,
  };
  const device = await adapter.requestDevice({ requiredFeatures: features, requiredLimits });
  const dl = device.limits;
  const info: AdapterReport = {
    description: ai.description || ai.device || "unknown adapter",
    vendor: ai.vendor,
    architecture: ai.architecture,
    fallback,
    features,
    limits: {
      maxStorageBufferBindingSize: dl.maxStorageBufferBindingSize,
      maxBufferSize: dl.maxBufferSize,
      maxComputeWorkgroupStorageSize: dl.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: dl.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupsPerDimension: dl.maxComputeWorkgroupsPerDimension,
    },
  };
  return {
    adapter,
    device,
    f16: features.includes("shader-f16"),
    timestamp: features.includes("timestamp-query"),
    fallback,
    info,
    pool: new BufferPool(device),
    pipelines: new Map(),
    pending: [],
    transfer: { uploaded: 0, uniforms: 0, readBack: 0 },
  };
}

/**
 * Acquires the WebGPU adapter and device once per process (later calls share it). Asks for the
 * adapter's real buffer limits (not the 128 MiB default) and for `shader-f16` and
 * `timestamp-query` when present. Throws {@linkcode UnsupportedError} when there is no adapter,
 * or when it is a software adapter and `allowFallback` is not set.
 */
export async function getWebGPU(opts: WebGPUOptions = {}): Promise<WebGPUContext> {
  ctxPromise ??= acquire();
  let ctx: WebGPUContext;
  try {
    ctx = await ctxPromise;
  } catch (e) {
    ctxPromise = undefined;
    throw e;
  }
  if (ctx.fallback && !opts.allowFallback) {
    throw new UnsupportedError(
      `webgpu: refusing software adapter "${ctx.info.description}" (pass allowFallback: true)`,
    );
  }
  return ctx;
}

/** The adapter report of the acquired device (acquires it if needed; software adapters allowed). */
export async function adapterInfo(): Promise<AdapterReport> {
  return (await getWebGPU({ allowFallback: true })).info;
}

/** True when an adapter can be acquired (software adapters count only with `allowFallback`). */
export async function webgpuAvailable(opts: WebGPUOptions = {}): Promise<boolean> {
  if (!hasWebGPU()) return false;
  try {
    await getWebGPU(opts);
    return true;
  } catch {
    return false;
  }
}

/** The compute pipeline for `code` (entry point "main"), compiled once per WGSL source. */
export function pipeline(ctx: WebGPUContext, code: string): GPUComputePipeline {
  let p = ctx.pipelines.get(code);
  if (!p) {
    ctx.device.pushErrorScope("validation");
    const module = ctx.device.createShaderModule({ code });
    p = ctx.device.createComputePipeline({
      layout: "auto",
      compute: { module, entryPoint: "main" },
    });
    ctx.pending.push(
      ctx.device.popErrorScope().then((e) =>
        e ? `${e.message}\n--- WGSL ---\n${code.split("\n").slice(0, 40).join("\n")}` : null
      ),
    );
    ctx.pipelines.set(code, p);
  }
  return p;
}

// GPUBufferUsage / GPUMapMode values as numbers, so this module loads without --unstable-webgpu.
const MAP_READ = 0x1;
const COPY_SRC = 0x4;
const COPY_DST = 0x8;
const UNIFORM = 0x40;
const STORAGE_BIT = 0x80;
const QUERY_RESOLVE = 0x200;

/** Storage buffer usage for kernel inputs/outputs (STORAGE | COPY_SRC | COPY_DST). */
export const STORAGE = STORAGE_BIT | COPY_SRC | COPY_DST;

/** A pooled storage buffer holding `data` (any typed array; padded to 16 bytes). */
export function upload(ctx: WebGPUContext, data: ArrayBufferView): GPUBuffer {
  const buf = ctx.pool.acquire(data.byteLength, STORAGE);
  ctx.transfer.uploaded += data.byteLength;
  const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
  const n4 = bytes.byteLength & ~3;
  if (n4 > 0) ctx.device.queue.writeBuffer(buf, 0, bytes, 0, n4);
  if (n4 < bytes.byteLength) {
    const tail = new Uint8Array(4);
    tail.set(bytes.subarray(n4));
    ctx.device.queue.writeBuffer(buf, n4, tail);
  }
  return buf;
}

/** A pooled storage buffer of `bytes` (contents unspecified: kernels must write what they read). */
export function scratch(ctx: WebGPUContext, bytes: number): GPUBuffer {
  return ctx.pool.acquire(bytes, STORAGE);
}

/** The bytes of uniform `fields` (u32 for numbers, f32 for `{ f }`), padded to 16 bytes. */
function uniformBytes(fields: (number | { f: number })[]): ArrayBuffer {
  const n = Math.max(4, Math.ceil(fields.length / 4) * 4);
  const ab = new ArrayBuffer(n * 4);
  const u = new Uint32Array(ab);
  const f = new Float32Array(ab);
  fields.forEach((v, i) => {
    if (typeof v === "number") u[i] = v >>> 0;
    else f[i] = v.f;
  });
  return ab;
}

/**
 * A uniform buffer of 32-bit words; `fields` are written in order, each as u32 (integers, given as
 * numbers) or f32 (given as `{ f: value }`). Padded to 16 bytes. Not pooled (tiny).
 */
export function uniforms(ctx: WebGPUContext, fields: (number | { f: number })[]): GPUBuffer {
  const ab = uniformBytes(fields);
  const buf = ctx.device.createBuffer({
    size: ab.byteLength,
    usage: UNIFORM | COPY_DST,
  });
  ctx.device.queue.writeBuffer(buf, 0, ab);
  ctx.transfer.uniforms += ab.byteLength;
  return buf;
}

/**
 * Rewrites a buffer made by {@linkcode uniforms} (same field count) through the queue, so a
 * recorded bind group can be reused with new values (ordered after earlier submissions).
 */
export function writeUniforms(
  ctx: WebGPUContext,
  buf: GPUBuffer,
  fields: (number | { f: number })[],
): void {
  const ab = uniformBytes(fields);
  ctx.device.queue.writeBuffer(buf, 0, ab);
  ctx.transfer.uniforms += ab.byteLength;
}

/** A bind group for `pipe` with `buffers` at bindings 0, 1, 2, ... */
export function bindGroup(
  ctx: WebGPUContext,
  pipe: GPUComputePipeline,
  buffers: (GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number })[],
): GPUBindGroup {
  return ctx.device.createBindGroup({
    layout: pipe.getBindGroupLayout(0),
    entries: buffers.map((b, i) => ({
      binding: i,
      resource: "buffer" in b ? b : { buffer: b },
    })),
  });
}

/**
 * Splits `n` workgroups into an (x, y) grid under the per-dimension limit. Kernels recover the
 * linear id as `wid.x + wid.y * nwg.x` (with `@builtin(num_workgroups) nwg`) and guard `< n`.
 */
export function grid(ctx: WebGPUContext, n: number): [number, number, number] {
  const lim = ctx.device.limits.maxComputeWorkgroupsPerDimension;
  if (n <= lim) return [Math.max(1, n), 1, 1];
  const y = Math.ceil(n / lim);
  return [Math.ceil(n / y), y, 1];
}

/** Records `dispatches` into one compute pass of `encoder`. */
export function encodeDispatches(
  encoder: GPUCommandEncoder,
  dispatches: Dispatch[],
  timestampWrites?: GPUComputePassTimestampWrites,
): void {
  const pass = encoder.beginComputePass(timestampWrites ? { timestampWrites } : {});
  for (const d of dispatches) {
    pass.setPipeline(d.pipeline);
    pass.setBindGroup(0, d.bindGroup);
    pass.dispatchWorkgroups(...d.workgroups);
  }
  pass.end();
}

/** Throws a {@linkcode QuantlabError} if a pipeline created since the last check failed. */
export async function checkErrors(ctx: WebGPUContext): Promise<void> {
  const pending = ctx.pending.splice(0);
  for (const e of await Promise.all(pending)) {
    if (e) throw new QuantlabError(`webgpu: shader or pipeline failed: ${e}`);
  }
}

/** Submits `dispatches` (one pass) and waits for completion; throws on validation errors. */
export async function runDispatches(ctx: WebGPUContext, dispatches: Dispatch[]): Promise<void> {
  await checkErrors(ctx);
  ctx.device.pushErrorScope("validation");
  const enc = ctx.device.createCommandEncoder();
  encodeDispatches(enc, dispatches);
  ctx.device.queue.submit([enc.finish()]);
  const err = await ctx.device.popErrorScope();
  if (err) throw new QuantlabError(`webgpu: dispatch failed: ${err.message}`);
  await ctx.device.queue.onSubmittedWorkDone();
}

/** One submission of {@linkcode runStepsAndReadAll}: `before()` runs first (e.g. uniform writes). */
export interface Step {
  /** Queue work to order before this submission (typically `writeUniforms`). */
  before?: () => void;
  /** The dispatches of this submission (one compute pass). */
  dispatches: Dispatch[];
}

/**
 * Queues `steps` as one submission each and waits once: for each step `before()` runs — a
 * `queue.writeBuffer` there is ordered between the submissions — then its dispatches are
 * submitted; the last submission also copies `bytes` of every output (from offset 0) to its own
 * staging buffer, and all are mapped together. A run of dependent steps (a decode loop whose next
 * input the GPU writes itself) then costs one GPU round trip instead of one per step (Deno polls
 * GPU completion about every 10 ms). Throws on validation errors; the staging buffers go back to
 * the pool in every case.
 */
export async function runStepsAndReadAll(
  ctx: WebGPUContext,
  steps: Step[],
  outs: { buffer: GPUBuffer; bytes: number }[],
): Promise<ArrayBuffer[]> {
  if (!steps.length) throw new QuantlabError("webgpu: runStepsAndReadAll needs a step");
  await checkErrors(ctx);
  const sizes = outs.map((o) => Math.ceil(o.bytes / 4) * 4);
  const staging = sizes.map((s) => ctx.pool.acquire(s, MAP_READ | COPY_DST));
  try {
    ctx.device.pushErrorScope("validation");
    steps.forEach((st, i) => {
      st.before?.();
      const enc = ctx.device.createCommandEncoder();
      encodeDispatches(enc, st.dispatches);
      if (i === steps.length - 1) {
        outs.forEach((o, k) => enc.copyBufferToBuffer(o.buffer, 0, staging[k], 0, sizes[k]));
      }
      ctx.device.queue.submit([enc.finish()]);
    });
    const err = await ctx.device.popErrorScope();
    if (err) throw new QuantlabError(`webgpu: dispatch failed: ${err.message}`);
    await Promise.all(staging.map((s, i) => s.mapAsync(1, /* GPUMapMode.READ */ 0, sizes[i])));
    for (const o of outs) ctx.transfer.readBack += o.bytes;
    return staging.map((s, i) => {
      const res = s.getMappedRange(0, sizes[i]).slice(0, outs[i].bytes);
      s.unmap();
      return res;
    });
  } finally {
    ctx.pool.release(...staging);
  }
}

/** Runs `dispatches` and reads `bytes` of `out` back: one submission, one wait. */
export async function runAndRead(
  ctx: WebGPUContext,
  dispatches: Dispatch[],
  out: GPUBuffer,
  bytes: number,
): Promise<ArrayBuffer> {
  return (await runStepsAndReadAll(ctx, [{ dispatches }], [{ buffer: out, bytes }]))[0];
}

/** Runs `dispatches` and reads several buffers back (`bytes` of each): one submission, one wait. */
export function runAndReadAll(
  ctx: WebGPUContext,
  dispatches: Dispatch[],
  outs: { buffer: GPUBuffer; bytes: number }[],
): Promise<ArrayBuffer[]> {
  return runStepsAndReadAll(ctx, [{ dispatches }], outs);
}

/** {@linkcode runStepsAndReadAll} with one output. */
export async function runStepsAndRead(
  ctx: WebGPUContext,
  steps: Step[],
  out: GPUBuffer,
  bytes: number,
): Promise<ArrayBuffer> {
  return (await runStepsAndReadAll(ctx, steps, [{ buffer: out, bytes }]))[0];
}

/** Copies `bytes` of `buf` (from `offset`) back to the CPU. */
export async function readback(
  ctx: WebGPUContext,
  buf: GPUBuffer,
  bytes: number,
  offset = 0,
): Promise<ArrayBuffer> {
  const size = Math.ceil(bytes / 4) * 4;
  const staging = ctx.pool.acquire(size, MAP_READ | COPY_DST);
  const enc = ctx.device.createCommandEncoder();
  enc.copyBufferToBuffer(buf, offset, staging, 0, size);
  ctx.device.queue.submit([enc.finish()]);
  await staging.mapAsync(1, /* GPUMapMode.READ */ 0, size);
  ctx.transfer.readBack += bytes;
  const out = staging.getMappedRange(0, size).slice(0, bytes);
  staging.unmap();
  ctx.pool.release(staging);
  return out;
}

/** Reads `n` float32 values of `buf` back. */
export async function readF32(
  ctx: WebGPUContext,
  buf: GPUBuffer,
  n: number,
): Promise<Float32Array> {
  return new Float32Array(await readback(ctx, buf, n * 4));
}

/** Reads `n` u32 values of `buf` back. */
export async function readU32(ctx: WebGPUContext, buf: GPUBuffer, n: number): Promise<Uint32Array> {
  return new Uint32Array(await readback(ctx, buf, n * 4));
}

/** Reads `n` f16 values (as Uint16 bits) of `buf` back. */
export async function readF16Bits(
  ctx: WebGPUContext,
  buf: GPUBuffer,
  n: number,
): Promise<Uint16Array> {
  return new Uint16Array(await readback(ctx, buf, n * 2));
}

/** Options of {@linkcode timeKernel}. */
export interface TimeKernelOptions {
  /** Repetitions of the dispatch list per trial (default 10). */
  reps?: number;
  /** Trials (default 3); the median is reported. One untimed warm-up trial runs first. */
  trials?: number;
  /** Force wall-clock timing even when timestamp queries exist. */
  wall?: boolean;
}

/**
 * Times `make(rep)`'s dispatches (rep = 0..reps-1, so callers can rotate buffers) on the GPU.
 * With `timestamp-query`, one compute pass per trial carries beginning/end timestamp writes and
 * the difference (nanoseconds) is read back. Without it, the wall clock runs from submit to
 * `onSubmittedWorkDone` (which includes submission latency; GPU.md saw it under-report a copy
 * kernel's bandwidth by ~40%).
 */
export async function timeKernel(
  ctx: WebGPUContext,
  make: (rep: number) => Dispatch[],
  opts: TimeKernelOptions = {},
): Promise<KernelTiming> {
  const reps = opts.reps ?? 10;
  const trials = opts.trials ?? 3;
  const useTs = ctx.timestamp && !opts.wall;
  const list: Dispatch[] = [];
  for (let r = 0; r < reps; r++) list.push(...make(r));
  // warm-up
  await runDispatches(ctx, list);
  const times: number[] = [];
  for (let t = 0; t < trials; t++) {
    if (useTs) {
      const qs = ctx.device.createQuerySet({ type: "timestamp", count: 2 });
      const res = ctx.device.createBuffer({
        size: 16,
        usage: QUERY_RESOLVE | COPY_SRC,
      });
      const enc = ctx.device.createCommandEncoder();
      encodeDispatches(enc, list, {
        querySet: qs,
        beginningOfPassWriteIndex: 0,
        endOfPassWriteIndex: 1,
      });
      enc.resolveQuerySet(qs, 0, 2, res, 0);
      ctx.device.queue.submit([enc.finish()]);
      const ts = new BigUint64Array(await readback(ctx, res, 16));
      qs.destroy();
      res.destroy();
      times.push(Number(ts[1] - ts[0]) * 1e-9 / reps);
    } else {
      const enc = ctx.device.createCommandEncoder();
      encodeDispatches(enc, list);
      const t0 = performance.now();
      ctx.device.queue.submit([enc.finish()]);
      await ctx.device.queue.onSubmittedWorkDone();
      times.push((performance.now() - t0) * 1e-3 / reps);
    }
  }
  const sorted = [...times].sort((a, b) => a - b);
  return {
    seconds: sorted[Math.floor(sorted.length / 2)],
    method: useTs ? "timestamp" : "wall",
    trials: times,
  };
}
