/**
 * QuIP (Chee et al., 2023, "QuIP: 2-Bit Quantization of Large Language Models With Guarantees"):
 * incoherence pre-processing (diagonal rescaling, random orthogonal `U`, `V`), adaptive rounding
 * in the rotated domain (LDLQ, its greedy variants, or the ADMM variant), and post-processing
 * back to the original basis. Follows Cornell-RelaxML/QuIP (`opt.py` flags, `method.py`
 * `preproc`/`postproc`, `quant.py` `qfn`, `vector_balance.py` rounding); transforms are in
 * `_incoherence.ts`, rounding in `_ldlq.ts`.
 *
 * Differences from the reference (each documented at its option):
 * - `proj: "kron"` is the paper's two-factor Kronecker product of Haar-random factors (balanced
 *   split, e.g. 172 = 4·43). The reference code's default (`--pre_proj_extra 0`) is a blocked
 *   "butterfly" (each factor a batch of `n/p` independent `p × p` blocks, plus two random
 *   permutations); `--pre_proj_extra 1` is the unblocked Kronecker product with the
 *   permutations. `proj: "hadamard"` (QuIP#'s randomized Hadamard) is an addition.
 * - `ldlq` runs columns first to last by default (`columnOrder: "gptq"`, the paper's form, equal
 *   to GPTQ's codes and to the reference's `--quant ldl_gptqequiv`); the reference's `round_ldl`
 *   runs last to first (GPTQ on reversed columns): `columnOrder: "reference"`. In issue 19's
 *   held-out comparison the two orders' proxy losses differed by −16% to +4% depending on bits
 *   (one layer); see the butterfly note for the summed stories260K figures.
 * - qfn "a" does not clamp `W/scale + zero` to `[0, maxq]` before rounding by default (the
 *   reference's `quantize_weight_vecbal` does, which moves values within half a step of the grid
 *   ends and breaks the GPTQ equivalence; its `ldl_gptqequiv` path does not clamp):
 *   `qfnaClamp: true` is the reference's.
 * - Greedy passes clamp each coordinate as it is updated by default (`greedyClamp: "step"`), so
 *   each pass never increases the proxy loss; the reference clamps after each pass and keeps the
 *   unclamped residual (`greedyClamp: "pass"`; `ldlbal_admm`'s triangle-greedy is not that loop
 *   and is not transcribed).
 * - `incoh` turns on `preRescale` too, as the README says and as the reference does since
 *   3d52f02 (which fixed its `args.pre_resclae` misspelling in `opt.py`).
 * - `--incoh_processing` at the reference's HEAD rotates with the blocked butterfly
 *   (`pre_proj_extra 0`, because `opt.py` sets `args.proj_extra = 1`, a typo for
 *   `pre_proj_extra`, so its intended unblocked variant never runs): `proj: "butterfly"`
 *   (`_incoherence.ts` `randomButterfly`, same construction, seeded draws instead of torch's and
 *   scipy's generators, so the rotation differs draw by draw and no run is bit-identical).
 *   Measured (`bench/reference_fidelity.ts`, 35 stories260K layers, summed proxy loss): the
 *   butterfly gave 0.75× (4-bit), 0.79× (3-bit), 0.89× (2-bit) the Kronecker rotation's loss;
 *   the reference column order 1.006–1.027× the GPTQ order's (ldlq, no incoherence), and all
 *   three reference rounding semantics with 2 greedy passes 1.011–1.061× quantlab's.
 * - Everything is float64 (the reference: float32); rotations are seeded (`seed`).
 *
 * Defaults are quantlab's (paper's Kronecker rotation, GPTQ-equivalent order, no pre-clamp,
 * per-step clamping), not the reference code's: its random rotations cannot be replayed, so no
 * incoherent reference run is reproducible bit for bit whatever the defaults, and the paper's
 * construction and GPTQ equivalence are what quantlab's other methods are compared against. The
 * reference's `--incoh_processing --quant ldlq` is `{ proj: "butterfly", columnOrder:
 * "reference", greedyClamp: "pass" }` (qfn b; the clamp-before-round is qfn a only). Option
 * combinations
 * equal to reference command lines (`opt.py`, same (W, H), float64 vs the reference's float32):
 * - `--quant ldl_gptqequiv --qfn a` ↔ `{ incoh: false, method: "ldlq" }`;
 * - `--quant ldlq --qfn a --npasses N` ↔ `{ incoh: false, method: "ldlq", npasses: N,
 *   columnOrder: "reference", qfnaClamp: true, greedyClamp: "pass" }`;
 * - `--quant ldlqRG` / `--quant allbal` likewise with `method: "ldlqRG"` / `"allbal"`;
 * - with `--pre_gptqH --pre_rescale` add `preGptqH: true, preRescale: true`
 *   (tests/reference/quip_test.ts pins the rounding against a transcription of `round_ldl`).
 * @module
 */
