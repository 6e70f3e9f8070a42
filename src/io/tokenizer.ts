/**
 * Tokenizers: one small interface over Hugging Face tokenizers (`npm:@huggingface/transformers`,
 * imported lazily), loaded from a local folder holding `tokenizer.json`, GPT-2/OPT
 * `vocab.json` + `merges.txt`, or a llama2.c `tok*.bin`. Never touches the network.
 *
 * @example
 * ```ts
 * const tok = await loadTokenizer("../shared/data/tokenizers/gpt2-bpe");
 * tok.encode("Hello world"); // [15496, 995]
 * ```
 * @module
 */
import { ConfigError, FormatError, OptionError, UnsupportedError } from "../errors.ts";
import { readFileChecked, readTextChecked, writeFileAtomic } from "./fs.ts";
import {
  parseLlama2cTokenizer,
  parseSentencePieceModel,
  type TokenizerJson,
  tokenizerJsonFromGpt2,
  tokenizerJsonFromLlama2c,
  tokenizerJsonFromSentencePieces,
} from "./_tokenizer_json.ts";
import { ggufTokenizerJson } from "./gguf_model.ts";

export {
  parseLlama2cTokenizer,
  parseSentencePieceModel,
  tokenizerJsonFromGpt2,
  tokenizerJsonFromLlama2c,
  tokenizerJsonFromSentencePieces,
};
export type {
  AddedToken,
  Gpt2JsonOptions,
  Llama2cToken,
  Llama2cVocab,
  PieceKind,
  SentencePiece,
  TokenizerJson,
} from "./_tokenizer_json.ts";

/** Text <-> token ids. */
export interface Tokenizer {
  /**
   * Token ids of `text`. `addBos` (default true) prepends {@linkcode Tokenizer.bosId} when the
   * tokenizer has one, as Hugging Face tokenizers do by default (Llama, OPT); GPT-2 has none.
   * As in Hugging Face tokenizers, special tokens written literally in `text` (`<s>`,
   * `<|endoftext|>`) are matched as those tokens (llama2.c's encoder would spell them out).
   */
  encode(text: string, opts?: { addBos?: boolean }): number[];
  /**
   * Text of `ids`; special tokens (BOS, EOS, padding) are dropped and no "tokenization space
   * clean-up" is done, so `decode(encode(s))` gives `s` back for byte-level BPE. Throws
   * {@linkcode OptionError} for an id outside `0..vocabSize-1`.
   */
  decode(ids: number[]): string;
  /** Id prepended as beginning-of-sequence, or null when the tokenizer adds none (GPT-2). */
  readonly bosId: number | null;
  /** End-of-sequence / end-of-text id, or null when unknown. */
  readonly eosId: number | null;
  /** Number of ids (largest id + 1, added tokens included). */
  readonly vocabSize: number;
  /** A short name: the folder or file it was loaded from, or the name given. */
  readonly name: string;
}

/** Options of {@linkcode loadTokenizer}. */
export interface LoadTokenizerOptions {
  /**
   * BOS token for `vocab.json` + `merges.txt` folders (OPT: `"</s>"`). Default: the folder's
   * `tokenizer_config.json` (`bos_token` when `add_bos_token` is not false), else `"</s>"` when
   * its `config.json` says `model_type: "opt"`, else none (GPT-2).
   */
  bos?: string;
  /** For llama2.c files: the model's vocab_size, checked against the token count. */
  vocabSize?: number;
  /** Overrides {@linkcode Tokenizer.name}. */
  name?: string;
}

type HfTokenizer = {
  encode(text: string, opts?: { add_special_tokens?: boolean }): number[];
  decode(
    ids: number[],
    opts?: { skip_special_tokens?: boolean; clean_up_tokenization_spaces?: boolean },
  ): string;
  get_vocab(): Map<string, number> | Record<string, number>;
  convert_tokens_to_ids(token: string): number | undefined | null;
};

type HfTokenizerClass = new (json: unknown, config: unknown) => HfTokenizer;

function basename(path: string): string {
  const parts = path.replace(/[\\/]+$/, "").split(/[\\/]/);
  return parts[parts.length - 1] || path;
}

