/**
 * The kernel table of `gpu_bench.ts`: one entry per `kernels/*.ts` kernel not benchmarked by a
 * dedicated function there (softmax, layernorm, rope, nll, argmax, elementwise add / SwiGLU,
 * fake-quant). Each entry builds its inputs, runs the kernel once and checks it against the
 * kernel file's CPU reference, then times repeated dispatches; the bench prints GB/s against the
 * copy ceiling. `COVERED` lists the kernel files the bench covers in total, so a new kernel file
 * without an entry shows up as missing.
 * @module
 */
import {
  bindGroup,
  type Dispatch,
  grid,
  pipeline,
  readF32,
  readU32,
  runDispatches,
  scratch,
  timeKernel,
  uniforms,
  upload,
  type WebGPUContext,
} from "../src/backend/_webgpu_device.ts";
import { kernelDispatch } from "../src/backend/_webgpu_forward.ts";
import { fakeQuantDispatch } from "../src/backend/_webgpu_fake_quant.ts";
import { randomArray, scaledErr } from "../src/backend/_webgpu_check.ts";
import { softmaxRef, softmaxWGSL } from "../kernels/softmax.ts";
import { layernormRef } from "../kernels/layernorm.ts";
import { ropeRef } from "../kernels/rope.ts";
import { nllRef } from "../kernels/nll.ts";
import { argmaxRef } from "../kernels/argmax.ts";
import { addRef, swigluRef } from "../kernels/elementwise.ts";
import { fakeQuantRef, type FakeQuantSpec } from "../kernels/fake_quant.ts";
import { lutGemvRef } from "../kernels/lut_gemv.ts";
import { hessianScaleRef } from "../kernels/xtx.ts";
import { hessianScaleDispatch } from "../src/backend/_webgpu_hessian.ts";
import { gemvRef } from "../kernels/gemv.ts";
import { lutGemvDispatch, releaseLut, uploadLut } from "../src/backend/_webgpu_lut.ts";
import { gemvDispatch } from "../src/backend/_webgpu_matmul.ts";
import { kvAttentionDispatch } from "../src/backend/_webgpu_kv.ts";
import { kvAttentionRef, kvGroupWords } from "../kernels/kv_attention.ts";
import { kvquantAttentionDispatch } from "../src/backend/_webgpu_kvquant.ts";
import { kvquantAttentionRef, kvquantTokenWords } from "../kernels/kvquant_attention.ts";

/** What one table entry measured. */
export interface UnitResult {
  /** Problem size, for the table. */
  size: string;
  /** Seconds per dispatch. */
  seconds: number;
  /** Bytes read + written per dispatch (for GB/s). */
  bytes: number;
  /** Scaled max error against the CPU reference. */
  err: number;
  /** Tolerance of `err`. */
  tol: number;
  /** Timing method (timestamp-query or wall clock). */
  timing: string;
}

/** One kernel of the table. */
export interface KernelUnit {
  /** Row name. */
  kernel: string;
  /** The `kernels/` file. */
  file: string;
  /** Runs, checks and times it (`big`: full sizes). */
  run(ctx: WebGPUContext, big: boolean): Promise<UnitResult>;
}

/** Checks one run, then times `reps` dispatches of `make()`. */
async function measure(
  ctx: WebGPUContext,
  make: () => Dispatch[],
  check: () => Promise<{ err: number; tol: number }>,
): Promise<{ seconds: number; err: number; tol: number; timing: string }> {
  await runDispatches(ctx, make());
  const c = await check();
  const t = await timeKernel(ctx, make, { reps: 5 });
  return { seconds: t.seconds, timing: t.method, ...c };
}

const F = 4;

