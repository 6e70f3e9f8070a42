/**
 * Needle-in-a-haystack retrieval (the seed's check, qllm-infer `utils/needle_in_a_haystack`, after
 * KIVI's passkey example): a needle sentence carrying a value is inserted at a depth of a haystack
 * text cut to a context length, followed by a question; the model should continue with the value.
 *
 * - Haystack: `datasets/niah-haystack/pg1342.txt` under the data root (*Pride and Prejudice*, the
 *   book between the Project Gutenberg START/END lines, CRLF → LF) or any user text.
 * - Needle `"The pass key is V. Remember it. V is the pass key."`, question
 *   `"What is the pass key? The pass key is"` and the answer `" V"`; values: the seed's five
 *   (`47x291`, `8a3605`, `1294k8`, `590p37`, `68v423`).
 * - Layout, in tokens: BOS, haystack[0, i), needle, haystack[i, h), question, with h chosen so the
 *   prompt plus the answer fills the context length exactly; i = ⌊depth · h⌋ moved back to just
 *   after the previous token that ends in "." (gkamradt's protocol; none before: i unchanged).
 * - Scores: greedy exact match (the seed's table: every answer token is the greedy choice) and the
 *   mean log-probability of the answer tokens under teacher forcing, which stays informative on
 *   small models that never retrieve. Both come from one pass: the prompt is prefilled into the
 *   (quantized) cache, then the answer tokens are fed one by one — greedy decoding follows the
 *   same tokens up to its first miss, so "all teacher-forced argmaxes match" is greedy exact match.
 * @module
 */
import { OptionError } from "../errors.ts";
import { dataRoot } from "../io/datasets.ts";
import { createKVCache, forward, type KVCache } from "../models/decoder.ts";
import { getTokenizer } from "../models/load.ts";
import type { Model } from "../models/model.ts";
import { createCache, type KVSpec } from "../quant/kv/cache.ts";

/** The seed's five needle values. */
export const SEED_NEEDLES: readonly string[] = ["47x291", "8a3605", "1294k8", "590p37", "68v423"];

/** Options of {@linkcode needleEval}. */
export interface NeedleOptions {
  /** Context lengths in tokens (default [128, 256, 512] capped at the model's context). */
  contextLengths?: number[];
  /** Depths in [0, 1] (default 0, 0.25, 0.5, 0.75, 1). */
  depths?: number[];
  /** Needle values (default {@linkcode SEED_NEEDLES}). */
  needles?: readonly string[];
  /** Haystack text (default the niah-haystack book under `root`). */
  haystack?: string;
  /** Data root (default `$QUANTLAB_DATA` or `../shared/data`). */
  root?: string;
  /** KV cache (default the f32 cache). */
  kv?: KVSpec;
  /** Progress: (cells done, total). */
  onProgress?: (done: number, total: number) => void;
}

/** One (context length, depth, needle) trial. */
export interface NeedleCell {
  /** Context length. */
  contextLength: number;
  /** Requested depth. */
  depth: number;
  /** Token index where the needle starts (after BOS). */
  insertAt: number;
  /** Needle value. */
  needle: string;
  /** Greedy exact match. */
  exact: boolean;
  /** Mean log-probability (nats) of the answer tokens under teacher forcing. */
  logProb: number;
  /** The greedy (teacher-forced argmax) tokens at the answer positions, as text. */
  answer: string;
  /** Prompt token ids (BOS, haystack with the needle, question). */
  promptIds: number[];
  /** Answer token ids. */
  answerIds: number[];
}

/** Result of {@linkcode needleEval}: the trials and the grids averaged over needles. */
export interface NeedleResult {
  /** Every trial. */
  cells: NeedleCell[];
  /** Context lengths (grid rows). */
  contextLengths: number[];
  /** Depths (grid columns). */
  depths: number[];
  /** Exact-match rate [length][depth]. */
  accuracy: number[][];
  /** Mean answer log-probability [length][depth]. */
  logProb: number[][];
  /** What ran ("FP" or the KV spec as JSON, without a KVQuant quantizer). */
  label: string;
}

/** The niah-haystack book text (between the PG START/END lines, LF line ends, no BOM). */
export async function loadHaystack(root = dataRoot()): Promise<string> {
  const path = `${root}/datasets/niah-haystack/pg1342.txt`;
  const raw = (await Deno.readTextFile(path)).replace(/^\uFEFF/, "").replace(/\r\n/g, "\n");
  const a = raw.indexOf("*** START OF");
  const b = raw.indexOf("*** END OF");
  if (a < 0 || b < 0) throw new OptionError("haystack", `${path} lacks the PG START/END lines`);
  return raw.slice(raw.indexOf("\n", a) + 1, b).trim();
}

