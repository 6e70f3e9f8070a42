/**
 * KL divergence of a quantized model's next-token distributions from the FP model's, with the
 * statistics llama.cpp's `llama-perplexity --kl-divergence` prints: mean KLD ± standard error,
 * maximum, 99.9/99/95/90 %, median, 10/5/1/0.1 % percentiles, minimum; "same top p" (share of
 * positions where both models' argmax agree) ± standard error; Δp = p_Q(next) − p_base(next)
 * mean ± standard error, percentiles and RMS; and both perplexities over the scored tokens.
 *
 * Protocol as llama.cpp's: the evaluation text is tokenized once (here through
 * `perplexity.ts`'s `evalTokens`, e.g. TinyStories with BOS per story), cut into
 * non-overlapping windows of `ctx` tokens, and in each window only the second half is scored
 * (positions ctx/2 … ctx − 2 predicting the next token), so every scored token has at least
 * ctx/2 tokens of context. Percentiles interpolate linearly between sorted values, as llama.cpp's
 * `percentile` does. KLD per position is Σ p log(p/q) over the vocabulary in float64, p the base
 * model's softmax.
 * @module
 */
import { OptionError } from "../errors.ts";
import { forward } from "../models/decoder.ts";
import { getTokenizer } from "../models/load.ts";
import type { Model } from "../models/model.ts";
import { progress } from "../viz/progress.ts";
import { evalTokens, mergeHooks, windowCount } from "./perplexity.ts";

/** Options of {@linkcode kld}. */
export interface KldOptions {
  /** Window length (default min(512, the model's context)). */
  ctx?: number;
  /** Use only the first `nsamples` windows (default all). */
  nsamples?: number;
  /** Data root. */
  root?: string;
  /** A user file for the dataset. */
  path?: string;
  /** Draw a progress bar (default true; silent outside terminals and notebooks). */
  progress?: boolean;
  /** Progress callback (windows done, total). */
  onProgress?: (done: number, total: number) => void;
}

/** Percentile table: key like "99.9%" → value. */
export type Percentiles = Record<string, number>;

/** Result of {@linkcode kld}. */
export interface KldResult {
  /** Dataset name. */
  dataset: string;
  /** Tokens scored. */
  tokens: number;
  /** Windows and their length. */
  windows: number;
  /** Window length. */
  ctx: number;
  /** Mean KLD (nats) and its standard error. */
  meanKld: number;
  /** Standard error of the mean KLD. */
  kldStderr: number;
  /** KLD percentiles: Maximum, 99.9%, 99.0%, 95.0%, 90.0%, Median, 10.0%, 5.0%, 1.0%, 0.1%, Minimum. */
  kld: Percentiles;
  /** Share of positions whose argmax tokens agree, and its standard error. */
  sameTop: number;
  /** Standard error of `sameTop`. */
  sameTopStderr: number;
  /** Mean Δp = p_Q(next) − p_base(next) and its standard error. */
  meanDeltaP: number;
  /** Standard error of the mean Δp. */
  deltaPStderr: number;
  /** RMS of Δp. */
  rmsDeltaP: number;
  /** Δp percentiles (same keys as llama.cpp: Maximum, 99.9% … 0.1%, Minimum). */
  deltaP: Percentiles;
  /** Perplexity of the base model over the scored tokens. */
  pplBase: number;
  /** Perplexity of the quantized model over the scored tokens. */
  pplQuant: number;
  /** Mean ln(PPL(Q)/PPL(base)) = mean NLL difference. */
  meanLnPplRatio: number;
  /** Wall time. */
  seconds: number;
}

/** llama.cpp's linear-interpolation percentile of sorted values. */
export function percentile(sorted: ArrayLike<number>, fraction: number): number {
  const n = sorted.length;
  if (fraction <= 0) return sorted[0];
  if (fraction >= 1) return sorted[n - 1];
  const p = fraction * (n - 1);
  const i = Math.floor(p);
  const f = p - i;
  return (1 - f) * sorted[i] + f * sorted[Math.min(i + 1, n - 1)];
}

function meanAndStderr(xs: Float64Array): [number, number] {
  const n = xs.length;
  let s = 0, s2 = 0;
  for (const x of xs) {
    s += x;
    s2 += x * x;
  }
  const m = s / n;
  return [m, Math.sqrt(Math.max(0, s2 / n - m * m) / Math.max(1, n - 1))];
}

/** Per-position statistics of two logit rows: KLD(p‖q), same argmax, p/q of the target. */
export function rowStats(
  base: ArrayLike<number>,
  quant: ArrayLike<number>,
  target: number,
): { kld: number; same: boolean; pBase: number; pQuant: number } {
  const V = base.length;
  let mb = -Infinity, mq = -Infinity, ab = 0, aq = 0;
  for (let j = 0; j < V; j++) {
    if (base[j] > mb) {
      mb = base[j];
      ab = j;
    }
    if (quant[j] > mq) {
      mq = quant[j];
      aq = j;
    }
  }
  let zb = 0, zq = 0;
  for (let j = 0; j < V; j++) {
    zb += Math.exp(base[j] - mb);
    zq += Math.exp(quant[j] - mq);
  }
  const lzb = Math.log(zb) + mb, lzq = Math.log(zq) + mq;
  let kl = 0;
  for (let j = 0; j < V; j++) {
    const lp = base[j] - lzb, lq = quant[j] - lzq;
    kl += Math.exp(lp) * (lp - lq);
  }
  return {
    kld: Math.max(0, kl),
    same: ab === aq,
    pBase: Math.exp(base[target] - lzb),
    pQuant: Math.exp(quant[target] - lzq),
  };
}

