/**
 * KVQuant (Hooper et al. 2024, "KVQuant: Towards 10 Million Context Length LLM Inference with KV
 * Cache Quantization"): a KV cache that stores packed codebook indices, per-token V parameters and
 * sparse full-precision outliers, after the reference SqueezeAILab/KVQuant `quant/` (calibration:
 * `llama_simquant.py`, `SimQuant.quantize`; inference: `QuantLinearSim`, `quant_fn_nuq_recon`,
 * `get_outliers`, `get_outliers_dynamic`) as qllm-infer runs it (`lib/kvquant`, with
 * `first_few_fp16` and `prefill_with_quant`).
 *
 * Keys, per channel, static: a quantizer file holds, per layer, each channel's outlier thresholds
 * `upper`/`lower` (the `t`- and `(1 − t)`-percentiles of the calibration keys,
 * `t = 1 − (1 − sparsityThreshold) / 2`; min and max without `includeSparse`). A key `x` of channel
 * c is an outlier when `x < lower_c` or `x > upper_c` (kept exactly, as an (index, value) pair);
 * otherwise `u = (x − offset_c) / range_c` with `offset = (upper + lower) / 2`,
 * `range = (upper − lower) / 2` is rounded to the nearest codebook entry. `preRope` (default
 * true, the paper's pre-RoPE key quantization) stores the keys before RoPE and rotates them after
 * dequantizing, at their positions; `preRope: false` stores the post-RoPE keys.
 *
 * Values, per token, dynamic: the row's outliers are the values `≤` its `(1 − t)`-quantile or `≥`
 * its `t`-quantile (torch.quantile's linear interpolation; so at least the row's minimum and
 * maximum when `includeSparse`); the outliers are replaced by the row's (lower) median, and the
 * range of what is left gives the row's offset and range (two f32 per token).
 *
 * Codebooks (`nuq`, default true): weighted 1-D k-means (`_kmeans.ts`) of the normalized
 * calibration values, outliers and the first `firstFewFp16` tokens of each window left out — one
 * codebook of `2^bits` entries per layer for K and one for V, as the reference fits them
 * (`kCodebook: "channel"` fits one per key channel instead). Weights: the reference uses Fisher
 * information (squared gradients of the loss w.r.t. K/V, `--fisher`); quantlab has no backward
 * pass, so `sensitivity: "activation"` weights each value by its squared magnitude x² — a proxy,
 * not the Fisher information — and `"uniform"` (default) uses weight 1 (the reference without
 * `--fisher`). Measured on stories260K (TinyStories perplexity, 16 calibration windows, 2 eval
 * windows, 2-bit-1%): uniform weights 5.28, x² proxy 5.92, per-channel K codebooks 5.12 (uniform
 * weights), the uniform grid (`nuq: false`) 9.37, post-RoPE keys 23.6, FP 3.74 — the proxy hurts,
 * hence the default.
 *
 * stories260K, TinyStories, 4 windows of 512, token by token (`tools/kv_table.ts`): FP 3.5541,
 * KVQuant-4bit-1% 3.5845, 3bit 3.7667, 2bit 4.7899 (KIVI-4 3.5582, KIVI-2 3.8591); with one
 * prefill per window (`kvChunk` = seqlen, the reference's eval_ppl) every KV method gives FP's
 * 3.5541, since the prefill attends in full precision. `nuq: false` uses the uniform grid of `2^bits` points on [−1, 1] (= the reference's
 * `quant_fn_zp` without `clamp`).
 *
 * Attention sinks: tokens at positions below `firstFewFp16` (default 1) are stored unquantized.
 *
 * Streaming: every token is quantized when it is written (per-token V and calibrated per-channel K
 * need no block), and every query reads the dequantized cache, its own token included (the
 * reference quantizes the k_proj/v_proj outputs). A prefill (empty cache, T > 1) attends in full
 * precision unless `prefillWithQuant` (qllm-infer's `prefill_with_quant`; its `run_kvquant.sh` sets
 * true, "set to false for generative tasks"; default false here, as quantlab's KIVI and as the
 * seed's perplexity table runs it). Once the cache is non-empty a chunk of new tokens reads back
 * its own quantized rows, so chunked feeding computes what token-by-token feeding does (up to the
 * float order of batched products).
 *
 * Storage per quantized token per layer: K and V codes packed `⌊32 / bits⌋` per u32 word along the
 * row (`packing.ts`), V's offset and range (f32), and with `includeSparse` a u16 count per tensor
 * and the outliers as u16 index + f32 value. The quantizer's thresholds and codebooks are counted
 * once per layer. `bits` 16 stores every row unquantized (logits = full precision exactly).
 *
 * On a backend with `kvquantAttention` (WebGPU) the cache also keeps a device copy, made at the
 * first token and kept in step: each token is uploaded once, when the host quantizes it, at its
 * final place (its codebook indices, V's offset and range, its outliers; the first-few rows
 * unquantized). A one-token step (decode) then attends there, from the codes
 * (`kernels/kvquant_attention.ts`: codebook lookup, outliers patched in, RoPE applied to pre-RoPE
 * keys after dequantizing); chunks of several tokens, a `probs` spec and a sliding window that
 * cuts the keys attend on the host. `deviceTraffic()` counts the bytes that crossed the bus;
 * `release()` frees the device copy (`generate` calls it).
 *
 * Deviations, measured or by construction: (1) the reference keeps the first `first_few_fp16`
 * rows of every call in fp16, which during cached decoding is every new token; here it is the
 * first tokens of the sequence (the attention sinks the paper means). (2) k-means starts from the
 * uniform grid, not k-means++ (`_kmeans.ts`). (3) Scales, thresholds and codebooks are f32 (the
 * reference stores thresholds in fp16). (4) Outliers are stored as their exact values (the
 * reference re-adds `x − offset` to `offset`, which can round). (5) A constant V row (range 0)
 * dequantizes to itself (the reference's NaN is mapped to 0 and then shifted by the offset — the
 * same value).
 * @module
 */