function join(dir: string, file: string): string {
  return dir.endsWith("/") ? dir + file : `${dir}/${file}`;
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  const text = await readTextChecked(path);
  try {
    const v = JSON.parse(text);
    if (v === null || typeof v !== "object" || Array.isArray(v)) {
      throw new Error("expected a JSON object");
    }
    return v;
  } catch (e) {
    throw new FormatError(path, `not a valid JSON object (${(e as Error).message})`, { cause: e });
  }
}

function tokenContent(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  return undefined;
}

const EOS_NAMES = ["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>"];

/**
 * Wraps an in-memory `tokenizer.json` (and optional `tokenizer_config.json` object) as a
 * {@linkcode Tokenizer}. The tokenizer class is chosen from `config.tokenizer_class` as
 * transformers' AutoTokenizer does. BOS: the id the tokenizer's post-processor prepends (or
 * `config.bos_token` when `config.add_bos_token` is true); EOS: `config.eos_token`, else a
 * special token with a usual end-of-text name.
 */
export async function tokenizerFromJson(
  json: TokenizerJson | Record<string, unknown>,
  opts: { config?: Record<string, unknown>; name?: string } = {},
): Promise<Tokenizer> {
  const tf = await import("@huggingface/transformers");
  const config: Record<string, unknown> = { ...(opts.config ?? {}) };
  const className = typeof config.tokenizer_class === "string"
    ? config.tokenizer_class.replace(/Fast$/, "")
    : "PreTrainedTokenizer";
  const classes = tf as unknown as Record<string, unknown>;
  const Base = tf.PreTrainedTokenizer as unknown as HfTokenizerClass;
  let Cls = classes[className] as HfTokenizerClass | undefined;
  if (typeof Cls !== "function" || !(Cls.prototype instanceof Base || Cls === Base)) Cls = Base;
  let hf: HfTokenizer;
  try {
    hf = new Cls(json, config);
  } catch (e) {
    throw new FormatError(
      opts.name ?? "<memory>",
      `tokenizer.json rejected by transformers.js: ${(e as Error).message}`,
      { cause: e },
    );
  }
  const idOf = (tok: string | undefined): number | null => {
    if (tok === undefined) return null;
    const id = hf.convert_tokens_to_ids(tok);
    return typeof id === "number" && Number.isInteger(id) ? id : null;
  };
  // BOS: what encoding with special tokens prepends, unless the config says otherwise.
  const plain = hf.encode("a", { add_special_tokens: false });
  const special = hf.encode("a", { add_special_tokens: true });
  let bosId: number | null = special.length > plain.length && special[0] !== plain[0]
    ? special[0]
    : null;
  if (config.add_bos_token === true && bosId === null) bosId = idOf(tokenContent(config.bos_token));
  if (config.add_bos_token === false) bosId = null;
  let eosId = idOf(tokenContent(config.eos_token));
  if (eosId === null) {
    const added = (json as { added_tokens?: { content: string; id: number; special?: boolean }[] })
      .added_tokens ?? [];
    const hit = added.find((t) => t.special !== false && EOS_NAMES.includes(t.content));
    eosId = hit ? hit.id : null;
  }
  const vocab = hf.get_vocab();
  let maxId = -1;
  for (const id of vocab instanceof Map ? vocab.values() : Object.values(vocab)) {
    if (id > maxId) maxId = id;
  }
  for (const t of (json as { added_tokens?: { id: number }[] }).added_tokens ?? []) {
    if (t.id > maxId) maxId = t.id;
  }
  const name = opts.name ?? "tokenizer";
  return {
    encode(text: string, o: { addBos?: boolean } = {}): number[] {
      const ids = hf.encode(text, { add_special_tokens: false });
      if ((o.addBos ?? true) && bosId !== null) ids.unshift(bosId);
      return ids;
    },
    decode(ids: number[]): string {
      for (const id of ids) {
        if (!Number.isInteger(id) || id < 0 || id > maxId) {
          throw new OptionError("ids", `${id} is not a token id of ${name} (0..${maxId})`);
        }
      }
      return ids.length === 0
        ? ""
        : hf.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
    },
    bosId,
    eosId,
    vocabSize: maxId + 1,
    name,
  };
}

