/**
 * Seeded safetensors mutation fuzzing with an independent strict oracle.
 *
 * The oracle re-derives, from the mutated bytes alone and without the library's code, whether the
 * file is valid (the format's rules: u64 LE header length ≤ 100 MB inside the file; UTF-8 JSON
 * object; every entry an own known dtype, a shape of non-negative integers, `data_offsets` [a, b]
 * with a ≤ b ≤ buffer length and b − a = numel · itemsize; no two spans overlapping;
 * `__metadata__` a string → string map) and, when valid, the value of every element (decoded with
 * DataView and a hand-written half/bfloat16 conversion). Each case is classified:
 * - `read-correct`: oracle valid, the reader returned every tensor equal to the oracle's values;
 * - `refused-typed`: oracle invalid, the reader threw a QuantlabError with a message ≤ 2,000 chars;
 * - failures: `untyped` (any other throw), `accepted-wrong` (values differ, or accepted an invalid
 *   file), `refused-valid` (threw on a valid file), `long-message`, `slow` (> 2 s for one case).
 * @module
 */
import { QuantlabError } from "../../src/errors.ts";
import { readHeader, readTensor } from "../../src/io/safetensors.ts";
import { Rng } from "../_rng.ts";

/** Outcome classes of one case. */
export type Outcome =
  | "read-correct"
  | "refused-typed"
  | "untyped"
  | "accepted-wrong"
  | "refused-valid"
  | "long-message"
  | "slow";

/** The classes that are failures. */
export const FAILURES: ReadonlySet<Outcome> = new Set([
  "untyped",
  "accepted-wrong",
  "refused-valid",
  "long-message",
  "slow",
]);

const SIZES: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** Oracle decode of element `i` of a tensor of `dtype` at byte `off` of `b`. */
function element(dv: DataView, off: number, dtype: string): number {
  switch (dtype) {
    case "F64":
      return Math.fround(dv.getFloat64(off, true));
    case "F32":
      return dv.getFloat32(off, true);
    case "F16":
      return halfToFloat(dv.getUint16(off, true));
    case "BF16": {
      const t = new DataView(new ArrayBuffer(4));
      t.setUint32(0, dv.getUint16(off, true) << 16 >>> 0);
      return t.getFloat32(0);
    }
    case "I64":
      return Math.fround(Number(dv.getBigInt64(off, true)));
    case "I32":
      return Math.fround(dv.getInt32(off, true));
    case "I16":
      return dv.getInt16(off, true);
    case "I8":
      return dv.getInt8(off);
    default:
      return dv.getUint8(off);
  }
}

/** Nesting depth of a parsed value, counted up to `cap + 1` (no deep recursion). */
function depth(v: unknown, cap = 9): number {
  if (v === null || typeof v !== "object") return 0;
  if (cap === 0) return 1;
  let d = 0;
  for (const x of Object.values(v)) d = Math.max(d, depth(x, cap - 1));
  return d + 1;
}

/** The oracle: tensors name → values when `bytes` is a valid file, else the reason it is not. */
export function oracle(bytes: Uint8Array): { ok: Map<string, Float32Array> } | { bad: string } {
  if (bytes.length < 8) return { bad: "short" };
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = dv.getBigUint64(0, true);
  if (n > 100_000_000n || 8n + n > BigInt(bytes.length)) return { bad: "header length" };
  let json: unknown;
  try {
    json = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + Number(n))),
    );
  } catch {
    return { bad: "json" };
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    return { bad: "not object" };
  }
  if (depth(json) > 8) return { bad: "depth" };
  const start = 8 + Number(n), len = bytes.length - start;
  const spans: [number, number][] = [];
  const out = new Map<string, Float32Array>();
  for (const [name, e] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (e === null || typeof e !== "object" || Array.isArray(e)) return { bad: "meta" };
      if (Object.values(e).some((x) => typeof x !== "string")) return { bad: "meta value" };
      continue;
    }
    const t = e as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    if (t === null || typeof t !== "object") return { bad: "entry" };
    if (typeof t.dtype !== "string" || !Object.hasOwn(SIZES, t.dtype)) return { bad: "dtype" };
    const shape = t.shape, off = t.data_offsets;
    if (!Array.isArray(shape) || shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      return { bad: "shape" };
    }
    if (
      !Array.isArray(off) || off.length !== 2 ||
      off.some((d) => !Number.isSafeInteger(d) || d < 0) || off[0] > off[1] || off[1] > len
    ) return { bad: "offsets" };
    let numel = 1;
    for (const d of shape) numel *= d;
    if (off[1] - off[0] !== numel * SIZES[t.dtype]) return { bad: "span" };
    spans.push([off[0], off[1]]);
    const vals = new Float32Array(numel);
    for (let i = 0; i < numel; i++) {
      vals[i] = element(dv, start + off[0] + i * SIZES[t.dtype], t.dtype);
    }
    out.set(name, vals);
  }
  spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i][0] < spans[i - 1][1]) return { bad: "overlap" };
  }
  return { ok: out };
}

