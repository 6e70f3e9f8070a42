/**
 * Shared pieces of the GPU-resident forward (the decoder of `decoder.ts` and the pipeline's
 * block runner of `block_runner.ts`): weights uploaded once (dense f32, or packed codes for
 * quantized layers), a dispatch recorder, and the recording of one decoder block — the math of
 * the host forward's `block()` (`models/decoder.ts`), kernel by kernel, for Llama/Mistral/Qwen2
 * and OPT (pre- and post-LN). Built only on the backend's dispatch helpers (`../webgpu.ts`); the
 * model arrives as plain data ({@linkcode GpuModel}).
 * @module
 */
import type { GpuModel, GpuModelConfig, GpuPoints } from "./model.ts";
import type { ProductSpec, QuantSpec } from "../ops.ts";
import { QuantlabError, UnsupportedError } from "../../errors.ts";
import {
  dequantGemmDispatch,
  dequantGemvDispatch,
  type Dispatch,
  type ElementwiseKernel,
  fakeQuantDispatches,
  type Fields,
  gemvDispatch,
  type GpuPackedWeights,
  int8ProductDispatches,
  int8Scratch,
  kernelDispatch,
  matmulDispatch,
  residentPacked,
  uniforms,
  upload,
  type WebGPUContext,
} from "../webgpu.ts";

export type { Fields };

/** A linear layer on the GPU: dense [out, in] weights or packed codes, optional bias. */
export interface GpuLinear {
  /** Layer name (no ".weight"). */
  name: string;
  /** Output features. */
  rows: number;
  /** Input features. */
  cols: number;
  /** Dense f32 weight [rows, cols]. */
  dense?: GPUBuffer;
  /** Packed codes (quantized layers). */
  packed?: GpuPackedWeights;
  /** Bias [rows]. */
  bias?: GPUBuffer;
  /**
   * A dense weight over the binding limit, in row blocks (`r0` a multiple of the storage offset
   * alignment): each block's product writes its slice of the output.
   */
  parts?: RowPart[];
}

/** Rows r0..r0+rows of a matrix, in their own buffer. */
export interface RowPart {
  /** First row. */
  r0: number;
  /** Rows. */
  rows: number;
  /** The rows, f32 [rows, cols]. */
  buf: GPUBuffer;
}

/** A norm's weight (and LayerNorm bias). */
export interface GpuNorm {
  /** Weight [d]. */
  w: GPUBuffer;
  /** LayerNorm bias [d] (OPT). */
  b?: GPUBuffer;
}

/** One decoder block's resident weights. */
export interface GpuBlock {
  /** Attention-side norm. */
  attnNorm: GpuNorm;
  /** MLP-side norm. */
  mlpNorm: GpuNorm;
  /** Query projection. */
  q: GpuLinear;
  /** Key projection. */
  k: GpuLinear;
  /** Value projection. */
  v: GpuLinear;
  /** Output projection. */
  o: GpuLinear;
  /** OPT: fc1, fc2; Llama: gate, up, down. */
  mlp: GpuLinear[];
}

/** Uploads a model's tensors to the GPU, keeping the buffers it owns and the bytes it moved. */
export interface GpuUploader {
  /** Buffers this uploader created (released by {@linkcode GpuUploader.release}). */
  readonly owned: GPUBuffer[];
  /** Weight bytes resident through this uploader (dense uploads and packed codes). */
  bytes: number;
  /** Linears served from packed codes. */
  packedLayers: number;
  /** Uploads tensor `name` as f32. */
  tensor(name: string): Promise<GPUBuffer>;
  /** Uploads the rows of matrix `name` in blocks that fit the binding limit (one when it fits). */
  rowParts(name: string): Promise<RowPart[]>;
  /** Uploads linear `name`: packed when `model.packed[name]` dequantizes to its weight, else dense. */
  linear(name: string): Promise<GpuLinear>;
  /** Uploads norm `name` (weight; bias for OPT). */
  norm(name: string): Promise<GpuNorm>;
  /** Uploads block `i`. */
  block(i: number): Promise<GpuBlock>;
  /** Returns every owned buffer to the pool. */
  release(): void;
}

