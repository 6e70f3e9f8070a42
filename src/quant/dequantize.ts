/**
 * One decoder for every method's packed description. Each method module exports its
 * {@linkcode QuantFormat} (decode, bits accounting, optional pack/unpack); {@linkcode FORMATS}
 * lists them, one line per method, and `dequantizeMeta(meta)` dispatches on `meta.method` through
 * that list (QuIP undoes its rotations, FrameQuant synthesizes from its frames, QuantEase adds its
 * outliers; RTN and GPTQ are the plain grid decode). Each reproduces the quantizer's `Wq` bit for
 * bit. A new method is one file plus one line here.
 * @module
 */
import type { Tensor } from "../tensor.ts";
import { OptionError } from "../errors.ts";
import type { QuantFormat, QuantMeta } from "./core/types.ts";
import { gridFormat } from "./core/grid.ts";
import { rtnFormat } from "./weight_only/rtn.ts";
import { gptqFormat } from "./weight_only/gptq.ts";
import { quanteaseFormat } from "./weight_only/quantease.ts";
import { framequantFormat } from "./weight_only/framequant.ts";
import { quipFormat } from "./weight_only/quip.ts";
import { spqrFormat } from "./weight_only/spqr.ts";
import { oaFormat } from "./weight_only/oa.ts";
import { bcqFormat } from "./weight_only/bcq.ts";
import { absmaxFormat } from "./weight_only/absmax.ts";

/** Every storage format this library decodes, by `meta.method`. */
export const FORMATS: Readonly<Record<string, QuantFormat>> = Object.fromEntries(
  [
    rtnFormat,
    gptqFormat,
    quanteaseFormat,
    framequantFormat,
    quipFormat,
    spqrFormat,
    oaFormat,
    bcqFormat,
    gridFormat("gguf"),
    absmaxFormat,
  ].map((f) => [f.method, f]),
);

/**
 * The format registered for `meta.method`; an {@linkcode OptionError} naming `meta.method` and
 * listing the known formats when there is none.
 */
export function formatOf(meta: QuantMeta): QuantFormat {
  const f = Object.hasOwn(FORMATS, meta.method) ? FORMATS[meta.method] : undefined;
  if (!f) {
    throw new OptionError(
      "meta.method",
      `no format registered for "${meta.method}" (known: ${Object.keys(FORMATS).join(", ")})`,
    );
  }
  return f;
}

/**
 * The dequantized float32 weight `[rows, cols]` described by `meta`, for any registered method
 * (async because QuIP's inverse rotations go through onnxruntime's DGEMM).
 */
export async function dequantizeMeta(meta: QuantMeta): Promise<Tensor> {
  return await formatOf(meta).dequantize(meta);
}

/** Storage bits per weight of `meta`, by its method's format. */
export function metaBitsPerWeight(meta: QuantMeta): number {
  return formatOf(meta).bitsPerWeight(meta);
}
