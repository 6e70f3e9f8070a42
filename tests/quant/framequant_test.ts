import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertInstanceOf,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import {
  analyzeMatrix,
  dequantizeFramequant,
  frameMatrix,
  framequant,
  type FramequantOptions,
  framequantQuantize,
  synthesizeMatrix,
  tightFrame,
} from "../../src/quant/weight_only/framequant.ts";
import { gptqQuantize } from "../../src/quant/weight_only/gptq.ts";
import { unpackCodes } from "../../src/quant/core/grid.ts";
import { OptionError, QuantlabError } from "../../src/errors.ts";
import { mulberry32, randn, randnArray, type Rng } from "../../src/rng.ts";
import { realLayers } from "./_real_stats.ts";
import { proxyLoss } from "./_oracles.ts";

/** H = 2/n · XᵀX of `n` correlated random input rows, plus `damp`·I (float64). */
function randomH(rng: Rng, cols: number, n = 96, damp = 1e-3): Float64Array {
  const mix = randnArray(rng, cols * 4);
  const H = new Float64Array(cols * cols);
  const x = new Float64Array(cols);
  for (let t = 0; t < n; t++) {
    const z = [randn(rng), randn(rng), randn(rng), randn(rng)];
    for (let j = 0; j < cols; j++) {
      x[j] = randn(rng) * 0.3 + z.reduce((s, v, a) => s + v * mix[a * cols + j], 0);
    }
    for (let i = 0; i < cols; i++) {
      for (let j = 0; j < cols; j++) H[i * cols + j] += (2 / n) * x[i] * x[j];
    }
  }
  for (let i = 0; i < cols; i++) H[i * cols + i] += damp;
  return H;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

Deno.test("tight frames: synthesis after analysis is the identity (n 64/172/256, r 1/1.1/1.5)", () => {
  const rng = mulberry32(1);
  for (const n of [64, 172, 256]) {
    for (const r of [1, 1.1, 1.5]) {
      const f = tightFrame(n, r, 100 + n);
      assertEquals(f.k, Math.ceil(r * n - 1e-9), `k for n=${n} r=${r}`);
      for (let t = 0; t < 3; t++) {
        const x = randnArray(rng, n);
        const c = f.analysis(x);
        assertEquals(c.length, f.k);
        const y = f.synthesis(c);
        const err = maxAbsDiff(x, y);
        assert(err < 1e-5, `n=${n} r=${r}: |Aᵀ A x − x| = ${err}`);
        // Parseval: ‖A x‖ = ‖x‖.
        const nx = x.reduce((s, v) => s + v * v, 0), nc = c.reduce((s, v) => s + v * v, 0);
        assertAlmostEquals(nc, nx, 1e-9 * nx);
      }
      // Dense check: AᵀA = I; AAᵀ is a projection of rank n (trace n).
      const A = frameMatrix(f), k = f.k;
      let worst = 0, trace = 0, maxEntry = 0;
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < n; j++) {
          let s = 0;
          for (let a = 0; a < k; a++) s += A[a * n + i] * A[a * n + j];
          worst = Math.max(worst, Math.abs(s - (i === j ? 1 : 0)));
        }
      }
      for (let a = 0; a < k; a++) {
        for (let j = 0; j < n; j++) {
          trace += A[a * n + j] ** 2;
          maxEntry = Math.max(maxEntry, Math.abs(A[a * n + j]));
        }
      }
      assert(worst < 1e-12, `n=${n} r=${r}: AᵀA − I = ${worst}`);
      assertAlmostEquals(trace, n, 1e-9);
      // Incoherent: no frame vector is concentrated on a coordinate (Hadamard: 1/√n).
      assert(
        maxEntry * Math.sqrt(n) < 6,
        `n=${n} r=${r}: max |A_ij|·√n = ${maxEntry * Math.sqrt(n)}`,
      );
    }
  }
  // Seeded and deterministic; different seeds give different frames.
  const x = randnArray(rng, 172);
  assertEquals(tightFrame(172, 1.1, 5).analysis(x), tightFrame(172, 1.1, 5).analysis(x));
  assert(
    maxAbsDiff(tightFrame(172, 1.1, 5).analysis(x), tightFrame(172, 1.1, 6).analysis(x)) > 0.1,
  );
  assertThrows(() => tightFrame(64, 0.9, 0), OptionError, "r");
  assertThrows(() => tightFrame(0, 1, 0), OptionError, "n");
});

