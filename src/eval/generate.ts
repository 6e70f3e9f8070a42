/**
 * Text generation with the KV cache: greedy at temperature 0, else temperature + top-p (nucleus)
 * sampling from a seeded PRNG.
 * @module
 */
import { OptionError } from "../errors.ts";
import { createKVCache, forward } from "../models/decoder.ts";
import { getTokenizer } from "../models/load.ts";
import type { Model } from "../models/model.ts";
import { mulberry32 } from "../rng.ts";
import { mergeHooks } from "./perplexity.ts";
import { GREEDY_CHUNK, residentFor } from "../models/resident.ts";
import { createCache, type KVSpec } from "../quant/kv/cache.ts";

/** Options of `generate`. */
export interface GenerateOptions {
  /** New tokens at most (default 64). */
  maxNewTokens?: number;
  /** 0 = greedy (default); > 0 divides the logits. */
  temperature?: number;
  /** Nucleus sampling mass (default 1 = off). */
  topP?: number;
  /** PRNG seed for sampling (default 0). */
  seed?: number;
  /** Stop at the EOS token (default true). */
  stopAtEos?: boolean;
  /** Prepend BOS (default true when the tokenizer has one). */
  addBos?: boolean;
  /**
   * On the WebGPU backend, run the GPU-resident decoder (`src/models/resident.ts`: one
   * submission per token) when the model allows it (default true); false: the host forward.
   */
  resident?: boolean;
  /**
   * A quantized KV cache (`src/quant/kv/`, e.g. `{ method: "kivi", bits: 2 }`): the host forward
   * then runs with that cache (the resident decoder has no quantized cache). On a backend with
   * `packedKvAttention` (WebGPU) a KIVI cache keeps its packed copy on the device and each decode
   * step's attention reads it there.
   */
  kv?: KVSpec;
}

/** Result of `generate`. */
export interface GenerateResult {
  /** Prompt + continuation as text. */
  text: string;
  /** The continuation only. */
  completion: string;
  /** New token ids. */
  ids: number[];
  /** Prompt token ids. */
  promptIds: number[];
  /** Decode speed, new tokens per second (prefill excluded). */
  tokensPerSecond: number;
  /** True when the GPU-resident decoder ran (WebGPU), false for the host forward. */
  resident: boolean;
}

/** Index of the token to emit from `logits` (one row). */
export function sampleToken(
  logits: Float32Array,
  opts: { temperature: number; topP: number; rand: () => number },
): number {
  let best = 0;
  for (let j = 1; j < logits.length; j++) if (logits[j] > logits[best]) best = j;
  if (opts.temperature <= 0) return best;
  const mx = logits[best];
  const p = new Float64Array(logits.length);
  let s = 0;
  for (let j = 0; j < p.length; j++) s += p[j] = Math.exp((logits[j] - mx) / opts.temperature);
  const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a]);
  let keep = order.length;
  if (opts.topP < 1) {
    let c = 0;
    for (let i = 0; i < order.length; i++) {
      c += p[order[i]] / s;
      if (c >= opts.topP) {
        keep = i + 1;
        break;
      }
    }
  }
  let mass = 0;
  for (let i = 0; i < keep; i++) mass += p[order[i]];
  let r = opts.rand() * mass;
  for (let i = 0; i < keep; i++) {
    r -= p[order[i]];
    if (r <= 0) return order[i];
  }
  return order[keep - 1];
}

/** Generates a continuation of `prompt` (a string or token ids). */
export async function generate(
  model: Model,
  prompt: string | number[],
  opts: GenerateOptions = {},
): Promise<GenerateResult> {
  const maxNew = opts.maxNewTokens ?? 64;
  const temperature = opts.temperature ?? 0;
  const topP = opts.topP ?? 1;
  if (!(maxNew >= 0)) throw new OptionError("maxNewTokens", `must be ≥ 0, got ${maxNew}`);
  if (!(temperature >= 0)) throw new OptionError("temperature", `must be ≥ 0, got ${temperature}`);
  if (!(topP > 0 && topP <= 1)) throw new OptionError("topP", `must be in (0, 1], got ${topP}`);
  const tok = await getTokenizer(model);
  const promptIds = typeof prompt === "string"
    ? tok.encode(prompt, { addBos: opts.addBos ?? true })
    : [...prompt];
  const cap = Math.min(model.config.maxPositions, promptIds.length + maxNew);
  const rand = mulberry32(opts.seed ?? 0);
  const hooks = mergeHooks(model.hooks, undefined);
  const V = model.config.vocabSize;
  const resident = opts.kv ? false : opts.resident;
  const dec = await residentFor(model, { capacity: cap, hooks, resident });
  const cache = dec
    ? undefined
    : opts.kv
    ? createCache(model.config, opts.kv, cap)
    : createKVCache(model.config, cap);
  const ids: number[] = [];
  let t0 = performance.now();
  try {
    const run = dec
      ? (toks: number[]) => dec.step(toks)
      : async (toks: number[]) => (await forward(model, toks, { cache, hooks })).data;
    const used = () => dec ? dec.length : cache!.length;
    const logits = await run(promptIds);
    let last = logits.subarray(logits.length - V);
    t0 = performance.now();
    const eos = (t: number) => (opts.stopAtEos ?? true) && t === tok.eosId;
    if (dec && temperature <= 0 && maxNew > 0 && dec.length < cap) {
      // Greedy on the GPU: each step's argmax feeds the next step there; one wait per chunk.
      // Same tokens as the loop below, which emits min(maxNew, cap − prompt) of them.
      let next = sampleToken(last, { temperature, topP, rand });
      ids.push(next);
      for (;;) {
        const n = Math.min(GREEDY_CHUNK, maxNew - ids.length, cap - dec.length - 1);
        if (eos(next) || n < 1) break;
        for (const t of await dec.greedy(next, n)) {
          ids.push(t);
          next = t;
          if (eos(t)) break;
        }
      }
    } else {
      while (ids.length < maxNew && used() < cap) {
        const next = sampleToken(last, { temperature, topP, rand });
        ids.push(next);
        if (eos(next)) break;
        if (used() >= cap) break;
        last = await run([next]);
      }
    }
  } finally {
    dec?.release();
    cache?.release?.();
  }
  const dt = (performance.now() - t0) / 1000;
  const completion = tok.decode(ids);
  return {
    text: tok.decode([...promptIds, ...ids]),
    completion,
    ids,
    promptIds,
    tokensPerSecond: ids.length / Math.max(dt, 1e-9),
    resident: dec !== undefined,
  };
}
