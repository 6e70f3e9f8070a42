import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertGreater,
  assertLessOrEqual,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import {
  dequantizeQuantease,
  OUTLIER_INDEX_BITS,
  OUTLIER_VALUE_BITS,
  quantease as quanteaseRef,
  type QuantEaseOptions,
  quanteaseQuantize as quanteaseCore,
} from "../../src/quant/weight_only/quantease.ts";
import { gptqQuantize } from "../../src/quant/weight_only/gptq.ts";
import { rtnQuantize } from "../../src/quant/weight_only/rtn.ts";
import { bitsPerWeight, dequantize, findParams } from "../../src/quant/core/grid.ts";
import type { QuantResult } from "../../src/quant/core/types.ts";
import type { Tensor } from "../../src/tensor.ts";
import { cpuBackend } from "../../src/backend/cpu.ts";
import type { Backend } from "../../src/backend/backend.ts";
import { NonFiniteError, OptionError, QuantlabError } from "../../src/errors.ts";
import { mulberry32, randnArray, type Rng } from "../../src/rng.ts";
import { realLayers } from "./_real_stats.ts";
import { proxyLoss, randomH } from "./_oracles.ts";
import type { LayerStats, QuantContext } from "../../src/quant/core/types.ts";

// These tests pin quantlab's monotone variant (start from RTN, every sweep rounds), which was the
// default before issue 19; the reference's default run (start from W, relaxed iterations) is
// pinned against a transcribed oracle in tests/reference/quantease_test.ts.
const VARIANT = { init: "rtn", relax: false } as const;
const quanteaseQuantize = (W: Tensor, s: LayerStats, o: QuantEaseOptions & QuantContext) =>
  quanteaseCore(W, s, { ...VARIANT, ...o });
const quantease = (o: QuantEaseOptions) => quanteaseRef({ ...VARIANT, ...o });

function assertBitExact(res: QuantResult) {
  const D = dequantizeQuantease(res.meta);
  assertEquals(D.shape, res.Wq.shape);
  for (let i = 0; i < D.data.length; i++) {
    assert(D.data[i] === res.Wq.data[i], `element ${i}: ${D.data[i]} !== ${res.Wq.data[i]}`);
  }
  if (res.meta.outlierIdx === undefined) {
    const G = dequantize(res.meta);
    for (let i = 0; i < G.data.length; i++) assert(G.data[i] === res.Wq.data[i]);
  }
}

function randomW(rng: Rng, rows: number, cols: number, scale = 0.05): Tensor {
  return { shape: [rows, cols], data: randnArray(rng, rows * cols, { scale }) };
}