Deno.test("analyzeMatrix / synthesizeMatrix equal the dense L·M·Rᵀ and Lᵀ·C·R", () => {
  const rng = mulberry32(2);
  const L = tightFrame(12, 1.5, 3), R = tightFrame(20, 1.1, 4);
  const AL = frameMatrix(L), AR = frameMatrix(R);
  const M = randnArray(rng, 12 * 20);
  const C = analyzeMatrix(M, L, R);
  let worst = 0;
  for (let a = 0; a < L.k; a++) {
    for (let b = 0; b < R.k; b++) {
      let s = 0;
      for (let i = 0; i < 12; i++) {
        for (let j = 0; j < 20; j++) s += AL[a * 12 + i] * M[i * 20 + j] * AR[b * 20 + j];
      }
      worst = Math.max(worst, Math.abs(s - C[a * R.k + b]));
    }
  }
  assert(worst < 1e-12, `analysis vs dense: ${worst}`);
  assert(maxAbsDiff(synthesizeMatrix(C, L, R), M) < 1e-12);
});

Deno.test("r = 1 and 16 bits reconstructs W to 1e-4; Wq === dequantizeFramequant(meta)", async () => {
  const rng = mulberry32(3);
  const layers = await realLayers();
  const shapes: [number, number][] = [[64, 64], [32, 64], [172, 64], [64, 172], [24, 256]];
  for (const [rows, cols] of shapes) {
    const real = layers.find((l) => l.W.shape[0] === rows && l.W.shape[1] === cols);
    const W = real?.W ??
      { shape: [rows, cols], data: randnArray(rng, rows * cols, { scale: 0.1 }) };
    const H = real ? Float64Array.from(real.H) : randomH(rng, cols);
    for (
      const o of [{ r: 1 }, { r: 1.5, rowR: 1.1, groupSize: -1 }, {
        r: 1,
        groupSize: 32,
        partialGroups: true,
      }]
    ) {
      const res = await framequantQuantize(W, { H, nsamples: 1 }, {
        bits: 16,
        clipSigma: false,
        ...o,
      });
      const err = maxAbsDiff(W.data, res.Wq.data);
      assert(err < 1e-4, `[${rows}, ${cols}] ${JSON.stringify(o)}: max |W − Wq| = ${err}`);
      assertEquals(dequantizeFramequant(structuredClone(res.meta)).data, res.Wq.data);
    }
  }
  // With the reference's 2σ clip the frame coefficients are clipped and W is not recovered.
  const l = layers[0];
  const clipped = await framequantQuantize(l.W, { H: l.H, nsamples: 1 }, { bits: 16 });
  assert(maxAbsDiff(l.W.data, clipped.Wq.data) > 1e-3);
});

