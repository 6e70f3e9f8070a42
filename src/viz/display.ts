/**
 * Rendering figures and tables: MIME bundles for the Deno Jupyter kernel, standalone HTML files
 * elsewhere.
 *
 * In Jupyter a figure is sent as `application/vnd.plotly.v1+json` (JupyterLab's plotly
 * renderer) plus a `text/html` fallback that draws it with plotly.js, so notebooks exported with
 * `jupyter nbconvert --to html` render offline. plotly.js (~4.8 MB, from the npm package
 * `plotly.js-dist-min`) is read lazily, once per kernel, and inlined only in the first figure's
 * HTML; later figures wait for `window.Plotly`. Pass `{ inlinePlotly: true }` to `show` to inline
 * it again (e.g. after re-running cells out of order). The file is found through
 * `import.meta.resolve("plotly.js-dist-min")` (deno.json's import map, `nodeModulesDir: "auto"`),
 * then by walking up to a `node_modules/plotly.js-dist-min/plotly.min.js`; the environment
 * variable `QUANTLAB_PLOTLY_JS` overrides both.
 * @module
 */
import { UnsupportedError } from "../errors.ts";
import { writeFileAtomic } from "../io/fs.ts";
import type { Figure } from "./figures.ts";

/** A Jupyter MIME bundle: MIME type → data. */
export type MimeBundle = Record<string, unknown>;

/** The symbol the Deno kernel calls to render a cell's result (`Deno.jupyter.$display`). */
export const JUPYTER_DISPLAY: symbol = Symbol.for("Jupyter.display");

/** The part of `Deno.jupyter` this module uses. */
export interface JupyterApi {
  /** Sends a MIME bundle (with `{ raw: true }`), optionally with a display id to update. */
  display(
    obj: unknown,
    opts?: { raw?: boolean; update?: boolean; display_id?: string },
  ): Promise<void>;
  /** Publishes a message on the IOPub channel. */
  broadcast(msgType: string, content: Record<string, unknown>): Promise<void>;
}

/** Options of {@link show}. */
export interface ShowOptions {
  /** Outside Jupyter: the HTML file to write (default `out/plots/<title>.html`). */
  file?: string;
  /** In Jupyter: inline plotly.js in this figure's HTML even if an earlier figure did. */
  inlinePlotly?: boolean;
  /** Plot height in pixels (default 460). */
  height?: number;
}

/**
 * The Deno Jupyter API when this code runs in the `deno jupyter` kernel, else `undefined`.
 * (`Deno.jupyter` throws outside the kernel; this never throws.)
 */
export function jupyter(): JupyterApi | undefined {
  try {
    const j = (Deno as unknown as { jupyter?: JupyterApi }).jupyter;
    return typeof j?.broadcast === "function" ? j : undefined;
  } catch {
    return undefined;
  }
}

/** True when running in the Deno Jupyter kernel. */
export function isJupyter(): boolean {
  return jupyter() !== undefined;
}

/**
 * Gives `obj` a non-enumerable `Symbol.for("Jupyter.display")` method returning `bundle()`, so
 * the Deno kernel renders it when it is a cell's last expression. The object stays plain data
 * (JSON and deep-equality ignore the method). Returns `obj`.
 */
export function withDisplay<T extends object>(
  obj: T,
  bundle: () => MimeBundle | Promise<MimeBundle>,
): T {
  Object.defineProperty(obj, JUPYTER_DISPLAY, {
    value: bundle,
    enumerable: false,
    configurable: true,
    writable: true,
  });
  return obj;
}

function fileUrlToPath(u: string): string {
  const p = decodeURIComponent(new URL(u).pathname);
  return /^\/[A-Za-z]:\//.test(p) ? p.slice(1) : p;
}

