import * as math from "mathjs";
import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import {
  cholesky,
  invertTriangular,
  NotPositiveDefiniteError,
  spdInverse,
  transposeSquare,
  upperCholeskyOfInverse,
} from "../../src/quant/core/linalg.ts";
import { NonFiniteError } from "../../src/errors.ts";
import { mulberry32, randn, type Rng } from "../../src/rng.ts";

/** Random SPD matrix XᵀX/k + damp·I (k < n gives a low-rank part); `dominant` adds a big diagonal. */
function randomSpd(
  rng: Rng,
  n: number,
  opts: { k?: number; dominant?: boolean } = {},
): Float64Array {
  const k = opts.k ?? n + 2;
  const X = Array.from({ length: k * n }, () => randn(rng));
  const A = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += X[t * n + i] * X[t * n + j];
      A[i * n + j] = s / k;
    }
  }
  let off = 0;
  for (let i = 0; i < n; i++) {
    let row = 0;
    for (let j = 0; j < n; j++) if (j !== i) row += Math.abs(A[i * n + j]);
    off = Math.max(off, row);
  }
  for (let i = 0; i < n; i++) A[i * n + i] += opts.dominant ? off + 0.1 : 0.05;
  return A;
}

const toRows = (a: Float64Array, n: number) =>
  Array.from({ length: n }, (_, i) => Array.from(a.subarray(i * n, i * n + n)));
const fromRows = (m: number[][]) => Float64Array.from(m.flat());

function assertRelClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number) {
  assertEquals(actual.length, expected.length);
  let scale = 0, err = 0;
  for (let i = 0; i < actual.length; i++) {
    scale = Math.max(scale, Math.abs(expected[i]));
    err = Math.max(err, Math.abs(actual[i] - expected[i]));
  }
  assert(err <= tol * Math.max(scale, 1e-300), `max abs err ${err} > ${tol} × ${scale}`);
}

function assertLower(L: Float64Array, n: number) {
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) assertEquals(L[i * n + j], 0);
  }
}

Deno.test("cholesky: L·Lᵀ reproduces A (mathjs multiply), lower with positive diagonal", () => {
  const rng = mulberry32(1);
  for (const n of [1, 2, 3, 5, 8, 13, 24]) {
    for (const k of [n + 3, Math.max(1, n >> 1)]) {
      const A = randomSpd(rng, n, { k });
      const L = cholesky(A, n);
      assertLower(L, n);
      for (let i = 0; i < n; i++) assert(L[i * n + i] > 0);
      const LLt = math.multiply(toRows(L, n), math.transpose(toRows(L, n))) as number[][];
      assertRelClose(fromRows(LLt), A, 1e-5);
    }
  }
});

Deno.test("cholesky: equals mathjs LU factor L·diag(√U_ii) on diagonally dominant SPD", () => {
  const rng = mulberry32(2);
  for (const n of [2, 4, 7, 12, 20]) {
    const A = randomSpd(rng, n, { dominant: true });
    const { L: Lu, U, p } = math.lup(toRows(A, n)) as unknown as {
      L: number[][];
      U: number[][];
      p: number[];
    };
    assertEquals(p, Array.from({ length: n }, (_, i) => i), "no pivoting expected");
    const ref = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j <= i; j++) ref[i * n + j] = Lu[i][j] * Math.sqrt(U[j][j]);
    }
    assertRelClose(cholesky(A, n), ref, 1e-5);
  }
});

Deno.test("invertTriangular: lower and upper agree with mathjs inv", () => {
  const rng = mulberry32(3);
  for (const n of [1, 3, 6, 11, 25]) {
    const L = cholesky(randomSpd(rng, n), n);
    assertRelClose(invertTriangular(L, n), fromRows(math.inv(toRows(L, n))), 1e-5);
    const U = transposeSquare(L, n);
    const Uinv = invertTriangular(U, n, { upper: true });
    assertRelClose(Uinv, fromRows(math.inv(toRows(U, n))), 1e-5);
    assertLower(transposeSquare(Uinv, n), n);
  }
});

Deno.test("spdInverse agrees with mathjs inv", () => {
  const rng = mulberry32(4);
  for (const n of [1, 4, 9, 16]) {
    const A = randomSpd(rng, n, { k: n + 5 });
    assertRelClose(spdInverse(A, n), fromRows(math.inv(toRows(A, n))), 1e-5);
  }
});

