/**
 * Builders of Hugging Face `tokenizer.json` objects from other tokenizer formats: GPT-2/OPT
 * byte-level BPE (`vocab.json` + `merges.txt`) and llama2.c `tok*.bin` (SentencePiece BPE with
 * byte fallback). Pure functions over strings and bytes; no I/O, no npm imports.
 * @module
 */
import { FormatError } from "../errors.ts";

/** One entry of `added_tokens` in a `tokenizer.json`. */
export interface AddedToken {
  /** Token id. */
  id: number;
  /** Token text. */
  content: string;
  /** Match only whole words. */
  single_word: boolean;
  /** Strip whitespace on the left. */
  lstrip: boolean;
  /** Strip whitespace on the right. */
  rstrip: boolean;
  /** Match after normalization. */
  normalized: boolean;
  /** A special token (dropped by `decode(..., skip_special_tokens)`). */
  special: boolean;
}

/**
 * The subset of the Hugging Face `tokenizer.json` schema that quantlab writes. Loaders accept any
 * valid `tokenizer.json`; this type only describes what the builders here produce.
 */
export interface TokenizerJson {
  /** Schema version, "1.0". */
  version: string;
  /** Always null here. */
  truncation: null;
  /** Always null here. */
  padding: null;
  /** Special tokens matched before the model runs. */
  added_tokens: AddedToken[];
  /** Normalizer config or null. */
  normalizer: Record<string, unknown> | null;
  /** Pre-tokenizer config or null. */
  pre_tokenizer: Record<string, unknown> | null;
  /** Post-processor config (adds BOS) or null. */
  post_processor: Record<string, unknown> | null;
  /** Decoder config. */
  decoder: Record<string, unknown> | null;
  /** The BPE model: vocab and merges. */
  model: {
    type: "BPE";
    dropout: null;
    unk_token: string | null;
    continuing_subword_prefix: string | null;
    end_of_word_suffix: string | null;
    fuse_unk: boolean;
    byte_fallback: boolean;
    ignore_merges: boolean;
    vocab: Record<string, number>;
    merges: string[] | [string, string][];
  };
}

/** The piece that stands for a space in SentencePiece vocabularies (U+2581). */
export const SPIECE_SPACE = "\u2581";

function addedToken(id: number, content: string, normalized = false): AddedToken {
  return {
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized,
    special: true,
  };
}

function bosTemplate(bos: string, bosId: number): Record<string, unknown> {
  const special = { SpecialToken: { id: bos, type_id: 0 } };
  return {
    type: "TemplateProcessing",
    single: [special, { Sequence: { id: "A", type_id: 0 } }],
    pair: [special, { Sequence: { id: "A", type_id: 0 } }, special, {
      Sequence: { id: "B", type_id: 1 },
    }],
    special_tokens: { [bos]: { id: bos, ids: [bosId], tokens: [bos] } },
  };
}

/** Uses the compact "a b" merge format unless a token holds a space. */
function mergesOut(pairs: [string, string][]): string[] | [string, string][] {
  const spaced = pairs.some(([a, b]) => a.includes(" ") || b.includes(" "));
  return spaced ? pairs : pairs.map(([a, b]) => `${a} ${b}`);
}

/** Options of {@linkcode tokenizerJsonFromGpt2}. */
export interface Gpt2JsonOptions {
  /**
   * A BOS token to prepend to every encoding (OPT: `"</s>"`). Its id is looked up in the vocab
   * (OPT's own vocab.json has `</s>` = 2); when the vocab lacks it (GPT-2's vocab), it is added as a
   * special token with the next free id. Default: none (GPT-2 adds no BOS).
   */
  bos?: string;
  /** End-of-text token; default `"<|endoftext|>"` when in the vocab, else `"</s>"` when present. */
  eos?: string;
  /** File name used in error messages. */
  file?: string;
}

/**
 * Builds a byte-level BPE `tokenizer.json` (GPT-2, OPT, RoBERTa style) from the texts of
 * `vocab.json` and `merges.txt`. The pre-tokenizer is GPT-2's ByteLevel split (no prefix space),
 * and the decoder maps bytes back. With `opts.bos` (OPT: `"</s>"`) a TemplateProcessing
 * post-processor prepends it, as the OPT tokenizer does.
 *
 * @example
 * ```ts
 * const json = tokenizerJsonFromGpt2(vocabText, mergesText, { bos: "</s>" });
 * ```
 */
