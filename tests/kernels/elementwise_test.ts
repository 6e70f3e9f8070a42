/**
 * The elementwise kernels of `kernels/elementwise.ts` against their CPU references across sizes
 * (one element, odd counts, a count past one row of the workgroup grid so the (x, y) split runs).
 * Exact kernels (gather, copy, add, bias, ReLU) must match bit for bit; SwiGLU uses the GPU's
 * exp, so it is held to 2e-6 relative (f32 exp is within a few ulps); GELU's `1 + erf` cancels
 * for negative inputs in f32, so it is held to 1e-6 of max |y| (the reference is float64).
 */
import { assertEquals, assertLess } from "@std/assert";
import {
  bindGroup,
  getWebGPU,
  grid,
  pipeline,
  runAndRead,
  scratch,
  uniforms,
  upload,
  webgpuAvailable,
  type WebGPUContext,
} from "../../src/backend/webgpu.ts";
import { maxRelErr, randomArray, scaledErr } from "../../src/backend/_webgpu_check.ts";
import {
  activationRef,
  activationWGSL,
  addRef,
  addWGSL,
  biasRef,
  biasWGSL,
  copyRangeRef,
  copyRangeWGSL,
  ELEMENTWISE_WG,
  embedRef,
  embedWGSL,
  erfFit,
  swigluRef,
  swigluWGSL,
} from "../../kernels/elementwise.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("elementwise_test: SKIPPED — no WebGPU adapter");
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

/** Runs one kernel over `n` threads with `fields` and `inputs`; returns `out` (f32, `outLen`). */
async function run(
  ctx: WebGPUContext,
  code: string,
  fields: number[],
  bufs: GPUBuffer[],
  out: GPUBuffer,
  outLen: number,
  n: number,
): Promise<Float32Array> {
  const pipe = pipeline(ctx, code);
  const d = {
    pipeline: pipe,
    bindGroup: bindGroup(ctx, pipe, [uniforms(ctx, fields), ...bufs]),
    workgroups: grid(ctx, Math.ceil(n / ELEMENTWISE_WG)),
  };
  const res = new Float32Array(await runAndRead(ctx, [d], out, outLen * 4));
  ctx.pool.release(...bufs);
  return res;
}

function exactEqual(a: Float32Array, b: Float32Array, what: string) {
  assertEquals(a.length, b.length, what);
  let bad = 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) bad++;
  assertEquals(bad, 0, `${what}: ${bad} elements differ`);
}

Deno.test({
  name: "elementwise kernels match their CPU references across sizes",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const big = ctx.device.limits.maxComputeWorkgroupsPerDimension * ELEMENTWISE_WG + 4099;
    for (const n of [1, 7, 1000, 65_537, big]) {
      const x = randomArray(n, { seed: n, lo: -4, hi: 4 });
      const y = randomArray(n, { seed: n + 1, lo: -4, hi: 4 });
      // add, with and without an offset into x
      const xo = randomArray(n + 13, { seed: n + 2 });
      for (const off of [0, 13]) {
        const yb = upload(ctx, y);
        const got = await run(ctx, addWGSL(), [n, off, 0, 0], [upload(ctx, xo), yb], yb, n, n);
        exactEqual(got, addRef(xo, y, off), `add n=${n} off=${off}`);
      }
      // ranged copy into the middle of a larger buffer
      const dst = randomArray(n + 20, { seed: n + 3 });
      {
        const db = upload(ctx, dst);
        const o = { n: n - 1 || 1, srcOffset: n > 1 ? 1 : 0, dstOffset: 17 };
        const got = await run(
          ctx,
          copyRangeWGSL(),
          [o.n, o.srcOffset, o.dstOffset, 0],
          [upload(ctx, x), db],
          db,
          n + 20,
          o.n,
        );
        exactEqual(got, copyRangeRef(x, dst.slice(), o), `copyRange n=${n}`);
      }
      if (n === big) continue; // the rest: moderate sizes
      // SwiGLU (exp on the GPU)
      {
        const gb = upload(ctx, y);
        const got = await run(ctx, swigluWGSL(), [n, 0, 0, 0], [upload(ctx, x), gb], gb, n, n);
        assertLess(maxRelErr(got, swigluRef(x, y)), 2e-6, `swiglu n=${n}`);
      }
      for (const kind of ["relu", "gelu"] as const) {
        const yb = upload(ctx, y);
        const got = await run(ctx, activationWGSL(kind), [n, 0, 0, 0], [yb], yb, n, n);
        if (kind === "relu") exactEqual(got, activationRef(kind, y), `relu n=${n}`);
        else assertLess(scaledErr(got, activationRef(kind, y)), 1e-6, `gelu n=${n}`);
      }
    }
    // bias over [rows, cols] and the embedding gather
    for (const [rows, cols] of [[1, 5], [3, 64], [17, 301]]) {
      const b = randomArray(cols, { seed: cols });
      const y = randomArray(rows * cols, { seed: rows });
      const yb = upload(ctx, y);
      const n = rows * cols;
      const got = await run(ctx, biasWGSL(), [n, cols, 0, 0], [upload(ctx, b), yb], yb, n, n);
      exactEqual(got, biasRef(b, y), `bias ${rows}x${cols}`);
      const V = 50;
      const E = randomArray(V * cols, { seed: 5 });
      const ids = Uint32Array.from({ length: rows }, (_, t) => (t * 31 + 7) % V);
      const hb = scratch(ctx, n * 4);
      const h = await run(
        ctx,
        embedWGSL(),
        [n, cols, 0, V],
        [upload(ctx, ids), upload(ctx, E), hb],
        hb,
        n,
        n,
      );
      exactEqual(h, embedRef(ids, E, cols), `embed ${rows}x${cols}`);
      // the same gather from a table in two parts (rows 0..19 and 20..49), one dispatch each
      const pipe = pipeline(ctx, embedWGSL());
      const idb = upload(ctx, ids), hb2 = scratch(ctx, n * 4);
      const parts = [[0, 20], [20, V - 20]].map(([r0, nr]) => ({
        pipeline: pipe,
        bindGroup: bindGroup(ctx, pipe, [
          uniforms(ctx, [n, cols, r0, nr]),
          idb,
          upload(ctx, E.subarray(r0 * cols, (r0 + nr) * cols)),
          hb2,
        ]),
        workgroups: grid(ctx, Math.ceil(n / ELEMENTWISE_WG)),
      }));
      const h2 = new Float32Array(await runAndRead(ctx, parts, hb2, n * 4));
      exactEqual(h2, embedRef(ids, E, cols), `embed in parts ${rows}x${cols}`);
    }
  },
});

Deno.test("erfFit is within 1.2e-7 of erf's closed values and odd", () => {
  // erf(0.5), erf(1), erf(2) to 16 digits (Abramowitz & Stegun table 7.1).
  for (
    const [x, e] of [[0.5, 0.5204998778130465], [1, 0.8427007929497149], [2, 0.9953222650189527]]
  ) {
    assertLess(Math.abs(erfFit(x) - e), 1.2e-7);
    assertLess(Math.abs(erfFit(-x) + e), 1.2e-7);
  }
});
