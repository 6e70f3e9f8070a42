import {
  assert,
  assertEquals,
  assertGreater,
  assertInstanceOf,
  assertLess,
  assertLessOrEqual,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import {
  applyRotation,
  denseRotation,
  dequantizeQuip,
  incoherencePost,
  incoherencePre,
  kronFactors,
  ldlpAdmm,
  quip,
  type QuipMetaInfo,
  type QuipOptions,
  quipQuantize,
  randomHadamard,
  randomOrthogonalKron,
  roundMethod,
} from "../../src/quant/weight_only/quip.ts";
import { gptqQuantize } from "../../src/quant/weight_only/gptq.ts";
import { unpackCodes } from "../../src/quant/core/grid.ts";
import { gemmF64TS, invertTriangular, onnxGemmF64 } from "../../src/quant/core/linalg.ts";
import type { Tensor } from "../../src/tensor.ts";
import { NonFiniteError, OptionError, QuantlabError } from "../../src/errors.ts";
import { mulberry32, randnArray } from "../../src/rng.ts";
import { realLayers } from "./_real_stats.ts";
import { proxyLossFlat as proxyLoss, randomH } from "./_oracles.ts";

/** Dense row-major product `A[m,k] · B[k,n]` (test reference). */
function mm(A: ArrayLike<number>, B: ArrayLike<number>, m: number, k: number, n: number) {
  const C = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) {
      const a = A[i * k + p];
      for (let j = 0; j < n; j++) C[i * n + j] += a * B[p * n + j];
    }
  }
  return C;
}

function transpose(A: ArrayLike<number>, r: number, c: number): Float64Array {
  const T = new Float64Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) T[j * r + i] = A[i * c + j];
  return T;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i] - b[i]));
  return e;
}

const ALL = {
  preRescale: true,
  preProj: true,
  preGptqH: true,
  percdamp: 0.01,
  seed: 3,
} as const;

Deno.test("U and V are orthogonal (UUᵀ = I to 1e-5) for 64, 172, 32, 256; applied = dense", async () => {
  assertEquals(kronFactors(64), [8, 8]);
  assertEquals(kronFactors(172), [4, 43]);
  assertEquals(kronFactors(32), [4, 8]);
  assertEquals(kronFactors(256), [16, 16]);
  assertEquals(kronFactors(4096), [64, 64]);
  assertEquals(kronFactors(127), [1, 127]);
  const gemm = await onnxGemmF64();
  for (const n of [64, 172, 32, 256]) {
    for (const rot of [randomOrthogonalKron(n, mulberry32(n)), randomHadamard(n, mulberry32(n))]) {
      const R = denseRotation(rot);
      const N = Math.round(Math.sqrt(R.length));
      assertEquals(N, rot.kind === "kron" ? n : [64, 256, 32, 256][[64, 172, 32, 256].indexOf(n)]);
      const RRt = mm(R, transpose(R, N, N), N, N, N);
      let err = 0;
      for (let i = 0; i < N; i++) {
        for (let j = 0; j < N; j++) {
          err = Math.max(err, Math.abs(RRt[i * N + j] - (i === j ? 1 : 0)));
        }
      }
      assertLess(err, 1e-5, `${rot.kind} ${n}: max |UUᵀ − I| = ${err}`);
      // The structured product (onnxruntime GEMMs / FWHT) equals the dense matrix.
      const rng = mulberry32(n + 1);
      for (const [A, B] of [[1, 1], [3, 5], [1, 7], [6, 1]]) {
        const x = Float64Array.from({ length: A * N * B }, () => rng() - 0.5);
        for (const tr of [false, true]) {
          const y = await applyRotation(x, [A, N, B], rot, tr, gemm);
          const Rm = tr ? transpose(R, N, N) : R;
          let e = 0;
          for (let a = 0; a < A; a++) {
            for (let b = 0; b < B; b++) {
              for (let i = 0; i < N; i++) {
                let s = 0;
                for (let j = 0; j < N; j++) s += Rm[i * N + j] * x[(a * N + j) * B + b];
                e = Math.max(e, Math.abs(s - y[(a * N + i) * B + b]));
              }
            }
          }
          assertLess(e, 1e-12, `${rot.kind} ${n} [${A},${N},${B}] transpose=${tr}`);
        }
      }
    }
  }
  // A Kronecker factor is Haar: its entries are not all of one magnitude (not a signed permutation).
  const K = randomOrthogonalKron(64, mulberry32(9));
  assert(K.mats[0].some((v) => Math.abs(Math.abs(v) - Math.abs(K.mats[0][0])) > 1e-3));
});

