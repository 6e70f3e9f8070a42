/**
 * Quantized KV caches by name, and the cache-size accounting beside the f32/f16 cache.
 * @module
 */
import type { ModelConfig } from "../../models/config.ts";
import { createKVCache, type KVCache } from "../../models/decoder.ts";
import { OptionError } from "../../errors.ts";
import { KiviCache, kiviLayerBytes, type KiviOptions, kiviSettings } from "./kivi.ts";
import {
  KvQuantCache,
  kvquantLayerBytes,
  type KvQuantOptions,
  kvquantSettings,
} from "./kvquant.ts";

/**
 * A KV-cache method and its options: `{ method: "kivi", bits: 2 }`,
 * `{ method: "kvquant", bits: 2, quantizer }`, or `{ method: "fp" }`.
 */
export type KVSpec =
  | { method: "fp" }
  | ({ method: "kivi" } & KiviOptions)
  | ({ method: "kvquant" } & KvQuantOptions);

/** A cache that reports its size. */
export type SizedKVCache = KVCache & {
  /** Bytes held now. */
  bytes(): number;
  /** The closed-form bytes for `n` tokens (default its length). */
  formulaBytes(n?: number): number;
};

/** Bytes of the f32 (`floatBytes` 4) or f16 (2) cache for `n` tokens over all layers. */
export function denseCacheBytes(cfg: ModelConfig, n: number, floatBytes = 4): number {
  return 2 * cfg.numLayers * n * cfg.numKvHeads * cfg.headDim * floatBytes;
}

/** The spec's method name checked, or an OptionError naming `kv.method`. */
function methodOf(spec: KVSpec): string {
  const m = (spec as { method?: unknown }).method;
  if (m !== "fp" && m !== "kivi" && m !== "kvquant") {
    throw new OptionError(
      "kv.method",
      `must be "fp", "kivi" or "kvquant", got ${JSON.stringify(m)}`,
    );
  }
  return m;
}

/** A fresh cache of `spec` for `capacity` tokens. */
export function createCache(cfg: ModelConfig, spec: KVSpec, capacity: number): SizedKVCache {
  const m = methodOf(spec);
  if (m === "kivi") {
    const { method: _, ...o } = spec as { method: "kivi" } & KiviOptions;
    return new KiviCache(cfg, o, capacity);
  }
  if (m === "kvquant") {
    const { method: _, ...o } = spec as { method: "kvquant" } & KvQuantOptions;
    return new KvQuantCache(cfg, o, capacity);
  }
  const c = createKVCache(cfg, capacity);
  return Object.assign(c, {
    bytes: () => denseCacheBytes(cfg, c.length),
    formulaBytes: (n = c.length) => denseCacheBytes(cfg, n),
  });
}

/**
 * Bytes of a `spec` cache holding `n` tokens, all layers (`floatBytes` 4 = f32, 2 = f16); for
 * KVQuant with the expected outlier count (`kvquantLayerBytes`).
 */
export function cacheBytes(
  cfg: ModelConfig,
  spec: KVSpec,
  n: number,
  opts: { floatBytes?: number } = {},
): number {
  const m = methodOf(spec);
  if (m === "fp") return denseCacheBytes(cfg, n, opts.floatBytes ?? 4);
  if (m === "kvquant") {
    const { method: _, ...o } = spec as { method: "kvquant" } & KvQuantOptions;
    return cfg.numLayers * kvquantLayerBytes(cfg, kvquantSettings(cfg, o), n, opts);
  }
  const { method: _, ...o } = spec as { method: "kivi" } & KiviOptions;
  return cfg.numLayers * kiviLayerBytes(cfg, kiviSettings(cfg, o), n, opts);
}

/** A short label: "FP", "KIVI-2 (g32, R128)", "KVQuant-2bit-1%". */
export function kvLabel(spec: KVSpec): string {
  if (spec.method === "fp") return "FP";
  if (spec.method === "kvquant") {
    const q = spec.quantizer;
    const bits = spec.bits ?? q?.bits ?? 4;
    const sparse = spec.includeSparse ?? q?.includeSparse ?? true;
    const thr = spec.sparsityThreshold ?? q?.sparsityThreshold ?? 0.99;
    const pre = spec.preRope ?? q?.preRope ?? true;
    const nuq = spec.nuq ?? q?.nuq ?? true;
    const pct = sparse ? `-${+((1 - thr) * 100).toFixed(3)}%` : "";
    return `KVQuant-${bits}bit${pct}${nuq ? "" : " (uniform)"}${pre ? "" : " (post-RoPE)"}`;
  }
  const s = spec as KiviOptions;
  return `KIVI-${s.bits ?? 2} (g${s.groupSize ?? 32}, R${s.residualLength ?? 128})`;
}
