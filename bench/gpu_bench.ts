/**
 * WebGPU kernel benchmarks (llm.c dev/cuda style): every kernel runs on whatever adapter is
 * present, its output is checked against the CPU reference in the same run (on a row subsample for
 * big sizes), and the achieved GFLOP/s or GB/s is printed with the fraction of a ceiling (GPU.md's
 * H100 figures). Where `python3` has PyTorch with CUDA, `bench/_torch_peer.py` runs in the same
 * call and the ratios to the PyTorch peers are printed too.
 *
 * End to end (after the kernels; `--no-e2e` skips it): a synthetic Llama-shaped checkpoint
 * (`tools/synthetic_checkpoint.ts`, TinyLlama-1.1B shapes by default, truncated to
 * `--e2e-layers` blocks) is written to a temporary folder and loaded with `loadModel`; then
 * prefill and decode tokens/s through `webgpuBackend` (dense f32 weights), decode tokens/s from
 * RTN 4-bit g128 packed weights resident on the GPU (GEMV), and — by default on real adapters,
 * with `--e2e-gptq` on software ones — the GPTQ pipeline (4-bit g128 act-order) over seeded
 * random calibration tokens on the WebGPU backend, with its GPU memory (peak live and held bytes
 * of the buffer pool) against one block's weights and activations.
 *
 * Usage: `deno run -A --unstable-webgpu bench/gpu_bench.ts [--allow-fallback] [--quick]
 * [--json PATH] [--no-torch] [--no-e2e] [--e2e-preset tinyllama-1.1b|llama-2-7b|tiny]
 * [--e2e-layers N] [--e2e-gptq | --no-e2e-gptq] [--e2e-prompt T] [--e2e-decode N]
 * [--e2e-nsamples N] [--e2e-seqlen T] [--e2e-dir DIR]`. Software adapters need
 * `--allow-fallback` and get the quick sizes.
 * The kernel part imports no npm package (the GPU machine reaches no registry); the end-to-end
 * part loads its modules lazily and reports (instead of failing the run) when a CPU reference
 * needs onnxruntime-node and it is missing.
 * @module
 */
import {
  getWebGPU,
  readF16Bits,
  readF32,
  readU32,
  runDispatches,
  scratch,
  timeKernel,
  upload,
  type WebGPUContext,
} from "../src/backend/_webgpu_device.ts";
import { matmulDispatch, xtxDispatch } from "../src/backend/_webgpu_matmul.ts";
import { gptqLossPartLength, gptqPassDispatches } from "../src/backend/_webgpu_gptq.ts";
import type { GptqColumnsArgs as Args } from "../src/backend/backend.ts";
import {
  dequantGemmDispatch,
  dequantGemvDispatch,
  type GpuPackedWeights,
  uploadPacked,
} from "../src/backend/_webgpu_quant.ts";
import { attentionDispatch, copyDispatch, rmsnormDispatch } from "../src/backend/_webgpu_nn.ts";
import { fromF16, randomArray, rng, scaledErr, toF16 } from "../src/backend/_webgpu_check.ts";
import { matmulRef } from "../kernels/matmul.ts";
import { xtxRef } from "../kernels/xtx.ts";
import { packedCode, type PackedWeights } from "../kernels/packed_weights.ts";
import { gptqRef } from "../kernels/gptq_block.ts";
import { rmsnormRef } from "../kernels/rmsnorm.ts";
import { attentionRef } from "../kernels/attention.ts";
import { KERNEL_UNITS, uncoveredKernels } from "./_kernel_units.ts";

/** GPU.md ceilings (H100 80GB HBM3, same day). */
const CEIL = {
  copy: { name: "H100 copy 3028 GB/s", value: 3028e9 },
  f32: { name: "cuBLAS f32 51.5 TFLOP/s", value: 51.5e12 },
  f16: { name: "target f16 60 TFLOP/s", value: 60e12 },
};

/** One benchmark line. */
interface Row {
  kernel: string;
  size: string;
  ms: number;
  metric: "GFLOP/s" | "GB/s";
  value: number;
  ceiling: string;
  fraction: number;
  check: string;
  ok: boolean;
  timing: string;
}

const args = Deno.args;
const allowFallback = args.includes("--allow-fallback");
const jsonAt = args.indexOf("--json");
const jsonPath = jsonAt >= 0 ? args[jsonAt + 1] : undefined;
const rows: Row[] = [];

function report(r: Row): void {
  rows.push(r);
  const v = r.metric === "GFLOP/s" ? r.value / 1e9 : r.value / 1e9;
  console.log(
    `${r.kernel.padEnd(26)} ${r.size.padEnd(30)} ${r.ms.toFixed(3).padStart(10)} ms ` +
      `${v.toFixed(1).padStart(10)} ${r.metric.padEnd(7)} ${
        (100 * r.fraction).toFixed(2).padStart(7)
      }% ` +
      `of ${r.ceiling}  [${r.ok ? "ok" : "FAIL"} ${r.check}] (${r.timing})`,
  );
}

/** Records a failed end-to-end check (counted with the kernel rows, not printed as one). */
function failed(kernel: string, check: string): void {
  rows.push({
    kernel,
    size: "",
    ms: NaN,
    metric: "GB/s",
    value: NaN,
    ceiling: "",
    fraction: NaN,
    check,
    ok: false,
    timing: "",
  });
}

/** Distinct sample rows for checks. */
function sampleRows(m: number, count: number): number[] {
  if (m <= count) return Array.from({ length: m }, (_, i) => i);
  const r = rng(42);
  const s = new Set<number>([0, m - 1]);
  while (s.size < count) s.add(Math.floor(r() * m));
  return [...s].sort((a, b) => a - b);
}

async function benchCopy(ctx: WebGPUContext, bytes: number): Promise<number> {
  const n4 = bytes / 16;
  const chunk = randomArray(1 << 18, { seed: 1 }) as Float32Array<ArrayBuffer>;
  const src = scratch(ctx, bytes), dst = scratch(ctx, bytes);
  for (let off = 0; off < bytes; off += chunk.byteLength) {
    ctx.device.queue.writeBuffer(src, off, chunk, 0, Math.min(chunk.length, (bytes - off) / 4));
  }
  const t = await timeKernel(ctx, () => [copyDispatch(ctx, { src, dst }, n4)], { reps: 5 });
  const probe = await readF32(ctx, dst, chunk.length);
  const ok = scaledErr(probe, chunk) === 0;
  const bw = (2 * bytes) / t.seconds;
  report({
    kernel: "copy (vec4)",
    size: `${(bytes / 2 ** 20).toFixed(0)} MiB`,
    ms: t.seconds * 1e3,
    metric: "GB/s",
    value: bw,
    ceiling: CEIL.copy.name,
    fraction: bw / CEIL.copy.value,
    check: ok ? "exact" : "mismatch",
    ok,
    timing: t.method,
  });
  ctx.pool.release(src, dst);
  return bw;
}

