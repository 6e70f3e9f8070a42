/**
 * Recipes: layer-name patterns → quantizers, so mixed precision is one object, e.g.
 * `{ "*.mlp.down_proj": gptq({ bits: 4 }), "*": gptq({ bits: 3 }) }`. First match wins; `*`
 * matches any run of characters (dots included). `lm_head` and the embeddings are never matched
 * by a pattern that does not name them literally.
 * @module
 */
import { OptionError } from "../../errors.ts";
import type { WeightQuantizer } from "./types.ts";

/** A mapping of glob patterns (over layer names without ".weight") to quantizers. */
export type Recipe = Record<string, WeightQuantizer>;

function isQuantizer(x: unknown): x is WeightQuantizer {
  return typeof x === "object" && x !== null &&
    typeof (x as WeightQuantizer).quantizeWeight === "function";
}

/** A glob pattern as a RegExp (`*` → `.*`, everything else literal). */
export function globToRegExp(pattern: string): RegExp {
  const esc = pattern.split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`^${esc.join(".*")}$`);
}

/** Normalises a single quantizer to the recipe `{ "*": q }`. */
export function toRecipe(r: Recipe | WeightQuantizer): Recipe {
  if (isQuantizer(r)) return { "*": r };
  for (const [k, v] of Object.entries(r)) {
    if (!isQuantizer(v)) throw new OptionError(`recipe["${k}"]`, "is not a quantizer");
  }
  return r;
}

const SPECIAL = /(^|\.)(lm_head|embed_tokens|embed_positions)$/;

/**
 * Assigns a quantizer to each layer (first matching pattern wins). Layers matched by no pattern
 * stay in full precision. Throws OptionError naming any pattern that matches no layer.
 */
export function resolveRecipe(
  recipe: Recipe,
  layers: string[],
): Map<string, { quantizer: WeightQuantizer; pattern: string }> {
  const entries = Object.entries(recipe).map(([p, q]) => ({ p, q, re: globToRegExp(p), hits: 0 }));
  const out = new Map<string, { quantizer: WeightQuantizer; pattern: string }>();
  for (const name of layers) {
    for (const e of entries) {
      if (!e.re.test(name)) continue;
      const special = SPECIAL.exec(name);
      if (special && !e.p.includes(special[2])) continue;
      out.set(name, { quantizer: e.q, pattern: e.p });
      e.hits++;
      break;
    }
  }
  for (const e of entries) {
    if (!entries.some((x) => x.p === e.p && x.hits > 0) && !layers.some((l) => e.re.test(l))) {
      throw new OptionError(
        `recipe["${e.p}"]`,
        `pattern matches no layer (layers look like "${layers[0]}")`,
      );
    }
  }
  return out;
}