import type { ModelConfig } from "../../models/config.ts";
import type { Model } from "../../models/model.ts";
import type {
  Backend,
  KvQuantDevice,
  KvQuantToken,
  PackedKvTraffic,
} from "../../backend/backend.ts";
import {
  attention,
  type CacheAttendInput,
  forward,
  type KVCache,
  ropeInvFreq,
} from "../../models/decoder.ts";
import { familyOf } from "../../models/family.ts";
import type { Tensor } from "../../tensor.ts";
import { FormatError, OptionError, QuantlabError, UnsupportedError } from "../../errors.ts";
import { readTextChecked, writeFileAtomic } from "../../io/fs.ts";
import { checkKvOptions, type KvOptionSpec } from "./_check.ts";
import { nearestIndex, uniformGrid, weightedKMeans1d } from "./_kmeans.ts";
import { codesPerWord, wordsPerGroup } from "./packing.ts";

/** KVQuant cache options (defaults: qllm-infer's `run_kvquant.sh`). */
export interface KvQuantOptions {
  /** Bits of the K and V codes: 2, 3, 4 (5 accepted, as the reference); 16 = unquantized. Default 4. */
  bits?: number;
  /** Non-uniform (k-means) codebooks; false = the uniform grid. Default true. */
  nuq?: boolean;
  /** Dense-and-sparse: outliers kept exactly. Default true. */
  includeSparse?: boolean;
  /** Outlier percentile: 0.99 keeps about 1% (half above, half below). Default 0.99. */
  sparsityThreshold?: number;
  /** Leading tokens (attention sinks) stored unquantized. Default the quantizer's, else 1. */
  firstFewFp16?: number;
  /** Quantize keys before RoPE (rotate after dequantizing). Default true. */
  preRope?: boolean;
  /** Quantize the prompt's own K/V before its attention at prefill. Default false. */
  prefillWithQuant?: boolean;
  /** The calibrated quantizer ({@linkcode calibrateKvQuant}, {@linkcode loadKvQuantizer}). */
  quantizer?: KvQuantizer;
}

/** Option spec of {@linkcode KvQuantOptions}. */
export const KVQUANT_SPECS: Record<string, KvOptionSpec> = {
  bits: { type: "int", min: 2, max: 16 },
  nuq: { type: "boolean" },
  includeSparse: { type: "boolean" },
  sparsityThreshold: { type: "number", min: 0.5, max: 1 },
  firstFewFp16: { type: "int", min: 0, max: 2 ** 24 },
  preRope: { type: "boolean" },
  prefillWithQuant: { type: "boolean" },
  quantizer: { type: "object" },
};

/** One layer of a {@linkcode KvQuantizer}. */
export interface KvQuantizerLayer {
  /** Per key channel upper outlier threshold [kvWidth]. */
  kUpper: Float32Array;
  /** Per key channel lower outlier threshold [kvWidth]. */
  kLower: Float32Array;
  /** Key codebook on [−1, 1]: [2^bits] (per layer) or [kvWidth · 2^bits] (per channel). */
  kLut: Float32Array;
  /** Value codebook [2^bits]. */
  vLut: Float32Array;
}

/** What calibration used. */
export interface KvQuantCalibrationInfo {
  /** Dataset name. */
  dataset: string;
  /** Text actually read. */
  source: string;
  /** Windows. */
  nsamples: number;
  /** Tokens per window. */
  seqlen: number;
  /** PRNG seed. */
  seed: number;
}

/** A calibrated KVQuant quantizer (the reference's "quantizer file" content). */
export interface KvQuantizer {
  /** Bits of the codes. */
  bits: number;
  /** Keys calibrated before RoPE. */
  preRope: boolean;
  /** Non-uniform codebooks. */
  nuq: boolean;
  /** Dense-and-sparse thresholds. */
  includeSparse: boolean;
  /** Outlier percentile. */
  sparsityThreshold: number;
  /** Leading tokens left out of the codebook fit. */
  firstFewFp16: number;
  /** k-means weights ("activation": x², "uniform": 1). */
  sensitivity: "activation" | "uniform";
  /** One key codebook per layer or per channel. */
  kCodebook: "layer" | "channel";
  /** Decoder layers. */
  numLayers: number;
  /** numKvHeads · headDim. */
  kvWidth: number;
  /** Calibration data. */
  calibration: KvQuantCalibrationInfo;
  /** Per layer thresholds and codebooks. */
  layers: KvQuantizerLayer[];
  /** File it was loaded from (messages). */
  source?: string;
}

/** Resolved KVQuant settings. */
export interface KvQuantSettings {
  /** Bits (16 = unquantized). */
  bits: number;
  /** See {@linkcode KvQuantOptions.nuq}. */
  nuq: boolean;
  /** See {@linkcode KvQuantOptions.includeSparse}. */
  includeSparse: boolean;
  /** See {@linkcode KvQuantOptions.sparsityThreshold}. */
  sparsityThreshold: number;
  /** See {@linkcode KvQuantOptions.firstFewFp16}. */
  firstFewFp16: number;
  /** See {@linkcode KvQuantOptions.preRope}. */
  preRope: boolean;
  /** See {@linkcode KvQuantOptions.prefillWithQuant}. */
  prefillWithQuant: boolean;
  /** Key codebook granularity (from the quantizer; "layer" without one). */
  kCodebook: "layer" | "channel";
}

/**
 * Checks `opts` against `cfg` (and its quantizer, if any) and fills the defaults: options left out
 * are taken from the quantizer, options given must agree with it (OptionError naming the option).
 */
export function kvquantSettings(cfg: ModelConfig, opts: KvQuantOptions = {}): KvQuantSettings {
  checkKvOptions("kvquant", opts, KVQUANT_SPECS);
  const qz = opts.quantizer;
  const pick = <K extends keyof KvQuantizer & keyof KvQuantOptions>(k: K, d: KvQuantizer[K]) => {
    const given = opts[k] as KvQuantizer[K] | undefined;
    if (qz && opts.bits !== 16) {
      if (given !== undefined && given !== qz[k]) {
        throw new OptionError(
          k,
          `${JSON.stringify(given)} disagrees with the quantizer${
            qz.source ? ` ${qz.source}` : ""
          } (calibrated with ${k} ${JSON.stringify(qz[k])})`,
        );
      }
      return qz[k];
    }
    return given ?? d;
  };
  const bits = pick("bits", 4);
  if (!(bits <= 5 || bits === 16)) {
    throw new OptionError("bits", `KVQuant stores 2..5-bit codes or 16 (unquantized), got ${bits}`);
  }
  const kw = cfg.numKvHeads * cfg.headDim;
  if (kw > 65535) {
    throw new UnsupportedError(`kvquant: outlier indices are u16; K/V width ${kw} is too wide`);
  }
  const s: KvQuantSettings = {
    bits,
    nuq: pick("nuq", true),
    includeSparse: pick("includeSparse", true),
    sparsityThreshold: pick("sparsityThreshold", 0.99),
    firstFewFp16: opts.firstFewFp16 ?? qz?.firstFewFp16 ?? 1,
    preRope: pick("preRope", true),
    prefillWithQuant: opts.prefillWithQuant ?? false,
    kCodebook: qz?.kCodebook ?? "layer",
  };
  if (qz && bits !== 16) checkQuantizerFor(cfg, qz);
  return s;
}

