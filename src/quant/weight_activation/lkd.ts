/**
 * ZeroQuant's layer-wise knowledge distillation (LKD, Yao et al. 2022): the quantized block's
 * weights are trained so that its output matches the FP teacher block's output on the same input
 * (MSE), with the straight-through estimator through the rounding (`∂Q(W)/∂W = I`) and Adam.
 * The seed found that distilling only the last layer works ("last"); lr, steps, batch size as
 * the seed's table.
 *
 * Gradients come from a small reverse-mode implementation of exactly one Llama-family decoder
 * block (RMSNorm, q/k/v/o products, rotate-half RoPE, causal grouped-query attention, SwiGLU,
 * residuals): {@linkcode blockForward} records what {@linkcode blockBackward} needs. Element-wise
 * work is float64; the products go through the backend (float32) unless `float64: true` (plain
 * float64 loops, for finite-difference checks). Trained: the seven linear weights (norm weights
 * stay, biases are absent in this family). OPT blocks are not covered (UnsupportedError).
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import type { Model } from "../../models/model.ts";
import type { Backend } from "../../backend/backend.ts";
import { OptionError, UnsupportedError } from "../../errors.ts";
import { familyOf } from "../../models/family.ts";
import { ropeInvFreq } from "../../models/decoder.ts";

/** The seven linears of a block, in the order gradients are returned. */
export const LKD_LINEARS = ["q", "k", "v", "o", "gate", "up", "down"] as const;
/** A linear's key. */
export type LkdLinear = (typeof LKD_LINEARS)[number];

/** One block's parameters (float64, row-major [out, in] weights). */
export interface BlockParams {
  /** Linear weights. */
  W: Record<LkdLinear, { data: Float64Array; rows: number; cols: number }>;
  /** Attention RMSNorm weight. */
  g1: Float64Array;
  /** MLP RMSNorm weight. */
  g2: Float64Array;
}

/** Block shape. */
export interface BlockDims {
  /** Sequences. */
  B: number;
  /** Tokens per sequence. */
  T: number;
  /** Hidden size. */
  d: number;
  /** Query heads. */
  nH: number;
  /** KV heads. */
  nKV: number;
  /** Head size. */
  hd: number;
  /** RMSNorm epsilon. */
  eps: number;
  /** RoPE inverse frequencies [hd/2]. */
  invFreq: Float64Array;
}

type Mm = (
  a: Float64Array,
  b: Float64Array,
  m: number,
  k: number,
  n: number,
  transB: boolean,
) => Promise<Float64Array>;

/** Float64 product `A·B` (A [m,k], B [k,n]) or `A·Bᵀ` (B [n,k]). */
function mm64(a: Float64Array, b: Float64Array, m: number, k: number, n: number, transB: boolean) {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      if (transB) { for (let t = 0; t < k; t++) s += a[i * k + t] * b[j * k + t]; }
      else for (let t = 0; t < k; t++) s += a[i * k + t] * b[t * n + j];
      c[i * n + j] = s;
    }
  }
  return Promise.resolve(c);
}

function mmBackend(be: Backend): Mm {
  return async (a, b, m, k, n, transB) => {
    const A = { shape: [m, k], data: Float32Array.from(a) };
    const Bt = { shape: transB ? [n, k] : [k, n], data: Float32Array.from(b) };
    const c = transB ? await be.matmulTransB(A, Bt) : await be.matmul(A, Bt);
    return Float64Array.from(c.data);
  };
}

function transpose(a: Float64Array, r: number, c: number): Float64Array {
  const t = new Float64Array(a.length);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) t[j * r + i] = a[i * c + j];
  return t;
}

function rms(x: Float64Array, g: Float64Array, d: number, eps: number) {
  const rows = x.length / d;
  const y = new Float64Array(x.length), r = new Float64Array(rows);
  for (let i = 0; i < rows; i++) {
    let ss = 0;
    for (let j = 0; j < d; j++) ss += x[i * d + j] ** 2;
    r[i] = 1 / Math.sqrt(ss / d + eps);
    for (let j = 0; j < d; j++) y[i * d + j] = x[i * d + j] * r[i] * g[j];
  }
  return { y, r };
}