import { checkLayerInputs } from "../core/inputs.ts";
import type { Tensor } from "../../tensor.ts";
import { NonFiniteError, OptionError, QuantlabError } from "../../errors.ts";
import type {
  LayerStats,
  QuantContext,
  QuantMeta,
  QuantResult,
  WeightQuantizer,
} from "../core/types.ts";
import type { QuantFormat } from "../core/types.ts";
import {
  findGridParams,
  maxqOf,
  packCodes,
  resolveBlocksize,
  resolvePercdamp,
  validateBits,
} from "../core/grid.ts";
import { type GemmF64, NotPositiveDefiniteError, onnxGemmF64 } from "../core/linalg.ts";
import { mulberry32 } from "../../rng.ts";
import {
  checkOptions as checkStrict,
  MAX_BLOCKSIZE,
  MAX_ITERS,
  type OptionSpec,
} from "../core/options.ts";
import {
  incoherencePost,
  incoherencePre,
  type IncoherenceState,
  makeRotations,
  type ProjKind,
} from "./_incoherence.ts";
import {
  type AdmmOptions,
  type ColumnOrder,
  type GreedyClamp,
  type QuipMethod,
  roundMethod,
} from "./_ldlq.ts";

export {
  applyRotation,
  denseRotation,
  haarOrthogonal,
  type HadamardRotation,
  type IncoherenceOptions,
  incoherencePost,
  incoherencePre,
  type IncoherenceState,
  kronFactors,
  type KronRotation,
  makeRotations,
  type ProjKind,
  randomHadamard,
  randomOrthogonalKron,
  type Rotation,
  rotationSize,
} from "./_incoherence.ts";
export {
  admmFeedback,
  type AdmmOptions,
  type ColumnOrder,
  type GreedyClamp,
  greedyPasses,
  ldlpAdmm,
  ldlqRound,
  methodOrder,
  type QuipMethod,
  roundMethod,
  type RoundResult,
  udlFactor,
} from "./_ldlq.ts";

/** The quantization function after pre-processing (reference `--qfn`). */
export type Qfn = "a" | "b";