function envVar(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function walkUp(dir: string): string | undefined {
  let d = dir.replace(/[\\/]+$/, "");
  for (let i = 0; i < 32 && d; i++) {
    const p = `${d}/node_modules/plotly.js-dist-min/plotly.min.js`;
    if (exists(p)) return p;
    const parent = d.replace(/[\\/][^\\/]*$/, "");
    if (parent === d) break;
    d = parent;
  }
  return undefined;
}

/** The path of `plotly.min.js` from the npm package `plotly.js-dist-min`. */
export function plotlyPath(): string {
  const env = envVar("QUANTLAB_PLOTLY_JS");
  if (env) return env;
  try {
    const u = import.meta.resolve("plotly.js-dist-min");
    if (u.startsWith("file:")) {
      const p = fileUrlToPath(u);
      const min = p.replace(/[^\\/]*$/, "plotly.min.js");
      if (exists(min)) return min;
      if (exists(p)) return p;
    }
  } catch {
    // not in the import map: fall through
  }
  const here = import.meta.url.startsWith("file:")
    ? walkUp(fileUrlToPath(new URL(".", import.meta.url).href))
    : undefined;
  const found = here ?? walkUp(Deno.cwd());
  if (found) return found;
  throw new UnsupportedError(
    "plotly.min.js not found: run `deno install` (npm:plotly.js-dist-min in deno.json) or set " +
      "QUANTLAB_PLOTLY_JS to the file",
  );
}

let plotlySource: Promise<string> | undefined;
let plotlyInlined = false;

/** The text of plotly.min.js, read once per process (kernel) and safe to inline in `<script>`. */
export function plotlyJs(): Promise<string> {
  plotlySource ??= Deno.readTextFile(plotlyPath()).then((s) =>
    s.replace(/<\/script/gi, "<\\/script")
  );
  plotlySource.catch(() => (plotlySource = undefined));
  return plotlySource;
}

function jsonForScript(x: unknown): string {
  return JSON.stringify(x).replace(/<\//g, "<\\/").replace(/<!--/g, "<\\!--");
}

let figureCounter = 0;

function figureId(): string {
  figureCounter++;
  return `quantlab-fig-${Date.now().toString(36)}-${figureCounter}`;
}

function titleOf(fig: Figure): string {
  const t = fig.layout?.title as { text?: string } | string | undefined;
  return (typeof t === "string" ? t : t?.text) ?? "figure";
}

/**
 * The HTML that draws `fig` with plotly.js: a `<div>` and a `<script>` that waits for
 * `window.Plotly`. With `plotly`, that source is inlined first in its own `<script>`.
 */
export function figureHtml(fig: Figure, opts: { plotly?: string; height?: number } = {}): string {
  const id = figureId();
  const height = opts.height ?? 460;
  const spec = jsonForScript({ data: fig.data, layout: fig.layout });
  const lib = opts.plotly === undefined
    ? ""
    : `<script type="text/javascript">${opts.plotly}</script>\n`;
  return `<div id="${id}" class="quantlab-plot" style="width:100%;height:${height}px;"></div>\n` +
    lib +
    `<script type="text/javascript">(function () {
  var fig = ${spec};
  var tries = 0;
  function draw() {
    var el = document.getElementById("${id}");
    if (window.Plotly && el) {
      window.Plotly.newPlot(el, fig.data, fig.layout, { responsive: true, displaylogo: false });
    } else if (tries++ < 400) {
      setTimeout(draw, 50);
    } else if (el) {
      el.textContent = "plotly.js did not load: re-run the first plot cell or show(fig, { inlinePlotly: true })";
    }
  }
  draw();
})();</script>`;
}

/**
 * The Jupyter MIME bundle of a figure: `application/vnd.plotly.v1+json`, `text/html` (plotly.js
 * inlined in the first figure of the kernel, or when `inlinePlotly`), and `text/plain`.
 */
export async function figureBundle(
  fig: Figure,
  opts: { inlinePlotly?: boolean; height?: number } = {},
): Promise<MimeBundle> {
  const inline = opts.inlinePlotly ?? !plotlyInlined;
  let plotly: string | undefined;
  if (inline) {
    plotlyInlined = true; // before awaiting, so concurrent figures do not inline it twice
    try {
      plotly = await plotlyJs();
    } catch (e) {
      plotlyInlined = false;
      throw e;
    }
  }
  return {
    "application/vnd.plotly.v1+json": { data: fig.data, layout: fig.layout },
    "text/html": figureHtml(fig, { plotly, height: opts.height }),
    "text/plain": `<plotly figure: ${titleOf(fig)} (${fig.data.length} trace(s))>`,
  };
}

/** A standalone HTML document drawing `fig`, with plotly.js inlined (renders offline). */
export async function figureDocument(fig: Figure, opts: { height?: number } = {}): Promise<string> {
  const title = titleOf(fig).replace(/[<>&"]/g, "");
  return `<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>${title}</title></head>\n<body>\n` +
    figureHtml(fig, { plotly: await plotlyJs(), height: opts.height ?? 600 }) +
    "\n</body></html>\n";
}

function isFigure(x: unknown): x is Figure {
  return typeof x === "object" && x !== null && Array.isArray((x as Figure).data) &&
    typeof (x as Figure).layout === "object";
}

function slug(s: string): string {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 60) || "figure";
}

/**
 * Renders a figure, a results table (anything with `html` and `text` strings) or any object with
 * a `Symbol.for("Jupyter.display")` method.
 *
 * - In Jupyter: displays it (a new output of the running cell); resolves to `undefined`.
 * - Elsewhere: a figure is written as a standalone HTML file (`opts.file`, default
 *   `out/plots/<title>.html`) and the path is returned; a table's text is printed to stdout.
 */
export async function show(obj: unknown, opts: ShowOptions = {}): Promise<string | undefined> {
  const j = jupyter();
  if (isFigure(obj)) {
    if (j) {
      await j.display(await figureBundle(obj, opts), { raw: true });
      return undefined;
    }
    const file = opts.file ?? `out/plots/${slug(titleOf(obj))}.html`;
    const dir = file.replace(/[\\/][^\\/]*$/, "");
    if (dir !== file) await Deno.mkdir(dir, { recursive: true });
    await writeFileAtomic(file, await figureDocument(obj, opts));
    return file;
  }
  const t = obj as { html?: unknown; text?: unknown };
  if (typeof t?.html === "string" && typeof t?.text === "string") {
    if (j) await j.display({ "text/html": t.html, "text/plain": t.text }, { raw: true });
    else console.log(t.text);
    return undefined;
  }
  const render = (obj as Record<symbol, unknown> | undefined)?.[JUPYTER_DISPLAY];
  if (typeof render === "function") {
    const bundle = await render.call(obj);
    if (j) await j.display(bundle, { raw: true });
    else console.log((bundle as MimeBundle)["text/plain"] ?? bundle);
    return undefined;
  }
  throw new UnsupportedError("show: expected a figure ({ data, layout }) or a results table");
}

/** Forgets that plotly.js was inlined, so the next figure inlines it again (tests, re-runs). */
export function resetPlotlyInlining(): void {
  plotlyInlined = false;
}