/** Runs the grid (see the module doc). */
export async function needleEval(model: Model, opts: NeedleOptions = {}): Promise<NeedleResult> {
  const cfg = model.config;
  const ctx = cfg.maxPositions;
  const lengths = opts.contextLengths ?? [128, 256, 512].filter((c) => c <= ctx);
  const depths = opts.depths ?? [0, 0.25, 0.5, 0.75, 1];
  const needles = opts.needles ?? SEED_NEEDLES;
  for (const c of lengths) {
    if (!(Number.isInteger(c) && c >= 1 && c <= ctx)) {
      throw new OptionError(
        "contextLengths",
        `${c} is outside 1..${ctx} (the model's context limit)`,
      );
    }
  }
  for (const d of depths) {
    if (!(d >= 0 && d <= 1)) throw new OptionError("depths", `${d} is outside [0, 1]`);
  }
  if (needles.length === 0) throw new OptionError("needles", "needs at least one value");
  const tok = await getTokenizer(model);
  const text = opts.haystack ?? await loadHaystack(opts.root);
  // Enough text for the longest context (this tokenizer averages > 2 characters per token).
  const hay = tok.encode(text.slice(0, 8 * Math.max(...lengths) + 1000), { addBos: false });
  const bos = tok.bosId === null ? [] : [tok.bosId];
  const question = "\nWhat is the pass key? The pass key is";
  const qIds = tok.encode(question, { addBos: false });
  const V = cfg.vocabSize;
  const cells: NeedleCell[] = [];
  const total = lengths.length * depths.length * needles.length;
  for (const C of lengths) {
    for (const depth of depths) {
      for (const value of needles) {
        const needle = tok.encode(
          ` The pass key is ${value}. Remember it. ${value} is the pass key. `,
          { addBos: false },
        );
        const qa = tok.encode(`${question} ${value}`, { addBos: false });
        const ans = qa.slice(0, qIds.length).every((t, i) => t === qIds[i])
          ? qa.slice(qIds.length)
          : tok.encode(` ${value}`, { addBos: false });
        const h = C - bos.length - needle.length - qIds.length - ans.length;
        if (h < 0) {
          throw new OptionError(
            "contextLengths",
            `${C} tokens cannot hold the needle, question and answer (${C - h} tokens)`,
          );
        }
        if (hay.length < h) {
          throw new OptionError("haystack", `has ${hay.length} tokens, fewer than ${h} needed`);
        }
        let at = Math.floor(depth * h);
        for (let i = at; i > 0; i--) {
          if (tok.decode([hay[i - 1]]).endsWith(".")) {
            at = i;
            break;
          }
        }
        const prompt = [...bos, ...hay.slice(0, at), ...needle, ...hay.slice(at, h), ...qIds];
        const cache: KVCache = opts.kv ? createCache(cfg, opts.kv, C) : createKVCache(cfg, C);
        let last = (await forward(model, prompt, { cache })).data.subarray(-V);
        let lp = 0;
        let exact = true;
        const got: number[] = [];
        for (let i = 0; i < ans.length; i++) {
          let mx = -Infinity;
          let arg = 0;
          for (let j = 0; j < V; j++) {
            if (last[j] > mx) {
              mx = last[j];
              arg = j;
            }
          }
          let s = 0;
          for (let j = 0; j < V; j++) s += Math.exp(last[j] - mx);
          lp += last[ans[i]] - mx - Math.log(s);
          got.push(arg);
          if (arg !== ans[i]) exact = false;
          if (i + 1 < ans.length) last = (await forward(model, [ans[i]], { cache })).data;
        }
        cache.release?.(); // a device copy (KIVI on WebGPU)
        cells.push({
          contextLength: C,
          depth,
          insertAt: at,
          needle: value,
          exact,
          logProb: lp / ans.length,
          answer: tok.decode(got),
          promptIds: prompt,
          answerIds: ans,
        });
        opts.onProgress?.(cells.length, total);
      }
    }
  }
  const grid = (f: (c: NeedleCell) => number) =>
    lengths.map((C) =>
      depths.map((d) => {
        const cs = cells.filter((c) => c.contextLength === C && c.depth === d);
        return cs.reduce((a, c) => a + f(c), 0) / cs.length;
      })
    );
  return {
    cells,
    contextLengths: lengths,
    depths,
    accuracy: grid((c) => c.exact ? 1 : 0),
    logProb: grid((c) => c.logProb),
    // A KVQuant quantizer (codebooks, thresholds) is left out of the label.
    label: opts.kv ? JSON.stringify(opts.kv, (k, v) => k === "quantizer" ? undefined : v) : "FP",
  };
}
