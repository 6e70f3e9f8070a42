/**
 * KIVI (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"): a KV
 * cache that stores packed codes. Keys are quantized per channel (a group is `groupSize`
 * consecutive tokens of one channel), values per token (a group is `vGroupSize` consecutive
 * channels of one head), both asymmetric min–max with round-half-to-even (`packing.ts`).
 *
 * Streaming rule, as jy-yuan/KIVI `models/llama_kivi.py` runs it:
 * - prefill of L tokens: attention uses the unquantized K/V; then K's first L − L % R tokens are
 *   quantized and V's first max(0, L − R) tokens (R = `residualLength`);
 * - each decode step: the new token is appended in full precision and attention runs; then, when
 *   the full-precision K holds exactly R tokens, all R are quantized (the buffer empties), and when
 *   the full-precision V holds more than R tokens, its oldest token is quantized alone.
 * So after n tokens, n − n % R keys and max(0, n − R) values are quantized, and prefill,
 * token-by-token and mixed splits leave identical caches (K blocks are always R tokens starting at
 * multiples of R, R a multiple of `groupSize`; V tokens are quantized one by one).
 *
 * Which cache state a query sees: a decode query at position p attends over the state after p
 * tokens plus itself in full precision (the reference's decode path). A chunk of T > 1 tokens
 * appended to a non-empty cache (the reference has no such call) is treated as T decode steps, so
 * it gives the token-by-token logits. A prefill (empty cache, T > 1) attends in full precision —
 * or, with `prefillWithQuant` (quantlab's option after qllm-infer's `prefill_with_quant`), over the
 * state after all T tokens, as qllm-infer's `llama_kivi_qllm.py` does.
 *
 * Grouped-query attention is supported on every path (the reference's `llama_kivi.py` omits
 * `repeat_kv` on one decode path; its Mistral file has it). `bits` 16 stores K/V unquantized (f32)
 * through the same streaming bookkeeping, so its logits are the full-precision ones exactly.
 * Scales and minima are stored as f32 (the model's dtype; the reference stores them in fp16).
 *
 * Perplexity, a measured fact: qllm-infer's `eval_ppl` runs each window as one forward without a
 * cache, which for KIVI with `prefill_with_quant` false attends in full precision, so by the code
 * it gives the FP perplexity — yet the seed's table lists KIVI-2 above FP. Here
 * `perplexity(..., { kv, kvChunk: seqlen })` follows the code (FP exactly on stories260K) and the
 * default `kvChunk` 1 feeds each window token by token so every prediction reads the quantized
 * cache (stories260K TinyStories, 4 windows: FP 3.5541, KIVI-4 3.5582, KIVI-2 3.8591).
 *
 * CPU attention dequantizes the quantized prefix into a transient f32 buffer per call (the stored
 * cache stays packed); decode is therefore slower than with the f32 cache on CPU.
 *
 * On a backend with `packedKvAttention` (WebGPU) the cache also keeps a device copy, made at the
 * first token and kept in step: each packed K block and V row is uploaded once when the host
 * quantizes it, at its final place, and the full-precision rows go to rings on the device. A
 * one-token step (decode) then attends there, from the codes (`kernels/kv_attention.ts`);
 * chunks of several tokens, a `probs` spec and a sliding window that cuts the keys attend on the
 * host as above. `deviceTraffic()` counts the bytes that crossed the bus; `release()` frees the
 * device copy (`generate` calls it).
 * @module
 */
import type { ModelConfig } from "../../models/config.ts";
import type { Backend, PackedKvDevice, PackedKvTraffic } from "../../backend/backend.ts";
import { attention, type CacheAttendInput, type KVCache } from "../../models/decoder.ts";
import { OptionError } from "../../errors.ts";
import { checkKvOptions, type KvOptionSpec } from "./_check.ts";
import { dequantizeGroup, quantizeGroup, wordsPerGroup } from "./packing.ts";

/** KIVI options (defaults: the reference's). */
export interface KiviOptions {
  /** Bits of K and V codes: 2 or 4 in the paper (2..8 accepted); 16 = unquantized. Default 2. */
  bits?: number;
  /** Tokens per K group (per channel) and channels per V group (default 32). */
  groupSize?: number;
  /**
   * Channels per V group when it must differ from `groupSize` (default `groupSize`); must divide
   * the head dimension (stories260K's heads have 8 channels).
   */
  vGroupSize?: number;
  /** R: V's full-precision window and K's block length (default 128; a multiple of groupSize). */
  residualLength?: number;
  /** Quantize the prompt's own K/V before its attention at prefill (default false). */
  prefillWithQuant?: boolean;
}