async function benchMatmul(ctx: WebGPUContext, n: number, dtype: "f32" | "f16"): Promise<number> {
  const [m, k] = [n, n];
  const a32 = randomArray(m * k, { seed: 2 }), b32 = randomArray(k * n, { seed: 3 });
  const a16 = dtype === "f16" ? toF16(a32) : undefined,
    b16 = dtype === "f16" ? toF16(b32) : undefined;
  const a = upload(ctx, a16 ?? a32), b = upload(ctx, b16 ?? b32);
  const c = scratch(ctx, m * n * (dtype === "f16" ? 2 : 4));
  const d = matmulDispatch(ctx, { a, b, c }, { m, k, n, dtype });
  const t = await timeKernel(ctx, () => [d], { reps: n >= 2048 ? 10 : 3 });
  const sr = sampleRows(m, 4);
  const got: number[] = [], want: number[] = [];
  const aRef = a16 ? fromF16(a16) : a32, bRef = b16 ? fromF16(b16) : b32;
  const cAll = dtype === "f16"
    ? fromF16(await readF16Bits(ctx, c, m * n))
    : await readF32(ctx, c, m * n);
  for (const r of sr) {
    const ref = matmulRef(aRef.subarray(r * k, (r + 1) * k), bRef, { m: 1, k, n });
    got.push(...cAll.subarray(r * n, (r + 1) * n));
    want.push(...ref);
  }
  const err = scaledErr(got, want);
  const tol = dtype === "f16" ? 5e-2 : 1e-4;
  const flops = (2 * m * n * k) / t.seconds;
  const ceil = dtype === "f16" ? CEIL.f16 : CEIL.f32;
  report({
    kernel: `matmul ${dtype}`,
    size: `${m}x${k}x${n}`,
    ms: t.seconds * 1e3,
    metric: "GFLOP/s",
    value: flops,
    ceiling: ceil.name,
    fraction: flops / ceil.value,
    check: `err ${err.toExponential(1)} on ${sr.length} rows (tol ${tol})`,
    ok: err < tol,
    timing: t.method,
  });
  ctx.pool.release(a, b, c);
  return t.seconds;
}

async function benchXtx(ctx: WebGPUContext, tokens: number, d: number): Promise<void> {
  const x = randomArray(tokens * d, { seed: 4 });
  const xb = upload(ctx, x), hb = upload(ctx, new Float32Array(d * d));
  const o = { n: tokens, d, alpha: 2 / tokens, beta: 0 };
  const t = await timeKernel(ctx, () => [xtxDispatch(ctx, { x: xb, h: hb }, o)], { reps: 3 });
  await runDispatches(ctx, [xtxDispatch(ctx, { x: xb, h: hb }, o)]);
  const h = await readF32(ctx, hb, d * d);
  // reference on a column slice: H[:, j] for sample j via rows of X
  const sr = sampleRows(d, 3);
  const got: number[] = [], want: number[] = [];
  for (const j of sr) {
    for (let i = 0; i < d; i++) {
      let s = 0;
      for (let tk = 0; tk < tokens; tk++) s += x[tk * d + i] * x[tk * d + j];
      want.push((2 / tokens) * s);
      got.push(h[i * d + j]);
    }
  }
  if (d <= 256) {
    got.push(...h);
    want.push(...xtxRef(x, new Float32Array(d * d), { n: tokens, d, alpha: 2 / tokens, beta: 0 }));
  }
  const err = scaledErr(got, want);
  const flops = (2 * tokens * d * d) / t.seconds; // dense-equivalent (the kernel does half)
  report({
    kernel: "XtX (Hessian, sym)",
    size: `${tokens} tok x ${d}`,
    ms: t.seconds * 1e3,
    metric: "GFLOP/s",
    value: flops,
    ceiling: CEIL.f32.name + " (dense-equiv)",
    fraction: flops / CEIL.f32.value,
    check: `err ${err.toExponential(1)} (tol 1e-4)`,
    ok: err < 1e-4,
    timing: t.method,
  });
  ctx.pool.release(xb, hb);
}

/** Random packed 4-bit g128 weights built directly (random words are valid codes). */
function randomPacked(
  rows: number,
  cols: number,
  bits: 4,
  gs: number,
  seed: number,
): PackedWeights {
  const chunks = cols / 32, groups = cols / gs;
  const r = rng(seed);
  const qweight = new Uint32Array(rows * chunks * bits);
  for (let i = 0; i < qweight.length; i++) qweight[i] = (r() * 4294967296) >>> 0;
  const scaleZero = new Float32Array(rows * groups * 2);
  for (let i = 0; i < rows * groups; i++) {
    scaleZero[2 * i] = 0.001 + 0.01 * r();
    scaleZero[2 * i + 1] = Math.floor(r() * 16);
  }
  return {
    bits,
    rows,
    cols,
    chunks,
    groups,
    qweight,
    scaleZero,
    chunkGroup: Uint32Array.from({ length: chunks }, (_, c) => Math.floor((c * 32) / gs)),
    colIndex: Uint32Array.from({ length: cols }, (_, i) => i),
    identity: true,
  };
}

function refRow(pw: PackedWeights, r: number, x: Float32Array): number {
  let s = 0;
  for (let c = 0; c < pw.chunks; c++) {
    const g = pw.chunkGroup[c];
    const sc = pw.scaleZero[2 * (r * pw.groups + g)], z = pw.scaleZero[2 * (r * pw.groups + g) + 1];
    for (let j = 0; j < 32; j++) s += sc * (packedCode(pw, r, c, j) - z) * x[c * 32 + j];
  }
  return s;
}