/** Options of {@linkcode quip}, with the reference's flag names (Cornell-RelaxML/QuIP `opt.py`). */
export interface QuipOptions {
  /**
   * Bits per code (`--wbits`), 2–16. Above 8 the codes are kept unpacked in `meta.codes16`
   * (research use, e.g. checking that every transform is undone); packed formats need ≤ 8.
   */
  bits: number;
  /**
   * Rounding method (`--quant`): "ldlq" (default; LDLQ in column order, = GPTQ without
   * act-order), "ldlqRG" (LDLQ in descending `diag(H)` order, = act-order GPTQ, then `npasses`
   * greedy passes), "allbal" (greedy passes only, from the unrounded weights, descending
   * `diag(H)`), "ldlbal_admm" (LDLQ-style rounding with the ADMM feedback of `ldlp_admm`,
   * descending `diag(H)`, then greedy passes; `O(niters·n³)`, for small layers).
   */
  method?: QuipMethod;
  /**
   * Greedy passes after the rounding (`--npasses`, default 0; "allbal" needs ≥ 1). Stops
   * early at a fixed point.
   */
  npasses?: number;
  /**
   * The meta option `--incoh_processing` (default true): defaults `preGptqH`, `preRescale`,
   * `preProj` to true and `qfn` to "b". An explicitly given flag overrides it. With
   * `incoh: false` all three default to false and `qfn` to "a" (the reference's defaults).
   */
  incoh?: boolean;
  /** Dead-input handling and dampening of H, run after the other steps (`--pre_gptqH`). */
  preGptqH?: boolean;
  /** Diagonal rescaling `D = (diag H / diag WᵀW)^(1/4)` of W's columns and H (`--pre_rescale`). */
  preRescale?: boolean;
  /** Random orthogonal `W ← U W Vᵀ`, `H ← V H Vᵀ` (`--pre_proj`). */
  preProj?: boolean;
  /**
   * The orthogonal transform of `preProj` (default "kron"): "kron" = the paper's two-factor
   * Kronecker product of Haar-random orthogonal matrices; "hadamard" = randomized Hadamard
   * `H_N/√N·diag(±1)`, zero-padding a dimension that is not a power of two to `N = nextPow2`
   * (more codes, counted in bits per weight); "butterfly" = the reference code's blocked
   * two-factor butterfly with random input/output permutations (`--pre_proj_extra 0`, what its
   * `--incoh_processing` runs at HEAD; seeded draws, not torch's). Only with `preProj`.
   */
  proj?: ProjKind;
  /**
   * Grid after pre-processing (`--qfn`): "a" = per-row asymmetric min-max grid (the shared
   * `findParams`, reference `quantize_qfna`); "b" = one symmetric grid for the whole matrix with
   * `maxq + 1` levels on `[−s, s]`, `s = 2.4·rms(W) + 1e-16` (reference `quantize_qfnb`, the
   * paper's `ρ = 2.4`), values clamped to the grid before rounding. "b" needs `preProj`.
   */
  qfn?: Qfn;
  /** Dampening of `preGptqH`, a fraction of the mean diagonal (`--percdamp`, 0.01). */
  percdamp?: number;
  /** Seed of the rotations and of `unbiased` rounding (default 0; the reference: torch's RNG). */
  seed?: number;
  /**
   * Stochastic rounding `⌊x + η⌋`, `η ~ U[0,1)` (`--unbiased`; default false). The reference
   * refuses it with greedy passes for "ldlq"/"ldlqRG" (so do we); "allbal" rounds each greedy
   * step stochastically; "ldlbal_admm" only its first rounding.
   */
  unbiased?: boolean;
  /**
   * Lazy batch updates (`--lazy_batch`; default true here, the reference's default is false):
   * feedback to later column blocks through one GEMM per block. Same result up to rounding.
   */
  lazyBatch?: boolean;
  /** Columns per lazy batch (the reference's `round_ldl_block(blocksize=128)`). */
  blocksize?: number;
  /** Knobs of "ldlbal_admm" (`ldlp_admm(H, rho=0.1, niters=100)`). */
  admm?: Partial<AdmmOptions>;
  /**
   * Column visiting order of "ldlq" / "ldlqRG" (default "gptq": first to last, = GPTQ);
   * "reference": last to first, as the reference's `round_ldl` (see {@linkcode ColumnOrder}).
   */
  columnOrder?: ColumnOrder;
  /**
   * qfn "a": clamp `W/scale + zero` to `[0, maxq]` before rounding (default false; true = the
   * reference's `quantize_weight_vecbal`). The clipped part still counts in `loss`.
   */
  qfnaClamp?: boolean;
  /**
   * Greedy-pass clamping (default "step": each coordinate as updated; "pass": the reference's
   * clamp after each pass, see {@linkcode GreedyClamp}).
   */
  greedyClamp?: GreedyClamp;
}

/** Resolved options of {@linkcode quip}. */
export interface ResolvedQuipOptions {
  /** See {@linkcode QuipOptions.bits}. */
  bits: number;
  /** See {@linkcode QuipOptions.method}. */
  method: QuipMethod;
  /** See {@linkcode QuipOptions.npasses}. */
  npasses: number;
  /** See {@linkcode QuipOptions.incoh}. */
  incoh: boolean;
  /** See {@linkcode QuipOptions.preGptqH}. */
  preGptqH: boolean;
  /** See {@linkcode QuipOptions.preRescale}. */
  preRescale: boolean;
  /** See {@linkcode QuipOptions.preProj}. */
  preProj: boolean;
  /** See {@linkcode QuipOptions.proj}. */
  proj: ProjKind;
  /** See {@linkcode QuipOptions.qfn}. */
  qfn: Qfn;
  /** See {@linkcode QuipOptions.percdamp}. */
  percdamp: number;
  /** See {@linkcode QuipOptions.seed}. */
  seed: number;
  /** See {@linkcode QuipOptions.unbiased}. */
  unbiased: boolean;
  /** See {@linkcode QuipOptions.lazyBatch}. */
  lazyBatch: boolean;
  /** See {@linkcode QuipOptions.blocksize}. */
  blocksize: number;
  /** See {@linkcode QuipOptions.admm}. */
  admm: AdmmOptions;
  /** See {@linkcode QuipOptions.columnOrder}. */
  columnOrder: ColumnOrder;
  /** See {@linkcode QuipOptions.qfnaClamp}. */
  qfnaClamp: boolean;
  /** See {@linkcode QuipOptions.greedyClamp}. */
  greedyClamp: GreedyClamp;
}

