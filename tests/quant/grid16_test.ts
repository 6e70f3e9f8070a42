/**
 * `findGridParams` for 9–16 bits against the min-max closed form written here (range widened to
 * include 0, `scale = (xmax − xmin)/maxq`, `zero = round(−xmin/scale)`; symmetric: `±max|x|`,
 * zero `(maxq + 1)/2`), and `findParams` still refusing widths above 8.
 */
import { assertEquals, assertThrows } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { findGridParams, findParams, quantizeCode } from "../../src/quant/core/grid.ts";
import { mulberry32 } from "../../src/rng.ts";

Deno.test("findGridParams: 9–16-bit min-max grids equal the closed form; codes stay in range", () => {
  const rand = mulberry32(3);
  const rows = 3, cols = 40;
  const data = Float32Array.from({ length: rows * cols }, () => rand() * 3 - 1);
  data.fill(0, cols, 2 * cols); // an all-zero row
  for (const bits of [9, 12, 16]) {
    for (const sym of [false, true]) {
      const maxq = 2 ** bits - 1;
      const p = findGridParams({ shape: [rows, cols], data }, { bits, sym });
      for (let r = 0; r < rows; r++) {
        const row = Array.from(data.subarray(r * cols, (r + 1) * cols));
        let lo = Math.min(0, ...row), hi = Math.max(0, ...row);
        if (sym) [lo, hi] = [lo < 0 ? -Math.max(-lo, hi) : lo, Math.max(-lo, hi)];
        if (lo === 0 && hi === 0) [lo, hi] = [-1, 1];
        const scale = Math.fround(Math.fround(hi - lo) / maxq);
        assertEquals(p.scale[r], scale, `${bits} bits sym=${sym} row ${r}`);
        const zero = sym ? (maxq + 1) / 2 : Math.round(Math.fround(-lo / scale));
        assertEquals(p.zero[r], zero, `${bits} bits sym=${sym} row ${r} zero`);
        for (const x of row) {
          const c = quantizeCode(x, { scale, zero, maxq });
          if (!(c >= 0 && c <= maxq && Number.isInteger(c))) throw new Error(`code ${c}`);
        }
      }
    }
  }
  assertThrows(
    () => findParams({ shape: [1, 2], data: new Float32Array(2) }, { bits: 9 }),
    OptionError,
  );
  assertThrows(
    () => findGridParams({ shape: [1, 2], data: new Float32Array(2) }, { bits: 17 }),
    OptionError,
  );
});
