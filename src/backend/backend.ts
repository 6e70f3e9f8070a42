/**
 * The compute interface every backend implements. Matrix products are async because the CPU path
 * goes through onnxruntime-node and the GPU path through WebGPU queues.
 * @module
 */
import type { Tensor } from "../tensor.ts";

/** A compute backend: matrix products over row-major float32 tensors. */
export interface Backend {
  /** "cpu" or "webgpu". */
  readonly name: string;
  /** Human-readable description (e.g. onnxruntime version, adapter name). */
  readonly description: string;
  /** `C[m,n] = A[m,k] · B[k,n]`. A may be 2-D only. */
  matmul(a: Tensor, b: Tensor): Promise<Tensor>;
  /** `C[m,n] = A[m,k] · B[n,k]ᵀ` (a linear layer with weight B in [out, in] layout). */
  matmulTransB(a: Tensor, b: Tensor): Promise<Tensor>;
  /**
   * Optional batched attention core: `softmax(Q·Kᵀ + mask)·V` with Q [G, T, d] (already scaled),
   * Kᵀ [G, d, S], V [G, S, d] and an additive mask [T, S]. Returns [G, T, d].
   */
  attention?(q: Tensor, kT: Tensor, v: Tensor, mask: Tensor): Promise<Tensor>;
  /**
   * Optional quantized linear: `x · Wᵀ` computed from `meta` (a quantizer's packed description,
   * `model.packed[name]`) instead of the dense `W`. A backend that keeps packed weights resident
   * (WebGPU: the dequant GEMV/GEMM kernels) implements it; it resolves to `undefined` when it
   * cannot serve this layer (unsupported bit width, or `meta` does not dequantize to `W` bit for
   * bit), and the caller then uses {@linkcode Backend.matmulTransB}.
   */
  packedMatmulTransB?(x: Tensor, w: Tensor, meta: unknown): Promise<Tensor | undefined>;
  /**
   * Optional GPTQ column pass (step 6 of `gptqQuantize`, min-max grids): every block's column
   * loop with in-block error feedback, the grid fits of dynamic groups at their first column, and
   * the lazy trailing updates `W[:, i2:] −= Err1 · Hinv[i1:i2, i2:]`, all on the device (WebGPU:
   * one submission, one readback). Resolves to `undefined` when it cannot serve the problem (an
   * operand over the device's binding limit, a block wider than the kernel takes); the caller
   * then runs its CPU loop. See {@linkcode GptqColumnsResult} for the output order.
   */
  gptqColumns?(args: GptqColumnsArgs): Promise<GptqColumnsResult | undefined>;
  /**
   * Optional float64 GEMM `C[m,n] = A[m,k] · B[k,n]` over row-major `Float64Array`s (CPU:
   * onnxruntime's MLAS DGEMM); with `transA`, `a` holds `Aᵀ` (`k × m`). Quantizers that keep
   * float64 factors (`linalg.ts`'s blocked Cholesky, QuIP's rotations) use it through this
   * capability instead of naming a backend.
   */
  matmulF64?(
    a: Float64Array,
    b: Float64Array,
    dims: { m: number; k: number; n: number; transA?: boolean },
  ): Promise<Float64Array>;
  /**
   * Optional decode attention over a packed (KIVI-layout) KV cache kept on the device: a cache
   * that finds this capability mirrors its packed groups and full-precision window there (one
   * upload per appended group or row) and runs each one-token decode attention from the codes,
   * dequantizing on the fly. Returns `undefined` when the backend cannot hold `layout` (bit width
   * outside 2..8, a head wider than the kernel takes, a buffer over the binding limit); the cache
   * then attends on the host.
   */
  packedKvAttention?(layout: PackedKvLayout): PackedKvDevice | undefined;
  /**
   * Optional decode attention over a KVQuant cache kept on the device (`kernels/kvquant_attention.ts`):
   * a KVQuant cache that finds this capability uploads each token once as it is quantized (its
   * codebook indices, V's offset and range, its sparse outliers; the first-few rows unquantized)
   * and runs each one-token decode attention from the codes, dequantizing through the codebooks,
   * patching the outliers and applying RoPE to pre-RoPE keys on the fly. Returns `undefined` when
   * the backend cannot hold `layout`; the cache then attends on the host.
   */
  kvquantAttention?(layout: KvQuantLayout): KvQuantDevice | undefined;
  /**
   * True when the backend can run a whole decoder block resident on its device
   * (`src/backend/webgpu/block_runner.ts`); the quantization pipeline asks this instead of testing the
   * backend's type.
   */
  readonly residentBlocks?: boolean;
  /**
   * Optional `C[m,n] = A[m,k] · B[k,n]` with `B` a {@linkcode DeviceMatrix} this backend holds
   * (a layer Hessian built on its device): `A` goes up, `C` comes back, `B` does not cross the
   * bus. The pipeline's relErr measurement uses it. Same kernel and tiling as `matmul`, so the
   * result is bit for bit `matmul(a, { data: await b.read() })`.
   */
  matmulDeviceB?(a: Tensor, b: DeviceMatrix): Promise<Tensor>;
}