const METHODS: readonly QuipMethod[] = ["ldlq", "ldlqRG", "allbal", "ldlbal_admm"];

/** Keys, types and bounds of {@linkcode QuipOptions} (strict: unknown keys are refused). */
export const QUIP_OPTION_SPECS: Record<string, OptionSpec> = {
  bits: { type: "int", min: 1, max: 16 },
  method: { type: "enum", values: METHODS },
  npasses: { type: "int", min: 0, max: MAX_ITERS },
  incoh: { type: "boolean" },
  preGptqH: { type: "boolean" },
  preRescale: { type: "boolean" },
  preProj: { type: "boolean" },
  proj: { type: "enum", values: ["kron", "hadamard", "butterfly"] },
  qfn: { type: "enum", values: ["a", "b"] },
  percdamp: { type: "number", gt: 0, max: 1e6 },
  seed: { type: "int", min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER },
  unbiased: { type: "boolean" },
  lazyBatch: { type: "boolean" },
  blocksize: { type: "int", min: 1, max: MAX_BLOCKSIZE },
  admm: {
    type: "object",
    path: true,
    spec: {
      rho: { type: "number", gt: 0, max: 1e9 },
      niters: { type: "int", min: 1, max: MAX_ITERS },
    },
  },
  columnOrder: { type: "enum", values: ["gptq", "reference"] },
  qfnaClamp: { type: "boolean" },
  greedyClamp: { type: "enum", values: ["step", "pass"] },
};

function bool(name: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== "boolean") throw new OptionError(name, `must be a boolean, got ${v}`);
  return v;
}