Deno.test("meta round-trips bit-exactly; codes, grids and frame sizes are in meta", async () => {
  const rng = mulberry32(4);
  const rows = 20, cols = 48;
  const W = { shape: [rows, cols], data: randnArray(rng, rows * cols, { scale: 0.05 }) };
  const H = randomH(rng, cols);
  const cases: FramequantOptions[] = [
    { bits: 2, r: 1.1 },
    { bits: 3, r: 1.5, rowR: 1, groupSize: 24, actOrder: true },
    { bits: 4, r: 1.25, groupSize: 20, actOrder: true, staticGroups: true, sym: true },
    { bits: 2, r: 1.1, groupSize: 16, partialGroups: true, blocksize: 7, seed: 9 },
    { bits: 12, r: 1.25, groupSize: 12, clipSigma: 3 },
  ];
  for (const o of cases) {
    const res = await framequant(o).quantizeWeight(W, { H, nsamples: 1 }, { layer: "x" });
    const m = res.meta;
    const kr = Math.ceil((o.rowR ?? o.r!) * rows - 1e-9), kc = Math.ceil(o.r! * cols - 1e-9);
    assertEquals(m.method, "framequant");
    assertEquals(m.shape, [rows, cols]);
    assertEquals(m.frameShape, [kr, kc]);
    assertEquals([m.r, m.rowR, m.seed], [o.r, o.rowR ?? o.r, o.seed ?? 0]);
    const codes = o.bits <= 8 ? m.codes : unpackWide(m.packed!, o.bits, kr * kc);
    assertEquals(codes.length, kr * kc);
    if (o.bits <= 8) assertEquals(unpackCodes(m.packed!, { bits: o.bits, count: kr * kc }), codes);
    assert(Array.from(codes).every((c) => c >= 0 && c < 2 ** o.bits));
    const D = dequantizeFramequant(structuredClone(m));
    for (let i = 0; i < D.data.length; i++) {
      assert(D.data[i] === res.Wq.data[i], `${JSON.stringify(o)} element ${i}`);
    }
  }
  const gm = (await gptqQuantize(W, { H, nsamples: 1 }, { bits: 2 })).meta;
  assertThrows(() => dequantizeFramequant(gm), QuantlabError, "gptq");
});

function unpackWide(packed: Uint32Array, bits: number, count: number): number[] {
  const out: number[] = [];
  for (let k = 0, pos = 0; k < count; k++, pos += bits) {
    let c = 0;
    for (let b = 0; b < bits; b++) c |= ((packed[(pos + b) >>> 5] >>> ((pos + b) & 31)) & 1) << b;
    out.push(c);
  }
  return out;
}

Deno.test("bitsPerWeight = (codes + grid parameters) per original weight; paper's bits × r", async () => {
  const rng = mulberry32(5);
  // [rows, cols, r, rowR, bits, groupSize, sym, actOrder]
  const cases: [number, number, number, number, number, number, boolean, boolean][] = [
    [64, 64, 1, 1, 2, -1, false, false],
    [32, 64, 1.125, 1.125, 2, 24, false, false],
    [32, 64, 1.125, 1, 3, 36, true, false],
    [16, 40, 1.5, 1.5, 4, 20, false, true],
    [172, 64, 1.1, 1.1, 2, -1, false, false],
    [64, 172, 1.1, 1, 2, -1, false, false],
    [8, 32, 1.25, 1, 16, 8, false, false],
  ];
  for (const [rows, cols, r, rowR, bits, gs, sym, actOrder] of cases) {
    const W = { shape: [rows, cols], data: randnArray(rng, rows * cols, { scale: 0.05 }) };
    const res = await framequantQuantize(W, { H: randomH(rng, cols, 48), nsamples: 1 }, {
      bits,
      r,
      rowR,
      groupSize: gs,
      sym,
      actOrder,
    });
    const kr = Math.ceil(rowR * rows - 1e-9), kc = Math.ceil(r * cols - 1e-9);
    const grids = kr * (gs > 0 ? Math.ceil(kc / gs) : 1);
    const gIdx = actOrder && gs > 0 ? 32 * kc : 0;
    const expected = (bits * kr * kc + (sym ? 16 : 32) * grids + gIdx) / (rows * cols);
    const msg = `${rows}×${cols} r=${r} rowR=${rowR} ${bits}b g${gs}`;
    assertAlmostEquals(res.bitsPerWeight, expected, 1e-12, msg);
    // The paper's formula counts the codes: bits × r per weight when only the input side is
    // redundant (`rowR: 1`; "2.2 bits" at r = 1.1), bits × r·rowR with both sides; ⌈r·n⌉ rounding
    // moves it by less than bits/n.
    const codeBits = res.bitsPerWeight - ((sym ? 16 : 32) * grids + gIdx) / (rows * cols);
    const tol = bits * (1 / cols + 1 / rows + 1 / (rows * cols));
    assert(Math.abs(codeBits - bits * r * rowR) < tol, `${msg}: ${codeBits} vs ${bits * r * rowR}`);
  }
});