/**
 * A square float32 matrix held on a backend's device (a layer Hessian `H = 2/n · Σ XᵀX` that the
 * resident pipeline accumulated there): consumers that run on the device (the backend's
 * `gptqColumns`, `matmulDeviceB`) take it as is; the host reads back only what it needs.
 */
export interface DeviceMatrix {
  /** Rows (= columns). */
  readonly size: number;
  /** The diagonal, `size` floats read back (dead inputs, act-order and damping need only it). */
  diagonal(): Promise<Float32Array>;
  /** The whole matrix, `size²` floats read back (consumers without a device path). */
  read(): Promise<Float32Array>;
  /** Frees the device buffers (the object must not be used afterwards). */
  release(): void;
}

const gridMethods = new Set<string>();

/**
 * Declares that the metas of quantization method `method` decode as the plain grid: `w[r, c] =
 * scale[r, g] · (code[r, c] − zero[r, g])` in float32 with `g = gIdx[c]` (or `c / groupSize`),
 * the codes in `packed` (`grid.ts` `packCodes`) and `codes`. The quant layer's grid formats
 * (`grid.ts` `gridFormat`) declare themselves; with {@linkcode recordDecoded} a backend then
 * serves such a meta from its packed words without checking it against the dense weight.
 */
export function declareGridMethod(method: string): void {
  gridMethods.add(method);
}

/** Whether {@linkcode declareGridMethod} declared `method`. */
export function isGridMethod(method: unknown): boolean {
  return typeof method === "string" && gridMethods.has(method);
}

const decodedBy = new WeakMap<object, Float32Array>();

/**
 * Records that `meta` (a quantizer's packed description of a declared grid method, see
 * {@linkcode declareGridMethod}) decodes to exactly `data` (the quantizer's `Wq`, which its
 * contract makes the meta's decode bit for bit). A backend serving `meta` for a weight whose data
 * is this very array then uploads the packed words without a host check; any other array is
 * checked entry by entry. Metas of undeclared methods are ignored.
 */
export function recordDecoded(meta: object & { method?: unknown }, data: Float32Array): void {
  if (isGridMethod(meta.method)) decodedBy.set(meta, data);
}

/** Whether {@linkcode recordDecoded} recorded `meta` as decoding to this `data` array. */
export function isRecordedDecode(meta: object, data: Float32Array): boolean {
  return decodedBy.get(meta) === data;
}

/** Geometry of a packed KV cache on the device ({@linkcode Backend.packedKvAttention}). */
export interface PackedKvLayout {
  /** Decoder layers (one packed cache each). */
  layers: number;
  /** Query heads. */
  nH: number;
  /** KV heads (divides nH). */
  nKV: number;
  /** Head dimension. */
  hd: number;
  /** Bits per code (2..8). */
  bits: number;
  /** Tokens per K group (per channel). */
  groupSize: number;
  /** Channels per V group (per token). */
  vGroupSize: number;
  /** R: the K block length and the full-precision window (a multiple of `groupSize`). */
  residualLength: number;
  /** Tokens the cache holds at most. */
  capacity: number;
}

/** Packed groups of K or V as the host quantizer stores them (KIVI's layout, `kivi.ts`). */
export interface PackedKvGroups {
  /** Code words: K block [kw][R/G][words], V row [kw/Gv][words]. */
  codes: Uint32Array;
  /** One scale per group, same group order. */
  scale: Float32Array;
  /** One minimum per group. */
  mn: Float32Array;
}

/** Bytes that crossed the bus for a {@linkcode PackedKvDevice}, and what it holds there. */
export interface PackedKvTraffic {
  /** Bytes written to the device (rows, packed groups, queries, uniforms). */
  up: number;
  /** Bytes read back (attention outputs). */
  down: number;
  /** Bytes of device buffers held (packed cache at capacity, rings, query/output). */
  resident: number;
}