/**
 * Weight uploads for `model` on `ctx` (see {@linkcode GpuUploader}); `maxBindingBytes` overrides
 * the device's binding limit (tests force row splits with it).
 */
export function gpuUploader(
  ctx: WebGPUContext,
  model: GpuModel,
  opts: { maxBindingBytes?: number } = {},
): GpuUploader {
  const fam = model.family;
  const limit = opts.maxBindingBytes ?? ctx.device.limits.maxStorageBufferBindingSize;
  const align = ctx.device.limits.minStorageBufferOffsetAlignment / 4;
  const split = (data: Float32Array, rows: number, cols: number): RowPart[] => {
    let per = rows;
    if (data.byteLength > limit) per = Math.floor(limit / (4 * cols) / align) * align;
    if (per < 1) throw new QuantlabError(`a row of ${cols} floats exceeds the binding limit`);
    const parts: RowPart[] = [];
    for (let r0 = 0; r0 < rows; r0 += per) {
      const nr = Math.min(per, rows - r0);
      const buf = upload(ctx, data.subarray(r0 * cols, (r0 + nr) * cols));
      self.owned.push(buf);
      parts.push({ r0, rows: nr, buf });
    }
    self.bytes += data.byteLength;
    return parts;
  };
  const self: GpuUploader = {
    owned: [],
    bytes: 0,
    packedLayers: 0,
    async tensor(name) {
      const t = await model.weights.get(name);
      self.bytes += t.data.byteLength;
      const b = upload(ctx, t.data);
      self.owned.push(b);
      return b;
    },
    async rowParts(name) {
      const t = await model.weights.get(name);
      return split(t.data, t.shape[0], t.shape[1]);
    },
    async linear(name) {
      const W = await model.weights.get(`${name}.weight`);
      const [rows, cols] = W.shape;
      const meta = model.packed?.[name];
      const packed = meta ? residentPacked(ctx, meta, W) : undefined;
      const out: GpuLinear = { name, rows, cols };
      if (packed) {
        out.packed = packed;
        self.packedLayers++;
        self.bytes += packed.qweight.size + packed.scaleZero.size + packed.chunkGroup.size +
          packed.colIndex.size;
      } else if (W.data.byteLength > limit) {
        out.parts = split(W.data, rows, cols);
      } else {
        out.dense = upload(ctx, W.data);
        self.owned.push(out.dense);
        self.bytes += W.data.byteLength;
      }
      if (model.weights.has(`${name}.bias`)) out.bias = await self.tensor(`${name}.bias`);
      return out;
    },
    async norm(name) {
      return {
        w: await self.tensor(`${name}.weight`),
        b: fam.norm === "layer" ? await self.tensor(`${name}.bias`) : undefined,
      };
    },
    async block(i) {
      const n = fam.block(i);
      const mlp: GpuLinear[] = [];
      for (const name of n.mlp) mlp.push(await self.linear(name));
      return {
        attnNorm: await self.norm(n.attnNorm),
        mlpNorm: await self.norm(n.mlpNorm),
        q: await self.linear(n.q),
        k: await self.linear(n.k),
        v: await self.linear(n.v),
        o: await self.linear(n.o),
        mlp,
      };
    },
    release() {
      ctx.pool.release(...self.owned.splice(0));
    },
  };
  return self;
}

/**
 * RoPE cos/sin tables [positions, headDim/2] exactly as the host forward computes them (the
 * angle `fround(fround(p) · fround(inv_freq))`, `inv` with rope scaling applied, cos/sin
 * rounded to f32).
 */
export function ropeTablesFor(
  inv: Float64Array | undefined,
  positions: number,
): { cos: Float32Array; sin: Float32Array } {
  if (!inv) throw new QuantlabError("GpuModel: a rotary family needs ropeInvFreq");
  const half = inv.length;
  const cos = new Float32Array(positions * half), sin = new Float32Array(positions * half);
  for (let pos = 0; pos < positions; pos++) {
    for (let i = 0; i < half; i++) {
      const af = Math.fround(Math.fround(pos) * Math.fround(inv[i]));
      cos[pos * half + i] = Math.cos(af);
      sin[pos * half + i] = Math.sin(af);
    }
  }
  return { cos, sin };
}

