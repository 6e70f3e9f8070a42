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
  for (const [n, block] of [[1, 4], [7, 3], [40, 16], [129, 32], [300, 64]]) {
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
});
