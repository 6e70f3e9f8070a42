/**
 * H on the device (`QuantizeOptions.deviceHessian`, issue 12 item 4): the resident pipeline forms
 * `H = 2/n · Σ XᵀX` on the GPU and GPTQ's device column pass and the relErr product read it
 * there. Checked here:
 * - the scaling kernel (`kernels/xtx.ts` `hessianScaleWGSL`) gives the host pipeline's
 *   `fround(S · (2/n))` bit for bit on real sums (stories260K) and on random ones, and its
 *   diagonal buffer is H's diagonal;
 * - `gptqQuantize` with `stats.Hdevice` = with `stats.H` (same backend), also when the device
 *   declines the pass and the CPU loop runs (H then read back whole), and the CPU path with a host
 *   H is untouched;
 * - the pipeline with `deviceHessian: true` (default) against `false` (H read back per group and
 *   uploaded by GPTQ and by the relErr product): the same weights, metas and relErr bit for bit,
 *   and per block the byte counters differ by exactly the n² terms: read back
 *   `Σ_groups 4·(d² − d)` less (the diagonal, d floats, replaces the d² sums) and uploaded
 *   `Σ_linears 2 · 4·d²` less (GPTQ's H and the relErr product's B); with RTN (no Hessian, only
 *   relErr reads it) `Σ_groups 4·d²` and `Σ_linears 4·d²` less.
 */
import { assert, assertEquals } from "@std/assert";
import {
  gpuHessianFromSums,
  runDispatches,
  upload,
  webgpuAvailable,
  webgpuBackend,
} from "../../src/backend/webgpu.ts";
import { hessianScaleRef } from "../../kernels/xtx.ts";
import { loadModel } from "../../src/models/load.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { gptq, gptqQuantize } from "../../src/quant/weight_only/gptq.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import type { WeightQuantizer } from "../../src/quant/core/types.ts";
import { blockLinearGroups } from "../../src/models/config.ts";
import { residentBlockRunner } from "../../src/models/resident_block.ts";
import { embed } from "../../src/models/decoder.ts";
import { Rng } from "../_rng.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("pipeline_device_hessian_test: SKIPPED — no WebGPU adapter");

/** A meta without its wall-clock timings. */
function untimed(meta: Record<string, unknown>): Record<string, unknown> {
  const { timings: _, ...rest } = meta;
  return rest;
}

/** Indices where two float32 arrays differ bitwise (NaN-safe), at most 5. */
function bitDiffs(a: Float32Array, b: Float32Array): number[] {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  const out: number[] = [];
  for (let i = 0; i < ua.length && out.length < 5; i++) if (ua[i] !== ub[i]) out.push(i);
  return out;
}

const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

Deno.test({
  ...opts,
  name: "device Hessian: the f32 scaling kernel = the host's fround(S·2/n) on real and random sums",
  fn: async () => {
    const be = await webgpuBackend({ allowFallback: true });
    const ctx = be.ctx;
    const check = async (S: Float32Array, d: number, n: number, label: string) => {
      const sb = upload(ctx, S);
      const { dispatch, matrix } = gpuHessianFromSums(ctx, sb, { d, n });
      try {
        await runDispatches(ctx, [dispatch]);
        const ref = hessianScaleRef(S, { d, n });
        const H = await matrix.read(), diag = await matrix.diagonal();
        assertEquals(bitDiffs(H, ref.H), [], `${label}: H entries differ from the host`);
        assertEquals(bitDiffs(diag, ref.diag), [], `${label}: diagonal`);
        assertEquals(matrix.size, d);
      } finally {
        matrix.release();
        ctx.pool.release(sb);
      }
    };
    // Real sums: block 0 of stories260K, every input group, 3 × 32 calibration tokens.
    const model = await loadModel("../shared/data/models/stories260K-hf");
    const calib = await calibrationSet(model, "tinystories", { nsamples: 3, seqlen: 32, seed: 4 });
    const h = await embed(model, calib.ids.flat(), { seqLen: 32, backend: be });
    const runner = await residentBlockRunner(model, 0, be, { seqLen: 32 });
    try {
      const want = new Set(blockLinearGroups(model.config, 0).flat());
      await runner.run(h, { batch: 3, collect: want });
      const st = await runner.take();
      const seen = new Set<unknown>();
      for (const [name, s] of st) {
        if (seen.has(s)) continue;
        seen.add(s);
        await check(s.S, Math.sqrt(s.S.length), s.n, name);
      }
    } finally {
      runner.release();
    }
    // Random sums (wide dynamic range), row counts that are not powers of two.
    const r7 = new Rng(7);
    const rnd = () => r7.next();
    for (const [d, n] of [[48, 96], [100, 777], [17, 3], [64, 1_000_003]]) {
      const S = new Float32Array(d * d);
      for (let j = 0; j < S.length; j++) {
        S[j] = (rnd() - 0.3) * 10 ** Math.floor(rnd() * 12 - 6);
      }
      await check(S, d, n, `random d=${d} n=${n}`);
    }
  },
});

