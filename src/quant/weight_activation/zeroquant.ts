/**
 * ZeroQuant (Yao et al. 2022) as the seed runs it through DeepSpeed's compression library
 * (`init_compression`): symmetric group-wise weights and token-wise dynamic activations.
 *
 * DeepSpeed's `SymQuantizer` (weights and activations): the tensor reshaped to
 * `(number_of_groups, −1)` (row-major chunks of the flattened tensor), per group
 * `scale = 2 · max|x| / 2^b`, `q = clamp(round(x / scale), −2^(b−1), 2^(b−1) − 1)`, `y = q · scale`
 * (round half to even). A measured fact of that grid: the group's largest positive value clips to
 * `(2^(b−1) − 1) · scale`, one step below its max. Activations: dynamic range, one group per token
 * (`numel / size(−1)` groups), so token-wise. The seed's W4/8 split is W4 for the MLP linears and
 * W8 elsewhere (`mlp`: the family's MLP shape, "swiglu" default); `number_of_groups` = output rows is per-channel (the seed set 4096 for
 * Llama-3.1-8B).
 * @module
 */
import type { Tensor } from "../../tensor.ts";
import type { ForwardHooks } from "../../models/decoder.ts";
import { OptionError } from "../../errors.ts";
import type { QuantMeta, WeightQuantizer } from "../core/types.ts";
import type { Recipe } from "../core/recipe.ts";
import { checkOptions, ZEROQUANT_WEIGHT_SPECS } from "../core/options.ts";
import { packCodes, roundHalfEven } from "../core/grid.ts";

/**
 * DeepSpeed `SymQuantizer` of `x` in `groups` row-major chunks at `bits` (a new array) with the
 * integer codes and per-group scales.
 */
export function dsSymQuant(
  x: Float32Array,
  groups: number,
  bits: number,
): { y: Float32Array; q: Int32Array; scale: Float32Array } {
  const n = x.length;
  if (!(Number.isInteger(groups) && groups >= 1 && n % groups === 0)) {
    throw new OptionError("number_of_groups", `${groups} does not divide ${n} values`);
  }
  const len = n / groups;
  const half = 2 ** (bits - 1);
  const y = new Float32Array(n), q = new Int32Array(n), scale = new Float32Array(groups);
  for (let g = 0; g < groups; g++) {
    let m = 0;
    for (let i = g * len; i < (g + 1) * len; i++) m = Math.max(m, Math.abs(x[i]));
    const s = Math.fround((2 * m) / 2 ** bits);
    scale[g] = s;
    for (let i = g * len; i < (g + 1) * len; i++) {
      const c = s > 0
        ? Math.min(Math.max(roundHalfEven(Math.fround(x[i] / s)), -half), half - 1)
        : 0;
      q[i] = c;
      y[i] = Math.fround(c * s) + 0; // no −0 (the meta dequantizes to +0)
    }
  }
  return { y, q, scale };
}

/** Options of {@linkcode zeroquantWeight}. */
export interface ZeroQuantWeightOptions {
  /** Weight bits (4 or 8 in the seed). */
  bits: number;
  /** DeepSpeed `number_of_groups` (default -1: one group per output row, per-channel). */
  numberOfGroups?: number;
}

/**
 * ZeroQuant's group-wise symmetric weight quantizer (DeepSpeed `SymQuantizer`). The groups must
 * be whole rows or equal slices of rows (so `QuantMeta` describes them): `numberOfGroups` a
 * multiple of the rows whose quotient divides the columns, or a divisor of the rows.
 */
export function zeroquantWeight(options: ZeroQuantWeightOptions): WeightQuantizer {
  checkOptions("zeroquantWeight", options, ZEROQUANT_WEIGHT_SPECS);
  const bits = options.bits;
  const G0 = options.numberOfGroups ?? -1;
  return {
    name: "zeroquant",
    needsHessian: false,
    options: { bits, numberOfGroups: G0 },
    quantizeWeight: (W: Tensor, _stats, ctx) => {
      const [rows, cols] = W.shape;
      const G = G0 === -1 ? rows : G0;
      let groupSize: number, rowsPerGroup = 1;
      if (G % rows === 0 && cols % (G / rows) === 0) {
        groupSize = G / rows === 1 ? -1 : cols / (G / rows);
      } else if (rows % G === 0) [groupSize, rowsPerGroup] = [-1, rows / G];
      else {
        throw new OptionError(
          "numberOfGroups",
          `${G} groups do not split ${
            ctx?.layer ?? "the weight"
          } [${rows}, ${cols}] into whole rows or row slices`,
        );
      }
      const r = dsSymQuant(W.data, G, bits);
      const ng = groupSize > 0 ? cols / groupSize : 1;
      const scales = new Float32Array(rows * ng), zeros = new Float32Array(rows * ng);
      for (let row = 0; row < rows; row++) {
        for (let g = 0; g < ng; g++) {
          scales[row * ng + g] =
            r.scale[rowsPerGroup > 1 ? Math.floor(row / rowsPerGroup) : row * ng + g];
          zeros[row * ng + g] = 2 ** (bits - 1);
        }
      }
      const codes = new Uint8Array(rows * cols);
      let loss = 0;
      for (let i = 0; i < codes.length; i++) {
        codes[i] = r.q[i] + 2 ** (bits - 1);
        loss += (W.data[i] - r.y[i]) ** 2;
      }
      const meta: QuantMeta = {
        method: "zeroquant",
        bits,
        groupSize,
        sym: true,
        shape: [rows, cols],
        codes,
        packed: packCodes(codes, bits),
        scales,
        zeros,
        numberOfGroups: G,
      };
      const perGroup = (rows * cols) / G;
      return Promise.resolve({
        Wq: { shape: [rows, cols], data: r.y },
        meta,
        bitsPerWeight: bits + 16 / perGroup,
        loss,
      });
    },
  };
}

/**
 * The seed's ZeroQuant weight recipe: `ffnBits` for the MLP linears (`*.mlp.*`, OPT `*.fc1` /
 * `*.fc2`), `bits` for the attention linears (W4/8 = `{ bits: 8, ffnBits: 4 }`).
 */
export function zeroquantRecipe(
  opts: { bits: number; ffnBits?: number; numberOfGroups?: number; mlp?: "swiglu" | "fc" },
): Recipe {
  const ffn = zeroquantWeight({
    bits: opts.ffnBits ?? opts.bits,
    numberOfGroups: opts.numberOfGroups,
  });
  const rest = zeroquantWeight({ bits: opts.bits, numberOfGroups: opts.numberOfGroups });
  return opts.mlp === "fc"
    ? { "*.fc1": ffn, "*.fc2": ffn, "*": rest }
    : { "*.mlp.*": ffn, "*": rest };
}

/**
 * Token-wise dynamic activation quantization of every block linear's input (DeepSpeed's dynamic
 * `SymQuantizer` with one group per token), as a `linearInput` forward hook (host forward: the
 * escape hatch). The same numbers as a spec on both backends:
 * `points.linearInput = { "*": { bits, grid: "deepspeed", granularity: "token" } }`.
 */
export function zeroquantActHooks(bits: number): ForwardHooks {
  if (!(Number.isInteger(bits) && bits >= 2 && bits <= 16)) {
    throw new OptionError("bits_a", `must be an integer in 2..16, got ${bits}`);
  }
  return {
    linearInput: (_name, x) => {
      if (bits >= 16) return x;
      const cols = x.shape[x.shape.length - 1];
      return { shape: [...x.shape], data: dsSymQuant(x.data, x.data.length / cols, bits).y };
    },
  };
}