/** A valid base file: a few tensors of several dtypes, with metadata. */
export function baseFile(rng: Rng): Uint8Array {
  const dtypes = ["F32", "F16", "BF16", "I8", "U8", "I32", "F64", "I16"];
  const header: Record<string, unknown> = { __metadata__: { format: "pt", note: "fuzz" } };
  const chunks: Uint8Array[] = [];
  let off = 0;
  const count = 1 + rng.int(4);
  for (let k = 0; k < count; k++) {
    const dtype = dtypes[rng.int(dtypes.length)];
    const shape = rng.int(3) === 0 ? [1 + rng.int(6)] : [1 + rng.int(4), 1 + rng.int(5)];
    const bytes = new Uint8Array(shape.reduce((a, b) => a * b, 1) * SIZES[dtype]);
    for (let i = 0; i < bytes.length; i++) bytes[i] = rng.int(256);
    if (dtype === "F32" || dtype === "F64" || dtype === "F16" || dtype === "BF16") {
      // Mostly finite values: random exponents would be NaN/Inf-heavy.
      const dv = new DataView(bytes.buffer);
      const step = SIZES[dtype];
      for (let i = 0; i < bytes.length; i += step) {
        const v = rng.normal();
        if (dtype === "F32") dv.setFloat32(i, v, true);
        else if (dtype === "F64") dv.setFloat64(i, v, true);
        else dv.setUint16(i, dtype === "BF16" ? bf16(v) : f16(v), true);
      }
    }
    header[`t${k}.weight`] = { dtype, shape, data_offsets: [off, off + bytes.length] };
    chunks.push(bytes);
    off += bytes.length;
  }
  return assemble(JSON.stringify(header), chunks);
}

function bf16(v: number): number {
  const t = new DataView(new ArrayBuffer(4));
  t.setFloat32(0, v);
  return t.getUint32(0) >>> 16;
}

function f16(v: number): number {
  // Plain truncating conversion (values here are O(1): normal halves).
  const s = v < 0 ? 0x8000 : 0;
  const a = Math.abs(v);
  if (a < 2 ** -14) return s;
  const e = Math.floor(Math.log2(a));
  const f = Math.floor((a / 2 ** e - 1) * 1024);
  return s | ((e + 15) << 10) | f;
}

function assemble(headerText: string, chunks: Uint8Array[]): Uint8Array {
  const h = new TextEncoder().encode(headerText);
  let data = 0;
  for (const c of chunks) data += c.length;
  const out = new Uint8Array(8 + h.length + data);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  let o = 8 + h.length;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

function splitFile(b: Uint8Array): { header: string; data: Uint8Array } {
  const n = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(0, true));
  return { header: new TextDecoder().decode(b.subarray(8, 8 + n)), data: b.subarray(8 + n) };
}

const ODD_VALUES: unknown[] = [
  null,
  -1,
  1.5,
  1e300,
  "F32",
  "toString",
  "__proto__",
  [],
  {},
  [1, 2, 3],
  true,
  "x".repeat(5000),
  [-1, 2],
  [2, 1],
  [0, 1e15],
  Array(2000).fill(1),
];

