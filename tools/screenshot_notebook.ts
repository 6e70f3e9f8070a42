/**
 * Exports an executed notebook to HTML (`jupyter nbconvert --to html`), screenshots it with
 * headless Chromium, and checks that the plots rendered (offline: plotly.js is inlined by
 * `src/viz/display.ts`): the PNG must not be blank and must hold plotly's trace colors.
 *
 * ```sh
 * deno run -A tools/screenshot_notebook.ts [notebooks/_executed/00_quickstart.ipynb] [out.png]
 * ```
 *
 * Default PNG: `out/screenshots/<name>.png` (the HTML lands beside it). Environment:
 * `WINDOW_SIZE` (default `1200,3000`), `CHROMIUM` (default `chromium`). Needs
 * `apt-get install -y chromium jupyter-nbconvert`. Exit status 0 when the check passes, 1 when
 * the page looks blank or has no plot pixels, 2 when a tool failed.
 * @module
 */

/** A decoded PNG: 8-bit RGBA pixels, row-major. */
export interface Image {
  /** Width in pixels. */
  width: number;
  /** Height in pixels. */
  height: number;
  /** `width · height · 4` bytes, RGBA. */
  rgba: Uint8Array;
}

async function inflate(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as BlobPart]).stream().pipeThrough(
    new DecompressionStream("deflate"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/**
 * Decodes a non-interlaced 8-bit PNG (grayscale, RGB, RGBA, gray+alpha; what Chromium writes)
 * with the platform's `DecompressionStream("deflate")`.
 */
export async function decodePng(bytes: Uint8Array): Promise<Image> {
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  if (!sig.every((b, i) => bytes[i] === b)) throw new Error("not a PNG");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 8;
  let width = 0, height = 0, depth = 0, color = 0, interlace = 0;
  const idat: Uint8Array[] = [];
  while (pos < bytes.length) {
    const len = view.getUint32(pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    const body = bytes.subarray(pos + 8, pos + 8 + len);
    if (type === "IHDR") {
      const h = new DataView(body.buffer, body.byteOffset, body.byteLength);
      width = h.getUint32(0);
      height = h.getUint32(4);
      depth = body[8];
      color = body[9];
      interlace = body[12];
    } else if (type === "IDAT") idat.push(body);
    else if (type === "IEND") break;
    pos += 12 + len;
  }
  const channels = ({ 0: 1, 2: 3, 4: 2, 6: 4 } as Record<number, number>)[color];
  if (depth !== 8 || !channels || interlace) {
    throw new Error(`unsupported PNG: depth ${depth}, color type ${color}, interlace ${interlace}`);
  }
  const joined = new Uint8Array(idat.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of idat) {
    joined.set(c, o);
    o += c.length;
  }
  const raw = await inflate(joined);
  const stride = width * channels;
  const px = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)];
    const src = y * (stride + 1) + 1;
    const dst = y * stride;
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? px[dst + x - channels] : 0;
      const b = y > 0 ? px[dst - stride + x] : 0;
      const c = x >= channels && y > 0 ? px[dst - stride + x - channels] : 0;
      const v = raw[src + x];
      px[dst + x] = f === 0
        ? v
        : f === 1
        ? v + a
        : f === 2
        ? v + b
        : f === 3
        ? v + ((a + b) >> 1)
        : v + paeth(a, b, c);
    }
  }
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    const s = i * channels;
    const [r, g, b, al] = channels === 4
      ? [px[s], px[s + 1], px[s + 2], px[s + 3]]
      : channels === 3
      ? [px[s], px[s + 1], px[s + 2], 255]
      : channels === 2
      ? [px[s], px[s], px[s], px[s + 1]]
      : [px[s], px[s], px[s], 255];
    rgba.set([r, g, b, al], i * 4);
  }
  return { width, height, rgba };
}

/** Pixel statistics of an image: luminance variance, and pixels close to plotly's first two
 * trace colors (#1f77b4 blue, #ff7f0e orange). */
export function imageStats(img: Image): { variance: number; plotBlue: number; plotOrange: number } {
  let s = 0, s2 = 0, blue = 0, orange = 0;
  const n = img.width * img.height;
  const near = (r: number, g: number, b: number, c: number[]) =>
    Math.abs(r - c[0]) + Math.abs(g - c[1]) + Math.abs(b - c[2]) < 24;
  for (let i = 0; i < n; i++) {
    const r = img.rgba[i * 4], g = img.rgba[i * 4 + 1], b = img.rgba[i * 4 + 2];
    const l = 0.299 * r + 0.587 * g + 0.114 * b;
    s += l;
    s2 += l * l;
    if (near(r, g, b, [31, 119, 180])) blue++;
    if (near(r, g, b, [255, 127, 14])) orange++;
  }
  const mean = s / n;
  return { variance: s2 / n - mean * mean, plotBlue: blue, plotOrange: orange };
}

async function run(cmd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr);
    throw new Error(`${cmd} failed (${out.code}):\n${err.slice(-2000)}`);
  }
}

/** Options of {@link screenshotNotebook}. */
export interface ScreenshotOptions {
  /** Chromium window size `"W,H"` (default `$WINDOW_SIZE` or `"1200,3000"`). */
  windowSize?: string;
  /** Chromium binary (default `$CHROMIUM` or `chromium`). */
  chromium?: string;
}

/** Exports `notebook` to HTML beside `png`, screenshots it into `png`, returns the HTML path. */
export async function screenshotNotebook(
  notebook: string,
  png: string,
  opts: ScreenshotOptions = {},
): Promise<string> {
  const absPng = png.startsWith("/") ? png : `${Deno.cwd()}/${png}`;
  const dir = absPng.replace(/\/[^/]*$/, "");
  const base = absPng.replace(/^.*\//, "").replace(/\.png$/, "");
  await Deno.mkdir(dir, { recursive: true });
  await run("jupyter", [
    "nbconvert",
    "--to",
    "html",
    notebook,
    "--output-dir",
    dir,
    "--output",
    base,
  ]);
  const html = `${dir}/${base}.html`;
  const profile = await Deno.makeTempDir({ prefix: "quantlab-chromium-" });
  try {
    await run(opts.chromium ?? Deno.env.get("CHROMIUM") ?? "chromium", [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
      "--hide-scrollbars",
      "--virtual-time-budget=15000",
      `--user-data-dir=${profile}`,
      `--screenshot=${absPng}`,
      `--window-size=${opts.windowSize ?? Deno.env.get("WINDOW_SIZE") ?? "1200,3000"}`,
      `file://${html}`,
    ]);
  } finally {
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  }
  return html;
}

if (import.meta.main) {
  const nb = Deno.args[0] ?? "notebooks/_executed/00_quickstart.ipynb";
  const name = nb.replace(/^.*\//, "").replace(/\.ipynb$/, "");
  const png = Deno.args[1] ?? `out/screenshots/${name}.png`;
  try {
    const html = await screenshotNotebook(nb, png);
    const stats = imageStats(await decodePng(await Deno.readFile(png)));
    console.log(`${html}\n${png}: ${JSON.stringify(stats)}`);
    const ok = stats.variance > 100 && stats.plotBlue + stats.plotOrange > 2000;
    if (!ok) console.error("screenshot looks blank or has no rendered plots");
    Deno.exit(ok ? 0 : 1);
  } catch (e) {
    console.error(String(e));
    Deno.exit(2);
  }
}