Deno.test("pre-processing is W ← U·W·D·Vᵀ, H ← V·D⁻¹HD⁻¹·Vᵀ, and post-processing undoes it", async () => {
  const gemm = await onnxGemmF64();
  const shapes: [number, number][] = [[64, 64], [172, 64], [64, 172], [32, 256]];
  for (const [rows, cols] of shapes) {
    const rng = mulberry32(rows * 1000 + cols);
    const W = Float64Array.from(randnArray(rng, rows * cols));
    const H = randomH(rng, cols, { n: cols + 16, k: 6, damp: 1e-2 });
    for (const proj of ["kron", "hadamard"] as const) {
      for (const flags of [{ preRescale: false }, {}, { preProj: false }, { preGptqH: false }]) {
        const o = { ...ALL, proj, ...flags };
        const pre = await incoherencePre(W, H, [rows, cols], o, gemm);
        const back = await incoherencePost(pre.W, pre.state, gemm);
        const err = maxAbsDiff(back, W);
        assertLess(err, 1e-10, `${rows}×${cols} ${JSON.stringify(o)}: post(pre(W)) error ${err}`);
      }
      // The explicit formula, densely, for all flags on (no dampening, to compare H exactly).
      const pre = await incoherencePre(W, H, [rows, cols], { ...ALL, proj, preGptqH: false }, gemm);
      const { U, V } = pre.state;
      const [m, n] = pre.state.rotatedShape;
      const Ud = denseRotation(U!), Vd = denseRotation(V!);
      const D = pre.state.rescale!;
      const Wp = new Float64Array(m * n);
      for (let r = 0; r < rows; r++) {
        for (let j = 0; j < cols; j++) Wp[r * n + j] = W[r * cols + j] * D[j];
      }
      const Wexp = mm(mm(Ud, Wp, m, m, n), transpose(Vd, n, n), m, n, n);
      assertLess(maxAbsDiff(Wexp, pre.W), 1e-10, `${rows}×${cols} ${proj} W`);
      // H: hScale·D⁻¹HD⁻¹ embedded, + 1e-2·I, rotated.
      const Hp = new Float64Array(n * n);
      for (let i = 0; i < cols; i++) {
        for (let j = 0; j < cols; j++) {
          Hp[i * n + j] = (H[i * cols + j] / (D[i] * D[j])) * pre.state.hScale;
        }
      }
      for (let i = 0; i < n; i++) Hp[i * n + i] += 1e-2;
      const Hexp = mm(mm(Vd, Hp, n, n, n), transpose(Vd, n, n), n, n, n);
      assertLess(maxAbsDiff(Hexp, pre.H), 1e-10, `${rows}×${cols} ${proj} H`);
    }
  }
});

Deno.test("quantizing at 16 bits returns W (every transform undone), kron and hadamard", async () => {
  const shapes: [number, number][] = [[64, 64], [172, 64], [64, 172], [32, 256]];
  const lines: string[] = [];
  for (const [rows, cols] of shapes) {
    const rng = mulberry32(rows + 7 * cols);
    const W: Tensor = { shape: [rows, cols], data: randnArray(rng, rows * cols) };
    const H = randomH(rng, cols, { n: cols + 20, k: 8, damp: 1e-2 });
    let wmax = 0, wss = 0;
    for (const v of W.data) {
      wmax = Math.max(wmax, Math.abs(v));
      wss += v * v;
    }
    for (const proj of ["kron", "hadamard"] as const) {
      for (const flags of [{}, { preRescale: false }, { preProj: false, incoh: false }]) {
        const o: QuipOptions = { bits: 16, qfn: "a", method: "ldlq", ...flags };
        if (o.preProj !== false) o.proj = proj;
        else if (proj === "hadamard") continue;
        const res = await quipQuantize(W, { H, nsamples: 1 }, o);
        let ess = 0;
        for (let i = 0; i < W.data.length; i++) ess += (W.data[i] - res.Wq.data[i]) ** 2;
        const rel = Math.sqrt(ess / wss), emax = maxAbsDiff(W.data, res.Wq.data) / wmax;
        lines.push(
          `${rows}×${cols} ${JSON.stringify(o)}: ‖ΔW‖/‖W‖ = ${rel.toExponential(2)}, ` +
            `max|ΔW|/max|W| = ${emax.toExponential(2)}`,
        );
        // The 16-bit grid step is ~1.2e-4·max|W| in the rotated domain; LDLQ's feedback and the
        // undone rescale spread the error, so single entries reach a few times half a step.
        assertLess(rel, 1e-4, lines.at(-1));
        assertLess(emax, 5e-4, lines.at(-1));
      }
    }
  }
  console.log(lines.join("\n"));
});