async function benchGemv(
  ctx: WebGPUContext,
  o: { rows: number; cols: number; minBytes: number },
  copyBw: number,
): Promise<number> {
  const pw = randomPacked(o.rows, o.cols, 4, 128, 5);
  const per = pw.qweight.byteLength + pw.scaleZero.byteLength;
  const copies = Math.max(1, Math.ceil(o.minBytes / per));
  const gws: GpuPackedWeights[] = [];
  for (let i = 0; i < copies; i++) gws.push(uploadPacked(ctx, pw));
  const x = randomArray(o.cols, { seed: 6 });
  const xb = upload(ctx, x), yb = scratch(ctx, o.rows * 4);
  const ds = gws.map((gw) => dequantGemvDispatch(ctx, gw, { x: xb, y: yb }));
  const t = await timeKernel(ctx, (rep) => [ds[rep % copies]], { reps: Math.max(2 * copies, 4) });
  await runDispatches(ctx, [ds[0]]);
  const y = await readF32(ctx, yb, o.rows);
  const sr = sampleRows(o.rows, 64);
  const err = scaledErr(sr.map((r) => y[r]), sr.map((r) => refRow(pw, r, x)));
  const bytes = per + o.cols * 4 + o.rows * 4;
  const bw = bytes / t.seconds;
  report({
    kernel: "dequant GEMV 4b g128",
    size: `${o.rows}x${o.cols} x${copies} rot (${((per * copies) / 2 ** 30).toFixed(2)} GiB)`,
    ms: t.seconds * 1e3,
    metric: "GB/s",
    value: bw,
    ceiling: `${CEIL.copy.name}; ${(bw / copyBw).toFixed(2)}x this run's copy`,
    fraction: bw / CEIL.copy.value,
    check: `err ${err.toExponential(1)} on ${sr.length} rows (tol 1e-4)`,
    ok: err < 1e-4,
    timing: t.method,
  });
  // prefill GEMM on the same weights
  const m = Math.min(o.rows, ctx.fallback ? 64 : 2048);
  const X = randomArray(m * o.cols, { seed: 7 });
  const Xb = upload(ctx, X), Yb = scratch(ctx, m * o.rows * 4);
  const dg = dequantGemmDispatch(ctx, gws[0], { x: Xb, y: Yb, m });
  const tg = await timeKernel(ctx, () => [dg], { reps: 3 });
  const Y = await readF32(ctx, Yb, m * o.rows);
  const sm = sampleRows(m, 2), sc = sampleRows(o.rows, 32);
  const got: number[] = [], want: number[] = [];
  for (const i of sm) {
    for (const r of sc) {
      got.push(Y[i * o.rows + r]);
      want.push(refRow(pw, r, X.subarray(i * o.cols, (i + 1) * o.cols)));
    }
  }
  const eg = scaledErr(got, want);
  const fl = (2 * m * o.rows * o.cols) / tg.seconds;
  report({
    kernel: "dequant GEMM 4b g128",
    size: `${m}x${o.cols}x${o.rows}`,
    ms: tg.seconds * 1e3,
    metric: "GFLOP/s",
    value: fl,
    ceiling: CEIL.f32.name,
    fraction: fl / CEIL.f32.value,
    check: `err ${eg.toExponential(1)} on ${got.length} outputs (tol 1e-4)`,
    ok: eg < 1e-4,
    timing: tg.method,
  });
  for (const gw of gws) ctx.pool.release(gw.qweight, gw.scaleZero, gw.chunkGroup, gw.colIndex);
  ctx.pool.release(xb, yb, Xb, Yb);
  return t.seconds;
}

function gptqProblem(rows: number, cols: number, seed: number) {
  const w = randomArray(rows * cols, { seed });
  const r = rng(seed + 1);
  const hinv = new Float32Array(cols * cols);
  for (let i = 0; i < cols; i++) {
    hinv[i * cols + i] = 0.5 + r();
    for (let j = i + 1; j < cols; j++) hinv[i * cols + j] = (r() - 0.5) * (0.5 / Math.sqrt(cols));
  }
  // 4-bit, g128 asymmetric grids fitted on the GPU at each group's first column (dynamic groups)
  return { w, hinv, maxq: 15, gs: 128, groups: Math.ceil(cols / 128) };
}

/** The fused GPTQ dispatches alone (grid fits, block kernel, trailing matmul) on resident data. */
async function benchGptq(ctx: WebGPUContext, n: number): Promise<number> {
  const [rows, cols, bs] = [n, n, 128];
  const p = gptqProblem(rows, cols, 8);
  const colGroup = Uint32Array.from({ length: cols }, (_, c) => Math.floor(c / p.gs));
  const bufs = {
    w: upload(ctx, p.w),
    hinv: upload(ctx, p.hinv),
    grid: scratch(ctx, rows * p.groups * 8),
    colGroup: upload(ctx, colGroup),
    q: scratch(ctx, rows * cols * 4),
    codes: scratch(ctx, rows * cols * 4),
    err: scratch(ctx, rows * bs * 4),
    lossPart: upload(ctx, new Float32Array(gptqLossPartLength(rows, bs))),
    dstCol: upload(ctx, Uint32Array.from({ length: cols }, (_, c) => c)),
  };
  const list = gptqPassDispatches(ctx, bufs, {
    rows,
    cols,
    blockSize: bs,
    maxq: p.maxq,
    ngroups: p.groups,
    fit: { groupSize: p.gs, sym: false },
  });
  // correctness first, on fresh W (rows are independent: reference on a row subsample)
  await runDispatches(ctx, list);
  const codes = await readU32(ctx, bufs.codes, rows * cols);
  const sr = sampleRows(rows, ctx.fallback ? rows : 16);
  let flips = 0;
  for (const r of sr) {
    const wr = p.w.slice(r * cols, (r + 1) * cols);
    const ref = gptqRef(wr, p.hinv, {
      rows: 1,
      cols,
      maxq: p.maxq,
      blockSize: bs,
      fit: { groupSize: p.gs, sym: false },
    });
    for (let j = 0; j < cols; j++) if (ref.codes[j] !== codes[r * cols + j]) flips++;
  }
  // timing: W drifts under repeated in-place updates; harmless for timing
  const t = await timeKernel(ctx, () => list, { reps: 1, trials: 3 });
  const flops = 2 * rows * cols * cols; // ~ trailing updates (half) + in-block feedback
  report({
    kernel: "GPTQ fused 4b g128",
    size: `${rows}x${cols} block ${bs}`,
    ms: t.seconds * 1e3,
    metric: "GFLOP/s",
    value: flops / 2 / t.seconds,
    ceiling: n === 4096
      ? `${CEIL.f32.name}; GPU.md fasterquant 4096² 1550 ms (${(1.55 / t.seconds).toFixed(1)}x)`
      : CEIL.f32.name,
    fraction: (flops / 2 / t.seconds) / CEIL.f32.value,
    check: `${flips} code flips of ${sr.length * cols} on ${sr.length} rows`,
    ok: flips <= sr.length * cols * 1e-3,
    timing: t.method,
  });
  ctx.pool.release(...Object.values(bufs));
  return t.seconds;
}

