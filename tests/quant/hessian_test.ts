/**
 * The shared Hessian preparation (`core/hessian.ts`) against plain references written here: dead
 * inputs, act-order (stable on ties), damping summed in processed order, the processed `H`, the
 * permuted columns, and the stopwatch's laps.
 */
import { assert, assertEquals } from "@std/assert";
import * as hx from "../../src/quant/core/hessian.ts";

// A 4×4 H with a dead input (column 1) and a tie on the diagonal (columns 0 and 3).
const H0 = Float32Array.from([
  [2, 0, 0.5, 0.1],
  [0, 0, 0, 0],
  [0.5, 0, 5, 0.2],
  [0.1, 0, 0.2, 2],
].flat());

Deno.test("hessian: dead inputs, stable act-order, damping, processed H and W", () => {
  const { diag, dead } = hx.deadInputs(H0, 4);
  assertEquals(Array.from(diag), [2, 1, 5, 2]);
  assertEquals(dead, [1]);
  // Descending diag; the tie 0/3 keeps its original order.
  const perm = hx.actOrderPermutation(diag);
  assertEquals(Array.from(perm), [2, 0, 3, 1]);
  assertEquals(hx.dampening(diag, { percdamp: 0.1, perm }), (0.1 * (5 + 2 + 2 + 1)) / 4);
  const damp = 0.25;
  const H = hx.processedHessian(H0, { diag, damp, perm });
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 4; j++) {
      const want = i === j ? diag[perm[i]] + damp : H0[perm[i] * 4 + perm[j]];
      assertEquals(H[i * 4 + j], want, `H[${i}, ${j}]`);
    }
  }
  const W = Float32Array.from({ length: 8 }, (_, k) => k + 1); // 2 × 4
  const W0 = hx.zeroDeadColumns(W, { rows: 2, cols: 4, dead });
  assertEquals(Array.from(W0), [1, 0, 3, 4, 5, 0, 7, 8]);
  assert(hx.zeroDeadColumns(W, { rows: 2, cols: 4, dead: [] }) === W);
  assertEquals(Array.from(hx.permuteColumns(W0, { rows: 2, cols: 4, perm })), [
    3,
    1,
    4,
    0,
    7,
    5,
    8,
    0,
  ]);
  const copy = hx.permuteColumns(W0, { rows: 2, cols: 4 });
  assert(copy !== W0);
  assertEquals(copy, W0);
});

Deno.test("hessian: the stopwatch charges each lap to its key, restart skips time", async () => {
  const t = { a: 0, b: 0 };
  const clock = hx.stopwatch<"a" | "b">(t);
  await new Promise((r) => setTimeout(r, 30));
  clock.lap("a");
  clock.restart();
  clock.lap("b");
  assert(t.a >= 0.02 && t.a < 5, `a = ${t.a}`);
  assert(t.b >= 0 && t.b < 0.02, `b = ${t.b}`);
});