Deno.test("ldlq equals GPTQ's codes without act-order (and ldlqRG equals act-order GPTQ)", async () => {
  let mismatch = 0, mismatchRG = 0, total = 0;
  const shapes: [number, number][] = [[16, 64], [24, 96], [32, 172], [16, 200], [9, 130]];
  for (let c = 0; c < 24; c++) {
    const rng = mulberry32(500 + c);
    const [rows, cols] = shapes[c % shapes.length];
    const bits = [2, 3, 4, 8][c % 4];
    const W: Tensor = { shape: [rows, cols], data: randnArray(rng, rows * cols, { scale: 0.02 }) };
    const H = randomH(rng, cols, { n: cols + 20, k: 8, damp: c % 2 ? 1e-3 : 0 });
    const gBlock = [128, 32, 7][c % 3], qBlock = [128, 50, 16, 1000][c % 4];
    const g = await gptqQuantize(W, { H, nsamples: 1 }, { bits, blocksize: gBlock });
    const q = await quipQuantize(W, { H, nsamples: 1 }, {
      bits,
      method: "ldlq",
      incoh: false,
      preGptqH: true,
      blocksize: qBlock,
      lazyBatch: c % 5 !== 0,
    });
    for (let i = 0; i < g.meta.codes.length; i++) {
      if (g.meta.codes[i] !== q.meta.codes[i]) mismatch++;
    }
    assertEquals(q.meta.scales, g.meta.scales);
    // Loss: GPTQ's Σ (w − q)²/d²/2 is half the LDLQ proxy loss Σ D r².
    assertLess(Math.abs(q.loss - 2 * g.loss), 1e-4 * q.loss, `case ${c}`);
    const g2 = await gptqQuantize(W, { H, nsamples: 1 }, { bits, actOrder: true });
    const q2 = await quipQuantize(W, { H, nsamples: 1 }, {
      bits,
      method: "ldlqRG",
      incoh: false,
      preGptqH: true,
    });
    for (let i = 0; i < g2.meta.codes.length; i++) {
      if (g2.meta.codes[i] !== q2.meta.codes[i]) mismatchRG++;
    }
    total += g.meta.codes.length;
  }
  console.log(
    `ldlq vs GPTQ: ${mismatch} of ${total} codes differ; ldlqRG vs act-order GPTQ: ${mismatchRG}`,
  );
  assertLess(mismatch / total, 1e-3);
  assertLess(mismatchRG / total, 1e-3);
});