Deno.test("option errors name the option", async () => {
  const bad: [Partial<FramequantOptions>, string][] = [
    [{ bits: 1 }, "bits"],
    [{ bits: 17 }, "bits"],
    [{ bits: 2.5 }, "bits"],
    [{ bits: 2, r: 0.9 }, "r"],
    [{ bits: 2, r: NaN }, "r"],
    [{ bits: 2, rowR: 0.5 }, "rowR"],
    [{ bits: 2, seed: -1 }, "seed"],
    [{ bits: 2, seed: 1.5 }, "seed"],
    [{ bits: 2, clipSigma: 0 }, "clipSigma"],
    [{ bits: 2, clipSigma: -2 }, "clipSigma"],
    [{ bits: 2, normDamp: -1 }, "normDamp"],
    [{ bits: 2, groupSize: 0 }, "groupSize"],
    [{ bits: 2, percdamp: 0 }, "percdamp"],
    [{ bits: 2, blocksize: 0 }, "blocksize"],
    [{ bits: 12, mse: true }, "mse"],
  ];
  for (const [o, name] of bad) {
    const e = assertThrows(() => framequant(o as FramequantOptions), OptionError);
    assertEquals((e as OptionError).option, name, JSON.stringify(o));
  }
  const q = framequant({ bits: 2, r: 1.1, groupSize: 32 });
  assertEquals([q.name, q.needsHessian], ["framequant", true]);
  const rng = mulberry32(6);
  const W = { shape: [8, 64], data: randnArray(rng, 512) };
  const e = await assertRejects(
    () => q.quantizeWeight(W, { H: randomH(rng, 64, 32), nsamples: 1 }, { layer: "mlp.up" }),
    OptionError,
  );
  assertEquals((e as OptionError).option, "groupSize");
  assertStringIncludes(e.message, "71 frame columns");
  assertStringIncludes(e.message, "mlp.up");
  const e2 = await assertRejects(() => q.quantizeWeight(W, { nsamples: 1 }), QuantlabError);
  assertStringIncludes(e2.message, "stats.H");
  assertInstanceOf(e2, QuantlabError);
});

