import { assert, assertEquals, assertLess, assertRejects } from "@std/assert";
import {
  adapterInfo,
  attentionTS,
  BufferPool,
  getWebGPU,
  hasWebGPU,
  isCausalMask,
  matmulDispatch,
  packQuantMeta,
  releaseResidentPacked,
  residentPackedStats,
  timeKernel,
  webgpuAvailable,
  webgpuBackend,
} from "../../src/backend/webgpu.ts";
import { matmulTransBTS, matmulTS } from "../../src/backend/_matmul_ts.ts";
import { randomArray, scaledErr } from "../../src/backend/_webgpu_check.ts";
import { upload } from "../../src/backend/_webgpu_device.ts";
import { UnsupportedError } from "../../src/errors.ts";
import { cpuBackend } from "../../src/backend/cpu.ts";
import { gptqQuantize } from "../../src/quant/weight_only/gptq.ts";

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
  name: "webgpuBackend splits A's rows and C's columns past the binding limit",
  ...opts,
  fn: async () => {
    // 8 KiB "limit": A [300, 40] (48 KB) and C [300, 33] go in blocks of 51 rows.
    const be = await webgpuBackend({ allowFallback: true, maxBindingBytes: 8192 });
    const [m, k, n] = [300, 40, 33];
    const a = randomArray(m * k, { seed: 1 }), b = randomArray(k * n, { seed: 2 });
    const c = await be.matmul({ shape: [m, k], data: a }, { shape: [k, n], data: b });
    assertLess(scaledErr(c.data, matmulTS(a, b, m, k, n)), 1e-5);
    // 1 KiB: B [40, 33] (5 KB) no longer fits either: 6 columns of C per block, both layouts.
    const small = await webgpuBackend({ allowFallback: true, maxBindingBytes: 1024 });
    const m2 = 13, a2 = a.subarray(0, m2 * k);
    const c2 = await small.matmul({ shape: [m2, k], data: a2 }, { shape: [k, n], data: b });
    assertLess(scaledErr(c2.data, matmulTS(a2, b, m2, k, n)), 1e-5);
    const c3 = await small.matmulTransB({ shape: [m2, k], data: a2 }, { shape: [n, k], data: b });
    assertLess(scaledErr(c3.data, matmulTransBTS(a2, b, m2, k, n)), 1e-5);
    // 128 B: a single 40-long row (160 B) cannot be bound.
    const tiny = await webgpuBackend({ allowFallback: true, maxBindingBytes: 128 });
    await assertRejects(
      () => tiny.matmul({ shape: [2, 40], data: a.subarray(0, 80) }, { shape: [40, 33], data: b }),
      UnsupportedError,
      "binding limit",
    );
  },
});

