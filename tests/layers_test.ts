/**
 * The import graph against DESIGN.md's layers (arrows point down; nothing imports upward):
 *
 *   mod.ts > src/cli.ts > src/api.ts, src/demo.ts, src/ledger/ > src/eval/, src/viz/ > src/quant/ >
 *   src/models/ > src/io/ > src/backend/ > src/tensor.ts, src/errors.ts, src/rng.ts,
 *   src/_paths.ts, src/bitstream.ts > kernels/
 *
 * Every static `import`/`export … from` and dynamic `import("…")` of a relative module in
 * mod.ts, src/ and kernels/ is read from the source text; an import of a higher layer fails, and
 * so does an import of a `_`-prefixed (private) module from another folder, and an import of
 * `kernels/` from anywhere but `src/backend/` (the forward never touches WGSL). Inside
 * `src/quant/` the folders follow the seed's taxonomy and are ordered too (see {@linkcode quantRank}):
 * `core/` (grids, linear algebra, Hessians, the contract) < `weight_only/`, `kv/` <
 * `weight_activation/` < `dequantize.ts` (the format registry) < `pipeline/`. The scanner itself
 * is checked on synthetic sources, and the layer table must place every file it scans.
 */
import { assert, assertEquals } from "@std/assert";

const ROOT = new URL("../", import.meta.url);

/** Layer rank of a repository-relative path (higher may import lower), or undefined. */
export function rank(path: string): number | undefined {
  if (path === "mod.ts") return 9;
  if (/^src\/cli(_\w+)?\.ts$/.test(path)) return 8;
  if (path === "src/api.ts" || path === "src/demo.ts" || path.startsWith("src/ledger/")) return 7;
  if (path.startsWith("src/eval/") || path.startsWith("src/viz/")) return 6;
  if (path.startsWith("src/quant/")) return 5;
  if (path.startsWith("src/models/")) return 4;
  if (path.startsWith("src/io/")) return 3;
  if (path.startsWith("src/backend/")) return 2;
  if (
    ["src/tensor.ts", "src/errors.ts", "src/rng.ts", "src/_paths.ts", "src/bitstream.ts"].includes(
      path,
    )
  ) return 1;
  if (path.startsWith("kernels/")) return 0;
  return undefined;
}

/**
 * Rank of a file inside `src/quant/` (higher may import lower; equal ranks in different folders
 * may not import each other), or undefined outside it.
 */
export function quantRank(path: string): number | undefined {
  const m = /^src\/quant\/(?:(\w+)\/)?[\w.]+$/.exec(path);
  if (!m) return undefined;
  const ranks: Record<string, number> = {
    core: 0,
    weight_only: 1,
    kv: 1,
    weight_activation: 2,
    "": 3,
    pipeline: 4,
  };
  return ranks[m[1] ?? ""];
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
    const qr = quantRank(path), qt = quantRank(target);
    if (qr !== undefined && qt !== undefined && dir(target) !== dir(path) && qt >= qr) {
      bad.push(`${path} → ${target} (quant folder order)`);
    }
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
  assertEquals(violations("src/quant/core/g.ts", `import { x } from "../weight_only/gptq.ts";`), [
    "src/quant/core/g.ts → src/quant/weight_only/gptq.ts (quant folder order)",
  ]);
  assertEquals(violations("src/quant/kv/k.ts", `import { x } from "../weight_only/rtn.ts";`), [
    "src/quant/kv/k.ts → src/quant/weight_only/rtn.ts (quant folder order)",
  ]);
  assertEquals(violations("src/quant/pipeline/p.ts", `import { x } from "../dequantize.ts";`), []);
  assertEquals(quantRank("src/quant/unknown_folder/x.ts"), undefined);
});

Deno.test("no upward import and no private module imported across folders (mod.ts, src/, kernels/)", async () => {
  const all = await files();
  const unplaced = all.filter((p) =>
    rank(p) === undefined || (p.startsWith("src/quant/") && quantRank(p) === undefined)
  );
  assertEquals(unplaced, [], "every scanned file has a layer");
  const bad: string[] = [];
  for (const p of all) bad.push(...violations(p, await Deno.readTextFile(new URL(p, ROOT))));
  assertEquals(bad, []);
  assert(all.length > 50);
});

/** GPU-executor vocabulary `src/models/` must not use: WGSL, pipelines, bind groups, dispatches. */
export const GPU_EXECUTOR_WORDS =
  /\b(createComputePipeline|createBindGroup|createShaderModule|bindGroup|kernelDispatch|matmulDispatch|gemvDispatch|fakeQuantDispatch|xtxDispatch|recordBlock|Dispatch|@compute|GPUBuffer)\b/;

Deno.test("models/ never touches WGSL or builds pipelines, bind groups or dispatches", async () => {
  assert(GPU_EXECUTOR_WORDS.test("const d: Dispatch = kernelDispatch(ctx, k, u, b, n);"));
  assert(!GPU_EXECUTOR_WORDS.test("return await gpuDecoder(gpuModelOf(model), backend, opts);"));
  const hits: string[] = [];
  for (const p of (await files()).filter((f) => f.startsWith("src/models/"))) {
    const src = await Deno.readTextFile(new URL(p, ROOT));
    src.split("\n").forEach((line, i) => {
      const m = GPU_EXECUTOR_WORDS.exec(line);
      if (m) hits.push(`${p}:${i + 1}: ${m[1]}`);
    });
  }
  assertEquals(hits, []);
});