/** GPU.md's reference GPTQ (fasterquant, PyTorch CUDA, 4-bit g128 act-order) seconds per layer. */
const GPTQ_REF_S: Record<string, number> = { "4096x4096": 1.55, "4096x11008": 3.13 };

/**
 * The whole `gptqQuantize` (4-bit g128 act-order) on the WebGPU backend: total seconds with the
 * split CPU prep (damping, grids, act-order permutation) / device pass (float32 Cholesky of H⁻¹
 * and every block, one submission), beside GPU.md's reference figures; codes checked on a row
 * subsample against `gptqRef` run on the pass's own inputs (the permuted W, and Hinv from the
 * same device factorization of the damped H the backend received). H = 2/n·XᵀX + 1e-2·I of
 * n = cols + 256 Gaussian rows with log-normal channel scales, formed on the GPU. No
 * onnxruntime is needed (the GPU machine has none).
 */
async function benchGptqFull(ctx: WebGPUContext, quick: boolean): Promise<void> {
  const { webgpuBackend } = await import("../src/backend/webgpu.ts");
  const { gptqQuantize } = await import("../src/quant/weight_only/gptq.ts");
  const { gpuUpperCholeskyOfInverse } = await import("../src/backend/webgpu.ts");
  const { mulberry32, randn } = await import("../src/rng.ts");
  const be = await webgpuBackend({ allowFallback: ctx.fallback });
  const opts = { bits: 4, groupSize: 128, actOrder: true };
  let captured: Args | undefined;
  const spy = {
    ...be,
    gptqColumns: (a: Args) => {
      captured = a;
      return be.gptqColumns!(a);
    },
  };
  // compile the pipelines outside the timings (same WGSL for every size)
  {
    const r = mulberry32(1), c = 256;
    const H = new Float64Array(c * c);
    for (let i = 0; i < c; i++) H[i * c + i] = 1 + r();
    const W = Float32Array.from({ length: 64 * c }, () => randn(r));
    await gptqQuantize({ shape: [64, c], data: W }, { H, nsamples: 1 }, { ...opts, backend: be });
  }
  const sizes: [number, number][] = quick ? [[512, 512]] : [[4096, 4096], [4096, 11008]];
  for (const [rows, cols] of sizes) {
    const size = `${rows}x${cols}`;
    const rg = mulberry32(rows + cols);
    const W = new Float32Array(rows * cols);
    for (let i = 0; i < W.length; i++) W[i] = 0.02 * randn(rg);
    const n = cols + 256;
    const X = new Float32Array(n * cols);
    const colScale = Float32Array.from({ length: cols }, () => Math.exp(0.5 * randn(rg)));
    for (let t = 0; t < n; t++) {
      for (let j = 0; j < cols; j++) X[t * cols + j] = randn(rg) * colScale[j];
    }
    const xb = upload(ctx, X), hb = upload(ctx, new Float32Array(cols * cols));
    await runDispatches(ctx, [
      xtxDispatch(ctx, { x: xb, h: hb }, { n, d: cols, alpha: 2 / n, beta: 0 }),
    ]);
    const H32 = await readF32(ctx, hb, cols * cols);
    ctx.pool.release(xb, hb);
    const H = Float64Array.from(H32);
    for (let i = 0; i < cols; i++) H[i * cols + i] += 1e-2;
    captured = undefined;
    const t0 = performance.now();
    const res = await gptqQuantize({ shape: [rows, cols], data: W }, { H, nsamples: n }, {
      ...opts,
      backend: spy,
    });
    const total = (performance.now() - t0) / 1000;
    const tm = res.meta.timings as {
      linalg: number;
      params: number;
      inBlock: number;
      trailingFlops: number;
      inBlockFlops: number;
      columnPass: string;
    };
    // check: gptqRef on sampled rows of the pass's own inputs, processed order → original
    const a = captured as Args | undefined;
    let flips = 0, checked = 0, check = "GPU column pass did not run";
    if (a && tm.columnPass === "webgpu") {
      const sr = sampleRows(rows, ctx.fallback ? 32 : 16);
      const perm = res.meta.perm as Int32Array | undefined;
      // the pass's processed inputs: W and H gathered by perm, dead inputs, damping
      const pm = a.perm ?? Int32Array.from({ length: cols }, (_, c) => c);
      const Hp = new Float32Array(cols * cols);
      for (let i = 0; i < cols; i++) {
        for (let j = 0; j < cols; j++) Hp[i * cols + j] = a.H![pm[i] * cols + pm[j]];
        if (a.diagonal) Hp[i * cols + i] = a.diagonal[i];
      }
      const Hinv = a.Hinv ?? await gpuUpperCholeskyOfInverse(ctx, Hp, cols);
      for (const r of sr) {
        const Wr = Float32Array.from({ length: cols }, (_, c) => a.W[r * cols + pm[c]]);
        const ref = gptqRef(Wr, Hinv, {
          rows: 1,
          cols,
          maxq: 15,
          blockSize: a.blocksize,
          colGroup: a.colGroup,
          fit: { groupSize: 128, sym: false },
        });
        for (let c = 0; c < cols; c++) {
          if (ref.codes[c] !== res.meta.codes[r * cols + (perm ? perm[c] : c)]) flips++;
        }
        checked += cols;
      }
      check = `${flips} code flips of ${checked} on ${sr.length} rows vs gptqRef`;
    }
    const flops = tm.trailingFlops + tm.inBlockFlops;
    const refS = GPTQ_REF_S[size];
    report({
      kernel: "GPTQ gptqQuantize 4b g128 act",
      size,
      ms: total * 1e3,
      metric: "GFLOP/s",
      value: flops / total,
      ceiling: refS === undefined
        ? CEIL.f32.name
        : `GPU.md fasterquant ${refS} s/layer (${(refS / total).toFixed(2)}x)`,
      fraction: (flops / total) / CEIL.f32.value,
      check,
      ok: checked > 0 && flips <= checked * 1e-3,
      timing: "wall",
    });
    console.log(
      `  split: CPU prep ${(tm.linalg + tm.params).toFixed(3)} s (damping, grids, act-order ` +
        `permutation), device pass ${tm.inBlock.toFixed(3)} s (${tm.columnPass}: uploads, ` +
        `float32 Cholesky of H⁻¹ + ${Math.ceil(cols / 128)} blocks in one submission, ` +
        `readback, un-permute), other ` +
        `${(total - tm.linalg - tm.params - tm.inBlock).toFixed(3)} s (packing, copies)`,
    );
  }
  be.release();
}