Deno.test("upperCholeskyOfInverse equals chol(inv(A)) upper (reference three-step path)", () => {
  const rng = mulberry32(5);
  for (const n of [1, 2, 5, 10, 31]) {
    const A = randomSpd(rng, n, { k: Math.max(1, n - 3) });
    const U = upperCholeskyOfInverse(A, n);
    // Reference: Cholesky of the mathjs inverse, transposed to upper.
    const ref = transposeSquare(cholesky(fromRows(math.inv(toRows(A, n))), n), n);
    assertRelClose(U, ref, 1e-5);
    // And through our own spdInverse (the torch path: cholesky, cholesky_inverse, cholesky upper).
    assertRelClose(U, transposeSquare(cholesky(spdInverse(A, n), n), n), 1e-5);
    const UtU = math.multiply(math.transpose(toRows(U, n)), toRows(U, n)) as number[][];
    assertRelClose(fromRows(UtU), fromRows(math.inv(toRows(A, n))), 1e-5);
  }
});

Deno.test("cholesky: non-SPD and non-finite input throw NotPositiveDefiniteError", () => {
  const e = assertThrows(
    () => cholesky(Float64Array.from([1, 2, 2, 1]), 2),
    NotPositiveDefiniteError,
    "pivot 1",
  );
  assert(e instanceof NonFiniteError);
  assertThrows(() => cholesky(Float64Array.from([NaN]), 1), NotPositiveDefiniteError);
  assertThrows(() => upperCholeskyOfInverse(Float64Array.from([0, 0, 0, 1]), 2), NonFiniteError);
  assertThrows(() => cholesky(new Float64Array(3), 2), RangeError);
});

Deno.test("blocked Cholesky / triangular inverse / Hinv agree with the unblocked path and mathjs", async () => {
  const rng = mulberry32(6);
  const {
    choleskyBlocked,
    invertLowerBlocked,
    upperCholeskyOfInverseBlocked,
    gemmF64TS,
    onnxGemmF64,
  } = await import("../../src/quant/core/linalg.ts");
  const ort = await onnxGemmF64();
  // [300, 200]: diagonal blocks over 96 wide are factored blocked themselves with a native gemm
  // (sub-blocks of 64, the last one 8 wide).
  for (const [n, block] of [[1, 4], [7, 3], [40, 16], [129, 32], [300, 64], [300, 200]]) {
    const A = randomSpd(rng, n, { k: Math.max(1, n >> 1) });
    for (const gemm of [gemmF64TS, ort]) {
      const L = await choleskyBlocked(A, n, { gemm, block });
      assertRelClose(L, cholesky(A, n), 1e-9);
      assertRelClose(await invertLowerBlocked(L, n, { gemm, block }), invertTriangular(L, n), 1e-9);
      const U = await upperCholeskyOfInverseBlocked(A, n, { gemm, block });
      assertRelClose(U, upperCholeskyOfInverse(A, n), 1e-9);
      if (n <= 40) {
        const ref = transposeSquare(cholesky(fromRows(math.inv(toRows(A, n))), n), n);
        assertRelClose(U, ref, 1e-5);
      }
    }
  }
  const bad = Float64Array.from({ length: 100 }, (_, i) => (i % 11 === 0 ? 1 : 0));
  bad[9 * 10 + 9] = -1;
  const e = await assertRejects(
    () => choleskyBlocked(bad, 10, { block: 4 }),
    NotPositiveDefiniteError,
  );
  assertEquals(e.pivot, 9);
  // The failed row is named the same when it lies in a recursively factored diagonal block.
  const nb = 300, bad2 = new Float64Array(nb * nb);
  for (let i = 0; i < nb; i++) bad2[i * nb + i] = 1;
  bad2[211 * nb + 211] = -1;
  const e2 = await assertRejects(
    () => choleskyBlocked(bad2, nb, { gemm: ort, block: 200 }),
    NotPositiveDefiniteError,
  );
  assertEquals(e2.pivot, 211);
});