/** Throws OptionError when `q` was calibrated for another shape than `cfg`. */
export function checkQuantizerFor(cfg: ModelConfig, q: KvQuantizer): void {
  const kw = cfg.numKvHeads * cfg.headDim;
  const where = q.source ? ` (${q.source})` : "";
  if (q.numLayers !== cfg.numLayers || q.kvWidth !== kw) {
    throw new OptionError(
      "quantizer",
      `calibrated for ${q.numLayers} layers × K/V width ${q.kvWidth}${where}, ` +
        `but the model has ${cfg.numLayers} × ${kw}`,
    );
  }
}

/** `1 − (1 − threshold) / 2`: the upper percentile of the outlier thresholds. */
function upperT(s: { includeSparse: boolean; sparsityThreshold: number }): number {
  return s.includeSparse ? 1 - (1 - s.sparsityThreshold) / 2 : 1;
}

/** torch.quantile / np.percentile (linear) of ascending `s` at `q`. */
function quantileSorted(s: Float64Array | Float32Array, q: number): number {
  const pos = q * (s.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(s.length - 1, lo + 1);
  return s[lo] + (pos - lo) * (s[hi] - s[lo]);
}

/**
 * Outliers per value row of `n` distinct values at `sparsityThreshold` (closed form of the
 * quantile rule): `n − ⌈t(n−1)⌉` at the top (`n − t(n−1)` when that is whole) and
 * `⌊(1−t)(n−1)⌋ + 1` at the bottom.
 */
export function vOutliersPerRow(n: number, sparsityThreshold: number): number {
  const t = 1 - (1 - sparsityThreshold) / 2;
  const p = t * (n - 1);
  const q = (1 - t) * (n - 1);
  return n - Math.ceil(p) + Math.floor(q) + 1;
}

/** Bytes of the quantizer arrays one layer holds (thresholds and codebooks). */
function quantizerLayerBytes(kw: number, s: KvQuantSettings, fb: number): number {
  if (s.bits === 16) return 0;
  const k = 2 ** s.bits;
  return (2 * kw + (s.kCodebook === "channel" ? kw * k : k) + k) * fb;
}

/** Bytes per quantized token per layer, outliers not included. */
export function kvquantTokenBytes(
  cfg: ModelConfig,
  s: KvQuantSettings,
  opts: { floatBytes?: number } = {},
): number {
  const fb = opts.floatBytes ?? 4;
  const kw = cfg.numKvHeads * cfg.headDim;
  if (s.bits === 16) return 2 * kw * fb;
  return 2 * wordsPerGroup(kw, s.bits) * 4 + 2 * fb + (s.includeSparse ? 4 : 0);
}

/**
 * Bytes of a KVQuant cache holding `n` tokens, per layer (closed form): the quantizer's thresholds
 * and codebooks, `min(n, firstFewFp16)` full rows of K and V, `{@linkcode kvquantTokenBytes}` per
 * other token, and `2 + floatBytes` per outlier. `outliers` is the layer's count when known (a
 * cache passes what it holds); otherwise the expectation: `(1 − sparsityThreshold) · width` per key
 * row (the calibration percentile) and {@linkcode vOutliersPerRow} per value row.
 */
export function kvquantLayerBytes(
  cfg: ModelConfig,
  s: KvQuantSettings,
  n: number,
  opts: { floatBytes?: number; outliers?: number } = {},
): number {
  const fb = opts.floatBytes ?? 4;
  const kw = cfg.numKvHeads * cfg.headDim;
  if (s.bits === 16) return n * 2 * kw * fb;
  const ff = Math.min(n, s.firstFewFp16);
  const nq = n - ff;
  const out = s.includeSparse
    ? opts.outliers ??
      nq * ((1 - s.sparsityThreshold) * kw + vOutliersPerRow(kw, s.sparsityThreshold))
    : 0;
  return quantizerLayerBytes(kw, s, fb) + ff * 2 * kw * fb +
    nq * kvquantTokenBytes(cfg, s, opts) + out * (2 + fb);
}

/** One token of one layer as stored. */
interface Tok {
  /** Unquantized K then V (first-few tokens, or bits 16). */
  raw?: Float32Array;
  /** K codes then V codes, packed. */
  codes?: Uint32Array;
  /** V offset and range. */
  vp?: Float32Array;
  /** Outlier counts of K and V. */
  nnz?: Uint16Array;
  /** Outlier indices (K's then V's). */
  idx?: Uint16Array;
  /** Outlier values. */
  val?: Float32Array;
}

/** Per-layer precomputed K offsets/ranges and codebooks. */
interface LayerQ {
  kOff: Float32Array;
  kRng: Float32Array;
  kUp: Float32Array;
  kLo: Float32Array;
  kLut: Float32Array;
  vLut: Float32Array;
}

const f = Math.fround;

/** A KVQuant cache (see the module doc); a {@linkcode KVCache} the decoder attends through. */
export class KvQuantCache implements KVCache {
  /** Unused (the K/V live in packed form): empty. */
  k: Float32Array[] = [];
  /** Unused: empty. */
  v: Float32Array[] = [];
  /** Tokens cached. */
  length = 0;
  /** Maximum tokens. */
  capacity: number;
  /** Settings. */
  readonly settings: KvQuantSettings;
  /** The model config. */
  readonly config: ModelConfig;
  #toks: Tok[][];
  #q: LayerQ[] = [];
  #kw: number;
  #rope: Float64Array | undefined;
  #ropeTab: Float32Array | undefined;
  /** The device copy: undefined = not decided yet, null = none (host path). */
  #device: KvQuantDevice | null | undefined;
  #deviceBackend: Backend | undefined;
  /** Per layer: tokens already uploaded to the device copy. */
  #uploaded: number[];
  /**
   * Per layer, the host path's float32 copy of the cache as attention reads it (dequantized,
   * keys rotated when stored before RoPE) for tokens [0, n): tokens are only appended, so a
   * decode step dequantizes its new tokens only, not the whole prefix (the same values).
   */
  #deq: { K: Float32Array; V: Float32Array; n: number }[] = [];

  /** An empty cache for `capacity` tokens (default the model's context). */
  constructor(cfg: ModelConfig, opts: KvQuantOptions = {}, capacity = cfg.maxPositions) {
    this.settings = kvquantSettings(cfg, opts);
    this.config = cfg;
    this.capacity = capacity;
    this.#kw = cfg.numKvHeads * cfg.headDim;
    this.#toks = Array.from({ length: cfg.numLayers }, () => []);
    this.#uploaded = new Array(cfg.numLayers).fill(0);
    this.#rope = familyOf(cfg).positions === "rope" ? ropeInvFreq(cfg) : undefined;
    if (this.settings.bits !== 16) {
      const qz = opts.quantizer;
      if (!qz) {
        throw new OptionError(
          "quantizer",
          "kvquant needs a calibrated quantizer: calibrateKvQuant(model, …) or " +
            "loadKvQuantizer(path) (or bits 16)",
        );
      }
      this.#q = qz.layers.map((L) => {
        const kOff = new Float32Array(this.#kw);
        const kRng = new Float32Array(this.#kw);
        for (let c = 0; c < this.#kw; c++) {
          kOff[c] = f(f(L.kUpper[c] + L.kLower[c]) / 2);
          kRng[c] = f(f(L.kUpper[c] - L.kLower[c]) / 2);
        }
        return { kOff, kRng, kUp: L.kUpper, kLo: L.kLower, kLut: L.kLut, vLut: L.vLut };
      });
    }
  }

  /** The decoder's hook: stores the new rows of `layer` and attends (see the module doc). */
  attend = async (layer: number, x: CacheAttendInput): Promise<Float32Array> => {
    const { q, k, kPreRope, v, off: n, dims, backend } = x;
    const T = dims.T;
    const kw = this.#kw;
    const kSrc = this.settings.preRope ? kPreRope : k;
    const toks = this.#toks[layer];
    if (toks.length !== n) {
      throw new QuantlabError(
        `kvquant cache: layer ${layer} holds ${toks.length} tokens, not ${n}`,
      );
    }
    for (let t = 0; t < T; t++) {
      toks.push(
        this.#encode(
          layer,
          kSrc.subarray(t * kw, (t + 1) * kw),
          v.subarray(t * kw, (t + 1) * kw),
          n + t,
        ),
      );
    }
    const dev = this.#deviceFor(backend, layer, n);
    if (dev) {
      this.#upload(layer, dev);
      if (
        T === 1 && !(dims.probs && dims.probs.bits < 16) &&
        (dims.window == null || n < dims.window)
      ) {
        return await dev.attend(layer, q, { pos: n, scale: dims.scale });
      }
    }
    if (n === 0 && T > 1 && !this.settings.prefillWithQuant) {
      return attention(q, k, v, dims, backend);
    }
    const S = n + T;
    let d = this.#deq[layer];
    if (!d || d.K.length < S * kw) {
      const size = Math.max(S, this.capacity) * kw;
      const grown = { K: new Float32Array(size), V: new Float32Array(size), n: d?.n ?? 0 };
      if (d) {
        grown.K.set(d.K.subarray(0, d.n * kw));
        grown.V.set(d.V.subarray(0, d.n * kw));
      }
      d = this.#deq[layer] = grown;
    }
    if (d.n < S) {
      this.#read(layer, S, d.K, d.V, this.settings.preRope, d.n);
      d.n = S;
    }
    return attention(q, d.K.subarray(0, S * kw), d.V.subarray(0, S * kw), { ...dims, S }, backend);
  };

  /**
   * The device copy of this cache when `backend` has `kvquantAttention` (codes of 2..5 bits):
   * made at the first token of layer 0, so it mirrors the cache from the start; a cache first
   * filled elsewhere stays on the host path, and one used with another backend drops its copy.
   */
  #deviceFor(backend: Backend, layer: number, n: number): KvQuantDevice | undefined {
    if (this.#device !== undefined) {
      // Another backend attends on the host without updating the copy: drop it for good.
      if (this.#device && this.#deviceBackend !== backend) this.release();
      return this.#device ?? undefined;
    }
    const s = this.settings;
    if (layer !== 0 || n !== 0 || !backend.kvquantAttention || s.bits === 16) return undefined;
    const cfg = this.config;
    const kw = this.#kw;
    const rope = s.preRope ? this.#ropeTable(this.capacity) : undefined;
    this.#deviceBackend = backend;
    this.#device = backend.kvquantAttention({
      layers: cfg.numLayers,
      nH: cfg.numHeads,
      nKV: cfg.numKvHeads,
      hd: cfg.headDim,
      bits: s.bits,
      firstFew: s.firstFewFp16,
      perChannel: s.kCodebook === "channel",
      rope,
      params: this.#q.map((L) => ({ kOff: L.kOff, kRng: L.kRng, kLut: L.kLut, vLut: L.vLut })),
      outliersPerToken: s.includeSparse
        ? (1 - s.sparsityThreshold) * kw + vOutliersPerRow(kw, s.sparsityThreshold)
        : 0,
      capacity: this.capacity,
    }) ?? null;
    return this.#device ?? undefined;
  }

  /**
   * The RoPE table [≥ n positions, hd/2, 2] of (cos, sin), rounded as `applyRope` rounds them
   * (angle in f32, then cos/sin to f32); built once and grown on demand. Undefined without RoPE.
   */
  #ropeTable(n: number): Float32Array | undefined {
    const inv = this.#rope;
    if (!inv) return undefined;
    const half = inv.length;
    if (this.#ropeTab && this.#ropeTab.length >= n * half * 2) return this.#ropeTab;
    const m = Math.max(n, this.capacity);
    const t = new Float32Array(m * half * 2);
    for (let p = 0; p < m; p++) {
      for (let i = 0; i < half; i++) {
        const af = f(f(p) * f(inv[i]));
        t[(p * half + i) * 2] = Math.cos(af);
        t[(p * half + i) * 2 + 1] = Math.sin(af);
      }
    }
    return this.#ropeTab = t;
  }

  /** Uploads the tokens of `layer` stored since the last upload (each once, at its place). */
  #upload(layer: number, dev: KvQuantDevice): void {
    const toks = this.#toks[layer];
    const kw = this.#kw;
    for (; this.#uploaded[layer] < toks.length; this.#uploaded[layer]++) {
      const p = this.#uploaded[layer];
      const t = toks[p];
      if (t.raw) dev.writeRaw(layer, p, t.raw.subarray(0, kw), t.raw.subarray(kw));
      else dev.appendToken(layer, p, t as KvQuantToken);
    }
  }

  /**
   * Bytes this cache moved to and from the device and holds there (`undefined` when it runs on
   * the host: no `kvquantAttention` on the backend, or 16 bits).
   */
  deviceTraffic(): PackedKvTraffic | undefined {
    return this.#device?.traffic();
  }

  /** Frees the device copy (the cache then attends on the host if used again). */
  release(): void {
    this.#device?.release();
    if (this.#device) this.#device = null;
  }

  #encode(layer: number, kRow: Float32Array, vRow: Float32Array, pos: number): Tok {
    const s = this.settings;
    const kw = this.#kw;
    if (s.bits === 16 || pos < s.firstFewFp16) {
      const raw = new Float32Array(2 * kw);
      raw.set(kRow);
      raw.set(vRow, kw);
      return { raw };
    }
    const Q = this.#q[layer];
    const bits = s.bits;
    const nc = 2 ** bits;
    const wpr = wordsPerGroup(kw, bits);
    const cpw = codesPerWord(bits);
    const codes = new Uint32Array(2 * wpr);
    const oi: number[] = [];
    const ov: number[] = [];
    const put = (base: number, i: number, c: number) => {
      codes[base + Math.floor(i / cpw)] |= c << ((i % cpw) * bits);
    };
    // Keys: static per-channel thresholds.
    const perCh = s.kCodebook === "channel";
    for (let c = 0; c < kw; c++) {
      const x = kRow[c];
      if (s.includeSparse && (x < Q.kLo[c] || x > Q.kUp[c])) {
        oi.push(c);
        ov.push(x);
        continue;
      }
      const r = Q.kRng[c];
      const u = r === 0 ? 0 : f(f(x - Q.kOff[c]) / r);
      put(0, c, nearestIndex(u, Q.kLut, perCh ? c * nc : 0, nc));
    }
    const kNnz = oi.length;
    // Values: dynamic per-token range after removing the row's outliers.
    let mx = -Infinity, mn = Infinity;
    let isOut: ((x: number) => boolean) | undefined;
    if (s.includeSparse) {
      const srt = Float32Array.from(vRow).sort();
      const t = upperT(s);
      const up = f(quantileSorted(srt, t));
      const lo = f(quantileSorted(srt, 1 - t));
      const med = srt[(kw - 1) >> 1];
      isOut = (x) => x <= lo || x >= up;
      for (let c = 0; c < kw; c++) {
        const x = isOut(vRow[c]) ? med : vRow[c];
        if (x > mx) mx = x;
        if (x < mn) mn = x;
      }
    } else {
      for (let c = 0; c < kw; c++) {
        if (vRow[c] > mx) mx = vRow[c];
        if (vRow[c] < mn) mn = vRow[c];
      }
    }
    const vOff = f(f(mx + mn) / 2);
    const vRng = f(f(mx - mn) / 2);
    for (let c = 0; c < kw; c++) {
      const x = vRow[c];
      if (isOut?.(x)) {
        oi.push(c);
        ov.push(x);
        continue;
      }
      const u = vRng === 0 ? 0 : f(f(x - vOff) / vRng);
      put(wpr, c, nearestIndex(u, Q.vLut, 0, nc));
    }
    const tok: Tok = { codes, vp: Float32Array.of(vOff, vRng) };
    if (s.includeSparse) {
      tok.nnz = Uint16Array.of(kNnz, oi.length - kNnz);
      tok.idx = Uint16Array.from(oi);
      tok.val = Float32Array.from(ov);
    }
    return tok;
  }

  /**
   * Dequantizes tokens [from, upto) of `layer` into rows [from, upto) of K and V [≥ upto, kw];
   * `rotate` applies RoPE to the keys at their positions (pre-RoPE storage).
   */
  #read(
    layer: number,
    upto: number,
    K: Float32Array,
    V: Float32Array,
    rotate: boolean,
    from = 0,
  ): void {
    const s = this.settings;
    const kw = this.#kw;
    const toks = this.#toks[layer];
    const Q = this.#q[layer];
    const bits = s.bits;
    const nc = 2 ** bits;
    const mask = nc - 1;
    const wpr = wordsPerGroup(kw, bits);
    const cpw = codesPerWord(bits);
    const perCh = s.kCodebook === "channel";
    for (let p = from; p < upto; p++) {
      const tk = toks[p];
      const o = p * kw;
      if (tk.raw) {
        K.set(tk.raw.subarray(0, kw), o);
        V.set(tk.raw.subarray(kw), o);
        continue;
      }
      const cd = tk.codes!;
      const [vOff, vRng] = tk.vp!;
      for (let c = 0; c < kw; c++) {
        const w = Math.floor(c / cpw), sh = (c % cpw) * bits;
        const kc = (cd[w] >>> sh) & mask;
        const vc = (cd[wpr + w] >>> sh) & mask;
        K[o + c] = f(f(Q.kLut[(perCh ? c * nc : 0) + kc] * Q.kRng[c]) + Q.kOff[c]);
        V[o + c] = f(f(Q.vLut[vc] * vRng) + vOff);
      }
      if (tk.nnz) {
        const kn = tk.nnz[0];
        for (let j = 0; j < tk.idx!.length; j++) {
          (j < kn ? K : V)[o + tk.idx![j]] = tk.val![j];
        }
      }
    }
    const tab = rotate ? this.#ropeTable(upto) : undefined;
    if (tab) {
      // applyRope's rotation (rotate-half, row p at position p) from the cached table.
      const { numKvHeads, headDim } = this.config;
      const half = headDim / 2;
      for (let p = from; p < upto; p++) {
        const t0 = p * half * 2;
        for (let h = 0; h < numKvHeads; h++) {
          const o = p * kw + h * headDim;
          for (let i = 0; i < half; i++) {
            const cs = tab[t0 + 2 * i], sn = tab[t0 + 2 * i + 1];
            const x1 = K[o + i];
            const x2 = K[o + i + half];
            K[o + i] = x1 * cs - x2 * sn;
            K[o + i + half] = x2 * cs + x1 * sn;
          }
        }
      }
    }
  }

  /**
   * Layer `layer` read back: dequantized K (as stored: before RoPE when `preRope`) and V
   * [length, kw], which tokens are unquantized, and the outlier mask (1 = kept exactly).
   */
  snapshot(layer: number): {
    k: Float32Array;
    v: Float32Array;
    raw: boolean[];
    kOutlier: Uint8Array;
    vOutlier: Uint8Array;
  } {
    const kw = this.#kw;
    const toks = this.#toks[layer];
    const n = toks.length;
    const K = new Float32Array(n * kw);
    const V = new Float32Array(n * kw);
    this.#read(layer, n, K, V, false);
    const kOutlier = new Uint8Array(n * kw);
    const vOutlier = new Uint8Array(n * kw);
    toks.forEach((t, p) => {
      if (!t.nnz) return;
      for (let j = 0; j < t.idx!.length; j++) {
        (j < t.nnz[0] ? kOutlier : vOutlier)[p * kw + t.idx![j]] = 1;
      }
    });
    return { k: K, v: V, raw: toks.map((t) => !!t.raw), kOutlier, vOutlier };
  }

  /** Outliers held (K and V) in layer `layer`, or in all layers. */
  outliers(layer?: number): number {
    const ls = layer === undefined ? this.#toks : [this.#toks[layer]];
    let n = 0;
    for (const toks of ls) for (const t of toks) n += t.idx?.length ?? 0;
    return n;
  }

  /** Bytes held, summed over layers: the stored arrays' sizes and the quantizer's arrays. */
  bytes(): number {
    let n = 0;
    for (const L of this.#q) {
      n += L.kUp.byteLength + L.kLo.byteLength + L.kLut.byteLength + L.vLut.byteLength;
    }
    for (const toks of this.#toks) {
      for (const t of toks) {
        n += (t.raw?.byteLength ?? 0) + (t.codes?.byteLength ?? 0) + (t.vp?.byteLength ?? 0) +
          (t.nnz?.byteLength ?? 0) + (t.idx?.byteLength ?? 0) + (t.val?.byteLength ?? 0);
      }
    }
    return n;
  }

  /**
   * {@linkcode kvquantLayerBytes} summed over layers for `n` tokens (default its length): with the
   * outliers it holds when `n` is its length, else the expected count.
   */
  formulaBytes(n = this.length): number {
    let b = 0;
    for (let l = 0; l < this.config.numLayers; l++) {
      b += kvquantLayerBytes(this.config, this.settings, n, {
        outliers: n === this.length ? this.outliers(l) : undefined,
      });
    }
    return b;
  }
}

