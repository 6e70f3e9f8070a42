/**
 * Canonical identities for the results ledger: a run's key is the SHA-256 of a canonical JSON of
 * everything that changes its number — the model (checksums of its weight, config and tokenizer
 * files, plus the bytes of any in-memory quantized tensors), the method and its options, the data
 * (the evaluated text or calibration token ids themselves), the seed, the protocol, the compute
 * device, and the code (a digest of every source file of the library). Key order, progress
 * settings and callbacks never enter it.
 * @module
 */
import { createHash } from "node:crypto";
import type { Model } from "../models/model.ts";
import { readHeader } from "../io/safetensors.ts";

/** Things that do not change a number and never enter a hash (callbacks, display switches). */
export const NEUTRAL_KEYS: ReadonlySet<string> = new Set([
  "onProgress",
  "progress",
  "ledger",
  "force",
  "label",
]);

/** Thrown inside {@linkcode canonicalJson} when a value cannot be written canonically. */
export class NotCanonicalError extends Error {}

/**
 * JSON with object keys sorted at every level, `undefined` members dropped, non-finite numbers
 * written as strings ("NaN", "Infinity"), typed arrays as plain arrays, and the
 * {@linkcode NEUTRAL_KEYS} left out. A function anywhere in the value throws
 * {@linkcode NotCanonicalError} (its behaviour cannot be hashed).
 */
export function canonicalJson(value: unknown): string {
  const walk = (v: unknown, path: string): unknown => {
    if (v === null || typeof v === "string" || typeof v === "boolean") return v;
    if (typeof v === "number") return Number.isFinite(v) ? v : String(v);
    if (typeof v === "bigint") return `${v}n`;
    if (typeof v === "function") {
      throw new NotCanonicalError(`${path || "value"} is a function`);
    }
    if (ArrayBuffer.isView(v)) return Array.from(v as unknown as ArrayLike<number>);
    if (Array.isArray(v)) return v.map((x, i) => walk(x, `${path}[${i}]`));
    if (v instanceof Map) {
      return walk(Object.fromEntries([...v].map(([k, x]) => [String(k), x])), path);
    }
    if (typeof v === "object") {
      const out: Record<string, unknown> = {};
      for (const k of Object.keys(v as object).sort()) {
        const x = (v as Record<string, unknown>)[k];
        if (x === undefined || NEUTRAL_KEYS.has(k)) continue;
        out[k] = walk(x, path ? `${path}.${k}` : k);
      }
      return out;
    }
    return undefined;
  };
  return JSON.stringify(walk(value, ""));
}

/** SHA-256 (hex) of a string (UTF-8) or bytes. */
export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

const fileMemo = new Map<string, string>();

/**
 * SHA-256 (hex) of a file's bytes, read in 8 MiB pieces. Memoised in this process by path, size
 * and modification time, so a large checkpoint is read once per process.
 */
export async function fileSha256(path: string): Promise<string> {
  const st = await Deno.stat(path);
  const memoKey = `${path}\0${st.size}\0${st.mtime?.getTime() ?? 0}`;
  const hit = fileMemo.get(memoKey);
  if (hit) return hit;
  const h = createHash("sha256");
  const f = await Deno.open(path, { read: true });
  try {
    const buf = new Uint8Array(8 << 20);
    for (;;) {
      const n = await f.read(buf);
      if (n === null) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    f.close();
  }
  const d = h.digest("hex");
  fileMemo.set(memoKey, d);
  return d;
}

/** The files of a checkpoint folder that decide its numbers: weights, config, tokenizer. */
const MODEL_FILE =
  /(\.safetensors|\.safetensors\.index\.json|\.bin|\.gguf|config\.json|tokenizer\.json|tokenizer\.model|tokenizer_config\.json|vocab\.json|merges\.txt|generation_config\.json)$/;

/** Checksums of a model source on disk: a folder's model files, or a single file. */
export async function sourceChecksums(source: string): Promise<Record<string, string> | null> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(source);
  } catch {
    return null;
  }
  const out: Record<string, string> = {};
  if (st.isFile) {
    out[source.split("/").pop()!] = await fileSha256(source);
    return out;
  }
  const names: string[] = [];
  for await (const e of Deno.readDir(source)) {
    if (e.isFile && MODEL_FILE.test(e.name)) names.push(e.name);
  }
  for (const n of names.sort()) out[n] = await fileSha256(`${source}/${n}`);
  return out;
}

