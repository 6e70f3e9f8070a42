/**
 * Elementwise operations the host (TypeScript) forward shares with the kernels' CPU references,
 * so `models/` computes exactly what the WGSL computes without importing `kernels/`: the GELU
 * erf fit and activation / KV-cache fake quantization by a {@linkcode QuantSpec}.
 * @module
 */
import type { Tensor } from "../tensor.ts";
import { OptionError } from "../errors.ts";
import { erfFit } from "../../kernels/elementwise.ts";
import { fakeQuantRef, type FakeQuantSpec } from "../../kernels/fake_quant.ts";
import { int8RowsRef, outlierMaskRef, type ProductSpec } from "../../kernels/llm_int8.ts";

export { erfFit };

/**
 * A quantizer spec attached to a quantization point: plain data (bits 2–16, granularity
 * per-tensor / per-token (with optional groups) / per-channel, symmetric or not, clipping ratio,
 * optional static per-channel scales). The grid is QuaRot's `ActQuantizer`; see
 * `kernels/fake_quant.ts` for the exact arithmetic both backends run.
 */
export type QuantSpec = FakeQuantSpec;

/**
 * A spec on a linear's product: LLM.int8()'s vector-wise int8 with outlier dimensions kept exact,
 * run as a fake-quant of both operands (`kernels/llm_int8.ts`).
 */
export type { ProductSpec };

/**
 * Checks `spec` for a tensor of `cols` columns (when known) and throws {@linkcode OptionError}
 * naming `where` (the point, e.g. "points.linearInput[*.mlp.down_proj]") and the field.
 */
export function checkQuantSpec(spec: QuantSpec, where: string, cols?: number): void {
  const bad = (field: string, msg: string): never => {
    throw new OptionError(`${where}.${field}`, msg);
  };
  if (typeof spec !== "object" || spec === null) bad("bits", "a spec must be an object");
  if (!(Number.isInteger(spec.bits) && spec.bits >= 2 && spec.bits <= 16)) {
    bad("bits", `must be an integer in 2..16, got ${spec.bits}`);
  }
  const g = spec.granularity ?? "token";
  if (!["tensor", "token", "channel"].includes(g)) {
    bad("granularity", `must be "tensor", "token" or "channel", got ${JSON.stringify(g)}`);
  }
  if (spec.sym !== undefined && typeof spec.sym !== "boolean") {
    bad("sym", `must be a boolean, got ${spec.sym}`);
  }
  const clip = spec.clip ?? 1;
  if (!(typeof clip === "number" && clip > 0 && clip <= 1)) {
    bad("clip", `must be in (0, 1], got ${spec.clip}`);
  }
  if (spec.groupSize !== undefined && spec.groupSize !== 0) {
    if (g !== "token") bad("groupSize", `applies to granularity "token" only, not "${g}"`);
    if (!(Number.isInteger(spec.groupSize) && spec.groupSize > 0)) {
      bad("groupSize", `must be a positive integer, got ${spec.groupSize}`);
    }
    if (cols !== undefined && cols % spec.groupSize! !== 0) {
      bad("groupSize", `${spec.groupSize} does not divide the ${cols} columns`);
    }
  }
  if (spec.scales !== undefined) {
    if (!(spec.scales instanceof Float32Array)) bad("scales", "must be a Float32Array");
    if (g !== "channel") bad("scales", `static scales need granularity "channel", not "${g}"`);
    if (!(spec.sym ?? true)) bad("scales", "static scales are symmetric (sym must not be false)");
    if (cols !== undefined && spec.scales!.length !== cols) {
      bad("scales", `has ${spec.scales!.length} entries for ${cols} columns`);
    }
    for (let j = 0; j < spec.scales!.length; j++) {
      const s = spec.scales![j];
      if (!(s > 0 && Number.isFinite(s))) {
        bad("scales", `entry ${j} is ${s}, not a positive number`);
      }
    }
  }
  checkSdrFields(spec, bad);
}

