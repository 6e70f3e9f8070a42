import { assert, assertEquals, assertLess, assertRejects, assertThrows } from "@std/assert";
import {
  CholeskyPivotError,
  decodeCholeskyStatus,
  getWebGPU,
  gpuUpperCholeskyOfInverse,
  upperCholeskyOfInverseDispatches,
  webgpuAvailable,
} from "../../src/backend/webgpu.ts";
import { runAndReadAll, scratch, upload } from "../../src/backend/_webgpu_device.ts";
import { NonFiniteError, UnsupportedError } from "../../src/errors.ts";
import {
  choleskyBlocks,
  choleskyDiagSharedBytes,
  upperCholeskyOfInverseRef,
} from "../../kernels/cholesky.ts";
import { NotPositiveDefiniteError, upperCholeskyOfInverse } from "../../src/quant/core/linalg.ts";
import { mulberry32 } from "../../src/rng.ts";
import { randomH } from "../quant/_oracles.ts";
import { realLayers } from "../quant/_real_stats.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("cholesky_test: SKIPPED (GPU tests) — no WebGPU adapter");
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

/** float32 unit roundoff. */
const U32 = 2 ** -24;

/** GPTQ's damping: `H + percdamp · mean(diag H) · I`, rounded to float32. */
function damped(H: ArrayLike<number>, n: number, percdamp = 0.01): Float32Array {
  let mean = 0;
  for (let i = 0; i < n; i++) mean += H[i * n + i];
  const damp = (percdamp * mean) / n;
  const out = Float32Array.from(H);
  for (let i = 0; i < n; i++) out[i * n + i] = H[i * n + i] + damp;
  return out;
}

/** A seeded SPD matrix: `2/N · XᵀX` of correlated inputs (`randomH`) with 1% damping. */
function spd(n: number, seed: number): Float32Array {
  const H = randomH(mulberry32(seed), n, { n: 2 * n + 16, k: Math.max(1, n >> 2), damp: 0 });
  return damped(H, n);
}

/** Largest eigenvalue of the symmetric `A` (float64 power iteration). */
function lambdaMax(A: Float64Array, n: number, iters = 100): number {
  let v = new Float64Array(n).fill(1 / Math.sqrt(n)), lam = 0;
  for (let it = 0; it < iters; it++) {
    const w = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let j = 0; j < n; j++) s += A[i * n + j] * v[j];
      w[i] = s;
    }
    let nrm = 0;
    for (let i = 0; i < n; i++) nrm += w[i] * w[i];
    lam = Math.sqrt(nrm);
    v = w.map((x) => x / lam);
  }
  return lam;
}

/** `UᵀU` in float64 (the inverse that U encodes). */
function utu(U: ArrayLike<number>, n: number): Float64Array {
  const M = new Float64Array(n * n);
  for (let k = 0; k < n; k++) {
    for (let i = k; i < n; i++) {
      const uki = U[k * n + i];
      if (uki === 0) continue;
      for (let j = k; j < n; j++) M[i * n + j] += uki * U[k * n + j];
    }
  }
  return M;
}

/** max |UᵀU·H − I| in float64. */
function inverseResidual(U: ArrayLike<number>, H: ArrayLike<number>, n: number): number {
  const M = utu(U, n);
  let r = 0;
  const row = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    row.fill(0);
    for (let k = 0; k < n; k++) {
      const m = M[i * n + k];
      for (let j = 0; j < n; j++) row[j] += m * H[k * n + j];
    }
    for (let j = 0; j < n; j++) r = Math.max(r, Math.abs(row[j] - (i === j ? 1 : 0)));
  }
  return r;
}

/** max |a − b| / max |b|. */
function scaledError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let mx = 0, d = 0;
  for (let i = 0; i < b.length; i++) {
    mx = Math.max(mx, Math.abs(b[i]));
    d = Math.max(d, Math.abs(a[i] - b[i]));
    if (Number.isNaN(a[i])) return NaN;
  }
  return d / mx;
}

function assertUpperPositive(U: ArrayLike<number>, n: number, what: string): void {
  for (let i = 0; i < n; i++) {
    assert(U[i * n + i] > 0 && Number.isFinite(U[i * n + i]), `${what}: U[${i},${i}] > 0`);
    for (let j = 0; j < i; j++) assertEquals(U[i * n + j], 0, `${what}: U[${i},${j}] = 0`);
  }
}

