/**
 * Evaluation and calibration text, read from local files as the GPTQ reference code sees them
 * (WikiText-2, PTB, C4, TinyStories), and PIQA items. Nothing is downloaded: files come from the
 * data root (`QUANTLAB_DATA`, else `../shared/data` beside the repository) or a user-given path.
 *
 * Data root layout: `datasets/wikitext2/test.rows.json`, `datasets/ptb/ptb.test.txt`,
 * `datasets/c4/c4-validation.00000-of-00008.json.gz`, `datasets/tinystories/valid.txt`,
 * `datasets/piqa/valid.jsonl`, ...
 *
 * @example
 * ```ts
 * const { text } = await loadEvalText("wikitext2"); // 4,358 rows joined with "\n\n"
 * const { docs } = await loadCalibText("tinystories"); // 2,316 train stories
 * ```
 * @module
 */
import { fileURLToPath } from "node:url";
import { FormatError, OfflineError, OptionError } from "../errors.ts";
import { readFileChecked, readTextChecked, statPath } from "./fs.ts";

/** Dataset names understood by {@linkcode loadEvalText} and {@linkcode loadCalibText}. */
export type DatasetName = "wikitext2" | "ptb" | "c4" | "tinystories";

/** The names of {@linkcode DatasetName}, for option checks and help texts. */
export const DATASET_NAMES: readonly DatasetName[] = ["wikitext2", "ptb", "c4", "tinystories"];

/**
 * Text of one split. Exactly one of `text` (one string, tokenized whole, then cut into windows)
 * and `docs` (documents, tokenized one by one) is set. `source` says which file and protocol
 * were used, for reports.
 */
export interface EvalText {
  /** The whole split as one string (WikiText-2, PTB). */
  text?: string;
  /** Separate documents (TinyStories stories, C4 documents). */
  docs?: string[];
  /** Which file(s) and joining rule produced this, e.g. for a report's footnote. */
  source: string;
}

/** Options of {@linkcode loadEvalText} and {@linkcode loadCalibText}. */
export interface DatasetOptions {
  /** Data root holding `datasets/...`; default {@linkcode dataRoot}. */
  root?: string;
  /** A file to read instead of the default one (formats per dataset, see the loaders). */
  path?: string;
  /** Split: eval default "test" ("validation" where that is what the protocol reads). */
  split?: string;
}

/**
 * The data root: env `QUANTLAB_DATA` when set, else `../shared/data` beside the repository
 * (computed from this module's URL).
 */