/** Options of {@linkcode calibrateKvQuant}. */
export interface KvQuantCalibrationOptions {
  /** Bits (2..5). Default 4. */
  bits?: number;
  /** Fit k-means codebooks (else the uniform grid). Default true. */
  nuq?: boolean;
  /** Percentile outlier thresholds. Default true. */
  includeSparse?: boolean;
  /** Outlier percentile. Default 0.99. */
  sparsityThreshold?: number;
  /** Leading tokens of each window left out of the codebook fit. Default 1. */
  firstFewFp16?: number;
  /** Calibrate the keys before RoPE. Default true. */
  preRope?: boolean;
  /** k-means weights: "activation" (x², a Fisher proxy) or "uniform". Default "uniform". */
  sensitivity?: "activation" | "uniform";
  /** One key codebook per layer (the reference) or per channel. Default "layer". */
  kCodebook?: "layer" | "channel";
  /** Calibration dataset (the reference: wikitext2). Default "wikitext2". */
  dataset?: string;
  /** Windows (the reference's --nsamples 16). Default 16. */
  nsamples?: number;
  /** Tokens per window. Default min(2048, the model's context). */
  seqlen?: number;
  /** PRNG seed. Default 0. */
  seed?: number;
  /** Data root. */
  root?: string;
  /** Lloyd iterations (the reference's max_iter 50). Default 50. */
  maxIter?: number;
}