/**
 * Why {@linkcode recordBlock} cannot compute `model`'s block as the host forward does over
 * `tokens` attended positions (a sentence), or `undefined`: a sliding window shorter than them,
 * a head dimension the attention kernel does not take, heads not a multiple of the KV heads, or
 * an OPT activation without a kernel.
 */
export function blockUnsupported(
  model: Pick<GpuModel, "config" | "family">,
  tokens: number,
): string | undefined {
  const cfg = model.config;
  if (cfg.slidingWindow && tokens > cfg.slidingWindow) {
    return `sliding-window attention (window ${cfg.slidingWindow} < ${tokens} tokens)`;
  }
  if (cfg.headDim % 4 !== 0 || cfg.headDim > 256) {
    return `head dimension ${cfg.headDim} (the attention kernel takes multiples of 4 up to 256)`;
  }
  if (cfg.numHeads % cfg.numKvHeads !== 0) return "heads not a multiple of KV heads";
  if (model.family.mlp === "fc" && !["relu", "gelu"].includes(cfg.activation)) {
    return `OPT activation "${cfg.activation}"`;
  }
  return undefined;
}

/** A position-dependent uniform buffer of a recorded list: rewritten before each submission. */
export interface DynUniform {
  /** The buffer bound in the recorded bind group. */
  buf: GPUBuffer;
  /** Its fields for the step's first position. */
  fields: (pos0: number) => Fields;
}

/** Collects a list of dispatches (one submission) for the resident forward. */
export interface Recorder {
  /** The device. */
  readonly ctx: WebGPUContext;
  /** The dispatches, in order. */
  readonly list: Dispatch[];
  /** The position-dependent uniforms. */
  readonly dyn: DynUniform[];
  /** A uniform buffer whose fields depend on the step's first position. */
  U(fields: (pos0: number) => Fields): GPUBuffer;
  /** One elementwise dispatch over `n` elements. */
  ew(kernel: ElementwiseKernel, u: GPUBuffer | Fields, bufs: GPUBuffer[], n: number): void;
  /** `y = x · Wᵀ (+ b)` for `m` rows: GEMV at m = 1, else the tiled matmul or dequant GEMM. */
  lin(L: GpuLinear, x: GPUBuffer, y: GPUBuffer, m: number): void;
  /** The family's norm (RMSNorm or LayerNorm) over `rows` rows of width `d`. */
  norm(nw: GpuNorm, x: GPUBuffer, y: GPUBuffer, rows: number): void;
}

/** A {@linkcode Recorder} for `model`. */
export function recorder(ctx: WebGPUContext, model: Pick<GpuModel, "config" | "family">): Recorder {
  const cfg = model.config;
  const list: Dispatch[] = [];
  const dyn: DynUniform[] = [];
  const layerNorm = model.family.norm === "layer";
  const r: Recorder = {
    ctx,
    list,
    dyn,
    U(fields) {
      const buf = uniforms(ctx, fields(0));
      dyn.push({ buf, fields });
      return buf;
    },
    ew(kernel, u, bufs, n) {
      list.push(kernelDispatch(ctx, kernel, u, bufs, n));
    },
    lin(L, x, y, m) {
      if (L.parts) {
        for (const p of L.parts) {
          list.push(
            m === 1
              ? gemvDispatch(ctx, {
                x,
                w: p.buf,
                y: { buffer: y, offset: 4 * p.r0, size: 4 * p.rows },
              }, { n: p.rows, k: L.cols })
              : matmulDispatch(ctx, { a: x, b: p.buf, c: y }, {
                m,
                k: L.cols,
                n: p.rows,
                transB: true,
                ldc: L.rows,
                offC: p.r0,
              }),
          );
        }
      } else if (L.packed) {
        list.push(
          m === 1
            ? dequantGemvDispatch(ctx, L.packed, { x, y })
            : dequantGemmDispatch(ctx, L.packed, { x, y, m }),
        );
      } else if (m === 1) {
        list.push(gemvDispatch(ctx, { x, w: L.dense!, y }, { n: L.rows, k: L.cols }));
      } else {
        list.push(
          matmulDispatch(ctx, { a: x, b: L.dense!, c: y }, {
            m,
            k: L.cols,
            n: L.rows,
            transB: true,
          }),
        );
      }
      if (L.bias) r.ew("bias", [m * L.rows, L.rows, 0, 0], [L.bias, y], m * L.rows);
    },
    norm(nw, x, y, rows) {
      const u = [rows, cfg.hiddenSize, { f: cfg.normEps }, 0];
      list.push(
        layerNorm
          ? kernelDispatch(ctx, "layernorm", u, [x, nw.w, nw.b!, y], rows)
          : kernelDispatch(ctx, "rmsnorm", u, [x, nw.w, y], rows),
      );
    },
  };
  return r;
}

