/**
 * Notebook tests on the real Deno Jupyter kernel (through tools/run_notebooks.py):
 * 1. the runner keeps outputs that arrive after the kernel reports idle (≥ 1 MB displays),
 *    applies display updates, renders quantlab figures/tables/progress, and fails on errors;
 * 2. the executed copies of notebooks/*.ipynb have no errors, a plotly bundle in every plot
 *    cell, and the results table, plus per-notebook checks (EXTRA_CHECKS: 01_gptq_step_by_step
 *    prints 0 code mismatches against gptqQuantize). Missing copies, copies older than their
 *    notebook, or all of them when QUANTLAB_RUN_NOTEBOOKS=1, are produced by running the runner
 *    first;
 * 3. with chromium installed, the executed quickstart exported to HTML renders its plots offline
 *    (screenshot not blank, plotly's trace colors present).
 * Both are skipped (ignored, with the reason printed) only when no python3 with jupyter_client
 * is installed: `apt-get install -y jupyter-nbconvert python3-nbclient jupyter-client
 * python3-ipykernel`.
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { findPython, runNotebooks } from "../tools/run_notebooks.ts";
import { decodePng, imageStats, screenshotNotebook } from "../tools/screenshot_notebook.ts";

const python = await findPython();
if (!python) {
  console.warn(
    "notebooks_test: skipped: no python3 with jupyter_client/nbformat (apt-get install -y " +
      "jupyter-nbconvert python3-nbclient jupyter-client python3-ipykernel)",
  );
}

interface Output {
  output_type: string;
  name?: string;
  text?: string | string[];
  data?: Record<string, unknown>;
  ename?: string;
  evalue?: string;
}
interface Cell {
  cell_type: string;
  source: string | string[];
  outputs?: Output[];
  execution_count?: number | null;
}
interface Notebook {
  cells: Cell[];
  metadata: Record<string, unknown>;
}

const join = (s: string | string[] | undefined) => Array.isArray(s) ? s.join("") : s ?? "";

function notebook(sources: string[]): Notebook & { nbformat: number; nbformat_minor: number } {
  return {
    cells: sources.map((source) => ({
      cell_type: "code",
      source,
      metadata: {},
      outputs: [],
      execution_count: null,
    })),
    metadata: {
      kernelspec: { name: "deno", display_name: "Deno", language: "typescript" },
    },
    nbformat: 4,
    nbformat_minor: 4,
  };
}

const VIZ = new URL("../src/viz/mod.ts", import.meta.url).href;

Deno.test({
  name: "runner keeps late ≥ 1 MB outputs, display updates, figures; fails on errors",
  ignore: !python,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "quantlab-nb-" });
    try {
      const late = notebook([
        `await Deno.jupyter.display({ "text/plain": "a".repeat(1_500_000) }, { raw: true }); 1`,
        `await Deno.jupyter.display({ "text/plain": "b".repeat(1_500_000) }, { raw: true }); 2`,
        `await Deno.jupyter.display({ "text/plain": "c".repeat(1_500_000) }, { raw: true }); 3`,
        `import * as plot from ${JSON.stringify(VIZ)};\n` +
        `plot.pplVsBits([{ method: "rtn", bitsPerWeight: 3, ppl: 20 }, { method: "rtn", bitsPerWeight: 4, ppl: 12 }])`,
        `await plot.show(plot.channelMagnitude(new Float32Array([1, 1, 1, 9])))`,
        `plot.resultsTable([{ method: "gptq", bits: 3, ppl: 14.5 }])`,
        `const p = plot.progress("work", 5);\n` +
        `for (let i = 0; i < 5; i++) { p.tick(); await new Promise((r) => setTimeout(r, 120)); }\n` +
        `await p.done("fin");`,
        `Deno.jupyter.display({ "text/plain": "old" }, { raw: true, display_id: "d1" });\n` +
        `await Deno.jupyter.display({ "text/plain": "new" }, { raw: true, display_id: "d1", update: true });\n` +
        `console.log("x"); console.log("y");`,
      ]);
      await Deno.writeTextFile(`${dir}/late.ipynb`, JSON.stringify(late));
      await Deno.writeTextFile(
        `${dir}/fail.ipynb`,
        JSON.stringify(notebook([`1 + 1`, `throw new Error("boom-123")`, `"never"`])),
      );
      const out = `${dir}/out`;
      const res = await runNotebooks(
        [
          `${dir}/late.ipynb`,
          `${dir}/fail.ipynb`,
          "--out-dir",
          out,
          "--grace",
          "1",
          "--keep-going",
        ],
        { capture: true },
      );
      assertEquals(res.code, 1, res.output);
      assertStringIncludes(res.output, "FAILED");
      assertStringIncludes(res.output, "boom-123");

      const nb: Notebook = JSON.parse(await Deno.readTextFile(`${out}/late.ipynb`));
      const outs = nb.cells.map((c) => c.outputs ?? []);
      for (const [i, ch] of ["a", "b", "c"].entries()) {
        const d = outs[i].find((o) => o.output_type === "display_data");
        assert(d, `cell ${i}: the 1.5 MB display output is missing`);
        assertEquals(join(d.data?.["text/plain"] as string).length, 1_500_000);
        assert(join(d.data?.["text/plain"] as string).startsWith(ch));
        const r = outs[i].find((o) => o.output_type === "execute_result");
        assert(r, `cell ${i}: execute_result missing`);
      }
      // a figure as the last expression: plotly bundle + HTML with plotly.js inlined (first figure)
      const fig = outs[3].find((o) => o.output_type === "execute_result");
      assert(fig?.data?.["application/vnd.plotly.v1+json"], "figure: no plotly bundle");
      assert(
        join(fig.data["text/html"] as string).length > 1_000_000,
        "first figure inlines plotly",
      );
      const shown = outs[4].find((o) => o.output_type === "display_data");
      assert(shown?.data?.["application/vnd.plotly.v1+json"], "show(): no plotly bundle");
      assert(
        join(shown.data["text/html"] as string).length < 20_000,
        "later figures skip plotly.js",
      );
      const table = outs[5].find((o) => o.output_type === "execute_result");
      assertStringIncludes(join(table?.data?.["text/html"] as string), "quantlab-results");
      const prog = outs[6].filter((o) => o.output_type === "display_data");
      assertEquals(prog.length, 1, "progress is one live display");
      assertStringIncludes(join(prog[0].data?.["text/plain"] as string), "5/5 100%");
      assertStringIncludes(join(prog[0].data?.["text/plain"] as string), "fin");
      const upd = outs[7];
      assertEquals(
        join(upd.find((o) => o.output_type === "display_data")?.data?.["text/plain"] as string),
        "new",
      );
      assertEquals(join(upd.find((o) => o.output_type === "stream")?.text), "x\ny\n");

      const failed: Notebook = JSON.parse(await Deno.readTextFile(`${out}/fail.ipynb`));
      assertEquals(failed.cells[1].outputs?.[0].output_type, "error");
      assertEquals(failed.cells[2].execution_count ?? null, null, "stops at the first error");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

const NB_DIR = new URL("../notebooks/", import.meta.url).pathname;
const PLOT_CALL =
  /plot\.(weightHistogram|layerErrors|pplVsBits|channelMagnitude|errorHeatmap|show)\s*\(/;

async function listNotebooks(): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(NB_DIR)) {
      if (e.isFile && e.name.endsWith(".ipynb") && !/^[_.]/.test(e.name)) names.push(e.name);
    }
  } catch {
    // no notebooks folder
  }
  return names.sort();
}

function mtime(path: string): number {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

const notebooks = await listNotebooks();

/** All stream and text/plain output of a cell, as one string. */
function cellText(cell: Cell): string {
  return (cell.outputs ?? []).map((o) =>
    o.output_type === "stream" ? join(o.text) : join(o.data?.["text/plain"] as string | undefined)
  ).join("\n");
}