Deno.test("greedy passes never increase the proxy loss (float64, computed here)", async () => {
  const gemm = await onnxGemmF64();
  for (let c = 0; c < 8; c++) {
    const rng = mulberry32(900 + c);
    const rows = 12 + c, cols = [24, 40, 64, 100][c % 4], maxq = [3, 7, 15][c % 3];
    const H = randomH(rng, cols, { n: cols + 8, k: 5, damp: 1e-2 });
    const W = Float64Array.from({ length: rows * cols }, () => rng() * maxq);
    for (const method of ["ldlq", "ldlqRG", "ldlbal_admm", "allbal"] as const) {
      const losses: number[] = [];
      for (let np = method === "allbal" ? 1 : 0; np <= 6; np++) {
        const res = await roundMethod(method, W, H, { rows, cols }, {
          maxq,
          blocksize: [8, 128, 17, 33][c % 4],
          unbiased: false,
          rng: mulberry32(1),
          gemm,
          npasses: np,
          admm: { rho: 0.1, niters: 30 },
        });
        for (const v of res.Q) assert(Number.isInteger(v) && v >= 0 && v <= maxq);
        const l = proxyLoss(res.Q, W, H, rows, cols);
        // The library's own loss agrees with the independent one.
        const own = res.rowLoss.reduce((a, b) => a + b, 0);
        assertLess(Math.abs(own - l), 1e-8 * l, `${method} np=${np}: own ${own} vs ${l}`);
        losses.push(l);
      }
      for (let i = 1; i < losses.length; i++) {
        assertLessOrEqual(losses[i], losses[i - 1] * (1 + 1e-12), `${method} case ${c}: ${losses}`);
      }
      if (method !== "allbal") assertLess(losses.at(-1)!, losses[0] * (1 + 1e-12));
    }
  }
  // End to end in the original basis (no transforms; H already SPD; qfn "a" does not clip).
  const rng = mulberry32(77);
  const [rows, cols] = [24, 96];
  const W: Tensor = { shape: [rows, cols], data: randnArray(rng, rows * cols, { scale: 0.02 }) };
  const H = randomH(rng, cols, { n: cols + 20, k: 8, damp: 1e-2 });
  for (const method of ["ldlq", "ldlqRG", "allbal", "ldlbal_admm"] as const) {
    let prev = Infinity;
    for (let np = method === "allbal" ? 1 : 0; np <= 4; np++) {
      const res = await quipQuantize(W, { H, nsamples: 1 }, {
        bits: 2,
        method,
        npasses: np,
        incoh: false,
        admm: { niters: 30 },
      });
      const l = proxyLoss(W.data, res.Wq.data, H, rows, cols);
      assertLess(Math.abs(res.loss - l), 1e-4 * l, `${method} np=${np}`);
      assertLessOrEqual(l, prev * (1 + 1e-6), `${method} np=${np}: ${l} > ${prev}`);
      prev = l;
    }
  }
});

