/**
 * Mesa's Vulkan drivers (llvmpipe/lavapipe included) print `error: XDG_RUNTIME_DIR is invalid or
 * not set in the environment.` when that variable is missing, as on CI runners, containers and
 * ssh sessions without a login manager. {@linkcode ensureRuntimeDir} sets it to a private folder
 * (`<tmp>/quantlab-runtime-<uid>`, mode 0700) before the WebGPU adapter is requested, so runs
 * stay quiet. A valid existing value is kept; without env/write permission nothing changes.
 * @module
 */

let done = false;

function isUsableDir(path: string): boolean {
  try {
    const st = Deno.statSync(path);
    return st.isDirectory && (st.uid === null || st.uid === Deno.uid());
  } catch {
    return false;
  }
}

/** Sets `XDG_RUNTIME_DIR` to a private folder when it is unset or unusable (once a process). */
export function ensureRuntimeDir(): void {
  if (done) return;
  done = true;
  try {
    const cur = Deno.env.get("XDG_RUNTIME_DIR");
    if (cur && isUsableDir(cur)) return;
    const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
    const dir = `${tmp}/quantlab-runtime-${Deno.uid() ?? "user"}`;
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (!isUsableDir(dir)) return;
    Deno.chmodSync(dir, 0o700);
    Deno.env.set("XDG_RUNTIME_DIR", dir);
  } catch {
    // No permission (or no such platform feature): leave the environment as it is.
  }
}