/** Validates and resolves {@linkcode QuipOptions}; throws {@linkcode OptionError}. */
export function resolveQuipOptions(opts: QuipOptions): ResolvedQuipOptions {
  if (typeof opts !== "object" || opts === null) {
    throw new OptionError("bits", "quip needs an options object with bits");
  }
  checkStrict("quip", opts, QUIP_OPTION_SPECS, { unknown: "ignore" });
  const bits = validateBits(opts.bits, { min: 2, max: 16 });
  const method = opts.method ?? "ldlq";
  if (!METHODS.includes(method)) {
    throw new OptionError("method", `must be one of ${METHODS.join(", ")}, got ${method}`);
  }
  const npasses = opts.npasses ?? 0;
  if (!(Number.isInteger(npasses) && npasses >= 0)) {
    throw new OptionError("npasses", `must be an integer ≥ 0, got ${npasses}`);
  }
  if (method === "allbal" && npasses < 1) {
    throw new OptionError("npasses", `allbal rounds only in its greedy passes: needs ≥ 1`);
  }
  const incoh = bool("incoh", opts.incoh, true);
  const preGptqH = bool("preGptqH", opts.preGptqH, incoh);
  const preRescale = bool("preRescale", opts.preRescale, incoh);
  const preProj = bool("preProj", opts.preProj, incoh);
  if (
    opts.proj !== undefined && opts.proj !== "kron" && opts.proj !== "hadamard" &&
    opts.proj !== "butterfly"
  ) {
    throw new OptionError("proj", `must be "kron", "hadamard" or "butterfly", got ${opts.proj}`);
  }
  if (opts.proj !== undefined && !preProj) {
    throw new OptionError("proj", `has no effect without preProj (or incoh)`);
  }
  const proj = opts.proj ?? "kron";
  const qfn = opts.qfn ?? (preProj && incoh ? "b" : "a");
  if (qfn !== "a" && qfn !== "b") throw new OptionError("qfn", `must be "a" or "b", got ${qfn}`);
  if (qfn === "b" && !preProj) {
    throw new OptionError(
      "qfn",
      `"b" assumes incoherent weights: needs preProj (as the reference)`,
    );
  }
  const percdamp = resolvePercdamp(opts.percdamp);
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed)) throw new OptionError("seed", `must be an integer, got ${seed}`);
  const unbiased = bool("unbiased", opts.unbiased, false);
  if (unbiased && npasses > 0 && (method === "ldlq" || method === "ldlqRG")) {
    throw new OptionError(
      "unbiased",
      `greedy passes are incompatible with unbiased LDL rounding (npasses ${npasses})`,
    );
  }
  const lazyBatch = bool("lazyBatch", opts.lazyBatch, true);
  const blocksize = resolveBlocksize(opts.blocksize);
  const admmIn = opts.admm ?? {};
  if (typeof admmIn !== "object" || admmIn === null) {
    throw new OptionError("admm", `must be an object { rho, niters }`);
  }
  const rho = admmIn.rho ?? 0.1, niters = admmIn.niters ?? 100;
  if (!(typeof rho === "number" && Number.isFinite(rho) && rho > 0)) {
    throw new OptionError("admm.rho", `must be a finite number > 0, got ${rho}`);
  }
  if (!(Number.isInteger(niters) && niters >= 1)) {
    throw new OptionError("admm.niters", `must be an integer ≥ 1, got ${niters}`);
  }
  return {
    bits,
    method,
    npasses,
    incoh,
    preGptqH,
    preRescale,
    preProj,
    proj,
    qfn,
    percdamp,
    seed,
    unbiased,
    lazyBatch,
    blocksize,
    admm: { rho, niters },
    columnOrder: opts.columnOrder ?? "gptq",
    qfnaClamp: bool("qfnaClamp", opts.qfnaClamp, false),
    greedyClamp: opts.greedyClamp ?? "step",
  };
}

/** Seconds spent in each phase of one {@linkcode quipQuantize} call (in `meta.timings`). */
export interface QuipTimings {
  /** Incoherence pre-processing (rescale, rotations of W and H, GPTQ's H handling). */
  pre: number;
  /** Grid fitting and scaling to the integer domain. */
  grid: number;
  /** Rounding (factorization, LDLQ / ADMM, greedy passes). */
  round: number;
  /** Post-processing: decoding and the inverse transforms (`dequantizeQuip`). */
  post: number;
  /** The `loss` bookkeeping (qfn "b": the clipping term, `nnz(clipped)·cols` flops). */
  loss: number;
}

/** QuIP's part of {@linkcode QuantMeta} (`meta.quip`). */
export interface QuipMetaInfo {
  /** Grid kind. */
  qfn: Qfn;
  /** Rounding method. */
  method: QuipMethod;
  /** `[rows, cols]` of the codes (the rounding domain; padded for "hadamard"). */
  rotatedShape: [number, number];
  /** The transform kind, or null without `preProj`. */
  proj: ProjKind | null;
  /** Seed the rotations are regenerated from. */
  seed: number;
  /** Kronecker factor sizes of U and V (informational; derived from the shapes). */
  factorsU?: number[];
  /** See `factorsU`. */
  factorsV?: number[];
  /** Column scale `D` of `preRescale` (float32), or undefined. */
  rescale?: Float32Array;
  /** Greedy passes run. */
  passes: number;
}

/** The float32 min-max grid per row of a row-major float64 `[rows, cols]` matrix (qfn "a", ≤ 16 bits). */
function fitRowGrids(W: Float64Array, rows: number, cols: number, bits: number) {
  return findGridParams({ shape: [rows, cols], data: Float32Array.from(W) }, { bits, sym: false });
}

function stateOf(meta: QuantMeta): IncoherenceState {
  const info = meta.quip as QuipMetaInfo | undefined;
  if (!info || meta.method !== "quip") {
    throw new QuantlabError(`dequantizeQuip: meta.method is ${meta.method}, not "quip"`);
  }
  const rot = info.proj ? makeRotations(info.proj, info.rotatedShape, info.seed) : undefined;
  return {
    shape: meta.shape,
    rotatedShape: info.rotatedShape,
    rescale: info.rescale,
    U: rot?.U,
    V: rot?.V,
    hScale: 1,
  };
}