/** SPD with condition number about `cond`: Q·diag(σ)·Qᵀ, Q from Gram–Schmidt, σ log-spaced. */
function illConditionedSpd(rng: Rng, n: number, cond: number): Float64Array {
  const Q = Array.from({ length: n }, () => Array.from({ length: n }, () => randn(rng)));
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < i; j++) {
      let d = 0;
      for (let t = 0; t < n; t++) d += Q[i][t] * Q[j][t];
      for (let t = 0; t < n; t++) Q[i][t] -= d * Q[j][t];
    }
    const norm = Math.hypot(...Q[i]);
    for (let t = 0; t < n; t++) Q[i][t] /= norm;
  }
  const sigma = Array.from({ length: n }, (_, i) => cond ** (-i / Math.max(1, n - 1)));
  const A = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let t = 0; t < n; t++) s += Q[t][i] * sigma[t] * Q[t][j];
      A[i * n + j] = A[j * n + i] = s;
    }
  }
  return A;
}

Deno.test("gemmF64TS and onnxGemmF64: A·B and Aᵀ·B agree with a plain triple loop", async () => {
  const { gemmF64TS, onnxGemmF64 } = await import("../../src/quant/core/linalg.ts");
  const ort = await onnxGemmF64();
  const rng = mulberry32(7);
  for (const [m, k, n] of [[1, 1, 1], [3, 5, 2], [40, 70, 33], [64, 300, 48]]) {
    const a = Float64Array.from({ length: m * k }, () => randn(rng));
    const b = Float64Array.from({ length: k * n }, () => randn(rng));
    const want = new Float64Array(m * n), wantT = new Float64Array(m * n);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0, sT = 0;
        for (let p = 0; p < k; p++) {
          s += a[i * k + p] * b[p * n + j];
          sT += a[p * m + i] * b[p * n + j]; // a read as k × m
        }
        want[i * n + j] = s;
        wantT[i * n + j] = sT;
      }
    }
    for (const gemm of [gemmF64TS, ort]) {
      assertRelClose(await gemm(a, b, { m, k, n }), want, 1e-12);
      assertRelClose(await gemm(a, b, { m, k, n, transA: true }), wantT, 1e-12);
    }
  }
});

Deno.test("panel-blocked Cholesky / inverse / Hinv vs the plain TS routines: block multiples and not, 1×1, ill-conditioned", async () => {
  const {
    choleskyBlocked,
    invertLowerBlocked,
    upperCholeskyOfInverseBlocked,
    gemmF64TS,
    onnxGemmF64,
  } = await import("../../src/quant/core/linalg.ts");
  const ort = await onnxGemmF64();
  // A GEMM that ignores transA (not one of linalg's own): the routines must transpose for it.
  const plainOnly: typeof gemmF64TS = (a, b, { m, k, n }) => ort(a, b, { m, k, n });
  const rng = mulberry32(8);
  const cases: { n: number; block: number; A: Float64Array; tol: number }[] = [
    { n: 1, block: 256, A: Float64Array.of(2.25), tol: 1e-15 },
    { n: 1, block: 1, A: Float64Array.of(1e-6), tol: 1e-15 },
    { n: 5, block: 1, A: randomSpd(rng, 5), tol: 1e-12 },
    { n: 64, block: 16, A: randomSpd(rng, 64), tol: 1e-11 }, // multiple of the block
    { n: 100, block: 32, A: randomSpd(rng, 100, { k: 60 }), tol: 1e-10 }, // not a multiple
    { n: 257, block: 64, A: randomSpd(rng, 257), tol: 1e-10 }, // ORT-sized products, last block 1
    { n: 130, block: 48, A: illConditionedSpd(rng, 130, 1e8), tol: 1e-6 },
  ];
  for (const { n, block, A, tol } of cases) {
    const L = cholesky(A, n), X = invertTriangular(L, n), U = upperCholeskyOfInverse(A, n);
    for (const gemm of [gemmF64TS, ort, plainOnly]) {
      const what = `n ${n} block ${block} ${gemm === ort ? "ort" : gemm.name}`;
      const Lb = await choleskyBlocked(A, n, { gemm, block });
      assertLower(Lb, n);
      assertRelClose(Lb, L, tol);
      const Xb = await invertLowerBlocked(L, n, { gemm, block });
      assertLower(Xb, n);
      assertRelClose(Xb, X, tol);
      const Ub = await upperCholeskyOfInverseBlocked(A, n, { gemm, block });
      assertLower(transposeSquare(Ub, n), n);
      assertRelClose(Ub, U, tol);
      // overwrite + float32 out: the same matrix rounded to float32; A's copy is consumed.
      const Acopy = A.slice();
      const out = new Float32Array(n * n).fill(NaN);
      const U32 = await upperCholeskyOfInverseBlocked(Acopy, n, {
        gemm,
        block,
        overwrite: true,
        out,
      });
      assert(U32 === out, what);
      assertRelClose(U32, Float32Array.from(U), Math.max(tol, 1e-7));
    }
  }
  // Ill-conditioned: the blocked Hinv still satisfies Uᵀ·U·A ≈ I.
  const n = 130, A = cases[cases.length - 1].A;
  const Ub = await upperCholeskyOfInverseBlocked(A, n, { gemm: ort, block: 48 });
  const UtU = math.multiply(math.transpose(toRows(Ub, n)), toRows(Ub, n)) as number[][];
  const I = math.multiply(UtU, toRows(A, n)) as number[][];
  let err = 0;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) err = Math.max(err, Math.abs(I[i][j] - (i === j ? 1 : 0)));
  }
  assert(err < 1e-5, `‖UᵀUA − I‖max = ${err}`);
});

