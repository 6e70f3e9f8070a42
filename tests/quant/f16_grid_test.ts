/**
 * `withF16Scales`: scales become f16 values (and, for asymmetric grids, `scale · zero` too, so
 * Q4_1's min is exact), RTN codes are re-derived with the rounded scale (checked against a plain
 * transcription of the grid rounding), Hessian methods keep their codes, `Wq` is the grid decode.
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { withF16Scales } from "../../src/quant/core/f16_grid.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import type { WeightQuantizer } from "../../src/quant/core/types.ts";
import { OptionError } from "../../src/errors.ts";
import { f16ToF32, f32ToF16 } from "../../src/tensor.ts";
import { Rng } from "../_rng.ts";

const isF16 = (x: number) => f16ToF32(f32ToF16(x)) === x;
const rows = 16, cols = 96;

function weight(seed: number) {
  const rng = new Rng(seed);
  return {
    shape: [rows, cols],
    data: Float32Array.from({ length: rows * cols }, () => rng.normal() * 0.05),
  };
}

/** torch.round (half to even) of a float32 quotient, clamped: the grid's code, transcribed. */
function code(x: number, s: number, z: number, maxq: number): number {
  const q = Math.fround(x / s);
  let r = Math.round(q);
  if (Math.abs(q % 1) === 0.5 && r % 2 !== 0) r -= 1;
  return Math.min(maxq, Math.max(0, r + z));
}

Deno.test("symmetric and asymmetric RTN grids get f16 scales and re-derived codes", async () => {
  for (const sym of [true, false]) {
    const W = weight(sym ? 1 : 2);
    const inner = await rtn({ bits: 4, groupSize: 32, sym }).quantizeWeight(W, { nsamples: 0 });
    const r = await withF16Scales(rtn({ bits: 4, groupSize: 32, sym })).quantizeWeight(W, {
      nsamples: 0,
    });
    const { scales, zeros, codes } = r.meta;
    assertEquals(r.meta.f16Scales, true);
    let changed = 0;
    for (let i = 0; i < scales.length; i++) {
      assert(isF16(scales[i]), `scale ${i}`);
      if (!sym) assert(isF16(Math.fround(scales[i] * zeros[i])), `scale·zero ${i}`);
      const rel = Math.abs(scales[i] - inner.meta.scales[i]) / inner.meta.scales[i];
      assert(rel <= (sym ? 2 ** -11 : 2 ** -7), `relative change ${rel} at ${i}`);
      if (scales[i] !== inner.meta.scales[i]) changed++;
    }
    assert(changed > 0, "some scales moved");
    for (let rr = 0; rr < rows; rr++) {
      for (let j = 0; j < cols; j++) {
        const g = rr * 3 + Math.floor(j / 32), i = rr * cols + j;
        assertEquals(codes[i], code(W.data[i], scales[g], zeros[g], 15), `code ${rr},${j}`);
        assertEquals(r.Wq.data[i], Math.fround(scales[g] * (codes[i] - zeros[g])));
      }
    }
  }
});

Deno.test("Hessian methods keep their codes; transformed-basis methods are refused", async () => {
  const W = weight(3);
  const base = rtn({ bits: 4, groupSize: 32, sym: true });
  const hess: WeightQuantizer = { ...base, needsHessian: true };
  const inner = await base.quantizeWeight(W, { nsamples: 0 });
  const r = await withF16Scales(hess).quantizeWeight(W, { nsamples: 0 });
  assertEquals(r.meta.codes, inner.meta.codes);
  assertEquals(r.loss, inner.loss);
  assert(r.meta.scales.every(isF16));
  const quip = { ...base, name: "quip" };
  const e = assertThrows(() => withF16Scales(quip), OptionError);
  assertEquals(e.option, "quantizer");
});