/**
 * Rebuilds the dequantized weight from a QuIP `meta`: rotated-domain weights
 * `scales[r]·(code − zeros[r])` (float64 of the float32 grid), then `Uᵀ Ŵ V` (rotations
 * regenerated from the seed), the padding dropped, `/ D`, rounded to float32. `quipQuantize`
 * computes its `Wq` with this function, so the two are bit-identical (for the same `gemm`:
 * onnxruntime's DGEMM by default, TypeScript when onnxruntime cannot load).
 */
export async function dequantizeQuip(
  meta: QuantMeta,
  options: { gemm?: GemmF64 } = {},
): Promise<Tensor> {
  const gemm = options.gemm ?? await onnxGemmF64();
  const state = stateOf(meta);
  const [m, n] = state.rotatedShape;
  const codes = (meta.codes16 as Uint16Array | undefined) ?? meta.codes;
  if (codes.length !== m * n) {
    throw new QuantlabError(`dequantizeQuip: ${codes.length} codes for rotated shape [${m}, ${n}]`);
  }
  const perRow = meta.scales.length === m;
  const Wr = new Float64Array(m * n);
  for (let r = 0; r < m; r++) {
    const s = meta.scales[perRow ? r : 0], z = meta.zeros[perRow ? r : 0];
    for (let j = 0; j < n; j++) Wr[r * n + j] = s * (codes[r * n + j] - z);
  }
  const W = await incoherencePost(Wr, state, gemm);
  return { shape: [meta.shape[0], meta.shape[1]], data: Float32Array.from(W) };
}

/**
 * Storage bits per original weight of a QuIP `meta`: `bits · (codes / weights)` (more codes when
 * Hadamard padding applies) + 16 bits per scale (and per zero for qfn "a": one pair per rotated
 * row; qfn "b": one scale per tensor, zero constant) + 16 bits per rescale entry (fp16, one per
 * input column). The rotations are regenerated from a seed and cost nothing.
 */
export function quipBitsPerWeight(meta: QuantMeta): number {
  const info = meta.quip as QuipMetaInfo;
  const [rows, cols] = meta.shape;
  const [m, n] = info.rotatedShape;
  const weights = rows * cols;
  const params = info.qfn === "a" ? m * 32 : 16;
  const rescale = info.rescale ? 16 * cols : 0;
  return (meta.bits * m * n + params + rescale) / weights;
}

/**
 * Adds the clipping error of qfn "b" to the per-row losses (integer units): with `S = Q − Wi`
 * (`Wi` clamped) and `c = Wi − Wu` (`Wu` unclamped, nonzero only where clipped),
 * `(S + c) H (S + c)ᵀ = S H Sᵀ + 2·(c H)·Sᵀ + (c H)·cᵀ`; cost `nnz(c)·n` per row.
 */
function addClipLoss(
  Wi: Float64Array,
  Wr: Float64Array,
  grid: { scales: Float32Array; zeros: Float32Array },
  Q: Float64Array,
  H: Float64Array,
  [m, n]: [number, number],
  rowLoss: Float64Array,
): void {
  const v = new Float64Array(n);
  const perRow = grid.scales.length === m;
  for (let r = 0; r < m; r++) {
    const ro = r * n;
    const scale = grid.scales[perRow ? r : 0], zero = grid.zeros[perRow ? r : 0];
    let any = false;
    v.fill(0);
    for (let k = 0; k < n; k++) {
      const c = Wi[ro + k] - (Wr[ro + k] / scale + zero);
      if (c === 0) continue;
      any = true;
      for (let j = 0; j < n; j++) v[j] += c * H[k * n + j];
    }
    if (!any) continue;
    let add = 0;
    for (let k = 0; k < n; k++) {
      const c = Wi[ro + k] - (Wr[ro + k] / scale + zero);
      add += v[k] * (2 * (Q[ro + k] - Wi[ro + k]) + c);
    }
    rowLoss[r] += add;
  }
}

function notPdHint(o: ResolvedQuipOptions): string {
  return o.preGptqH
    ? `increase the dampening (percdamp, now ${o.percdamp}) or use more calibration samples`
    : `enable preGptqH (dead inputs and dampening) or use more calibration samples`;
}

