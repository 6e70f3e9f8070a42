/**
 * The layer-wise quantization pipeline (GPTQ's sequential driver): embed the calibration batch,
 * then walk the decoder block by block — capture the inputs of each linear through forward hooks,
 * accumulate `H = 2/n · Σ XᵀX`, quantize in true-sequential groups (q/k/v, o, up/gate, down),
 * write the dequantized weights back, and re-run the block to feed the next one.
 * @module
 */
import { type Backend, type DeviceMatrix, recordDecoded } from "../../backend/backend.ts";
import { getBackend } from "../../backend/device.ts";
import { OptionError, QuantlabError, ResumeError } from "../../errors.ts";
import { cleanStaleTemps, fileIfPresent, writeFileAtomic } from "../../io/fs.ts";
import { block, type BlockReuse, embed } from "../../models/decoder.ts";
import {
  type DeviceRows,
  type InputStats,
  type ResidentBlockRunner,
  residentBlockRunner,
  residentBlockUnsupported,
} from "../../models/resident_block.ts";
import { blockLinearGroups } from "../../models/config.ts";
import { ortBlockPass, type OrtBlockReuse, ortBlockUnsupported } from "../../models/ort_block.ts";
import { type Model, Weights } from "../../models/model.ts";
import { type Tensor, transpose2d } from "../../tensor.ts";
import { CHECKPOINT_FORMAT, hashText, readBlock, writeBlock } from "./_checkpoint.ts";
import type { CalibrationSet } from "./calibration.ts";
import {
  streamedPacked,
  streamedSource,
  type StreamIndex,
  streamWeightsToStore,
} from "./_stream.ts";
import { type Recipe, resolveRecipe, toRecipe } from "../core/recipe.ts";
import type { QuantMeta, WeightQuantizer } from "../core/types.ts";

/** One quantized layer in the report. */
export interface LayerReport {
  /** Layer name (no ".weight"). */
  name: string;
  /** Block index. */
  block: number;
  /** Method name. */
  method: string;
  /** Recipe pattern that matched. */
  pattern: string;
  /** [rows, cols]. */
  shape: [number, number];
  /** The method's own loss (GPTQ: Σ (w−q)²/d² / 2). */
  loss: number;
  /** Relative output error on calibration: √(tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)) = ‖XΔWᵀ‖/‖XWᵀ‖ (NaN without calibration data). */
  relErr: number;
  /** Storage bits per weight (scales, zeros, indices included). */
  bitsPerWeight: number;
  /** Seconds in the quantizer. */
  seconds: number;
}

/** The report of a `quantize` run. */
export interface QuantReport {
  /** Per-layer rows in processing order. */
  layers: LayerReport[];
  /** Weighted mean bits per weight over quantized layers. */
  bitsPerWeight: number;
  /** Wall time of the whole run. */
  seconds: number;
  /** Calibration description. */
  calib: { dataset: string; source: string; nsamples: number; seqlen: number; seed: number };
  /** Quantizer names and options by recipe pattern. */
  recipe: Record<string, { method: string; options: Record<string, unknown> }>;
  /** Peak resident memory seen (MiB). */
  peakRssMiB: number;
  /** Blocks restored from the workdir instead of recomputed. */
  resumedBlocks: number;
  /**
   * Block files found in the workdir but not reused because they failed verification (truncated,
   * unparsable, content hash mismatch), with the reason; those blocks were recomputed.
   */
  recomputedBlocks?: { file: string; reason: string }[];
  /** The compute backend that ran the products (name and description, e.g. the adapter). */
  device: string;
  /** True when blocks ran resident on the GPU (`QuantizeOptions.residentBlocks`). */
  residentBlocks: boolean;
  /**
   * Bytes of float32 quantized weights the run held in memory after each block (index = block):
   * grows by one block's linears per block without `stream`, stays 0 with it.
   */
  heldBytes: number[];
  /** The workdir holding the result's blocks when the run was streamed (absent otherwise). */
  streamedFrom?: string;
  /**
   * The host forward that ran the calibration blocks (`QuantizeOptions.forward`): "ts" or "ort";
   * absent when no block ran on the host (resident blocks, no calibration data, every block
   * resumed before one was computed).
   */
  forward?: "ts" | "ort";
  /** Why `forward: "ort"` was asked and the TypeScript forward ran instead. */
  forwardFallback?: string;
}