/** One seeded mutation of a valid file; `kind` names it for reports. */
export function mutate(base: Uint8Array, rng: Rng): { bytes: Uint8Array; kind: string } {
  const b = base.slice();
  const which = rng.int(12);
  switch (which) {
    case 0: { // flip bits anywhere
      const k = 1 + rng.int(4);
      for (let i = 0; i < k; i++) b[rng.int(b.length)] ^= 1 << rng.int(8);
      return { bytes: b, kind: "bit flips" };
    }
    case 1: { // a byte inside the header
      const n = Number(new DataView(b.buffer).getBigUint64(0, true));
      b[8 + rng.int(n)] = rng.int(256);
      return { bytes: b, kind: "header byte" };
    }
    case 2:
      return { bytes: b.subarray(0, rng.int(b.length)), kind: "truncation" };
    case 3: {
      const ext = new Uint8Array(b.length + 1 + rng.int(64));
      ext.set(b);
      return { bytes: ext, kind: "extension" };
    }
    case 4: { // header length field
      const dv = new DataView(b.buffer);
      const n = dv.getBigUint64(0, true);
      const choices = [0n, n - 1n, n + 1n, n + 8n, 2n ** 63n, 2n ** 64n - 1n, 100_000_001n];
      dv.setBigUint64(0, BigInt.asUintN(64, choices[rng.int(choices.length)]), true);
      return { bytes: b, kind: "header length" };
    }
    case 5:
    case 6:
    case 7: { // structured JSON edits
      const { header, data } = splitFile(b);
      const h = JSON.parse(header) as Record<string, Record<string, unknown>>;
      const names = Object.keys(h).filter((k) => k !== "__metadata__");
      const t = h[names[rng.int(names.length)]];
      const field = ["dtype", "shape", "data_offsets"][rng.int(3)];
      t[field] = ODD_VALUES[rng.int(ODD_VALUES.length)];
      return { bytes: assemble(JSON.stringify(h), [data]), kind: `field ${field}` };
    }
    case 8: { // shift offsets (overlaps, gaps, out of range)
      const { header, data } = splitFile(b);
      const h = JSON.parse(header) as Record<string, { data_offsets?: number[] }>;
      for (const [k, v] of Object.entries(h)) {
        if (k === "__metadata__" || !v.data_offsets) continue;
        const d = rng.int(9) - 4;
        if (rng.int(2)) v.data_offsets = [v.data_offsets[0] + d, v.data_offsets[1] + d];
      }
      return { bytes: assemble(JSON.stringify(h), [data]), kind: "offset shift" };
    }
    case 9: { // metadata
      const { header, data } = splitFile(b);
      const h = JSON.parse(header) as Record<string, unknown>;
      h.__metadata__ = ODD_VALUES[rng.int(ODD_VALUES.length)] ?? { a: 1 };
      if (rng.int(2)) h.__metadata__ = { a: ODD_VALUES[rng.int(ODD_VALUES.length)] };
      return { bytes: assemble(JSON.stringify(h), [data]), kind: "metadata" };
    }
    case 10: { // deep nesting
      const { data } = splitFile(b);
      const d = [3, 7, 8, 9, 50, 5000, 100_000][rng.int(7)];
      const text = `{"x":${"[".repeat(d)}${"]".repeat(d)}}`;
      return { bytes: assemble(text, [data]), kind: `nesting ${d}` };
    }
    default: { // garbage header text of the same length
      const { header, data } = splitFile(b);
      const g = Array.from({ length: header.length }, () => String.fromCharCode(32 + rng.int(95)));
      return { bytes: assemble(g.join(""), [data]), kind: "garbage header" };
    }
  }
}

function sameValues(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    if (!(Object.is(a[i], b[i]) || (Number.isNaN(a[i]) && Number.isNaN(b[i])))) return false;
  }
  return true;
}

/** Runs one case through the library's file reader and classifies it. */
export async function runCase(bytes: Uint8Array, file: string): Promise<Outcome> {
  await Deno.writeFile(file, bytes);
  const want = oracle(bytes);
  const t0 = performance.now();
  let outcome: Outcome;
  try {
    const h = await readHeader(file);
    if ("bad" in want) outcome = "accepted-wrong";
    else {
      outcome = "read-correct";
      if (h.tensors.size !== want.ok.size) outcome = "accepted-wrong";
      for (const [name, vals] of want.ok) {
        if (!h.tensors.has(name)) {
          outcome = "accepted-wrong";
          break;
        }
        const t = await readTensor(h, name, { nonFinite: "allow" });
        if (!sameValues(t.data, vals)) {
          outcome = "accepted-wrong";
          break;
        }
      }
    }
  } catch (e) {
    if (!(e instanceof QuantlabError)) outcome = "untyped";
    else if ("ok" in want) outcome = "refused-valid";
    else if (e.message.length > 2000) outcome = "long-message";
    else outcome = "refused-typed";
  }
  if (performance.now() - t0 > 2000) outcome = "slow";
  return outcome;
}

/** Runs `n` seeded cases; returns the count per outcome and up to 10 failure examples. */
export async function fuzzSafetensors(
  n: number,
  seed: number,
): Promise<{ counts: Record<string, number>; examples: string[] }> {
  const rng = new Rng(seed);
  const dir = await Deno.makeTempDir({ prefix: "quantlab_fuzz_" });
  const counts: Record<string, number> = {};
  const examples: string[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const base = baseFile(rng);
      // Every 8th case is an unmutated valid file (the oracle's "valid" side gets exercised too).
      const { bytes, kind } = i % 8 === 0 ? { bytes: base, kind: "valid" } : mutate(base, rng);
      const o = await runCase(bytes, `${dir}/case.safetensors`);
      counts[o] = (counts[o] ?? 0) + 1;
      if (FAILURES.has(o) && examples.length < 10) examples.push(`case ${i} (${kind}): ${o}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return { counts, examples };
}