// (1) Coordinate descent on a fixed grid never increases the objective (each coordinate step is
// the exact minimiser over the grid of a 1-D convex quadratic; the IHT step uses a step size
// below 1/L). The iterate after t iterations is the result of numIter = t (the computation is a
// prefix), so each one is checked with an independent float64 objective.
Deno.test("objective never increases: 24 seeded (W, H) cases, independent float64 check", async () => {
  const rng = mulberry32(41);
  const shapes: [number, number][] = [[8, 32], [12, 48], [16, 64], [6, 96], [10, 40], [20, 24]];
  const N = 5;
  let worstRel = -Infinity, worstMeta = 0;
  for (let t = 0; t < 24; t++) {
    const [rows, cols] = shapes[t % shapes.length];
    const divisors = [-1, ...[8, 12, 16, 32].filter((g) => cols % g === 0 && g < cols)];
    const o: QuantEaseOptions = {
      bits: 2 + (t % 3),
      groupSize: divisors[Math.floor(rng() * divisors.length)],
      sym: rng() < 0.3,
      actOrder: rng() < 0.5,
      init: t % 4 === 3 ? "gptq" : "rtn",
      blocksize: [128, 16, 7, 32][t % 4],
    };
    if (t % 6 === 5) o.outlier = 0.02;
    if (t % 12 === 11) {
      o.structureOutlier = true;
      o.outlier = 0.1;
    }
    const W = randomW(rng, rows, cols);
    const H = randomH(rng, cols, { n: 64, k: 1 + Math.floor(rng() * cols * 0.6), damp: 1e-3 });
    const stats = { H, nsamples: 64 };
    const full = await quanteaseQuantize(W, stats, { ...o, numIter: N });
    const obj = full.meta.objective as number[];
    assertEquals(obj.length, N + 1);
    const indep: number[] = [];
    for (let it = 0; it <= N; it++) {
      const res = it === N ? full : await quanteaseQuantize(W, stats, { ...o, numIter: it });
      assertEquals(res.meta.objective as number[], obj.slice(0, it + 1), `prefix ${it}`);
      assertBitExact(res);
      const f = proxyLoss(W, res.Wq, H);
      indep.push(f);
      const rel = Math.abs(f - obj[it]) / f;
      worstMeta = Math.max(worstMeta, rel);
      assertLessOrEqual(rel, 1e-4, `case ${t} iter ${it}: meta ${obj[it]} vs float64 ${f}`);
    }
    for (let it = 1; it <= N; it++) {
      const rel = (indep[it] - indep[it - 1]) / indep[it - 1];
      worstRel = Math.max(worstRel, rel);
      assertLessOrEqual(
        indep[it],
        indep[it - 1] * (1 + 1e-9),
        `case ${t} ${JSON.stringify(o)} [${rows}, ${cols}]: iter ${it} ${indep[it]} > ${
          indep[it - 1]
        }`,
      );
      assertLessOrEqual(obj[it], obj[it - 1] * (1 + 1e-9));
    }
    assertAlmostEquals(full.loss, obj[N], 0);
  }
  console.log(
    `  largest relative change between iterations (≤ 0: none increased): ${
      worstRel.toExponential(2)
    }; ` +
      `largest |meta.objective − float64| / float64: ${worstMeta.toExponential(2)}`,
  );
});

// (2) numIter 0 returns the initialisation itself.
Deno.test("numIter 0 returns exactly the RTN initialisation (and GPTQ with init gptq)", async () => {
  const rng = mulberry32(42);
  const rows = 10, cols = 64;
  const W = randomW(rng, rows, cols);
  const H = randomH(rng, cols, { n: 50, k: 20, damp: 1e-2 });
  const grids: QuantEaseOptions[] = [
    { bits: 4 },
    { bits: 3, groupSize: 16 },
    { bits: 2, groupSize: 32, sym: true },
    { bits: 8, sym: true, mse: true },
    { bits: 3, groupSize: 16, actOrder: true, staticGroups: true },
  ];
  for (const g of grids) {
    const q = await quanteaseQuantize(W, { H, nsamples: 50 }, { ...g, numIter: 0 });
    const r = rtnQuantize(W, g);
    assertEquals(q.meta.codes, r.meta.codes, JSON.stringify(g));
    assertEquals(q.Wq.data, r.Wq.data);
    assertEquals(q.meta.scales, r.meta.scales);
    assertEquals(q.meta.zeros, r.meta.zeros);
    assertBitExact(q);
    assertAlmostEquals(q.bitsPerWeight, r.bitsPerWeight, 1e-12);
    const gq = await quanteaseQuantize(W, { H, nsamples: 50 }, { ...g, numIter: 0, init: "gptq" });
    const gp = await gptqQuantize(W, { H, nsamples: 50 }, g);
    assertEquals(gq.meta.codes, gp.meta.codes, JSON.stringify(g));
    assertEquals(gq.Wq.data, gp.Wq.data);
    assertEquals(gq.meta.scales, gp.meta.scales);
    assertEquals(gq.meta.gIdx, gp.meta.gIdx);
    assertAlmostEquals(gq.bitsPerWeight, gp.bitsPerWeight, 1e-12);
    assertBitExact(gq);
  }
  // act-order with dynamic groups: groups are contiguous in processing order, so RTN of the
  // permuted weight (and gIdx/gIdxStored exactly as GPTQ's act-order).
  const a = await quanteaseQuantize(W, { H, nsamples: 50 }, {
    bits: 3,
    groupSize: 16,
    actOrder: true,
    numIter: 0,
  });
  const perm = a.meta.perm!;
  const Wp = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) Wp[r * cols + c] = W.data[r * cols + perm[c]];
  }
  const rp = rtnQuantize({ shape: [rows, cols], data: Wp }, { bits: 3, groupSize: 16 });
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      assertEquals(a.meta.codes[r * cols + perm[c]], rp.meta.codes[r * cols + c]);
    }
  }
  assertEquals(a.meta.scales, rp.meta.scales);
  assertEquals(a.meta.gIdxStored, true);
  for (let c = 0; c < cols; c++) assertEquals(a.meta.gIdx![perm[c]], Math.floor(c / 16));
  const gpa = await gptqQuantize(W, { H, nsamples: 50 }, {
    bits: 3,
    groupSize: 16,
    actOrder: true,
  });
  const qga = await quanteaseQuantize(W, { H, nsamples: 50 }, {
    bits: 3,
    groupSize: 16,
    actOrder: true,
    numIter: 0,
    init: "gptq",
  });
  assertEquals(qga.meta.codes, gpa.meta.codes);
  assertEquals(qga.meta.gIdx, gpa.meta.gIdx);
  assertBitExact(qga);
});

