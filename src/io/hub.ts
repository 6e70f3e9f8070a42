/**
 * Hugging Face hub downloads through `npm:@huggingface/hub` (imported lazily) into a local cache.
 * A name like "facebook/opt-125m" or "karpathy/tinyllamas/stories260K" (repo + subfolder) resolves
 * to a cache folder; offline, one error says what is missing and how to use a local copy.
 * @module
 */
import { OfflineError } from "../errors.ts";
import { writeFileAtomic } from "./fs.ts";

/** Cache root: `$QUANTLAB_CACHE`, else `$HF_HOME/quantlab`, else `~/.cache/quantlab`. */
export function cacheRoot(): string {
  const env = (k: string) => {
    try {
      return Deno.env.get(k);
    } catch {
      return undefined;
    }
  };
  return env("QUANTLAB_CACHE") ?? (env("HF_HOME") ? `${env("HF_HOME")}/quantlab` : undefined) ??
    `${env("HOME") ?? "."}/.cache/quantlab`;
}

/** Splits "owner/repo/sub/dir" into repo "owner/repo" and subfolder "sub/dir". */
export function parseHubName(name: string): { repo: string; sub: string } {
  const parts = name.split("/").filter(Boolean);
  return { repo: parts.slice(0, 2).join("/"), sub: parts.slice(2).join("/") };
}

/** Files worth fetching for a model: configs, safetensors, tokenizers, llama2.c .bin files. */
export function wantedFile(path: string): boolean {
  const base = path.split("/").pop()!;
  return /^(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|vocab)\.json$/
    .test(base) ||
    base === "merges.txt" || base === "tokenizer.model" ||
    base.endsWith(".safetensors") || base === "model.safetensors.index.json" ||
    (base.endsWith(".bin") && !base.startsWith("pytorch_model"));
}

/**
 * Downloads the model files of `name` into the cache (skipping ones already there) and returns the
 * local folder. Throws OfflineError when the hub cannot be reached.
 */
export async function downloadModel(
  name: string,
  opts: { revision?: string; accessToken?: string } = {},
): Promise<string> {
  const { repo, sub } = parseHubName(name);
  const dir = `${cacheRoot()}/hub/${repo.replace("/", "--")}${sub ? `/${sub}` : ""}`;
  const hint =
    `hub model "${name}" is not cached at ${dir} and the Hugging Face hub cannot be reached. ` +
    `Download it elsewhere and pass its local folder to loadModel (a folder with config.json and ` +
    `*.safetensors, or a llama2.c .bin file), or copy it into ${dir}.`;
  try {
    const st = await Deno.stat(`${dir}/.complete`);
    if (st.isFile) return dir;
  } catch { /* not cached */ }
  let hub: typeof import("@huggingface/hub");
  try {
    hub = await import("@huggingface/hub");
  } catch (e) {
    throw new OfflineError(`${hint} (@huggingface/hub failed to load: ${(e as Error).message})`);
  }
  const files: string[] = [];
  try {
    for await (
      const f of hub.listFiles({
        repo,
        recursive: true,
        revision: opts.revision,
        accessToken: opts.accessToken,
      })
    ) {
      if (f.type !== "file") continue;
      if (sub && !f.path.startsWith(`${sub}/`)) continue;
      if (wantedFile(f.path)) files.push(f.path);
    }
  } catch (e) {
    throw new OfflineError(`${hint} (${(e as Error).message})`);
  }
  await Deno.mkdir(dir, { recursive: true });
  for (const path of files) {
    const local = `${dir}/${sub ? path.slice(sub.length + 1) : path}`;
    await Deno.mkdir(local.slice(0, local.lastIndexOf("/")), { recursive: true });
    let blob: Blob | null;
    try {
      blob = await hub.downloadFile({
        repo,
        path,
        revision: opts.revision,
        accessToken: opts.accessToken,
      });
    } catch (e) {
      throw new OfflineError(`${hint} (downloading ${path}: ${(e as Error).message})`);
    }
    if (!blob) throw new OfflineError(`${hint} (${path} not found)`);
    await writeFileAtomic(local, new Uint8Array(await blob.arrayBuffer()));
  }
  await writeFileAtomic(`${dir}/.complete`, new Date().toISOString());
  return dir;
}