/** Checks of particular notebooks, on top of the common ones (executed copy in, throws). */
const EXTRA_CHECKS: Record<string, (nb: Notebook) => void> = {
  "01_gptq_step_by_step.ipynb": (nb) => {
    const text = nb.cells.map(cellText).join("\n");
    // the notebook's own column loop against gptqQuantize: 3 block sizes + act-order
    const diffs = [
      ...text.matchAll(
        /gptqQuantize \(([^)]*)\) vs notebook loop: (\d+) of (\d+) codes differ; Wq (\w+)/g,
      ),
    ];
    assertEquals(
      diffs.length,
      4,
      `expected 4 codes-match lines, got:\n${diffs.map((m) => m[0]).join("\n")}`,
    );
    for (const m of diffs) {
      assertEquals(m[2], "0", `codes differ: ${m[0]}`);
      assertEquals(m[3], "11008", `unexpected code count: ${m[0]}`);
      assertEquals(m[4], "identical", m[0]);
    }
    assert(diffs.some((m) => m[1].includes("actOrder")), "no act-order codes check");
    const chol = text.match(/max \|UᵀU·H − I\| = ([0-9.e+-]+)/);
    assert(chol, "no Cholesky check output");
    assert(Number(chol[1]) < 1e-9, `UᵀU·H is far from I: ${chol[1]}`);
    const tables = nb.cells.flatMap((c) => c.outputs ?? []).filter((o) =>
      join(o.data?.["text/html"] as string).includes("quantlab-results")
    );
    assertEquals(tables.length, 2, "expected the RTN/GPTQ and the act-order results tables");
    for (const method of ["rtn", "gptq", "gptq act-order"]) {
      assertStringIncludes(join(tables[1].data?.["text/plain"] as string), method);
    }
  },
};

