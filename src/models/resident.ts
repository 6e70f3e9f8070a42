/**
 * A decoder resident on the GPU: every weight (dense f32, or packed codes for quantized layers),
 * the KV cache and the activations stay in WebGPU buffers, and one forward step — embeddings, all
 * blocks, final norm and LM head — is ONE submission with one readback of the logits. The
 * host-driven forward (`decoder.ts` with the WebGPU backend) waits for the GPU after every product;
 * Deno polls GPU completion about every 10 ms, so that costs ~10 ms per linear layer, while a
 * resident step costs one wait per token.
 *
 * Same math as `decoder.ts` (Llama/Mistral/Qwen2 and OPT pre- and post-LN), kernel by kernel:
 * RMSNorm/LayerNorm, dense GEMV (one token) or the tiled matmul (prefill), packed dequant
 * GEMV/GEMM from `model.packed`, RoPE with cos/sin tables built on the CPU as the TypeScript
 * decoder builds them (rope scaling included), causal GQA attention over the cache, SwiGLU, and
 * the OPT activations. Decode steps reuse one recorded dispatch list: only the position-dependent
 * uniforms (RoPE offset, cache offsets, attention length) are rewritten per token.
 *
 * Quantization points (`model.points`, `points.ts`) run on the GPU with the fake-quant kernel,
 * in the host forward's order, so a model with activation/KV-cache specs stays resident; a
 * prefill split into token chunks (over the binding limit) gives per-tensor and per-channel specs
 * the chunk's rows, not the whole prompt's.
 *
 * Not served (use the host forward): JS forward hooks (they need host tensors), a `probs` spec
 * (the fused online-softmax attention kernel never holds a row of probabilities),
 * sliding-window attention when the cache is longer than the window, head dimensions the attention
 * kernel does not take (multiples of 4 up to 256), and tensors over the device's
 * `maxStorageBufferBindingSize`. {@linkcode residentUnsupported} says why.
 * @module
 */
import type { Model } from "./model.ts";
import { QuantlabError, UnsupportedError } from "../errors.ts";
import { familyOf } from "./family.ts";
import { checkPoints, linearSpec, type QuantSpec } from "./points.ts";
import type { Backend } from "../backend/backend.ts";
import { getBackend } from "../backend/device.ts";
import {
  type Dispatch,
  kernelDispatch,
  runAndRead,
  runStepsAndRead,
  scratch,
  uniforms,
  upload,
  type WebGPUBackend,
  writeUniforms,
} from "../backend/webgpu.ts";
import {
  allocBlockBuffers,
  type BlockBuffers,
  blockUnsupported,
  type DynUniform,
  type GpuBlock,
  type GpuLinear,
  gpuUploader,
  recordBlock,
  recorder,
  ropeTablesFor,
} from "./_gpu_block.ts";

/** Tokens per wait of {@linkcode ResidentDecoder.greedy} (the decode loop's GPU round trips). */
export const GREEDY_CHUNK = 32;

/** Options of {@linkcode residentDecoder}. */
export interface ResidentOptions {
  /** Tokens the KV cache holds (default the model's context). */
  capacity?: number;
  /**
   * Override of the device's maxStorageBufferBindingSize (tests force splits with it): weights
   * over it are uploaded in row blocks, and prefills whose activations or logits exceed it run
   * in token chunks through the cache (same result).
   */
  maxBindingBytes?: number;
}

/** Options of {@linkcode ResidentDecoder.step}. */
export interface StepOptions {
  /** Return the logits of every new token [T, vocab] (default: the last token's only). */
  allLogits?: boolean;
}