/** dx of y = x·r·g (r = (mean x² + eps)^(−1/2)) given dy. */
function rmsBack(x: Float64Array, r: Float64Array, g: Float64Array, dy: Float64Array, d: number) {
  const dx = new Float64Array(x.length);
  for (let i = 0; i < r.length; i++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += dy[i * d + j] * g[j] * x[i * d + j];
    const c = (r[i] ** 3 * s) / d;
    for (let j = 0; j < d; j++) dx[i * d + j] = r[i] * g[j] * dy[i * d + j] - x[i * d + j] * c;
  }
  return dx;
}

/** Rotate-half RoPE in place on [B·T, n·hd]; `sign` −1 applies the inverse (the transpose). */
function rope(x: Float64Array, n: number, dims: BlockDims, sign: 1 | -1) {
  const { T, hd, invFreq } = dims;
  const half = hd / 2, w = n * hd, rows = x.length / w;
  for (let r = 0; r < rows; r++) {
    const p = r % T;
    for (let i = 0; i < half; i++) {
      const a = p * invFreq[i], c = Math.cos(a), s = sign * Math.sin(a);
      for (let h = 0; h < n; h++) {
        const o = r * w + h * hd;
        const x1 = x[o + i], x2 = x[o + i + half];
        x[o + i] = x1 * c - x2 * s;
        x[o + i + half] = x2 * c + x1 * s;
      }
    }
  }
}

/** What {@linkcode blockForward} keeps for the backward pass. */
export interface BlockTape {
  /** Block output [B·T, d]. */
  out: Float64Array;
  /** Intermediate tensors of the forward (norm outputs and factors, q/k/v after RoPE, probabilities, …). */
  // deno-lint-ignore no-explicit-any
  saved: Record<string, any>;
}

/** Forward of one block on h [B·T, d] with the weights `P` (already quantized for a student). */
export async function blockForward(
  P: BlockParams,
  h: Float64Array,
  dims: BlockDims,
  opts: { backend?: Backend; float64?: boolean } = {},
): Promise<BlockTape> {
  const mm: Mm = opts.float64 || !opts.backend ? mm64 : mmBackend(opts.backend);
  const { B, T, d, nH, nKV, hd, eps } = dims;
  const N = B * T, qw = nH * hd, kw = nKV * hd, rep = nH / nKV, scale = 1 / Math.sqrt(hd);
  const W = P.W;
  const n1 = rms(h, P.g1, d, eps);
  const q = await mm(n1.y, W.q.data, N, d, qw, true);
  const k = await mm(n1.y, W.k.data, N, d, kw, true);
  const v = await mm(n1.y, W.v.data, N, d, kw, true);
  rope(q, nH, dims, 1);
  rope(k, nKV, dims, 1);
  const Pm = new Float64Array(B * nH * T * T);
  const O = new Float64Array(N * qw);
  for (let b = 0; b < B; b++) {
    for (let hh = 0; hh < nH; hh++) {
      const kh = Math.floor(hh / rep) * hd;
      for (let t = 0; t < T; t++) {
        const pr = ((b * nH + hh) * T + t) * T;
        let mx = -Infinity;
        for (let s = 0; s <= t; s++) {
          let dot = 0;
          for (let i = 0; i < hd; i++) {
            dot += q[(b * T + t) * qw + hh * hd + i] * k[(b * T + s) * kw + kh + i];
          }
          Pm[pr + s] = dot * scale;
          mx = Math.max(mx, Pm[pr + s]);
        }
        let sum = 0;
        for (let s = 0; s <= t; s++) sum += Pm[pr + s] = Math.exp(Pm[pr + s] - mx);
        for (let s = 0; s <= t; s++) Pm[pr + s] /= sum;
        for (let s = 0; s <= t; s++) {
          const p = Pm[pr + s];
          for (let i = 0; i < hd; i++) {
            O[(b * T + t) * qw + hh * hd + i] += p * v[(b * T + s) * kw + kh + i];
          }
        }
      }
    }
  }
  const a = await mm(O, W.o.data, N, qw, d, true);
  const h2 = new Float64Array(N * d);
  for (let i = 0; i < h2.length; i++) h2[i] = h[i] + a[i];
  const n2 = rms(h2, P.g2, d, eps);
  const ff = W.gate.rows;
  const g = await mm(n2.y, W.gate.data, N, d, ff, true);
  const u = await mm(n2.y, W.up.data, N, d, ff, true);
  const m = new Float64Array(N * ff);
  for (let i = 0; i < m.length; i++) m[i] = (g[i] / (1 + Math.exp(-g[i]))) * u[i];
  const dn = await mm(m, W.down.data, N, ff, d, true);
  const out = new Float64Array(N * d);
  for (let i = 0; i < out.length; i++) out[i] = h2[i] + dn[i];
  return { out, saved: { h, n1, q, k, v, Pm, O, h2, n2, g, u, m, mm } };
}