/**
 * Plain QuantEase for the test: float64 `R = (W − Q)H`, every column's rank-1 update applied to
 * all of R at once, no blocks, no matmul; RTN start on the grids of `rtnQuantize`.
 */
function plainQuantEase(W: Tensor, H: Float64Array, bits: number, gs: number, numIter: number) {
  const [rows, cols] = W.shape;
  const r0 = rtnQuantize(W, { bits, groupSize: gs });
  const { scales, zeros } = r0.meta;
  const ng = scales.length / rows, maxq = 2 ** bits - 1;
  const Q = Float64Array.from(r0.Wq.data);
  const codes = r0.meta.codes.slice();
  const R = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < cols; j++) {
      let s = 0;
      for (let i = 0; i < cols; i++) {
        s += (W.data[r * cols + i] - Q[r * cols + i]) * H[i * cols + j];
      }
      R[r * cols + j] = s;
    }
  }
  for (let it = 0; it < numIter; it++) {
    for (let j = 0; j < cols; j++) {
      const d = H[j * cols + j], g = gs > 0 ? Math.floor(j / gs) : 0;
      for (let r = 0; r < rows; r++) {
        const s = scales[r * ng + g], z = zeros[r * ng + g];
        const u = Q[r * cols + j] + R[r * cols + j] / d;
        const code = Math.min(maxq, Math.max(0, Math.round(u / s) + z));
        const q = Math.fround(s * (code - z));
        const delta = Q[r * cols + j] - q;
        codes[r * cols + j] = code;
        Q[r * cols + j] = q;
        for (let k = 0; k < cols; k++) R[r * cols + k] += delta * H[j * cols + k];
      }
    }
  }
  return { codes, Q: Float32Array.from(Q) };
}