/**
 * Compares the GPU's U with the float64 CPU result on the same float32 H and returns the measured
 * numbers. Tolerance from float32 (u = 2⁻²⁴): the computed factors are exact for a perturbed
 * `H + ΔH` with `‖ΔH‖ ≲ c·u·‖H‖` (c grows with the summation lengths: at most nb = 64 inside a
 * block, the matmul's fma chains, one rounding per block step), so to first order U and the
 * residual `UᵀU·H − I` are off by about `c·κ₂(H)·u`. Both are asserted below `4·κ₂·u` (floor
 * `64·u` for a perfectly conditioned H, n = 1). Measured (lavapipe): `max|ΔU|/max|U|` at
 * 0.004–0.07·κ₂u and the residual at 0.07–0.35·κ₂u on the random cases (κ₂ ≈ 4e2–8e3), at most
 * 0.39 and 0.65·κ₂u on the 35 real Hessians: a 6× margin or more.
 */
async function check(
  H: Float32Array,
  n: number,
  what: string,
  o: { block?: number } = {},
) {
  const ctx = await getWebGPU({ allowFallback: true });
  const U = await gpuUpperCholeskyOfInverse(ctx, H, n, o);
  const H64 = Float64Array.from(H);
  const want = upperCholeskyOfInverse(H64, n);
  assertUpperPositive(U, n, what);
  const err = scaledError(U, want);
  const res = inverseResidual(U, H64, n);
  const res64 = inverseResidual(want, H64, n);
  const kappa = lambdaMax(H64, n) * lambdaMax(utu(want, n), n);
  const tol = Math.max(64 * U32, 4 * kappa * U32);
  console.log(
    `${what}: n=${n} κ₂=${kappa.toExponential(2)} max|ΔU|/max|U|=${err.toExponential(2)} ` +
      `(${(err / (kappa * U32)).toFixed(3)}·κu) |UᵀUH−I|=${res.toExponential(2)} ` +
      `(${(res / (kappa * U32)).toFixed(3)}·κu; float64 U: ${res64.toExponential(1)})`,
  );
  assertLess(err, tol, `${what}: max|ΔU|/max|U| ${err} vs ${tol}`);
  assertLess(res, tol, `${what}: |UᵀU·H − I| ${res} vs ${tol}`);
  return { U, err, res, kappa };
}

Deno.test("choleskyBlocks covers [0, n) from the bottom, the partial block last", () => {
  assertEquals(choleskyBlocks(130, 64), [[66, 64], [2, 64], [0, 2]]);
  assertEquals(choleskyBlocks(64, 64), [[0, 64]]);
  assertEquals(choleskyBlocks(0, 64), []);
});

Deno.test("upperCholeskyOfInverseRef (the GPU sequence on the CPU) matches the float64 path", () => {
  for (const [n, nb] of [[1, 4], [7, 3], [33, 8], [70, 16], [65, 64]]) {
    const H = spd(n, 100 + n);
    const { U, status } = upperCholeskyOfInverseRef(H, n, nb);
    assert(!status.failed);
    const err = scaledError(U, upperCholeskyOfInverse(Float64Array.from(H), n));
    assertLess(err, 1e-9, `n=${n} nb=${nb}: ${err}`);
  }
  const H = spd(20, 7);
  H[5 * 20 + 5] = -1;
  const { status } = upperCholeskyOfInverseRef(H, 20, 6);
  assertEquals([status.failed, status.pivot, status.row], [true, 14, 5]);
});

for (const n of [1, 5, 63, 64, 65, 130, 257, 700]) {
  Deno.test({
    name: `gpuUpperCholeskyOfInverse matches float64 on a random SPD H, n=${n}`,
    ...opts,
    fn: async () => {
      await check(spd(n, n), n, "random");
    },
  });
}

Deno.test({
  name: "gpuUpperCholeskyOfInverse: other block sizes (16, 127) give the same matrix",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const n = 300, H = spd(n, 3);
    const limit = ctx.device.limits.maxComputeWorkgroupStorageSize;
    for (const block of [16, 127].filter((b) => choleskyDiagSharedBytes(b) <= limit)) {
      await check(H, n, `block ${block}`, { block });
    }
  },
});