/** Activation buffers of one block pass over `B·T` rows. */
export interface BlockBuffers {
  /** Residual stream [rows, d] (in and out; post-LN swaps it with `x`). */
  h: GPUBuffer;
  /** Normed input / scratch [rows, d]. */
  x: GPUBuffer;
  /** Queries [rows, nH·hd]. */
  q: GPUBuffer;
  /** Keys [rows, nKV·hd]. */
  k: GPUBuffer;
  /** Values [rows, nKV·hd]. */
  v: GPUBuffer;
  /** Attention output [rows, nH·hd]. */
  att: GPUBuffer;
  /** Gate / fc1 output [rows, ff]. */
  g: GPUBuffer;
  /** Up projection [rows, ff] (Llama). */
  u: GPUBuffer;
  /** A linear's fake-quantized input [rows, max(d, nH·hd, ff)] (with `linearInput` specs). */
  xq?: GPUBuffer;
}

/**
 * Records LLM.int8()'s operands for `L` under product spec `ps` (`kernels/llm_int8.ts`): the
 * outlier columns of `x`'s `rows` rows, `X̃` and `W̃` in shared scratch; returns the linear with
 * `W̃` as its dense weight and the `X̃` buffer, whose plain product is the int8 product.
 */
function int8Linear(
  r: Recorder,
  L: GpuLinear,
  x: GPUBuffer,
  rows: number,
  ps: ProductSpec,
): { L: GpuLinear; x: GPUBuffer } {
  if (!L.dense) {
    throw new UnsupportedError(
      `points.linearProduct(${L.name}): LLM.int8() needs the dense f32 weight resident (not packed or split)`,
    );
  }
  const xq = int8Scratch(r.ctx, "x", rows * L.cols * 4);
  const wq = int8Scratch(r.ctx, "w", L.rows * L.cols * 4);
  const mask = int8Scratch(r.ctx, "mask", L.cols * 4);
  r.list.push(
    ...int8ProductDispatches(r.ctx, { x, w: L.dense, xq, wq, mask }, {
      spec: ps,
      rows,
      out: L.rows,
      cols: L.cols,
    }),
  );
  return { L: { name: L.name, rows: L.rows, cols: L.cols, dense: wq, bias: L.bias }, x: xq };
}

/**
 * Allocates the {@linkcode BlockBuffers} of a pass over `rows` rows with `alloc(bytes)` (`h`
 * given, or allocated too; OPT has no up projection and gets a placeholder `u`).
 */
export function allocBlockBuffers(
  model: Pick<GpuModel, "config" | "family" | "points">,
  rows: number,
  alloc: (bytes: number) => GPUBuffer,
  h?: GPUBuffer,
): BlockBuffers {
  const cfg = model.config;
  const qw = cfg.numHeads * cfg.headDim, kw = cfg.numKvHeads * cfg.headDim;
  const d = cfg.hiddenSize, ff = cfg.intermediateSize;
  return {
    h: h ?? alloc(rows * d * 4),
    x: alloc(rows * d * 4),
    q: alloc(rows * qw * 4),
    k: alloc(rows * kw * 4),
    v: alloc(rows * kw * 4),
    att: alloc(rows * qw * 4),
    g: alloc(rows * ff * 4),
    u: alloc(model.family.mlp === "fc" ? 16 : rows * ff * 4),
    xq: model.points?.hasLinearInput ? alloc(rows * Math.max(d, qw, ff) * 4) : undefined,
  };
}

