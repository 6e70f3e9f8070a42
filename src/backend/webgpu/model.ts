/**
 * What the GPU executor (`block.ts`, `decoder.ts`, `block_runner.ts`) needs to know about a
 * model, as plain data handed down by `src/models/` (`models/resident.ts` builds it from a
 * `Model`): the dimensions, the family's layout (tensor names, norm, MLP, positions — the table
 * of `models/family.ts`, which implements {@linkcode GpuFamily}), lazy weights, packed codes of
 * quantized layers, RoPE frequencies, and the quantizer specs already resolved per point. The
 * executor never imports `models/`.
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import type { ProductSpec, QuantSpec } from "../ops.ts";

/** The tensor names (no ".weight") of one decoder block. */
export interface BlockNames {
  /** The norm before (or, post-LN, after) attention. */
  attnNorm: string;
  /** The norm before (or after) the MLP. */
  mlpNorm: string;
  /** Query projection. */
  q: string;
  /** Key projection. */
  k: string;
  /** Value projection. */
  v: string;
  /** Output projection. */
  o: string;
  /** MLP linears in order: gate, up, down (SwiGLU) or fc1, fc2. */
  mlp: string[];
}

/** A family's layout as the executor reads it (`models/family.ts` describes each family). */
export interface GpuFamily {
  /** Norm kind: RMSNorm (weight) or LayerNorm (weight and bias). */
  norm: "rms" | "layer";
  /** MLP shape: gated SwiGLU, or fc1 → activation → fc2. */
  mlp: "swiglu" | "fc";
  /** Positions: rotary (applied to Q and K) or a learned table added to the embeddings. */
  positions: "rope" | "learned";
  /** Row of the learned position table for position 0 (OPT: 2). */
  positionOffset: number;
  /** Token embedding table. */
  embed: string;
  /** Learned position table (learned positions only). */
  positionTable?: string;
  /** Final norm before the LM head (may be absent from the weights: checked there). */
  finalNorm: string;
  /** Embedding projections in (present when the embedding width ≠ hidden size). */
  projIn?: string;
  /** Embedding projection out. */
  projOut?: string;
  /** Names of block `i`. */
  block(i: number): BlockNames;
}

/** The dimensions and switches the executor reads (field names of `models/config.ts`). */
export interface GpuModelConfig {
  /** Residual width. */
  hiddenSize: number;
  /** MLP width. */
  intermediateSize: number;
  /** Decoder blocks. */
  numLayers: number;
  /** Query heads. */
  numHeads: number;
  /** Key/value heads. */
  numKvHeads: number;
  /** Per-head width. */
  headDim: number;
  /** Embedding rows. */
  vocabSize: number;
  /** Context length. */
  maxPositions: number;
  /** Norm epsilon. */
  normEps: number;
  /** MLP activation ("silu", "relu", "gelu"). */
  activation: string;
  /** Pre-LayerNorm (OPT; the RMSNorm family is always pre-norm). */
  doLayerNormBefore: boolean;
  /** Embedding width (OPT). */
  wordEmbedProjDim: number;
  /** Sliding attention window, or null. */
  slidingWindow: number | null;
}

/**
 * Quantizer specs per quantization point, resolved (the executor does not match name
 * patterns): see `models/points.ts` for the points and their order.
 */
export interface GpuPoints {
  /** The spec of linear `name`'s input rows, if any. */
  linearInput(name: string): QuantSpec | undefined;
  /** The spec of linear `name`'s output rows (after bias), if any. */
  linearOutput(name: string): QuantSpec | undefined;
  /** The product spec of linear `name` (LLM.int8()'s decomposition), if any. */
  linearProduct?(name: string): ProductSpec | undefined;
  /** Queries before RoPE. */
  qPreRope?: QuantSpec;
  /** Queries after RoPE. */
  q?: QuantSpec;
  /** Keys before RoPE. */
  kPreRope?: QuantSpec;
  /** Keys after RoPE. */
  k?: QuantSpec;
  /** Values. */
  v?: QuantSpec;
  /** Keys and values as written to the KV cache. */
  kvWrite?: { k?: QuantSpec; v?: QuantSpec };
  /** Whether any linear has an input spec (an extra activation buffer is then allocated). */
  hasLinearInput: boolean;
}

/** A model as plain data for the GPU executor (see the module doc). */
export interface GpuModel {
  /** Dimensions. */
  config: GpuModelConfig;
  /** Family layout. */
  family: GpuFamily;
  /** Lazy weights by tensor name. */
  weights: { get(name: string): Promise<Tensor>; has(name: string): boolean };
  /** Packed codes of quantized linears by name (served packed when they match the weight). */
  packed?: Record<string, object>;
  /** RoPE inverse frequencies [headDim/2] (rope scaling applied), for the rotary family. */
  ropeInvFreq?: Float64Array;
  /** Quantizer specs at the quantization points. */
  points?: GpuPoints;
}