/** A packed KV cache living on the device (see {@linkcode Backend.packedKvAttention}). */
export interface PackedKvDevice {
  /** Writes the full-precision K and V rows ([nKV·hd] each) of position `pos` of `layer`. */
  writeRows(layer: number, pos: number, k: Float32Array, v: Float32Array): void;
  /** Uploads K block `block` (tokens block·R .. block·R + R − 1) of `layer`, in place. */
  appendKeyBlock(layer: number, block: number, g: PackedKvGroups): void;
  /** Uploads the packed V row of position `pos` of `layer`, in place. */
  appendValueRow(layer: number, pos: number, g: PackedKvGroups): void;
  /**
   * Attention of one query `q` [nH·hd] at position `at.pos` over keys 0..pos of `layer`: keys
   * [0, qk) and values [0, qv) from the packed groups, the rest from the full-precision rows.
   * Returns [nH·hd].
   */
  attend(
    layer: number,
    q: Float32Array,
    at: { pos: number; qk: number; qv: number; scale: number },
  ): Promise<Float32Array>;
  /** Bytes moved so far and held now. */
  traffic(): PackedKvTraffic;
  /** Frees the device buffers (the object must not be used afterwards). */
  release(): void;
}

/** Per-layer quantizer arrays of a {@linkcode KvQuantLayout}. */
export interface KvQuantLayerParams {
  /** Per key channel offset `(upper + lower) / 2` [kw]. */
  kOff: Float32Array;
  /** Per key channel range `(upper − lower) / 2` [kw]. */
  kRng: Float32Array;
  /** Key codebook [2^bits] (per layer) or [kw · 2^bits] (per channel). */
  kLut: Float32Array;
  /** Value codebook [2^bits]. */
  vLut: Float32Array;
}

/** Geometry of a KVQuant cache on the device ({@linkcode Backend.kvquantAttention}). */
export interface KvQuantLayout {
  /** Decoder layers. */
  layers: number;
  /** Query heads. */
  nH: number;
  /** KV heads (divides nH). */
  nKV: number;
  /** Head dimension. */
  hd: number;
  /** Bits per code (2..5). */
  bits: number;
  /** Leading tokens stored unquantized (`firstFewFp16`). */
  firstFew: number;
  /** One key codebook per channel. */
  perChannel: boolean;
  /** RoPE table [capacity, hd/2, 2] of (cos, sin) when keys are stored before RoPE. */
  rope?: Float32Array;
  /** Per layer thresholds-derived offsets/ranges and codebooks. */
  params: KvQuantLayerParams[];
  /** Expected outliers per token (K + V), to size the outlier pool (it grows if exceeded). */
  outliersPerToken: number;
  /** Tokens the cache holds at most. */
  capacity: number;
}

/** One quantized KVQuant token as the host stores it (`kvquant.ts`). */
export interface KvQuantToken {
  /** K codes then V codes, `⌈kw / ⌊32/bits⌋⌉` words each. */
  codes: Uint32Array;
  /** V offset and range. */
  vp: Float32Array;
  /** Outlier counts of K and V (absent: none). */
  nnz?: Uint16Array;
  /** Outlier channels, K's then V's, each ascending. */
  idx?: Uint16Array;
  /** Outlier values. */
  val?: Float32Array;
}

/** A KVQuant cache living on the device (see {@linkcode Backend.kvquantAttention}). */
export interface KvQuantDevice {
  /** Writes the unquantized K and V rows of first-few position `pos` (the next position). */
  writeRaw(layer: number, pos: number, k: Float32Array, v: Float32Array): void;
  /** Uploads quantized token `pos` (the next position) of `layer`, in place. */
  appendToken(layer: number, pos: number, t: KvQuantToken): void;
  /** Attention of one query `q` [nH·hd] at `at.pos` over tokens 0..pos. Returns [nH·hd]. */
  attend(layer: number, q: Float32Array, at: { pos: number; scale: number }): Promise<Float32Array>;
  /** Bytes moved so far and held now. */
  traffic(): PackedKvTraffic;
  /** Frees the device buffers (the object must not be used afterwards). */
  release(): void;
}