// The paper (Llama2 / OPT, d ≥ 768) reports FrameQuant 2-bit far ahead of GPTQ 2-bit, with r = 1.1
// worth "2.2 bits". Here the layers are 64–172 wide, per-row grids alone cost 0.2–0.5 bits per
// weight, and both frame sides are redundant by default (≈ bits·r² codes), so FrameQuant r = 1.1
// stores ~0.5 more bits per weight than GPTQ 2-bit. What holds (70 cases: the 35 real layers with
// their W, and with a Gaussian W of the same RMS, frame seed = case index): FrameQuant beats GPTQ
// 2-bit nearly everywhere (r = 1 at equal storage too), redundancy helps, but per stored bit GPTQ's
// third bit buys more than the frame's redundancy, so GPTQ 3-bit beats FrameQuant 2-bit r = 1.1
// in every case.
Deno.test("real stories260K layers: FrameQuant 2-bit r=1.1 vs GPTQ 2-bit proxy loss", async () => {
  const layers = await realLayers();
  const rng = mulberry32(7);
  const table: string[] = [];
  const names = ["FQ r=1", "FQ r=1.1", "FQ 1.1 rowR=1", "FQ 3b r=1", "GPTQ 3-bit"];
  const logs: number[][] = names.map(() => []);
  const bpw = [0, 0, 0, 0, 0, 0]; // GPTQ2, then `names`
  let t = 0;
  for (const kind of ["real W", "randn W"]) {
    for (const l of layers) {
      const H = Float64Array.from(l.H);
      let W = l.W;
      if (kind === "randn W") {
        const s = Math.sqrt(W.data.reduce((a, v) => a + v * v, 0) / W.data.length);
        W = { shape: W.shape, data: randnArray(rng, W.data.length, { scale: s }) };
      }
      const stats = { H, nsamples: 1 };
      const g2 = await gptqQuantize(W, stats, { bits: 2 });
      const others = [
        await framequantQuantize(W, stats, { bits: 2, r: 1, seed: t }),
        await framequantQuantize(W, stats, { bits: 2, r: 1.1, seed: t }),
        await framequantQuantize(W, stats, { bits: 2, r: 1.1, rowR: 1, seed: t }),
        await framequantQuantize(W, stats, { bits: 3, r: 1, seed: t }),
        await gptqQuantize(W, stats, { bits: 3 }),
      ];
      t++;
      const base = proxyLoss(W, g2.Wq, H);
      const ratios = others.map((q) => proxyLoss(W, q.Wq, H) / base);
      ratios.forEach((v, i) => logs[i].push(Math.log(v)));
      [g2, ...others].forEach((q, i) => (bpw[i] += q.bitsPerWeight));
      table.push(
        `${kind.padEnd(8)} ${l.name.replace("model.layers.", "").padEnd(18)} ` +
          `${`${W.shape[0]}×${W.shape[1]}`.padEnd(7)} ${base.toExponential(2).padStart(9)}` +
          ratios.map((v) => v.toFixed(3).padStart(14)).join(""),
      );
    }
  }
  const n = t;
  const geo = logs.map((a) => Math.exp(a.reduce((s, v) => s + v, 0) / n));
  const wins = logs.map((a) => a.filter((v) => v < 0).length);
  const bits = bpw.map((b) => b / n);
  console.log(
    `\nproxy loss tr((W−Wq)H(W−Wq)ᵀ) relative to GPTQ 2-bit\n` +
      `kind     layer              shape   GPTQ2 loss${
        names.map((s) => s.padStart(14)).join("")
      }\n` +
      table.join("\n") +
      `\n${"geomean ratio".padEnd(46)}${geo.map((v) => v.toFixed(3).padStart(14)).join("")}` +
      `\n${"cases better than GPTQ 2-bit".padEnd(46)}` +
      wins.map((v) => `${v}/${n}`.padStart(14)).join("") +
      `\n${"mean bits/weight (GPTQ 2-bit " + bits[0].toFixed(3) + ")"}`.padEnd(47) +
      bits.slice(1).map((v) => v.toFixed(3).padStart(14)).join(""),
  );
  assert(n >= 20);
  const [fq1, fq11, fq11row, fq3, g3] = [0, 1, 2, 3, 4];
  // FrameQuant beats GPTQ 2-bit: r = 1 at the same storage, r = 1.1 with more bits.
  assert(wins[fq1] >= 0.85 * n, `FQ r=1 better in ${wins[fq1]}/${n}`);
  assert(wins[fq11] >= 0.9 * n, `FQ r=1.1 better in ${wins[fq11]}/${n}`);
  assert(geo[fq11] < 0.7 && geo[fq1] < 0.85, `geomeans ${geo}`);
  // Redundancy helps: more frame coefficients, lower loss.
  assert(geo[fq11] < geo[fq11row] && geo[fq11row] < geo[fq1], `geomeans ${geo}`);
  // Where the paper's claim does not hold here: GPTQ 3-bit beats FrameQuant 2-bit r = 1.1 in
  // every case, and a stored bit spent on redundancy buys less than one spent on a third code
  // bit: d ln(loss) / d(bits per weight) from FQ r=1 2-bit, to r = 1.1 (one or both sides) versus
  // to FQ 3-bit r = 1; and versus GPTQ 2 → 3 bits.
  for (let i = 0; i < n; i++) assert(logs[g3][i] < logs[fq11][i], `case ${i}`);
  const slope = (i: number, j: number) => Math.log(geo[i] / geo[j]) / (bits[i + 1] - bits[j + 1]);
  const perBit = {
    redundancyBoth: slope(fq11, fq1),
    redundancyInput: slope(fq11row, fq1),
    thirdBitFq: slope(fq3, fq1),
    thirdBitGptq: Math.log(geo[g3]) / (bits[g3 + 1] - bits[0]),
  };
  console.log("d ln(loss)/d(bits per weight):", perBit);
  const worstBit = Math.max(perBit.thirdBitFq, perBit.thirdBitGptq);
  assert(
    Math.min(perBit.redundancyBoth, perBit.redundancyInput) > worstBit,
    JSON.stringify(perBit),
  );
});