// (3) The blocked sweep (in-block rank-1 updates + one matmul per block) is the plain sweep.
// Tolerance: float32 matmuls can flip a rounding decision that lies within ~1e-7 of a grid
// midpoint; we require ≥ 99.9% identical codes and objectives within 1e-6 (relative).
Deno.test("blocked updates equal a plain column-by-column float64 QuantEase", async () => {
  const rng = mulberry32(43);
  let total = 0, same = 0, worst = 0;
  for (const [rows, cols, gs] of [[16, 96, -1], [12, 64, 16], [9, 130, -1]] as const) {
    const W = randomW(rng, rows, cols);
    const H = randomH(rng, cols, { n: 80, k: Math.floor(cols / 3), damp: 1e-3 });
    const ref = plainQuantEase(W, H, 3, gs, 8);
    const lRef = proxyLoss(W, { shape: W.shape, data: ref.Q }, H);
    for (const blocksize of [1, 5, 16, 40, 1000]) {
      const res = await quanteaseQuantize(W, { H, nsamples: 80 }, {
        bits: 3,
        groupSize: gs,
        numIter: 8,
        blocksize,
      });
      let s = 0;
      for (let i = 0; i < ref.codes.length; i++) if (ref.codes[i] === res.meta.codes[i]) s++;
      total += ref.codes.length;
      same += s;
      assert(s / ref.codes.length >= 0.999, `blocksize ${blocksize}: ${s}/${ref.codes.length}`);
      const l = proxyLoss(W, res.Wq, H);
      worst = Math.max(worst, Math.abs(l - lRef) / lRef);
      assertAlmostEquals(l, lRef, 1e-6 * lRef, `blocksize ${blocksize}: ${l} vs ${lRef}`);
    }
  }
  console.log(
    `  codes identical: ${same}/${total}; largest relative objective difference ${
      worst.toExponential(2)
    }`,
  );
});

Deno.test("actOrder equals the run on pre-permuted W/H, in original order", async () => {
  const rng = mulberry32(44);
  const rows = 11, cols = 80;
  const W = randomW(rng, rows, cols, 0.1);
  const H = randomH(rng, cols, { n: 50, k: 12, damp: 1e-2 });
  for (const o of [{ groupSize: 16 }, { groupSize: -1 }, { outlier: 0.02 }]) {
    const base = { bits: 3, numIter: 4, blocksize: 24, ...o };
    const a = await quanteaseQuantize(W, { H, nsamples: 50 }, { ...base, actOrder: true });
    assertBitExact(a);
    const perm = a.meta.perm!;
    for (let i = 1; i < cols; i++) {
      const d0 = H[perm[i - 1] * cols + perm[i - 1]], d1 = H[perm[i] * cols + perm[i]];
      assert(d0 > d1 || (d0 === d1 && perm[i - 1] < perm[i]));
    }
    const Wp = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < cols; i++) Wp[r * cols + i] = W.data[r * cols + perm[i]];
    }
    const Hp = new Float64Array(cols * cols);
    for (let i = 0; i < cols; i++) {
      for (let j = 0; j < cols; j++) Hp[i * cols + j] = H[perm[i] * cols + perm[j]];
    }
    const b = await quanteaseQuantize({ shape: [rows, cols], data: Wp }, {
      H: Hp,
      nsamples: 50,
    }, base);
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < cols; i++) {
        assertEquals(a.meta.codes[r * cols + perm[i]], b.meta.codes[r * cols + i]);
        assert(a.Wq.data[r * cols + perm[i]] === b.Wq.data[r * cols + i]);
      }
    }
    assertEquals(a.meta.scales, b.meta.scales);
    assertEquals(a.meta.objective, b.meta.objective);
  }
});

