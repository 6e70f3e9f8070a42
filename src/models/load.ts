/**
 * `loadModel`: a Hugging Face checkpoint folder, a llama2.c `.bin` file, or (online) a hub name.
 * @module
 */
import { FileKindError, FormatError, OptionError, UnsupportedError } from "../errors.ts";
import { fileIfPresent, kindOf, openForRead, readTextChecked, statPath } from "../io/fs.ts";
import { openCheckpoint } from "../io/hf_checkpoint.ts";
import { readGgufCheckpoint } from "../io/gguf_model.ts";
import { readGptqCheckpoint } from "../io/gptq_format.ts";
import { downloadModel } from "../io/hub.ts";
import { looksLikeLlama2c, readLlama2c } from "../io/llama2c.ts";
import type { NonFinitePolicy } from "../io/safetensors.ts";
import { checkVocabFits, loadTokenizer, type Tokenizer } from "../io/tokenizer.ts";
import { type ModelConfig, parseConfig } from "./config.ts";
import { checkTensors, type CheckTensorsOptions, hideTensors } from "./_validate.ts";
import { memorySource, type Model, Weights, type WeightSource } from "./model.ts";

/**
 * Checks the tensors of `src` against what `cfg` implies (see `checkTensors` in `_validate.ts`:
 * missing, unexpected, wrong shape or dtype are typed errors naming the tensor) and returns the
 * source without the tensors a named rule ignores (a stored `lm_head` with tied embeddings).
 */
export function checkShapes(
  cfg: ModelConfig,
  src: WeightSource,
  where: string,
  opts: CheckTensorsOptions = {},
): WeightSource {
  return hideTensors(src, checkTensors(cfg, src, where, opts));
}

/** Options of `loadModel`. */
export interface LoadOptions {
  /** Tokenizer folder or llama2.c tokenizer `.bin`, when the model folder has none. */
  tokenizer?: string;
  /** NaN/Inf weights: "refuse" (default, throws NonFiniteError), "warn" or "allow". */
  nonFinite?: NonFinitePolicy;
  /** Hub revision when downloading. */
  revision?: string;
  /**
   * A stored `lm_head.weight` while config.json ties embeddings: "ignore" (default, the embedding
   * is the output projection, as transformers does) or "refuse" (an UnexpectedTensorError).
   */
  tiedLmHead?: "ignore" | "refuse";
}

const LOAD_KEYS = ["tokenizer", "nonFinite", "revision", "tiedLmHead"];

/** stat that returns null only when nothing is there; loops, dangling links: FileKindError. */
const stat = statPath;

async function findLlama2cTokenizer(dir: string): Promise<string | undefined> {
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && /^tok.*\.bin$|^tokenizer\.bin$/.test(e.name)) return `${dir}/${e.name}`;
    }
  } catch { /* no folder */ }
  return undefined;
}

/**
 * Loads a model. `path` is a checkpoint folder (config.json + safetensors), a llama2.c `.bin`
 * checkpoint, a folder holding one, or a hub name ("facebook/opt-125m",
 * "karpathy/tinyllamas/stories260K") fetched into the cache when online. Tensors load lazily.
 *
 * Tokenizer discovery: `opts.tokenizer`; else tokenizer files in the folder; else a llama2.c
 * `tok*.bin` beside a llama2.c checkpoint; else, for a folder named `X-hf` (a llama2.c
 * conversion), a `tok*.bin` in the sibling folder `X`.
 */
export async function loadModel(path: string, opts: LoadOptions = {}): Promise<Model> {
  for (const k of Object.keys(opts ?? {})) {
    if (!LOAD_KEYS.includes(k)) {
      throw new OptionError(k, `unknown loadModel option (known: ${LOAD_KEYS.join(", ")})`);
    }
  }
  if (opts.tiedLmHead !== undefined && !["ignore", "refuse"].includes(opts.tiedLmHead)) {
    throw new OptionError("tiedLmHead", `must be "ignore" or "refuse", got ${opts.tiedLmHead}`);
  }
  let st = await stat(path);
  let local = path;
  if (st && !st.isFile && !st.isDirectory) {
    throw new FileKindError(path, `is ${kindOf(st)}; pass a checkpoint folder or a .bin file`);
  }
  if (!st) {
    if (
      path.startsWith(".") || path.startsWith("/") || path.split("/").length < 2 ||
      (await stat(path.split("/")[0]))
    ) {
      throw new FormatError(path, "no such file or folder (and not a hub name like owner/repo)");
    }
    local = await downloadModel(path, { revision: opts.revision });
    st = await stat(local);
  }
  if (st!.isFile && local.endsWith(".gguf")) return await loadGgufModel(local, path, opts);
  let file = local;
  if (st!.isDirectory) {
    if (!(await stat(`${local}/config.json`))) {
      // A folder holding a llama2.c checkpoint?
      let entries: Deno.DirEntry[];
      try {
        entries = await Array.fromAsync(Deno.readDir(local));
      } catch (e) {
        throw new FileKindError(local, `cannot list the folder (${(e as Error).name})`);
      }
      for (const e of entries) {
        if (e.isFile && e.name.endsWith(".bin") && !/^tok|^tokenizer|^pytorch_model/.test(e.name)) {
          file = `${local}/${e.name}`;
        }
      }
      if (file === local) {
        const pickled = await stat(`${local}/pytorch_model.bin`);
        if (!pickled) {
          throw new FormatError(
            local,
            "no config.json and no llama2.c .bin checkpoint in the folder",
          );
        }
      }
    }
  }
  if (file === local && st!.isDirectory && (await isGptqFolder(local))) {
    return await loadGptqModel(local, path, opts);
  }
  if (file === local && st!.isDirectory) {
    const ck = await openCheckpoint(local, { nonFinite: opts.nonFinite });
    const config = parseConfig(ck.config, `${local}/config.json`);
    let tokenizerPath = opts.tokenizer ?? ck.tokenizerPath;
    if (!tokenizerPath && /-hf\/?$/.test(local)) {
      tokenizerPath = await findLlama2cTokenizer(local.replace(/-hf\/?$/, ""));
    }
    const source = checkShapes(config, ck.source, `${local}`, { tiedLmHead: opts.tiedLmHead });
    return { config, source: path, tokenizerPath, weights: new Weights(source) };
  }
  const f = await openForRead(file, "checkpoint");
  const head = new Uint8Array(28);
  await f.read(head);
  f.close();
  if (!looksLikeLlama2c(head, (await stat(file))!.size)) {
    throw new UnsupportedError(
      `${file}: not a llama2.c checkpoint; pass a Hugging Face folder (config.json + safetensors)`,
    );
  }
  const { config: cfgJson, tensors } = await readLlama2c(file);
  const config = parseConfig(cfgJson, file);
  const source = checkShapes(config, memorySource(tensors), file, { tiedLmHead: opts.tiedLmHead });
  const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : ".";
  return {
    config,
    source: path,
    tokenizerPath: opts.tokenizer ?? (await findLlama2cTokenizer(dir)),
    weights: new Weights(source),
  };
}

