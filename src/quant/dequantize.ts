/**
 * One decoder for every method's packed description: `dequantizeMeta(meta)` picks the method's
 * own inverse (QuIP undoes its rotations, FrameQuant synthesizes from its frames, QuantEase adds
 * its outliers; RTN and GPTQ are the plain grid decode). Each reproduces the quantizer's `Wq`
 * bit for bit.
 * @module
 */
import type { Tensor } from "../tensor.ts";
import type { QuantMeta } from "./types.ts";
import { dequantize } from "./grid.ts";
import { dequantizeQuantease } from "./quantease.ts";
import { dequantizeFramequant } from "./framequant.ts";
import { dequantizeQuip } from "./quip.ts";
import { dequantizeSpqr } from "./spqr.ts";
import { dequantizeOa } from "./oa.ts";
import { dequantizeBcq } from "./bcq.ts";

/**
 * The dequantized float32 weight `[rows, cols]` described by `meta`, for any method in this
 * library (async because QuIP's inverse rotations go through onnxruntime's DGEMM).
 */
export function dequantizeMeta(meta: QuantMeta): Promise<Tensor> {
  switch (meta.method) {
    case "quip":
      return dequantizeQuip(meta);
    case "framequant":
      return Promise.resolve(dequantizeFramequant(meta));
    case "quantease":
      return Promise.resolve(dequantizeQuantease(meta));
    case "spqr":
      return Promise.resolve(dequantizeSpqr(meta));
    case "oa":
      return Promise.resolve(dequantizeOa(meta));
    case "bcq":
      return Promise.resolve(dequantizeBcq(meta));
    default:
      return Promise.resolve(dequantize(meta));
  }
}
