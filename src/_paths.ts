/**
 * Default locations: the shared data folder (`$QUANTLAB_DATA`, else `../shared/data` beside the
 * repository) and the stories260K model used by the demo and CLI defaults.
 * @module
 */

/** The data root: `$QUANTLAB_DATA` or `<repo>/../shared/data`. */
export function dataRoot(): string {
  let env: string | undefined;
  try {
    env = Deno.env.get("QUANTLAB_DATA");
  } catch { /* no env permission */ }
  return env ?? new URL("../../shared/data", import.meta.url).pathname;
}

/** stories260K: the local HF copy when present, else the hub name. */
export async function defaultModelPath(): Promise<string> {
  const local = `${dataRoot()}/models/stories260K-hf`;
  try {
    await Deno.stat(`${local}/config.json`);
    return local;
  } catch {
    return "karpathy/tinyllamas/stories260K";
  }
}