Deno.test("panel-blocked Hinv in float32 equals the plain TS path rounded to float32 (GPTQ's Hinv)", async () => {
  const { upperCholeskyOfInverseBlocked, onnxGemmF64 } = await import(
    "../../src/quant/core/linalg.ts"
  );
  const { BLOCKED_LINALG_MIN } = await import("../../src/quant/weight_only/gptq.ts");
  const rng = mulberry32(9);
  const n = BLOCKED_LINALG_MIN + 137;
  const A = randomSpd(rng, n, { k: n + 256 });
  const want = Float32Array.from(upperCholeskyOfInverse(A, n));
  const got = await upperCholeskyOfInverseBlocked(A.slice(), n, {
    gemm: await onnxGemmF64(),
    overwrite: true,
    out: new Float32Array(n * n),
  });
  let differ = 0;
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) {
      differ++;
      assert(Math.abs(got[i] - want[i]) <= 2 ** -23 * Math.abs(want[i]), `entry ${i}`);
    }
  }
  // float64 results differ in the last bits only; float32 rounding flips at most a handful.
  assert(differ <= 4, `${differ} float32 entries differ`);
});

Deno.test("panel-blocked routines: non-SPD input throws NotPositiveDefiniteError at the failing row", async () => {
  const { choleskyBlocked, upperCholeskyOfInverseBlocked, onnxGemmF64 } = await import(
    "../../src/quant/core/linalg.ts"
  );
  const gemm = await onnxGemmF64();
  const rng = mulberry32(10);
  const n = 150;
  const A = randomSpd(rng, n);
  // Make the leading 101×101 block indefinite: row 100 fails (block 32: inside the 4th block).
  const bad = A.slice();
  bad[100 * n + 100] = -1;
  for (const block of [32, 100, 256]) {
    const e = await assertRejects(
      () => choleskyBlocked(bad, n, { gemm, block }),
      NotPositiveDefiniteError,
    );
    assertEquals(e.pivot, 100, `block ${block}`);
    assert(e instanceof NonFiniteError);
    assertThrows(() => cholesky(bad, n), NotPositiveDefiniteError, "pivot 100");
    // Hinv factors the reversed matrix: row n−1−100 of J·A·J is the first to fail there.
    const e2 = await assertRejects(
      () => upperCholeskyOfInverseBlocked(bad, n, { gemm, block }),
      NotPositiveDefiniteError,
    );
    assertThrows(
      () => upperCholeskyOfInverse(bad, n),
      NotPositiveDefiniteError,
      `pivot ${e2.pivot}`,
    );
  }
  const nan = A.slice();
  nan[7 * n + 3] = NaN;
  await assertRejects(() => choleskyBlocked(nan, n, { gemm, block: 32 }), NotPositiveDefiniteError);
  await assertRejects(() => choleskyBlocked(A, n, { gemm, block: 0 }), RangeError);
  await assertRejects(
    () => upperCholeskyOfInverseBlocked(A, n, { out: new Float32Array(3) }),
    RangeError,
  );
});
