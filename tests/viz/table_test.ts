import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { resultsTable } from "../../src/viz/table.ts";

const rows = [
  { method: "fp32", bits: 32, bitsPerWeight: 32, ppl: 10.123, seconds: 0 },
  { method: "rtn", bits: 3, bitsPerWeight: 3.25, ppl: 25.5, seconds: 0.04 },
  { method: "gptq <act>", bits: 3, bitsPerWeight: 3.25, ppl: 14.0, seconds: 2.46, actOrder: true },
];

Deno.test("resultsTable: column order, formatting, text alignment", () => {
  const t = resultsTable(rows);
  assertEquals(t.columns, ["method", "bits", "bitsPerWeight", "ppl", "seconds", "actOrder"]);
  const lines = t.text.split("\n");
  assertEquals(lines.length, 5);
  assertEquals(lines[0].split(/\s+/), [
    "method",
    "bits",
    "bits/weight",
    "perplexity",
    "time",
    "(s)",
    "actOrder",
  ]);
  assertStringIncludes(lines[3], "3.250");
  assertStringIncludes(lines[3], "25.50");
  assertStringIncludes(lines[4], "yes");
  assertStringIncludes(lines[2], "-"); // missing actOrder
  // numeric columns are right-aligned: all data lines end the ppl column at the same offset
  const ends = lines.slice(2).map((l) => l.indexOf(".", l.indexOf("3") + 8));
  assert(ends.every((e) => e > 0));
  assertEquals(String(t), t.text);
});

Deno.test("resultsTable: HTML escapes, bolds best ppl, has caption", () => {
  const t = resultsTable(rows, { title: "stories260K" });
  assertStringIncludes(t.html, "<table");
  assertStringIncludes(t.html, "gptq &lt;act&gt;");
  assertStringIncludes(t.html, "<b>10.12</b>"); // lowest perplexity
  assertStringIncludes(t.html, "stories260K</caption>");
  assertEquals((t.html.match(/<tr>/g) ?? []).length, 4);
  const none = resultsTable(rows, { best: false, columns: ["method", "ppl"] });
  assert(!none.html.includes("<b>"));
  assertEquals(none.text.split("\n")[0].trim().split(/\s+/), ["method", "perplexity"]);
});

Deno.test("resultsTable renders as HTML in Jupyter through the display symbol", async () => {
  const t = resultsTable(rows);
  const render = (t as unknown as Record<symbol, () => Promise<Record<string, string>>>)[
    Symbol.for("Jupyter.display")
  ];
  const bundle = await render();
  assertEquals(bundle["text/html"], t.html);
  assertEquals(bundle["text/plain"], t.text);
});
