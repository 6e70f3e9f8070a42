/**
 * The WebAssembly SIMD four-row update of GPTQ's column loop (`src/quant/weight_only/_gptq_wasm.ts`)
 * against the TypeScript statement it replaces (`W1[k] -= e * h` on Float32Arrays), bit for bit:
 * the kernel alone on random data (odd and even lengths, tiny and huge magnitudes), and whole
 * `gptqQuantize` runs with the kernel and with the TypeScript loop (right- and left-looking
 * updates, rows not a multiple of four).
 */
import { assert, assertEquals } from "@std/assert";
import { gptqWasm, gptqWasmBytes } from "../../src/quant/weight_only/_gptq_wasm.ts";
import type { GptqTimings } from "../../src/quant/weight_only/gptq.ts";
import { mulberry32, randnArray } from "../../src/rng.ts";
import { gptqOnRandomLayer, mismatches } from "./_gptq_cases.ts";

Deno.test("gptq wasm kernel: valid module, W −= e·h equal to the TypeScript loop", () => {
  assert(WebAssembly.validate(gptqWasmBytes()));
  const k = gptqWasm();
  assert(k, "WebAssembly SIMD is expected in Deno");
  const rng = mulberry32(5);
  for (const [n, stride, scale] of [[1, 8, 1], [2, 9, 1], [37, 40, 1e-3], [128, 131, 1e4]]) {
    const buf = k.memory(4 * (4 * stride + n + 8));
    const W = new Float32Array(buf, 0, 4 * stride);
    const H = new Float32Array(buf, 16 * stride, n);
    W.set(randnArray(rng, W.length, { scale }));
    H.set(randnArray(rng, n));
    const e = Array.from(randnArray(rng, 4, { scale: 1 / scale }));
    const want = W.slice();
    const off = 3; // rows start at column 3 of a `stride`-wide buffer
    for (let r = 0; r < 4; r++) {
      for (let j = 0; j < n && off + j < stride; j++) want[r * stride + off + j] -= e[r] * H[j];
    }
    const m = Math.min(n, stride - off);
    const w = (r: number) => 4 * (r * stride + off);
    k.upd4(w(0), w(1), w(2), w(3), 16 * stride, m, e[0], e[1], e[2], e[3]);
    assertEquals(mismatches(W, want), "", `n ${n}`);
  }
});

const cases: [string, number, number, Record<string, unknown> & { bits: number }][] = [
  ["4-bit g128 act-order, left-looking", 514, 640, { bits: 4, groupSize: 128, actOrder: true }],
  ["3-bit per-channel, right-looking", 67, 300, { bits: 3, blockUpdate: "right" }],
  ["2-bit g32 sym, odd block width", 130, 200, {
    bits: 2,
    groupSize: 40,
    sym: true,
    blocksize: 40,
  }],
];
for (const [name, rows, cols, opts] of cases) {
  Deno.test(`gptq with the wasm kernel = the TypeScript loop, bit for bit: ${name}`, async () => {
    const ts = await gptqOnRandomLayer(rows, cols, { ...opts, inBlockKernel: "ts" });
    const wasm = await gptqOnRandomLayer(rows, cols, { ...opts, inBlockKernel: "auto" });
    assertEquals((ts.meta.timings as GptqTimings).inBlockKernel, "ts");
    assertEquals((wasm.meta.timings as GptqTimings).inBlockKernel, "wasm");
    assertEquals(mismatches(wasm.meta.codes!, ts.meta.codes!), "", "codes");
    assertEquals(mismatches(wasm.Wq.data, ts.Wq.data), "", "Wq");
    assertEquals(wasm.loss, ts.loss);
  });
}