/**
 * GPTQ's `Hinv` (upper `U`, `Uᵀ·U = H⁻¹`) on the GPU in float32 for an n×n GPTQ-like Hessian
 * (`bench/_gpu_linalg_bench.ts`), checked in the same run without onnxruntime: on 8 sampled rows
 * i, `(U·H·Uᵀ)[i, :]` against the identity row, in float64 on the CPU. Returns the seconds.
 */
async function benchHinv(ctx: WebGPUContext, n: number): Promise<number> {
  const { benchCholesky, benchHessian } = await import("./_gpu_linalg_bench.ts");
  const { gpuUpperCholeskyOfInverse } = await import("../src/backend/webgpu.ts");
  const r = await benchCholesky(ctx, n, { check: false });
  const H = await benchHessian(ctx, n, 0);
  const U = await gpuUpperCholeskyOfInverse(ctx, H, n);
  let worst = 0;
  const uh = new Float64Array(n);
  for (const i of sampleRows(n, 8)) {
    uh.fill(0);
    for (let k = i; k < n; k++) { // U is upper: row i starts at column i
      const u = U[i * n + k];
      for (let j = 0; j < n; j++) uh[j] += u * H[k * n + j];
    }
    for (let j = 0; j < n; j++) {
      let v = 0;
      for (let k = j; k < n; k++) v += uh[k] * U[j * n + k];
      worst = Math.max(worst, Math.abs(v - (i === j ? 1 : 0)));
    }
  }
  report({
    kernel: "Hinv f32 (Cholesky, inv)",
    size: `${n}x${n}`,
    ms: r.seconds * 1e3,
    metric: "GFLOP/s",
    value: r.gflops * 1e9,
    ceiling: CEIL.f32.name,
    fraction: (r.gflops * 1e9) / CEIL.f32.value,
    check: `max |U·H·Uᵀ − I| ${worst.toExponential(1)} on 8 rows (tol 1e-2)`,
    ok: worst < 1e-2,
    timing: r.method,
  });
  return r.seconds;
}

async function benchSmall(ctx: WebGPUContext, big: boolean): Promise<void> {
  // RMSNorm: bandwidth
  const [rowsN, d] = big ? [4096, 4096] : [64, 1024];
  const x = randomArray(rowsN * d, { seed: 9 }), w = randomArray(d, { seed: 10 });
  const xb = upload(ctx, x), wb = upload(ctx, w), yb = scratch(ctx, x.byteLength);
  const o = { rows: rowsN, d, eps: 1e-6 };
  const t = await timeKernel(ctx, () => [rmsnormDispatch(ctx, { x: xb, weight: wb, y: yb }, o)], {
    reps: 5,
  });
  const y = await readF32(ctx, yb, x.length);
  const sr = sampleRows(rowsN, 8);
  const got: number[] = [], want: number[] = [];
  for (const r of sr) {
    got.push(...y.subarray(r * d, (r + 1) * d));
    want.push(...rmsnormRef(x.subarray(r * d, (r + 1) * d), w, { rows: 1, d, eps: 1e-6 }));
  }
  const err = scaledErr(got, want);
  const bw = (2 * x.byteLength) / t.seconds;
  report({
    kernel: "RMSNorm",
    size: `${rowsN}x${d}`,
    ms: t.seconds * 1e3,
    metric: "GB/s",
    value: bw,
    ceiling: CEIL.copy.name,
    fraction: bw / CEIL.copy.value,
    check: `err ${err.toExponential(1)} (tol 1e-5)`,
    ok: err < 1e-5,
    timing: t.method,
  });
  ctx.pool.release(xb, wb, yb);
  // attention decode: T=1 over an S-long cache, Llama-style GQA
  const a = big
    ? { T: 1, S: 4096, nH: 32, nKV: 8, headDim: 128, posOffset: 4095 }
    : { T: 1, S: 512, nH: 8, nKV: 2, headDim: 64, posOffset: 511 };
  const q = randomArray(a.T * a.nH * a.headDim, { seed: 11 });
  const k = randomArray(a.S * a.nKV * a.headDim, { seed: 12 });
  const v = randomArray(a.S * a.nKV * a.headDim, { seed: 13 });
  const qb = upload(ctx, q),
    kb = upload(ctx, k),
    vb = upload(ctx, v),
    ob = scratch(ctx, q.byteLength);
  const ta = await timeKernel(
    ctx,
    () => [attentionDispatch(ctx, { q: qb, k: kb, v: vb, o: ob }, a)],
    {
      reps: 5,
    },
  );
  const out = await readF32(ctx, ob, q.length);
  const ea = scaledErr(out, attentionRef(q, k, v, a));
  const abw = (k.byteLength + v.byteLength) / ta.seconds;
  report({
    kernel: "attention decode (GQA)",
    size: `S=${a.S} nH=${a.nH} nKV=${a.nKV} hd=${a.headDim}`,
    ms: ta.seconds * 1e3,
    metric: "GB/s",
    value: abw,
    ceiling: CEIL.copy.name + " (KV bytes)",
    fraction: abw / CEIL.copy.value,
    check: `err ${ea.toExponential(1)} (tol 1e-5)`,
    ok: ea < 1e-5,
    timing: ta.method,
  });
  ctx.pool.release(qb, kb, vb, ob);
}

async function torchPeer(quick: boolean): Promise<Record<string, number> | undefined> {
  if (args.includes("--no-torch")) return undefined;
  try {
    const probe = await new Deno.Command("python3", {
      args: ["-c", "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 3)"],
      stdout: "null",
      stderr: "null",
    }).output();
    if (!probe.success) {
      console.log("\nPyTorch peer: skipped (python3 without torch or without CUDA)");
      return undefined;
    }
    const script = new URL("./_torch_peer.py", import.meta.url).pathname;
    const out = await new Deno.Command("python3", {
      args: [script, ...(quick ? ["--quick"] : [])],
      stdout: "piped",
      stderr: "inherit",
    }).output();
    const text = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "{}";
    return JSON.parse(text);
  } catch (e) {
    console.log(`\nPyTorch peer: skipped (${(e as Error).message})`);
    return undefined;
  }
}