/**
 * Reverse pass: gradients of the loss with respect to each linear weight (and the block input)
 * given `dOut` = ∂L/∂out, through the weights `P` the forward used.
 */
export async function blockBackward(
  P: BlockParams,
  tape: BlockTape,
  dOut: Float64Array,
  dims: BlockDims,
): Promise<{ dW: Record<LkdLinear, Float64Array>; dh: Float64Array }> {
  const { h, n1, q, k, v, Pm, O, h2, n2, g, u, m, mm } = tape.saved;
  const { B, T, d, nH, nKV, hd } = dims;
  const N = B * T, qw = nH * hd, kw = nKV * hd, rep = nH / nKV, scale = 1 / Math.sqrt(hd);
  const W = P.W, ff = W.gate.rows;
  const dW = {} as Record<LkdLinear, Float64Array>;
  // MLP.
  dW.down = await mm(transpose(dOut, N, d), m, d, N, ff, false);
  const dm = await mm(dOut, W.down.data, N, d, ff, false);
  const dg = new Float64Array(N * ff), du = new Float64Array(N * ff);
  for (let i = 0; i < dg.length; i++) {
    const s = 1 / (1 + Math.exp(-g[i]));
    du[i] = dm[i] * g[i] * s;
    dg[i] = dm[i] * u[i] * s * (1 + g[i] * (1 - s));
  }
  dW.gate = await mm(transpose(dg, N, ff), n2.y, ff, N, d, false);
  dW.up = await mm(transpose(du, N, ff), n2.y, ff, N, d, false);
  const dn2a = await mm(dg, W.gate.data, N, ff, d, false);
  const dn2b = await mm(du, W.up.data, N, ff, d, false);
  for (let i = 0; i < dn2a.length; i++) dn2a[i] += dn2b[i];
  const dh2 = rmsBack(h2, n2.r, P.g2, dn2a, d);
  for (let i = 0; i < dh2.length; i++) dh2[i] += dOut[i];
  // Attention output.
  dW.o = await mm(transpose(dh2, N, d), O, d, N, qw, false);
  const dO = await mm(dh2, W.o.data, N, d, qw, false);
  const dq = new Float64Array(N * qw), dk = new Float64Array(N * kw), dv = new Float64Array(N * kw);
  const dP = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let hh = 0; hh < nH; hh++) {
      const kh = Math.floor(hh / rep) * hd;
      for (let t = 0; t < T; t++) {
        const pr = ((b * nH + hh) * T + t) * T, oo = (b * T + t) * qw + hh * hd;
        let dot = 0;
        for (let s = 0; s <= t; s++) {
          let x = 0;
          for (let i = 0; i < hd; i++) {
            x += dO[oo + i] * v[(b * T + s) * kw + kh + i];
            dv[(b * T + s) * kw + kh + i] += Pm[pr + s] * dO[oo + i];
          }
          dP[s] = x;
          dot += x * Pm[pr + s];
        }
        for (let s = 0; s <= t; s++) {
          const dS = Pm[pr + s] * (dP[s] - dot) * scale;
          for (let i = 0; i < hd; i++) {
            dq[oo + i] += dS * k[(b * T + s) * kw + kh + i];
            dk[(b * T + s) * kw + kh + i] += dS * q[oo + i];
          }
        }
      }
    }
  }
  rope(dq, nH, dims, -1);
  rope(dk, nKV, dims, -1);
  dW.q = await mm(transpose(dq, N, qw), n1.y, qw, N, d, false);
  dW.k = await mm(transpose(dk, N, kw), n1.y, kw, N, d, false);
  dW.v = await mm(transpose(dv, N, kw), n1.y, kw, N, d, false);
  const dn1 = await mm(dq, W.q.data, N, qw, d, false);
  const t2 = await mm(dk, W.k.data, N, kw, d, false);
  const t3 = await mm(dv, W.v.data, N, kw, d, false);
  for (let i = 0; i < dn1.length; i++) dn1[i] += t2[i] + t3[i];
  const dh = rmsBack(h, n1.r, P.g1, dn1, d);
  for (let i = 0; i < dh.length; i++) dh[i] += dh2[i];
  return { dW, dh };
}