Deno.test({
  name: "buffer pool: stats, capped free list, trim, destroy",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const pool = new BufferPool(ctx.device, { maxFreeBytes: 4096 });
    const u = 0x80 | 0x8;
    const a = pool.acquire(1000, u), b = pool.acquire(3000, u), c = pool.acquire(2000, u);
    let s = pool.stats();
    assertEquals(s.liveBytes, 1008 + 3008 + 2000);
    assertEquals(s.freeBytes, 0);
    pool.release(a, b);
    s = pool.stats();
    assertEquals(s.freeBytes, 4016);
    pool.release(c); // 6016 free > 4096: the oldest (a) is destroyed, then b
    s = pool.stats();
    assert(s.freeBytes <= 4096, `free ${s.freeBytes}`);
    assertEquals(s.destroyed, 2);
    assertEquals(s.liveBytes, 0);
    assertEquals(s.peakLiveBytes, 6016);
    assert(pool.acquire(2000, u) === c, "the survivor is reused");
    pool.release(c, c); // double release is ignored
    assertEquals(pool.stats().freeBytes, 2000);
    pool.trim();
    assertEquals(pool.stats().allocatedBytes, 0);
    const d = pool.acquire(64, u);
    pool.destroy(d);
    assertEquals(pool.stats().liveBytes, 0);
    pool.resetPeaks();
    assertEquals(pool.stats().peakLiveBytes, 0);
    await Promise.resolve();
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

Deno.test({
  name: "packed linears: quantizer metas run from resident packed codes, exactness-checked",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const [rows, cols] = [40, 96];
    const W = { shape: [rows, cols], data: randomArray(rows * cols, { seed: 21 }) };
    const H = new Float32Array(cols * cols);
    const X = randomArray(cols * 7, { seed: 22 });
    for (let i = 0; i < cols; i++) {
      for (let j = 0; j < cols; j++) {
        let s = 0;
        for (let t = 0; t < 7; t++) s += X[t * cols + i] * X[t * cols + j];
        H[i * cols + j] = s + (i === j ? 1 : 0);
      }
    }
    const be = await webgpuBackend({ allowFallback: true, maxBindingBytes: 4096 });
    for (const o of [{ bits: 4, groupSize: 32, actOrder: true }, { bits: 3, groupSize: -1 }]) {
      const q = await gptqQuantize(W, { H, nsamples: 7 }, { ...o, backend: cpuBackend });
      const pw = packQuantMeta(q.meta, q.Wq);
      assert(pw, `bits ${o.bits}: packable`);
      assertEquals(pw.identity, !o.actOrder);
      const { codes: _c, ...noCodes } = q.meta; // the bitstream alone is enough
      assert(packQuantMeta(noCodes, q.Wq));
      const off = { ...q.Wq, data: q.Wq.data.slice() };
      off.data[5] += 1e-3;
      assertEquals(packQuantMeta(q.meta, off), undefined, "a weight the meta does not give");
      for (const m of [1, 21]) { // 21 rows: blocks of 10, 10 (GEMM) and 1 (GEMV)
        const x = { shape: [m, cols], data: randomArray(m * cols, { seed: m }) };
        const y = await be.packedMatmulTransB!(x, q.Wq, q.meta);
        assert(y);
        assertEquals(y.shape, [m, rows]);
        assertLess(scaledErr(y.data, matmulTransBTS(x.data, q.Wq.data, m, cols, rows)), 1e-5);
      }
      const x1 = { shape: [1, cols], data: randomArray(cols, { seed: 3 }) };
      assertEquals(await be.packedMatmulTransB!(x1, off, q.meta), undefined, "falls back");
      assert(await be.packedMatmulTransB!(x1, q.Wq, q.meta), "and serves the right weight again");
    }
    assertEquals(packQuantMeta({ bits: 5, shape: [1, 1] }), undefined);
    const before = residentPackedStats().layers;
    assert(before >= 2);
    releaseResidentPacked();
    assertEquals(residentPackedStats().layers, 0);
    const q = await gptqQuantize(W, { H, nsamples: 7 }, { bits: 4, groupSize: 32 });
    const x = { shape: [2, cols], data: randomArray(2 * cols, { seed: 9 }) };
    const y1 = await be.packedMatmulTransB!(x, q.Wq, q.meta);
    releaseResidentPacked();
    const y2 = await be.packedMatmulTransB!(x, q.Wq, q.meta); // uploads again after a release
    assert(y1 && y2);
    assertEquals([...y2.data], [...y1.data]);
    assertEquals(residentPackedStats().layers, 1);
    releaseResidentPacked();
    ctx.pool.trim(ctx.pool.maxFreeBytes);
  },
});

Deno.test({
  name: "webgpuBackend attention (Backend layout) matches the CPU backend's; windows fall back",
  ...opts,
  fn: async () => {
    const be = await webgpuBackend({ allowFallback: true, maxBindingBytes: 16384 });
    for (const [G, T, S, d] of [[3, 5, 5, 16], [6, 1, 40, 64], [4, 7, 19, 8]]) {
      const q = { shape: [G, T, d], data: randomArray(G * T * d, { seed: G + T }) };
      const kT = { shape: [G, d, S], data: randomArray(G * d * S, { seed: S }) };
      const v = { shape: [G, S, d], data: randomArray(G * S * d, { seed: d }) };
      const mask = new Float32Array(T * S);
      for (let t = 0; t < T; t++) mask.fill(-Infinity, t * S + S - T + t + 1, (t + 1) * S);
      const m = { shape: [T, S], data: mask };
      const want = await cpuBackend.attention!(q, kT, v, m);
      const got = await be.attention!(q, kT, v, m);
      assertEquals(got.shape, [G, T, d]);
      assertLess(scaledErr(got.data, want.data), 1e-5);
      assertLess(scaledErr(attentionTS(q, kT, v, m).data, want.data), 1e-5);
      if (S > 3) {
        const w = mask.slice();
        w[(T - 1) * S] = -Infinity; // a sliding window hides key 0 from the last query
        assertEquals(isCausalMask(w, T, S), false);
        const mw = { shape: [T, S], data: w };
        assertLess(
          scaledErr(
            (await be.attention!(q, kT, v, mw)).data,
            (await cpuBackend.attention!(q, kT, v, mw)).data,
          ),
          1e-5,
        );
      }
    }
  },
});

Deno.test({
  name: "residentWeights: a weight is uploaded once and reused; release frees it",
  ...opts,
  fn: async () => {
    const be = await webgpuBackend({ allowFallback: true, residentWeights: true });
    const [k, n] = [64, 48];
    const w = { shape: [n, k], data: randomArray(n * k, { seed: 31 }) };
    const x = { shape: [1, k], data: randomArray(k, { seed: 32 }) };
    const created0 = be.ctx.pool.stats().created;
    const y1 = await be.matmulTransB(x, w);
    const bytes = be.memory().residentDenseBytes;
    assertEquals(bytes, n * k * 4);
    const created1 = be.ctx.pool.stats().created;
    const y2 = await be.matmulTransB(x, w);
    assertEquals(be.ctx.pool.stats().created, created1, "no new buffer for the weight");
    assert(created1 > created0);
    assertEquals([...y2.data], [...y1.data]);
    assertLess(scaledErr(y1.data, matmulTransBTS(x.data, w.data, 1, k, n)), 1e-5);
    const live = be.memory().liveBytes;
    be.release();
    assertEquals(be.memory().residentDenseBytes, 0);
    assertEquals(be.memory().liveBytes, live - bytes);
    const y3 = await be.matmulTransB(x, w); // uploads again after a release
    assertEquals([...y3.data], [...y1.data]);
    assertEquals(be.memory().residentDenseBytes, bytes);
    be.release();
  },
});
