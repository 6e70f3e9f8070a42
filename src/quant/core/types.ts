/**
 * Types shared by every weight quantizer: layer statistics in, quantized weights plus their
 * packed description out. A quantizer is a pure function of the weight and its statistics;
 * {@linkcode dequantize} (in `grid.ts`) rebuilds `Wq` bit-exactly from `meta`.
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import type { Backend, DeviceMatrix } from "../../backend/backend.ts";

/** Statistics of one linear layer's inputs, gathered over the calibration set. */
export interface LayerStats {
  /** Hessian proxy `H = 2/n · Σ XᵀX`, `cols × cols` row-major (cols = input features). */
  H?: Float64Array | Float32Array;
  /**
   * Instead of `H`: the same matrix held on the backend's device (the resident pipeline passes it
   * to quantizers with `acceptsDeviceHessian`; they read back what they need, e.g. the diagonal).
   */
  Hdevice?: DeviceMatrix;
  /** Number of calibration rows (tokens) accumulated into `H`. */
  nsamples: number;
  /** Optional max |x| per input channel. */
  actAbsMax?: Float32Array;
}

/**
 * The quantized representation of a `[rows, cols]` weight (rows = output channels). Group `g`
 * of row `r` has `scales[r * ngroups + g]` and `zeros[r * ngroups + g]`; column `j` uses group
 * `gIdx[j]` when present, else `floor(j / groupSize)` (or 0 when `groupSize === -1`).
 * The weight is `scale · (code − zero)` computed in float32.
 */
export interface QuantMeta {
  /** Method name ("rtn", "gptq", ...). */
  method: string;
  /** Bits per code. */
  bits: number;
  /** Columns per group; -1 = one group per output channel (row). */
  groupSize: number;
  /** Symmetric grid (zero fixed at `(maxq + 1) / 2`). */
  sym: boolean;
  /** `[rows, cols]` of the weight. */
  shape: [number, number];
  /** Unpacked integer codes in `[0, 2^bits − 1]`, row-major, in the ORIGINAL column order. */
  codes: Uint8Array;
  /** `codes` packed by {@linkcode packCodes} (LSB-first bitstream of 32-bit words). */
  packed?: Uint32Array;
  /** Scale per (row, group), row-major `[rows, ngroups]`. */
  scales: Float32Array;
  /** Zero point per (row, group) (integer-valued), row-major `[rows, ngroups]`. */
  zeros: Float32Array;
  /** Group index per column in original order (GPTQ's `g_idx`). */
  gIdx?: Int32Array;
  /** Column processing order (act-order): position `i` processed original column `perm[i]`. */
  perm?: Int32Array;
  /** One grid for the whole tensor (all rows share scale and zero; still stored per row). */
  perTensor?: boolean;
  /** Whether `gIdx` is a real index (act-order without static groups) to count in bits. */
  gIdxStored?: boolean;
  /** Method-specific extras. */
  [k: string]: unknown;
}

/** What a weight quantizer returns. */
export interface QuantResult {
  /** Dequantized weight, float32 `[rows, cols]`; equals `dequantize(meta)` bit for bit. */
  Wq: Tensor;
  /** The packed description. */
  meta: QuantMeta;
  /** Storage cost per weight including scales, zeros and index overhead. */
  bitsPerWeight: number;
  /** Method's own loss (GPTQ: Σ (w−q)²/d² / 2 as the reference `Losses`; RTN: Σ (w−q)²). */
  loss: number;
}

/** Where a quantizer runs and what it quantizes (for error messages). */
export interface QuantContext {
  /** Compute backend for large matrix products (default: the CPU backend). */
  backend?: Backend;
  /** Layer name, e.g. "model.layers.0.mlp.down_proj". */
  layer?: string;
}

/** A weight quantizer: a pure function of a weight and its layer statistics. */
export interface WeightQuantizer {
  /** Method name. */
  name: string;
  /** Whether `stats.H` is required. */
  needsHessian: boolean;
  /**
   * Whether `quantizeWeight` takes `stats.Hdevice` (a Hessian on the backend's device) in place
   * of `stats.H`; absent or false: the pipeline reads H back and passes `stats.H`.
   */
  acceptsDeviceHessian?: boolean;
  /** The resolved options (for reports). */
  options: Record<string, unknown>;
  /** Quantizes a `[rows, cols]` weight; does not modify `W`. */
  quantizeWeight(W: Tensor, stats: LayerStats, ctx?: QuantContext): Promise<QuantResult>;
  /**
   * Static check of a layer with `cols` input columns (group sizes), run before calibration by
   * callers that want errors early (the CLI); the same check `quantizeWeight` makes. Absent: the
   * quantizer has no shape-dependent option.
   */
  checkColumns?(cols: number, layer: string): void;
}

/**
 * A method's storage format: how its packed description decodes and what it costs. Each method
 * module exports one (`rtnFormat`, `gptqFormat`, …); `FORMATS` in `dequantize.ts` lists them, one
 * line per method, and `dequantizeMeta` dispatches on `meta.method` through that list.
 */
export interface QuantFormat {
  /** The `meta.method` this format decodes. */
  readonly method: string;
  /** Rebuilds the quantizer's `Wq` bit for bit from `meta` (async where a GEMM is needed). */
  dequantize(meta: QuantMeta): Tensor | Promise<Tensor>;
  /** Storage bits per original weight, equal to the quantizer's `QuantResult.bitsPerWeight`. */
  bitsPerWeight(meta: QuantMeta): number;
  /** Optional: packs the meta's integer codes into its storage words. */
  pack?(codes: Uint8Array, bits: number): Uint32Array;
  /** Optional: inverse of {@linkcode QuantFormat.pack}, the first `count` codes. */
  unpack?(packed: Uint32Array, options: { bits: number; count: number }): Uint8Array;
}