/** Progress events. */
export interface PipelineProgress {
  /** "block" after each block; "layer" after each quantized layer. */
  stage: "block" | "layer";
  /** Blocks done. */
  done: number;
  /** Blocks in all. */
  total: number;
  /** Layer name or block summary. */
  info: string;
}

/** Options of {@linkcode quantize}. */
export interface QuantizeOptions {
  /** Calibration windows (from `calibrationSet`). Required when a quantizer needs statistics. */
  calib?: CalibrationSet;
  /** Quantize in groups q/k/v → o → up/gate → down, re-capturing inputs after each (GPTQ `--true-sequential`, default true). */
  trueSequential?: boolean;
  /** Calibration sequences per forward chunk (default 8): memory ≈ one block's activations of a chunk. */
  chunk?: number;
  /** Folder for resume files: each finished block is checkpointed there atomically. */
  workdir?: string;
  /** Backend for products (default: the active device). */
  backend?: Backend;
  /**
   * On the WebGPU backend, run each block resident on the GPU (`src/models/resident_block.ts`:
   * one submission per calibration chunk, `Σ XᵀX` accumulated on the GPU) when the model allows
   * it (default true); false: the host-driven block forward with hooks, one GPU round trip per
   * product.
   */
  residentBlocks?: boolean;
  /**
   * Stream the model through the pipeline so that host memory does not grow with it (needs
   * `workdir`; default false). Source weights stay in the checkpoint (in their stored dtype) until
   * their block is processed; each finished block goes to its workdir file as packed metas (plus
   * the float32 weight of a layer whose format does not decode to it bit for bit) and its float32
   * copies are released, as are cached embeddings and norms between blocks. The result model
   * reads quantized layers back from the workdir on demand (`_stream.ts`), its `packed` record
   * reads each meta from disk on access, and its weights are bit-identical to a non-streamed
   * run's. The workdir must stay in place while the result is used. Streamed and non-streamed
   * runs have different run identities (their block files differ), so they never share a workdir.
   */
  stream?: boolean;
  /**
   * With resident blocks, keep the calibration hidden states on the device: uploaded once,
   * reused by every true-sequential group, passed to the next block without a readback. Costs
   * the whole calibration set's hidden states in device memory next to a pass's activations
   * (the block works on a copy), so it is opt-in (default false: each group uploads them again
   * and each block's output is read back; at most one block's data is live at once).
   */
  deviceHidden?: boolean;
  /**
   * With resident blocks on a backend that offers `matmulDeviceB`, keep each input group's
   * Hessian `H = 2/n · Σ XᵀX` on the device (default true): it is formed there from the sums,
   * consumed there by quantizers that take a device Hessian (`acceptsDeviceHessian`: GPTQ's
   * device column pass reads back only `diag(H)`) and by the relErr product, and never crosses
   * the bus (a quantizer without a device path gets it read back once per group). False: H is
   * read back per group and uploaded again by GPTQ and by the relErr product.
   */
  deviceHessian?: boolean;
  /**
   * Which forward runs the calibration blocks on the host (not the GPU-resident blocks):
   * - "ts" (default): the TypeScript block forward (`models/decoder.ts`) with `linearInput` hooks,
   *   each product through the backend, `Σ XᵀX` accumulated from host transposes — the reference.
   * - "ort": each block as onnxruntime stage graphs on the CPU (`models/ort_block.ts`), the
   *   weights as session inputs, each group's `XᵀX` per chunk out of the session; the same steps
   *   as the TypeScript forward on the CPU backend, rounded to float32 where it rounds: on
   *   stories260K with 256-token windows the Hessians and block outputs are bit-identical to
   *   "ts" (windows under 46 tokens, where "ts" attends in its own TypeScript loop, agree to
   *   ~2e-7 relative), in about 1/3 of the CPU time per calibrated run. The backend still runs
   *   the quantizers and the relErr products. Models the graphs cannot
   *   express (`ortBlockUnsupported`: non-Llama families, biases, quantization points) run the
   *   TypeScript forward and the report says why (`forwardFallback`); GPU-resident blocks
   *   (`residentBlocks`) take precedence over it.
   * Runs with "ort" have their own run identity (a workdir is not shared with a "ts" run).
   */
  forward?: "ts" | "ort";
  /** Progress callback. */
  onProgress?: (p: PipelineProgress) => void;
}