for (const name of notebooks) {
  Deno.test({
    name: `executed ${name}: no errors, plotly bundle in every plot cell, results table`,
    ignore: !python,
    fn: async () => {
      const executed = `${NB_DIR}_executed/${name}`;
      const force = Deno.env.get("QUANTLAB_RUN_NOTEBOOKS") === "1";
      if (force || mtime(executed) < mtime(`${NB_DIR}${name}`)) {
        const res = await runNotebooks([`${NB_DIR}${name}`], { capture: true });
        assertEquals(res.code, 0, res.output);
      }
      const nb: Notebook = JSON.parse(await Deno.readTextFile(executed));
      assert(
        (nb.metadata.quantlab_runner as { ok?: boolean } | undefined)?.ok,
        "runner said not ok",
      );
      let tables = 0;
      for (const [i, cell] of nb.cells.entries()) {
        if (cell.cell_type !== "code" || !join(cell.source).trim()) continue;
        const outs = cell.outputs ?? [];
        assert(cell.execution_count != null, `cell ${i} was not executed`);
        const err = outs.find((o) => o.output_type === "error");
        assert(!err, `cell ${i}: ${err?.ename}: ${err?.evalue}`);
        if (PLOT_CALL.test(join(cell.source))) {
          assert(
            outs.some((o) => o.data?.["application/vnd.plotly.v1+json"]),
            `cell ${i} plots but has no application/vnd.plotly.v1+json output:\n${
              join(cell.source)
            }`,
          );
        }
        tables += outs.filter((o) =>
          join(o.data?.["text/html"] as string).includes("quantlab-results")
        ).length;
      }
      if (nb.cells.some((c) => join(c.source).includes("resultsTable("))) {
        assert(tables > 0, "no results table output");
      }
      EXTRA_CHECKS[name]?.(nb);
    },
  });
}

async function hasChromium(): Promise<boolean> {
  try {
    return (await new Deno.Command("chromium", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    })
      .output()).success;
  } catch {
    return false;
  }
}

const QUICKSTART = `${NB_DIR}_executed/00_quickstart.ipynb`;
const chromium = python && notebooks.includes("00_quickstart.ipynb") && await hasChromium();
if (python && !chromium) console.warn("notebooks_test: screenshot test skipped: no chromium");

Deno.test({
  name: "executed quickstart exported to HTML renders its plots offline (headless chromium)",
  ignore: !chromium,
  fn: async () => {
    // Kept as an artifact (out/ is git-ignored): out/notebooks/00_quickstart.png.
    const dir = new URL("../out/notebooks/", import.meta.url).pathname;
    await Deno.mkdir(dir, { recursive: true });
    await screenshotNotebook(QUICKSTART, `${dir}00_quickstart.png`);
    const img = await decodePng(await Deno.readFile(`${dir}00_quickstart.png`));
    assertEquals([img.width, img.height], [1200, 3000]);
    const stats = imageStats(img);
    assert(stats.variance > 100, `blank page: ${JSON.stringify(stats)}`);
    assert(stats.plotBlue + stats.plotOrange > 2000, `no plot pixels: ${JSON.stringify(stats)}`);
  },
});
