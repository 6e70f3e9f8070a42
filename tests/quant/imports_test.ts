/**
 * `src/quant/` reaches the backend only through its public surface: the `Backend` interface
 * (`backend.ts`), the active-backend switch (`device.ts`) and the default CPU instance
 * (`cpu.ts`) — never a WebGPU module, a private `_*.ts` file or a dynamic import of a backend
 * module — and it asks capabilities (`matmulF64`, `residentBlocks`, `gptqColumns`) rather than
 * testing a backend's type (`"ctx" in be`, `name === "webgpu"`, `instanceof …Backend`).
 */
import { assert, assertEquals } from "@std/assert";

const QUANT = new URL("../../src/quant/", import.meta.url);
const PUBLIC = new Set(["backend.ts", "device.ts", "cpu.ts"]);

/** Backend modules `src` imports (static or dynamic), as `{ file, dynamic }`. */
function backendImports(src: string): { file: string; dynamic: boolean }[] {
  const out: { file: string; dynamic: boolean }[] = [];
  const re =
    /(\bimport\s*\(\s*|\bfrom\s*|^\s*import\s+)["']\.{1,2}\/(?:[^"']*\/)?backend\/([^"']+)["']/gm;
  for (const m of src.matchAll(re)) out.push({ file: m[2], dynamic: m[1].includes("(") });
  return out;
}

/** Type tests on a backend object in `src`. */
function sniffs(src: string): string[] {
  const re = /"ctx"\s+in\s+\w+|\.name\s*[!=]==?\s*"(?:webgpu|cpu)"|instanceof\s+\w*Backend\b/g;
  return [...src.matchAll(re)].map((m) => m[0]);
}

Deno.test("imports scanner: static, type-only and dynamic backend imports; sniffing patterns", () => {
  const src = `import type { Backend } from "../backend/backend.ts";\n` +
    `import { x } from "../../src/backend/_webgpu_nn.ts";\n` +
    `const m = await import("../backend/cpu.ts");\nimport { y } from "../models/decoder.ts";`;
  assertEquals(backendImports(src), [
    { file: "backend.ts", dynamic: false },
    { file: "_webgpu_nn.ts", dynamic: false },
    { file: "cpu.ts", dynamic: true },
  ]);
  assertEquals(sniffs(`if (be.name === "webgpu" && "ctx" in be) {}; b instanceof CpuBackend`), [
    `.name === "webgpu"`,
    `"ctx" in be`,
    "instanceof CpuBackend",
  ]);
  assertEquals(sniffs(`if (be.residentBlocks) {}`), []);
});

Deno.test("src/quant/ uses only the backend's public surface and capabilities", async () => {
  const bad: string[] = [];
  let n = 0;
  const walk = async (rel: string) => {
    for await (const e of Deno.readDir(new URL(rel, QUANT))) {
      if (e.isDirectory) await walk(`${rel}${e.name}/`);
      if (!e.isFile || !e.name.endsWith(".ts")) continue;
      n++;
      const name = `${rel}${e.name}`;
      const src = await Deno.readTextFile(new URL(name, QUANT));
      for (const i of backendImports(src)) {
        if (!PUBLIC.has(i.file)) bad.push(`src/quant/${name} → backend/${i.file}`);
        if (i.dynamic) bad.push(`src/quant/${name} → backend/${i.file} (dynamic import)`);
      }
      for (const s of sniffs(src)) bad.push(`src/quant/${name}: ${s}`);
    }
  };
  await walk("");
  assert(n > 20, `${n} files scanned`);
  assertEquals(bad, []);
});
