/**
 * Chat: a conversation rendered with the model's chat template through `@huggingface/transformers`'
 * `apply_chat_template` (the Jinja `chat_template` of `tokenizer_config.json`, with its
 * `bos_token` / `eos_token`), then a greedy (or sampled) reply from `generate`. The rendered text
 * is tokenized without adding BOS again (`add_special_tokens=False`, as `apply_chat_template(...,
 * tokenize=True)` does), since templates write `bos_token` themselves.
 * `chatCompare` sends the same conversation to several models (FP vs quantized) for a
 * side-by-side view (`src/viz/chat_view.ts`).
 * @module
 */
import { FormatError, OptionError } from "../errors.ts";
import {
  llamaTokenizerConfig,
  parseSentencePieceModel,
  tokenizerJsonFromLlama2c,
  tokenizerJsonFromSentencePieces,
} from "../io/tokenizer.ts";
import type { Model } from "../models/model.ts";
import { generate, type GenerateOptions } from "./generate.ts";

/** A chat message. */
export interface ChatMessage {
  /** "system", "user" or "assistant". */
  role: string;
  /** Text. */
  content: string;
}

/** Options of {@linkcode renderChat} and {@linkcode chat}. */
export interface ChatOptions extends GenerateOptions {
  /** A Jinja chat template overriding the model's `tokenizer_config.json` one. */
  chatTemplate?: string;
  /** Extra `tokenizer_config.json` fields (e.g. bos_token) for the template. */
  tokenizerConfig?: Record<string, unknown>;
  /** Append the template's assistant header (default true). */
  addGenerationPrompt?: boolean;
}

/** A chat reply. */
export interface ChatReply {
  /** The rendered prompt text. */
  prompt: string;
  /** The reply text. */
  reply: string;
  /** Reply tokens. */
  tokens: number;
  /** Decode speed (tokens per second). */
  tokensPerSecond: number;
}

async function readJsonIf(path: string): Promise<Record<string, unknown> | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    if (e instanceof SyntaxError) throw new FormatError(path, `not valid JSON (${e.message})`);
    throw e;
  }
}

/** tokenizer.json and tokenizer_config.json of a model (llama2.c / .model files converted). */
async function tokenizerFiles(
  model: Model,
): Promise<{ json: unknown; config: Record<string, unknown>; where: string }> {
  const p = model.tokenizerPath;
  if (!p) {
    throw new FormatError(model.source, "no tokenizer for this model (loadModel { tokenizer })");
  }
  if (p.endsWith(".bin")) {
    return {
      json: tokenizerJsonFromLlama2c(await Deno.readFile(p), { file: p }),
      config: llamaTokenizerConfig(),
      where: p,
    };
  }
  if (p.endsWith(".model")) {
    const { pieces } = parseSentencePieceModel(await Deno.readFile(p));
    return {
      json: tokenizerJsonFromSentencePieces(pieces),
      config: llamaTokenizerConfig(),
      where: p,
    };
  }
  const json = await readJsonIf(`${p}/tokenizer.json`);
  if (!json) {
    throw new FormatError(p, "no tokenizer.json for chat templating");
  }
  return { json, config: (await readJsonIf(`${p}/tokenizer_config.json`)) ?? {}, where: p };
}

/**
 * The prompt text of `messages` under the model's chat template (or `opts.chatTemplate`).
 * Throws {@linkcode OptionError} (option "chatTemplate") when the model has none, naming where
 * it looked.
 */
export async function renderChat(
  model: Model,
  messages: ChatMessage[],
  opts: ChatOptions = {},
): Promise<string> {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new OptionError("messages", "give at least one {role, content} message");
  }
  for (const [i, m] of messages.entries()) {
    if (typeof m?.role !== "string" || typeof m?.content !== "string") {
      throw new OptionError("messages", `message ${i} needs string role and content`);
    }
  }
  const { json, config, where } = await tokenizerFiles(model);
  const cfg = { ...config, ...(opts.tokenizerConfig ?? {}) };
  const template = opts.chatTemplate ?? (cfg.chat_template as string | undefined);
  if (typeof template !== "string" || template === "") {
    throw new OptionError(
      "chatTemplate",
      `model ${model.source} has no chat template (looked for "chat_template" in ` +
        `${where}/tokenizer_config.json); pass { chatTemplate: "<jinja>" }`,
    );
  }
  const tf = await import("@huggingface/transformers");
  const hf = new tf.PreTrainedTokenizer(json as object, { ...cfg, chat_template: template });
  return hf.apply_chat_template(messages as never, {
    tokenize: false,
    add_generation_prompt: opts.addGenerationPrompt ?? true,
  }) as unknown as string;
}

/** A reply of `model` to `messages` (chat template, then `generate` without a second BOS). */
export async function chat(
  model: Model,
  messages: ChatMessage[],
  opts: ChatOptions = {},
): Promise<ChatReply> {
  const prompt = await renderChat(model, messages, opts);
  const g = await generate(model, prompt, { ...opts, addBos: false });
  return {
    prompt,
    reply: g.completion,
    tokens: g.ids.length,
    tokensPerSecond: g.tokensPerSecond,
  };
}

/** The same conversation sent to each model: label → reply (for a side-by-side view). */
export async function chatCompare(
  models: Record<string, Model>,
  messages: ChatMessage[],
  opts: ChatOptions = {},
): Promise<{ messages: ChatMessage[]; replies: Record<string, ChatReply> }> {
  const replies: Record<string, ChatReply> = {};
  for (const [k, m] of Object.entries(models)) replies[k] = await chat(m, messages, opts);
  return { messages, replies };
}