const LOOKED_FOR = "tokenizer.json (+ tokenizer_config.json), vocab.json + merges.txt, " +
  "a SentencePiece tokenizer.model, or a llama2.c tok*.bin / tokenizer.bin";

/**
 * Loads a tokenizer from a local folder (or a llama2.c tokenizer file), without network access.
 * The folder may hold, in order of preference:
 * - `tokenizer.json` (+ optional `tokenizer_config.json`): used as is;
 * - `vocab.json` + `merges.txt` (GPT-2/OPT byte-level BPE): converted with
 *   {@linkcode tokenizerJsonFromGpt2};
 * - a SentencePiece BPE `tokenizer.model` (Llama, Llama-2): converted with
 *   {@linkcode tokenizerJsonFromSentencePieces} (Unigram models: {@linkcode UnsupportedError});
 * - a llama2.c `tok*.bin` or `tokenizer.bin`: converted with {@linkcode tokenizerJsonFromLlama2c}.
 *
 * Throws {@linkcode FormatError} when nothing usable is there (the message names the folder and
 * what was looked for) or a file is corrupt.
 */
export async function loadTokenizer(
  path: string,
  opts: LoadTokenizerOptions = {},
): Promise<Tokenizer> {
  const info = await statOrNull(path);
  if (info === null) {
    throw new FormatError(path, `no such file or folder (looked for ${LOOKED_FOR})`);
  }
  if (info.isFile) {
    if (path.endsWith(".model")) return await sentencePieceTokenizer(path, opts);
    if (path.endsWith(".gguf")) {
      const json = await ggufTokenizerJson(path);
      return await tokenizerFromJson(json, {
        // A GPT-2 vocabulary's BOS (if any) comes from its post-processor.
        config: json.pre_tokenizer?.type === "ByteLevel" ? {} : llamaTokenizerConfig(),
        name: opts.name ?? basename(path),
      });
    }
    if (!path.endsWith(".bin")) {
      throw new FormatError(path, `is a file; pass a folder holding ${LOOKED_FOR}`);
    }
    return await llama2cTokenizer(path, opts);
  }
  const has = async (f: string) => (await statOrNull(join(path, f)))?.isFile ?? false;
  const name = opts.name ?? basename(path);
  if (await has("tokenizer.json")) {
    const json = await readJson(join(path, "tokenizer.json"));
    const config = (await has("tokenizer_config.json"))
      ? await readJson(join(path, "tokenizer_config.json"))
      : {};
    return await tokenizerFromJson(json, { config, name });
  }
  if ((await has("vocab.json")) && (await has("merges.txt"))) {
    const config = (await has("tokenizer_config.json"))
      ? await readJson(join(path, "tokenizer_config.json"))
      : {};
    let bos = opts.bos;
    if (bos === undefined && config.add_bos_token !== false) {
      const b = tokenContent(config.bos_token);
      // GPT-2's config names <|endoftext|> as bos_token but does not prepend it.
      if (b !== undefined && config.add_bos_token === true) bos = b;
    }
    if (bos === undefined && (await has("config.json"))) {
      const modelConfig = await readJson(join(path, "config.json"));
      if (modelConfig.model_type === "opt") bos = "</s>";
    }
    const json = tokenizerJsonFromGpt2(
      await readTextChecked(join(path, "vocab.json")),
      await readTextChecked(join(path, "merges.txt")),
      { bos, eos: tokenContent(config.eos_token), file: path },
    );
    const cfg: Record<string, unknown> = { ...config };
    delete cfg.tokenizer_class;
    delete cfg.add_bos_token;
    return await tokenizerFromJson(json, { config: cfg, name });
  }
  if (await has("tokenizer.model")) {
    return await sentencePieceTokenizer(join(path, "tokenizer.model"), { ...opts, name });
  }
  const bins: string[] = [];
  for await (const e of Deno.readDir(path)) {
    if (e.isFile && (/^tok.*\.bin$/.test(e.name) || e.name === "tokenizer.bin")) bins.push(e.name);
  }
  bins.sort();
  if (bins.length > 1) {
    throw new FormatError(
      path,
      `holds several llama2.c tokenizer files (${bins.join(", ")}); pass the file's path`,
    );
  }
  if (bins.length === 1) return await llama2cTokenizer(join(path, bins[0]), opts);
  const present: string[] = [];
  for await (const e of Deno.readDir(path)) present.push(e.name);
  present.sort();
  throw new FormatError(
    path,
    `no tokenizer files: looked for ${LOOKED_FOR}; found ${
      present.length ? present.slice(0, 12).join(", ") : "an empty folder"
    }`,
  );
}