/** Option spec of the fitting options of {@linkcode KvQuantCalibrationOptions}. */
export const KVQUANT_CALIB_SPECS: Record<string, KvOptionSpec> = {
  bits: { type: "int", min: 2, max: 5 },
  nuq: { type: "boolean" },
  includeSparse: { type: "boolean" },
  sparsityThreshold: { type: "number", min: 0.5, max: 1 },
  firstFewFp16: { type: "int", min: 0, max: 2 ** 24 },
  preRope: { type: "boolean" },
  sensitivity: { type: "enum", values: ["activation", "uniform"] },
  kCodebook: { type: "enum", values: ["layer", "channel"] },
  maxIter: { type: "int", min: 0, max: 10000 },
};

/** Calibration K and V of one layer: rows [N, kw] (windows concatenated). */
export interface KvCalibrationRows {
  /** Keys (pre- or post-RoPE as asked). */
  k: Float32Array;
  /** Values. */
  v: Float32Array;
}

/**
 * Runs the calibration windows through `model` and returns, per layer, the keys (before RoPE when
 * `preRope`) and values of every token.
 */
export async function collectKv(
  model: Model,
  windows: number[][],
  opts: { preRope?: boolean } = {},
): Promise<KvCalibrationRows[]> {
  const cfg = model.config;
  const kw = cfg.numKvHeads * cfg.headDim;
  const N = windows.reduce((a, w) => a + w.length, 0);
  const out = Array.from({ length: cfg.numLayers }, () => ({
    k: new Float32Array(N * kw),
    v: new Float32Array(N * kw),
  }));
  const kPoint = (opts.preRope ?? true) ? "kPreRope" : "k";
  let row = 0;
  for (const ids of windows) {
    const observe = (point: string, site: string, x: Tensor) => {
      if (point !== kPoint && point !== "v") return;
      const L = out[Number(site)];
      (point === "v" ? L.v : L.k).set(x.data, row * kw);
    };
    await forward(model, ids, { observe, hooks: model.hooks });
    row += ids.length;
  }
  return out;
}