/** A GPU-resident decoder with its KV cache (see the module doc). */
export interface ResidentDecoder {
  /** Tokens in the cache. */
  readonly length: number;
  /** Cache capacity in tokens. */
  readonly capacity: number;
  /** Bytes of weights this decoder holds on the GPU (dense uploads, packed codes, norms). */
  readonly weightBytes: number;
  /** Layers served from packed codes. */
  readonly packedLayers: number;
  /**
   * Appends `ids` at position `length` and returns the logits: [vocab] of the last token, or
   * [ids.length, vocab] with `allLogits`. One submission and one readback.
   */
  step(ids: number[], opts?: StepOptions): Promise<Float32Array>;
  /**
   * Appends `ids` like {@linkcode ResidentDecoder.step} and returns, per new token t, the
   * negative log-likelihood of `targets[t]` under its logits (`log Σ exp(logits) − logit`),
   * computed on the GPU: T floats come back instead of [T, vocab] logits.
   */
  nll(ids: number[], targets: ArrayLike<number>): Promise<Float32Array>;
  /**
   * Greedy decoding on the GPU: feeds `first` at position `length`, then `count − 1` more tokens,
   * each the argmax (first index of the maximum, as `sampleToken` at temperature 0) of the
   * previous step's logits, written by the GPU into the next step's input; returns the `count`
   * tokens chosen. The steps are queued as separate submissions with one wait per
   * {@linkcode GREEDY_CHUNK} tokens, so the ~10 ms GPU round trip is paid per chunk, not per
   * token. The cache grows by `count`.
   */
  greedy(first: number, count: number): Promise<number[]>;
  /** Empties the cache (positions restart at 0; the weights stay). */
  reset(): void;
  /** Frees the cache, activations and this decoder's dense uploads. */
  release(): void;
}

/**
 * Why `model` cannot run resident on `backend` (a sentence), or `undefined` when it can.
 * Checks the family's features and every tensor against the binding limit.
 */
export function residentUnsupported(
  model: Model,
  backend: WebGPUBackend,
  opts: ResidentOptions & { hooks?: unknown } = {},
): string | undefined {
  // Weights over the binding limit are split by rows, prefills by tokens: only a layer's KV
  // cache must fit one binding.
  const cfg = model.config;
  const cap = opts.capacity ?? cfg.maxPositions;
  if (opts.hooks ?? model.hooks) return "forward hooks need host tensors";
  if (model.points?.probs) {
    return "a probs spec (the fused attention kernel never materializes the probabilities)";
  }
  const prod = model.points?.linearProduct;
  const packedInt8 = prod && Object.keys(model.packed ?? {}).find((n) => linearSpec(prod, n));
  if (packedInt8) {
    return `an LLM.int8() product spec on packed ${packedInt8} (needs its dense weight)`;
  }
  const why = blockUnsupported(cfg, cap);
  if (why) return why;
  const limit = opts.maxBindingBytes ?? backend.ctx.device.limits.maxStorageBufferBindingSize;
  const kvBytes = 4 * cap * cfg.numKvHeads * cfg.headDim;
  if (kvBytes > limit) return `a layer's KV cache (${kvBytes} bytes) exceeds the binding limit`;
  return undefined;
}

/** Buffers of one step's activations for T tokens. */
interface StepBuffers extends BlockBuffers {
  ids: GPUBuffer;
  e?: GPUBuffer;
  last: GPUBuffer;
  xl: GPUBuffer;
  xp?: GPUBuffer;
  logits: GPUBuffer;
  targets?: GPUBuffer;
  nll?: GPUBuffer;
}

/** What a step returns: the last token's logits, every token's, or every token's NLL. */
type StepMode = "last" | "all" | "nll";

interface Recorded {
  list: Dispatch[];
  dyn: DynUniform[];
  bufs: StepBuffers;
  /** The buffer read back and its bytes. */
  out: GPUBuffer;
  outBytes: number;
  own: GPUBuffer[];
}

/**
 * Uploads `model` to the GPU of `backend` and returns a {@linkcode ResidentDecoder}. Quantized
 * layers (`model.packed[name]` whose codes dequantize to the weight bit for bit) stay packed
 * (shared with the backend's resident packed store); every other linear is uploaded dense.
 * Throws {@linkcode UnsupportedError} naming the reason when the model cannot run resident.
 */