Deno.test({
  ...opts,
  name: "device Hessian: gptqQuantize with stats.Hdevice = with stats.H (device pass and fallback)",
  fn: async () => {
    const be = await webgpuBackend({ allowFallback: true });
    const ctx = be.ctx;
    const r11 = new Rng(11);
    const rnd = () => r11.next();
    const rows = 24, cols = 40, n = 300;
    // S = Σ XᵀX of random X with two dead inputs.
    const X = new Float32Array(n * cols);
    for (let j = 0; j < X.length; j++) X[j] = (j % cols === 3 || j % cols === 17) ? 0 : rnd() - 0.5;
    const S = new Float32Array(cols * cols);
    for (let i = 0; i < cols; i++) {
      for (let j = 0; j < cols; j++) {
        let a = 0;
        for (let t = 0; t < n; t++) a += X[t * cols + i] * X[t * cols + j];
        S[i * cols + j] = a;
      }
    }
    const H = hessianScaleRef(S, { d: cols, n }).H;
    const W = { shape: [rows, cols] as [number, number], data: new Float32Array(rows * cols) };
    for (let j = 0; j < W.data.length; j++) W.data[j] = rnd() * 2 - 1;
    const sb = upload(ctx, S);
    const { dispatch, matrix } = gpuHessianFromSums(ctx, sb, { d: cols, n });
    await runDispatches(ctx, [dispatch]);
    let first = true;
    try {
      for (
        const o of [{ bits: 4 }, { bits: 3, groupSize: 8, actOrder: true }, { bits: 4, sym: true }]
      ) {
        const t0 = be.transfer();
        const host = await gptqQuantize(W, { H, nsamples: n }, { ...o, backend: be });
        const tHost = be.transfer();
        const dev = await gptqQuantize(W, { Hdevice: matrix, nsamples: n }, { ...o, backend: be });
        const tDev = be.transfer();
        assertEquals(dev.Wq.data, host.Wq.data, JSON.stringify(o));
        assertEquals(untimed({ ...dev.meta }), untimed({ ...host.meta }));
        assertEquals(dev.loss, host.loss);
        // H never goes up; only its diagonal comes back (d floats, the first time: cached).
        const up = (a: typeof t0, b: typeof t0) => b.uploaded - a.uploaded;
        const back = (a: typeof t0, b: typeof t0) => b.readBack - a.readBack;
        assertEquals(up(t0, tHost) - up(tHost, tDev), 4 * cols * cols, "upload: H's d² terms");
        assertEquals(back(tHost, tDev) - back(t0, tHost), first ? 4 * cols : 0, "readback");
        first = false;
        // The device declines (no column pass): H is read back whole, the CPU loop runs and
        // equals the CPU path with the host H.
        const cpuBe = { ...be, gptqColumns: undefined };
        const fb = await gptqQuantize(W, { Hdevice: matrix, nsamples: n }, {
          ...o,
          backend: cpuBe,
        });
        const cpu = await gptqQuantize(W, { H, nsamples: n }, { ...o, backend: cpuBe });
        assertEquals(fb.Wq.data, cpu.Wq.data);
        assertEquals(fb.meta.codes, cpu.meta.codes);
        // The device declines the pass itself (H over a small binding limit): GPTQ reads H back
        // whole and runs the CPU loop, as with the host H on the same backend.
        const small = await webgpuBackend({ allowFallback: true, maxBindingBytes: 4096 });
        const sd = await gptqQuantize(W, { Hdevice: matrix, nsamples: n }, {
          ...o,
          backend: small,
        });
        const sh = await gptqQuantize(W, { H, nsamples: n }, { ...o, backend: small });
        assertEquals((sd.meta.timings as { columnPass: string }).columnPass, "cpu");
        assertEquals(sd.Wq.data, sh.Wq.data);
        assertEquals(sd.meta.codes, sh.meta.codes);
        assertEquals(sd.loss, sh.loss);
      }
    } finally {
      matrix.release();
      ctx.pool.release(sb);
    }
  },
});