/** Per column of `x` [N, kw]: the `q`-percentile (linear). */
function colPercentile(x: Float32Array, kw: number, q: number): Float32Array {
  const N = x.length / kw;
  const col = new Float64Array(N);
  const r = new Float32Array(kw);
  for (let c = 0; c < kw; c++) {
    for (let i = 0; i < N; i++) col[i] = x[i * kw + c];
    col.sort();
    r[c] = quantileSorted(col, q);
  }
  return r;
}

/**
 * Fits the KVQuant quantizer of one layer from its calibration rows (the reference's
 * `SimQuant.quantize` for k_proj, per channel, and v_proj, per token). `skip(i)` marks rows left
 * out of the codebook fit (the first `firstFewFp16` tokens of each window).
 */
export function fitKvQuantLayer(
  rows: KvCalibrationRows,
  kw: number,
  opts: {
    bits: number;
    nuq: boolean;
    includeSparse: boolean;
    sparsityThreshold: number;
    sensitivity: "activation" | "uniform";
    kCodebook: "layer" | "channel";
    maxIter: number;
    skip: (row: number) => boolean;
  },
): KvQuantizerLayer {
  const t = upperT(opts);
  const nc = 2 ** opts.bits;
  const N = rows.k.length / kw;
  const kUpper = colPercentile(rows.k, kw, t);
  const kLower = colPercentile(rows.k, kw, 1 - t);
  const grid = Float32Array.from(uniformGrid(nc));
  const fit = (u: number[], w: number[]) =>
    Float32Array.from(
      weightedKMeans1d(
        Float64Array.from(u),
        opts.sensitivity === "uniform" ? undefined : Float64Array.from(w),
        nc,
        opts.maxIter,
      ),
    );
  // Keys: normalized per channel by the thresholds; |u| > 1 are outliers.
  const kU: number[][] = Array.from({ length: opts.kCodebook === "channel" ? kw : 1 }, () => []);
  const kW: number[][] = kU.map(() => []);
  for (let i = 0; i < N; i++) {
    if (opts.skip(i)) continue;
    for (let c = 0; c < kw; c++) {
      const x = rows.k[i * kw + c];
      const zp = (kUpper[c] + kLower[c]) / 2;
      const r = (kUpper[c] - kLower[c]) / 2;
      const u = r === 0 ? 0 : (x - zp) / r;
      if (u > 1 || u < -1) continue;
      const b = opts.kCodebook === "channel" ? c : 0;
      kU[b].push(u);
      kW[b].push(x * x);
    }
  }
  let kLut: Float32Array;
  if (!opts.nuq) kLut = opts.kCodebook === "channel" ? tile(grid, kw) : grid;
  else {
    kLut = new Float32Array(kU.length * nc);
    kU.forEach((u, b) => kLut.set(u.length ? fit(u, kW[b]) : grid, b * nc));
  }
  // Values: normalized per token by the row's percentiles.
  const vU: number[] = [];
  const vW: number[] = [];
  const srt = new Float64Array(kw);
  for (let i = 0; i < N && opts.nuq; i++) {
    if (opts.skip(i)) continue;
    const row = rows.v.subarray(i * kw, (i + 1) * kw);
    srt.set(row);
    srt.sort();
    const up = quantileSorted(srt, t);
    const lo = quantileSorted(srt, 1 - t);
    const zp = (up + lo) / 2;
    const r = (up - lo) / 2;
    for (let c = 0; c < kw; c++) {
      const u = r === 0 ? 0 : (row[c] - zp) / r;
      if (u > 1 || u < -1) continue;
      vU.push(u);
      vW.push(row[c] * row[c]);
    }
  }
  const vLut = opts.nuq && vU.length ? fit(vU, vW) : grid;
  return { kUpper, kLower, kLut, vLut };
}