function notPd(layer: string, o: ResolvedQuipOptions, detail: string, cause?: unknown) {
  return new NonFiniteError(`quip: ${layer}: ${detail}; ${notPdHint(o)}`, { cause });
}

/**
 * QuIP of one `[rows, cols]` weight given `stats.H` (`cols × cols`). Steps:
 * 1. pre-processing ({@linkcode incoherencePre}): rescale, rotate, GPTQ's H handling;
 * 2. grid (`qfn`) and scaling to the integer domain `[0, maxq]`;
 * 3. rounding (`method`, then `npasses` greedy passes) in the processing order of the method;
 * 4. post-processing through {@linkcode dequantizeQuip} (so `Wq` equals it bit for bit).
 *
 * `loss` is the proxy loss `tr((Ŵ − W) H̃ (Ŵ − W)ᵀ)` in the rounding domain (`W` the rotated
 * weight before qfn "b"'s clipping, so clipping error counts) under the Hessian the rounding saw
 * (dampened), with the scalar normalizations of H undone: the original-basis proxy loss under the
 * dampened Hessian, computed without extra products (for padded "hadamard" it also counts the
 * padded rows and columns, so it bounds the original-basis loss from above).
 * `meta.codes` (`meta.codes16` above 8 bits) are in the rotated domain, `meta.quip.rotatedShape`.
 */
export async function quipQuantize(
  W: Tensor,
  stats: LayerStats,
  options: QuipOptions & QuantContext,
): Promise<QuantResult> {
  const o = resolveQuipOptions(options);
  const layer = options.layer ?? "weight";
  const { rows, cols, H: H0 } = checkLayerInputs("quip", W, stats, {
    layer,
    hint: notPdHint(o),
  });
  const gemm = await onnxGemmF64();
  const timings: QuipTimings = { pre: 0, grid: 0, round: 0, post: 0, loss: 0 };
  let t0 = performance.now();
  const pre = await incoherencePre(Float64Array.from(W.data), Float64Array.from(H0), [rows, cols], {
    preRescale: o.preRescale,
    preProj: o.preProj,
    proj: o.proj,
    preGptqH: o.preGptqH,
    percdamp: o.percdamp,
    seed: o.seed,
  }, gemm);
  timings.pre = (performance.now() - t0) / 1000;

  t0 = performance.now();
  const [m, n] = pre.state.rotatedShape;
  const maxq = maxqOf(o.bits);
  const Wr = pre.W;
  let scales: Float32Array, zeros: Float32Array;
  const Wi = new Float64Array(m * n);
  if (o.qfn === "a") {
    const p = fitRowGrids(Wr, m, n, o.bits);
    scales = p.scale;
    zeros = p.zero;
    for (let r = 0; r < m; r++) {
      const s = scales[r], z = zeros[r];
      for (let j = 0; j < n; j++) {
        const v = Wr[r * n + j] / s + z;
        Wi[r * n + j] = !o.qfnaClamp ? v : v < 0 ? 0 : v > maxq ? maxq : v;
      }
    }
  } else {
    let ss = 0;
    for (let i = 0; i < Wr.length; i++) ss += Wr[i] * Wr[i];
    const s = 2.4 * Math.sqrt(ss / Wr.length) + 1e-16;
    scales = Float32Array.of(Math.fround((2 * s) / maxq));
    zeros = Float32Array.of(maxq / 2);
    const st = scales[0], z = zeros[0];
    for (let i = 0; i < Wr.length; i++) {
      const v = Wr[i] / st + z;
      Wi[i] = v < 0 ? 0 : v > maxq ? maxq : v;
    }
  }
  timings.grid = (performance.now() - t0) / 1000;

  t0 = performance.now();
  let rounded;
  try {
    rounded = await roundMethod(o.method, Wi, pre.H, { rows: m, cols: n }, {
      maxq,
      blocksize: o.lazyBatch ? o.blocksize : n,
      unbiased: o.unbiased,
      rng: mulberry32((o.seed ^ 0x5bd1e995) >>> 0),
      gemm,
      npasses: o.npasses,
      admm: o.admm,
      columnOrder: o.columnOrder,
      greedyClamp: o.greedyClamp,
    });
  } catch (e) {
    if (e instanceof NotPositiveDefiniteError) {
      throw notPd(layer, o, `the processed Hessian is not positive definite (${e.message})`, e);
    }
    throw e;
  }
  timings.round = (performance.now() - t0) / 1000;

  const codesArr = o.bits <= 8 ? new Uint8Array(m * n) : new Uint16Array(m * n);
  for (let i = 0; i < codesArr.length; i++) codesArr[i] = rounded.Q[i];
  const info: QuipMetaInfo = {
    qfn: o.qfn,
    method: o.method,
    rotatedShape: [m, n],
    proj: o.preProj ? o.proj : null,
    seed: o.seed,
    factorsU: pre.state.U?.kind === "kron" ? pre.state.U.factors : undefined,
    factorsV: pre.state.V?.kind === "kron" ? pre.state.V.factors : undefined,
    rescale: pre.state.rescale,
    passes: rounded.passes,
  };
  const meta: QuantMeta = {
    method: "quip",
    bits: o.bits,
    groupSize: -1,
    sym: o.qfn === "b",
    shape: [rows, cols],
    codes: o.bits <= 8 ? codesArr as Uint8Array : new Uint8Array(0),
    codes16: o.bits <= 8 ? undefined : codesArr as Uint16Array,
    packed: o.bits <= 8 ? packCodes(codesArr as Uint8Array, o.bits) : undefined,
    scales,
    zeros,
    perTensor: o.qfn === "b",
    quip: info,
    options: { ...o },
    timings,
  };
  t0 = performance.now();
  const Wq = await dequantizeQuip(meta, { gemm });
  timings.post = (performance.now() - t0) / 1000;

  t0 = performance.now();
  if (o.qfn === "b" || o.qfnaClamp) {
    addClipLoss(Wi, Wr, { scales, zeros }, rounded.Q, pre.H, [m, n], rounded.rowLoss);
  }
  let loss = 0;
  for (let r = 0; r < m; r++) {
    const s = scales[o.qfn === "a" ? r : 0];
    loss += s * s * rounded.rowLoss[r];
  }
  loss /= pre.state.hScale;
  timings.loss = (performance.now() - t0) / 1000;
  return { Wq, meta, bitsPerWeight: quipBitsPerWeight(meta), loss };
}