function flagValue(name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

function flagNum(name: string, dflt: number): number {
  const v = flagValue(name);
  if (v === undefined) return dflt;
  const x = Number(v);
  if (!Number.isFinite(x)) throw new Error(`${name}: not a number: ${v}`);
  return x;
}

/** Seconds of an empty submit + `onSubmittedWorkDone` (the floor of every GPU round trip). */
async function syncLatency(ctx: WebGPUContext): Promise<number> {
  const n = 10;
  await ctx.device.queue.onSubmittedWorkDone();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    ctx.device.queue.submit([ctx.device.createCommandEncoder().finish()]);
    await ctx.device.queue.onSubmittedWorkDone();
  }
  return (performance.now() - t0) / 1000 / n;
}

const MiB = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

/** End-to-end benchmarks on a synthetic checkpoint (see the module doc). */
async function benchE2e(ctx: WebGPUContext, quick: boolean): Promise<Record<string, unknown>> {
  const { writeSyntheticCheckpoint, PRESETS } = await import("../tools/synthetic_checkpoint.ts");
  const { loadModel } = await import("../src/models/load.ts");
  const { createKVCache, forward } = await import("../src/models/decoder.ts");
  const { GREEDY_CHUNK, residentDecoder, residentUnsupported } = await import(
    "../src/models/resident.ts"
  );
  const { blockBytesPerRow } = await import("../src/backend/webgpu/block.ts");
  const { blockLinearGroups } = await import("../src/models/config.ts");
  const { webgpuBackend } = await import("../src/backend/webgpu.ts");
  const { cpuBackend } = await import("../src/backend/cpu.ts");
  const { quantize } = await import("../src/quant/pipeline/pipeline.ts");
  const { rtn } = await import("../src/quant/weight_only/rtn.ts");
  const { gptq } = await import("../src/quant/weight_only/gptq.ts");
  type Model = Awaited<ReturnType<typeof loadModel>>;
  type Backend = typeof cpuBackend;

  const preset = flagValue("--e2e-preset") ?? "tinyllama-1.1b";
  if (!PRESETS[preset]) throw new Error(`--e2e-preset: unknown "${preset}"`);
  const full = PRESETS[preset].num_hidden_layers;
  const layers = Math.min(full, flagNum("--e2e-layers", quick ? 1 : 2));
  const promptLen = flagNum("--e2e-prompt", quick ? 32 : 512);
  const decodeN = flagNum("--e2e-decode", quick ? 4 : 32);
  const runGptq = args.includes("--e2e-gptq") || (!ctx.fallback && !args.includes("--no-e2e-gptq"));
  const nsamples = flagNum("--e2e-nsamples", quick ? 4 : 128);
  const seqlen = flagNum("--e2e-seqlen", quick ? 64 : 2048);
  const out: Record<string, unknown> = { preset, layers, fullLayers: full };
  const userDir = flagValue("--e2e-dir");
  const root = userDir ?? (await Deno.makeTempDir({ prefix: "quantlab-e2e-" }));
  const dir = `${root}/${preset}-${layers}l`;
  const sync = await syncLatency(ctx);
  out.syncSeconds = sync;
  console.log(
    `\nend to end: synthetic ${preset}, ${layers} of ${full} blocks (f16 on disk, f32 in memory); ` +
      `GPU round trip floor ${(sync * 1e3).toFixed(2)} ms (submit → onSubmittedWorkDone)`,
  );
  try {
    let t0 = performance.now();
    const w = await writeSyntheticCheckpoint(dir, { preset, layers, seed: 0, force: true });
    console.log(
      `  checkpoint: ${(w.params / 1e6).toFixed(1)} M params, ${MiB(w.bytes)} in ` +
        `${w.shards.length} shard(s), written in ${w.seconds.toFixed(1)} s`,
    );
    const model = await loadModel(dir);
    const cfg = model.config;
    const V = cfg.vocabSize;
    const r = rng(123);
    const ids = Array.from({ length: promptLen }, () => 3 + Math.floor(r() * (V - 3)));
    const be = await webgpuBackend({ allowFallback: ctx.fallback, residentWeights: true });
    const dense = await webgpuBackend({
      allowFallback: ctx.fallback,
      packed: false,
      residentWeights: true,
    });
    // Weights from disk (the lazy store caches them), pipelines compiled, nothing resident yet.
    await forward(model, ids.slice(0, 4), { backend: cpuBackend }).catch(() => {});
    dense.release();
    t0 = performance.now();
    await forward(model, ids, { backend: dense });
    const tCold = (performance.now() - t0) / 1000;
    t0 = performance.now();
    const logits = await forward(model, ids, { backend: dense });
    const tPrefill = (performance.now() - t0) / 1000;
    let check = "no CPU reference";
    try {
      const ref = await forward(model, ids, { backend: cpuBackend });
      let d = 0;
      for (let i = 0; i < ref.data.length; i++) {
        d = Math.max(d, Math.abs(ref.data[i] - logits.data[i]));
      }
      check = `max |Δlogit| vs CPU ${d.toExponential(1)}`;
      out.prefillMaxAbsDiff = d;
    } catch (e) {
      check = `CPU reference skipped (${(e as Error).message.split("\n")[0].slice(0, 80)})`;
    }
    out.prefillTokensPerSecond = promptLen / tPrefill;
    out.prefillColdTokensPerSecond = promptLen / tCold;
    console.log(
      `  prefill ${promptLen} tokens, dense f32: ${(tPrefill * 1e3).toFixed(0)} ms, ` +
        `${(promptLen / tPrefill).toFixed(1)} tok/s with resident weights ` +
        `(${(promptLen / tCold).toFixed(1)} tok/s uploading them, ` +
        `${MiB(dense.memory().residentDenseBytes)}) [${check}]`,
    );
    /** Greedy decode of `decodeN` tokens after the prompt: `step` returns the last logits. */
    const greedy = async (step: (toks: number[]) => Promise<Float32Array>) => {
      let last = await step(ids);
      const got: number[] = [];
      const ts = performance.now();
      for (let s = 0; s < decodeN; s++) {
        let best = 0;
        for (let j = 1; j < V; j++) if (last[j] > last[best]) best = j;
        got.push(best);
        last = await step([best]);
      }
      return { ids: got, tps: decodeN / ((performance.now() - ts) / 1000) };
    };
    const decode = (m: Model, backend: Backend) => {
      const cache = createKVCache(cfg, promptLen + decodeN + 1);
      return greedy(async (toks) => {
        const lg = (await forward(m, toks, { cache, backend })).data;
        return lg.subarray(lg.length - V);
      });
    };
    const products = 7 * layers + 1;
    const dd = await decode(model, dense);
    out.decodeDenseTokensPerSecond = dd.tps;
    console.log(
      `  decode ${decodeN} tokens, dense f32 resident: ${dd.tps.toFixed(2)} tok/s ` +
        `(${products} products per token, each one GPU round trip)`,
    );
    t0 = performance.now();
    const qm = await quantize(model, rtn({ bits: 4, groupSize: 128, partialGroups: true }), {
      backend: cpuBackend,
    });
    const tq = (performance.now() - t0) / 1000;
    dense.release();
    const fq = await decode(qm, dense);
    dense.release();
    be.release();
    const pk = await decode(qm, be);
    const mem = be.memory();
    const same = pk.ids.every((x, i) => x === fq.ids[i]);
    out.decodePackedTokensPerSecond = pk.tps;
    out.decodeFakeQuantTokensPerSecond = fq.tps;
    out.packedGreedyMatches = same;
    out.residentPackedBytes = mem.residentPackedBytes;
    let denseBytes = 0;
    for (let i = 0; i < layers; i++) {
      for (const n of blockLinearGroups(cfg, i).flat()) {
        denseBytes += 4 * (await model.weights.get(`${n}.weight`)).data.length;
      }
    }
    console.log(
      `  RTN 4b g128 (CPU, ${tq.toFixed(1)} s); decode from packed codes resident on the GPU ` +
        `(GEMV; LM head dense): ${pk.tps.toFixed(2)} tok/s vs fake-quant dense ` +
        `${fq.tps.toFixed(2)} tok/s; ` +
        `${mem.residentPackedLayers} layers, ${MiB(mem.residentPackedBytes)} resident vs ` +
        `${MiB(denseBytes)} f32; greedy ids ${same ? "equal" : "DIFFER"}`,
    );
    if (!same) failed("e2e packed decode", "greedy ids differ from the fake-quantized model's");
    // The GPU-resident decoder: the whole step is one submission (one GPU wait per token).
    const decodeResident = async (m: Model, backend: typeof be) => {
      const dec = await residentDecoder(m, backend, { capacity: promptLen + decodeN + 1 });
      try {
        const g = await greedy((toks) => dec.step(toks));
        // the same tokens with the argmax fed back on the GPU (one wait per GREEDY_CHUNK)
        dec.reset();
        await dec.step(ids);
        const tg = performance.now();
        const fed = [g.ids[0], ...(await dec.greedy(g.ids[0], decodeN - 1))];
        const gtps = (decodeN - 1) / ((performance.now() - tg) / 1000);
        const fedSame = fed.every((x, i) => x === g.ids[i]);
        return { ...g, gtps, fedSame, bytes: dec.weightBytes, packed: dec.packedLayers };
      } finally {
        dec.release();
      }
    };
    const whyNot = residentUnsupported(model, dense, { capacity: promptLen + decodeN + 1 });
    if (whyNot) console.log(`  resident decoder: not run here (${whyNot})`);
    const rd = whyNot ? undefined : await decodeResident(model, dense);
    const rp = whyNot ? undefined : await decodeResident(qm, be);
    if (rd && rp) {
      const sameD = rd.ids.every((x, i) => x === dd.ids[i]) && rd.fedSame;
      const sameP = rp.ids.every((x, i) => x === fq.ids[i]) && rp.fedSame;
      out.decodeResidentDenseTokensPerSecond = rd.tps;
      out.decodeResidentPackedTokensPerSecond = rp.tps;
      out.residentGreedyMatches = sameD && sameP;
      console.log(
        `  resident decoder (one submission per token): dense f32 ${rd.tps.toFixed(2)} tok/s ` +
          `(${(rd.tps / dd.tps).toFixed(1)}x host-driven), packed 4b ${rp.tps.toFixed(2)} tok/s ` +
          `(${(rp.tps / pk.tps).toFixed(1)}x; ${rp.packed} layers packed, ${
            MiB(rp.bytes)
          } on the ` +
          `GPU); greedy ids ${sameD && sameP ? "equal" : "DIFFER"} to the host-driven runs\n` +
          `  greedy with the argmax fed back on the GPU (one wait per ${GREEDY_CHUNK} tokens): ` +
          `dense ${rd.gtps.toFixed(2)} tok/s, packed 4b ${rp.gtps.toFixed(2)} tok/s`,
      );
      out.decodeResidentGreedyDenseTokensPerSecond = rd.gtps;
      out.decodeResidentGreedyPackedTokensPerSecond = rp.gtps;
      if (!sameD || !sameP) {
        failed("e2e resident decode", "greedy ids differ from the host forward's");
      }
    }
    be.release();
    dense.release();
    if (runGptq) {
      // Default options: uploads per product, nothing resident (the pipeline's memory claim).
      const pipeBe = await webgpuBackend({ allowFallback: ctx.fallback });
      const calib = {
        ids: Array.from(
          { length: nsamples },
          () => Array.from({ length: seqlen }, () => 3 + Math.floor(r() * (V - 3))),
        ),
        dataset: "random",
        source: "uniform random token ids (synthetic checkpoint)",
        seqlen,
        seed: 0,
      };
      ctx.pool.resetPeaks();
      const live0 = ctx.pool.stats().liveBytes;
      let rss = Deno.memoryUsage().rss;
      const blockTimes: number[] = [];
      let tb = performance.now();
      t0 = performance.now();
      const g = await quantize(
        model,
        gptq({ bits: 4, groupSize: 128, actOrder: true, partialGroups: true }),
        {
          calib,
          backend: pipeBe,
          onProgress: (p) => {
            rss = Math.max(rss, Deno.memoryUsage().rss);
            if (p.stage === "block") {
              blockTimes.push((performance.now() - tb) / 1000);
              tb = performance.now();
            }
          },
        },
      );
      const tg = (performance.now() - t0) / 1000;
      const st = ctx.pool.stats();
      const blockW = denseBytes / layers;
      const act = Math.min(8, nsamples) * seqlen * blockBytesPerRow(cfg);
      const perBlock = blockTimes.reduce((a, b) => a + b, 0) / Math.max(1, blockTimes.length);
      out.gptq = {
        nsamples,
        seqlen,
        seconds: tg,
        blockSeconds: blockTimes,
        extrapolatedFullModelSeconds: perBlock * full,
        peakLiveBytes: st.peakLiveBytes,
        peakAllocatedBytes: st.peakAllocatedBytes,
        blockWeightBytes: blockW,
        chunkActivationBytes: act,
        peakRssBytes: rss,
        leakedBytes: st.liveBytes - live0,
        meanRelErr: g.report.layers.reduce((a: number, l: { relErr: number }) => a + l.relErr, 0) /
          g.report.layers.length,
      };
      console.log(
        `  GPTQ pipeline 4b g128 act-order, ${nsamples} × ${seqlen} random tokens, WebGPU ` +
          `backend: ${tg.toFixed(1)} s (${perBlock.toFixed(1)} s/block → ~${
            (perBlock * full / 60).toFixed(1)
          } min for all ${full} blocks)\n    GPU: peak live ${MiB(st.peakLiveBytes)}, peak held ` +
          `${MiB(st.peakAllocatedBytes)} (pool cap ${MiB(ctx.pool.maxFreeBytes)} free); one ` +
          `block's weights ${MiB(blockW)} f32, a chunk's activations ${
            MiB(act)
          } (resident blocks: ${g.report.residentBlocks}); ` +
          `host RSS peak ${MiB(rss)}; GPU bytes not returned: ${st.liveBytes - live0}`,
      );
    } else {
      console.log("  GPTQ pipeline: skipped on a software adapter (pass --e2e-gptq to run it)");
    }
  } finally {
    if (!userDir) await Deno.remove(root, { recursive: true }).catch(() => {});
  }
  return out;
}