export function dataRoot(): string {
  let env: string | undefined;
  try {
    env = Deno.env.get("QUANTLAB_DATA");
  } catch {
    env = undefined; // no --allow-env: use the default
  }
  if (env) return env.replace(/\/+$/, "");
  return fileURLToPath(new URL("../../../shared/data", import.meta.url));
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

function missing(path: string, what: string): OfflineError {
  return new OfflineError(
    `${what}: file not found: ${path}. quantlab does not download datasets; pass ` +
      `{ path: "<local copy>" } or set QUANTLAB_DATA (or { root }) to a folder holding ` +
      `datasets/... (default root: ../shared/data beside the repository).`,
  );
}

async function readText(path: string, what: string): Promise<string> {
  try {
    if (await statPath(path)) return await readTextChecked(path, what);
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw missing(path, what);
    throw e;
  }
}

async function readBytes(path: string, what: string): Promise<Uint8Array> {
  try {
    if (await statPath(path)) return await readFileChecked(path, what);
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw missing(path, what);
    throw e;
  }
}

/** First of `candidates` that exists, else an {@linkcode OfflineError} naming the first. */
async function firstExisting(candidates: string[], what: string): Promise<string> {
  for (const c of candidates) if (await exists(c)) return c;
  throw missing(candidates[0], what);
}

function checkName(name: string): DatasetName {
  if (!(DATASET_NAMES as readonly string[]).includes(name)) {
    throw new OptionError(
      "name",
      `unknown dataset ${JSON.stringify(name)}; known: ${DATASET_NAMES.join(", ")}`,
    );
  }
  return name as DatasetName;
}

/**
 * Rows of a WikiText file in its original layout (`wiki.test.raw`, `wiki.*.tokens`), as the
 * Hugging Face `wikitext` loader yields them: one row per line with its trailing "\n" kept,
 * and a whitespace-only line as the empty row "".
 */
export function wikitextRowsFromRaw(raw: string): string[] {
  const rows: string[] = [];
  let start = 0;
  while (start < raw.length) {
    const nl = raw.indexOf("\n", start);
    const end = nl < 0 ? raw.length : nl + 1;
    const line = raw.slice(start, end);
    rows.push(line.trim() === "" ? "" : line);
    start = end;
  }
  return rows;
}

/**
 * Splits a TinyStories text file into stories: split on "\n<|endoftext|>\n", strip each, drop
 * empty pieces (the file ends with the separator).
 */
export function splitTinyStories(text: string): string[] {
  return text.split("\n<|endoftext|>\n").map((s) => s.trim()).filter((s) => s !== "");
}

/** Reads the `text` column of a parquet file (e.g. Hugging Face's `wikitext` parquet export). */
export async function readParquetText(path: string, column = "text"): Promise<string[]> {
  const bytes = await readBytes(path, "parquet file");
  const { parquetReadObjects } = await import("hyparquet");
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  let rows: Record<string, unknown>[];
  try {
    rows = await parquetReadObjects({ file: buffer as ArrayBuffer, columns: [column] });
  } catch (e) {
    throw new FormatError(path, `cannot read as parquet: ${(e as Error).message}`, { cause: e });
  }
  return rows.map((r, i) => {
    const v = r[column];
    if (typeof v !== "string") {
      throw new FormatError(path, `row ${i}: column ${column} is ${typeof v}, expected a string`);
    }
    return v;
  });
}

/** Reads WikiText rows from a rows JSON (array of strings or of `{text}`), parquet or raw file. */
async function readWikitextRows(path: string): Promise<string[]> {
  if (/\.parquet$/i.test(path)) return await readParquetText(path);
  const text = await readText(path, "WikiText-2 file");
  if (/\.json$/i.test(path)) {
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch (e) {
      throw new FormatError(path, `not valid JSON (${(e as Error).message})`, { cause: e });
    }
    if (!Array.isArray(v)) throw new FormatError(path, "expected a JSON array of rows");
    return v.map((r, i) => {
      if (typeof r === "string") return r;
      if (r && typeof r === "object" && typeof (r as { text?: unknown }).text === "string") {
        return (r as { text: string }).text;
      }
      throw new FormatError(path, `row ${i} is neither a string nor an object with "text"`);
    });
  }
  return wikitextRowsFromRaw(text);
}

/**
 * Documents of a C4 JSON-lines shard (`c4-validation.00000-of-00008.json` or `.json.gz`, as in
 * `allenai/c4` `en/`): one JSON object per line with a `text` field. Gzip is detected by the
 * `.gz` suffix or the gzip magic bytes and inflated with `DecompressionStream`.
 */
export async function readJsonLinesText(path: string, field = "text"): Promise<string[]> {
  let bytes = await readBytes(path, "JSON-lines file");
  if (path.endsWith(".gz") || (bytes[0] === 0x1f && bytes[1] === 0x8b)) {
    try {
      const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
        .pipeThrough(new DecompressionStream("gzip"));
      bytes = new Uint8Array(await new Response(stream).arrayBuffer());
    } catch (e) {
      throw new FormatError(path, `bad gzip data (${(e as Error).message})`, { cause: e });
    }
  }
  const lines = new TextDecoder().decode(bytes).split("\n");
  const docs: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "") continue;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (e) {
      throw new FormatError(path, `line ${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    const v = (obj as Record<string, unknown> | null)?.[field];
    if (typeof v !== "string") {
      throw new FormatError(path, `line ${i + 1}: no string field "${field}"`);
    }
    docs.push(v);
  }
  return docs;
}

/** Lines of a PTB file as Hugging Face `ptb_text_only` yields `sentence`s: each line stripped. */
function ptbSentences(text: string): string[] {
  const lines = text.split("\n");
  if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  return lines.map((l) => l.trim());
}

const C4_VALID = "c4-validation.00000-of-00008.json";
const C4_TRAIN = "c4-train.00000-of-01024.json";

/**
 * Evaluation text of a dataset, per the GPTQ perplexity protocol:
 * - `wikitext2`: the 4,358 test rows joined with "\n\n" → `text`. Read from
 *   `datasets/wikitext2/test.rows.json`, or `opts.path`: a rows JSON, a Hugging Face parquet file
 *   with a `text` column, or a `wiki.test.raw`-style file (rows as lines). `split: "validation"`
 *   reads `wiki.valid.raw` (else `wiki.valid.tokens`).
 * - `ptb`: lines of `ptb.test.txt` (stripped, as HF `ptb_text_only` gives its `sentence`
 *   column) joined with " " → `text`. GPTQ's original `ptb` loader read the validation split
 *   (`ptb.valid.txt`, `split: "validation"`); its `ptb-new` reads the test split (default here).
 * - `c4`: documents of `c4-validation.00000-of-00008.json(.gz)` → `docs`. GPTQ's `c4` then seeds
 *   Python's `random` with 0 and, 256 times, draws random documents until one has at least
 *   `seqlen` tokens and cuts a random window of `seqlen` tokens from it; its `c4-new` instead
 *   tokenizes `" ".join(docs[:1100])` and keeps the first `256 * seqlen` tokens.
 * - `tinystories`: stories of `valid.txt` (split on "\n<|endoftext|>\n", stripped) → `docs`;
 *   the caller prepends BOS to each story's tokens and concatenates them.
 *
 * A missing file throws {@linkcode OfflineError} naming the path and how to point at a copy.
 */
export async function loadEvalText(name: string, opts: DatasetOptions = {}): Promise<EvalText> {
  const ds = checkName(name);
  const root = opts.root ?? dataRoot();
  const dir = `${root}/datasets/${ds}`;
  switch (ds) {
    case "wikitext2": {
      const validation = opts.split === "validation" || opts.split === "valid";
      if (opts.split !== undefined && opts.split !== "test" && !validation) {
        throw new OptionError("split", `wikitext2 eval split must be "test" or "validation"`);
      }
      const path = opts.path ??
        (validation
          ? await firstExisting([`${dir}/wiki.valid.raw`, `${dir}/wiki.valid.tokens`], "wikitext2")
          : `${dir}/test.rows.json`);
      const rows = await readWikitextRows(path);
      return {
        text: rows.join("\n\n"),
        source: `wikitext2 ${validation ? "validation" : "test"}: ${path} ` +
          `(${rows.length} rows joined with "\\n\\n")`,
      };
    }
    case "ptb": {
      const validation = opts.split === "validation" || opts.split === "valid";
      if (opts.split !== undefined && opts.split !== "test" && !validation) {
        throw new OptionError("split", `ptb eval split must be "test" or "validation"`);
      }
      const path = opts.path ?? `${dir}/ptb.${validation ? "valid" : "test"}.txt`;
      const lines = ptbSentences(await readText(path, "PTB file"));
      return {
        text: lines.join(" "),
        source: `ptb ${validation ? "validation" : "test"}: ${path} ` +
          `(${lines.length} lines, stripped, joined with " ")`,
      };
    }
    case "c4": {
      const path = opts.path ??
        await firstExisting([`${dir}/${C4_VALID}.gz`, `${dir}/${C4_VALID}`], "c4 validation");
      const docs = await readJsonLinesText(path);
      return { docs, source: `c4 validation: ${path} (${docs.length} documents)` };
    }
    case "tinystories": {
      const path = opts.path ?? `${dir}/valid.txt`;
      const docs = splitTinyStories(await readText(path, "TinyStories file"));
      return { docs, source: `tinystories validation: ${path} (${docs.length} stories)` };
    }
  }
}

/**
 * Calibration text: the TRAIN split where it is here, else a stated fallback (`source` names the
 * file used, so a report can say so):
 * - `tinystories`: `train_sample.txt` stories → `docs` (2,316 stories).
 * - `wikitext2`: `wiki.train.raw` (GPTQ joins train rows with " ") → `text`; the train split is
 *   absent from the shared data, so it falls back to `wiki.valid.tokens` (word-level, `<unk>`),
 *   rows joined with " ".
 * - `ptb`: `ptb.train.txt` lines joined with " " → `text`; falls back to `ptb.valid.txt`.
 * - `c4`: `c4-train.00000-of-01024.json(.gz)` documents → `docs` (GPTQ draws random documents
 *   longer than `seqlen` tokens and a random window from each); only via root or `opts.path`.
 */
export async function loadCalibText(name: string, opts: DatasetOptions = {}): Promise<EvalText> {
  const ds = checkName(name);
  const root = opts.root ?? dataRoot();
  const dir = `${root}/datasets/${ds}`;
  const pick = async (train: string[], fallback: string[]) => {
    if (opts.path) return { path: opts.path, used: "given file" };
    for (const c of train) if (await exists(c)) return { path: c, used: "train" };
    for (const c of fallback) {
      if (await exists(c)) return { path: c, used: "FALLBACK (train split absent)" };
    }
    throw missing(train[0], `${ds} train split`);
  };
  switch (ds) {
    case "tinystories": {
      const { path, used } = await pick([`${dir}/train_sample.txt`, `${dir}/train.txt`], []);
      const docs = splitTinyStories(await readText(path, "TinyStories file"));
      return { docs, source: `tinystories ${used}: ${path} (${docs.length} stories)` };
    }
    case "wikitext2": {
      const { path, used } = await pick(
        [`${dir}/wiki.train.raw`, `${dir}/train.rows.json`],
        [`${dir}/wiki.valid.raw`, `${dir}/wiki.valid.tokens`],
      );
      const rows = await readWikitextRows(path);
      return {
        text: rows.join(" "),
        source: `wikitext2 ${used}: ${path} (${rows.length} rows joined with " ")`,
      };
    }
    case "ptb": {
      const { path, used } = await pick([`${dir}/ptb.train.txt`], [`${dir}/ptb.valid.txt`]);
      const lines = ptbSentences(await readText(path, "PTB file"));
      return {
        text: lines.join(" "),
        source: `ptb ${used}: ${path} (${lines.length} lines, stripped, joined with " ")`,
      };
    }
    case "c4": {
      const { path, used } = await pick([`${dir}/${C4_TRAIN}.gz`, `${dir}/${C4_TRAIN}`], []);
      const docs = await readJsonLinesText(path);
      return { docs, source: `c4 ${used}: ${path} (${docs.length} documents)` };
    }
  }
}

/** One PIQA item: a goal, two solutions and the index of the right one. */
export interface PiqaItem {
  /** The goal. */
  goal: string;
  /** First solution. */
  sol1: string;
  /** Second solution. */
  sol2: string;
  /** 0 when `sol1` is right, 1 when `sol2` is. */
  label: 0 | 1;
}

/**
 * PIQA validation items from `valid.jsonl` (one `{goal, sol1, sol2}` per line) and the
 * line-aligned `valid-labels.lst` (0/1). `opts.path` is a folder holding both files (default
 * `<root>/datasets/piqa`). Throws {@linkcode FormatError} when the counts differ or a line is bad.
 */
export async function loadPiqa(opts: { root?: string; path?: string } = {}): Promise<PiqaItem[]> {
  const dir = opts.path ?? `${opts.root ?? dataRoot()}/datasets/piqa`;
  const itemsFile = `${dir}/valid.jsonl`;
  const labelsFile = `${dir}/valid-labels.lst`;
  const lines = (text: string) => {
    const out = text.split("\n");
    if (out[out.length - 1] === "") out.pop();
    return out;
  };
  const items = lines(await readText(itemsFile, "PIQA items"));
  const labels = lines(await readText(labelsFile, "PIQA labels"));
  if (items.length !== labels.length) {
    throw new FormatError(
      labelsFile,
      `${labels.length} labels for ${items.length} items in ${itemsFile}; they must be line-aligned`,
    );
  }
  return items.map((line, i) => {
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line);
    } catch (e) {
      throw new FormatError(itemsFile, `line ${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    for (const k of ["goal", "sol1", "sol2"]) {
      if (typeof o?.[k] !== "string") {
        throw new FormatError(itemsFile, `line ${i + 1}: field "${k}" missing or not a string`);
      }
    }
    const l = labels[i].trim();
    if (l !== "0" && l !== "1") {
      throw new FormatError(labelsFile, `line ${i + 1}: label ${JSON.stringify(l)} is not 0 or 1`);
    }
    return {
      goal: o.goal as string,
      sol1: o.sol1 as string,
      sol2: o.sol2 as string,
      label: l === "0" ? 0 : 1,
    };
  });
}