/**
 * The QuIP weight quantizer (needs `stats.H`). Options map to the reference flags as documented
 * on {@linkcode QuipOptions}: `bits` ↔ `--wbits`, `method` ↔ `--quant`, `npasses` ↔ `--npasses`,
 * `incoh` ↔ `--incoh_processing`, `preGptqH` ↔ `--pre_gptqH`, `preRescale` ↔ `--pre_rescale`,
 * `preProj` ↔ `--pre_proj`, `qfn` ↔ `--qfn`, `percdamp` ↔ `--percdamp`, `unbiased` ↔
 * `--unbiased`, `lazyBatch` ↔ `--lazy_batch`, `admm.rho`/`admm.niters` ↔ `ldlp_admm(rho,
 * niters)`; `columnOrder`, `qfnaClamp`, `greedyClamp` select the reference's rounding semantics
 * (see the module doc for the combinations equal to reference command lines). Bad options throw {@linkcode OptionError} naming the option. All products are
 * float64 through onnxruntime (`onnxGemmF64`); `ctx.backend` is not used.
 *
 * @example
 * ```ts
 * const q = quip({ bits: 2, method: "ldlq" });           // incoherence processing on
 * const { Wq, meta } = await q.quantizeWeight(W, { H, nsamples: 128 });
 * const same = await dequantizeQuip(meta);                 // === Wq, bit for bit
 * ```
 */
export function quip(options: QuipOptions): WeightQuantizer {
  checkStrict("quip", options, QUIP_OPTION_SPECS);
  const o = resolveQuipOptions(options);
  return {
    name: "quip",
    needsHessian: true,
    options: { ...o },
    quantizeWeight: (W, stats, ctx) => quipQuantize(W, stats, { ...options, layer: ctx?.layer }),
  };
}

/** QuIP's storage format: rotated-domain grid codes, rotations regenerated from the seed. */
export const quipFormat: QuantFormat = {
  method: "quip",
  dequantize: (meta) => dequantizeQuip(meta),
  bitsPerWeight: quipBitsPerWeight,
};