/** A model's identity for the ledger. */
export interface ModelIdentity {
  /** SHA-256 over the parts below. */
  hash: string;
  /** False when something that changes the numbers cannot be hashed (a hub name not on disk, JS hooks). */
  cacheable: boolean;
  /** What went into the hash (file checksums, override digests), for `compare`. */
  parts: Record<string, unknown>;
}

const overrideMemo = new WeakMap<object, string>();

function tensorDigest(t: { shape: number[]; data: Float32Array }): string {
  const hit = overrideMemo.get(t.data);
  if (hit) return hit;
  const h = createHash("sha256");
  h.update(t.shape.join("x"));
  h.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  const d = h.digest("hex");
  overrideMemo.set(t.data, d);
  return d;
}

/**
 * The identity of a model: checksums of its source files (weights, config, tokenizer), its
 * normalised config, a digest of every in-memory override tensor (the quantized weights), the
 * tokenizer path, its quantization-point specs, and its hooks when they are plain data (JS
 * callbacks make it non-cacheable).
 */
export async function modelIdentity(model: Model): Promise<ModelIdentity> {
  const parts: Record<string, unknown> = {};
  let cacheable = true;
  const files = await sourceChecksums(model.source);
  if (files) parts.files = files;
  else {
    parts.source = model.source;
    cacheable = false;
  }
  if (model.tokenizerPath && model.tokenizerPath !== model.source) {
    const tf = await sourceChecksums(model.tokenizerPath);
    if (tf) parts.tokenizer = tf;
    else cacheable = false;
  }
  parts.config = JSON.parse(canonicalJson(model.config));
  const ov = model.weights.overrides();
  if (ov.size) {
    const o: Record<string, string> = {};
    for (const n of [...ov.keys()].sort()) o[n] = tensorDigest(ov.get(n)!);
    parts.overrides = sha256Hex(canonicalJson(o));
  }
  // A streamed quantization result (QuantizeOptions.stream) holds its quantized layers in the
  // workdir's block files, not in overrides: their content hashes identify it.
  const streamed = model.report?.streamedFrom;
  if (typeof streamed === "string") {
    const blocks: string[] = [];
    const names = [...Deno.readDirSync(streamed)].map((e) => e.name)
      .filter((n) => /^block_\d+\.safetensors$/.test(n)).sort();
    for (const n of names) {
      blocks.push(`${n}:${(await readHeader(`${streamed}/${n}`)).metadata.content ?? ""}`);
    }
    parts.streamed = sha256Hex(canonicalJson(blocks));
  }
  if (model.hooks) {
    try {
      parts.hooks = JSON.parse(canonicalJson(model.hooks));
    } catch (e) {
      if (!(e instanceof NotCanonicalError)) throw e;
      parts.hooks = "<callbacks>";
      cacheable = false;
    }
  }
  // Quantization-point specs change the function (issue 14: a W8A4 model's perplexity was
  // served from the ledger entry of the same weights without specs).
  if (model.points) parts.points = sha256Hex(canonicalJson(model.points));
  return { hash: sha256Hex(canonicalJson(parts)), cacheable, parts };
}

let codeMemo: Promise<{ digest: string; git: string | null }> | undefined;

async function walkTs(dir: string, out: string[]): Promise<void> {
  let entries: Deno.DirEntry[];
  try {
    entries = [];
    for await (const e of Deno.readDir(dir)) entries.push(e);
  } catch {
    return;
  }
  for (const e of entries.sort((a, b) => a.name < b.name ? -1 : 1)) {
    if (e.isDirectory) await walkTs(`${dir}/${e.name}`, out);
    else if (e.isFile && e.name.endsWith(".ts")) out.push(`${dir}/${e.name}`);
  }
}

/**
 * The code version: a SHA-256 over every `.ts` file of `src/` and `kernels/` (so uncommitted
 * edits change it) and, when git answers, the revision (informational).
 */
export function codeVersion(): Promise<{ digest: string; git: string | null }> {
  codeMemo ??= (async () => {
    const root = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
    const files: string[] = [];
    await walkTs(`${root}/src`, files);
    await walkTs(`${root}/kernels`, files);
    const h = createHash("sha256");
    for (const f of files) {
      h.update(f.slice(root.length));
      h.update(await Deno.readFile(f));
    }
    let git: string | null = null;
    try {
      const out = await new Deno.Command("git", {
        args: ["rev-parse", "HEAD"],
        cwd: root,
        stdout: "piped",
        stderr: "null",
      }).output();
      if (out.success) git = new TextDecoder().decode(out.stdout).trim();
    } catch { /* no git or no permission */ }
    return { digest: h.digest("hex"), git };
  })();
  return codeMemo;
}