// (4) Outliers: exactly k = round(fraction · rows · cols) entries (half to even), or
// round(fraction · cols) whole columns; Wq = grid part + S bit-exactly.
Deno.test("outlier variant: counts, structure, bit-exact dequantizeQuantease, bits per weight", async () => {
  const rng = mulberry32(45);
  const cases: [number, number, number, boolean, number][] = [
    // rows, cols, fraction, structured, expected k
    [20, 50, 0.03, false, 30],
    [10, 25, 0.01, false, 2], // 2.5 → 2 (half to even, as np.round)
    [14, 30, 0.05, false, 21],
    [20, 50, 0.1, true, 5],
    [8, 30, 0.05, true, 2], // 1.5 → 2
    [16, 64, 0.01, true, 1], // 0.64 → 1
  ];
  for (const [rows, cols, fraction, structured, k] of cases) {
    const W = randomW(rng, rows, cols);
    const H = randomH(rng, cols, { n: 60, k: 15, damp: 1e-2 });
    for (const actOrder of [false, true]) {
      const res = await quanteaseQuantize(W, { H, nsamples: 60 }, {
        bits: 3,
        numIter: 6,
        outlier: fraction,
        structureOutlier: structured,
        actOrder,
        groupSize: actOrder ? -1 : 10,
        partialGroups: true,
      });
      const idx = res.meta.outlierIdx as Int32Array, val = res.meta.outlierVal as Float32Array;
      const msg = `[${rows}, ${cols}] ${fraction} ${structured ? "structured" : "unstructured"}`;
      assertEquals(idx.length, structured ? k * rows : k, msg);
      for (let m = 1; m < idx.length; m++) assert(idx[m] > idx[m - 1], "sorted, distinct");
      let nonzero = 0;
      for (const v of val) if (v !== 0) nonzero++;
      assertEquals(nonzero, idx.length, msg);
      assertBitExact(res);
      // Wq differs from the grid part only at the outlier positions.
      const G = dequantize(res.meta);
      const isOut = new Uint8Array(rows * cols);
      for (const i of idx) isOut[i] = 1;
      for (let i = 0; i < G.data.length; i++) {
        if (!isOut[i]) assert(G.data[i] === res.Wq.data[i]);
      }
      let extra: number;
      if (structured) {
        const oc = res.meta.outlierCols as Int32Array;
        assertEquals(oc.length, k);
        const set = new Set(oc);
        for (const i of idx) assert(set.has(i % cols), "outliers only in the chosen columns");
        for (const c of oc) {
          for (let r = 0; r < rows; r++) assert(isOut[r * cols + c], "whole columns");
        }
        extra = OUTLIER_VALUE_BITS * k * rows + OUTLIER_INDEX_BITS * k;
      } else {
        assertEquals(res.meta.outlierCols, undefined);
        extra = (OUTLIER_VALUE_BITS + OUTLIER_INDEX_BITS) * k;
      }
      assertAlmostEquals(
        res.bitsPerWeight,
        bitsPerWeight(res.meta) + extra / (rows * cols),
        1e-12,
        msg,
      );
      const obj = res.meta.objective as number[];
      for (let t = 1; t < obj.length; t++) assertLessOrEqual(obj[t], obj[t - 1] * (1 + 1e-9));
      assertAlmostEquals(proxyLoss(W, res.Wq, H), res.loss, 1e-4 * res.loss);
    }
  }
  // The initial sparse part is the k largest |w| (numIter 0).
  const W = randomW(rng, 12, 40);
  const H = randomH(rng, 40, { n: 40, k: 10, damp: 1e-2 });
  const r0 = await quanteaseQuantize(W, { H, nsamples: 40 }, {
    bits: 3,
    outlier: 0.05,
    numIter: 0,
  });
  const want = Array.from(W.data.keys()).sort((a, b) => Math.abs(W.data[b]) - Math.abs(W.data[a]))
    .slice(0, 24).sort((a, b) => a - b);
  assertEquals(Array.from(r0.meta.outlierIdx as Int32Array), want);
  assertEquals(Array.from(r0.meta.outlierVal as Float32Array), want.map((i) => W.data[i]));
  // Outliers help: with 5% outliers the objective is below plain QuantEase's at the same bits.
  const plain = await quanteaseQuantize(W, { H, nsamples: 40 }, { bits: 3, numIter: 10 });
  const out = await quanteaseQuantize(W, { H, nsamples: 40 }, {
    bits: 3,
    numIter: 10,
    outlier: 0.05,
  });
  assertLessOrEqual(out.loss, plain.loss);
  // dequantizeQuantease rejects inconsistent outlier fields.
  assertThrows(
    () => dequantizeQuantease({ ...out.meta, outlierVal: new Float32Array(1) }),
    QuantlabError,
    "equal lengths",
  );
});