/**
 * A llama.cpp GGUF file as a model (see `io/gguf_model.ts`): float32 weights dequantized exactly
 * as llama.cpp does, Q8_0/Q4_0/Q4_1 layers also as `packed` grid metas (method "gguf"). The
 * tokenizer is `opts.tokenizer`, else a tokenizer.json / `tok*.bin` beside the file.
 */
async function loadGgufModel(file: string, path: string, opts: LoadOptions): Promise<Model> {
  const ck = await readGgufCheckpoint(file);
  const config = parseConfig(ck.config, file);
  checkShapes(config, ck.source, file);
  const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : ".";
  const tokenizerPath = opts.tokenizer ??
    ((await stat(`${dir}/tokenizer.json`)) ? dir : (await findLlama2cTokenizer(dir)) ??
      (["llama", "gpt2"].includes(String(ck.metadata.get("tokenizer.ggml.model")?.value))
        ? file
        : undefined));
  const packed = await ck.packed();
  return {
    config,
    source: path,
    tokenizerPath,
    weights: new Weights(ck.source),
    packed: Object.keys(packed).length ? packed : undefined,
  };
}

async function isGptqFolder(dir: string): Promise<boolean> {
  // Through the checked reader: a FIFO or device named config.json is a FileKindError, never
  // opened (a plain read of a FIFO blocks until a writer appears).
  if (!(await fileIfPresent(`${dir}/config.json`, "config.json"))) return false;
  const text = await readTextChecked(`${dir}/config.json`, "config.json");
  try {
    const c = JSON.parse(text);
    return c?.quantization_config?.quant_method === "gptq";
  } catch {
    return false;
  }
}

/**
 * A GPTQ safetensors folder (`quantization_config.quant_method: "gptq"`, ours or another
 * tool's; see `io/gptq_format.ts`) as a quantized model: dequantized weights plus `packed` metas.
 */
async function loadGptqModel(dir: string, path: string, opts: LoadOptions): Promise<Model> {
  const ck = await readGptqCheckpoint(dir);
  const config = parseConfig(ck.config, `${dir}/config.json`);
  checkShapes(config, ck.source, dir);
  const tokenizerPath = opts.tokenizer ??
    ((await stat(`${dir}/tokenizer.json`)) || (await stat(`${dir}/vocab.json`))
      ? dir
      : await findLlama2cTokenizer(dir));
  return {
    config,
    source: path,
    tokenizerPath,
    weights: new Weights(ck.source),
    packed: await ck.packed(),
  };
}

const tokenizers = new WeakMap<object, Promise<Tokenizer>>();
/** Tokenizers by file and load options, shared by the models that read the same file. */
const tokenizerFiles = new Map<string, Promise<Tokenizer>>();

/**
 * The model's tokenizer (loaded once per file and load options, so a quantized copy of a model
 * shares its tokenizer object, and checked once per weight store). Checks that its vocabulary
 * fits the embedding. Throws when the model has no tokenizer path.
 */
export function getTokenizer(model: Model): Promise<Tokenizer> {
  let t = tokenizers.get(model.weights);
  if (!t) {
    if (!model.tokenizerPath) {
      return Promise.reject(
        new FormatError(
          model.source,
          "no tokenizer found for this model; pass { tokenizer: <folder or tok.bin> } to loadModel",
        ),
      );
    }
    const path = model.tokenizerPath;
    const opts = {
      vocabSize: path.endsWith(".bin") ? model.config.vocabSize : undefined,
      bos: model.config.family === "opt" ? "</s>" : undefined,
    };
    const key = JSON.stringify([path, opts.vocabSize, opts.bos]);
    let file = tokenizerFiles.get(key);
    if (!file) {
      const p = loadTokenizer(path, opts);
      file = p;
      tokenizerFiles.set(key, p);
      p.catch(() => {
        if (tokenizerFiles.get(key) === p) tokenizerFiles.delete(key);
      });
    }
    t = file.then((tok) => {
      checkVocabFits(tok, model.config.vocabSize, model.source);
      return tok;
    });
    tokenizers.set(model.weights, t);
  }
  return t;
}