Deno.test("ldlbal_admm matches a transcription of the reference's round_ldl_admm", async () => {
  const d = 14, rows = 5, maxq = 3, rho = 0.1, niters = 100;
  const rng = mulberry32(4242);
  const H = randomH(rng, d, { n: d + 4, k: 4, damp: 1e-2 });
  const W = Float64Array.from({ length: rows * d }, () => rng() * maxq);
  const res = await roundMethod("ldlbal_admm", W, H, { rows, cols: d }, {
    maxq,
    blocksize: 4,
    unbiased: false,
    rng: mulberry32(1),
    gemm: gemmF64TS,
    npasses: 0,
    admm: { rho, niters },
  });
  // Reference frame: p = argsort(diag H) ascending; H normalized by its largest diagonal entry.
  const diag = Array.from({ length: d }, (_, i) => H[i * d + i]);
  const p = Array.from({ length: d }, (_, i) => i).sort((a, b) => diag[a] - diag[b]);
  const Hp = new Float64Array(d * d);
  let md = 0;
  for (let i = 0; i < d; i++) md = Math.max(md, diag[i]);
  for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) Hp[i * d + j] = H[p[i] * d + p[j]] / md;
  const Wp = new Float64Array(rows * d);
  for (let r = 0; r < rows; r++) for (let c = 0; c < d; c++) Wp[r * d + c] = W[r * d + p[c]];
  // ldlp_admm, transcribed with dense loops.
  const C = Hp.map((v, i) => 2 * v + (i % (d + 1) === 0 ? rho : 0));
  const L = new Float64Array(d * d); // Cholesky
  for (let i = 0; i < d; i++) {
    for (let j = 0; j <= i; j++) {
      let s = C[i * d + j];
      for (let k = 0; k < j; k++) s -= L[i * d + k] * L[j * d + k];
      L[i * d + j] = i === j ? Math.sqrt(s) : s / L[j * d + j];
    }
  }
  const Linv = invertTriangular(L, d);
  const LinvT = transpose(Linv, d, d);
  let Z = new Float64Array(d * d), Wd = new Float64Array(d * d);
  for (let it = 0; it < niters; it++) {
    const T = new Float64Array(d * d);
    for (let i = 0; i < d; i++) {
      for (let j = 0; j < d; j++) {
        T[i * d + j] = rho * Z[i * d + j] - rho * Wd[i * d + j] - 2 * (j < i ? Hp[i * d + j] : 0);
      }
    }
    const T2 = mm(T, LinvT, d, d, d).map((v, q) => (q % d < Math.floor(q / d) ? v : 0));
    const X = mm(T2, Linv, d, d, d);
    const Y = X.map((v, q) => v + Wd[q]);
    const cn = Array.from({ length: d }, (_, j) => {
      let s = 0;
      for (let i = 0; i < d; i++) s += Y[i * d + j] ** 2;
      return 1 / Math.max(1, Math.sqrt(s));
    });
    Z = Y.map((v, q) => v * cn[q % d]);
    Wd = Wd.map((v, q) => v + X[q] - Z[q]);
  }
  const Zlib = await ldlpAdmm(Hp, d, { rho, niters }, gemmF64TS);
  assertLess(maxAbsDiff(Zlib, Z), 1e-10);
  for (let j = 0; j < d; j++) {
    let s = 0;
    for (let i = 0; i < d; i++) {
      if (i <= j) assertEquals(Z[i * d + j], 0);
      s += Z[i * d + j] ** 2;
    }
    assertLessOrEqual(Math.sqrt(s), 1 + 1e-12);
  }
  const Zi = Z.map((v, q) => v + (q % (d + 1) === 0 ? 1 : 0));
  const Lf = invertTriangular(Zi, d);
  // The reference's fixed-point iteration: ŵ = clamp(⌊ŵ − (ŵ − w)·L + ½⌋), from ⌊w + ½⌋.
  let wh = Wp.map((v) => Math.floor(v + 0.5));
  for (let it = 0; it < d; it++) {
    const diff = wh.map((v, q) => v - Wp[q]);
    const dl = mm(diff, Lf, rows, d, d);
    const next = wh.map((v, q) => Math.min(maxq, Math.max(0, Math.floor(v - dl[q] + 0.5))));
    const done = next.every((v, q) => v === wh[q]);
    wh = next;
    if (done) break;
  }
  const expected = new Float64Array(rows * d);
  for (let r = 0; r < rows; r++) for (let c = 0; c < d; c++) expected[r * d + p[c]] = wh[r * d + c];
  assertEquals(Array.from(res.Q), Array.from(expected));
});

Deno.test("unbiased rounding is unbiased on average (H = I: stochastic rounding)", async () => {
  const rows = 4, cols = 8, maxq = 3;
  const W = Float64Array.from({ length: rows * cols }, (_, i) => (i * 0.37) % maxq);
  const H = new Float64Array(cols * cols).map((_, q) => (q % (cols + 1) === 0 ? 1 : 0));
  const mean = new Float64Array(rows * cols);
  const runs = 400;
  for (let s = 0; s < runs; s++) {
    const res = await roundMethod("ldlq", W, H, { rows, cols }, {
      maxq,
      blocksize: 128,
      unbiased: true,
      rng: mulberry32(s),
      gemm: gemmF64TS,
      npasses: 0,
      admm: { rho: 0.1, niters: 1 },
    });
    for (let i = 0; i < mean.length; i++) mean[i] += res.Q[i] / runs;
  }
  assertLess(maxAbsDiff(mean, W), 0.1);
  const det = await roundMethod("ldlq", W, H, { rows, cols }, {
    maxq,
    blocksize: 128,
    unbiased: false,
    rng: mulberry32(0),
    gemm: gemmF64TS,
    npasses: 0,
    admm: { rho: 0.1, niters: 1 },
  });
  assertEquals(Array.from(det.Q), Array.from(W, (v) => Math.floor(v + 0.5)));
});