function tile(g: Float32Array, n: number): Float32Array {
  const o = new Float32Array(g.length * n);
  for (let i = 0; i < n; i++) o.set(g, i * g.length);
  return o;
}

/** Calibration windows and where they came from (a `pipeline/calibration.ts` set). */
export interface KvCalibrationWindows {
  /** Token windows. */
  ids: number[][];
  /** Dataset name. */
  dataset: string;
  /** Text actually read. */
  source: string;
  /** Tokens per window. */
  seqlen: number;
  /** PRNG seed. */
  seed: number;
}

/**
 * Fits a KVQuant quantizer for `model` on calibration windows `cal`: collects every layer's K
 * (before RoPE unless `preRope: false`) and V and fits thresholds and codebooks per layer
 * ({@linkcode fitKvQuantLayer}). `calibrateKvQuant` (`src/quant/pipeline/kv_calibration.ts`)
 * draws the windows from a dataset and calls this.
 */
export async function fitKvQuantizer(
  model: Model,
  cal: KvCalibrationWindows,
  opts: Omit<KvQuantCalibrationOptions, "dataset" | "nsamples" | "seqlen" | "seed" | "root"> = {},
): Promise<KvQuantizer> {
  checkKvOptions("kvquant calibration", opts, KVQUANT_CALIB_SPECS);
  const cfg = model.config;
  const kw = cfg.numKvHeads * cfg.headDim;
  const preRope = opts.preRope ?? true;
  const rows = await collectKv(model, cal.ids, { preRope });
  const ff = opts.firstFewFp16 ?? 1;
  const o = {
    bits: opts.bits ?? 4,
    nuq: opts.nuq ?? true,
    includeSparse: opts.includeSparse ?? true,
    sparsityThreshold: opts.sparsityThreshold ?? 0.99,
    sensitivity: opts.sensitivity ?? "uniform",
    kCodebook: opts.kCodebook ?? "layer",
    maxIter: opts.maxIter ?? 50,
    skip: (i: number) => i % cal.seqlen < ff,
  };
  return {
    bits: o.bits,
    preRope,
    nuq: o.nuq,
    includeSparse: o.includeSparse,
    sparsityThreshold: o.sparsityThreshold,
    firstFewFp16: ff,
    sensitivity: o.sensitivity,
    kCodebook: o.kCodebook,
    numLayers: cfg.numLayers,
    kvWidth: kw,
    calibration: {
      dataset: cal.dataset,
      source: cal.source,
      nsamples: cal.ids.length,
      seqlen: cal.seqlen,
      seed: cal.seed,
    },
    layers: rows.map((r) => fitKvQuantLayer(r, kw, o)),
  };
}

