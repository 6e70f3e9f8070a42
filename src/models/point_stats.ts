/**
 * Calibration statistics collected through the quantization points (the same named points specs
 * attach to): per-channel max |x| of each point's tensor before its spec, over calibration
 * batches — what SmoothQuant-style smoothing factors and static activation scales start from —
 * and the static per-channel scales of a symmetric grid built from them.
 * @module
 */
import type { Tensor } from "../tensor.ts";
import type { Model } from "./model.ts";
import type { Backend } from "../backend/backend.ts";
import { OptionError } from "../errors.ts";
import { forward } from "./decoder.ts";
import type { QuantSpec } from "./points.ts";

/** Options of {@linkcode collectChannelAbsMax}. */
export interface ChannelStatsOptions {
  /** Points to collect (default every point: linearInput, linearOutput, qPreRope, kPreRope, q, k, v). */
  points?: string[];
  /** Sequences per batch entry (each entry holds `batch` equal-length sequences). Default 1. */
  batch?: number;
  /** Backend of the forward. */
  backend?: Backend;
}

/**
 * Per-channel max |x| at the quantization points over `batches` (token id rows), keyed
 * `${point}:${site}` (site: the linear's name, or the block index for Q/K/V points), through the
 * host forward's observer; the model's own specs apply as usual (each point sees its input
 * before its spec).
 */
export async function collectChannelAbsMax(
  model: Model,
  batches: number[][],
  opts: ChannelStatsOptions = {},
): Promise<Map<string, Float32Array>> {
  const want = opts.points ? new Set(opts.points) : undefined;
  const out = new Map<string, Float32Array>();
  const observe = (point: string, site: string, x: Tensor) => {
    if (want && !want.has(point)) return;
    const cols = x.shape[x.shape.length - 1];
    const key = `${point}:${site}`;
    let m = out.get(key);
    if (!m) out.set(key, m = new Float32Array(cols));
    const d = x.data;
    for (let i = 0; i < d.length; i += cols) {
      for (let j = 0; j < cols; j++) {
        const a = Math.abs(d[i + j]);
        if (a > m[j]) m[j] = a;
      }
    }
  };
  for (const ids of batches) {
    await forward(model, ids, { batch: opts.batch, backend: opts.backend, observe });
  }
  return out;
}

/**
 * A static per-channel spec from per-channel max |x|: `scales[j] = clip · absMax[j] / maxq`
 * (maxq = 2^(bits−1) − 1; a channel that never moved gets scale 1, as the dynamic grid's zero
 * guard). Throws {@linkcode OptionError} on bits outside 2..16 or clip outside (0, 1].
 */
export function staticChannelSpec(
  absMax: Float32Array,
  bits: number,
  opts: { clip?: number } = {},
): QuantSpec {
  if (!(Number.isInteger(bits) && bits >= 2 && bits <= 16)) {
    throw new OptionError("bits", `must be an integer in 2..16, got ${bits}`);
  }
  const clip = opts.clip ?? 1;
  if (!(clip > 0 && clip <= 1)) throw new OptionError("clip", `must be in (0, 1], got ${clip}`);
  const maxq = 2 ** (bits - 1) - 1;
  const scales = new Float32Array(absMax.length);
  for (let j = 0; j < scales.length; j++) {
    const s = Math.fround(Math.fround(absMax[j] * clip) / maxq);
    scales[j] = s > 0 && Number.isFinite(s) ? s : 1;
  }
  return { bits, granularity: "channel", scales };
}