/** Option spec of {@linkcode KiviOptions} (strict checking, `core/options.ts`). */
export const KIVI_SPECS: Record<string, KvOptionSpec> = {
  bits: { type: "int", min: 2, max: 16 },
  groupSize: { type: "int", min: 1, max: 2 ** 24 },
  vGroupSize: { type: "int", min: 1, max: 2 ** 24 },
  residualLength: { type: "int", min: 1, max: 2 ** 24 },
  prefillWithQuant: { type: "boolean" },
};

/** Resolved KIVI settings. */
export interface KiviSettings {
  /** Bits (16 = unquantized). */
  bits: number;
  /** Tokens per K group. */
  groupSize: number;
  /** Channels per V group. */
  vGroupSize: number;
  /** R. */
  residualLength: number;
  /** See {@linkcode KiviOptions.prefillWithQuant}. */
  prefillWithQuant: boolean;
}

/** Checks `opts` against `cfg` and fills the defaults (OptionError naming the option). */
export function kiviSettings(cfg: ModelConfig, opts: KiviOptions = {}): KiviSettings {
  checkKvOptions("kivi", opts, KIVI_SPECS);
  const bits = opts.bits ?? 2;
  if (!(bits <= 8 || bits === 16)) {
    throw new OptionError("bits", `KIVI stores 2..8-bit codes or 16 (unquantized), got ${bits}`);
  }
  const groupSize = opts.groupSize ?? 32;
  const vGroupSize = opts.vGroupSize ?? groupSize;
  const residualLength = opts.residualLength ?? 128;
  if (residualLength % groupSize !== 0) {
    throw new OptionError(
      "residualLength",
      `${residualLength} is not a multiple of groupSize ${groupSize} (the reference asserts it)`,
    );
  }
  if (cfg.headDim % vGroupSize !== 0) {
    throw new OptionError(
      "vGroupSize",
      `${vGroupSize} does not divide the head dimension ${cfg.headDim}` +
        (opts.vGroupSize === undefined ? " (it defaults to groupSize; set vGroupSize)" : ""),
    );
  }
  return {
    bits,
    groupSize,
    vGroupSize,
    residualLength,
    prefillWithQuant: opts.prefillWithQuant ?? false,
  };
}

/** A quantized block of R keys: codes [kw][R/G][words], scale/mn [kw][R/G]; or raw at 16 bits. */
interface KBlock {
  codes?: Uint32Array;
  scale?: Float32Array;
  mn?: Float32Array;
  raw?: Float32Array;
}

/** One quantized value row: codes [kw/Gv][words], scale/mn [kw/Gv]; or raw at 16 bits. */
type VRow = KBlock;

/** Per-layer storage of a KIVI cache. */
interface Layer {
  kBlocks: KBlock[];
  kFull: Float32Array[];
  vRows: VRow[];
  vFull: Float32Array[];
  /**
   * The host path's float32 copy of the quantized prefix: keys of the first `kDeqRows` rows and
   * values of the first `vDeqRows`, dequantized once (blocks and rows are only appended, so a
   * decode step dequantizes what is new, not the whole prefix; the same values).
   */
  deq?: { K: Float32Array; V: Float32Array; kDeqRows: number; vDeqRows: number };
}

/**
 * Bytes of a KIVI cache holding `n` tokens, per layer (closed form): quantized K
 * (n − n % R tokens: per channel per group, the packed words and an f32 scale and minimum),
 * full-precision K (n % R rows of f32), quantized V (max(0, n − R) rows: per group the packed
 * words, scale and minimum), full-precision V (min(n, R) rows). `floatBytes` (default 4) is the
 * size of one full-precision element, scale or minimum (2 for an fp16 model such as the
 * reference's Llama-2-7B).
 */