Deno.test("quantease products go through ctx.backend.matmul; relax and init weight run", async () => {
  let calls = 0;
  const spy: Backend = {
    ...cpuBackend,
    matmul: (a, b) => {
      calls++;
      return cpuBackend.matmul(a, b);
    },
  };
  const rng = mulberry32(46);
  const W = randomW(rng, 6, 100);
  const H = randomH(rng, 100, { n: 30, k: 8, damp: 0.1 });
  const res = await quantease({ bits: 4, blocksize: 32, numIter: 3 }).quantizeWeight(W, {
    H,
    nsamples: 30,
  }, { backend: spy });
  const t = res.meta.timings as { trailingFlops: number; iterations: number[] };
  assertEquals(t.iterations.length, 3);
  // One refresh plus at most one product per block (4 blocks of ≤ 32 columns) per sweep.
  assert(calls >= 2 && calls <= 1 + 3 * 4, `${calls} calls`);
  assertGreater(t.trailingFlops, 0);
  assertEquals(W.data.length, 600);
  // relax: the reference's skipped-rounding sweeps (t = 1, 4); the last sweep always rounds.
  const rx = await quanteaseQuantize(W, { H: Float32Array.from(H), nsamples: 30 }, {
    bits: 3,
    numIter: 5,
    relax: true,
  });
  assertBitExact(rx);
  const ob = rx.meta.objective as number[];
  assert(ob[2] < ob[1], "a relaxed (unrounded) sweep lowers the objective");
  // init "weight" starts from the unquantized W (objective 0) and rounds in the first sweep.
  const iw = await quanteaseQuantize(W, { H, nsamples: 30 }, {
    bits: 3,
    numIter: 4,
    init: "weight",
  });
  assertBitExact(iw);
  const ow = iw.meta.objective as number[];
  assertEquals(ow[0], 0);
  for (let k = 2; k < ow.length; k++) assertLessOrEqual(ow[k], ow[k - 1] * (1 + 1e-9));
  // Dead inputs (H_jj = 0) keep their rounded value and do not break the sweep.
  const Hd = H.slice();
  for (let j = 0; j < 100; j++) Hd[7 * 100 + j] = Hd[j * 100 + 7] = 0;
  const dd = await quanteaseQuantize(W, { H: Hd, nsamples: 30 }, { bits: 3, numIter: 3 });
  const r = rtnQuantize(W, { bits: 3 });
  for (let row = 0; row < 6; row++) {
    assertEquals(dd.meta.codes[row * 100 + 7], r.meta.codes[row * 100 + 7]);
  }
  assertBitExact(dd);
});

