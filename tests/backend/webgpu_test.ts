import { assert, assertEquals, assertLess, assertRejects } from "@std/assert";
import {
  adapterInfo,
  getWebGPU,
  hasWebGPU,
  matmulDispatch,
  timeKernel,
  webgpuAvailable,
  webgpuBackend,
} from "../../src/backend/webgpu.ts";
import { matmulTransBTS, matmulTS } from "../../src/backend/_matmul_ts.ts";
import { randomArray, scaledErr } from "../../src/backend/_webgpu_check.ts";
import { upload } from "../../src/backend/_webgpu_device.ts";
import { UnsupportedError } from "../../src/errors.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) {
  console.log(
    "webgpu_test: SKIPPED — no WebGPU adapter (run with --unstable-webgpu; on Linux CI install " +
      "mesa-vulkan-drivers for the lavapipe adapter)",
  );
}
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

Deno.test("hasWebGPU is a cheap boolean", () => {
  assertEquals(typeof hasWebGPU(), "boolean");
});

Deno.test({
  name: "getWebGPU: limits, features, fallback refusal",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const info = await adapterInfo();
    assert(info.description.length > 0);
    assertEquals(
      info.limits.maxStorageBufferBindingSize,
      ctx.adapter.limits.maxStorageBufferBindingSize,
    );
    assertEquals(info.limits.maxBufferSize, ctx.adapter.limits.maxBufferSize);
    assertEquals(ctx.f16, ctx.adapter.features.has("shader-f16"));
    if (ctx.fallback) await assertRejects(() => getWebGPU(), UnsupportedError, "software adapter");
    else assert((await getWebGPU()) === ctx);
  },
});

Deno.test({
  name: "buffer pool reuses released buffers",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const a = ctx.pool.acquire(1000, 0x80 | 0x8);
    ctx.pool.release(a);
    const b = ctx.pool.acquire(1000, 0x80 | 0x8);
    assert(a === b);
    ctx.pool.release(b);
  },
});

Deno.test({
  name: "webgpuBackend matmul / matmulTransB match the TS reference",
  ...opts,
  fn: async () => {
    const be = await webgpuBackend({ allowFallback: true });
    assertEquals(be.name, "webgpu");
    for (const [m, k, n] of [[1, 1, 1], [3, 17, 5], [130, 70, 129]]) {
      const a = randomArray(m * k, { seed: m + k });
      const b = randomArray(k * n, { seed: n });
      const c = await be.matmul({ shape: [m, k], data: a }, { shape: [k, n], data: b });
      assertEquals(c.shape, [m, n]);
      assertLess(scaledErr(c.data, matmulTS(a, b, m, k, n)), 1e-5);
      const ct = await be.matmulTransB({ shape: [m, k], data: a }, { shape: [n, k], data: b });
      assertLess(scaledErr(ct.data, matmulTransBTS(a, b, m, k, n)), 1e-5);
    }
  },
});

Deno.test({
  name: "webgpuBackend splits A into row blocks past the binding limit",
  ...opts,
  fn: async () => {
    // 8 KiB "limit": A [300, 40] (48 KB) and C [300, 33] go in blocks of 51 rows.
    const be = await webgpuBackend({ allowFallback: true, maxBindingBytes: 8192 });
    const [m, k, n] = [300, 40, 33];
    const a = randomArray(m * k, { seed: 1 }), b = randomArray(k * n, { seed: 2 });
    const c = await be.matmul({ shape: [m, k], data: a }, { shape: [k, n], data: b });
    assertLess(scaledErr(c.data, matmulTS(a, b, m, k, n)), 1e-5);
    const big = await webgpuBackend({ allowFallback: true, maxBindingBytes: 1024 });
    await assertRejects(
      () => big.matmul({ shape: [2, 40], data: a.subarray(0, 80) }, { shape: [40, 33], data: b }),
      UnsupportedError,
    );
  },
});

Deno.test({
  name: "timeKernel reports a positive time",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const a = upload(ctx, randomArray(64 * 64, { seed: 3 }));
    const c = upload(ctx, new Float32Array(64 * 64));
    const t = await timeKernel(
      ctx,
      () => [matmulDispatch(ctx, { a, b: a, c }, { m: 64, k: 64, n: 64 })],
      { reps: 2, trials: 2 },
    );
    assert(t.seconds > 0 && Number.isFinite(t.seconds));
    assertEquals(t.method, ctx.timestamp ? "timestamp" : "wall");
    const w = await timeKernel(
      ctx,
      () => [matmulDispatch(ctx, { a, b: a, c }, { m: 64, k: 64, n: 64 })],
      { reps: 2, trials: 1, wall: true },
    );
    assertEquals(w.method, "wall");
    ctx.pool.release(a, c);
  },
});