/**
 * KL divergence of `quant` from `base` on `dataset` ("tinystories", "wikitext2", …) with
 * llama.cpp's `--kl-divergence` protocol and statistics (see the module doc).
 */
export async function kld(
  base: Model,
  quant: Model,
  dataset = "tinystories",
  opts: KldOptions = {},
): Promise<KldResult> {
  const t0 = performance.now();
  if (base.config.vocabSize !== quant.config.vocabSize) {
    throw new OptionError(
      "quant",
      `vocabulary ${quant.config.vocabSize} differs from the base model's ${base.config.vocabSize}`,
    );
  }
  const cap = Math.min(base.config.maxPositions, quant.config.maxPositions);
  const ctx = opts.ctx ?? Math.min(512, cap);
  if (!(Number.isInteger(ctx) && ctx >= 4 && ctx <= cap)) {
    throw new OptionError("ctx", `${ctx} is outside 4..${cap} (the models' context)`);
  }
  const tok = await getTokenizer(base);
  const { ids } = await evalTokens(tok, dataset, opts);
  const windows = windowCount(ids.length, ctx, { dataset, nsamples: opts.nsamples, option: "ctx" });
  const first = Math.floor(ctx / 2);
  const per = ctx - 1 - first;
  const n = windows * per;
  const klds = new Float64Array(n), dps = new Float64Array(n);
  let same = 0, nllB = 0, nllQ = 0;
  const V = base.config.vocabSize;
  const hb = mergeHooks(base.hooks, undefined), hq = mergeHooks(quant.hooks, undefined);
  const bar = opts.progress === false ? undefined : progress("kld", windows);
  let k = 0;
  for (let w = 0; w < windows; w++) {
    const win = ids.slice(w * ctx, (w + 1) * ctx);
    const Lb = (await forward(base, win, { hooks: hb })).data;
    const Lq = (await forward(quant, win, { hooks: hq })).data;
    for (let t = first; t < ctx - 1; t++) {
      const r = rowStats(
        Lb.subarray(t * V, (t + 1) * V),
        Lq.subarray(t * V, (t + 1) * V),
        win[t + 1],
      );
      klds[k] = r.kld;
      dps[k] = r.pQuant - r.pBase;
      if (r.same) same++;
      nllB -= Math.log(r.pBase);
      nllQ -= Math.log(r.pQuant);
      k++;
    }
    bar?.tick(1);
    opts.onProgress?.(w + 1, windows);
  }
  await bar?.done();
  const [meanKld, kldStderr] = meanAndStderr(klds);
  const [meanDeltaP, deltaPStderr] = meanAndStderr(dps);
  let sq = 0;
  for (const d of dps) sq += d * d;
  const fracs: [string, number][] = [
    ["Maximum", 1],
    ["99.9%", 0.999],
    ["99.0%", 0.99],
    ["95.0%", 0.95],
    ["90.0%", 0.9],
    ["75.0%", 0.75],
    ["Median", 0.5],
    ["25.0%", 0.25],
    ["10.0%", 0.1],
    ["5.0%", 0.05],
    ["1.0%", 0.01],
    ["0.1%", 0.001],
    ["Minimum", 0],
  ];
  const sk = klds.slice().sort(), sd = dps.slice().sort();
  const table = (s: Float64Array) =>
    Object.fromEntries(fracs.map(([k, f]) => [k, percentile(s, f)]));
  const p = same / n;
  return {
    dataset,
    tokens: n,
    windows,
    ctx,
    meanKld,
    kldStderr,
    kld: table(sk),
    sameTop: p,
    sameTopStderr: Math.sqrt(p * (1 - p) / Math.max(1, n - 1)),
    meanDeltaP,
    deltaPStderr,
    rmsDeltaP: Math.sqrt(sq / n),
    deltaP: table(sd),
    pplBase: Math.exp(nllB / n),
    pplQuant: Math.exp(nllQ / n),
    meanLnPplRatio: (nllQ - nllB) / n,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** llama.cpp-style text summary of a {@linkcode KldResult}. */
export function kldSummary(r: KldResult): string {
  const f = (x: number, d = 6) => x.toFixed(d);
  const pct = (x: number) => `${(100 * x).toFixed(3)} %`;
  const lines = [
    `====== Perplexity statistics (${r.dataset}, ${r.windows} windows of ${r.ctx}, ${r.tokens} tokens) ======`,
    `Mean PPL(Q)                   : ${f(r.pplQuant)}`,
    `Mean PPL(base)                : ${f(r.pplBase)}`,
    `Mean ln(PPL(Q)/PPL(base))     : ${f(r.meanLnPplRatio)}`,
    "====== KL divergence statistics ======",
    `Mean    KLD: ${f(r.meanKld)} ± ${f(r.kldStderr)}`,
    ...Object.entries(r.kld).map(([k, v]) => `${k.padEnd(7)} KLD: ${f(v)}`),
    "====== Token probability statistics ======",
    `Mean    Δp: ${pct(r.meanDeltaP)} ± ${pct(r.deltaPStderr)}`,
    ...Object.entries(r.deltaP).map(([k, v]) => `${k.padEnd(7)} Δp: ${pct(v)}`),
    `RMS Δp    : ${pct(r.rmsDeltaP)}`,
    `Same top p: ${pct(r.sameTop)} ± ${pct(r.sameTopStderr)}`,
  ];
  return lines.join("\n");
}