/** The table (kernel files benchmarked elsewhere in gpu_bench.ts are listed in `COVERED`). */
export const KERNEL_UNITS: KernelUnit[] = [
  {
    kernel: "softmax",
    file: "softmax.ts",
    async run(ctx, big) {
      const [rows, d] = big ? [4096, 4096] : [64, 1024];
      const x = randomArray(rows * d, { seed: 21, lo: -8, hi: 8 });
      const xb = upload(ctx, x), yb = scratch(ctx, x.byteLength);
      const pipe = pipeline(ctx, softmaxWGSL());
      const make = () => [{
        pipeline: pipe,
        bindGroup: bindGroup(ctx, pipe, [uniforms(ctx, [rows, d, 0, 0]), xb, yb]),
        workgroups: grid(ctx, rows),
      }];
      const m = await measure(ctx, make, async () => ({
        err: scaledErr(await readF32(ctx, yb, x.length), softmaxRef(x, { rows, d })),
        tol: 1e-5,
      }));
      ctx.pool.release(xb, yb);
      return { size: `${rows}x${d}`, bytes: 2 * x.byteLength, ...m };
    },
  },
  {
    kernel: "layernorm",
    file: "layernorm.ts",
    async run(ctx, big) {
      const [rows, d] = big ? [4096, 4096] : [64, 1024];
      const x = randomArray(rows * d, { seed: 22 });
      const w = randomArray(d, { seed: 23 }), b = randomArray(d, { seed: 24 });
      const xb = upload(ctx, x), wb = upload(ctx, w), bb = upload(ctx, b);
      const yb = scratch(ctx, x.byteLength);
      const make = () => [
        kernelDispatch(ctx, "layernorm", [rows, d, { f: 1e-5 }, 0], [xb, wb, bb, yb], rows),
      ];
      const m = await measure(ctx, make, async () => ({
        err: scaledErr(
          await readF32(ctx, yb, x.length),
          layernormRef(x, w, b, { rows, d, eps: 1e-5 }),
        ),
        tol: 1e-5,
      }));
      ctx.pool.release(xb, wb, bb, yb);
      return { size: `${rows}x${d}`, bytes: 2 * x.byteLength, ...m };
    },
  },
  {
    kernel: "rope (in place)",
    file: "rope.ts",
    async run(ctx, big) {
      const o = big
        ? { T: 2048, heads: 32, headDim: 128, posOffset: 0 }
        : { T: 64, heads: 8, headDim: 64, posOffset: 3 };
      const half = o.headDim / 2, P = o.posOffset + o.T;
      const cos = new Float32Array(P * half), sin = new Float32Array(P * half);
      for (let p = 0; p < P; p++) {
        for (let i = 0; i < half; i++) {
          const a = p / 10000 ** ((2 * i) / o.headDim);
          cos[p * half + i] = Math.cos(a);
          sin[p * half + i] = Math.sin(a);
        }
      }
      const x = randomArray(o.T * o.heads * o.headDim, { seed: 25 });
      const xb = upload(ctx, x), cb = upload(ctx, cos), sb = upload(ctx, sin);
      const u = [o.T, o.heads, o.headDim, o.posOffset, 0, 0, 0, 0];
      const make = () => [
        kernelDispatch(ctx, "rope", u, [xb, cb, sb], Math.ceil((o.T * o.heads * half) / 256)),
      ];
      const m = await measure(ctx, make, async () => ({
        err: scaledErr(await readF32(ctx, xb, x.length), ropeRef(x, { cos, sin }, o)),
        tol: 1e-5,
      }));
      ctx.pool.release(xb, cb, sb);
      return { size: `T=${o.T} H=${o.heads} hd=${o.headDim}`, bytes: 2 * x.byteLength, ...m };
    },
  },
  {
    kernel: "nll (log-softmax pick)",
    file: "nll.ts",
    async run(ctx, big) {
      const [rows, d] = big ? [2048, 32000] : [64, 512];
      const x = randomArray(rows * d, { seed: 26, lo: -8, hi: 8 });
      const t = Uint32Array.from({ length: rows }, (_, r) => (r * 7919) % d);
      const xb = upload(ctx, x), tb = upload(ctx, t), yb = scratch(ctx, rows * F);
      const make = () => [kernelDispatch(ctx, "nll", [rows, d, 0, 0], [xb, tb, yb], rows)];
      const m = await measure(ctx, make, async () => ({
        err: scaledErr(await readF32(ctx, yb, rows), nllRef(x, t, { rows, d })),
        tol: 1e-5,
      }));
      ctx.pool.release(xb, tb, yb);
      return { size: `${rows}x${d}`, bytes: x.byteLength, ...m };
    },
  },
  {
    kernel: "argmax (greedy pick)",
    file: "argmax.ts",
    async run(ctx, big) {
      const d = big ? 128256 : 32000;
      const x = randomArray(d, { seed: 27 });
      const xb = upload(ctx, x), ib = scratch(ctx, 16), tb = scratch(ctx, 16);
      const make = () => [kernelDispatch(ctx, "argmax", [d, 0, 0, 0], [xb, ib, tb], 1)];
      const m = await measure(ctx, make, async () => {
        const got = (await readU32(ctx, tb, 1))[0];
        return { err: got === argmaxRef(x) ? 0 : 1, tol: 0.5 };
      });
      ctx.pool.release(xb, ib, tb);
      return { size: `d=${d}`, bytes: x.byteLength, ...m };
    },
  },
  {
    kernel: "hessian scale (2/n·ΣXᵀX, exact)",
    file: "xtx.ts",
    async run(ctx, big) {
      const [d, n] = big ? [5632, 2048 * 128] : [768, 128 * 2048 - 1];
      const S = randomArray(d * d, { seed: 33, lo: -50, hi: 400 });
      const sb = upload(ctx, S), hb = scratch(ctx, S.byteLength), db = scratch(ctx, d * F);
      const make = () => [hessianScaleDispatch(ctx, { s: sb, h: hb, diag: db }, { d, n })];
      const m = await measure(ctx, make, async () => {
        // err: entries not bit-equal to the host's fround(S · 2/n) (must be 0).
        const got = await readF32(ctx, hb, d * d), ref = hessianScaleRef(S, { d, n }).H;
        let bad = 0;
        for (let i = 0; i < ref.length; i++) if (!Object.is(got[i], ref[i])) bad++;
        return { err: bad, tol: 0 };
      });
      ctx.pool.release(sb, hb, db);
      return { size: `${d}² n=${n}`, bytes: 2 * S.byteLength, ...m };
    },
  },
  {
    kernel: "elementwise add (residual)",
    file: "elementwise.ts",
    async run(ctx, big) {
      const n = big ? 2048 * 4096 : 64 * 1024;
      const x = randomArray(n, { seed: 28 }), y = randomArray(n, { seed: 29 });
      const xb = upload(ctx, x), yb = upload(ctx, y);
      const make = () => [kernelDispatch(ctx, "add", [n, 0, 0, 0], [xb, yb], n)];
      const m = await measure(ctx, make, async () => ({
        err: scaledErr(await readF32(ctx, yb, n), addRef(x, y)),
        tol: 1e-6,
      }));
      ctx.pool.release(xb, yb);
      return { size: `n=${n}`, bytes: 3 * n * F, ...m };
    },
  },
  {
    kernel: "elementwise SwiGLU",
    file: "elementwise.ts",
    async run(ctx, big) {
      const n = big ? 2048 * 11008 : 64 * 2048;
      const up = randomArray(n, { seed: 30 }), gate = randomArray(n, { seed: 31 });
      const ub = upload(ctx, up), gb = upload(ctx, gate);
      const make = () => [kernelDispatch(ctx, "swiglu", [n, 0, 0, 0], [ub, gb], n)];
      const m = await measure(ctx, make, async () => ({
        err: scaledErr(await readF32(ctx, gb, n), swigluRef(up, gate)),
        tol: 1e-5,
      }));
      ctx.pool.release(ub, gb);
      return { size: `n=${n}`, bytes: 3 * n * F, ...m };
    },
  },
  {
    kernel: "fake-quant 4b per-token g128",
    file: "fake_quant.ts",
    async run(ctx, big) {
      const [rows, cols] = big ? [2048, 4096] : [64, 1024];
      const spec: FakeQuantSpec = { bits: 4, granularity: "token", groupSize: 128, sym: false };
      const x = randomArray(rows * cols, { seed: 32 });
      const xb = upload(ctx, x), yb = scratch(ctx, x.byteLength);
      const make = () => [fakeQuantDispatch(ctx, { x: xb, y: yb }, { spec, rows, cols })!];
      const m = await measure(ctx, make, async () => ({
        err: scaledErr(await readF32(ctx, yb, x.length), fakeQuantRef(x, rows, cols, spec)),
        tol: 1e-5,
      }));
      ctx.pool.release(xb, yb);
      return { size: `${rows}x${cols}`, bytes: 2 * x.byteLength, ...m };
    },
  },
  {
    kernel: "f32 GEMV (decode linear)",
    file: "gemv.ts",
    async run(ctx, big) {
      const [n, k] = big ? [11008, 4096] : [1024, 1024];
      const w = randomArray(n * k, { seed: 33 }), x = randomArray(k, { seed: 34 });
      const wb = upload(ctx, w), xb = upload(ctx, x), yb = scratch(ctx, n * F);
      const make = () => [gemvDispatch(ctx, { x: xb, w: wb, y: yb }, { n, k })];
      const m = await measure(ctx, make, async () => ({
        err: scaledErr(await readF32(ctx, yb, n), gemvRef(w, x, { n, k })),
        tol: 1e-5,
      }));
      ctx.pool.release(wb, xb, yb);
      return { size: `${n}x${k}`, bytes: w.byteLength, ...m };
    },
  },
  {
    kernel: "LUT-GEMV 3b BCQ g128",
    file: "lut_gemv.ts",
    async run(ctx, big) {
      const [rows, cols, q, gs] = big ? [11008, 4096, 3, 128] : [1024, 1024, 3, 128];
      const words = cols / 32, groups = cols / gs;
      const r = randomArray(q * rows * words, { seed: 35, lo: 0, hi: 1 });
      const planes = Uint32Array.from(r, (v) => Math.floor(v * 2 ** 32) >>> 0);
      const alphas = randomArray(rows * groups * q, { seed: 36, lo: 0, hi: 0.1 });
      const w = { shape: [rows, cols] as [number, number], bits: q, groupSize: gs, planes, alphas };
      const g = uploadLut(ctx, w);
      const x = randomArray(cols, { seed: 37 });
      const xb = upload(ctx, x), yb = scratch(ctx, rows * F);
      const make = () => [lutGemvDispatch(ctx, g, { x: xb, y: yb, m: 1 })];
      const dims = { rows, cols, q, groupSize: gs, m: 1 };
      const m = await measure(ctx, make, async () => ({
        err: scaledErr(await readF32(ctx, yb, rows), lutGemvRef(x, w, dims)),
        tol: 1e-5,
      }));
      releaseLut(ctx, g);
      ctx.pool.release(xb, yb);
      return { size: `${rows}x${cols}`, bytes: planes.byteLength + alphas.byteLength, ...m };
    },
  },
  {
    kernel: "packed-KV decode attention 2b (KIVI)",
    file: "kv_attention.ts",
    async run(ctx, big) {
      // One decode query over a KIVI-2 cache: Llama-2-7B's heads at 4096 tokens, or 512.
      const [nH, nKV, hd, S] = big ? [32, 32, 128, 4096] : [8, 2, 64, 512];
      const bits = 2, R = 128, G = 32, Gv = hd;
      const pos = S - 1, qk = pos - (pos % R), qv = pos - R;
      const kw = nKV * hd;
      const kG = (qk / G) * kw, vG = qv * (kw / Gv);
      const r = randomArray(kG * kvGroupWords(G, bits) + vG * kvGroupWords(Gv, bits), {
        seed: 38,
        lo: 0,
        hi: 1,
      });
      const w = Uint32Array.from(r, (v) => Math.floor(v * 2 ** 32) >>> 0);
      const kCodes = w.subarray(0, kG * kvGroupWords(G, bits));
      const vCodes = w.subarray(kG * kvGroupWords(G, bits));
      const par = (n: number, seed: number) => {
        const p = randomArray(2 * n, { seed, lo: -1, hi: 1 });
        for (let i = 0; i < n; i += 1) p[2 * i] = Math.abs(p[2 * i]) * 0.5;
        return p;
      };
      const cache = {
        kCodes,
        kPar: par(kG, 39),
        vCodes,
        vPar: par(vG, 40),
        res: randomArray((2 * R + 1) * kw, { seed: 41 }),
      };
      const q = randomArray(nH * hd, { seed: 42 });
      const o = { nH, nKV, headDim: hd, pos, qk, qv, R, G, Gv, bits };
      const bufs = {
        q: upload(ctx, q),
        kCodes: upload(ctx, cache.kCodes),
        kPar: upload(ctx, cache.kPar),
        vCodes: upload(ctx, cache.vCodes),
        vPar: upload(ctx, cache.vPar),
        res: upload(ctx, cache.res),
        o: scratch(ctx, q.byteLength),
      };
      const make = () => [kvAttentionDispatch(ctx, bufs, o)];
      const m = await measure(ctx, make, async () => ({
        err: scaledErr(await readF32(ctx, bufs.o, q.length), kvAttentionRef(q, cache, o)),
        tol: 1e-4,
      }));
      const read = w.byteLength + cache.kPar.byteLength + cache.vPar.byteLength +
        (pos + 1 - qk + pos + 1 - qv) * kw * F;
      ctx.pool.release(...Object.values(bufs));
      return { size: `S=${S} H=${nH}/${nKV} hd=${hd}`, bytes: read + 2 * q.byteLength, ...m };
    },
  },
  {
    kernel: "KVQuant decode attention 2b-1% pre-RoPE",
    file: "kvquant_attention.ts",
    async run(ctx, big) {
      // One decode query over a KVQuant-2bit cache with ~1% sparse outliers per K and V row and
      // one attention-sink row: Llama-2-7B's heads at 4096 tokens, or 512.
      const [nH, nKV, hd, S] = big ? [32, 32, 128, 4096] : [8, 2, 64, 512];
      const bits = 2, nc = 4, kw = nKV * hd, wpr = Math.ceil(kw / 16);
      const ts = kvquantTokenWords(kw, bits);
      const r = randomArray(S * ts, { seed: 43, lo: 0, hi: 1 });
      const tok = Uint32Array.from(r, (v) => Math.floor(v * 2 ** 32) >>> 0);
      const tf = new Float32Array(tok.buffer);
      const nOut = Math.max(1, Math.round(kw / 100));
      const sp = new Uint32Array(S * 2 * nOut * 2);
      const spf = new Float32Array(sp.buffer);
      for (let s = 0; s < S; s++) {
        tf[s * ts + 2 * wpr] = 0.1 * ((s % 7) - 3);
        tf[s * ts + 2 * wpr + 1] = 0.5 + (s % 5) / 10;
        tok[s * ts + 2 * wpr + 2] = s * 2 * nOut;
        tok[s * ts + 2 * wpr + 3] = nOut | (nOut << 16);
        for (let j = 0; j < 2 * nOut; j++) {
          const e = s * 2 * nOut + j;
          sp[2 * e] = ((j % nOut) * 97 + s * 13) % kw; // distinct (97·j < kw); sorted below
          spf[2 * e + 1] = 4 * Math.sin(e);
        }
        for (const [a, b] of [[0, nOut], [nOut, 2 * nOut]]) {
          const chans = new Set<number>();
          for (let j = a; j < b; j++) chans.add(sp[2 * (s * 2 * nOut + j)]);
          const sorted = [...chans].sort((x, y) => x - y);
          if (sorted.length !== b - a) throw new Error("kvquant unit: duplicate outlier channels");
          for (let j = a; j < b; j++) sp[2 * (s * 2 * nOut + j)] = sorted[j - a];
        }
      }
      const par = randomArray(2 * kw + 2 * nc, { seed: 44, lo: -1, hi: 1 });
      const rope = new Float32Array(S * hd);
      for (let i = 0; i < rope.length; i += 2) {
        rope[i] = Math.cos(i / 97);
        rope[i + 1] = Math.sin(i / 97);
      }
      const cache = { tok, sp, par, raw: randomArray(2 * kw, { seed: 45 }), rope };
      const q = randomArray(nH * hd, { seed: 46 });
      const o = {
        nH,
        nKV,
        headDim: hd,
        pos: S - 1,
        nraw: 1,
        bits,
        perChannel: false,
        rotate: true,
      };
      const bufs = {
        q: upload(ctx, q),
        tok: upload(ctx, tok),
        sp: upload(ctx, sp),
        par: upload(ctx, par),
        raw: upload(ctx, cache.raw),
        rope: upload(ctx, rope),
        o: scratch(ctx, q.byteLength),
      };
      const make = () => [kvquantAttentionDispatch(ctx, bufs, o)];
      const m = await measure(ctx, make, async () => ({
        err: scaledErr(await readF32(ctx, bufs.o, q.length), kvquantAttentionRef(q, cache, o)),
        tol: 1e-4,
      }));
      const read = tok.byteLength + sp.byteLength + par.byteLength + cache.raw.byteLength +
        rope.byteLength;
      ctx.pool.release(...Object.values(bufs));
      return { size: `S=${S} H=${nH}/${nKV} hd=${hd}`, bytes: read + 2 * q.byteLength, ...m };
    },
  },
];

/**
 * Kernel files benchmarked by gpu_bench.ts's dedicated functions (copy, matmul, XᵀX, the dequant
 * and LUT GEMVs, GPTQ, Cholesky, RMSNorm, attention) or by {@linkcode KERNEL_UNITS}.
 */
export const COVERED = new Set([
  "copy.ts",
  "matmul.ts",
  "xtx.ts",
  "dequant_gemv.ts",
  "dequant_gemm.ts",
  "gptq_block.ts",
  "gptq_params.ts",
  "cholesky.ts",
  "rmsnorm.ts",
  "attention.ts",
  "packed_weights.ts",
  ...KERNEL_UNITS.map((u) => u.file),
]);

/** Kernel files (`kernels/*.ts`, not `_*.ts`) with no benchmark entry. */
export async function uncoveredKernels(): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(new URL("../kernels/", import.meta.url))) {
    if (e.isFile && e.name.endsWith(".ts") && !e.name.startsWith("_") && !COVERED.has(e.name)) {
      out.push(e.name);
    }
  }
  return out.sort();
}
