/**
 * LUT-GEMV benchmark (batch 1) at the seed's kernel-latency shapes (qllm-infer's LUT-GEMM table:
 * m = 1, n×k from 512×2048 to 12288×49152), beside the packed dequant GEMV (RTN 4-bit / 3-bit
 * g128) and the dense f32 GEMV on the same adapter. The BCQ weights are the exact BCQ form of the
 * same RTN grids (`bcqFromUniform`: q planes, α and an offset per group), so all three kernels
 * compute the same product; the LUT output is checked against the dequant GEMV's in the run.
 * Prints ms per product, GB/s of weight bytes read, and the ratio to the dense f32 GEMV.
 *
 * Usage: `deno run -A --unstable-webgpu bench/lut_gemv_bench.ts [--allow-fallback]
 * [--max-elems N]` (default 2^24 weights on software adapters, 2^30 otherwise; shapes above it
 * are skipped and listed).
 * @module
 */
import { getWebGPU, scratch, timeKernel, upload } from "../src/backend/_webgpu_device.ts";
import { gemvDispatch } from "../src/backend/_webgpu_matmul.ts";
import {
  dequantGemvDispatch,
  packQuantMeta,
  releasePacked,
  uploadPacked,
} from "../src/backend/_webgpu_quant.ts";
import { gpuLutGemv, lutGemvDispatch, releaseLut, uploadLut } from "../src/backend/_webgpu_lut.ts";
import { readF32, runDispatches } from "../src/backend/_webgpu_device.ts";
import { scaledErr } from "../src/backend/_webgpu_check.ts";
import { rtnQuantize } from "../src/quant/weight_only/rtn.ts";
import { bcqFromUniform } from "../src/quant/weight_only/bcq.ts";
import { mulberry32, randnArray } from "../src/rng.ts";

const args = Deno.args;
const allowFallback = args.includes("--allow-fallback");
const ctx = await getWebGPU({ allowFallback });
const software = ctx.fallback;
const mi = args.indexOf("--max-elems");
const maxElems = mi >= 0 ? Number(args[mi + 1]) : software ? 2 ** 24 : 2 ** 30;
const SHAPES: [number, number][] = [
  [512, 2048],
  [1024, 4096],
  [2048, 8192],
  [4096, 16384],
  [7168, 28672],
  [8192, 32768],
  [12288, 49152],
];
console.log(
  `adapter: ${JSON.stringify(ctx.info)}${software ? " (SOFTWARE: lavapipe numbers)" : ""}`,
);
console.log("n\tk\tkernel\tms\tGB/s(weights)\tvs dense f32\tcheck");
const rng = mulberry32(1840);
for (const [n, k] of SHAPES) {
  if (n * k > maxElems) {
    console.log(`${n}\t${k}\tskipped (n·k > --max-elems ${maxElems})`);
    continue;
  }
  const W = { shape: [n, k], data: randnArray(rng, n * k, { scale: 0.02 }) };
  const x = randnArray(rng, k);
  const xb = upload(ctx, x), yb = scratch(ctx, n * 4), wb = upload(ctx, W.data);
  const dense = await timeKernel(ctx, () => [gemvDispatch(ctx, { x: xb, w: wb, y: yb }, { n, k })]);
  const denseBytes = n * k * 4;
  console.log(
    `${n}\t${k}\tdense f32\t${(dense.seconds * 1e3).toFixed(3)}\t${
      (denseBytes / dense.seconds / 1e9).toFixed(1)
    }\t1.00`,
  );
  ctx.pool.release(wb);
  for (const bits of [4, 3]) {
    const rtn = rtnQuantize(W, { bits, groupSize: 128 });
    const pw = packQuantMeta(rtn.meta)!;
    const gw = uploadPacked(ctx, pw);
    const deq = await timeKernel(ctx, () => [dequantGemvDispatch(ctx, gw, { x: xb, y: yb })]);
    await runDispatches(ctx, [dequantGemvDispatch(ctx, gw, { x: xb, y: yb })]);
    const yDeq = await readF32(ctx, yb, n);
    const deqBytes = pw.qweight.byteLength + pw.scaleZero.byteLength;
    const b = bcqFromUniform(rtn.meta);
    const lw = uploadLut(ctx, b);
    const lut = await timeKernel(ctx, () => [lutGemvDispatch(ctx, lw, { x: xb, y: yb, m: 1 })]);
    const yLut = await gpuLutGemv(ctx, x, lw, 1);
    const lutBytes = b.planes.byteLength + b.alphas.byteLength + 4 * b.offsets!.length;
    const err = scaledErr(yLut, yDeq);
    for (
      const [name, t, bytes] of [
        [`dequant w${bits}g128`, deq.seconds, deqBytes],
        [`LUT w${bits}g128`, lut.seconds, lutBytes],
      ] as const
    ) {
      console.log(
        `${n}\t${k}\t${name}\t${(t * 1e3).toFixed(3)}\t${(bytes / t / 1e9).toFixed(1)}\t${
          (dense.seconds / t).toFixed(2)
        }${name.startsWith("LUT") ? `\tscaled err vs dequant ${err.toExponential(1)}` : ""}`,
      );
    }
    releasePacked(ctx, gw);
    releaseLut(ctx, lw);
  }
  ctx.pool.release(xb, yb);
}