/** Input of {@linkcode Backend.gptqColumns}: one layer after GPTQ's steps 1–5. */
export interface GptqColumnsArgs {
  /** Rows of W (output channels). */
  rows: number;
  /** Columns of W (input channels) and the size of `Hinv`. */
  cols: number;
  /**
   * W, float32 [rows, cols], dead columns zeroed: in processed order, or in the original order
   * when `perm` is given (the device gathers the columns). Not modified.
   */
  W: Float32Array;
  /** Upper Cholesky factor of the damped `H⁻¹` in processed order, float32 [cols, cols]. */
  Hinv?: Float32Array;
  /**
   * Instead of `Hinv`: `H`, float32 [cols, cols] — in processed order and damped, or in the
   * original order with `perm` and with its damped diagonal in `diagonal` (the device gathers it
   * by `perm`, then sets the diagonal). The device then computes `Hinv` in float32 (as the
   * reference's `torch.linalg.cholesky` / `cholesky_inverse` on the GPU do) and throws a
   * `NonFiniteError` naming the pivot when `H` is not positive definite.
   */
  H?: Float32Array;
  /**
   * Instead of `Hinv` or `H`: `H` already on this backend's device, in the original order (with
   * `perm` and `diagonal` as for `H`); not modified (the device works on a copy).
   */
  Hdevice?: DeviceMatrix;
  /**
   * Act-order on the device: processed column c is original column `perm[c]`; W and H are given
   * in the original order, and `codes`/`Q` come back in the original order.
   */
  perm?: Int32Array;
  /**
   * H's diagonal as the device must set it, in processed order (with `H`): dead inputs 1, plus
   * the dampening `percdamp · mean(diag H)`, computed and rounded by the caller.
   */
  diagonal?: Float32Array;
  /** Columns per lazy batch (`fasterquant(blocksize)`). */
  blocksize: number;
  /** Bits per code; `maxq = 2^bits − 1`. */
  bits: number;
  /** Symmetric grids (zero fixed at `(maxq + 1) / 2`). */
  sym: boolean;
  /** Columns per group, or -1 for one grid per row. */
  groupSize: number;
  /** Groups per row of the grid (1 without groups). */
  ngroups: number;
  /** Grid group (0 .. ngroups−1) of every processed column [cols]. */
  colGroup: Int32Array;
  /**
   * Scales [rows, ngroups], fitted before the pass (per-channel grids, static groups). With
   * `fitGroups` they are ignored and the pass fits them.
   */
  scales: Float32Array;
  /** Zero points, same layout as `scales`. */
  zeros: Float32Array;
  /**
   * Dynamic groups: fit group `c / groupSize` (min-max, as `findParams`) when the pass reaches
   * its first column `c`, on `W[:, c : c + groupSize]` as the lazy scheme holds it then (every
   * earlier block's trailing update, none of the current block's in-block updates).
   */
  fitGroups: boolean;
}

/**
 * Output of {@linkcode Backend.gptqColumns}: `codes`/`Q` in the original column order when `perm`
 * was given, else in processed order; `scales`/`zeros` in the grid layout.
 */
export interface GptqColumnsResult {
  /** Codes `clamp(round(w/scale) + zero, 0, maxq)`, [rows, cols]. */
  codes: Uint32Array;
  /** Dequantized weights `scale · (code − zero)`, float32 [rows, cols]. */
  Q: Float32Array;
  /** Scales used, [rows, ngroups] (the fitted ones for dynamic groups). */
  scales: Float32Array;
  /** Zero points used, [rows, ngroups]. */
  zeros: Float32Array;
  /** `Σ (w − q)² / Hinv_ii²` over all weights (without the reference's factor 1/2). */
  loss: number;
  /** Wall-clock seconds of the pass: uploads, dispatches, readback. */
  seconds: number;
}

/** Checks 2-D operands and returns [m, k, n]. Throws with both shapes in the message. */
export function gemmDims(a: Tensor, b: Tensor, transB: boolean): [number, number, number] {
  if (a.shape.length !== 2 || b.shape.length !== 2) {
    throw new Error(`matmul: expected 2-D operands, got [${a.shape}] and [${b.shape}]`);
  }
  const [m, k] = a.shape;
  const [b0, b1] = b.shape;
  const kb = transB ? b1 : b0;
  if (kb !== k) {
    throw new Error(
      `matmul${transB ? "TransB" : ""}: inner dims differ: [${a.shape}] and [${b.shape}]`,
    );
  }
  return [m, k, transB ? b0 : b1];
}