export function tokenizerJsonFromGpt2(
  vocabJson: string,
  mergesTxt: string,
  opts: Gpt2JsonOptions = {},
): TokenizerJson {
  const vocabFile = opts.file ? `${opts.file}/vocab.json` : "vocab.json";
  const mergesFile = opts.file ? `${opts.file}/merges.txt` : "merges.txt";
  let vocab: Record<string, number>;
  try {
    vocab = JSON.parse(vocabJson);
  } catch (e) {
    throw new FormatError(vocabFile, `not valid JSON (${(e as Error).message})`, { cause: e });
  }
  if (vocab === null || typeof vocab !== "object" || Array.isArray(vocab)) {
    throw new FormatError(vocabFile, "expected a JSON object mapping token -> id");
  }
  let maxId = -1;
  for (const [tok, id] of Object.entries(vocab)) {
    if (!Number.isInteger(id) || id < 0) {
      throw new FormatError(vocabFile, `token ${JSON.stringify(tok)} has a bad id ${id}`);
    }
    if (id > maxId) maxId = id;
  }
  const pairs: [string, string][] = [];
  const lines = mergesTxt.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line === "" || (i === 0 && line.startsWith("#version"))) continue;
    const parts = line.split(" ");
    if (parts.length !== 2) {
      throw new FormatError(mergesFile, `line ${i + 1}: expected "left right", got ${line}`);
    }
    pairs.push([parts[0], parts[1]]);
  }
  const added: AddedToken[] = [];
  const eos = opts.eos ??
    ("<|endoftext|>" in vocab ? "<|endoftext|>" : "</s>" in vocab ? "</s>" : undefined);
  if (eos !== undefined && eos in vocab) added.push(addedToken(vocab[eos], eos, true));
  let post: Record<string, unknown> | null = {
    type: "ByteLevel",
    add_prefix_space: false,
    trim_offsets: true,
    use_regex: true,
  };
  if (opts.bos !== undefined) {
    let bosId = vocab[opts.bos];
    if (bosId === undefined) {
      bosId = maxId + 1;
      vocab = { ...vocab, [opts.bos]: bosId };
    }
    if (!added.some((t) => t.id === bosId)) added.push(addedToken(bosId, opts.bos, true));
    post = bosTemplate(opts.bos, bosId);
  }
  added.sort((a, b) => a.id - b.id);
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: {
      type: "ByteLevel",
      add_prefix_space: false,
      trim_offsets: true,
      use_regex: true,
    },
    post_processor: post,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: "",
      end_of_word_suffix: "",
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: mergesOut(pairs),
    },
  };
}

/** One token of a llama2.c tokenizer file. */
export interface Llama2cToken {
  /** The token's text as stored (spaces as " ", specials as "\n<s>\n"). */
  text: string;
  /** The raw bytes as stored. */
  bytes: Uint8Array;
  /** SentencePiece score (higher merges first). */
  score: number;
}

/** A parsed llama2.c tokenizer file. */
export interface Llama2cVocab {
  /** The header's max_token_length. */
  maxTokenLength: number;
  /** Tokens in id order. */
  tokens: Llama2cToken[];
}

/**
 * Parses a llama2.c tokenizer file (`tok*.bin`, `tokenizer.bin`): int32 max_token_length, then per
 * token float32 score, int32 byte length, bytes (little-endian). Reads to the end of the file;
 * `opts.vocabSize` checks the count. Throws {@linkcode FormatError} on a truncated or corrupt file.
 */
