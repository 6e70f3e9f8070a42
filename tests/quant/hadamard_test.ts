import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  fwht,
  hadamardMatrix,
  isPow2,
  nextPow2,
  randomSigns,
} from "../../src/quant/core/hadamard.ts";
import { mulberry32 } from "../../src/rng.ts";
import { OptionError } from "../../src/errors.ts";

Deno.test("fwht equals the dense Sylvester matrix product, is orthogonal and self-inverse", () => {
  const rng = mulberry32(7);
  for (const n of [1, 2, 8, 64, 256]) {
    const M = hadamardMatrix(n);
    // Orthogonality of the dense matrix: M Mᵀ = I to 1e-12.
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let k = 0; k < n; k++) s += M[i * n + k] * M[j * n + k];
        assert(Math.abs(s - (i === j ? 1 : 0)) < 1e-12, `n=${n} (${i},${j}) ${s}`);
      }
    }
    const x = Float64Array.from({ length: 2 * n }, () => rng() - 0.5);
    const y = x.slice();
    fwht(y, n);
    for (let seg = 0; seg < 2; seg++) {
      for (let i = 0; i < n; i++) {
        let s = 0;
        for (let k = 0; k < n; k++) s += M[i * n + k] * x[seg * n + k];
        assert(Math.abs(s - y[seg * n + i]) < 1e-12, `n=${n} row ${i}`);
      }
    }
    fwht(y, n);
    for (let i = 0; i < 2 * n; i++) assert(Math.abs(y[i] - x[i]) < 1e-12);
  }
});

Deno.test("hadamard helpers: sizes, signs, errors", () => {
  assertEquals([1, 2, 3, 64, 172].map(nextPow2), [1, 2, 4, 64, 256]);
  assert(isPow2(64) && !isPow2(172) && !isPow2(0));
  const d = randomSigns(mulberry32(1), 1000);
  assert(d.every((v) => v === 1 || v === -1));
  const pos = d.filter((v) => v > 0).length;
  assert(pos > 430 && pos < 570, `${pos} positive signs of 1000`);
  assertThrows(() => fwht(new Float64Array(12), 12), OptionError, "power of two");
  assertThrows(() => fwht(new Float64Array(12), 8), OptionError, "multiple");
});