Deno.test({
  name: "gpuUpperCholeskyOfInverse on real stories260K Hessians (1% damping)",
  ...opts,
  fn: async () => {
    const layers = await realLayers();
    let worst = { err: 0, errK: 0, resK: 0, name: "" };
    for (const l of layers) {
      const n = Math.round(Math.sqrt(l.H.length));
      const loud = l.name === "model.layers.0.mlp.down_proj";
      const H = damped(l.H, n);
      const { err, res, kappa } = loud ? await check(H, n, l.name) : await checkQuiet(H, n, l.name);
      worst.errK = Math.max(worst.errK, err / (kappa * U32));
      worst.resK = Math.max(worst.resK, res / (kappa * U32));
      if (err > worst.err) worst = { ...worst, err, name: l.name };
    }
    console.log(
      `${layers.length} real Hessians: worst max|ΔU|/max|U| = ${worst.err.toExponential(2)} ` +
        `(${worst.name}); worst ratios ${worst.errK.toFixed(3)}·κu (ΔU), ` +
        `${worst.resK.toFixed(3)}·κu (residual)`,
    );
  },
});

/** {@linkcode check} without the log line. */
async function checkQuiet(H: Float32Array, n: number, what: string) {
  const log = console.log;
  console.log = () => {};
  try {
    return await check(H, n, what);
  } finally {
    console.log = log;
  }
}

Deno.test({
  name: "gpuUpperCholeskyOfInverse reports the failing pivot as the CPU does",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const n = 130;
    const cases: [string, (H: Float32Array) => void][] = [
      ["negative diagonal", (H) => H[40 * n + 40] = -1],
      ["zero pivot", (H) => {
        H.fill(0);
        for (let i = 0; i < n; i++) H[i * n + i] = i === 99 ? 0 : 1;
      }],
      ["NaN", (H) => H[10 * n + 100] = NaN],
      ["negative eigenvalue", (H) => {
        // H − 2·λ·vvᵀ with v = e_0 + e_1 (normalized), λ ≥ the quadratic form: indefinite.
        const q = (H[0] + H[n + 1] + 2 * H[1]) / 2;
        H[0] -= q * 1.5, H[n + 1] -= q * 1.5, H[1] -= q * 1.5, H[n] -= q * 1.5;
      }],
    ];
    for (const [what, spoil] of cases) {
      const H = spd(n, 11);
      spoil(H);
      let cpu: NotPositiveDefiniteError | undefined;
      try {
        upperCholeskyOfInverse(Float64Array.from(H), n);
      } catch (e) {
        if (e instanceof NotPositiveDefiniteError) cpu = e;
        else throw e;
      }
      assert(cpu, `${what}: the CPU path fails`);
      const e = await assertRejects(
        () => gpuUpperCholeskyOfInverse(ctx, H, n),
        CholeskyPivotError,
      );
      assert((e as unknown) instanceof NonFiniteError);
      console.log(`${what}: GPU ${e.message}; CPU pivot ${cpu.pivot} (${cpu.value})`);
      assertEquals(e.pivot, cpu.pivot, what);
      assertEquals(e.row, n - 1 - cpu.pivot, what);
    }
  },
});

Deno.test({
  name: "upperCholeskyOfInverseDispatches chains on resident buffers and keeps H",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const n = 200, H = spd(n, 5);
    const want = await gpuUpperCholeskyOfInverse(ctx, H, n);
    const h = upload(ctx, H), u = scratch(ctx, n * n * 4);
    const plan = upperCholeskyOfInverseDispatches(ctx, { h, u }, n);
    try {
      const [ub, hb, sb] = await runAndReadAll(ctx, plan.dispatches, [
        { buffer: u, bytes: n * n * 4 },
        { buffer: h, bytes: n * n * 4 },
        { buffer: plan.status, bytes: 16 },
      ]);
      assert(decodeCholeskyStatus(sb).ok);
      assertEquals(new Float32Array(hb), H, "H is kept");
      assertEquals(new Float32Array(ub), want, "same bits as the typed-array entry");
    } finally {
      plan.release();
      ctx.pool.release(h, u);
    }
  },
});

Deno.test({
  name: "gpuUpperCholeskyOfInverse checks sizes and the binding limit",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    assertEquals(await gpuUpperCholeskyOfInverse(ctx, new Float32Array(0), 0), new Float32Array(0));
    await assertRejects(() => gpuUpperCholeskyOfInverse(ctx, new Float32Array(5), 2), RangeError);
    const big = Math.ceil(Math.sqrt(ctx.device.limits.maxStorageBufferBindingSize / 4)) + 1;
    const h = scratch(ctx, 16), u = scratch(ctx, 16);
    assertThrows(() => upperCholeskyOfInverseDispatches(ctx, { h, u }, big), UnsupportedError);
    ctx.pool.release(h, u);
  },
});
