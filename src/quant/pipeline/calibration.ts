/**
 * Calibration sets: `nsamples` random windows of `seqlen` tokens from a dataset's train split,
 * drawn with a seeded PRNG like GPTQ's loaders (`i = randint(0, len − seqlen − 1)`,
 * `inp = ids[i : i + seqlen]`).
 * @module
 */
import { OptionError } from "../../errors.ts";
import { loadCalibText } from "../../io/datasets.ts";
import { getTokenizer } from "../../models/load.ts";
import type { Model } from "../../models/model.ts";
import { mulberry32 } from "../../rng.ts";
import type { Tokenizer } from "../../io/tokenizer.ts";

/** A calibration batch: `nsamples` token windows of `seqlen`. */
export interface CalibrationSet {
  /** Token windows. */
  ids: number[][];
  /** Dataset name. */
  dataset: string;
  /** The text actually used (file and split; says when a fallback replaced a missing train split). */
  source: string;
  /** Window length. */
  seqlen: number;
  /** PRNG seed. */
  seed: number;
}

/** Options of {@linkcode calibrationSet}. */
export interface CalibrationOptions {
  /** Windows (GPTQ `--nsamples`, default 128). */
  nsamples?: number;
  /** Tokens per window (default 2048 capped at the model's context). */
  seqlen?: number;
  /** PRNG seed (GPTQ `--seed`, default 0). */
  seed?: number;
  /** Data root. */
  root?: string;
  /** A user file with the calibration text. */
  path?: string;
}

/**
 * The token stream of a dataset's train split (TinyStories: each story stripped, BOS prepended,
 * concatenated; else the joined text tokenized once), computed once per tokenizer object,
 * dataset, `root` and `path` in a process (tokenizing TinyStories' train sample takes ~1.5 s):
 * callers must not modify the ids.
 */
function calibTokens(
  tok: Tokenizer,
  dataset: string,
  opts: { root?: string; path?: string },
): Promise<{ ids: number[]; source: string }> {
  let byKey = calibCache.get(tok);
  if (!byKey) calibCache.set(tok, byKey = new Map());
  const key = JSON.stringify([dataset, opts.root ?? null, opts.path ?? null]);
  let p = byKey.get(key);
  if (!p) {
    const made = (async () => {
      const t = await loadCalibText(dataset, opts);
      let ids: number[] = [];
      if (t.docs) {
        for (const d of t.docs) {
          const e = tok.encode(d.trim(), { addBos: true });
          for (const x of e) ids.push(x);
        }
      } else ids = tok.encode(t.text ?? "");
      return { ids, source: t.source };
    })();
    p = made;
    byKey.set(key, made);
    made.catch(() => {
      if (byKey.get(key) === made) byKey.delete(key);
    });
  }
  return p;
}

const calibCache = new WeakMap<
  Tokenizer,
  Map<string, Promise<{ ids: number[]; source: string }>>
>();

/**
 * Draws a calibration set from the train split of `dataset` ("tinystories", "wikitext2", "ptb",
 * "c4"). TinyStories stories are stripped and each is prefixed with BOS, then concatenated; other
 * datasets are tokenized as one joined text. Windows start at uniform random offsets.
 */
export async function calibrationSet(
  model: Model,
  dataset: string,
  opts: CalibrationOptions = {},
): Promise<CalibrationSet> {
  const nsamples = opts.nsamples ?? 128;
  const seqlen = opts.seqlen ?? Math.min(2048, model.config.maxPositions);
  const seed = opts.seed ?? 0;
  if (!(Number.isInteger(nsamples) && nsamples >= 1)) {
    throw new OptionError("nsamples", `must be an integer ≥ 1, got ${nsamples}`);
  }
  if (!(Number.isInteger(seqlen) && seqlen >= 1 && seqlen <= model.config.maxPositions)) {
    throw new OptionError(
      "seqlen",
      `${seqlen} is outside 1..${model.config.maxPositions} (the model's context)`,
    );
  }
  const tok = await getTokenizer(model);
  const t = await calibTokens(tok, dataset, { root: opts.root, path: opts.path });
  const ids = t.ids;
  if (ids.length <= seqlen + 1) {
    throw new OptionError(
      "seqlen",
      `${t.source} has ${ids.length} tokens, too few for windows of ${seqlen}`,
    );
  }
  const rand = mulberry32(seed);
  const out: number[][] = [];
  for (let s = 0; s < nsamples; s++) {
    const i = Math.floor(rand() * (ids.length - seqlen - 1));
    out.push(ids.slice(i, i + seqlen));
  }
  return { ids: out, dataset, source: t.source, seqlen, seed };
}
