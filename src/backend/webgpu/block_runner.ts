/**
 * One decoder block resident on the GPU for the layer-wise quantization pipeline: the block's
 * weights are uploaded once, a calibration chunk (B sequences of T tokens) goes through the block
 * in ONE submission, and the Hessian statistics `Σ XᵀX` of the requested linears' inputs are
 * accumulated on the GPU by the XᵀX kernel (`kernels/xtx.ts`) instead of being read back per
 * product. The host-driven path (`models/decoder.ts` `block()` with hooks) waits for the GPU
 * after every product and runs the elementwise work in TypeScript; both compute the same block.
 * The model arrives as plain data ({@linkcode GpuModel}, built by `models/resident_block.ts`).
 *
 * What lives on the GPU at once: this block's weights, one pass's activations
 * (`blockBytesPerRow(cfg)` per row; chunks whose rows exceed the binding limit are split into
 * sub-batches of whole sequences) and one `[in, in]` f32 sum per distinct collected input.
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import type { DeviceMatrix } from "../backend.ts";
import type { GpuModel } from "./model.ts";
import { QuantlabError } from "../../errors.ts";
import {
  type Dispatch,
  gpuHessianFromSums,
  readback,
  runAndRead,
  runDispatches,
  scratch,
  upload,
  type WebGPUBackend,
  xtxDispatch,
} from "../webgpu.ts";
import {
  allocBlockBuffers,
  type BlockBuffers,
  blockUnsupported,
  type GpuBlock,
  type GpuLinear,
  gpuUploader,
  recordBlock,
  recorder,
  ropeTablesFor,
} from "./block.ts";

/** Options of {@linkcode ResidentBlockRunner.run}. */
export interface BlockRunOptions {
  /** Sequences in `h` (rows = batch · seqLen). */
  batch: number;
  /** Linears (full names, no ".weight") whose inputs are summed into `Σ XᵀX`. */
  collect?: ReadonlySet<string>;
  /** Return the block's output rows (default false: stop after the last collected input). */
  output?: boolean;
}

/** Input statistics of one linear: `S = Σ XᵀX` over `n` rows. */
export interface InputStats {
  /** Σ XᵀX, f32 [in, in]. */
  S: Float32Array;
  /** Rows summed. */
  n: number;
}

/**
 * Rows [rows, width] of f32 held in a device buffer (a block's output kept for the next block):
 * the pipeline passes them from one runner to the next without a readback.
 */
export interface DeviceRows {
  /** [rows, width]. */
  readonly shape: [number, number];
  /** The buffer (owned by this object until `release`). */
  readonly buf: GPUBuffer;
  /** Copies the rows back to the host (counted as read back). */
  read(): Promise<Tensor>;
  /** Returns the buffer to the pool. */
  release(): void;
}

/** A block on the GPU for the pipeline (see the module doc). */
export interface ResidentBlockRunner {
  /**
   * Runs `h` [batch·seqLen, d] (host rows, or rows already on the device) through the block;
   * the output when `output`, else `undefined`. Host rows of a chunk that fits one pass are
   * uploaded once and kept until `release` (the true-sequential groups reuse them; a tensor's
   * data must not change between runs, or pass `keepInputs: false`).
   */
  run(h: Tensor | DeviceRows, opts: BlockRunOptions): Promise<Tensor | undefined>;
  /**
   * Runs `h` through the whole block and keeps the output on the device (the next block's input):
   * no readback when the chunk fits one pass (else the passes' outputs are gathered on the host and
   * uploaded once).
   */
  runToDevice(h: Tensor | DeviceRows, opts: { batch: number }): Promise<DeviceRows>;
  /**
   * The statistics collected since the last call, by linear name (linears sharing an input —
   * q/k/v, gate/up — share one object), and clears them.
   */
  take(): Promise<Map<string, InputStats>>;
  /**
   * As {@linkcode ResidentBlockRunner.take}, but the statistics stay on the device: per linear,
   * `H = 2/n · Σ XᵀX` formed there (`kernels/xtx.ts` `hessianScaleWGSL`, one submission for all
   * groups) as a {@linkcode DeviceMatrix} the caller releases (linears sharing an input share
   * one object), and `n`. Nothing is read back.
   */
  takeHessians(): Promise<Map<string, { H: DeviceMatrix; n: number }>>;
  /** Replaces linear `name`'s weight (its quantized version) for later runs. */
  setWeight(name: string, W: Tensor): void;
  /** Frees the block's weights and statistics. */
  release(): void;
}

/** Why block runs cannot be resident for `model` (a sentence), or `undefined`. */
export function gpuBlockRunnerUnsupported(
  model: Pick<GpuModel, "config" | "family">,
  backend: WebGPUBackend,
  seqLen: number,
): string | undefined {
  const cfg = model.config;
  const why = blockUnsupported(model, seqLen);
  if (why) return why;
  const limit = backend.ctx.device.limits.maxStorageBufferBindingSize;
  const widest = Math.max(cfg.intermediateSize, cfg.hiddenSize, cfg.numHeads * cfg.headDim);
  if (4 * widest * widest > limit) return `a ${widest}² Hessian exceeds the binding limit`;
  if (4 * widest * seqLen > limit) return `one sequence's activations exceed the binding limit`;
  return undefined;
}