const STOP = new Error("stop-forward");

function linearNames(model: Model): string[] {
  const out: string[] = [];
  for (let i = 0; i < model.config.numLayers; i++) {
    for (const g of blockLinearGroups(model.config, i)) out.push(...g);
  }
  return out;
}

/** Accumulates Σ XᵀX (float32, like the reference) over token rows of `x` [rows, cols]. */
async function accumulate(
  acc: { S: Float32Array; n: number },
  x: Tensor,
  be: Backend,
): Promise<void> {
  const xt = transpose2d(x);
  const p = await be.matmul(xt, x);
  const S = acc.S;
  for (let j = 0; j < S.length; j++) S[j] += p.data[j];
  acc.n += x.shape[0];
}

/**
 * `Σ XᵀX` of the inputs of the linears in `want` over every calibration chunk, through the
 * host-driven block forward with a `linearInput` hook (stopped once every input was seen).
 * Linears fed the same tensor (q/k/v, gate/up) share one statistics object.
 */
async function gatherHost(
  qmodel: Model,
  i: number,
  c: {
    hs: Tensor[];
    chunkSizes: number[];
    want: ReadonlySet<string>;
    reuse?: BlockReuse[];
  },
  be: Backend,
): Promise<Map<string, InputStats>> {
  const acc = new Map<string, InputStats>();
  for (let k = 0; k < c.hs.length; k++) {
    const seenObj = new Map<Tensor, string>();
    const seen = new Set<string>();
    const hooks = {
      linearInput: async (name: string, x: Tensor) => {
        if (!c.want.has(name)) return;
        const first = seenObj.get(x);
        if (first !== undefined) acc.set(name, acc.get(first)!);
        else {
          seenObj.set(x, name);
          let a = acc.get(name);
          if (!a) {
            a = { S: new Float32Array(x.shape[1] * x.shape[1]), n: 0 };
            acc.set(name, a);
          }
          await accumulate(a, x, be);
        }
        seen.add(name);
        if (seen.size === c.want.size) throw STOP;
      },
    };
    try {
      await block(qmodel, i, c.hs[k], {
        batch: c.chunkSizes[k],
        hooks,
        backend: be,
        reuse: c.reuse?.[k],
      });
    } catch (e) {
      if (e !== STOP) throw e;
    }
  }
  return acc;
}

/**
 * {@linkcode gatherHost} through the onnxruntime stage graphs (`models/ort_block.ts`): each chunk's
 * `XᵀX` comes out of the session and is summed into the float32 accumulator in chunk order, as
 * {@linkcode accumulate} sums the host products.
 */
