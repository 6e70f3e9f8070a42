/**
 * The interface every checkpoint reader produces: a source of named float32 tensors. It lives in
 * `io/` (the readers implement it) and `models/` builds the lazy weight store over it.
 * @module
 */
import type { Tensor } from "../tensor.ts";

/** A source of named float32 tensors, loaded on first use and then cached. */
export interface WeightSource {
  /** Every tensor name the source holds (HF naming). */
  names(): string[];
  /** Loads one tensor (float32). */
  load(name: string): Promise<Tensor>;
  /** The tensor's shape without loading it, when the source knows it. */
  shape?(name: string): number[] | undefined;
  /** The tensor's stored dtype (safetensors name, e.g. "BF16"), when the source knows it. */
  dtype?(name: string): string | undefined;
}