/** Bytes per row of {@linkcode BlockBuffers} (what a pass of `rows` rows holds on the GPU). */
export function blockBytesPerRow(cfg: GpuModelConfig): number {
  const qw = cfg.numHeads * cfg.headDim, kw = cfg.numKvHeads * cfg.headDim;
  return 4 * (2 * cfg.hiddenSize + 2 * qw + 2 * kw + 2 * cfg.intermediateSize);
}

/** How a block pass attends. */
export interface BlockAttention {
  /** Rows per sequence. */
  T: number;
  /** Sequences (no cache); must be 1 with a cache. */
  B: number;
  /** RoPE tables (Llama family) covering the positions used. */
  rope?: { cos: GPUBuffer; sin: GPUBuffer };
  /** KV cache of this layer [capacity, nKV·hd]: new keys are appended at the step's position. */
  cache?: { K: GPUBuffer; V: GPUBuffer };
  /**
   * Quantizer specs at the quantization points (`models/points.ts`; `probs` is not served
   * here), and the resident buffer of a spec's static scales.
   */
  points?: { specs: GpuPoints; scales: (spec: QuantSpec) => GPUBuffer | undefined };
}

/**
 * Records block `L` over `B·T` rows held in `io.h`. Without a cache each of the B sequences
 * attends to its own T keys (positions 0..T−1); with one, the T new tokens sit at the step's
 * position (dynamic uniforms) and are appended to the cache first. `collect(linears, x, rows)`
 * is called once per distinct linear input, before its products are recorded, in order
 * (q/k/v, o, gate/up or fc1, down or fc2); when it returns true the recording stops there (the
 * pipeline only needs the inputs). Returns the buffers holding the residual stream and scratch
 * afterwards (post-LN swaps them).
 */
