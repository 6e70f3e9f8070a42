/**
 * ZeroQuant's layer-wise distillation (src/quant/weight_activation/lkd.ts):
 * - the reverse-mode block forward equals the library's decoder block (`block`) on a tiny seeded
 *   GQA Llama (float64 vs the float32 host forward: < 1e-4);
 * - every linear's gradient and the input gradient match central finite differences in float64
 *   (relative error < 1e-3) for `L = Σ c ⊙ out` with seeded c;
 * - Adam's first step moves each parameter by lr · g / (|g| + ε) (closed form);
 * - distilling stories260K's last block, quantized W4 (ZeroQuant per-row), lowers the block's
 *   output MSE against the FP teacher on held-out windows.
 */
import { assert, assertAlmostEquals, assertLess } from "@std/assert";
import { block, embed } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import {
  Adam,
  blockBackward,
  blockForward,
  blockLayout,
  blockParams,
  LKD_LINEARS,
  lkdBlock,
} from "../../src/quant/weight_activation/lkd.ts";
import { dsSymQuant } from "../../src/quant/weight_activation/zeroquant.ts";
import { CASES, setup } from "../models/_cases.ts";
import { Rng } from "../_rng.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;

async function withTiny(f: (m: Model, rng: Rng) => Promise<void>) {
  const { dir, model, rng } = await setup(CASES[0]);
  try {
    await f(model, rng);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("LKD block forward equals the decoder's block (tiny GQA Llama)", async () => {
  await withTiny(async (m, rng) => {
    const B = 2, T = 7, d = m.config.hiddenSize;
    const h = rng.normals(B * T * d);
    const want = await block(m, 1, { shape: [B * T, d], data: h }, { batch: B });
    const { dims } = blockLayout(m, 1, B, T);
    const got = await blockForward(await blockParams(m, 1), Float64Array.from(h), dims, {
      float64: true,
    });
    for (let i = 0; i < want.data.length; i++) {
      assertLess(Math.abs(got.out[i] - want.data[i]), 1e-4);
    }
  });
});

Deno.test("LKD gradients match central finite differences in float64 (rel. err < 1e-3)", async () => {
  await withTiny(async (m, rng) => {
    const B = 2, T = 5, d = m.config.hiddenSize;
    const { dims } = blockLayout(m, 0, B, T);
    const P = await blockParams(m, 0);
    const h = Float64Array.from(rng.normals(B * T * d));
    const c = Float64Array.from(rng.normals(B * T * d));
    const loss = async (PP: typeof P, hh: Float64Array) => {
      const o = (await blockForward(PP, hh, dims, { float64: true })).out;
      let s = 0;
      for (let i = 0; i < o.length; i++) s += c[i] * o[i];
      return s;
    };
    const tape = await blockForward(P, h, dims, { float64: true });
    const { dW, dh } = await blockBackward(P, tape, c, dims);
    const eps = 1e-5;
    const check = async (arr: Float64Array, grad: Float64Array, what: string, hh = h) => {
      for (let t = 0; t < 6; t++) {
        const i = rng.int(arr.length);
        const x0 = arr[i];
        arr[i] = x0 + eps;
        const lp = await loss(P, hh);
        arr[i] = x0 - eps;
        const lm = await loss(P, hh);
        arr[i] = x0;
        const fd = (lp - lm) / (2 * eps);
        const rel = Math.abs(fd - grad[i]) / Math.max(Math.abs(fd), Math.abs(grad[i]), 1e-6);
        assertLess(rel, 1e-3, `${what}[${i}]: analytic ${grad[i]}, finite differences ${fd}`);
      }
    };
    for (const key of LKD_LINEARS) await check(P.W[key].data, dW[key], key);
    await check(h, dh, "h");
  });
});

Deno.test("Adam's first step is lr · g / (|g| + ε)", () => {
  const p = Float64Array.from([1, -2, 0.5]), g = Float64Array.from([0.3, -4, 1e-3]);
  new Adam(0.1).step({ p }, { p: g });
  [1, -2, 0.5].forEach((x, i) =>
    assertAlmostEquals(p[i], x - (0.1 * g[i]) / (Math.abs(g[i]) + 1e-8), 1e-12)
  );
});

Deno.test("LKD on stories260K's last block (W4 ZeroQuant) lowers held-out output MSE", async () => {
  const m = await loadModel(`${DATA}models/stories260K-hf`);
  const L = m.config.numLayers, d = m.config.hiddenSize, T = 64;
  const cal = await calibrationSet(m, "tinystories", { nsamples: 12, seqlen: T });
  const inputs: Float64Array[] = [];
  for (const ids of cal.ids) {
    let h = await embed(m, ids);
    for (let i = 0; i < L - 1; i++) h = await block(m, i, h);
    inputs.push(Float64Array.from(h.data));
  }
  const train = inputs.slice(0, 8), held = inputs.slice(8);
  const q4 = (_k: string, W: Float64Array, rows: number) =>
    Float64Array.from(dsSymQuant(Float32Array.from(W), rows, 4).y);
  const mse = async (student: Model) => {
    const { dims } = blockLayout(m, L - 1, held.length, T);
    const h = new Float64Array(held.length * T * d);
    held.forEach((x, j) => h.set(x, j * T * d));
    const a = (await blockForward(await blockParams(m, L - 1), h, dims)).out;
    const b = (await blockForward(await blockParams(student, L - 1), h, dims)).out;
    let s = 0;
    for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
    return s / a.length;
  };
  const before = await lkdBlock(m, m, L - 1, train, q4, { lr: 1e-3, steps: 0 });
  const after = await lkdBlock(m, m, L - 1, train, q4, { lr: 1e-3, steps: 30, batchSize: 4 });
  const m0 = await mse(before.model), m1 = await mse(after.model);
  console.log(
    `held-out block MSE: W4 ${m0.toExponential(4)} → after 30 LKD steps ${m1.toExponential(4)}; ` +
      `train MSE ${after.losses[0].toExponential(3)} → ${after.losses.at(-1)!.toExponential(3)}`,
  );
  assert(m1 < m0 * 0.95, `LKD must lower the held-out MSE (${m0} → ${m1})`);
});
