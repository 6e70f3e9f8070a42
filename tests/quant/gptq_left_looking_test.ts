/**
 * GPTQ's left-looking block update (`blockUpdate: "left"`, one onnxruntime Scan per block) is
 * bit-identical to the right-looking trailing products (`"right"`, the reference's order of
 * work): same codes, weights, grids and loss, across shapes, group sizes, act-order and static
 * groups; "auto" picks it on the CPU backend for large layers; groups that cross blocks keep the
 * right-looking update.
 */
import { assertEquals } from "@std/assert";
import type { GptqTimings } from "../../src/quant/weight_only/gptq.ts";
import type { QuantResult } from "../../src/quant/core/types.ts";
import { gptqOnRandomLayer, mismatches } from "./_gptq_cases.ts";

function assertSame(a: QuantResult, b: QuantResult) {
  assertEquals(mismatches(a.meta.codes!, b.meta.codes!), "", "codes");
  assertEquals(mismatches(a.Wq.data, b.Wq.data), "", "Wq");
  assertEquals(mismatches(a.meta.scales!, b.meta.scales!), "", "scales");
  assertEquals(mismatches(a.meta.zeros!, b.meta.zeros!), "", "zeros");
  assertEquals(a.loss, b.loss);
}

const cases: [string, number, number, Record<string, unknown> & { bits: number }][] = [
  ["4-bit g128 act-order", 512, 640, { bits: 4, groupSize: 128, actOrder: true }],
  ["3-bit per-channel, partial last block", 400, 1000, { bits: 3, groupSize: -1 }],
  ["4-bit g64 static groups act-order", 512, 640, {
    bits: 4,
    groupSize: 64,
    actOrder: true,
    staticGroups: true,
  }],
  ["2-bit g32 sym, blocksize 64", 256, 448, { bits: 2, groupSize: 32, sym: true, blocksize: 64 }],
];

for (const [name, rows, cols, opts] of cases) {
  Deno.test(`gptq left-looking update = right-looking, bit for bit: ${name}`, async () => {
    const right = await gptqOnRandomLayer(rows, cols, { ...opts, blockUpdate: "right" });
    const left = await gptqOnRandomLayer(rows, cols, { ...opts, blockUpdate: "left" });
    assertEquals((right.meta.timings as GptqTimings).blockUpdate, "right");
    assertEquals((left.meta.timings as GptqTimings).blockUpdate, "left");
    assertSame(left, right);
  });
}

Deno.test("gptq blockUpdate auto: left for large CPU layers, right for small ones", async () => {
  const big = await gptqOnRandomLayer(512, 640, { bits: 4, groupSize: 128, blockUpdate: "auto" });
  assertEquals((big.meta.timings as GptqTimings).blockUpdate, "left");
  const small = await gptqOnRandomLayer(64, 256, { bits: 4, groupSize: 128, blockUpdate: "auto" });
  assertEquals((small.meta.timings as GptqTimings).blockUpdate, "right");
});

Deno.test("gptq blockUpdate left: groups crossing blocks keep the right-looking update", async () => {
  // groupSize 96 with blocksize 128: the group at column 96 spans two blocks.
  const res = await gptqOnRandomLayer(256, 768, { bits: 4, groupSize: 96, blockUpdate: "left" });
  assertEquals((res.meta.timings as GptqTimings).blockUpdate, "right");
});