// (5) Option errors.
Deno.test("quantease option errors name the option", async () => {
  const bad: [Partial<QuantEaseOptions>, string][] = [
    [{ bits: 1 }, "bits"],
    [{ bits: 9 }, "bits"],
    [{ bits: 2.5 }, "bits"],
    [{ groupSize: 0 }, "groupSize"],
    [{ groupSize: -2 }, "groupSize"],
    [{ numIter: -1 }, "numIter"],
    [{ numIter: 1.5 }, "numIter"],
    [{ init: "nope" as "rtn" }, "init"],
    [{ init: "weight", numIter: 0 }, "numIter"],
    [{ percdamp: 0 }, "percdamp"],
    [{ percdamp: NaN }, "percdamp"],
    [{ blocksize: 0 }, "blocksize"],
    [{ blocksize: 2.5 }, "blocksize"],
    [{ outlier: -0.1 }, "outlier"],
    [{ outlier: 1 }, "outlier"],
    [{ outlier: NaN }, "outlier"],
    [{ structureOutlier: true }, "structureOutlier"],
    [{ outlier: 0.01, alpha: 0 }, "alpha"],
    [{ alpha: Infinity }, "alpha"],
    [{ actOrder: "yes" as unknown as boolean }, "actOrder"],
    [{ relax: 1 as unknown as boolean }, "relax"],
    [{ mse: { grid: 0 } }, "mse"],
  ];
  for (const [o, name] of bad) {
    const e = assertThrows(() => quantease({ bits: 3, ...o }), OptionError, name);
    assertEquals(e.option, name, JSON.stringify(o));
  }
  const cols = 12;
  const W = { shape: [3, cols], data: new Float32Array(3 * cols).fill(0.5) };
  const I = new Float64Array(cols * cols);
  for (let i = 0; i < cols; i++) I[i * cols + i] = 1;
  const layer = "model.layers.2.mlp.up_proj";
  const e1 = await assertRejects(
    () => quantease({ bits: 4, groupSize: 5 }).quantizeWeight(W, { H: I, nsamples: 1 }, { layer }),
    OptionError,
    layer,
  );
  assertEquals(e1.option, "groupSize");
  await assertRejects(
    () => quantease({ bits: 4 }).quantizeWeight(W, { nsamples: 1 }, { layer }),
    QuantlabError,
    "stats.H",
  );
  await assertRejects(
    () => quantease({ bits: 4 }).quantizeWeight(W, { H: I.subarray(0, 25), nsamples: 1 }),
    QuantlabError,
    "25 values",
  );
  const Hn = I.slice();
  Hn[3] = NaN;
  await assertRejects(
    () => quantease({ bits: 4 }).quantizeWeight(W, { H: Hn, nsamples: 1 }, { layer }),
    NonFiniteError,
    layer,
  );
  const Wn = { shape: W.shape, data: W.data.slice() };
  Wn.data[2] = Infinity;
  const e5 = await assertRejects(
    () => quantease({ bits: 4 }).quantizeWeight(Wn, { H: I, nsamples: 1 }, { layer }),
    NonFiniteError,
  );
  assertStringIncludes(e5.message, layer);
  const q = quantease({ bits: 3 });
  assertEquals(q.name, "quantease");
  assertEquals(q.needsHessian, true);
  assertEquals(q.options.numIter, 30);
  assertEquals(q.options.init, "rtn");
});