// ---- the quantizer file ----

/** The `format` tag of a quantizer file. */
export const KVQUANT_FILE_FORMAT = "quantlab-kvquant-quantizer";

async function sha256Hex(s: string): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

function payloadOf(q: KvQuantizer): Record<string, unknown> {
  const { source: _, layers, ...head } = q;
  return {
    format: KVQUANT_FILE_FORMAT,
    version: 1,
    ...head,
    layers: layers.map((L) => ({
      kUpper: Array.from(L.kUpper),
      kLower: Array.from(L.kLower),
      kLut: Array.from(L.kLut),
      vLut: Array.from(L.vLut),
    })),
  };
}

/**
 * Writes `q` to `path` as JSON (atomic: `io/fs.ts` writeFileAtomic), with a SHA-256 of the
 * payload so a damaged file is refused on load.
 */
export async function saveKvQuantizer(path: string, q: KvQuantizer): Promise<void> {
  const body = JSON.stringify(payloadOf(q));
  const sha256 = await sha256Hex(body);
  await writeFileAtomic(path, `{"sha256":"${sha256}","payload":${body}}\n`);
}

/**
 * Reads a quantizer file written by {@linkcode saveKvQuantizer}; FormatError naming the file and
 * field for anything malformed (not JSON, wrong format or version, checksum mismatch, wrong
 * lengths, non-finite numbers, lower > upper).
 */
export async function loadKvQuantizer(path: string): Promise<KvQuantizer> {
  const text = await readTextChecked(path, "KVQuant quantizer file");
  const bad = (m: string): never => {
    throw new FormatError(path, m);
  };
  let doc: { sha256?: unknown; payload?: unknown };
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return bad(`not a JSON quantizer file (${(e as Error).message})`);
  }
  if (typeof doc !== "object" || doc === null || typeof doc.payload !== "object") {
    return bad('no "payload" object');
  }
  const p = doc.payload as Record<string, unknown>;
  if (p.format !== KVQUANT_FILE_FORMAT) {
    return bad(`format ${JSON.stringify(p.format)}, expected "${KVQUANT_FILE_FORMAT}"`);
  }
  if (p.version !== 1) return bad(`version ${JSON.stringify(p.version)} is not supported (1)`);
  const m = text.match(/^\{"sha256":"([0-9a-f]{64})","payload":([\s\S]*)\}\n?$/);
  if (!m || m[1] !== doc.sha256) return bad("missing sha256 header");
  if ((await sha256Hex(m[2])) !== m[1]) return bad("checksum mismatch: the file is damaged");
  const int = (k: string, lo: number, hi: number) => {
    const v = p[k];
    if (!(typeof v === "number" && Number.isInteger(v) && v >= lo && v <= hi)) {
      bad(`${k}: expected an integer in ${lo}..${hi}, got ${JSON.stringify(v)}`);
    }
    return v as number;
  };
  const bool = (k: string) => {
    if (typeof p[k] !== "boolean") bad(`${k}: expected a boolean`);
    return p[k] as boolean;
  };
  const bits = int("bits", 2, 5);
  const numLayers = int("numLayers", 1, 2 ** 16);
  const kvWidth = int("kvWidth", 1, 65535);
  const thr = p.sparsityThreshold;
  if (!(typeof thr === "number" && thr >= 0.5 && thr <= 1)) {
    bad("sparsityThreshold: not in [0.5, 1]");
  }
  if (p.sensitivity !== "activation" && p.sensitivity !== "uniform") bad("sensitivity: bad value");
  if (p.kCodebook !== "layer" && p.kCodebook !== "channel") bad("kCodebook: bad value");
  const cal = p.calibration as Record<string, unknown> | undefined;
  if (typeof cal !== "object" || cal === null) bad("calibration: missing");
  const nc = 2 ** bits;
  const ls = p.layers;
  if (!Array.isArray(ls) || ls.length !== numLayers) {
    bad(`layers: expected ${numLayers} entries`);
  }
  const arr = (v: unknown, n: number, what: string) => {
    if (
      !Array.isArray(v) || v.length !== n || !v.every((x) => typeof x === "number" && isFinite(x))
    ) {
      bad(`${what}: expected ${n} finite numbers`);
    }
    return Float32Array.from(v as number[]);
  };
  const layers = (ls as Record<string, unknown>[]).map((L, i) => {
    const kUpper = arr(L.kUpper, kvWidth, `layers[${i}].kUpper`);
    const kLower = arr(L.kLower, kvWidth, `layers[${i}].kLower`);
    for (let c = 0; c < kvWidth; c++) {
      if (kLower[c] > kUpper[c]) bad(`layers[${i}]: kLower[${c}] > kUpper[${c}]`);
    }
    return {
      kUpper,
      kLower,
      kLut: arr(L.kLut, p.kCodebook === "channel" ? kvWidth * nc : nc, `layers[${i}].kLut`),
      vLut: arr(L.vLut, nc, `layers[${i}].vLut`),
    };
  });
  return {
    bits,
    preRope: bool("preRope"),
    nuq: bool("nuq"),
    includeSparse: bool("includeSparse"),
    sparsityThreshold: thr as number,
    firstFewFp16: int("firstFewFp16", 0, 2 ** 24),
    sensitivity: p.sensitivity as "activation" | "uniform",
    kCodebook: p.kCodebook as "layer" | "channel",
    numLayers,
    kvWidth,
    calibration: cal as unknown as KvQuantCalibrationInfo,
    layers,
    source: path,
  };
}