export function parseLlama2cTokenizer(
  bytes: Uint8Array,
  opts: { file?: string; vocabSize?: number } = {},
): Llama2cVocab {
  const file = opts.file ?? "<memory>";
  if (bytes.length < 4) {
    throw new FormatError(file, `too short for a llama2.c tokenizer (${bytes.length} bytes)`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const maxTokenLength = dv.getInt32(0, true);
  if (maxTokenLength <= 0 || maxTokenLength > 1 << 16) {
    throw new FormatError(
      file,
      `max_token_length ${maxTokenLength} is implausible; not a llama2.c tokenizer file?`,
    );
  }
  const decoder = new TextDecoder("utf-8", { fatal: false });
  const tokens: Llama2cToken[] = [];
  let off = 4;
  while (off < bytes.length) {
    const i = tokens.length;
    if (off + 8 > bytes.length) {
      throw new FormatError(
        file,
        `truncated: token ${i} header at byte ${off} needs 8 bytes, ${bytes.length - off} left`,
      );
    }
    const score = dv.getFloat32(off, true);
    const len = dv.getInt32(off + 4, true);
    if (!Number.isFinite(score)) {
      throw new FormatError(file, `token ${i} at byte ${off} has a non-finite score ${score}`);
    }
    if (len < 0 || len > maxTokenLength) {
      throw new FormatError(
        file,
        `token ${i} at byte ${off} has length ${len}, outside 0..max_token_length ${maxTokenLength}`,
      );
    }
    if (off + 8 + len > bytes.length) {
      throw new FormatError(
        file,
        `truncated: token ${i} at byte ${off} needs ${len} bytes, ${bytes.length - off - 8} left`,
      );
    }
    const raw = bytes.slice(off + 8, off + 8 + len);
    tokens.push({ text: decoder.decode(raw), bytes: raw, score });
    off += 8 + len;
  }
  if (opts.vocabSize !== undefined && tokens.length !== opts.vocabSize) {
    throw new FormatError(
      file,
      `holds ${tokens.length} tokens, but the model's vocab_size is ${opts.vocabSize}`,
    );
  }
  return { maxTokenLength, tokens };
}

function hex2(b: number): string {
  return b.toString(16).toUpperCase().padStart(2, "0");
}

/** Kind of a SentencePiece piece (SentencePiece's `ModelProto.SentencePiece.Type`). */
export type PieceKind = "normal" | "unknown" | "control" | "user" | "unused" | "byte";

/** One SentencePiece vocabulary entry, with "▁" (U+2581) for spaces. */
export interface SentencePiece {
  /** The piece text, "▁" for a space; `<0xAB>` for byte pieces. */
  piece: string;
  /** Score; for BPE models, higher merges first. */
  score: number;
  /** Piece kind. */
  kind: PieceKind;
}

/** Pre-tokenizer cutting text into "▁"-run + other-characters chunks (exact, see below). */
const SPIECE_CHUNKS = {
  type: "Split",
  pattern: { Regex: `${SPIECE_SPACE}*[^${SPIECE_SPACE}]+|${SPIECE_SPACE}+` },
  behavior: "Isolated",
  invert: false,
};

/**
 * Builds a SentencePiece-BPE `tokenizer.json` (Llama style, byte fallback) from pieces in id
 * order. Control pieces (`<s>`, `</s>`) and the unknown piece become special added tokens;
 * user-defined pieces become non-special added tokens. Spaces become "▁", a "▁" dummy prefix is
 * prepended (unless `opts.addDummyPrefix` is false), and the merges list every (left, right)
 * split of each normal piece into two normal pieces, ordered by the merged piece's score (highest
 * first; ties by id), then by the ids of left and right. HF's BPE then merges in the order of
 * SentencePiece / llama2.c, which repeatedly merge the adjacent pair whose concatenation has the
 * highest score. BOS (`opts.bos`, default `<s>`) is prepended by the post-processor. When no
 * normal piece holds "▁" after another character, a Split pre-tokenizer cuts the text into
 * "▁-run + word" chunks; this gives the same ids as BPE over the whole text, much faster.
 */
export function tokenizerJsonFromSentencePieces(
  pieces: SentencePiece[],
  opts: { file?: string; addDummyPrefix?: boolean; bos?: string } = {},
): TokenizerJson {
  const file = opts.file ?? "<memory>";
  const vocab: Record<string, number> = {};
  for (let i = 0; i < pieces.length; i++) {
    const p = pieces[i].piece;
    if (Object.hasOwn(vocab, p)) {
      throw new FormatError(
        file,
        `piece ${JSON.stringify(p)} occurs twice (ids ${vocab[p]} and ${i})`,
      );
    }
    vocab[p] = i;
  }
  const unk = pieces.find((p) => p.kind === "unknown")?.piece ?? null;
  const bos = opts.bos ?? "<s>";
  // Merges: only normal pieces take part (specials and byte pieces never result from a merge).
  const normal = (id: number | undefined): id is number =>
    id !== undefined && pieces[id].kind === "normal";
  const order: number[] = [];
  for (let i = 0; i < pieces.length; i++) if (pieces[i].kind === "normal") order.push(i);
  order.sort((a, b) => pieces[b].score - pieces[a].score || a - b);
  const pairs: [string, string][] = [];
  for (const id of order) {
    const chars = Array.from(pieces[id].piece);
    if (chars.length < 2) continue;
    const splits: [number, number, string, string][] = [];
    for (let k = 1; k < chars.length; k++) {
      const left = chars.slice(0, k).join("");
      const right = chars.slice(k).join("");
      const l = vocab[left];
      const r = vocab[right];
      if (normal(l) && normal(r)) splits.push([l, r, left, right]);
    }
    splits.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    for (const s of splits) pairs.push([s[2], s[3]]);
  }
  // When no normal piece holds "▁" after another character (true of SentencePiece models trained
  // with split_by_whitespace, Llama's included), no merge can join "x" and a following "▁", so
  // cutting the text before each run of "▁" that follows another character changes no result
  // and lets BPE work (and cache) word by word instead of on the whole text at once.
  const splittable = pieces.every((p) =>
    p.kind !== "normal" || !new RegExp(`[^${SPIECE_SPACE}]${SPIECE_SPACE}`, "u").test(p.piece)
  );
  const added: AddedToken[] = [];
  pieces.forEach((p, i) => {
    if (p.kind === "unknown" || p.kind === "control") added.push(addedToken(i, p.piece));
    else if (p.kind === "user") added.push({ ...addedToken(i, p.piece), special: false });
  });
  const normalizers: Record<string, unknown>[] = [];
  if (opts.addDummyPrefix !== false) normalizers.push({ type: "Prepend", prepend: SPIECE_SPACE });
  normalizers.push({ type: "Replace", pattern: { String: " " }, content: SPIECE_SPACE });
  const decoders: Record<string, unknown>[] = [
    { type: "Replace", pattern: { String: SPIECE_SPACE }, content: " " },
    { type: "ByteFallback" },
    { type: "Fuse" },
  ];
  if (opts.addDummyPrefix !== false) {
    decoders.push({ type: "Strip", content: " ", start: 1, stop: 0 });
  }
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: { type: "Sequence", normalizers },
    pre_tokenizer: splittable ? SPIECE_CHUNKS : null,
    post_processor: bos in vocab ? bosTemplate(bos, vocab[bos]) : null,
    decoder: { type: "Sequence", decoders },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: unk,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: pieces.some((p) => p.kind === "byte"),
      ignore_merges: false,
      vocab,
      merges: mergesOut(pairs),
    },
  };
}

