/**
 * The import graph against DESIGN.md's layers (arrows point down; nothing imports upward):
 *
 *   mod.ts > src/cli.ts > src/api.ts, src/demo.ts, src/ledger/ > src/eval/, src/viz/ > src/quant/ >
 *   src/models/ > src/io/ > src/backend/ > src/tensor.ts, src/errors.ts, src/rng.ts,
 *   src/_paths.ts > kernels/
 *
 * Every static `import`/`export … from` and dynamic `import("…")` of a relative module in
 * mod.ts, src/ and kernels/ is read from the source text; an import of a higher layer fails, and
 * so does an import of a `_`-prefixed (private) module from another folder, and an import of
 * `kernels/` from anywhere but `src/backend/` (the forward never touches WGSL). The scanner itself
 * is checked on synthetic sources, and the layer table must place every file it scans.
 */
import { assert, assertEquals } from "@std/assert";

const ROOT = new URL("../", import.meta.url);

/** Layer rank of a repository-relative path (higher may import lower), or undefined. */
export function rank(path: string): number | undefined {
  if (path === "mod.ts") return 9;
  if (path === "src/cli.ts" || path === "src/cli_eval.ts") return 8;
  if (path === "src/api.ts" || path === "src/demo.ts" || path.startsWith("src/ledger/")) return 7;
  if (path.startsWith("src/eval/") || path.startsWith("src/viz/")) return 6;
  if (path.startsWith("src/quant/")) return 5;
  if (path.startsWith("src/models/")) return 4;
  if (path.startsWith("src/io/")) return 3;
  if (path.startsWith("src/backend/")) return 2;
  if (["src/tensor.ts", "src/errors.ts", "src/rng.ts", "src/_paths.ts"].includes(path)) return 1;
  if (path.startsWith("kernels/")) return 0;
  return undefined;
}

/** Relative module specifiers of `src` (static imports/re-exports and dynamic imports). */
export function specifiers(src: string): string[] {
  const out: string[] = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)["'](\.{1,2}\/[^"']+)["']/gm;
  for (const m of src.matchAll(re)) out.push(m[1]);
  return out;
}

function resolve(from: string, spec: string): string {
  const parts = from.split("/").slice(0, -1);
  for (const p of spec.split("/")) {
    if (p === "..") parts.pop();
    else if (p !== ".") parts.push(p);
  }
  return parts.join("/");
}

function dir(p: string): string {
  return p.split("/").slice(0, -1).join("/");
}

/** Upward and private-module violations of one file's imports. */
export function violations(path: string, src: string): string[] {
  const bad: string[] = [];
  const r = rank(path);
  for (const spec of specifiers(src)) {
    const target = resolve(path, spec);
    const t = rank(target);
    if (r !== undefined && t !== undefined && t > r) bad.push(`${path} → ${target} (upward)`);
    if (t === 0 && r !== 0 && r !== 2) bad.push(`${path} → ${target} (kernels only via backend)`);
    const base = target.split("/").pop()!;
    if (base.startsWith("_") && dir(target) !== dir(path) && target !== "src/_paths.ts") {
      bad.push(`${path} → ${target} (private module of another folder)`);
    }
  }
  return bad;
}

async function files(): Promise<string[]> {
  const out = ["mod.ts"];
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(new URL(d, ROOT))) {
      const p = `${d}/${e.name}`;
      if (e.isDirectory) await walk(p);
      else if (e.name.endsWith(".ts")) out.push(p);
    }
  };
  await walk("src");
  await walk("kernels");
  return out.sort();
}

Deno.test("the scanner finds imports, re-exports and dynamic imports; flags up and private", () => {
  const src = `import { a } from "../models/x.ts";\nexport { b } from "./_y.ts";\n` +
    `import type { T } from "../../kernels/k.ts";\nconst m = await import("../quant/_z.ts");\n` +
    `import "./side.ts";\nimport { c } from "node:fs";`;
  assertEquals(specifiers(src), [
    "../models/x.ts",
    "./_y.ts",
    "../../kernels/k.ts",
    "../quant/_z.ts",
    "./side.ts",
  ]);
  assertEquals(violations("src/io/r.ts", src), [
    "src/io/r.ts → src/models/x.ts (upward)",
    "src/io/r.ts → kernels/k.ts (kernels only via backend)",
    "src/io/r.ts → src/quant/_z.ts (upward)",
    "src/io/r.ts → src/quant/_z.ts (private module of another folder)",
  ]);
  assertEquals(violations("src/models/d.ts", `import { x } from "../../kernels/e.ts";`), [
    "src/models/d.ts → kernels/e.ts (kernels only via backend)",
  ]);
  assertEquals(violations("src/backend/w.ts", `import { x } from "../../kernels/e.ts";`), []);
});

Deno.test("no upward import and no private module imported across folders (mod.ts, src/, kernels/)", async () => {
  const all = await files();
  const unplaced = all.filter((p) => rank(p) === undefined);
  assertEquals(unplaced, [], "every scanned file has a layer");
  const bad: string[] = [];
  for (const p of all) bad.push(...violations(p, await Deno.readTextFile(new URL(p, ROOT))));
  assertEquals(bad, []);
  assert(all.length > 50);
});