export async function residentDecoder(
  model: Model,
  backend: WebGPUBackend,
  opts: ResidentOptions = {},
): Promise<ResidentDecoder> {
  const why = residentUnsupported(model, backend, opts);
  if (why) throw new UnsupportedError(`residentDecoder: ${why}; use the host forward`);
  const ctx = backend.ctx;
  const cfg = model.config;
  const fam = familyOf(cfg);
  const learned = fam.positions === "learned";
  const capacity = opts.capacity ?? cfg.maxPositions;
  const { numHeads: nH, numKvHeads: nKV, headDim: hd, hiddenSize: d } = cfg;
  const qw = nH * hd, kw = nKV * hd, ff = cfg.intermediateSize, V = cfg.vocabSize;
  const w = gpuUploader(ctx, model, { maxBindingBytes: opts.maxBindingBytes });
  const limit = opts.maxBindingBytes ?? ctx.device.limits.maxStorageBufferBindingSize;
  const own = (b: GPUBuffer) => {
    w.owned.push(b);
    return b;
  };
  const has = (name: string) => model.weights.has(name);
  const E = await w.rowParts(`${fam.embed}.weight`);
  const de = learned ? cfg.wordEmbedProjDim : d;
  const posTable = learned ? await w.tensor(`${fam.positionTable}.weight`) : undefined;
  const projIn = fam.projIn && de !== d ? await w.linear(fam.projIn) : undefined;
  const projOut = fam.projOut && de !== d ? await w.linear(fam.projOut) : undefined;
  const layers: GpuBlock[] = [];
  for (let i = 0; i < cfg.numLayers; i++) layers.push(await w.block(i));
  const finalNorm = fam.norm === "rms"
    ? await w.norm(fam.finalNorm)
    : cfg.doLayerNormBefore && has(`${fam.finalNorm}.weight`)
    ? await w.norm(fam.finalNorm)
    : undefined;
  const head: GpuLinear = has("lm_head.weight")
    ? await w.linear("lm_head")
    : E.length === 1
    ? { name: "lm_head", rows: V, cols: de, dense: E[0].buf }
    : { name: "lm_head", rows: V, cols: de, parts: E };
  let rope: { cos: GPUBuffer; sin: GPUBuffer } | undefined;
  if (fam.positions === "rope") {
    const t = ropeTablesFor(cfg, capacity);
    rope = { cos: own(upload(ctx, t.cos)), sin: own(upload(ctx, t.sin)) };
  }
  const Kc = layers.map(() => own(scratch(ctx, capacity * kw * 4)));
  const points = model.points;
  if (points) checkPoints(points, cfg);
  const staticScales = new Map<QuantSpec, GPUBuffer>();
  const specs = points && {
    specs: points,
    scales: (spec: QuantSpec) => {
      if (!spec.scales) return undefined;
      let b = staticScales.get(spec);
      if (!b) staticScales.set(spec, b = own(upload(ctx, spec.scales)));
      return b;
    },
  };
  const Vc = layers.map(() => own(scratch(ctx, capacity * kw * 4)));

  /** Records the dispatches of one step of T tokens (position-dependent uniforms in `dyn`). */
  const record = (T: number, mode: StepMode): Recorded => {
    const all = mode !== "last";
    const mine: GPUBuffer[] = [];
    const s = (bytes: number) => {
      const b = scratch(ctx, Math.max(16, bytes));
      mine.push(b);
      return b;
    };
    const bufs: StepBuffers = {
      ...allocBlockBuffers(cfg, T, s, undefined, { points }),
      ids: s(T * 4),
      e: projIn ? s(T * de * 4) : undefined,
      last: s(d * 4),
      xl: s(d * 4),
      xp: projOut ? s((all ? T : 1) * de * 4) : undefined,
      logits: s((all ? T : 1) * V * 4),
      targets: mode === "nll" ? s(T * 4) : undefined,
      nll: mode === "nll" ? s(T * 4) : undefined,
    };
    const r = recorder(ctx, cfg);
    // Embeddings (OPT: project_in, then learned positions at offset 2).
    const e0 = projIn ? bufs.e! : bufs.h;
    for (const p of E) r.ew("embed", [T * de, de, p.r0, p.rows], [bufs.ids, p.buf, e0], T * de);
    if (projIn) r.lin(projIn, e0, bufs.h, T);
    if (posTable) {
      r.ew(
        "add",
        r.U((pos0) => [T * d, (pos0 + fam.positionOffset) * d, 0, 0]),
        [posTable, bufs.h],
        T * d,
      );
    }
    let io: BlockBuffers = bufs;
    layers.forEach((L, i) => {
      const out = recordBlock(r, cfg, L, io, {
        T,
        B: 1,
        rope,
        cache: { K: Kc[i], V: Vc[i] },
        points: specs,
      });
      io = { ...io, h: out.h, x: out.x };
    });
    // Final norm, OPT project_out, LM head.
    let rows = T, src = io.h;
    if (!all) {
      r.ew("copyRange", [d, (T - 1) * d, 0, 0], [io.h, bufs.last], d);
      rows = 1;
      src = bufs.last;
    }
    let hx = src;
    if (finalNorm) {
      hx = all ? io.x : bufs.xl;
      r.norm(finalNorm, src, hx, rows);
    }
    if (projOut) {
      r.lin(projOut, hx, bufs.xp!, rows);
      hx = bufs.xp!;
    }
    r.lin(head, hx, bufs.logits, rows);
    if (mode === "nll") {
      r.list.push(
        kernelDispatch(ctx, "nll", [T, V, 0, 0], [bufs.logits, bufs.targets!, bufs.nll!], T),
      );
      return { list: r.list, dyn: r.dyn, bufs, out: bufs.nll!, outBytes: T * 4, own: mine };
    }
    return {
      list: r.list,
      dyn: r.dyn,
      bufs,
      out: bufs.logits,
      outBytes: rows * V * 4,
      own: mine,
    };
  };

  let length = 0;
  let decodeRec: (Recorded & { k: GPUBuffer; tokens: GPUBuffer }) | undefined;
  /** The one-token step, with the greedy argmax (into `ids` and `tokens[k]`) at its end. */
  const decodeStep = () => {
    if (decodeRec) return decodeRec;
    const rec = record(1, "last");
    const tokens = scratch(ctx, GREEDY_CHUNK * 4);
    rec.own.push(tokens);
    const k = uniforms(ctx, [V, 0, 0, 0]);
    rec.list.push(kernelDispatch(ctx, "argmax", k, [rec.bufs.logits, rec.bufs.ids, tokens], 1));
    decodeRec = { ...rec, k, tokens };
    return decodeRec;
  };
  let released = false;
  const run = async (
    rec: Recorded,
    ids: number[],
    pos0: number,
    targets?: ArrayLike<number>,
  ): Promise<Float32Array> => {
    ctx.device.queue.writeBuffer(rec.bufs.ids, 0, Uint32Array.from(ids));
    if (targets) ctx.device.queue.writeBuffer(rec.bufs.targets!, 0, Uint32Array.from(targets));
    for (const u of rec.dyn) writeUniforms(ctx, u.buf, u.fields(pos0));
    return new Float32Array(await runAndRead(ctx, rec.list, rec.out, rec.outBytes));
  };
  const checkIds = (ids: ArrayLike<number>, what: string) => {
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!(Number.isInteger(id) && id >= 0 && id < V)) {
        throw new QuantlabError(`residentDecoder: ${what} ${id} outside the vocabulary (${V})`);
      }
    }
  };
  /** Runs `ids` in token chunks that fit one binding; concatenates what `mode` returns. */
  const chunked = async (ids: number[], mode: StepMode, targets?: ArrayLike<number>) => {
    if (released) throw new QuantlabError("residentDecoder: step() after release()");
    const T = ids.length;
    if (T < 1) throw new QuantlabError("residentDecoder: step() needs at least one token");
    if (length + T > capacity) {
      throw new QuantlabError(
        `residentDecoder: ${length + T} tokens exceed the cache capacity (${capacity})`,
      );
    }
    checkIds(ids, "token id");
    if (targets) {
      if (targets.length !== T) {
        throw new QuantlabError(`residentDecoder: ${targets.length} targets for ${T} tokens`);
      }
      checkIds(targets, "target id");
    }
    if (T === 1 && mode === "last") {
      const out = await run(decodeStep(), ids, length);
      length += 1;
      return out;
    }
    // Token chunks whose widest activation (or logits) fits one binding; the cache makes a
    // chunked prefill the same computation.
    const widest = 4 * Math.max(d, qw, ff, de, mode === "last" ? 0 : V);
    const per = Math.max(1, Math.floor(limit / widest));
    const width = mode === "all" ? V : mode === "nll" ? 1 : 0;
    const out = new Float32Array(mode === "last" ? V : T * width);
    for (let t0 = 0; t0 < T; t0 += per) {
      const chunk = ids.slice(t0, t0 + per);
      const rec = record(chunk.length, mode);
      try {
        const part = await run(
          rec,
          chunk,
          length,
          targets && Array.from(targets).slice(t0, t0 + per),
        );
        out.set(part, mode === "last" ? 0 : t0 * width);
      } finally {
        ctx.pool.release(...rec.own);
      }
      length += chunk.length;
    }
    return out;
  };
  return {
    get length() {
      return length;
    },
    capacity,
    weightBytes: w.bytes,
    packedLayers: w.packedLayers,
    step(ids: number[], so: StepOptions = {}): Promise<Float32Array> {
      return chunked(ids, so.allLogits ? "all" : "last");
    },
    nll(ids: number[], targets: ArrayLike<number>): Promise<Float32Array> {
      return chunked(ids, "nll", targets);
    },
    async greedy(first: number, count: number): Promise<number[]> {
      if (released) throw new QuantlabError("residentDecoder: greedy() after release()");
      if (!(Number.isInteger(count) && count >= 1)) {
        throw new QuantlabError(`residentDecoder: greedy() needs count ≥ 1, got ${count}`);
      }
      if (length + count > capacity) {
        throw new QuantlabError(
          `residentDecoder: ${length + count} tokens exceed the cache capacity (${capacity})`,
        );
      }
      checkIds([first], "token id");
      const rec = decodeStep();
      const out: number[] = [];
      for (let c0 = 0; c0 < count; c0 += GREEDY_CHUNK) {
        const n = Math.min(GREEDY_CHUNK, count - c0);
        const steps = Array.from({ length: n }, (_, s) => {
          const pos = length + s;
          return {
            before: () => {
              if (c0 === 0 && s === 0) {
                ctx.device.queue.writeBuffer(rec.bufs.ids, 0, Uint32Array.of(first));
              }
              for (const u of rec.dyn) writeUniforms(ctx, u.buf, u.fields(pos));
              writeUniforms(ctx, rec.k, [V, s, 0, 0]);
            },
            dispatches: rec.list,
          };
        });
        const toks = new Uint32Array(await runStepsAndRead(ctx, steps, rec.tokens, n * 4));
        length += n;
        out.push(...toks);
      }
      return out;
    },
    reset() {
      length = 0;
    },
    release() {
      if (released) return;
      released = true;
      if (decodeRec) ctx.pool.release(...decodeRec.own);
      w.release();
    },
  };
}

/**
 * The resident decoder evaluators use: one for the active (or given) backend when it is WebGPU,
 * `resident` is not false and {@linkcode residentUnsupported} finds nothing; otherwise
 * `undefined` (the caller runs the host forward).
 */
export async function residentFor(
  model: Model,
  opts: ResidentOptions & { hooks?: unknown; resident?: boolean; backend?: Backend } = {},
): Promise<ResidentDecoder | undefined> {
  if (opts.resident === false) return undefined;
  const be = opts.backend ?? getBackend();
  if (be.name !== "webgpu" || !("ctx" in be)) return undefined;
  const gpu = be as WebGPUBackend;
  if (residentUnsupported(model, gpu, opts)) return undefined;
  return await residentDecoder(model, gpu, opts);
}
