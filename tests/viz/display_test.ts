import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import {
  figureBundle,
  figureHtml,
  isJupyter,
  plotlyPath,
  resetPlotlyInlining,
  show,
} from "../../src/viz/display.ts";
import { pplVsBits } from "../../src/viz/figures.ts";

const fig = pplVsBits([{ method: "gptq", bitsPerWeight: 3.25, ppl: 14 }], {
  title: "a </script> b",
});

Deno.test("plotly.min.js is found through the import map / node_modules", () => {
  assert(plotlyPath().endsWith("plotly.min.js"));
  assert(Deno.statSync(plotlyPath()).size > 1_000_000);
  assertEquals(isJupyter(), false);
});

Deno.test("figureHtml escapes the spec and waits for window.Plotly", () => {
  const html = figureHtml(fig);
  assert(!html.includes("a </script> b"));
  assertStringIncludes(html, "window.Plotly.newPlot");
  assert(!html.includes("plotly.js v"));
});

Deno.test("figureBundle inlines plotly.js only in the first figure", async () => {
  resetPlotlyInlining();
  const [a, b] = await Promise.all([figureBundle(fig), figureBundle(fig)]);
  const c = await figureBundle(fig, { inlinePlotly: true });
  const size = (x: Record<string, unknown>) => (x["text/html"] as string).length;
  assert(size(a) > 1_000_000, "first figure carries plotly.js");
  assert(size(b) < 10_000, "second figure references window.Plotly only");
  assert(size(c) > 1_000_000);
  assertEquals(a["application/vnd.plotly.v1+json"], { data: fig.data, layout: fig.layout });
  assertStringIncludes(a["text/plain"] as string, "1 trace");
});

Deno.test("show writes a standalone HTML file outside Jupyter; prints tables", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = await show(fig, { file: `${dir}/sub/f.html` });
    assertEquals(file, `${dir}/sub/f.html`);
    const html = await Deno.readTextFile(file!);
    assertStringIncludes(html, "<!DOCTYPE html>");
    assertStringIncludes(html, "plotly.js v");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
