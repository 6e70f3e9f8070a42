/**
 * Strict option checking of the KV-cache quantizers (the same rules as `src/quant/core/options.ts`,
 * which this folder may not import: unknown keys refused with the known ones, types and bounds
 * checked, errors naming the option and the value with its type).
 * @module
 */
import { OptionError } from "../../errors.ts";

/** What one KV option may hold. */
export type KvOptionSpec =
  | { type: "boolean" }
  | { type: "int"; min: number; max: number }
  | { type: "number"; min: number; max: number }
  | { type: "enum"; values: readonly string[] }
  | { type: "object" };

function describe(v: unknown): string {
  if (v === null) return "null";
  if (typeof v === "string") return `string ${JSON.stringify(v)}`;
  if (typeof v === "object") return Array.isArray(v) ? "an array" : "an object";
  return `${typeof v} ${String(v)}`;
}

/** Throws OptionError for an unknown key or a value of the wrong type or out of bounds. */
export function checkKvOptions(
  method: string,
  opts: unknown,
  spec: Record<string, KvOptionSpec>,
): void {
  if (opts === null || typeof opts !== "object" || Array.isArray(opts)) {
    throw new OptionError("options", `${method} needs an options object, got ${describe(opts)}`);
  }
  const known = Object.keys(spec);
  for (const k of Object.keys(opts)) {
    if (!Object.hasOwn(spec, k)) {
      const near = known.find((n) => n.toLowerCase() === k.toLowerCase() || n.startsWith(k));
      throw new OptionError(
        k,
        `unknown ${method} option${near ? ` (did you mean "${near}"?)` : ""}; known: ${
          known.join(", ")
        }`,
      );
    }
  }
  for (const k of known) {
    const v = (opts as Record<string, unknown>)[k];
    if (v === undefined) continue;
    const s = spec[k];
    if (s.type === "boolean" && typeof v !== "boolean") {
      throw new OptionError(k, `must be a boolean, got ${describe(v)}`);
    }
    if (
      s.type === "int" &&
      !(typeof v === "number" && Number.isInteger(v) && v >= s.min && v <= s.max)
    ) {
      throw new OptionError(k, `must be an integer in ${s.min}..${s.max}, got ${describe(v)}`);
    }
    if (
      s.type === "number" &&
      !(typeof v === "number" && Number.isFinite(v) && v >= s.min && v <= s.max)
    ) {
      throw new OptionError(k, `must be a number in [${s.min}, ${s.max}], got ${describe(v)}`);
    }
    if (s.type === "enum" && !(typeof v === "string" && s.values.includes(v))) {
      throw new OptionError(k, `must be one of ${s.values.join(", ")}, got ${describe(v)}`);
    }
    if (s.type === "object" && (v === null || typeof v !== "object" || Array.isArray(v))) {
      throw new OptionError(k, `must be an object, got ${describe(v)}`);
    }
  }
}