export function recordBlock(
  r: Recorder,
  model: Pick<GpuModel, "config" | "family">,
  L: GpuBlock,
  io: BlockBuffers,
  a: BlockAttention,
  collect?: (linears: GpuLinear[], x: GPUBuffer, rows: number) => boolean,
): { h: GPUBuffer; x: GPUBuffer; stopped: boolean } {
  const cfg = model.config;
  const fam = model.family;
  const fc = fam.mlp === "fc";
  const { numHeads: nH, numKvHeads: nKV, headDim: hd, hiddenSize: d } = cfg;
  const kw = nKV * hd, ff = cfg.intermediateSize;
  const rows = a.B * a.T, T = a.T;
  const preLN = fam.norm === "rms" || cfg.doLayerNormBefore;
  let h = io.h, x = io.x;
  const stop = (ls: GpuLinear[], inp: GPUBuffer) => collect?.(ls, inp, rows) ?? false;
  const pts = a.points?.specs;
  /** Fake-quantizes [rows, cols] of `y` (in place, or from `src`) by `spec`, if any. */
  const fq = (
    spec: QuantSpec | undefined,
    y: GPUBuffer,
    cols: number,
    where: string,
    src?: GPUBuffer,
  ) => {
    if (!spec) return;
    const scales = a.points!.scales(spec);
    r.list.push(...fakeQuantDispatches(r.ctx, { x: src, y, scales }, { spec, rows, cols, where }));
  };
  /** A block linear with its input and output specs. */
  const lin = (Lin: GpuLinear, inp: GPUBuffer, out: GPUBuffer) => {
    const si = pts?.linearInput(Lin.name);
    if (si) {
      fq(si, io.xq!, Lin.cols, `points.linearInput(${Lin.name})`, inp);
      inp = io.xq!;
    }
    const ps = pts?.linearProduct?.(Lin.name);
    if (ps) {
      const o = int8Linear(r, Lin, inp, rows, ps);
      r.lin(o.L, o.x, out, rows);
    } else r.lin(Lin, inp, out, rows);
    fq(pts?.linearOutput(Lin.name), out, Lin.rows, `points.linearOutput(${Lin.name})`);
  };

  const inp = preLN ? x : h;
  if (preLN) r.norm(L.attnNorm, h, x, rows);
  if (stop([L.q, L.k, L.v], inp)) return { h, x, stopped: true };
  lin(L.q, inp, io.q);
  lin(L.k, inp, io.k);
  lin(L.v, inp, io.v);
  const qw = nH * hd;
  fq(pts?.qPreRope, io.q, qw, "points.qPreRope");
  fq(pts?.kPreRope, io.k, kw, "points.kPreRope");
  if (a.rope) {
    for (const [buf, heads] of [[io.q, nH], [io.k, nKV]] as const) {
      const u = a.cache
        ? r.U((pos0) => [T, heads, hd, pos0, 0, 0, 0, 0])
        : uniforms(r.ctx, [rows, heads, hd, 0, T, 0, 0, 0]);
      const groups = Math.ceil((rows * heads * hd) / 2 / 256);
      r.list.push(kernelDispatch(r.ctx, "rope", u, [buf, a.rope.cos, a.rope.sin], groups));
    }
  }
  fq(pts?.q, io.q, qw, "points.q");
  fq(pts?.k, io.k, kw, "points.k");
  fq(pts?.kvWrite?.k, io.k, kw, "points.kvWrite.k");
  fq(pts?.v, io.v, kw, "points.v");
  fq(pts?.kvWrite?.v, io.v, kw, "points.kvWrite.v");
  const scale = { f: 1 / Math.sqrt(hd) };
  let ua: GPUBuffer, K = io.k, V = io.v;
  if (a.cache) {
    for (const [src, dst] of [[io.k, a.cache.K], [io.v, a.cache.V]]) {
      r.ew("copyRange", r.U((pos0) => [T * kw, 0, pos0 * kw, 0]), [src, dst], T * kw);
    }
    ({ K, V } = a.cache);
    ua = r.U((pos0) => [T, pos0 + T, nH, nKV, pos0, scale, 1, 0]);
  } else {
    ua = uniforms(r.ctx, [T, T, nH, nKV, 0, scale, a.B, 0]);
  }
  r.list.push(
    kernelDispatch(r.ctx, { attention: { headDim: hd } }, ua, [io.q, K, V, io.att], rows * nH),
  );
  if (stop([L.o], io.att)) return { h, x, stopped: true };
  // x is free after the q/k/v products: it takes the output projection, then the residual.
  lin(L.o, io.att, x);
  r.ew("add", [rows * d, 0, 0, 0], [x, h], rows * d);
  if (!preLN) {
    r.norm(L.attnNorm, h, x, rows);
    [h, x] = [x, h];
  }
  const y = preLN ? x : h;
  if (preLN) r.norm(L.mlpNorm, h, x, rows);
  const [first, ...rest] = L.mlp;
  const firstGroup = fc ? [first] : [first, rest[0]];
  if (stop(firstGroup, y)) return { h, x, stopped: true };
  const down = fc ? rest[0] : rest[1];
  if (fc) {
    lin(first, y, io.g);
    r.ew(
      cfg.activation as "relu" | "gelu",
      [rows * ff, 0, 0, 0],
      [io.g],
      rows * ff,
    );
  } else {
    lin(first, y, io.g);
    lin(rest[0], y, io.u);
    r.ew("swiglu", [rows * ff, 0, 0, 0], [io.u, io.g], rows * ff);
  }
  if (stop([down], io.g)) return { h, x, stopped: true };
  // the MLP input is dead after the up/fc1 products: x takes the down projection.
  lin(down, io.g, x);
  r.ew("add", [rows * d, 0, 0, 0], [x, h], rows * d);
  if (!preLN) {
    r.norm(L.mlpNorm, h, x, rows);
    [h, x] = [x, h];
  }
  return { h, x, stopped: false };
}
