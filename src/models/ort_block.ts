/**
 * The quantization pipeline's calibration forward of one decoder block through onnxruntime (CPU):
 * the block cut into stages (`src/io/onnx_block_graph.ts`: q/k/v input, attention, residual + MLP
 * input, MLP activation, output) whose weights are session inputs, so one session per stage and
 * shape serves every block and every partially quantized state of a model (and of every model of
 * that shape). A pass runs only the stages the wanted statistics need and reuses a stage's result
 * from an earlier pass over the same input while the weights it came from are the same tensor
 * objects ({@linkcode OrtBlockReuse}, as `decoder.ts`'s `BlockReuse`). Each stage returns
 * `XᵀX` of the linear input it captures, so no activations are transposed or multiplied on the
 * host. The TypeScript forward (`decoder.ts` `block`) stays the reference: the graphs compute the
 * same steps with float32 rounding where it rounds (see the graph module); what the graph cannot
 * express ({@linkcode ortBlockUnsupported}) stays on it.
 * @module
 */
import { loadOrt, sessionOptions } from "../backend/cpu.ts";
import {
  type BlockGraphDims,
  type BlockStage,
  buildBlockStageGraph,
} from "../io/onnx_block_graph.ts";
import { QuantlabError } from "../errors.ts";
import type { Tensor } from "../tensor.ts";
import { ropeInvFreq } from "./decoder.ts";
import { familyOf } from "./family.ts";
import type { Model } from "./model.ts";

// deno-lint-ignore no-explicit-any
type Session = any;

/**
 * Why block calibration of `model` cannot run through the onnxruntime block graphs, or null when
 * it can: Llama-family blocks (RMSNorm, RoPE, SwiGLU with SiLU) without biases, whose query heads
 * are a multiple of the KV heads, and no quantization points on the model (`model.points`:
 * activation fake-quant between the products).
 */
export function ortBlockUnsupported(model: Model): string | null {
  const c = model.config;
  const fam = familyOf(c);
  if (fam.norm !== "rms" || fam.mlp !== "swiglu" || fam.positions !== "rope") {
    return `family ${c.family}`;
  }
  if (c.activation !== "silu") return `activation ${c.activation}`;
  if (c.numHeads % c.numKvHeads !== 0) return "query heads not a multiple of KV heads";
  if (c.headDim % 2 !== 0) return "odd head size";
  if (model.points && Object.keys(model.points).length > 0) {
    return "the model has quantization points";
  }
  for (let i = 0; i < c.numLayers; i++) {
    const b = fam.block(i);
    for (const n of [b.q, b.k, b.v, b.o, ...b.mlp, b.attnNorm, b.mlpNorm]) {
      if (model.weights.has(`${n}.bias`)) return `bias ${n}.bias`;
    }
  }
  return null;
}

/** One stage result kept for a later pass, with the tensors it was computed from. */
interface Kept {
  deps: Tensor[];
  data: Float32Array;
}

/**
 * Stage results of earlier {@linkcode ortBlockPass} calls over one input tensor: the attention
 * output, the residual after it and the MLP activation. Start with `{}` per (block, input).
 */
export interface OrtBlockReuse {
  /** The input the records belong to (a pass over another input clears them). */
  h?: Tensor;
  /** Attention output [rows, heads·hd]. */
  attn?: Kept;
  /** Residual after attention [rows, hidden]. */
  mid?: Kept;
  /** MLP activation [rows, intermediate]. */
  act?: Kept;
}

/** What {@linkcode ortBlockPass} returns. */
export interface OrtBlockPassResult {
  /** `XᵀX` [d·d] per wanted linear (linears sharing an input share the array). */
  stats: Map<string, Float32Array>;
  /** The block output [rows, hidden] when `output` was asked. */
  output?: Tensor;
}

const sessions = new Map<string, Promise<Session>>();