/**
 * Builds a SentencePiece-BPE `tokenizer.json` (Llama style, byte fallback) from a llama2.c
 * tokenizer file's bytes. Ids 0, 1, 2 become `<unk>`, `<s>` (BOS), `</s>` (EOS); ids 3..258 must
 * be the byte tokens `<0x00>`..`<0xFF>` (llama2.c's byte fallback adds 3 to a byte); spaces,
 * stored as " ", become "▁". See {@linkcode tokenizerJsonFromSentencePieces} for the merges.
 */
export function tokenizerJsonFromLlama2c(
  bytes: Uint8Array,
  opts: { file?: string; vocabSize?: number } = {},
): TokenizerJson {
  const file = opts.file ?? "<memory>";
  const { tokens } = parseLlama2cTokenizer(bytes, opts);
  if (tokens.length < 259) {
    throw new FormatError(
      file,
      `holds ${tokens.length} tokens; a SentencePiece byte-fallback vocab needs at least 259`,
    );
  }
  for (let b = 0; b < 256; b++) {
    if (tokens[3 + b].text !== `<0x${hex2(b)}>`) {
      throw new FormatError(
        file,
        `token ${3 + b} is ${JSON.stringify(tokens[3 + b].text)}, expected <0x${hex2(b)}> ` +
          "(llama2.c byte fallback assumes byte tokens at ids 3..258)",
      );
    }
  }
  const specials = ["<unk>", "<s>", "</s>"];
  const pieces: SentencePiece[] = tokens.map((t, i) => ({
    piece: i < 3 ? specials[i] : t.text.replaceAll(" ", SPIECE_SPACE),
    score: t.score,
    kind: i === 0 ? "unknown" : i < 3 ? "control" : i < 259 ? "byte" : "normal",
  }));
  return tokenizerJsonFromSentencePieces(pieces, { file });
}