export function kiviLayerBytes(
  cfg: ModelConfig,
  s: KiviSettings,
  n: number,
  opts: { floatBytes?: number } = {},
): number {
  const fb = opts.floatBytes ?? 4;
  const kw = cfg.numKvHeads * cfg.headDim;
  const R = s.residualLength;
  const nk = n - (n % R);
  const nv = Math.max(0, n - R);
  const fullRows = (n % R) + Math.min(n, R);
  if (s.bits === 16) return (nk + nv + fullRows) * kw * fb;
  const kGroups = (nk / s.groupSize) * kw;
  const kBytes = kGroups * (wordsPerGroup(s.groupSize, s.bits) * 4 + 2 * fb);
  const vGroups = nv * (kw / s.vGroupSize);
  const vBytes = vGroups * (wordsPerGroup(s.vGroupSize, s.bits) * 4 + 2 * fb);
  return kBytes + vBytes + fullRows * kw * fb;
}

/** Bytes per token per layer of the quantized part alone (n → ∞ of bytes / n). */
export function kiviBytesPerToken(
  cfg: ModelConfig,
  s: KiviSettings,
  opts: { floatBytes?: number } = {},
): number {
  const fb = opts.floatBytes ?? 4;
  const kw = cfg.numKvHeads * cfg.headDim;
  if (s.bits === 16) return 2 * kw * fb;
  const k = (kw / s.groupSize) * (wordsPerGroup(s.groupSize, s.bits) * 4 + 2 * fb);
  const v = (kw / s.vGroupSize) * (wordsPerGroup(s.vGroupSize, s.bits) * 4 + 2 * fb);
  return k + v;
}

/** Where the quantized/full boundary of K and V lies for a query (tokens quantized). */
export interface KiviBoundary {
  /** Keys [0, qk) read from codes, the rest full precision. */
  qk: number;
  /** Values [0, qv) read from codes. */
  qv: number;
}

/** A KIVI cache (see the module doc); a {@linkcode KVCache} the decoder's block attends through. */
export class KiviCache implements KVCache {
  /** Unused (the K/V live in packed form): empty. */
  k: Float32Array[] = [];
  /** Unused: empty. */
  v: Float32Array[] = [];
  /** Tokens cached. */
  length = 0;
  /** Maximum tokens. */
  capacity: number;
  /** Settings. */
  readonly settings: KiviSettings;
  /** The model config. */
  readonly config: ModelConfig;
  #layers: Layer[];
  #kw: number;
  /** The device copy: undefined = not decided yet, null = none (host path). */
  #device: PackedKvDevice | null | undefined;
  #deviceBackend: Backend | undefined;
  /** Per layer: K blocks and V rows already uploaded to the device copy. */
  #uploaded: { k: number; v: number }[];

