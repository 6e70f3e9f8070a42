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

/** Whether a file or folder exists at `p` (any stat error counts as absent). */
export async function exists(p: string): Promise<boolean> {
  try {
    await Deno.stat(p);
    return true;
  } catch {
    return false;
  }
}

async function readJson(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    throw new ConfigError(`${file}: cannot read (${(e as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new FormatError(file, `not valid JSON (${(e as Error).message})`);
  }
}

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
  if (!(await exists(cfgFile))) {
    throw new ConfigError(`${dir}: no config.json; a Hugging Face checkpoint folder needs one`);
  }
  const config = await readJson(cfgFile);
  const genFile = `${dir}/generation_config.json`;
  const generationConfig = (await exists(genFile)) ? await readJson(genFile) : undefined;

  let shardFiles: string[];
  let weightMap: Record<string, string> | undefined;
  if (await exists(`${dir}/model.safetensors.index.json`)) {
    const idx = await readJson(`${dir}/model.safetensors.index.json`);
    weightMap = idx.weight_map as Record<string, string>;
    if (!weightMap || typeof weightMap !== "object") {
      throw new FormatError(`${dir}/model.safetensors.index.json`, 'no "weight_map" object');
    }
    shardFiles = [...new Set(Object.values(weightMap))];
  } else if (await exists(`${dir}/model.safetensors`)) {
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
      if (weightMap && weightMap[raw] !== undefined && weightMap[raw] !== f) continue;
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
