import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  bcq,
  bcqFromUniform,
  bcqGroup,
  type BcqMeta,
  bcqQuantize,
  dequantizeBcq,
} from "../../src/quant/weight_only/bcq.ts";
import { rtnQuantize } from "../../src/quant/weight_only/rtn.ts";
import { gptqQuantize } from "../../src/quant/weight_only/gptq.ts";
import { dequantizeMeta } from "../../src/quant/dequantize.ts";
import { dequantize } from "../../src/quant/core/grid.ts";
import { OptionError } from "../../src/errors.ts";
import { mulberry32, randnArray } from "../../src/rng.ts";
import { randomH } from "./_oracles.ts";

/** Σ (w − Σ α_i b_i)² in float64 from an α and sign matrix (the oracle for the search). */
function groupError(w: ArrayLike<number>, alpha: ArrayLike<number>, B: Uint8Array): number {
  const q = alpha.length;
  let e = 0;
  for (let k = 0; k < w.length; k++) {
    let s = 0;
    for (let i = 0; i < q; i++) s += (B[k * q + i] ? 1 : -1) * alpha[i];
    e += (w[k] - s) ** 2;
  }
  return e;
}

Deno.test("bcq: greedy is the plain residual recursion (closed form for q = 1, 2)", () => {
  const w = [0.5, -1.5, 2, -0.25];
  const g1 = bcqGroup(w, { bits: 1, rounds: 0, useBst: true });
  assertAlmostEquals(g1.alpha[0], (0.5 + 1.5 + 2 + 0.25) / 4, 1e-15);
  assertEquals(Array.from(g1.B), [1, 0, 1, 0]);
  const g2 = bcqGroup(w, { bits: 2, rounds: 0, useBst: true });
  const a1 = 1.0625;
  const r = w.map((x) => x - Math.sign(x) * a1);
  assertAlmostEquals(g2.alpha[1], r.reduce((s, x) => s + Math.abs(x), 0) / 4, 1e-15);
});

Deno.test("bcq: alternating ≤ refined ≤ greedy on 64 seeded rows, for 2–4 bits", () => {
  const rng = mulberry32(1821);
  for (const bits of [2, 3, 4]) {
    let strict = 0;
    for (let row = 0; row < 64; row++) {
      const w = randnArray(rng, 128, { scale: 0.02 });
      if (row % 4 === 0) { for (let k = 0; k < 3; k++) w[Math.floor(rng() * 128)] *= 6; }
      const errs = [0, 1, 30].map((rounds) => {
        const g = bcqGroup(w, { bits, rounds, useBst: true });
        return groupError(w, g.alpha, g.B);
      });
      const tol = 1e-12 * errs[0];
      assert(errs[1] <= errs[0] + tol, `row ${row}: refined ${errs[1]} > greedy ${errs[0]}`);
      assert(errs[2] <= errs[1] + tol, `row ${row}: alternating ${errs[2]} > refined ${errs[1]}`);
      if (errs[2] < errs[0] * (1 - 1e-6)) strict++;
      // α sorted descending and non-negative after refinement
      const g = bcqGroup(w, { bits, rounds: 30, useBst: true });
      for (let i = 1; i < bits; i++) assert(g.alpha[i] <= g.alpha[i - 1] && g.alpha[i] >= 0);
    }
    assert(strict > 50, `alternating improves on greedy in ${strict}/64 rows at ${bits} bits`);
  }
});

Deno.test("bcq: the B step is the nearest of the 2^q values (brute force)", () => {
  const rng = mulberry32(1822);
  const w = randnArray(rng, 64);
  const g = bcqGroup(w, { bits: 3, rounds: 5, useBst: true });
  for (let k = 0; k < 64; k++) {
    let best = Infinity;
    for (let c = 0; c < 8; c++) {
      let s = 0;
      for (let i = 0; i < 3; i++) s += ((c >> i) & 1 ? 1 : -1) * g.alpha[i];
      best = Math.min(best, Math.abs(w[k] - s));
    }
    let s = 0;
    for (let i = 0; i < 3; i++) s += (g.B[k * 3 + i] ? 1 : -1) * g.alpha[i];
    assertAlmostEquals(Math.abs(w[k] - s), best, 1e-12);
  }
});

Deno.test("bcq: quantizer packs planes; dequantize is bit-exact; bits count α", async () => {
  const rng = mulberry32(1823);
  const rows = 8, cols = 256;
  const W = { shape: [rows, cols], data: randnArray(rng, rows * cols) };
  for (const groupSize of [-1, 128]) {
    const res = await bcq({ bits: 3, groupSize }).quantizeWeight(W, { nsamples: 0 });
    const m = res.meta as BcqMeta;
    assertEquals(dequantizeBcq(m).data, res.Wq.data);
    assertEquals((await dequantizeMeta(m)).data, res.Wq.data);
    assertThrows(() => dequantize(m), OptionError, "own format");
    const gs = groupSize > 0 ? groupSize : cols;
    assertEquals(res.bitsPerWeight, 3 + (16 * 3) / gs);
    let loss = 0;
    for (let i = 0; i < W.data.length; i++) loss += (W.data[i] - res.Wq.data[i]) ** 2;
    assertAlmostEquals(res.loss, loss, 1e-9 * loss);
  }
  assertThrows(() => bcqQuantize(W, { bits: 3, groupSize: 100 }), OptionError, "groupSize");
  assertThrows(() => bcq({ bits: 0 }), OptionError, "bits");
  assertThrows(() => bcq({ bits: 3, rounds: -1 }), OptionError, "rounds");
});

Deno.test("bcq: uniform → BCQ conversion reproduces RTN and GPTQ weights exactly", async () => {
  const rng = mulberry32(1824);
  const rows = 12, cols = 64;
  const W = { shape: [rows, cols], data: randnArray(rng, rows * cols, { scale: 0.03 }) };
  const H = randomH(rng, cols, { n: 200, k: 10, damp: 0.01 });
  const metas = [
    rtnQuantize(W, { bits: 4 }),
    rtnQuantize(W, { bits: 3, groupSize: 16, sym: true }),
    await gptqQuantize(W, { H, nsamples: 200 }, { bits: 4, groupSize: 16, actOrder: true }),
    await gptqQuantize(W, { H, nsamples: 200 }, { bits: 2 }),
  ];
  for (const res of metas) {
    const b = bcqFromUniform(res.meta);
    const D = dequantizeBcq(b);
    for (let i = 0; i < D.data.length; i++) {
      assert(
        D.data[i] === res.Wq.data[i],
        `${res.meta.method} ${i}: ${D.data[i]} vs ${res.Wq.data[i]}`,
      );
    }
  }
  assertThrows(() => bcqFromUniform({ ...metas[0].meta, method: "quip" }), OptionError, "meta");
});
