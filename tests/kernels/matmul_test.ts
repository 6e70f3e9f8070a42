import { assertLess } from "@std/assert";
import { getWebGPU, gpuMatmul, gpuMatmulF16, webgpuAvailable } from "../../src/backend/webgpu.ts";
import { gemvDispatch, matmulDispatch } from "../../src/backend/_webgpu_matmul.ts";
import { gemvRef } from "../../kernels/gemv.ts";
import { readF32, runDispatches, upload } from "../../src/backend/_webgpu_device.ts";
import { fromF16, randomArray, scaledErr, toF16 } from "../../src/backend/_webgpu_check.ts";
import { matmulRef, matmulWGSL } from "../../kernels/matmul.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("matmul_test: SKIPPED — no WebGPU adapter");
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

// odd sizes, non-multiples of the 128 tile, one row, large K
const SHAPES: [number, number, number][] = [[1, 7, 3], [130, 67, 129], [1, 4096, 96], [
  37,
  4096,
  5,
]];

Deno.test("matmulWGSL generates named accumulators and an unrolled loop", () => {
  const src = matmulWGSL({ bk: 8 });
  for (const name of ["c0_0", "c7_1", "As[224u + ty]"]) assertLess(-1, src.indexOf(name));
});

Deno.test({
  name: "f32 matmul A·B and A·Bᵀ match the CPU reference (tol 1e-5 of max|C|)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    for (const [m, k, n] of SHAPES) {
      for (const transB of [false, true]) {
        const a = randomArray(m * k, { seed: m * 31 + k }), b = randomArray(k * n, { seed: n });
        const c = await gpuMatmul(ctx, a, b, { m, k, n, transB });
        const err = scaledErr(c, matmulRef(a, b, { m, k, n, transB }));
        assertLess(err, 1e-5, `[${m},${k},${n}] transB=${transB}: ${err}`);
      }
    }
  },
});

Deno.test({
  name: "f32 matmul on sub-matrices with alpha/beta accumulation (GPTQ trailing update form)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    // C[:, 20:] (ld 150) -= E[70, 40] · H[10:50, 20:150] (ld 150)
    const [rows, ld, b0, i2, kk] = [70, 150, 10, 20, 40];
    const e = randomArray(rows * kk, { seed: 1 });
    const h = randomArray(ld * ld, { seed: 2 });
    const c0 = randomArray(rows * ld, { seed: 3 });
    const eb = upload(ctx, e), hb = upload(ctx, h), cb = upload(ctx, c0);
    await runDispatches(ctx, [
      matmulDispatch(ctx, { a: eb, b: hb, c: cb }, {
        m: rows,
        k: kk,
        n: ld - i2,
        ldb: ld,
        ldc: ld,
        offB: b0 * ld + i2,
        offC: i2,
        alpha: -1,
        beta: 1,
      }),
    ]);
    const got = await readF32(ctx, cb, rows * ld);
    const want = c0.slice();
    for (let r = 0; r < rows; r++) {
      for (let j = i2; j < ld; j++) {
        let s = 0;
        for (let i = 0; i < kk; i++) s += e[r * kk + i] * h[(b0 + i) * ld + j];
        want[r * ld + j] -= s;
      }
    }
    assertLess(scaledErr(got, want), 1e-5);
    ctx.pool.release(eb, hb, cb);
  },
});

Deno.test({
  name: "f16 matmul (shader-f16): f16 accumulation tol 2e-2, f32 accumulation tol 2e-3",
  ...opts,
  ignore: !available || !(await getWebGPU({ allowFallback: true }).then((c) => c.f16, () => false)),
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    for (const [m, k, n] of [[1, 7, 3], [130, 67, 129], [33, 1024, 40]]) {
      for (const transB of [false, true]) {
        const a16 = toF16(randomArray(m * k, { seed: k })),
          b16 = toF16(randomArray(k * n, { seed: n }));
        // reference on the f16-rounded inputs: only accumulation and output rounding differ
        const want = matmulRef(fromF16(a16), fromF16(b16), { m, k, n, transB });
        const c = fromF16(await gpuMatmulF16(ctx, a16, b16, { m, k, n, transB }));
        assertLess(scaledErr(c, want), 2e-2, `f16 acc [${m},${k},${n}]`);
        const c32 = fromF16(await gpuMatmulF16(ctx, a16, b16, { m, k, n, transB, accF32: true }));
        assertLess(scaledErr(c32, want), 2e-3, `f32 acc [${m},${k},${n}]`);
      }
    }
  },
});

Deno.test({
  name: "dense GEMV kernel (one-row A·Bᵀ) matches the CPU reference, vec4 and scalar",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    for (const [n, k] of [[1, 4], [1000, 512], [37, 4097], [5, 3]]) {
      const w = randomArray(n * k, { seed: n + k }), x = randomArray(k, { seed: k });
      const wb = upload(ctx, w), xb = upload(ctx, x), yb = upload(ctx, new Float32Array(n));
      await runDispatches(ctx, [gemvDispatch(ctx, { x: xb, w: wb, y: yb }, { n, k })]);
      const err = scaledErr(await readF32(ctx, yb, n), gemvRef(w, x, { n, k }));
      assertLess(err, 1e-5, `[${n}, ${k}]: ${err}`);
      ctx.pool.release(wb, xb, yb);
    }
  },
});