function dimsOf(model: Model, T: number): BlockGraphDims {
  const c = model.config;
  const half = c.headDim / 2;
  const inv = ropeInvFreq(c);
  const cos = new Float64Array(T * half), sin = new Float64Array(T * half);
  for (let p = 0; p < T; p++) {
    for (let i = 0; i < half; i++) {
      // As decoder.ts applyRope: the angle in float32, cos/sin rounded to float32.
      const af = Math.fround(Math.fround(p) * Math.fround(inv[i]));
      cos[p * half + i] = Math.fround(Math.cos(af));
      sin[p * half + i] = Math.fround(Math.sin(af));
    }
  }
  // As decoder.ts attention: −∞ after the query's position and before its sliding window.
  const mask = new Float32Array(T * T);
  const win = c.slidingWindow ?? Infinity;
  for (let t = 0; t < T; t++) {
    mask.fill(-Infinity, t * T + t + 1, (t + 1) * T);
    if (t + 1 > win) mask.fill(-Infinity, t * T, t * T + t + 1 - win);
  }
  return {
    hiddenSize: c.hiddenSize,
    numHeads: c.numHeads,
    numKvHeads: c.numKvHeads,
    headDim: c.headDim,
    intermediateSize: c.intermediateSize,
    normEps: c.normEps,
    seqLen: T,
    cos,
    sin,
    mask,
  };
}

function session(model: Model, T: number, stage: BlockStage, stats: boolean): Promise<Session> {
  const c = model.config;
  const key = JSON.stringify([
    c.hiddenSize,
    c.numHeads,
    c.numKvHeads,
    c.headDim,
    c.intermediateSize,
    c.normEps,
    c.ropeTheta,
    c.ropeScaling ?? null,
    c.slidingWindow ?? null,
    T,
    stage,
    stats,
  ]);
  let s = sessions.get(key);
  if (!s) {
    s = (async () => {
      const ort = await loadOrt();
      const bytes = buildBlockStageGraph(dimsOf(model, T), stage, { stats });
      // One intra-op thread unless QUANTLAB_CPU_THREADS says otherwise (the CPU backend's
      // sessionOptions), no spinning: the stages are many small nodes, and on stories260K (2
      // loaded cores) a second thread left the wall time of a GPTQ run unchanged (~0.93 s) and
      // added ~40 % CPU time.
      return await ort.InferenceSession.create(bytes, {
        // "basic": the "all" level fuses Transpose + MatMul (the XᵀX outputs) into a FusedMatMul
        // that sums in another order than the CPU backend's MatMul of a host transpose.
        graphOptimizationLevel: "basic",
        executionMode: "sequential",
        intraOpNumThreads: sessionOptions().intraOpNumThreads ?? 1,
        extra: { session: { intra_op: { allow_spinning: "0" } } },
      });
    })();
    sessions.set(key, s);
    s.catch(() => {
      if (sessions.get(key) === s) sessions.delete(key);
    });
  }
  return s;
}

/** The stage that produces the statistics of each linear's input. */
function statStage(model: Model, i: number): Map<string, BlockStage> {
  const b = familyOf(model.config).block(i);
  const [gate, up, down] = b.mlp;
  return new Map<string, BlockStage>([
    [b.q, "x1"],
    [b.k, "x1"],
    [b.v, "x1"],
    [b.o, "attn"],
    [gate, "mid"],
    [up, "mid"],
    [down, "act"],
  ]);
}

/**
 * One pass of block `i` of `model` over `h` [batch·seqLen, hidden] (`batch` sequences) through
 * the stage graphs: `XᵀX` of the inputs of the linears in `want` and, with `output`, the block
 * output — the numbers `decoder.ts` `block` computes on the CPU backend up to float32 rounding
 * (see the module doc). `reuse` keeps stage results between passes over the same `h`.
 */