Deno.test("dequantizeQuip reproduces Wq bit for bit; meta, codes, bits per weight", async () => {
  const rng = mulberry32(31);
  const shapes: [number, number][] = [[64, 64], [64, 172], [172, 64]];
  const configs: QuipOptions[] = [
    { bits: 2 },
    { bits: 3, method: "ldlqRG", npasses: 2 },
    { bits: 4, proj: "hadamard" },
    { bits: 2, method: "allbal", npasses: 3, qfn: "a" },
    { bits: 2, method: "ldlbal_admm", npasses: 1, admm: { niters: 20 } },
    { bits: 2, incoh: false, preGptqH: true },
    { bits: 12, qfn: "a" },
    { bits: 2, unbiased: true, seed: 5 },
  ];
  for (const [rows, cols] of shapes) {
    const W: Tensor = { shape: [rows, cols], data: randnArray(rng, rows * cols, { scale: 0.05 }) };
    const H = randomH(rng, cols, { n: cols + 10, k: 6, damp: 1e-3 });
    for (const o of configs) {
      const res = await quip(o).quantizeWeight(W, { H, nsamples: 1 }, { layer: "x" });
      const msg = `${rows}×${cols} ${JSON.stringify(o)}`;
      const D = await dequantizeQuip(res.meta);
      assertEquals(D.shape, [rows, cols]);
      for (let i = 0; i < D.data.length; i++) {
        if (D.data[i] !== res.Wq.data[i]) throw new Error(`${msg}: element ${i} differs`);
      }
      const info = res.meta.quip as QuipMetaInfo;
      const [m, n] = info.rotatedShape;
      const codes = o.bits > 8 ? res.meta.codes16 as Uint16Array : res.meta.codes;
      assertEquals(codes.length, m * n, msg);
      for (const c of codes) assert(c <= 2 ** o.bits - 1, msg);
      if (o.bits <= 8) {
        assertEquals(unpackCodes(res.meta.packed!, { bits: o.bits, count: m * n }), codes, msg);
      }
      const qfnA = (o.qfn ?? (o.incoh === false ? "a" : "b")) === "a";
      const rescale = o.incoh !== false;
      const expectBpw = (o.bits * m * n + (qfnA ? 32 * m : 16) + (rescale ? 16 * cols : 0)) /
        (rows * cols);
      assertLess(Math.abs(res.bitsPerWeight - expectBpw), 1e-12, msg);
      if (o.proj === "hadamard") {
        assertEquals([m, n], [rows === 172 ? 256 : rows, cols === 172 ? 256 : cols]);
      } else assertEquals([m, n], [rows, cols]);
      assertEquals(res.meta.method, "quip");
      // The reported loss is the proxy loss under the dampened Hessian: above the undampened
      // original-basis one; without transforms exactly the one under H + percdamp·mean(diag)·I.
      const l = proxyLoss(W.data, res.Wq.data, H, rows, cols);
      assertLessOrEqual(l, res.loss * (1 + 1e-6), msg);
      if (o.incoh === false) {
        let mean = 0;
        for (let i = 0; i < cols; i++) mean += H[i * cols + i] / cols;
        const Hd = H.map((v, q) => v + (q % (cols + 1) === 0 ? 0.01 * mean : 0));
        const ld = proxyLoss(W.data, res.Wq.data, Hd, rows, cols);
        assertLess(Math.abs(res.loss - ld), 1e-4 * ld, msg);
      }
    }
  }
  // Different seeds give different rotations; the same seed the same result.
  const W: Tensor = { shape: [32, 64], data: randnArray(rng, 32 * 64) };
  const H = randomH(rng, 64, { n: 80, k: 6, damp: 1e-2 });
  const a = await quipQuantize(W, { H, nsamples: 1 }, { bits: 2, seed: 1 });
  const b = await quipQuantize(W, { H, nsamples: 1 }, { bits: 2, seed: 1 });
  const c = await quipQuantize(W, { H, nsamples: 1 }, { bits: 2, seed: 2 });
  assertEquals(a.Wq.data, b.Wq.data);
  assert(maxAbsDiff(a.Wq.data, c.Wq.data) > 0);
});