/** Adam state and step (Kingma & Ba; β1 0.9, β2 0.999, ε 1e-8, as torch.optim.Adam). */
export class Adam {
  #m = new Map<string, Float64Array>();
  #v = new Map<string, Float64Array>();
  #t = 0;
  /** An optimizer with learning rate `lr`. */
  constructor(
    readonly lr: number,
    readonly beta1 = 0.9,
    readonly beta2 = 0.999,
    readonly eps = 1e-8,
  ) {}
  /** One update of every parameter in `params` with its gradient in `grads` (same keys). */
  step(params: Record<string, Float64Array>, grads: Record<string, Float64Array>): void {
    this.#t++;
    const c1 = 1 - this.beta1 ** this.#t, c2 = 1 - this.beta2 ** this.#t;
    for (const [key, p] of Object.entries(params)) {
      const gr = grads[key];
      let m = this.#m.get(key), v = this.#v.get(key);
      if (!m) this.#m.set(key, m = new Float64Array(p.length));
      if (!v) this.#v.set(key, v = new Float64Array(p.length));
      for (let i = 0; i < p.length; i++) {
        m[i] = this.beta1 * m[i] + (1 - this.beta1) * gr[i];
        v[i] = this.beta2 * v[i] + (1 - this.beta2) * gr[i] * gr[i];
        p[i] -= (this.lr * (m[i] / c1)) / (Math.sqrt(v[i] / c2) + this.eps);
      }
    }
  }
}

/** The block names of `model`'s layer `i` by linear key, and its dims for `B`×`T` inputs. */
export function blockLayout(model: Model, i: number, B: number, T: number) {
  const cfg = model.config;
  const fam = familyOf(cfg);
  if (fam.mlp !== "swiglu" || fam.norm !== "rms" || cfg.qkvBias || cfg.oBias || cfg.mlpBias) {
    throw new UnsupportedError(
      "LKD: only bias-free Llama-family blocks (RMSNorm, SwiGLU) are covered",
    );
  }
  const b = fam.block(i);
  const names: Record<LkdLinear, string> = {
    q: b.q,
    k: b.k,
    v: b.v,
    o: b.o,
    gate: b.mlp[0],
    up: b.mlp[1],
    down: b.mlp[2],
  };
  const dims: BlockDims = {
    B,
    T,
    d: cfg.hiddenSize,
    nH: cfg.numHeads,
    nKV: cfg.numKvHeads,
    hd: cfg.headDim,
    eps: cfg.normEps,
    invFreq: ropeInvFreq(cfg),
  };
  return { names, norms: [b.attnNorm, b.mlpNorm], dims };
}

/** Block `i`'s parameters read from `model` (float64 copies). */
export async function blockParams(model: Model, i: number): Promise<BlockParams> {
  const { names, norms } = blockLayout(model, i, 1, 1);
  const W = {} as BlockParams["W"];
  for (const key of LKD_LINEARS) {
    const t = await model.weights.get(`${names[key]}.weight`);
    W[key] = { data: Float64Array.from(t.data), rows: t.shape[0], cols: t.shape[1] };
  }
  const g1 = Float64Array.from((await model.weights.get(`${norms[0]}.weight`)).data);
  const g2 = Float64Array.from((await model.weights.get(`${norms[1]}.weight`)).data);
  return { W, g1, g2 };
}