/** The `grid` and `qrazor` fields of a spec (see `kernels/fake_quant.ts`). */
function checkSdrFields(spec: QuantSpec, bad: (field: string, msg: string) => never): void {
  const grid = spec.grid ?? "quarot";
  if (grid !== "quarot" && grid !== "deepspeed") {
    bad("grid", `must be "quarot" or "deepspeed", got ${JSON.stringify(spec.grid)}`);
  }
  if (grid === "deepspeed") {
    if (spec.sym === false) bad("sym", 'the "deepspeed" grid is symmetric (sym must not be false)');
    if (spec.scales) bad("scales", 'the "deepspeed" grid is dynamic (no static scales)');
  }
  if (spec.qrazor === undefined) return;
  const q = spec.qrazor;
  if (typeof q !== "object" || q === null) bad("qrazor", "must be { bits, group }");
  if (grid === "deepspeed") bad("qrazor", 'QRazor razors the qllm-infer grid, not "deepspeed"');
  if (spec.scales) bad("qrazor", "QRazor takes a dynamic base grid (no static scales)");
  if (!(Number.isInteger(q.bits) && q.bits >= 2 && q.bits <= spec.bits)) {
    bad("qrazor.bits", `must be an integer in 2..bits (${spec.bits}), got ${q.bits}`);
  }
  if (!(Number.isInteger(q.group) && q.group >= 1 && q.group <= 1 << 20)) {
    bad("qrazor.group", `must be an integer in 1..2^20, got ${q.group}`);
  }
}

/**
 * `x` [rows, cols] fake-quantized by `spec` (a new tensor; `x` is untouched). Checks the spec
 * first (`where` names it in errors).
 */
export function fakeQuant(x: Tensor, spec: QuantSpec, where = "spec"): Tensor {
  const cols = x.shape[x.shape.length - 1];
  checkQuantSpec(spec, where, cols);
  const rows = x.data.length / cols;
  return { shape: [...x.shape], data: fakeQuantRef(x.data, rows, cols, spec) };
}

/** Checks a product spec, throwing {@linkcode OptionError} naming `where` and the field. */
export function checkProductSpec(spec: ProductSpec, where: string): void {
  if (typeof spec !== "object" || spec === null || spec.method !== "llm_int8") {
    throw new OptionError(
      `${where}.method`,
      `must be "llm_int8", got ${JSON.stringify(spec?.method)}`,
    );
  }
  const t = spec.threshold ?? 6;
  if (!(typeof t === "number" && t >= 0)) {
    throw new OptionError(`${where}.threshold`, `must be a number ≥ 0 (∞: none), got ${t}`);
  }
}

const int8Weights = new WeakMap<Float32Array, Float32Array>();

/**
 * The operands `X̃`, `W̃` of an LLM.int8() product spec for x [rows, in] and W [out, in] (new
 * tensors; see `kernels/llm_int8.ts`) and the outlier columns of this call: `X̃ W̃ᵀ` is the
 * product. The fully quantized W is computed once per weight array and kept.
 */
export function int8Operands(
  x: Tensor,
  W: Tensor,
  spec: ProductSpec,
): { x: Tensor; w: Tensor; outliers: number[] } {
  const [out, cols] = W.shape;
  const rows = x.data.length / cols;
  const mask = outlierMaskRef(x.data, rows, cols, spec.threshold ?? 6);
  let wq = int8Weights.get(W.data);
  if (!wq) int8Weights.set(W.data, wq = int8RowsRef(W.data, out, cols, new Uint8Array(cols), true));
  const outliers: number[] = [];
  for (let j = 0; j < cols; j++) if (mask[j]) outliers.push(j);
  let w: Float32Array = wq;
  if (outliers.length) {
    w = wq.slice();
    for (let o = 0; o < out; o++) for (const j of outliers) w[o * cols + j] = W.data[o * cols + j];
  }
  return {
    x: { shape: [...x.shape], data: int8RowsRef(x.data, rows, cols, mask, false) },
    w: { shape: [out, cols], data: w },
    outliers,
  };
}