export async function ortBlockPass(
  model: Model,
  i: number,
  h: Tensor,
  opts: { batch: number; want: ReadonlySet<string>; output?: boolean; reuse?: OrtBlockReuse },
): Promise<OrtBlockPassResult> {
  const c = model.config;
  const rows = h.shape[0];
  const T = rows / opts.batch;
  if (!Number.isInteger(T)) {
    throw new QuantlabError(`ortBlockPass: ${rows} rows not divisible by batch ${opts.batch}`);
  }
  const b = familyOf(c).block(i);
  const [gateName, upName, downName] = b.mlp;
  const w = (n: string) => model.weights.get(`${n}.weight`);
  const [ln1, wq, wk, wv, wo, ln2, wg, wu, wd] = await Promise.all(
    [b.attnNorm, b.q, b.k, b.v, b.o, b.mlpNorm, gateName, upName, downName].map(w),
  );
  const stageOf = statStage(model, i);
  const statsWanted = new Set<BlockStage>();
  for (const n of opts.want) {
    const s = stageOf.get(n);
    if (!s) throw new QuantlabError(`ortBlockPass: ${n} is not a linear of block ${i}`);
    statsWanted.add(s);
  }
  const order: BlockStage[] = ["x1", "attn", "mid", "act", "out"];
  let last = -1;
  for (const s of statsWanted) last = Math.max(last, order.indexOf(s));
  if (opts.output) last = order.length - 1;
  const reuse = opts.reuse;
  if (reuse && reuse.h !== h) {
    reuse.h = h;
    reuse.attn = reuse.mid = reuse.act = undefined;
  }
  const ort = await loadOrt();
  const t2 = (x: Tensor | Float32Array, cols: number) =>
    new ort.Tensor("float32", x instanceof Float32Array ? x : x.data, [
      (x instanceof Float32Array ? x.length : x.data.length) / cols,
      cols,
    ]);
  const v1 = (x: Tensor) => new ort.Tensor("float32", x.data, [x.data.length]);
  const D = c.hiddenSize, I = c.intermediateSize, HD = c.numHeads * c.headDim;
  const same = (a: Tensor[], x: Tensor[]) => a.length === x.length && a.every((t, j) => t === x[j]);
  const stats = new Map<BlockStage, Float32Array>();
  const run = async (stage: BlockStage, feeds: Record<string, unknown>) => {
    const st = statsWanted.has(stage);
    const s = await session(model, T, stage, st);
    const out = await s.run(feeds);
    if (st) stats.set(stage, out.s.data as Float32Array);
    return out.y?.data as Float32Array;
  };
  const hT = t2(h, D);
  const attnDeps = [ln1, wq, wk, wv];
  const midDeps = [...attnDeps, wo, ln2];
  const actDeps = [...midDeps, wg, wu];
  /** A stage's output: kept (same deps, no stats wanted) or computed (and kept). */
  const stageOut = async (
    stage: "attn" | "mid" | "act",
    deps: Tensor[],
    compute: () => Promise<Float32Array>,
  ): Promise<Float32Array> => {
    const kept = reuse?.[stage];
    if (kept && same(kept.deps, deps) && !statsWanted.has(stage)) return kept.data;
    const data = await compute();
    if (reuse) reuse[stage] = { deps, data };
    return data;
  };
  if (statsWanted.has("x1")) await run("x1", { h: hT, ln1: v1(ln1) });
  let attn: Float32Array | undefined, mid: Float32Array | undefined;
  let act: Float32Array | undefined, output: Tensor | undefined;
  if (last >= 1) {
    attn = await stageOut("attn", attnDeps, () =>
      run("attn", {
        h: hT,
        ln1: v1(ln1),
        wq: t2(wq, D),
        wk: t2(wk, D),
        wv: t2(wv, D),
      }));
  }
  if (last >= 2) {
    mid = await stageOut(
      "mid",
      midDeps,
      () => run("mid", { h: hT, attn: t2(attn!, HD), wo: t2(wo, HD), ln2: v1(ln2) }),
    );
  }
  if (last >= 3) {
    act = await stageOut(
      "act",
      actDeps,
      () => run("act", { h2: t2(mid!, D), ln2: v1(ln2), wg: t2(wg, D), wu: t2(wu, D) }),
    );
  }
  if (last >= 4) {
    const y = await run("out", { h2: t2(mid!, D), act: t2(act!, I), wd: t2(wd, I) });
    output = { shape: [rows, D], data: y };
  }
  const result = new Map<string, Float32Array>();
  for (const n of opts.want) result.set(n, stats.get(stageOf.get(n)!)!);
  return { stats: result, output };
}
