/**
 * Decode speed with the KIVI-packed KV cache against the f32 cache, measured in the same run.
 *
 * 1. stories260K greedy decode at context 512 (a prompt of 512 − steps tokens, then `steps`
 *    decode tokens, timed) through the host forward on the CPU backend and on the WebGPU backend:
 *    f32 cache vs KIVI-2 / KIVI-4 (groupSize 32, vGroupSize 8, R 128) and KVQuant-4/3/2bit-1%
 *    (pre-RoPE keys, k-means codebooks calibrated here on 4 TinyStories windows of 256 tokens).
 *    On WebGPU the KIVI and KVQuant caches keep their packed copies on the device and attend
 *    there (`kernels/kv_attention.ts`, `kernels/kvquant_attention.ts`); the f32 cache attends on
 *    the host. The GPU-resident f32 decoder (`generate`'s default on WebGPU) is
 *    printed as a further peer. Ratios are tokens/s of packed over f32 on the same backend.
 * 2. The attention kernels alone, one decode query per layer: the packed-KV kernel over a KIVI-2
 *    cache vs the f32 flash kernel (`kernels/attention.ts`) over the same shapes (7B-like heads:
 *    32 × 128, contexts 512 and 4096), and the bytes each reads.
 *
 * Usage: `nice -n 5 deno run -A --unstable-webgpu bench/kv_decode_bench.ts [--steps N]
 * [--kernels-only]`
 * (software adapters are accepted: the WebGPU rows then measure lavapipe on the CPU).
 * @module
 */
import { cpuBackend } from "../src/backend/cpu.ts";
import { setBackend } from "../src/backend/device.ts";
import type { Backend } from "../src/backend/backend.ts";
import { attentionDispatch } from "../src/backend/_webgpu_nn.ts";
import {
  kvAttentionDispatch,
  scratch,
  timeKernel,
  upload,
  webgpuAvailable,
  webgpuBackend,
} from "../src/backend/webgpu.ts";
import { randomArray } from "../src/backend/_webgpu_check.ts";
import { kvGroupWords } from "../kernels/kv_attention.ts";
import { createKVCache, forward, type KVCache } from "../src/models/decoder.ts";
import { loadModel } from "../src/models/load.ts";
import type { Model } from "../src/models/model.ts";
import { KiviCache } from "../src/quant/kv/kivi.ts";
import { KvQuantCache, type KvQuantizer } from "../src/quant/kv/kvquant.ts";
import { calibrateKvQuant } from "../src/quant/pipeline/kv_calibration.ts";
import { generate } from "../src/eval/generate.ts";
import { mulberry32 } from "../src/rng.ts";

const args = Deno.args;
const steps = Number(args[args.indexOf("--steps") + 1] ?? 0) || 48;
const MODEL = new URL("../../shared/data/models/stories260K-hf", import.meta.url).pathname;

/** Decode tokens/s of `steps` greedy steps after a prompt filling the context to 512. */
async function decodeRate(
  m: Model,
  backend: Backend,
  cache: KVCache,
  prompt: number[],
): Promise<{ tps: number; ids: number[] }> {
  const V = m.config.vocabSize;
  let last: Float32Array = (await forward(m, prompt, { cache, backend })).data.slice(-V);
  const ids: number[] = [];
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) {
    let best = 0;
    for (let j = 1; j < V; j++) if (last[j] > last[best]) best = j;
    ids.push(best);
    last = (await forward(m, [best], { cache, backend })).data;
  }
  return { tps: steps / ((performance.now() - t0) / 1000), ids };
}

const fmt = (x: number) => x.toFixed(x < 10 ? 2 : 1);