/** Every entry of the kernel table ({@linkcode KERNEL_UNITS}), checked and timed. */
async function benchUnits(ctx: WebGPUContext, big: boolean): Promise<void> {
  for (const u of KERNEL_UNITS) {
    try {
      const r = await u.run(ctx, big);
      const bw = r.bytes / r.seconds;
      report({
        kernel: u.kernel,
        size: r.size,
        ms: r.seconds * 1e3,
        metric: "GB/s",
        value: bw,
        ceiling: CEIL.copy.name,
        fraction: bw / CEIL.copy.value,
        check: `err ${r.err.toExponential(1)} (tol ${r.tol})`,
        ok: r.err <= r.tol,
        timing: r.timing,
      });
    } catch (e) {
      console.log(`${u.kernel}: FAILED: ${(e as Error).stack ?? e}`);
      failed(u.kernel, (e as Error).message);
    }
  }
  const missing = await uncoveredKernels();
  if (missing.length) {
    failed("kernel table", `no benchmark entry for kernels/${missing.join(", ")}`);
  }
}

async function main(): Promise<void> {
  const ctx = await getWebGPU({ allowFallback });
  const quick = args.includes("--quick") || ctx.fallback;
  const i = ctx.info;
  console.log(`adapter: ${i.description} (vendor ${i.vendor}${i.fallback ? ", SOFTWARE" : ""})`);
  console.log(`features: ${i.features.join(", ") || "none"}; limits: ${JSON.stringify(i.limits)}`);
  console.log(
    `sizes: ${quick ? "quick" : "full"}; timing: ${
      ctx.timestamp ? "timestamp-query" : "wall clock"
    }\n`,
  );
  const n = quick ? 256 : 4096;
  const copyBw = await benchCopy(ctx, quick ? 16 * 2 ** 20 : 2 ** 30);
  const tF32 = await benchMatmul(ctx, n, "f32");
  const tF16 = ctx.f16 ? await benchMatmul(ctx, n, "f16") : NaN;
  await benchXtx(ctx, quick ? 256 : 4096, quick ? 256 : 4096);
  const tGemv = await benchGemv(
    ctx,
    quick ? { rows: 1024, cols: 1024, minBytes: 1 << 20 } : {
      rows: 44032,
      cols: 4096,
      minBytes: 2 ** 30,
    },
    copyBw,
  );
  const tGptq = await benchGptq(ctx, quick ? 256 : 4096);
  let tHinv = NaN;
  for (const m of quick ? [512] : [4096, 11008]) {
    try {
      const t = await benchHinv(ctx, m);
      if (m === n) tHinv = t;
    } catch (e) {
      console.log(`Hinv ${m}: FAILED: ${(e as Error).stack ?? e}`);
      failed("Hinv f32", (e as Error).message);
    }
  }
  try {
    await benchGptqFull(ctx, quick);
  } catch (e) {
    console.log(`GPTQ gptqQuantize: FAILED: ${(e as Error).stack ?? e}`);
    failed("GPTQ gptqQuantize", (e as Error).message);
  }
  await benchSmall(ctx, !quick);
  await benchUnits(ctx, !quick);
  let e2e: Record<string, unknown> | undefined;
  if (!args.includes("--no-e2e")) {
    try {
      e2e = await benchE2e(ctx, quick);
    } catch (e) {
      console.log(`\nend to end: FAILED: ${(e as Error).stack ?? e}`);
      failed("end to end", (e as Error).message);
    }
  }

  const peer = await torchPeer(quick);
  if (peer) {
    console.log(`\nPyTorch peers (${peer.device ?? "cuda"}), ratio = WebGPU time / PyTorch time:`);
    const line = (name: string, ours: number, theirs?: number) => {
      if (theirs === undefined || !Number.isFinite(ours)) return;
      console.log(
        `  ${name.padEnd(34)} torch ${(theirs * 1e3).toFixed(3)} ms  ours ${
          (ours * 1e3).toFixed(3)
        } ms  ratio ${(ours / theirs).toFixed(2)}`,
      );
    };
    line(`matmul f32 ${n}^3 (TF32 off)`, tF32, peer.matmul_f32_s);
    line(`matmul f16 ${n}^3`, tF16, peer.matmul_f16_s);
    line("copy (GB/s ours vs torch)", (2 * (quick ? 16 * 2 ** 20 : 2 ** 30)) / copyBw, peer.copy_s);
    line("GEMV: 4b WebGPU vs fp16 cuBLAS", tGemv, peer.gemv_f16_s);
    line(`GPTQ ${n}x${n} vs torch loop`, tGptq, peer.gptq_s);
    line(`Hinv ${n}x${n} vs torch.linalg (f32)`, tHinv, peer.hinv_s);
  }
  const bad = rows.filter((r) => !r.ok);
  console.log(
    `\n${rows.length} benchmarks, ${bad.length} failed checks${
      bad.length ? ": " + bad.map((r) => r.kernel).join(", ") : ""
    }`,
  );
  if (jsonPath) {
    await Deno.writeTextFile(
      jsonPath,
      JSON.stringify({ adapter: i, quick, rows, e2e, peer }, null, 1),
    );
  }
  if (bad.length) Deno.exitCode = 1;
}

if (import.meta.main) await main();