// (6) Real statistics: the 35 stories260K layers (real W and H) and random W with each real H,
// 3-bit, QuantEase (RTN start, 30 iterations) vs GPTQ with the same grid options. Measured here:
// per-channel: QuantEase ≤ GPTQ on 67/70 cases (mean ratio 0.955, worst 1.010); groupSize 32:
// 68/70 (mean 0.948); with act-order (per-channel or g32), only 22–35/70 (mean 1.01–1.03, worst
// 1.14): act-order is GPTQ's heuristic for its one greedy pass, while for CD it only changes the
// sweep order. Started from GPTQ (init "gptq", the reference's gptq_quantease), QuantEase can
// only improve on GPTQ (monotone descent) and does on every case.
Deno.test("real stories260K statistics: QuantEase 3-bit vs GPTQ 3-bit proxy loss", async () => {
  const layers = await realLayers();
  assertEquals(layers.length, 35);
  const configs: QuantEaseOptions[] = [
    { bits: 3 },
    { bits: 3, groupSize: 32, partialGroups: true },
    { bits: 3, actOrder: true },
    { bits: 3, groupSize: 32, actOrder: true, partialGroups: true },
  ];
  for (const cfg of configs) {
    const lines: string[] = [];
    let n = 0, wins = 0, ratioSum = 0, worst = 0;
    const losers: string[] = [];
    for (const [li, l] of layers.entries()) {
      const [rows, cols] = l.W.shape;
      for (const kind of ["real W", "random W"]) {
        const W = kind === "real W" ? l.W : randomW(mulberry32(1000 + li), rows, cols, 0.1);
        const stats = { H: l.H, nsamples: 8192 };
        const g = await gptqQuantize(W, stats, cfg);
        const q = await quanteaseQuantize(W, stats, cfg);
        const qg = await quanteaseQuantize(W, stats, { ...cfg, init: "gptq" });
        const r = rtnQuantize(W, cfg);
        const lg = proxyLoss(W, g.Wq, l.H), lq = proxyLoss(W, q.Wq, l.H);
        const lqg = proxyLoss(W, qg.Wq, l.H), lr = proxyLoss(W, r.Wq, l.H);
        n++;
        ratioSum += lq / lg;
        worst = Math.max(worst, lq / lg);
        if (lq <= lg) wins++;
        else losers.push(`${l.name} (${kind}) ×${(lq / lg).toFixed(3)}`);
        // Guaranteed by monotone descent from the respective starting points.
        assertLessOrEqual(lq, lr * (1 + 1e-9), `${l.name} ${kind}: QuantEase > RTN`);
        assertLessOrEqual(lqg, lg * (1 + 1e-6), `${l.name} ${kind}: QuantEase(gptq) > GPTQ`);
        lines.push(
          `  ${l.name.padEnd(32)} ${kind.padEnd(8)} ${`${rows}×${cols}`.padStart(7)} ${
            lr.toExponential(3)
          } ${lg.toExponential(3)} ${lq.toExponential(3)} ${lqg.toExponential(3)} ${
            (lq / lg).toFixed(3).padStart(6)
          } ${(lqg / lg).toFixed(3).padStart(6)}`,
        );
      }
    }
    console.log(`\n  ${JSON.stringify(cfg)}: tr((W−Wq)H(W−Wq)ᵀ)`);
    console.log(
      `  ${"layer".padEnd(32)} ${"W".padEnd(8)} ${"shape".padStart(7)} ${"RTN".padEnd(9)} ${
        "GPTQ".padEnd(9)
      } ${"QE".padEnd(9)} ${"QE(gptq)".padEnd(9)} ${"QE/G".padStart(6)} ${"QEg/G".padStart(6)}`,
    );
    console.log(lines.join("\n"));
    console.log(
      `  QuantEase(RTN start) ≤ GPTQ on ${wins}/${n}; mean ratio ${(ratioSum / n).toFixed(4)}; ` +
        `worst ${worst.toFixed(3)}${losers.length ? `; above GPTQ: ${losers.join(", ")}` : ""}`,
    );
    if (!cfg.actOrder) {
      assert(wins >= 0.85 * n, `QuantEase ≤ GPTQ on only ${wins}/${n}`);
      assert(ratioSum / n < 0.99, `mean ratio ${ratioSum / n}`);
    } else {
      // With act-order the paper's claim does not hold here; only "within 20% of GPTQ".
      assert(worst < 1.2, `act-order worst ratio ${worst}`);
    }
  }
});

Deno.test("findParams on the initialisation's target fixes the grids (outlier columns excluded)", async () => {
  const rng = mulberry32(47);
  const rows = 8, cols = 40;
  const W = randomW(rng, rows, cols);
  // One huge column: with structured outliers it is held in S, so the grid ignores it.
  for (let r = 0; r < rows; r++) W.data[r * cols + 5] = 3 + r;
  const H = randomH(rng, cols, { n: 40, k: 10, damp: 1e-2 });
  const res = await quanteaseQuantize(W, { H, nsamples: 40 }, {
    bits: 3,
    outlier: 0.025,
    structureOutlier: true,
    numIter: 0,
  });
  assertEquals(Array.from(res.meta.outlierCols as Int32Array), [5]);
  const Wz = { shape: W.shape, data: W.data.slice() };
  for (let r = 0; r < rows; r++) Wz.data[r * cols + 5] = 0;
  assertEquals(res.meta.scales, findParams(Wz, { bits: 3 }).scale);
  for (let r = 0; r < rows; r++) {
    assertAlmostEquals(res.Wq.data[r * cols + 5], W.data[r * cols + 5], 1e-6);
  }
});
