/**
 * Quantization points of the decoder forward, as data: where an activation or KV-cache quantizer
 * {@linkcode QuantSpec} is attached. Both forwards execute them — the host forward
 * (`decoder.ts`) in TypeScript, the GPU-resident decoder with the fake-quant kernel — so a model
 * with activation/KV specs stays resident on WebGPU. JS callbacks (`ForwardHooks`) remain the
 * host-only escape hatch.
 *
 * Order inside a block (each point optional): `linearInput[name]` → product (LLM.int8()'s
 * fake-quantized operands under `linearProduct[name]`) → bias →
 * `linearOutput[name]`; after the q/k/v products: `qPreRope`, `kPreRope`, RoPE (Llama family;
 * OPT has none, so pre- and post-RoPE specs then apply one after the other), `q`, `k`, `v`, then
 * `kvWrite.k` / `kvWrite.v` on the keys and values written to the KV cache (attention reads them
 * from there, new tokens included), then the `attentionKV` hook; `probs` fake-quantizes each
 * row of attention probabilities (one query of one head over the keys, masked keys as 0).
 * Specs see the rows of the current call: with a KV cache, the step's new tokens; with a batch,
 * every sequence's rows (a per-tensor or per-channel spec spans the batch).
 *
 * Linear specs are looked up by glob pattern over the block's linear names (first match wins,
 * `*` any characters, as recipes); the embeddings, OPT's project_in/out and the LM head are not
 * quantization points.
 * @module
 */
import type { ModelConfig } from "./config.ts";
import { OptionError } from "../errors.ts";
import {
  checkProductSpec,
  checkQuantSpec,
  type ProductSpec,
  type QuantSpec,
} from "../backend/ops.ts";

export type { ProductSpec, QuantSpec };
// The host execution of a spec (what the host forward runs at a point), for host-side hooks.
export { fakeQuant } from "../backend/ops.ts";

/** Quantizer specs attached to the forward's named points (see the module doc). */
export interface QuantPoints {
  /** Input rows of the block linears whose name matches a pattern (first match wins). */
  linearInput?: Record<string, QuantSpec>;
  /** Output rows (after bias) of the block linears whose name matches a pattern. */
  linearOutput?: Record<string, QuantSpec>;
  /**
   * The product of the block linears whose name matches a pattern (after the input spec and
   * hook): LLM.int8() as a fake-quant of both operands, outlier input dimensions exact.
   */
  linearProduct?: Record<string, ProductSpec>;
  /** Queries before RoPE, [rows, nH·hd]. */
  qPreRope?: QuantSpec;
  /** Queries after RoPE. */
  q?: QuantSpec;
  /** Keys before RoPE, [rows, nKV·hd]. */
  kPreRope?: QuantSpec;
  /** Keys after RoPE. */
  k?: QuantSpec;
  /** Values, [rows, nKV·hd]. */
  v?: QuantSpec;
  /** Each row of attention probabilities (granularity "token", no groups). Host forward only. */
  probs?: QuantSpec;
  /** The keys and values as written to the KV cache. */
  kvWrite?: { k?: QuantSpec; v?: QuantSpec };
}

const SINGLE = ["qPreRope", "q", "kPreRope", "k", "v", "probs"] as const;

function glob(pattern: string): RegExp {
  const esc = pattern.split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`^${esc.join(".*")}$`);
}

const cache = new WeakMap<object, { re: RegExp; spec: unknown }[]>();

/** The spec of the first pattern in `table` matching linear `name`, if any. */
export function linearSpec<S = QuantSpec>(
  table: Record<string, S> | undefined,
  name: string,
): S | undefined {
  if (!table) return undefined;
  let list = cache.get(table);
  if (!list) {
    list = Object.entries(table).map(([p, spec]) => ({ re: glob(p), spec }));
    cache.set(table, list);
  }
  return list.find((e) => e.re.test(name))?.spec as S | undefined;
}

/**
 * Checks every spec of `points` against `cfg`'s widths and throws {@linkcode OptionError} naming
 * the point and field (e.g. `points.kvWrite.k.groupSize`). Linear specs are checked for their
 * width when applied (the pattern decides which linears they reach).
 */
export function checkPoints(points: QuantPoints, cfg: ModelConfig): void {
  if (typeof points !== "object" || points === null) {
    throw new OptionError("points", "must be an object of quantizer specs");
  }
  const known = new Set<string>([
    ...SINGLE,
    "linearInput",
    "linearOutput",
    "linearProduct",
    "kvWrite",
  ]);
  for (const key of Object.keys(points)) {
    if (!known.has(key)) {
      throw new OptionError(`points.${key}`, `unknown point (known: ${[...known].join(", ")})`);
    }
  }
  const qw = cfg.numHeads * cfg.headDim, kw = cfg.numKvHeads * cfg.headDim;
  const width = { qPreRope: qw, q: qw, kPreRope: kw, k: kw, v: kw, probs: undefined };
  for (const key of SINGLE) {
    const s = points[key];
    if (s) checkQuantSpec(s, `points.${key}`, width[key]);
  }
  if (points.probs) {
    if ((points.probs.granularity ?? "token") !== "token" || points.probs.groupSize) {
      throw new OptionError(
        "points.probs.granularity",
        'attention probabilities take granularity "token" without groups (one row per query)',
      );
    }
  }
  if (points.kvWrite?.k) checkQuantSpec(points.kvWrite.k, "points.kvWrite.k", kw);
  if (points.kvWrite?.v) checkQuantSpec(points.kvWrite.v, "points.kvWrite.v", kw);
  for (const t of ["linearInput", "linearOutput"] as const) {
    for (const [p, s] of Object.entries(points[t] ?? {})) checkQuantSpec(s, `points.${t}[${p}]`);
  }
  for (const [p, s] of Object.entries(points.linearProduct ?? {})) {
    checkProductSpec(s, `points.linearProduct[${p}]`);
  }
}
