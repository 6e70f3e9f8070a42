import { assert, assertAlmostEquals, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { rtn, rtnQuantize } from "../../src/quant/weight_only/rtn.ts";
import { dequantize, findParams, quantize } from "../../src/quant/core/grid.ts";
import { OptionError } from "../../src/errors.ts";
import { mulberry32, randnArray } from "../../src/rng.ts";

Deno.test("rtn: every weight is its group's grid rounding; loss = Σ(w−q)²", async () => {
  const rng = mulberry32(20);
  const rows = 6, cols = 48;
  const W = { shape: [rows, cols], data: randnArray(rng, rows * cols) };
  for (const groupSize of [-1, 12, 48]) {
    for (const sym of [false, true]) {
      const q = rtn({ bits: 3, groupSize, sym });
      assertEquals(q.needsHessian, false);
      assertEquals(q.name, "rtn");
      const res = await q.quantizeWeight(W, { nsamples: 0 });
      let loss = 0;
      const gs = groupSize > 0 ? groupSize : cols;
      for (let g = 0; g < cols / gs; g++) {
        const p = findParams(W, { bits: 3, sym, colStart: g * gs, colEnd: g * gs + gs });
        for (let r = 0; r < rows; r++) {
          assertEquals(res.meta.scales[r * (cols / gs) + g], p.scale[r]);
          for (let j = g * gs; j < g * gs + gs; j++) {
            const x = W.data[r * cols + j];
            const want = quantize(x, { scale: p.scale[r], zero: p.zero[r], maxq: 7 });
            assertEquals(res.Wq.data[r * cols + j], want);
            loss += (x - want) ** 2;
          }
        }
      }
      assertAlmostEquals(res.loss, loss, 1e-9 * loss);
      assertEquals(dequantize(res.meta).data, res.Wq.data);
      assertAlmostEquals(res.bitsPerWeight, 3 + (sym ? 16 : 32) / gs, 1e-12);
    }
  }
});

Deno.test("rtn: does not modify W; MSE option lowers or keeps the error", () => {
  const rng = mulberry32(21);
  const data = randnArray(rng, 4 * 64);
  data[3] = 9;
  const W = { shape: [4, 64], data: data.slice() };
  const a = rtnQuantize(W, { bits: 3, mse: true });
  assertEquals(W.data, data);
  const b = rtnQuantize(W, { bits: 3 });
  assert(a.meta.scales[0] < b.meta.scales[0]);
});

Deno.test("rtn: option errors", async () => {
  for (const bits of [1, 9, 3.5]) assertThrows(() => rtn({ bits }), OptionError, "bits");
  for (const groupSize of [0, -2, 1.5]) {
    assertThrows(() => rtn({ bits: 4, groupSize }), OptionError, "groupSize");
  }
  assertThrows(() => rtn({ bits: 4, groupSize: 8, perChannel: false }), OptionError, "perChannel");
  const W = { shape: [2, 10], data: new Float32Array(20) };
  await assertRejects(
    () => rtn({ bits: 4, groupSize: 4 }).quantizeWeight(W, { nsamples: 0 }, { layer: "blk.0.q" }),
    OptionError,
    "blk.0.q",
  );
});