/**
 * Uploads block `i` of `model` (its current weights: earlier blocks' quantized overrides apply
 * through `model.weights`) and returns a {@linkcode ResidentBlockRunner} for sequences of
 * `seqLen` tokens. A chunk is run in sub-batches of whole sequences whose widest activation fits
 * the binding limit; the statistics and outputs are the same as one pass.
 */
export async function gpuBlockRunner(
  model: GpuModel,
  i: number,
  backend: WebGPUBackend,
  opts: {
    seqLen: number;
    /** Override of the binding limit that sizes sub-batches (tests force splits with it). */
    maxBindingBytes?: number;
    /**
     * Keep a host chunk's rows on the device after its first run (reused by later runs of the
     * same tensor; default true); false: every run uploads them again.
     */
    keepInputs?: boolean;
  },
): Promise<ResidentBlockRunner> {
  const why = gpuBlockRunnerUnsupported(model, backend, opts.seqLen);
  if (why) throw new QuantlabError(`residentBlockRunner: ${why}`);
  const ctx = backend.ctx;
  const cfg = model.config;
  const T = opts.seqLen;
  const d = cfg.hiddenSize;
  const qw = cfg.numHeads * cfg.headDim;
  const ff = cfg.intermediateSize;
  const w = gpuUploader(ctx, model);
  const L: GpuBlock = await w.block(i);
  const byName = new Map<string, GpuLinear>();
  for (const l of [L.q, L.k, L.v, L.o, ...L.mlp]) byName.set(l.name, l);
  let rope: { cos: GPUBuffer; sin: GPUBuffer } | undefined;
  if (model.family.positions === "rope") {
    const t = ropeTablesFor(model.ropeInvFreq, T);
    rope = { cos: upload(ctx, t.cos), sin: upload(ctx, t.sin) };
    w.owned.push(rope.cos, rope.sin);
  }
  const limit = opts.maxBindingBytes ?? ctx.device.limits.maxStorageBufferBindingSize;
  const widest = 4 * Math.max(d, qw, ff);
  const seqsPerPass = Math.max(1, Math.floor(limit / (widest * T)));
  /** Σ XᵀX buffers by the first linear of each input group; names → group key. */
  const sums = new Map<string, { buf: GPUBuffer; dim: number; n: number; names: string[] }>();
  let released = false;

  /** Host chunks uploaded once for this block (single-pass chunks only), by tensor. */
  const uploads = new Map<Tensor, GPUBuffer>();
  const deviceRows = (buf: GPUBuffer, rows: number): DeviceRows => ({
    shape: [rows, d],
    buf,
    read: async () => ({
      shape: [rows, d],
      data: new Float32Array(await readback(ctx, buf, rows * d * 4)),
    }),
    release: () => ctx.pool.release(buf),
  });
  /**
   * One pass over `B` sequences: `input` host rows (uploaded) or a device buffer (copied into the
   * pass's residual buffer, which the block overwrites). `keep`: the output buffer is not
   * released but returned.
   */
  const pass = async (
    input: Float32Array | GPUBuffer,
    B: number,
    o: BlockRunOptions & { keep?: boolean },
  ): Promise<Float32Array | GPUBuffer | undefined> => {
    const n = B * T;
    const mine: GPUBuffer[] = [];
    const s = (bytes: number) => {
      const b = scratch(ctx, Math.max(16, bytes));
      mine.push(b);
      return b;
    };
    try {
      const onDevice = !(input instanceof Float32Array);
      const h = onDevice ? s(n * d * 4) : upload(ctx, input);
      if (!onDevice) mine.push(h);
      const io: BlockBuffers = allocBlockBuffers(model, n, s, h);
      const want = o.collect ?? new Set<string>();
      let left = [...want].filter((x) => byName.has(x)).length;
      const r = recorder(ctx, model);
      if (onDevice) r.ew("copyRange", [n * d, 0, 0, 0], [input, h], n * d);
      const out = recordBlock(r, model, L, io, { T, B, rope }, (ls, x, m) => {
        const names = ls.map((l) => l.name).filter((nm) => want.has(nm));
        if (names.length) {
          const key = names[0];
          let acc = sums.get(key);
          if (!acc) {
            const dim = ls[0].cols;
            acc = { buf: scratch(ctx, dim * dim * 4), dim, n: 0, names };
            sums.set(key, acc);
          }
          r.list.push(
            xtxDispatch(ctx, { x, h: acc.buf }, {
              n: m,
              d: acc.dim,
              alpha: 1,
              beta: acc.n === 0 ? 0 : 1,
            }),
          );
          acc.n += m;
          left -= names.length;
        }
        return !o.output && left <= 0;
      });
      if (!o.output) {
        await runDispatches(ctx, r.list);
        return undefined;
      }
      if (out.stopped) {
        throw new QuantlabError("residentBlockRunner: block recording stopped early");
      }
      if (o.keep) {
        await runDispatches(ctx, r.list);
        const k = mine.indexOf(out.h);
        if (k < 0) throw new QuantlabError("residentBlockRunner: output buffer not owned");
        mine.splice(k, 1);
        return out.h;
      }
      return new Float32Array(await runAndRead(ctx, r.list, out.h, n * d * 4));
    } finally {
      ctx.pool.release(...mine);
    }
  };
  const check = (h: Tensor | DeviceRows, B: number) => {
    if (released) throw new QuantlabError("residentBlockRunner: run() after release()");
    if (h.shape.length !== 2 || h.shape[1] !== d || h.shape[0] !== B * T) {
      throw new QuantlabError(
        `residentBlockRunner: block ${i} expects [${B}·${T}, ${d}] rows, got [${h.shape}]`,
      );
    }
  };
  /** The device buffer of a one-pass chunk (host rows uploaded once), or undefined (several). */
  const resident = (h: Tensor | DeviceRows, B: number): GPUBuffer | undefined => {
    if (B > seqsPerPass) return undefined;
    if ("buf" in h) return h.buf;
    if (opts.keepInputs === false) return undefined;
    let b = uploads.get(h);
    if (!b) uploads.set(h, b = upload(ctx, h.data));
    return b;
  };
  const host = async (h: Tensor | DeviceRows): Promise<Tensor> => "buf" in h ? await h.read() : h;

  const runner: ResidentBlockRunner = {
    async run(h, o) {
      const B = o.batch;
      check(h, B);
      const one = resident(h, B);
      if (one) {
        const res = await pass(one, B, o) as Float32Array | undefined;
        return res ? { shape: [B * T, d], data: res } : undefined;
      }
      const rows = (await host(h)).data;
      const out = o.output ? new Float32Array(B * T * d) : undefined;
      for (let b0 = 0; b0 < B; b0 += seqsPerPass) {
        const nb = Math.min(seqsPerPass, B - b0);
        const res = await pass(rows.subarray(b0 * T * d, (b0 + nb) * T * d), nb, o);
        if (out && res) out.set(res as Float32Array, b0 * T * d);
      }
      return out ? { shape: [B * T, d], data: out } : undefined;
    },
    async runToDevice(h, o) {
      const B = o.batch;
      check(h, B);
      const one = resident(h, B);
      if (one) {
        return deviceRows(
          await pass(one, B, { batch: B, output: true, keep: true }) as GPUBuffer,
          B * T,
        );
      }
      const y = (await runner.run(h, { batch: B, output: true }))!;
      return deviceRows(upload(ctx, y.data), B * T);
    },
    async take() {
      const m = new Map<string, InputStats>();
      for (const acc of sums.values()) {
        const S = new Float32Array(await readback(ctx, acc.buf, acc.dim * acc.dim * 4));
        const st = { S, n: acc.n };
        for (const nm of acc.names) m.set(nm, st);
        ctx.pool.release(acc.buf);
      }
      sums.clear();
      return m;
    },
    async takeHessians() {
      const m = new Map<string, { H: DeviceMatrix; n: number }>();
      const list: Dispatch[] = [];
      const made: DeviceMatrix[] = [];
      try {
        for (const acc of sums.values()) {
          const { dispatch, matrix } = gpuHessianFromSums(ctx, acc.buf, { d: acc.dim, n: acc.n });
          made.push(matrix);
          list.push(dispatch);
          const st = { H: matrix, n: acc.n };
          for (const nm of acc.names) m.set(nm, st);
        }
        await runDispatches(ctx, list);
      } catch (e) {
        made.forEach((h) => h.release());
        throw e;
      } finally {
        for (const acc of sums.values()) ctx.pool.release(acc.buf);
        sums.clear();
      }
      return m;
    },
    setWeight(name, W) {
      const l = byName.get(name);
      if (!l) throw new QuantlabError(`residentBlockRunner: block ${i} has no linear ${name}`);
      if (W.shape[0] !== l.rows || W.shape[1] !== l.cols) {
        throw new QuantlabError(
          `residentBlockRunner: ${name} is [${l.rows}, ${l.cols}], got [${W.shape}]`,
        );
      }
      if (l.dense) {
        const k = w.owned.indexOf(l.dense);
        if (k >= 0) w.owned.splice(k, 1);
        ctx.pool.release(l.dense);
      }
      l.packed = undefined;
      l.dense = upload(ctx, W.data);
      w.owned.push(l.dense);
    },
    release() {
      if (released) return;
      released = true;
      for (const acc of sums.values()) ctx.pool.release(acc.buf);
      sums.clear();
      ctx.pool.release(...uploads.values());
      uploads.clear();
      w.release();
    },
  };
  return runner;
}
