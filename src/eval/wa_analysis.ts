/**
 * The seed's analysis tools (qllm-infer `analyze_stats`, `get_layerwise_distance`) for a quantized
 * model against its full-precision source:
 *
 * - {@linkcode analyzeStats}: per block linear, statistics of the weight (FP and quantized) and of
 *   its input before and after quantization (absmax, mean, std, kurtosis, outlier channels:
 *   max |x_j| above `k` × the median channel), with the SQNR (dB, `10·log10(Σx² / Σ(x − x̂)²)`)
 *   of the input, the weight and the output against `x · W_fpᵀ` on the unquantized input, as
 *   qllm-infer's `ActQuantLinear` records them;
 * - {@linkcode layerwiseDistance}: per block, the distance between the FP and the quantized hidden
 *   states after the block (each model run end to end on the same tokens: the drift accumulated
 *   up to that block): MSE, relative L2 and cosine similarity.
 *
 * The quantized model's own points and hooks apply (activation specs, QRazor / ZeroQuant hooks,
 * LLM.int8()'s product), host forward.
 * @module
 */
import type { Tensor } from "../tensor.ts";
import type { Model } from "../models/model.ts";
import type { Backend } from "../backend/backend.ts";
import { getBackend } from "../backend/device.ts";
import { block, embed, forward, type ForwardHooks } from "../models/decoder.ts";
import { mergeHooks } from "./perplexity.ts";

/** Summary statistics of one tensor. */
export interface TensorStats {
  /** max |x|. */
  absmax: number;
  /** Mean. */
  mean: number;
  /** Standard deviation. */
  std: number;
  /** Kurtosis (fourth standardized moment, 3 for a Gaussian). */
  kurtosis: number;
  /** Channels (columns) whose max |x| exceeds `k` × the median channel's. */
  outlierChannels: number[];
}

/** {@linkcode TensorStats} of `x` [rows, cols] (`k`: outlier factor, default 5). */
export function tensorStats(x: ArrayLike<number>, cols: number, k = 5): TensorStats {
  const n = x.length;
  let s = 0, am = 0;
  for (let i = 0; i < n; i++) {
    s += x[i];
    am = Math.max(am, Math.abs(x[i]));
  }
  const mean = s / n;
  let m2 = 0, m4 = 0;
  for (let i = 0; i < n; i++) {
    const d = (x[i] - mean) ** 2;
    m2 += d;
    m4 += d * d;
  }
  m2 /= n;
  m4 /= n;
  const ch = new Float64Array(cols);
  for (let i = 0; i < n; i++) ch[i % cols] = Math.max(ch[i % cols], Math.abs(x[i]));
  const med = [...ch].sort((a, b) => a - b)[cols >> 1];
  const outlierChannels: number[] = [];
  for (let j = 0; j < cols; j++) if (ch[j] > k * med) outlierChannels.push(j);
  return {
    absmax: am,
    mean,
    std: Math.sqrt(m2),
    kurtosis: m2 > 0 ? m4 / (m2 * m2) : 0,
    outlierChannels,
  };
}

/** SQNR in dB of `xq` against `x`: `10·log10(Σx² / Σ(x − xq)²)` (Infinity when equal). */
export function sqnr(x: ArrayLike<number>, xq: ArrayLike<number>): number {
  let sig = 0, err = 0;
  for (let i = 0; i < x.length; i++) {
    sig += x[i] * x[i];
    err += (x[i] - xq[i]) ** 2;
  }
  return err === 0 ? Infinity : 10 * Math.log10(sig / err);
}

/** One linear's record of {@linkcode analyzeStats}. */
export interface LinearStatsRecord {
  /** Linear name. */
  name: string;
  /** FP weight statistics. */
  weight: TensorStats;
  /** Quantized weight statistics. */
  weightQ: TensorStats;
  /** Input statistics before quantization (first batch). */
  input: TensorStats;
  /** Input statistics after quantization (first batch). */
  inputQ: TensorStats;
  /** SQNR (dB) of the quantized input, weight and output (mean over batches for x and output). */
  sqnr: { x: number; w: number; out: number };
}

/**
 * Per-linear statistics of `q` (quantized) against `fp` over `batches` (token windows, one
 * sequence each). See the module doc.
 */
