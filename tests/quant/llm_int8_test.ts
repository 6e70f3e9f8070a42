/**
 * LLM.int8() (src/quant/llm_int8.ts):
 * - the int8 product equals an integer (BigInt) reference exactly, extremes ±127 / −128 included;
 * - threshold ∞ equals plain vector-wise int8 (a reference written here: row absmax of X and of
 *   W, `round(127·x/absmax)`, `Σ qx·qw · cx·cw / 127²`); threshold 0 equals the FP product;
 * - injected outlier columns are found (|x| ≥ 6) and kept in FP: the result equals int8 on the
 *   other columns plus the FP product of the outlier columns;
 * - on stories260K the model runs through the `linearProduct` hook, reports its outlier dimensions
 *   per layer, and its perplexity stays within 1 % of FP (measured values printed).
 */
import { assert, assertEquals, assertLess } from "@std/assert";
import { perplexity } from "../../src/eval/perplexity.ts";
import { loadModel } from "../../src/models/load.ts";
import {
  int8MatmulTransB,
  int8Weight,
  llmInt8,
  llmInt8Matmul,
} from "../../src/quant/weight_activation/llm_int8.ts";
import { Rng } from "../_rng.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;

function tround(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

Deno.test("int8 matmul equals an integer reference exactly", () => {
  const rng = new Rng(8);
  const m = 17, n = 23, k = 300;
  const A = Int8Array.from({ length: m * k }, () => rng.int(256) - 128);
  const B = Int8Array.from({ length: n * k }, () => rng.int(256) - 128);
  A.fill(-128, 0, k); // a row of extremes: |Σ| = 128²·k
  B.fill(-128, 0, k);
  const C = int8MatmulTransB(A, B, { m, n, k });
  for (let i = 0; i < m; i++) {
    for (let o = 0; o < n; o++) {
      let s = 0n;
      for (let j = 0; j < k; j++) s += BigInt(A[i * k + j]) * BigInt(B[o * k + j]);
      assertEquals(BigInt(C[i * n + o]), s);
    }
  }
  assertEquals(C[0], 128 * 128 * k);
});

function vectorwiseRef(
  X: Float32Array,
  W: Float32Array,
  rows: number,
  out: number,
  k: number,
  skip: Set<number>,
) {
  const rowAbs = (d: Float32Array, r: number, sk: Set<number>) => {
    let m = 0;
    for (let j = 0; j < k; j++) if (!sk.has(j)) m = Math.max(m, Math.abs(d[r * k + j]));
    return m;
  };
  const y = new Float64Array(rows * out);
  for (let r = 0; r < rows; r++) {
    const cx = rowAbs(X, r, skip);
    for (let o = 0; o < out; o++) {
      const cw = rowAbs(W, o, new Set());
      let s = 0;
      for (let j = 0; j < k; j++) {
        if (skip.has(j)) continue;
        s += tround(X[r * k + j] * (127 / cx)) * tround(W[o * k + j] * (127 / cw));
      }
      let fp = 0;
      for (const j of skip) fp += X[r * k + j] * W[o * k + j];
      y[r * out + o] = (s * cx * cw) / (127 * 127) + fp;
    }
  }
  return y;
}

Deno.test("threshold ∞ = vector-wise int8; threshold 0 = FP; outlier columns kept in FP", () => {
  const rng = new Rng(21);
  const rows = 12, out = 10, k = 48;
  const X = rng.normals(rows * k, 1.5);
  const W = { shape: [out, k], data: rng.normals(out * k, 0.1) };
  const w = int8Weight(W);
  const close = (got: Float32Array, want: Float64Array, tol: number) => {
    for (let i = 0; i < want.length; i++) {
      assertLess(Math.abs(got[i] - want[i]), tol * (1 + Math.abs(want[i])));
    }
  };
  // No outliers (X stays below 6 here): plain vector-wise int8.
  const inf = llmInt8Matmul({ shape: [rows, k], data: X }, w, { threshold: Infinity });
  assertEquals(inf.outliers, []);
  close(inf.y.data, vectorwiseRef(X, W.data, rows, out, k, new Set()), 1e-6);
  // Threshold 0: every dimension is an outlier, the FP product.
  const zero = llmInt8Matmul({ shape: [rows, k], data: X }, w, { threshold: 0 });
  assertEquals(zero.outliers.length, k);
  const fp = vectorwiseRef(
    X,
    W.data,
    rows,
    out,
    k,
    new Set(Array.from({ length: k }, (_, j) => j)),
  );
  close(zero.y.data, fp, 1e-6);
  // Injected outliers in columns 3 and 17.
  const Xo = new Float32Array(X);
  Xo[2 * k + 3] = 40;
  Xo[7 * k + 17] = -9;
  const got = llmInt8Matmul({ shape: [rows, k], data: Xo }, w);
  assertEquals(got.outliers, [3, 17]);
  close(got.y.data, vectorwiseRef(Xo, W.data, rows, out, k, new Set([3, 17])), 1e-6);
  // Without the decomposition the outliers blow up the int8 error.
  const plain = llmInt8Matmul({ shape: [rows, k], data: Xo }, w, { threshold: Infinity });
  const exact = vectorwiseRef(
    Xo,
    W.data,
    rows,
    out,
    k,
    new Set(Array.from({ length: k }, (_, j) => j)),
  );
  let eMixed = 0, ePlain = 0;
  for (let i = 0; i < exact.length; i++) {
    eMixed += (got.y.data[i] - exact[i]) ** 2;
    ePlain += (plain.y.data[i] - exact[i]) ** 2;
  }
  assertLess(eMixed, ePlain / 4);
});

Deno.test("LLM.int8() on stories260K: outlier dimensions per layer, perplexity within 1 % of FP", async () => {
  const m = await loadModel(`${DATA}models/stories260K-hf`);
  const opts = { nsamples: 4, seqlen: 256 };
  const fp = (await perplexity(m, "tinystories", opts)).ppl;
  const { model, report } = llmInt8(m, { threshold: 6 });
  const q = (await perplexity(model, "tinystories", opts)).ppl;
  const layers = [...report.outliers].filter(([, s]) => s.size > 0);
  console.log(
    `FP ${fp.toFixed(4)}  LLM.int8() ${q.toFixed(4)}; outlier dims: ${
      layers.map(([n, s]) => `${n.replace("model.layers.", "")}: [${[...s].sort((a, b) => a - b)}]`)
        .join("; ") || "none"
    }`,
  );
  assertEquals(report.outliers.size, 5 * 7, "every block linear went through the int8 product");
  assert(Math.abs(q / fp - 1) < 0.01, `LLM.int8() ${q} vs FP ${fp}`);
  assert(q !== fp, "the int8 path must change something");
});
