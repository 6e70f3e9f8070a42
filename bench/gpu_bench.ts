/**
 * WebGPU kernel benchmarks (llm.c dev/cuda style): every kernel runs on whatever adapter is
 * present, its output is checked against the CPU reference in the same run (on a row subsample for
 * big sizes), and the achieved GFLOP/s or GB/s is printed with the fraction of a ceiling (GPU.md's
 * H100 figures). Where `python3` has PyTorch with CUDA, `bench/_torch_peer.py` runs in the same
 * call and the ratios to the PyTorch peers are printed too.
 *
 * Usage: `deno run -A --unstable-webgpu bench/gpu_bench.ts [--allow-fallback] [--quick]
 * [--json PATH] [--no-torch]`. Software adapters need `--allow-fallback` and get the quick sizes.
 * Imports no npm package (the GPU machine reaches no registry).
 * @module
 */
import {
  type Dispatch,
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
import { gptqBlockDispatches, matmulDispatch, xtxDispatch } from "../src/backend/_webgpu_matmul.ts";
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
  // 4-bit, g128 asymmetric grids fixed from the original W (static groups)
  const maxq = 15, gs = 128, groups = Math.ceil(cols / gs);
  const scale = new Float32Array(rows * groups), zero = new Float32Array(rows * groups);
  for (let i = 0; i < rows; i++) {
    for (let g = 0; g < groups; g++) {
      let mn = 0, mx = 0;
      for (let j = g * gs; j < Math.min(cols, (g + 1) * gs); j++) {
        mn = Math.min(mn, w[i * cols + j]);
        mx = Math.max(mx, w[i * cols + j]);
      }
      scale[i * groups + g] = Math.fround((mx - mn) / maxq);
      zero[i * groups + g] = Math.round(-mn / scale[i * groups + g]);
    }
  }
  return { w, hinv, scale, zero, maxq, groups };
}

async function benchGptq(ctx: WebGPUContext, n: number): Promise<number> {
  const [rows, cols, bs] = [n, n, 128];
  const p = gptqProblem(rows, cols, 8);
  const grid = new Float32Array(rows * p.groups * 2);
  for (let i = 0; i < rows * p.groups; i++) {
    [grid[2 * i], grid[2 * i + 1]] = [p.scale[i], p.zero[i]];
  }
  const bufs = {
    w: upload(ctx, p.w),
    hinv: upload(ctx, p.hinv),
    grid: upload(ctx, grid),
    q: scratch(ctx, rows * cols * 4),
    codes: scratch(ctx, rows * cols * 4),
    err: scratch(ctx, rows * bs * 4),
  };
  const list: Dispatch[] = [];
  for (let i1 = 0; i1 < cols; i1 += bs) {
    list.push(...gptqBlockDispatches(ctx, bufs, {
      rows,
      cols,
      i1,
      b: Math.min(bs, cols - i1),
      blockSize: bs,
      maxq: p.maxq,
      groups: p.groups,
    }));
  }
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
      scale: p.scale.subarray(r * p.groups, (r + 1) * p.groups),
      zero: p.zero.subarray(r * p.groups, (r + 1) * p.groups),
      maxq: p.maxq,
      blockSize: bs,
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
  await benchSmall(ctx, !quick);

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
  }
  const bad = rows.filter((r) => !r.ok);
  console.log(
    `\n${rows.length} benchmarks, ${bad.length} failed checks${
      bad.length ? ": " + bad.map((r) => r.kernel).join(", ") : ""
    }`,
  );
  if (jsonPath) {
    await Deno.writeTextFile(jsonPath, JSON.stringify({ adapter: i, quick, rows, peer }, null, 1));
  }
  if (bad.length) Deno.exitCode = 1;
}

if (import.meta.main) await main();