async function gatherOrt(
  qmodel: Model,
  i: number,
  c: { hs: Tensor[]; chunkSizes: number[]; want: ReadonlySet<string>; reuse?: OrtBlockReuse[] },
): Promise<Map<string, InputStats>> {
  const acc = new Map<string, InputStats>();
  for (let k = 0; k < c.hs.length; k++) {
    const { stats } = await ortBlockPass(qmodel, i, c.hs[k], {
      batch: c.chunkSizes[k],
      want: c.want,
      reuse: c.reuse?.[k],
    });
    const byArray = new Map<Float32Array, InputStats>();
    for (const [name, p] of stats) {
      let a = acc.get(name);
      if (!a) {
        // Linears fed the same tensor share one statistics object (as gatherHost).
        a = byArray.get(p) ?? { S: new Float32Array(p.length), n: 0 };
        acc.set(name, a);
      }
      if (byArray.has(p)) continue;
      byArray.set(p, a);
      const S = a.S;
      for (let j = 0; j < S.length; j++) S[j] += p[j];
      a.n += c.hs[k].shape[0];
    }
  }
  return acc;
}

/** Per linear: host sums `S` over `n` rows, or `H = 2/n · S` held on the device. */
type GroupStats = InputStats | { H: DeviceMatrix; n: number };

/**
 * {@linkcode gatherHost} through a GPU-resident block (one submission per chunk); `onDevice`:
 * the Hessians stay on the device (`takeHessians`), else the sums are read back (`take`).
 */
async function gatherResident(
  runner: ResidentBlockRunner,
  c: { hs: (Tensor | DeviceRows)[]; chunkSizes: number[]; want: ReadonlySet<string> },
  onDevice: boolean,
): Promise<Map<string, GroupStats>> {
  for (let k = 0; k < c.hs.length; k++) {
    await runner.run(c.hs[k], { batch: c.chunkSizes[k], collect: c.want });
  }
  return onDevice ? await runner.takeHessians() : await runner.take();
}

/** Most bytes of block intermediates {@linkcode quantize} keeps between true-sequential passes. */
const REUSE_BYTES = 256 * 2 ** 20;

/** Bytes of one block's {@linkcode BlockReuse} records over every calibration chunk. */
function reuseBytes(model: Model, hs: Tensor[]): number {
  const c = model.config;
  let rows = 0;
  for (const h of hs) rows += h.shape[0];
  return 4 * rows * (c.numHeads * c.headDim + c.hiddenSize + c.intermediateSize);
}

/** The backend type `models/resident_block.ts` runs blocks on. */
type ResidentBackend = Parameters<typeof residentBlockRunner>[2];

/**
 * √(tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)) with one product through the backend (`matmulDeviceB` when H is
 * on its device: the same kernel, H not uploaded).
 */
async function relativeError(
  W: Tensor,
  Wq: Tensor,
  H: Float32Array | DeviceMatrix,
  be: Backend,
): Promise<number> {
  const [rows, cols] = W.shape;
  const both = new Float32Array(2 * rows * cols);
  for (let j = 0; j < rows * cols; j++) both[j] = W.data[j] - Wq.data[j];
  both.set(W.data, rows * cols);
  const A: Tensor = { shape: [2 * rows, cols], data: both };
  const P = H instanceof Float32Array
    ? await be.matmul(A, { shape: [cols, cols], data: H })
    : await be.matmulDeviceB!(A, H);
  let num = 0, den = 0;
  for (let j = 0; j < rows * cols; j++) num += P.data[j] * both[j];
  for (let j = rows * cols; j < 2 * rows * cols; j++) den += P.data[j] * both[j];
  return den > 0 ? Math.sqrt(Math.max(num, 0) / den) : 0;
}

function fingerprint(
  model: Model,
  recipe: Recipe,
  opts: QuantizeOptions,
  ort: boolean,
): string {
  const c = opts.calib;
  return JSON.stringify({
    format: CHECKPOINT_FORMAT,
    model: model.source,
    config: model.config,
    layers: model.config.numLayers,
    recipe: Object.fromEntries(Object.entries(recipe).map(([k, q]) => [k, [q.name, q.options]])),
    calib: c ? [c.dataset, c.source, c.ids.length, c.seqlen, c.seed, c.ids] : null,
    trueSequential: opts.trueSequential ?? true,
    chunk: opts.chunk ?? 8,
    ...(opts.stream ? { stream: true } : {}),
    ...(ort ? { forward: "ort" } : {}),
  });
}

