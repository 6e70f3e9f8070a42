/**
 * Runs the notebooks headlessly: finds a Python 3 that has `jupyter_client` and `nbformat` and
 * calls `tools/run_notebooks.py` with the same arguments (see that file for the options).
 *
 * ```sh
 * deno run -A tools/run_notebooks.ts                  # every notebooks/*.ipynb
 * deno run -A tools/run_notebooks.ts notebooks/00_quickstart.ipynb --timeout 600
 * ```
 *
 * Python is looked up as `$QUANTLAB_PYTHON`, then `/usr/bin/python3` (Debian's, where apt puts
 * python3-jupyter-client; a pyenv/venv `python3` earlier on PATH often lacks it), then `python3`.
 * Exit status: the runner's (0 ok, 1 a cell failed, 2 setup); 3 when no suitable Python exists.
 * @module
 */

/** The runner script next to this file. */
export const RUNNER_PY: string = new URL("./run_notebooks.py", import.meta.url).pathname;

/** The apt packages the runner needs (Debian/Ubuntu). */
export const APT_PACKAGES: string[] = [
  "jupyter-nbconvert",
  "python3-nbclient",
  "jupyter-client",
  "python3-ipykernel",
];

async function works(python: string): Promise<boolean> {
  try {
    const out = await new Deno.Command(python, {
      args: ["-c", "import jupyter_client, nbformat"],
      stdout: "null",
      stderr: "null",
      env: { PYDEVD_DISABLE_FILE_VALIDATION: "1" },
    }).output();
    return out.success;
  } catch {
    return false;
  }
}

/** A Python interpreter that can import jupyter_client and nbformat, or undefined. */
export async function findPython(): Promise<string | undefined> {
  const env = Deno.env.get("QUANTLAB_PYTHON");
  for (const p of [env, "/usr/bin/python3", "python3"]) {
    if (p && await works(p)) return p;
  }
  return undefined;
}

/** Options of {@link runNotebooks}. */
export interface RunNotebooksOptions {
  /** Capture stdout/stderr instead of inheriting them (default false). */
  capture?: boolean;
}

/** Result of {@link runNotebooks}. */
export interface RunNotebooksResult {
  /** The runner's exit code (3: no Python with jupyter_client). */
  code: number;
  /** Captured stdout + stderr (empty unless `capture`). */
  output: string;
}

/** Runs `tools/run_notebooks.py` with `args`; resolves to its exit code and (captured) output. */
export async function runNotebooks(
  args: string[],
  opts: RunNotebooksOptions = {},
): Promise<RunNotebooksResult> {
  const python = await findPython();
  if (!python) {
    const msg = "run_notebooks: no python3 with jupyter_client and nbformat; install with\n" +
      `  apt-get install -y ${APT_PACKAGES.join(" ")}\n` +
      "or set QUANTLAB_PYTHON to an interpreter that has them\n";
    if (!opts.capture) console.error(msg.trimEnd());
    return { code: 3, output: msg };
  }
  const mode = opts.capture ? "piped" : "inherit";
  const out = await new Deno.Command(python, {
    args: [RUNNER_PY, ...args],
    stdout: mode,
    stderr: mode,
    env: { PYDEVD_DISABLE_FILE_VALIDATION: "1", DENO: Deno.execPath() },
  }).output();
  const dec = new TextDecoder();
  const output = opts.capture ? dec.decode(out.stdout) + dec.decode(out.stderr) : "";
  return { code: out.code, output };
}

if (import.meta.main) {
  const { code } = await runNotebooks(Deno.args);
  Deno.exit(code);
}