Deno.test("quip option errors name the option; quantize-time errors name the layer", async () => {
  const bad: [Record<string, unknown>, string][] = [
    [{ bits: 1 }, "bits"],
    [{ bits: 17 }, "bits"],
    [{ bits: 2.5 }, "bits"],
    [{ bits: 2, method: "gptq" }, "method"],
    [{ bits: 2, npasses: -1 }, "npasses"],
    [{ bits: 2, npasses: 1.5 }, "npasses"],
    [{ bits: 2, method: "allbal" }, "npasses"],
    [{ bits: 2, qfn: "c" }, "qfn"],
    [{ bits: 2, qfn: "b", preProj: false }, "qfn"],
    [{ bits: 2, proj: "dense" }, "proj"],
    [{ bits: 2, proj: "hadamard", incoh: false }, "proj"],
    [{ bits: 2, percdamp: 0 }, "percdamp"],
    [{ bits: 2, percdamp: NaN }, "percdamp"],
    [{ bits: 2, seed: 0.5 }, "seed"],
    [{ bits: 2, unbiased: true, npasses: 2 }, "unbiased"],
    [{ bits: 2, method: "ldlqRG", unbiased: true, npasses: 1 }, "unbiased"],
    [{ bits: 2, blocksize: 0 }, "blocksize"],
    [{ bits: 2, admm: { rho: 0 } }, "admm.rho"],
    [{ bits: 2, admm: { niters: 0 } }, "admm.niters"],
    [{ bits: 2, pre_rescale: true }, "pre_rescale"],
    [{ bits: 2, incoh: "yes" }, "incoh"],
  ];
  for (const [o, option] of bad) {
    const e = assertThrows(() => quip(o as unknown as QuipOptions), OptionError);
    assertEquals((e as OptionError).option, option, JSON.stringify(o));
  }
  // Allowed: allbal and ldlbal_admm with unbiased and passes (as the reference).
  quip({ bits: 2, method: "allbal", npasses: 2, unbiased: true });
  quip({ bits: 2, method: "ldlbal_admm", npasses: 2, unbiased: true });
  const q = quip({ bits: 2 });
  assertEquals([q.name, q.needsHessian], ["quip", true]);
  assertEquals(q.options.qfn, "b");
  assertEquals(quip({ bits: 2, incoh: false }).options.qfn, "a");
  const W: Tensor = { shape: [4, 8], data: new Float32Array(32).fill(0.1) };
  await assertRejects(
    () => q.quantizeWeight(W, { nsamples: 1 }, { layer: "mlp.up" }),
    QuantlabError,
  );
  const e1 = await assertRejects(
    () => q.quantizeWeight(W, { H: new Float64Array(9), nsamples: 1 }, { layer: "mlp.up" }),
    QuantlabError,
  );
  assertStringIncludes(e1.message, "mlp.up");
  const Wnan: Tensor = { shape: [4, 8], data: new Float32Array(32).fill(NaN) };
  const I8 = new Float64Array(64).map((_, i) => (i % 9 === 0 ? 1 : 0));
  await assertRejects(() => q.quantizeWeight(Wnan, { H: I8, nsamples: 1 }), NonFiniteError);
  // A singular H without preGptqH's dampening: a NonFiniteError that suggests preGptqH.
  const e2 = await assertRejects(
    () =>
      quipQuantize(W, { H: new Float64Array(64), nsamples: 1 }, {
        bits: 2,
        incoh: false,
        layer: "attn.q",
      }),
    NonFiniteError,
  );
  assertStringIncludes(e2.message, "attn.q");
  assertStringIncludes(e2.message, "preGptqH");
  assertInstanceOf(e2, QuantlabError);
});

