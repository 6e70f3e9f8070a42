/**
 * Hugging Face checkpoint folders: `config.json`, `model.safetensors` or a sharded
 * `model.safetensors.index.json`, `generation_config.json`, tokenizer files. Pickled
 * `pytorch_model.bin` checkpoints are refused (loading them would run code).
 * @module
 */
import { ConfigError, FormatError, UnsupportedError } from "../errors.ts";
import type { WeightSource } from "./weight_source.ts";
import {
  type NonFinitePolicy,
  readHeader,
  readTensor,
  type SafetensorsHeader,
} from "./safetensors.ts";
import { jsonDepthExceeds } from "./safetensors.ts";
import { clip, fileIfPresent, requireFile, statPath } from "./fs.ts";

/** An opened checkpoint folder. */
export interface HfCheckpoint {
  /** The folder. */
  dir: string;
  /** Parsed config.json. */
  config: Record<string, unknown>;
  /** Parsed generation_config.json, if present. */
  generationConfig?: Record<string, unknown>;
  /** Lazy tensors (names normalised to HF `model.` prefixes). */
  source: WeightSource;
  /** The folder when it holds tokenizer files, else undefined. */
  tokenizerPath?: string;
}

/**
 * Whether a file or folder exists at `p`. Nothing there: false. A symlink loop, a dangling link
 * or an unreadable parent is a `FileKindError` naming `p` (not "absent").
 */
export async function exists(p: string): Promise<boolean> {
  return (await statPath(p)) !== null;
}

/** Largest JSON file read (config, index, generation config): 64 MiB. */
export const MAX_JSON_BYTES = 64 * 2 ** 20;
/** Deepest nesting accepted in those JSON files (a config nests 2–3 deep). */
export const MAX_JSON_DEPTH = 32;

/**
 * Reads a JSON file that must hold an object: a regular file (folders, FIFOs and devices are
 * refused before opening), at most {@linkcode MAX_JSON_BYTES}, nesting at most
 * {@linkcode MAX_JSON_DEPTH}. `null`, arrays and scalars are a ConfigError naming the file.
 */
export async function readJsonObject(file: string): Promise<Record<string, unknown>> {
  const st = await requireFile(file, "JSON file");
  if (st.size > MAX_JSON_BYTES) {
    throw new FormatError(file, `${st.size} bytes exceeds the ${MAX_JSON_BYTES}-byte JSON limit`);
  }
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(file);
  } catch (e) {
    throw new FormatError(file, `cannot read (${clip((e as Error).message)})`);
  }
  const deep = jsonDepthExceeds(bytes, MAX_JSON_DEPTH);
  if (deep >= 0) {
    throw new FormatError(file, `JSON nests deeper than ${MAX_JSON_DEPTH} levels (byte ${deep})`);
  }
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new FormatError(file, `not valid UTF-8 JSON (${clip((e as Error).message)})`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    throw new ConfigError(
      `${file}: must hold a JSON object, got ${
        v === null ? "null" : Array.isArray(v) ? "an array" : typeof v
      }`,
    );
  }
  return v as Record<string, unknown>;
}

const readJson = readJsonObject;

/** OPT checkpoints often name tensors "decoder.*"; the forward expects "model.decoder.*". */
export function normaliseName(name: string): string {
  return name.startsWith("decoder.") ? `model.${name}` : name;
}

/** Opens a checkpoint folder: reads config and safetensors headers; tensors load lazily. */
export async function openCheckpoint(
  dir: string,
  opts: { nonFinite?: NonFinitePolicy } = {},
): Promise<HfCheckpoint> {
  const hasSafetensors = (await exists(`${dir}/model.safetensors`)) ||
    (await exists(`${dir}/model.safetensors.index.json`));
  if (!hasSafetensors) {
    for (const p of ["pytorch_model.bin", "pytorch_model.bin.index.json"]) {
      if (await exists(`${dir}/${p}`)) {
        throw new UnsupportedError(
          `${dir}/${p}: pickled PyTorch checkpoints are refused (unpickling runs arbitrary code). ` +
            `Convert it to safetensors first, e.g. in Python: ` +
            `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, safe_serialization=True)`,
        );
      }
    }
  }
  const cfgFile = `${dir}/config.json`;
  if (!(await fileIfPresent(cfgFile, "config.json"))) {
    throw new ConfigError(`${dir}: no config.json; a Hugging Face checkpoint folder needs one`);
  }
  const config = await readJson(cfgFile);
  const genFile = `${dir}/generation_config.json`;
  const generationConfig = (await exists(genFile)) ? await readJson(genFile) : undefined;

  let shardFiles: string[];
  let weightMap: Record<string, string> | undefined;
  if (await fileIfPresent(`${dir}/model.safetensors.index.json`, "shard index")) {
    const indexFile = `${dir}/model.safetensors.index.json`;
    const idx = await readJson(indexFile);
    weightMap = idx.weight_map as Record<string, string>;
    if (!weightMap || typeof weightMap !== "object" || Array.isArray(weightMap)) {
      throw new FormatError(indexFile, 'no "weight_map" object');
    }
    for (const [t, f] of Object.entries(weightMap)) {
      if (typeof f !== "string" || !/^[^/\\]+\.safetensors$/.test(f) || f.startsWith(".")) {
        throw new FormatError(
          indexFile,
          `weight_map["${clip(t)}"] must name a .safetensors file in the folder, got ${
            clip(JSON.stringify(f) ?? String(f))
          }`,
        );
      }
    }
    shardFiles = [...new Set(Object.values(weightMap))];
    for (const f of shardFiles) await requireFile(`${dir}/${f}`, "shard named in the index");
  } else if (await fileIfPresent(`${dir}/model.safetensors`, "model.safetensors")) {
    shardFiles = ["model.safetensors"];
  } else {
    throw new FormatError(
      dir,
      "no model.safetensors or model.safetensors.index.json in the folder",
    );
  }
  const headers = new Map<string, SafetensorsHeader>();
  for (const f of shardFiles) headers.set(f, await readHeader(`${dir}/${f}`));
  const where = new Map<string, { h: SafetensorsHeader; raw: string }>();
  for (const [f, h] of headers) {
    for (const raw of h.tensors.keys()) {
      if (weightMap && Object.hasOwn(weightMap, raw) && weightMap[raw] !== f) continue;
      where.set(normaliseName(raw), { h, raw });
    }
  }
  if (weightMap) {
    for (const [raw, f] of Object.entries(weightMap)) {
      if (!headers.get(f)?.tensors.has(raw)) {
        throw new FormatError(`${dir}/${f}`, `index lists tensor "${raw}" but the shard lacks it`);
      }
    }
  }
  const names = [...where.keys()];
  const source: WeightSource = {
    names: () => names,
    shape: (name) => {
      const w = where.get(name);
      return w ? w.h.tensors.get(w.raw)!.shape : undefined;
    },
    dtype: (name) => where.get(name)?.h.tensors.get(where.get(name)!.raw)?.dtype,
    load: (name) => {
      const w = where.get(name);
      if (!w) return Promise.reject(new FormatError(dir, `checkpoint has no tensor "${name}"`));
      return readTensor(w.h, w.raw, { nonFinite: opts.nonFinite });
    },
  };
  const tokFiles = ["tokenizer.json", "vocab.json", "tokenizer.model"];
  let tokenizerPath: string | undefined;
  for (const t of tokFiles) if (await exists(`${dir}/${t}`)) tokenizerPath = dir;
  return { dir, config, generationConfig, source, tokenizerPath };
}