/** Options of {@linkcode lkdBlock}. */
export interface LkdOptions {
  /** Adam learning rate (the seed: 5e-6 for W4/8A16, 1e-6 for W4A4 on Llama-3.1-8B). */
  lr: number;
  /** Training steps. */
  steps: number;
  /** Sequences per step (the seed: 4). */
  batchSize?: number;
  /** Backend of the products (float32); default plain float64 loops. */
  backend?: Backend;
  /** Progress per step: (step, MSE). */
  onStep?: (step: number, mse: number) => void;
}

/**
 * Distils block `layer` of `student` (quantized by `quantizeW`: latent FP weights → weights used
 * in the forward; the straight-through estimator passes gradients through it) towards the same
 * block of `teacher` on `inputs` (the block's input hidden states, one [T, d] array per
 * sequence, e.g. the teacher's). Latent weights start from the teacher's. Returns the student
 * with the block's final quantized weights and the MSE per step.
 */
export async function lkdBlock(
  teacher: Model,
  student: Model,
  layer: number,
  inputs: Float64Array[],
  quantizeW: (key: LkdLinear, W: Float64Array, rows: number, cols: number) => Float64Array,
  opts: LkdOptions,
): Promise<{ model: Model; losses: number[] }> {
  if (!(opts.lr > 0 && Number.isFinite(opts.lr))) {
    throw new OptionError("lr", `must be > 0, got ${opts.lr}`);
  }
  if (!(Number.isInteger(opts.steps) && opts.steps >= 0)) {
    throw new OptionError("steps", `must be an integer ≥ 0, got ${opts.steps}`);
  }
  const bs = opts.batchSize ?? 4;
  if (!(Number.isInteger(bs) && bs >= 1)) {
    throw new OptionError("batch_size", `must be ≥ 1, got ${bs}`);
  }
  const d = teacher.config.hiddenSize;
  const T = inputs[0].length / d;
  const tParams = await blockParams(teacher, layer);
  const latent = await blockParams(teacher, layer);
  const quantized = (): BlockParams => {
    const W = {} as BlockParams["W"];
    for (const key of LKD_LINEARS) {
      const w = latent.W[key];
      W[key] = { ...w, data: quantizeW(key, w.data, w.rows, w.cols) };
    }
    return { W, g1: latent.g1, g2: latent.g2 };
  };
  const adam = new Adam(opts.lr);
  const losses: number[] = [];
  for (let step = 0; step < opts.steps; step++) {
    const idx = Array.from(
      { length: Math.min(bs, inputs.length) },
      (_, j) => (step * bs + j) % inputs.length,
    );
    const h = new Float64Array(idx.length * T * d);
    idx.forEach((k, j) => h.set(inputs[k], j * T * d));
    const { dims } = blockLayout(teacher, layer, idx.length, T);
    const target = (await blockForward(tParams, h, dims, { backend: opts.backend })).out;
    const Pq = quantized();
    const tape = await blockForward(Pq, h, dims, { backend: opts.backend });
    const dOut = new Float64Array(target.length);
    let mse = 0;
    for (let i = 0; i < dOut.length; i++) {
      const e = tape.out[i] - target[i];
      mse += e * e;
      dOut[i] = (2 * e) / dOut.length;
    }
    losses.push(mse / dOut.length);
    opts.onStep?.(step, mse / dOut.length);
    const { dW } = await blockBackward(Pq, tape, dOut, dims);
    const params = Object.fromEntries(LKD_LINEARS.map((key) => [key, latent.W[key].data]));
    adam.step(params, dW); // straight-through: ∂L/∂W_latent = ∂L/∂Q(W_latent)
  }
  const final = quantized();
  const { names } = blockLayout(teacher, layer, 1, 1);
  const overrides = new Map<string, Tensor>();
  for (const key of LKD_LINEARS) {
    const w = final.W[key];
    overrides.set(`${names[key]}.weight`, {
      shape: [w.rows, w.cols],
      data: Float32Array.from(w.data),
    });
  }
  return { model: { ...student, weights: student.weights.with(overrides) }, losses };
}