Deno.test("2-bit proxy loss on real stories260K statistics: QuIP (incoherence) vs GPTQ", async () => {
  const layers = await realLayers();
  const cases: { name: string; W: Tensor; H: Float32Array; real: boolean }[] = [];
  for (const l of layers) {
    cases.push({ name: l.name.replace("model.layers.", "L"), W: l.W, H: l.H, real: true });
  }
  for (let i = 0; i < 12; i++) {
    const l = layers[(i * 3) % layers.length];
    let ss = 0;
    for (const v of l.W.data) ss += v * v;
    const sd = Math.sqrt(ss / l.W.data.length);
    cases.push({
      name: "randW:" + l.name.replace("model.layers.", "L"),
      W: { shape: [...l.W.shape], data: randnArray(mulberry32(i), l.W.data.length, { scale: sd }) },
      H: l.H,
      real: false,
    });
  }
  type Run = (W: Tensor, H: Float32Array) => Promise<{ Wq: Tensor; bitsPerWeight: number }>;
  const st = (H: Float32Array) => ({ H, nsamples: 1 });
  const methods: Record<string, Run> = {
    "gptq": (W, H) => gptqQuantize(W, st(H), { bits: 2 }),
    "gptq-ao": (W, H) => gptqQuantize(W, st(H), { bits: 2, actOrder: true }),
    "quip-ldlq": (W, H) => quipQuantize(W, st(H), { bits: 2, method: "ldlq" }),
    "quip-RG5": (W, H) => quipQuantize(W, st(H), { bits: 2, method: "ldlqRG", npasses: 5 }),
    "quip-qfnA": (W, H) => quipQuantize(W, st(H), { bits: 2, method: "ldlq", qfn: "a" }),
    "quip-had": (W, H) => quipQuantize(W, st(H), { bits: 2, method: "ldlq", proj: "hadamard" }),
  };
  const names = Object.keys(methods);
  const ratio: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  const bpw: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  const lines = [
    `${"layer".padEnd(30)} ${"shape".padEnd(7)} ${"gptq loss".padStart(9)} ` +
    names.slice(1).map((n) => n.padStart(9)).join(" ") + "   (loss / GPTQ's, original basis)",
  ];
  for (const c of cases) {
    const [rows, cols] = c.W.shape;
    const loss: Record<string, number> = {};
    for (const n of names) {
      const res = await methods[n](c.W, c.H);
      loss[n] = proxyLoss(c.W.data, res.Wq.data, c.H, rows, cols);
      bpw[n].push(res.bitsPerWeight);
    }
    for (const n of names) ratio[n].push(loss[n] / loss.gptq);
    lines.push(
      `${c.name.padEnd(30)} ${`${rows}×${cols}`.padEnd(7)} ${
        loss.gptq.toExponential(2).padStart(9)
      } ` +
        names.slice(1).map((n) => (loss[n] / loss.gptq).toFixed(3).padStart(9)).join(" "),
    );
  }
  const gm = (a: number[]) => Math.exp(a.reduce((s, v) => s + Math.log(v), 0) / a.length);
  const sel = (n: string, f: (name: string, real: boolean) => boolean) =>
    ratio[n].filter((_, i) => f(cases[i].name, cases[i].real));
  lines.push("geomean ratio / wins over GPTQ / mean bits per weight:");
  for (const n of names) {
    lines.push(
      `  ${n.padEnd(10)} all ${gm(ratio[n]).toFixed(3)}  real ${
        gm(sel(n, (_, r) => r)).toFixed(3)
      }  randW ${gm(sel(n, (_, r) => !r)).toFixed(3)}  wins ${
        ratio[n].filter((v) => v < 1).length
      }/${cases.length}  bpw ${(bpw[n].reduce((a, b) => a + b, 0) / bpw[n].length).toFixed(3)}`,
    );
  }
  console.log(lines.join("\n"));

  const isQK = (name: string) => /q_proj|k_proj/.test(name);
  const isVOD = (name: string) => /v_proj|o_proj|down_proj/.test(name);
  // Where incoherence helps: every real v/o/down projection.
  for (const v of sel("quip-ldlq", (nm, r) => r && isVOD(nm))) assertLess(v, 1);
  // Where the paper's claim fails here: with 8⊗8 Kronecker factors the real q/k projections stay
  // coherent (max/rms ≈ 5–8 after rotation) and qfn "b"'s 2.4·rms clipping costs more than GPTQ.
  for (const v of sel("quip-ldlq", (nm, r) => r && isQK(nm))) assertGreater(v, 1);
  // No large overall win at this scale with the default Kronecker rotation.
  const all = gm(ratio["quip-ldlq"]);
  assert(all > 0.9 && all < 1.3, `quip-ldlq geomean ${all}`);
  // Greedy passes with the reordering help; so does the per-row grid.
  assertLess(gm(ratio["quip-RG5"]), all);
  assertLess(gm(ratio["quip-qfnA"]), all);
  // Act-order GPTQ beats plain GPTQ on every case.
  for (const v of ratio["gptq-ao"]) assertLess(v, 1);
  // The randomized Hadamard transform is the most incoherent: below GPTQ overall, but padded
  // 172-dimension layers pay up to 1.5× the codes (see its bits per weight).
  assertLess(gm(ratio["quip-had"]), 1);
});