async function sentencePieceTokenizer(
  file: string,
  opts: LoadTokenizerOptions,
): Promise<Tokenizer> {
  const { pieces, modelType, addDummyPrefix } = parseSentencePieceModel(
    await readFileChecked(file),
    {
      file,
    },
  );
  if (modelType !== 2) {
    throw new UnsupportedError(
      `${file}: SentencePiece model type ${modelType} (1 = Unigram) is not supported; only BPE ` +
        "(type 2, as Llama's). Put the model's tokenizer.json beside it instead.",
    );
  }
  if (opts.vocabSize !== undefined && pieces.length !== opts.vocabSize) {
    throw new FormatError(
      file,
      `holds ${pieces.length} pieces, but vocab_size is ${opts.vocabSize}`,
    );
  }
  const json = tokenizerJsonFromSentencePieces(pieces, { file, addDummyPrefix });
  return await tokenizerFromJson(json, {
    config: llamaTokenizerConfig(),
    name: opts.name ?? basename(file).replace(/\.model$/, ""),
  });
}

async function llama2cTokenizer(file: string, opts: LoadTokenizerOptions): Promise<Tokenizer> {
  const bytes = await readFileChecked(file);
  const json = tokenizerJsonFromLlama2c(bytes, { file, vocabSize: opts.vocabSize });
  return await tokenizerFromJson(json, {
    config: llamaTokenizerConfig(),
    name: opts.name ?? basename(file).replace(/\.bin$/, ""),
  });
}

/**
 * A `tokenizer_config.json` object for a tokenizer built by {@linkcode tokenizerJsonFromLlama2c}
 * (LlamaTokenizer, BOS `<s>` prepended, no EOS appended), to write beside its tokenizer.json.
 */
export function llamaTokenizerConfig(): Record<string, unknown> {
  return {
    tokenizer_class: "LlamaTokenizer",
    bos_token: "<s>",
    eos_token: "</s>",
    unk_token: "<unk>",
    add_bos_token: true,
    add_eos_token: false,
    legacy: true,
    clean_up_tokenization_spaces: false,
  };
}

const writeAtomic = writeFileAtomic;

/**
 * Writes `json` as `<dir>/tokenizer.json` (and `opts.config`, when given, as
 * `<dir>/tokenizer_config.json`), each atomically (`writeFileAtomic`: unique temp, fsync, rename, fsync of the folder). Creates
 * `dir` if needed. Returns the tokenizer.json path.
 */
export async function writeTokenizerJson(
  dir: string,
  json: TokenizerJson | Record<string, unknown>,
  opts: { config?: Record<string, unknown> } = {},
): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  const file = join(dir, "tokenizer.json");
  await writeAtomic(file, JSON.stringify(json, null, 1));
  if (opts.config) {
    await writeAtomic(join(dir, "tokenizer_config.json"), JSON.stringify(opts.config, null, 2));
  }
  return file;
}

/**
 * Throws {@linkcode ConfigError} when `tokenizer` can produce ids that `embeddingRows` (the
 * model's embedding / vocab_size rows) cannot hold. `where` names the model in the message.
 * A tokenizer smaller than the embedding is fine (models often pad their vocab).
 */
export function checkVocabFits(tokenizer: Tokenizer, embeddingRows: number, where: string): void {
  if (tokenizer.vocabSize > embeddingRows) {
    throw new ConfigError(
      `${where}: tokenizer ${tokenizer.name} has ${tokenizer.vocabSize} ids but the model's ` +
        `embedding has only ${embeddingRows} rows; ids >= ${embeddingRows} would index past it ` +
        "(wrong tokenizer for this model?)",
    );
  }
}
