/**
 * The model object: a config, a lazy weight store, a tokenizer source and (after quantization) a
 * report. Plain data: quantizing returns a new model that shares untouched tensors with the original.
 * @module
 */
import type { Tensor } from "../tensor.ts";
import type { ModelConfig } from "./config.ts";
import type { QuantPoints } from "./points.ts";
import type { WeightSource } from "../io/weight_source.ts";

export type { WeightSource };

/** Lazy weights with a cache and an override layer (quantized tensors replace originals here). */
export class Weights {
  #source: WeightSource;
  #cache = new Map<string, Promise<Tensor>>();
  #overrides: Map<string, Tensor>;

  /** Wraps a source; `overrides` take precedence over it. */
  constructor(source: WeightSource, overrides?: Map<string, Tensor>) {
    this.#source = source;
    this.#overrides = overrides ?? new Map();
  }

  /** True when the tensor exists (in the source or the overrides). */
  has(name: string): boolean {
    return this.#overrides.has(name) || this.#source.names().includes(name);
  }

  /** All names. */
  names(): string[] {
    const s = new Set(this.#source.names());
    for (const k of this.#overrides.keys()) s.add(k);
    return [...s];
  }

  /** The tensor `name` (cached after the first load). */
  get(name: string): Promise<Tensor> {
    const o = this.#overrides.get(name);
    if (o) return Promise.resolve(o);
    let p = this.#cache.get(name);
    if (!p) {
      p = this.#source.load(name);
      this.#cache.set(name, p);
      p.catch(() => this.#cache.delete(name));
    }
    return p;
  }

  /** Drops cached source tensors (overrides stay), e.g. after streaming a block through. */
  evict(names?: string[]): void {
    if (!names) this.#cache.clear();
    else for (const n of names) this.#cache.delete(n);
  }

  /** A new Weights over the same source and cache, with extra overrides on top. */
  with(overrides: Map<string, Tensor>): Weights {
    const w = new Weights(this.#source, new Map([...this.#overrides, ...overrides]));
    w.#cache = this.#cache;
    return w;
  }

  /** The overrides (e.g. the quantized tensors). */
  overrides(): ReadonlyMap<string, Tensor> {
    return this.#overrides;
  }
}

/** Where a model came from and how to tokenize for it. */
export interface Model {
  /** Normalised config. */
  config: ModelConfig;
  /** Folder, file or hub name it was loaded from. */
  source: string;
  /** Folder holding tokenizer files, or a llama2.c tokenizer .bin path, if known. */
  tokenizerPath?: string;
  /** The weights. */
  weights: Weights;
  /** Quantization report, when this model is a quantized one. */
  // deno-lint-ignore no-explicit-any
  report?: any;
  /** Packed quantized representation for export, when quantized. */
  // deno-lint-ignore no-explicit-any
  packed?: Record<string, any>;
  /** Forward hooks that evaluators must apply (activation / KV quantizers). */
  // deno-lint-ignore no-explicit-any
  hooks?: any;
  /**
   * Activation / KV-cache quantizer specs at the forward's quantization points
   * (`src/models/points.ts`); both the host forward and the GPU-resident decoder execute them.
   */
  points?: QuantPoints;
}

/** A WeightSource over an in-memory record (tests, synthetic models). */
export function memorySource(tensors: Record<string, Tensor>): WeightSource {
  return {
    names: () => Object.keys(tensors),
    shape: (name) => tensors[name]?.shape,
    load: (name) => {
      const t = tensors[name];
      if (!t) return Promise.reject(new Error(`no tensor named "${name}"`));
      return Promise.resolve(t);
    },
  };
}