const PIECE_KINDS: Record<number, PieceKind> = {
  1: "normal",
  2: "unknown",
  3: "control",
  4: "user",
  5: "unused",
  6: "byte",
};

/** A minimal protobuf reader over a byte range. */
function* protoFields(
  bytes: Uint8Array,
  file: string,
): Generator<{ field: number; wire: number; value: number; data?: Uint8Array }> {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let off = 0;
  const varint = (): number => {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (off >= bytes.length) throw new FormatError(file, `truncated protobuf varint at ${off}`);
      const b = bytes[off++];
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
    throw new FormatError(file, `bad protobuf varint at byte ${off}`);
  };
  while (off < bytes.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) yield { field, wire, value: varint() };
    else if (wire === 1) {
      if (off + 8 > bytes.length) throw new FormatError(file, `truncated protobuf at ${off}`);
      off += 8;
      yield { field, wire, value: 0 };
    } else if (wire === 2) {
      const len = varint();
      if (off + len > bytes.length) {
        throw new FormatError(file, `truncated protobuf field ${field}: ${len} bytes at ${off}`);
      }
      yield { field, wire, value: len, data: bytes.subarray(off, off + len) };
      off += len;
    } else if (wire === 5) {
      if (off + 4 > bytes.length) throw new FormatError(file, `truncated protobuf at ${off}`);
      yield { field, wire, value: dv.getFloat32(off, true) };
      off += 4;
    } else throw new FormatError(file, `unsupported protobuf wire type ${wire} at byte ${off}`);
  }
}

/**
 * Parses a SentencePiece `tokenizer.model` (a serialized `ModelProto`): its pieces, the model
 * type (1 unigram, 2 BPE, ...) and the normalizer's `add_dummy_prefix` flag.
 */
export function parseSentencePieceModel(
  bytes: Uint8Array,
  opts: { file?: string } = {},
): { pieces: SentencePiece[]; modelType: number; addDummyPrefix: boolean } {
  const file = opts.file ?? "<memory>";
  const td = new TextDecoder();
  const pieces: SentencePiece[] = [];
  let modelType = 1; // TrainerSpec default: UNIGRAM
  let addDummyPrefix = true;
  for (const f of protoFields(bytes, file)) {
    if (f.field === 1 && f.data) {
      let piece = "";
      let score = 0;
      let type = 1;
      for (const g of protoFields(f.data, file)) {
        if (g.field === 1 && g.data) piece = td.decode(g.data);
        else if (g.field === 2 && g.wire === 5) score = g.value;
        else if (g.field === 3 && g.wire === 0) type = g.value;
      }
      const kind = PIECE_KINDS[type];
      if (kind === undefined) {
        throw new FormatError(file, `piece ${pieces.length} has unknown type ${type}`);
      }
      pieces.push({ piece, score, kind });
    } else if (f.field === 2 && f.data) {
      for (const g of protoFields(f.data, file)) {
        if (g.field === 3 && g.wire === 0) modelType = g.value;
      }
    } else if (f.field === 3 && f.data) {
      for (const g of protoFields(f.data, file)) {
        if (g.field === 3 && g.wire === 0) addDummyPrefix = g.value !== 0;
      }
    }
  }
  if (pieces.length === 0) throw new FormatError(file, "no pieces; not a SentencePiece model?");
  return { pieces, modelType, addDummyPrefix };
}