export async function analyzeStats(
  fp: Model,
  q: Model,
  batches: number[][],
  opts: { backend?: Backend; k?: number } = {},
): Promise<LinearStatsRecord[]> {
  const be = opts.backend ?? getBackend();
  const recs = new Map<string, LinearStatsRecord>();
  const acc = new Map<string, { sx: number; so: number; n: number }>();
  for (const ids of batches) {
    const pre = new Map<string, Tensor>();
    const post = new Map<string, Tensor>();
    const observe = (point: string, site: string, x: Tensor) => {
      if (point === "linearInput") {
        pre.set(site, { shape: [...x.shape], data: new Float32Array(x.data) });
      }
    };
    const spy: ForwardHooks = {
      linearInput: (name, x) => {
        post.set(name, x);
      },
      linearOutput: async (name, y) => {
        const x = pre.get(name), xq = post.get(name);
        if (!x || !xq) return;
        const Wf = await fp.weights.get(`${name}.weight`);
        const Wq = await q.weights.get(`${name}.weight`);
        const ref = await be.matmulTransB(x, Wf);
        let out = y.data;
        if (q.weights.has(`${name}.bias`)) {
          const b = (await q.weights.get(`${name}.bias`)).data;
          out = y.data.map((v, i) => v - b[i % b.length]); // compare products without the bias
        }
        const cols = x.shape[x.shape.length - 1];
        let r = recs.get(name);
        if (!r) {
          r = {
            name,
            weight: tensorStats(Wf.data, Wf.shape[1], opts.k),
            weightQ: tensorStats(Wq.data, Wq.shape[1], opts.k),
            input: tensorStats(x.data, cols, opts.k),
            inputQ: tensorStats(xq.data, cols, opts.k),
            sqnr: { x: 0, w: sqnr(Wf.data, Wq.data), out: 0 },
          };
          recs.set(name, r);
          acc.set(name, { sx: 0, so: 0, n: 0 });
        }
        const a = acc.get(name)!;
        a.sx += sqnr(x.data, xq.data);
        a.so += sqnr(ref.data, out);
        a.n++;
      },
    };
    await forward(q, ids, { hooks: mergeHooks(q.hooks, spy), observe, backend: be });
  }
  for (const [name, r] of recs) {
    const a = acc.get(name)!;
    r.sqnr.x = a.sx / a.n;
    r.sqnr.out = a.so / a.n;
  }
  return [...recs.values()];
}

/** One block's record of {@linkcode layerwiseDistance}. */
export interface LayerDistance {
  /** Block index. */
  block: number;
  /** Mean squared difference of the hidden states after the block. */
  mse: number;
  /** ‖h_q − h_fp‖ / ‖h_fp‖. */
  relL2: number;
  /** Mean cosine similarity of the token rows. */
  cosine: number;
}

/**
 * Per block, the distance between `fp`'s and `q`'s hidden states after the block on `ids` (one
 * sequence), each model run end to end (its own points and hooks).
 */
export async function layerwiseDistance(
  fp: Model,
  q: Model,
  ids: number[],
  opts: { backend?: Backend } = {},
): Promise<LayerDistance[]> {
  const be = opts.backend ?? getBackend();
  let a = await embed(fp, ids, { backend: be });
  let b = await embed(q, ids, { backend: be });
  const d = fp.config.hiddenSize;
  const out: LayerDistance[] = [];
  for (let i = 0; i < fp.config.numLayers; i++) {
    a = await block(fp, i, a, { backend: be, hooks: fp.hooks });
    b = await block(q, i, b, { backend: be, hooks: q.hooks });
    let se = 0, nf = 0, cos = 0;
    const rows = a.data.length / d;
    for (let r = 0; r < rows; r++) {
      let dot = 0, na = 0, nb = 0;
      for (let j = 0; j < d; j++) {
        const x = a.data[r * d + j], y = b.data[r * d + j];
        se += (x - y) ** 2;
        nf += x * x;
        dot += x * y;
        na += x * x;
        nb += y * y;
      }
      cos += na > 0 && nb > 0 ? dot / Math.sqrt(na * nb) : 1;
    }
    out.push({ block: i, mse: se / a.data.length, relL2: Math.sqrt(se / nf), cosine: cos / rows });
  }
  return out;
}