  /** An empty cache for `capacity` tokens (default the model's context). */
  constructor(cfg: ModelConfig, opts: KiviOptions = {}, capacity = cfg.maxPositions) {
    this.settings = kiviSettings(cfg, opts);
    this.config = cfg;
    this.capacity = capacity;
    this.#kw = cfg.numKvHeads * cfg.headDim;
    this.#layers = Array.from({ length: cfg.numLayers }, () => ({
      kBlocks: [],
      kFull: [],
      vRows: [],
      vFull: [],
    }));
    this.#uploaded = Array.from({ length: cfg.numLayers }, () => ({ k: 0, v: 0 }));
  }

  /** The decoder's hook: stores the new rows of `layer` and attends (see the module doc). */
  attend = async (layer: number, x: CacheAttendInput): Promise<Float32Array> => {
    const { q, k, v, off: n, dims, backend } = x;
    const T = dims.T;
    const kw = this.#kw;
    const L = this.#layers[layer];
    const dev = this.#deviceFor(backend, layer, n);
    if (
      dev && T === 1 && !(dims.probs && dims.probs.bits < 16) &&
      (dims.window == null || n < dims.window)
    ) {
      // Decode on the device: the new rows join the full-precision rings, the query reads the
      // packed groups uploaded so far; then the host quantizes as usual and uploads what it packed.
      dev.writeRows(layer, n, k, v);
      const b = this.boundary(n, 0, 1);
      const y = await dev.attend(layer, q, { pos: n, qk: b.qk, qv: b.qv, scale: dims.scale });
      this.#append(L, k.slice(), v.slice());
      this.#upload(layer, dev);
      return y;
    }
    const out = await this.#attendHost(L, x);
    if (dev) {
      const R = this.settings.residualLength;
      for (let t = Math.max(0, T - R - 1); t < T; t++) {
        dev.writeRows(
          layer,
          n + t,
          k.subarray(t * kw, (t + 1) * kw),
          v.subarray(t * kw, (t + 1) * kw),
        );
      }
      this.#upload(layer, dev);
    }
    return out;
  };

  /**
   * The device copy of this cache when `backend` has `packedKvAttention` (codes of 2..8 bits):
   * made at the first token of layer 0, so it mirrors the cache from the start; a cache first
   * filled elsewhere stays on the host path, and one used with another backend drops its copy.
   */
  #deviceFor(backend: Backend, layer: number, n: number): PackedKvDevice | undefined {
    if (this.#device !== undefined) {
      // Another backend attends on the host without updating the copy: drop it for good.
      if (this.#device && this.#deviceBackend !== backend) this.release();
      return this.#device ?? undefined;
    }
    if (layer !== 0 || n !== 0 || !backend.packedKvAttention || this.settings.bits > 8) {
      return undefined;
    }
    const cfg = this.config;
    this.#deviceBackend = backend;
    this.#device = backend.packedKvAttention({
      layers: cfg.numLayers,
      nH: cfg.numHeads,
      nKV: cfg.numKvHeads,
      hd: cfg.headDim,
      bits: this.settings.bits,
      groupSize: this.settings.groupSize,
      vGroupSize: this.settings.vGroupSize,
      residualLength: this.settings.residualLength,
      capacity: this.capacity,
    }) ?? null;
    return this.#device ?? undefined;
  }

  /** Uploads the K blocks and V rows of `layer` packed since the last upload. */
  #upload(layer: number, dev: PackedKvDevice): void {
    const L = this.#layers[layer];
    const up = this.#uploaded[layer];
    for (; up.k < L.kBlocks.length; up.k++) {
      const b = L.kBlocks[up.k];
      dev.appendKeyBlock(layer, up.k, { codes: b.codes!, scale: b.scale!, mn: b.mn! });
    }
    for (; up.v < L.vRows.length; up.v++) {
      const r = L.vRows[up.v];
      dev.appendValueRow(layer, up.v, { codes: r.codes!, scale: r.scale!, mn: r.mn! });
    }
  }

  /**
   * Bytes this cache moved to and from the device and holds there (`undefined` when it runs on
   * the host: no `packedKvAttention` on the backend, or 16 bits).
   */
  deviceTraffic(): PackedKvTraffic | undefined {
    return this.#device?.traffic();
  }

  /** Frees the device copy (the cache then attends on the host if used again). */
  release(): void {
    this.#device?.release();
    if (this.#device) this.#device = null;
  }

  /** The host path: dequantize the packed prefix into f32 and attend (see the module doc). */
  async #attendHost(L: Layer, x: CacheAttendInput): Promise<Float32Array> {
    const { q, k, v, off: n, dims, backend } = x;
    const T = dims.T;
    const kw = this.#kw;
    const R = this.settings.residualLength;
    // Full-precision rows from K position kBase and V position vBase, kept before the append
    // quantizes some of them (a decode query of this chunk may still read them unquantized).
    const kBase = n - (n % R);
    const vBase = Math.max(0, n - R);
    const kRows = [...L.kFull];
    const vRows = [...L.vFull];
    for (let t = 0; t < T; t++) {
      kRows.push(k.slice(t * kw, (t + 1) * kw));
      vRows.push(v.slice(t * kw, (t + 1) * kw));
    }
    for (let t = 0; t < T; t++) this.#append(L, kRows[n - kBase + t], vRows[n - vBase + t]);
    const qw = dims.nH * dims.hd;
    const out = new Float32Array(T * qw);
    let t0 = 0;
    while (t0 < T) {
      const b = this.boundary(n, t0, T);
      let t1 = t0 + 1;
      while (t1 < T) {
        const c = this.boundary(n, t1, T);
        if (c.qk !== b.qk || c.qv !== b.qv) break;
        t1++;
      }
      const S = n + t1;
      const K = new Float32Array(S * kw);
      const V = new Float32Array(S * kw);
      const d = this.#dequantized(L, b.qk, b.qv);
      K.set(d.K.subarray(0, b.qk * kw));
      for (let s = b.qk; s < S; s++) K.set(kRows[s - kBase], s * kw);
      V.set(d.V.subarray(0, b.qv * kw));
      for (let s = b.qv; s < S; s++) V.set(vRows[s - vBase], s * kw);
      const y = await attention(
        q.subarray(t0 * qw, t1 * qw),
        K,
        V,
        { ...dims, T: t1 - t0, S },
        backend,
      );
      out.set(y, t0 * qw);
      t0 = t1;
    }
    return out;
  }

  /**
   * The quantized prefix query `t` of a chunk of `T` new tokens appended at `n` reads (see the
   * module doc).
   */
  boundary(n: number, t: number, T: number): KiviBoundary {
    const R = this.settings.residualLength;
    if (n === 0 && T > 1) {
      return this.settings.prefillWithQuant
        ? { qk: T - (T % R), qv: Math.max(0, T - R) }
        : { qk: 0, qv: 0 };
    }
    const p = n + t;
    return { qk: p - (p % R), qv: Math.max(0, p - R) };
  }

  #append(L: Layer, kRow: Float32Array, vRow: Float32Array): void {
    const s = this.settings;
    const R = s.residualLength;
    const kw = this.#kw;
    L.kFull.push(kRow);
    if (L.kFull.length === R) {
      const X = new Float32Array(R * kw);
      for (let t = 0; t < R; t++) X.set(L.kFull[t], t * kw);
      if (s.bits === 16) L.kBlocks.push({ raw: X });
      else {
        const G = s.groupSize;
        const ng = R / G;
        const wpg = wordsPerGroup(G, s.bits);
        const blk = {
          codes: new Uint32Array(kw * ng * wpg),
          scale: new Float32Array(kw * ng),
          mn: new Float32Array(kw * ng),
        };
        for (let c = 0; c < kw; c++) {
          for (let g = 0; g < ng; g++) {
            const si = c * ng + g;
            quantizeGroup(X, { o: g * G * kw + c, stride: kw, n: G, bits: s.bits }, {
              ...blk,
              w0: si * wpg,
              si,
            });
          }
        }
        L.kBlocks.push(blk);
      }
      L.kFull = [];
    }
    L.vFull.push(vRow);
    if (L.vFull.length > R) {
      const row = L.vFull.shift()!;
      if (s.bits === 16) L.vRows.push({ raw: row });
      else {
        const G = s.vGroupSize;
        const ng = kw / G;
        const wpg = wordsPerGroup(G, s.bits);
        const r = {
          codes: new Uint32Array(ng * wpg),
          scale: new Float32Array(ng),
          mn: new Float32Array(ng),
        };
        for (let g = 0; g < ng; g++) {
          quantizeGroup(row, { o: g * G, stride: 1, n: G, bits: s.bits }, {
            ...r,
            w0: g * wpg,
            si: g,
          });
        }
        L.vRows.push(r);
      }
    }
  }

  /** `L.deq` holding at least keys [0, kRows) and values [0, vRows) (grown as needed). */
  #dequantized(L: Layer, kRows: number, vRows: number): NonNullable<Layer["deq"]> {
    const kw = this.#kw;
    const R = this.settings.residualLength;
    // Keys are dequantized by whole blocks of R rows.
    const kNeed = Math.ceil(kRows / R) * R;
    let d = L.deq;
    if (!d || d.K.length < kNeed * kw || d.V.length < vRows * kw) {
      const size = Math.max(kNeed, vRows, Math.ceil(this.capacity / R) * R) * kw;
      const grown = {
        K: new Float32Array(size),
        V: new Float32Array(size),
        kDeqRows: d?.kDeqRows ?? 0,
        vDeqRows: d?.vDeqRows ?? 0,
      };
      if (d) {
        grown.K.set(d.K.subarray(0, d.kDeqRows * kw));
        grown.V.set(d.V.subarray(0, d.vDeqRows * kw));
      }
      d = L.deq = grown;
    }
    if (d.kDeqRows < kNeed) {
      this.#readK(L, kNeed, d.K, d.kDeqRows / R);
      d.kDeqRows = kNeed;
    }
    if (d.vDeqRows < vRows) {
      this.#readV(L, vRows, d.V, d.vDeqRows);
      d.vDeqRows = vRows;
    }
    return d;
  }

  /** Dequantizes key blocks from `fromBlock` up to row `upto` of storage `L` into `K` [≥ upto, kw]. */
  #readK(L: Layer, upto: number, K: Float32Array, fromBlock = 0): void {
    const s = this.settings;
    const R = s.residualLength;
    const kw = this.#kw;
    for (let b = fromBlock; b * R < upto; b++) {
      const blk = L.kBlocks[b];
      if (blk.raw) {
        K.set(blk.raw, b * R * kw);
        continue;
      }
      const G = s.groupSize;
      const ng = R / G;
      const wpg = wordsPerGroup(G, s.bits);
      for (let c = 0; c < kw; c++) {
        for (let g = 0; g < ng; g++) {
          const si = c * ng + g;
          dequantizeGroup(
            { codes: blk.codes!, w0: si * wpg, scale: blk.scale![si], mn: blk.mn![si] },
            { o: (b * R + g * G) * kw + c, stride: kw, n: G, bits: s.bits },
            K,
          );
        }
      }
    }
  }

  /** Dequantizes values [from, upto) of `L` into `V`. */
  #readV(L: Layer, upto: number, V: Float32Array, from = 0): void {
    const s = this.settings;
    const kw = this.#kw;
    const G = s.vGroupSize;
    const wpg = wordsPerGroup(G, s.bits);
    for (let t = from; t < upto; t++) {
      const r = L.vRows[t];
      if (r.raw) {
        V.set(r.raw, t * kw);
        continue;
      }
      for (let g = 0; g < kw / G; g++) {
        dequantizeGroup(
          { codes: r.codes!, w0: g * wpg, scale: r.scale![g], mn: r.mn![g] },
          { o: t * kw + g * G, stride: 1, n: G, bits: s.bits },
          V,
        );
      }
    }
  }

  /** Tokens of layer `layer` held quantized and in full precision, for K and V. */
  state(layer: number): { kQuant: number; kFull: number; vQuant: number; vFull: number } {
    const L = this.#layers[layer];
    return {
      kQuant: L.kBlocks.length * this.settings.residualLength,
      kFull: L.kFull.length,
      vQuant: L.vRows.length,
      vFull: L.vFull.length,
    };
  }

  /**
   * Layer `layer`'s cache read back: the dequantized K [kQuant, kw] and V [vQuant, kw], the
   * full-precision rows, and the raw packed words, scales and minima (for comparisons).
   */
  snapshot(layer: number): {
    kDeq: Float32Array;
    vDeq: Float32Array;
    kFull: Float32Array;
    vFull: Float32Array;
    packed: Uint32Array[];
    params: Float32Array[];
  } {
    const L = this.#layers[layer];
    const st = this.state(layer);
    const kw = this.#kw;
    const kDeq = new Float32Array(st.kQuant * kw);
    this.#readK(L, st.kQuant, kDeq);
    const vDeq = new Float32Array(st.vQuant * kw);
    this.#readV(L, st.vQuant, vDeq);
    const cat = (rows: Float32Array[]) => {
      const o = new Float32Array(rows.length * kw);
      rows.forEach((r, i) => o.set(r, i * kw));
      return o;
    };
    const all = [...L.kBlocks, ...L.vRows];
    return {
      kDeq,
      vDeq,
      kFull: cat(L.kFull),
      vFull: cat(L.vFull),
      packed: all.filter((b) => b.codes).map((b) => b.codes!),
      params: all.flatMap((b) => b.raw ? [b.raw] : [b.scale!, b.mn!]),
    };
  }

  /** Bytes held, summed over layers: the stored arrays' sizes (codes, scales, minima, f32 rows). */
  bytes(): number {
    let n = 0;
    for (const L of this.#layers) {
      for (const b of [...L.kBlocks, ...L.vRows]) {
        n += (b.codes?.byteLength ?? 0) + (b.scale?.byteLength ?? 0) + (b.mn?.byteLength ?? 0) +
          (b.raw?.byteLength ?? 0);
      }
      for (const r of [...L.kFull, ...L.vFull]) n += r.byteLength;
    }
    return n;
  }

  /** {@linkcode kiviLayerBytes} summed over layers for this cache's length. */
  formulaBytes(n = this.length): number {
    return this.config.numLayers * kiviLayerBytes(this.config, this.settings, n);
  }
}