async function endToEnd(gpu: Backend | undefined): Promise<void> {
  const m = await loadModel(MODEL);
  const ctxLen = m.config.maxPositions;
  const r = mulberry32(7);
  const prompt = [
    1,
    ...Array.from({ length: ctxLen - steps - 1 }, () => 3 + Math.floor(r() * 500)),
  ];
  console.log(
    `## stories260K greedy decode: prompt ${prompt.length} + ${steps} steps = context ${ctxLen}`,
  );
  const quantizers: [number, KvQuantizer][] = [];
  for (const bits of [4, 3, 2]) {
    const qz = await calibrateKvQuant(m, {
      dataset: "tinystories",
      nsamples: 4,
      seqlen: 256,
      bits,
    });
    quantizers.push([bits, qz]);
  }
  const backends: [string, Backend][] = [["cpu", cpuBackend]];
  if (gpu) backends.push([gpu.description, gpu]);
  for (const [name, be] of backends) {
    const f32 = await decodeRate(m, be, createKVCache(m.config, ctxLen), prompt);
    const row = [`${name}: f32 cache ${fmt(f32.tps)} tok/s`];
    const caches: [string, KiviCache | KvQuantCache][] = [
      ...[2, 4].map((bits): [string, KiviCache] => [
        `KIVI-${bits}`,
        new KiviCache(m.config, { bits, vGroupSize: 8 }, ctxLen),
      ]),
      ...quantizers.map(([bits, quantizer]): [string, KvQuantCache] => [
        `KVQuant-${bits}bit-1%`,
        new KvQuantCache(m.config, { quantizer }, ctxLen),
      ]),
    ];
    for (const [label, cache] of caches) {
      const k = await decodeRate(m, be, cache, prompt);
      const t = cache.deviceTraffic();
      row.push(
        `${label} ${fmt(k.tps)} tok/s (×${(k.tps / f32.tps).toFixed(2)} of f32)` +
          (t
            ? `, bus ${(t.up / 1024).toFixed(0)} KiB up / ${(t.down / 1024).toFixed(0)} KiB ` +
              `down, device copy ${(t.resident / 1024).toFixed(0)} KiB`
            : ", host attention"),
      );
      cache.release();
    }
    console.log(`- ${row.join(";\n  ")}`);
    if (be !== cpuBackend) {
      setBackend(be);
      const res = await generate(m, prompt, { maxNewTokens: steps, stopAtEos: false });
      setBackend(cpuBackend);
      console.log(
        `- ${name}: GPU-resident f32 decoder ${fmt(res.tokensPerSecond)} tok/s ` +
          `(resident ${res.resident}; the packed cache runs in the host forward)`,
      );
    }
  }
}

async function kernels(): Promise<void> {
  const gpu = await webgpuBackend({ allowFallback: true });
  const ctx = gpu.ctx;
  console.log("\n## decode attention kernels, one layer (nH = nKV = 32, hd 128), KIVI-2 g32 R128");
  for (const S of [512, 4096]) {
    const nH = 32, nKV = 32, hd = 128, kw = nKV * hd, bits = 2, R = 128, G = 32, Gv = 128;
    const pos = S - 1, qk = pos - (pos % R), qv = pos - R;
    const kG = (qk / G) * kw, vG = qv * (kw / Gv);
    const words = (n: number, seed: number) =>
      Uint32Array.from(randomArray(n, { seed, lo: 0, hi: 1 }), (v) => Math.floor(v * 2 ** 32));
    const par = (n: number, seed: number) => randomArray(2 * n, { seed, lo: 0.01, hi: 0.5 });
    const q = randomArray(nH * hd, { seed: 1 });
    const packed = {
      q: upload(ctx, q),
      kCodes: upload(ctx, words(kG * kvGroupWords(G, bits), 2)),
      kPar: upload(ctx, par(kG, 3)),
      vCodes: upload(ctx, words(vG * kvGroupWords(Gv, bits), 4)),
      vPar: upload(ctx, par(vG, 5)),
      res: upload(ctx, randomArray((2 * R + 1) * kw, { seed: 6 })),
      o: scratch(ctx, q.byteLength),
    };
    const o = { nH, nKV, headDim: hd, pos, qk, qv, R, G, Gv, bits };
    const tp = await timeKernel(ctx, () => [kvAttentionDispatch(ctx, packed, o)], { reps: 5 });
    const dense = {
      q: packed.q,
      k: upload(ctx, randomArray(S * kw, { seed: 7 })),
      v: upload(ctx, randomArray(S * kw, { seed: 8 })),
      o: packed.o,
    };
    const ao = { T: 1, S, nH, nKV, headDim: hd, posOffset: pos };
    const tf = await timeKernel(ctx, () => [attentionDispatch(ctx, dense, ao)], { reps: 5 });
    const pBytes = (kG * kvGroupWords(G, bits) + vG * kvGroupWords(Gv, bits)) * 4 +
      (kG + vG) * 8 + (2 * pos + 2 - qk - qv) * kw * 4;
    const fBytes = 2 * S * kw * 4;
    console.log(
      `- S=${S}: packed ${(tp.seconds * 1e3).toFixed(3)} ms (reads ${
        (pBytes / 2 ** 20).toFixed(2)
      } MiB), f32 ${(tf.seconds * 1e3).toFixed(3)} ms (reads ${
        (fBytes / 2 ** 20).toFixed(2)
      } MiB);` +
        ` speed ×${(tf.seconds / tp.seconds).toFixed(2)} of f32, bytes ×${
          (pBytes / fBytes).toFixed(3)
        } (${tp.method} timing)`,
    );
    ctx.pool.release(...Object.values(packed), dense.k, dense.v);
  }
}

const hasGpu = await webgpuAvailable({ allowFallback: true });
const gpu = hasGpu ? await webgpuBackend({ allowFallback: true }) : undefined;
if (gpu) console.log(`adapter: ${gpu.description}`);
else console.log("no WebGPU adapter: CPU rows only");
if (!args.includes("--kernels-only")) await endToEnd(gpu);
if (gpu) await kernels();