Deno.test({
  ...opts,
  name:
    "GPTQ pipeline on WebGPU: H on the device = H over the bus, minus exactly the d² byte terms",
  fn: async () => {
    const be = await webgpuBackend({ allowFallback: true });
    const model = await loadModel("../shared/data/models/stories260K-hf");
    const calib = await calibrationSet(model, "tinystories", { nsamples: 3, seqlen: 32, seed: 4 });
    const cfg = model.config, L = cfg.numLayers;
    const run = async (deviceHessian: boolean, q: WeightQuantizer) => {
      const per: { up: number; back: number }[] = [];
      let last = be.transfer();
      const m = await quantize(model, q, {
        calib,
        backend: be,
        deviceHessian,
        deviceHidden: true,
        chunk: 2,
        onProgress: (p) => {
          if (p.stage !== "block") return;
          const now = be.transfer();
          per.push({ up: now.uploaded - last.uploaded, back: now.readBack - last.readBack });
          last = now;
        },
      });
      assert(m.report!.residentBlocks);
      return { m, per };
    };
    for (
      const q of [
        gptq({ bits: 4, groupSize: 32, actOrder: true, partialGroups: true }),
        gptq({ bits: 3 }),
        rtn({ bits: 4 }),
      ]
    ) {
      const bus = await run(false, q);
      const onDev = await run(true, q);
      for (const r of onDev.m.report!.layers) {
        const a = await onDev.m.weights.get(`${r.name}.weight`);
        const b = await bus.m.weights.get(`${r.name}.weight`);
        assertEquals(a.data, b.data, r.name);
        assertEquals(untimed(onDev.m.packed![r.name]), untimed(bus.m.packed![r.name]));
      }
      assertEquals(
        onDev.m.report!.layers.map((r: { relErr: number }) => r.relErr),
        bus.m.report!.layers.map((r: { relErr: number }) => r.relErr),
      );
      for (let i = 0; i < L; i++) {
        let dUp = 0, dBack = 0;
        for (const g of blockLinearGroups(cfg, i)) {
          const d = g[0].endsWith("down_proj") ? cfg.intermediateSize : cfg.hiddenSize;
          // GPTQ: the sums' readback becomes the diagonal's, and neither GPTQ nor the relErr
          // product uploads H. RTN (no Hessian): only the relErr product's upload goes.
          const gptqRun = q.name === "gptq";
          dBack += gptqRun ? 4 * (d * d - d) : 4 * d * d;
          dUp += g.length * (gptqRun ? 2 : 1) * 4 * d * d;
        }
        assertEquals(bus.per[i].up - onDev.per[i].up, dUp, `block ${i} upload`);
        assertEquals(bus.per[i].back - onDev.per[i].back, dBack, `block ${i} readback`);
      }
      console.log(
        `  ${q.name} ${JSON.stringify(q.options)}:\n  per block up+back: H over the bus ${
          bus.per.map((p) => p.up + p.back)
        } B, ` +
          `H on the device ${onDev.per.map((p) => p.up + p.back)} B`,
      );
    }
  },
});