function writeRunFile(file: string, runId: string): Promise<void> {
  return writeFileAtomic(file, JSON.stringify({ run: runId, format: CHECKPOINT_FORMAT }));
}

/**
 * Quantizes `model` with a quantizer or a recipe. Returns a new model that shares untouched tensors
 * with the original, with `report` and `packed` (the per-layer metas for export).
 */
export async function quantize(
  model: Model,
  recipeOrQuantizer: Recipe | WeightQuantizer,
  opts: QuantizeOptions = {},
): Promise<Model> {
  const t0 = performance.now();
  const be = opts.backend ?? getBackend();
  const recipe = toRecipe(recipeOrQuantizer);
  const assigned = resolveRecipe(recipe, linearNames(model));
  const needsStats = [...assigned.values()].some((a) => a.quantizer.needsHessian);
  const calib = opts.calib;
  if (needsStats && !calib) {
    throw new OptionError(
      "calib",
      "this recipe needs calibration data: pass { calib: await calibrationSet(...) }",
    );
  }
  const chunk = opts.chunk ?? 8;
  if (!(Number.isInteger(chunk) && chunk >= 1)) {
    throw new OptionError("chunk", `must be ≥ 1, got ${chunk}`);
  }
  const trueSeq = opts.trueSequential ?? true;
  const stream = opts.stream === true;
  if (opts.stream !== undefined && typeof opts.stream !== "boolean") {
    throw new OptionError("stream", `must be true or false, got ${opts.stream}`);
  }
  if (stream && !opts.workdir) {
    throw new OptionError("stream", "a streamed run keeps its blocks on disk: pass a workdir");
  }
  if (opts.forward !== undefined && opts.forward !== "ts" && opts.forward !== "ort") {
    throw new OptionError("forward", `must be "ts" or "ort", got ${opts.forward}`);
  }
  // The backend says whether it runs blocks resident (a capability, not a type test).
  const gpu = be.residentBlocks ? be as ResidentBackend : undefined;
  const T = calib?.seqlen ?? 0;
  const resident = gpu && calib && calib.ids.length && opts.residentBlocks !== false &&
      !residentBlockUnsupported(model, gpu, T)
    ? gpu
    : undefined;
  // The host forward of the calibration blocks: onnxruntime stage graphs when asked and possible.
  const forwardFallback = opts.forward === "ort" && calib && !resident
    ? ortBlockUnsupported(model) ?? undefined
    : undefined;
  const useOrt = opts.forward === "ort" && calib !== undefined && !resident && !forwardFallback;
  /** Streamed runs: which block file holds each quantized layer. */
  const streamIndex: StreamIndex = new Map();
  // Run identity: model (source and config), recipe, calibration content, pipeline options and
  // the checkpoint code version, hashed; every block file records it (see _checkpoint.ts).
  let runId = "";
  let pendingRunFile: string | undefined;
  if (opts.workdir) {
    await Deno.mkdir(opts.workdir, { recursive: true });
    await cleanStaleTemps(opts.workdir);
    runId = await hashText(fingerprint(model, recipe, opts, useOrt));
    const runFile = `${opts.workdir}/run.json`;
    let old: string | null = null;
    try {
      if (await fileIfPresent(runFile, "run.json")) old = await Deno.readTextFile(runFile);
    } catch { /* new run (or no run.json: the blocks' own identities are checked) */ }
    let oldId: unknown;
    try {
      oldId = old === null ? undefined : JSON.parse(old)?.run;
    } catch {
      oldId = null;
    }
    if (old !== null && oldId !== runId) {
      throw new ResumeError(
        runFile,
        `${opts.workdir} holds a different run (model, recipe, calibration or code version ` +
          `differ) or an unreadable run.json; use another folder`,
      );
    }
    // No run.json but block files (it was deleted): the blocks' own identities decide; run.json is
    // written back only once every block was verified or recomputed (end of the run).
    const hasBlocks = old === null &&
      [...Deno.readDirSync(opts.workdir)].some((e) => /^block_\d+\.safetensors$/.test(e.name));
    if (old === null && !hasBlocks) await writeRunFile(runFile, runId);
    else if (old === null) pendingRunFile = runFile;
  }

  const overrides = new Map<string, Tensor>();
  const packed: Record<string, QuantMeta> = {};
  const layers: LayerReport[] = [];
  let peak = Deno.memoryUsage().rss;
  let resumed = 0;
  const heldBytes: number[] = [];
  const held = () => {
    let n = 0;
    for (const t of overrides.values()) n += t.data.byteLength;
    return n;
  };
  const recomputed: { file: string; reason: string }[] = [];
  let hostForward: "ts" | "ort" | undefined;

  // Calibration hidden states, in chunks of `chunk` sequences.
  let hs: Tensor[] = [];
  const chunkSizes: number[] = [];
  if (calib) {
    for (let s = 0; s < calib.ids.length; s += chunk) {
      const ids = calib.ids.slice(s, s + chunk).flat();
      chunkSizes.push(Math.min(chunk, calib.ids.length - s));
      hs.push(await embed(model, ids, { seqLen: T, backend: be }));
    }
  }
  // Streamed: nothing read from the source stays cached (the embedding table is the largest).
  if (stream) model.weights.evict();
  const L = model.config.numLayers;
  /** The model with every quantized weight so far. */
  const current = (): Model => ({ ...model, weights: model.weights.with(overrides) });
  // Resident blocks with `deviceHidden`: the hidden states stay on the device from one block to
  // the next (`hs` keeps the chunk count; its rows are read back only for a checkpoint).
  let dev: DeviceRows[] | undefined;
  const keepHidden = opts.deviceHidden ?? false;
  const keepH = resident !== undefined && (opts.deviceHessian ?? true) &&
    be.matmulDeviceB !== undefined;
  const dropDev = () => {
    dev?.forEach((r) => r.release());
    dev = undefined;
  };
  for (let i = 0; i < L; i++) {
    const got = opts.workdir ? await readBlock(opts.workdir, i, runId) : null;
    if (got?.status === "corrupt") {
      recomputed.push({ file: got.file, reason: got.reason });
      opts.onProgress?.({
        stage: "block",
        done: i,
        total: L,
        info: `block ${i}: checkpoint not reused (${got.reason}); recomputing`,
      });
    }
    const ck = got?.status === "ok" ? got.checkpoint : null;
    if (ck) {
      if (stream) { for (const layer of Object.keys(ck.metas)) streamIndex.set(layer, i); }
      else {
        for (const [n, w] of ck.weights) overrides.set(n, w);
        Object.assign(packed, ck.metas);
      }
      layers.push(...(ck.reports as LayerReport[]));
      if (ck.hidden.length) {
        hs = ck.hidden;
        dropDev();
      }
      resumed++;
      heldBytes.push(held());
      opts.onProgress?.({ stage: "block", done: i + 1, total: L, info: `block ${i} resumed` });
      continue;
    }
    const groups = trueSeq
      ? blockLinearGroups(model.config, i)
      : [blockLinearGroups(model.config, i).flat()];
    const blockWeights = new Map<string, Tensor>();
    const blockMetas: Record<string, QuantMeta> = {};
    const blockReports: LayerReport[] = [];
    const runner = resident
      ? await residentBlockRunner(current(), i, resident, { seqLen: T, keepInputs: keepHidden })
      : undefined;
    // Host blocks: each chunk's attention output and MLP activation carry over from one
    // true-sequential pass to the next while the weights they come from are unchanged (the
    // same numbers as recomputing them), when they fit REUSE_BYTES.
    const fits = !runner && hs.length && reuseBytes(model, hs) <= REUSE_BYTES;
    const reuse = fits && !useOrt ? hs.map((): BlockReuse => ({})) : undefined;
    const ortReuse = fits && useOrt ? hs.map((): OrtBlockReuse => ({})) : undefined;
    if (!runner && hs.length) hostForward = useOrt ? "ort" : "ts";
    try {
      for (const group of groups) {
        const targets = group.filter((n) => assigned.has(n));
        if (!targets.length) continue;
        // With calibration data every target's H is gathered: quantizers that need it get it, and
        // the report's relErr is measured for all (RTN included).
        const want = new Set(hs.length ? targets : []);
        const acc: Map<string, GroupStats> = !want.size
          ? new Map()
          : runner
          ? await gatherResident(runner, { hs: dev ?? hs, chunkSizes, want }, keepH)
          : useOrt
          ? await gatherOrt(current(), i, { hs, chunkSizes, want, reuse: ortReuse })
          : await gatherHost(current(), i, { hs, chunkSizes, want, reuse }, be);
        peak = Math.max(peak, Deno.memoryUsage().rss);
        /**
         * Device Hessians read back for quantizers that need H and have no device path (once per
         * group); a quantizer without `needsHessian` gets none (only relErr reads H, there).
         */
        const readBack = new Map<DeviceMatrix, Float32Array>();
        try {
          for (const name of targets) {
            const { quantizer, pattern } = assigned.get(name)!;
            const W = await model.weights.get(`${name}.weight`);
            const a = acc.get(name);
            let H: Float32Array | undefined;
            let Hdevice: DeviceMatrix | undefined;
            if (a && "H" in a) {
              if (quantizer.acceptsDeviceHessian) Hdevice = a.H;
              else if (quantizer.needsHessian) {
                H = readBack.get(a.H);
                if (!H) readBack.set(a.H, H = await a.H.read());
              }
            } else if (a) {
              H = new Float32Array(a.S.length);
              const f = 2 / a.n;
              for (let j = 0; j < H.length; j++) H[j] = a.S[j] * f;
            }
            // relErr on the device when H is there, whichever form the quantizer took.
            const Hrel = a && "H" in a ? a.H : H;
            const tq = performance.now();
            const res = await quantizer.quantizeWeight(W, { H, Hdevice, nsamples: a?.n ?? 0 }, {
              backend: be,
              layer: name,
            });
            const seconds = (performance.now() - tq) / 1000;
            if (res.Wq.data.length !== W.data.length) {
              throw new QuantlabError(
                `${quantizer.name}: ${name}: returned a weight of the wrong size`,
              );
            }
            // A quantizer that hands back the weight object itself may have changed it in place:
            // the block records computed from it are not reused.
            if (res.Wq === W) {
              reuse?.forEach((r) => Object.assign(r, { attn: undefined, mlp: undefined }));
              ortReuse?.forEach((r) =>
                Object.assign(r, { attn: undefined, mid: undefined, act: undefined })
              );
            }
            // The meta decodes to this very Wq (the quantizer's contract): a backend serving the
            // layer from packed words needs no host check of this pair.
            recordDecoded(res.meta, res.Wq.data);
            overrides.set(`${name}.weight`, res.Wq);
            blockWeights.set(`${name}.weight`, res.Wq);
            runner?.setWeight(name, res.Wq);
            blockMetas[name] = res.meta;
            const rep: LayerReport = {
              name,
              block: i,
              method: quantizer.name,
              pattern,
              shape: [W.shape[0], W.shape[1]],
              loss: res.loss,
              relErr: Hrel ? await relativeError(W, res.Wq, Hrel, be) : NaN,
              bitsPerWeight: res.bitsPerWeight,
              seconds,
            };
            blockReports.push(rep);
            opts.onProgress?.({ stage: "layer", done: i, total: L, info: name });
          }
        } finally {
          for (const a of new Set(acc.values())) if ("H" in a) a.H.release();
        }
        peak = Math.max(peak, Deno.memoryUsage().rss);
      }
      // Feed the next block from the quantized one.
      if (hs.length && i < L - 1 && runner && keepHidden) {
        const next: DeviceRows[] = [];
        for (let c = 0; c < hs.length; c++) {
          next.push(await runner.runToDevice(dev?.[c] ?? hs[c], { batch: chunkSizes[c] }));
        }
        dropDev();
        dev = next;
        if (opts.workdir) hs = await Promise.all(dev.map((r) => r.read()));
      } else if (hs.length && i < L - 1) {
        const next: Tensor[] = [];
        const qmodel = current();
        for (let c = 0; c < hs.length; c++) {
          next.push(
            runner
              ? (await runner.run(hs[c], { batch: chunkSizes[c], output: true }))!
              : useOrt
              ? (await ortBlockPass(qmodel, i, hs[c], {
                batch: chunkSizes[c],
                want: new Set(),
                output: true,
                reuse: ortReuse?.[c],
              })).output!
              : await block(qmodel, i, hs[c], {
                batch: chunkSizes[c],
                backend: be,
                reuse: reuse?.[c],
              }),
          );
        }
        hs = next;
      }
    } finally {
      runner?.release();
    }
    if (!stream) Object.assign(packed, blockMetas);
    layers.push(...blockReports);
    // The block's full-precision linear weights are no longer needed here (the quantized ones
    // override them): drop them from the lazy cache so host memory stays about one block of FP
    // weights. They reload from the source if the original model is used again.
    model.weights.evict([...blockWeights.keys()]);
    if (opts.workdir) {
      await writeBlock(opts.workdir, i, {
        weights: stream ? await streamWeightsToStore(blockWeights, blockMetas) : blockWeights,
        hidden: hs,
        metas: blockMetas,
        reports: blockReports,
      }, runId);
    }
    if (stream) {
      // The block is on disk: release its float32 weights and everything cached from the source.
      for (const n of blockWeights.keys()) overrides.delete(n);
      for (const layer of Object.keys(blockMetas)) streamIndex.set(layer, i);
      model.weights.evict();
    }
    heldBytes.push(held());
    peak = Math.max(peak, Deno.memoryUsage().rss);
    opts.onProgress?.({ stage: "block", done: i + 1, total: L, info: `block ${i}` });
  }
  dropDev();
  if (pendingRunFile) await writeRunFile(pendingRunFile, runId);
  let bits = 0, count = 0;
  for (const r of layers) {
    bits += r.bitsPerWeight * r.shape[0] * r.shape[1];
    count += r.shape[0] * r.shape[1];
  }
  const report: QuantReport = {
    layers,
    bitsPerWeight: count ? bits / count : 32,
    seconds: (performance.now() - t0) / 1000,
    calib: calib
      ? {
        dataset: calib.dataset,
        source: calib.source,
        nsamples: calib.ids.length,
        seqlen: calib.seqlen,
        seed: calib.seed,
      }
      : { dataset: "none", source: "none", nsamples: 0, seqlen: 0, seed: 0 },
    recipe: Object.fromEntries(
      Object.entries(recipe).map(([k, q]) => [k, { method: q.name, options: q.options }]),
    ),
    peakRssMiB: peak / 2 ** 20,
    resumedBlocks: resumed,
    recomputedBlocks: recomputed,
    device: `${be.name}: ${be.description}`,
    residentBlocks: resident !== undefined,
    heldBytes,
    ...(stream ? { streamedFrom: opts.workdir } : {}),
    ...(hostForward ? { forward: hostForward } : {}),
    ...(forwardFallback !== undefined ? { forwardFallback } : {}),
  };
  if (stream) {
    const weights = new Weights(streamedSource(model, opts.workdir!, streamIndex));
    return { ...model, weights, report, packed: streamedPacked(opts.workdir!, streamIndex) };
  }
  return { ...model, weights: model.weights.with(overrides), report, packed };
}
