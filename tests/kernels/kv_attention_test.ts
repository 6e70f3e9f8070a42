/**
 * The packed-KV decode attention kernel (`kernels/kv_attention.ts`) against its CPU reference,
 * driven through the device cache of `src/backend/_webgpu_kv.ts` (random code words, scales and
 * minima, written group by group as a cache appends them), and the reference itself against a
 * plain oracle written here: per-element bit extraction by division, dense K/V, softmax.
 */
import { assertEquals, assertLess, assertThrows } from "@std/assert";
import { getWebGPU, gpuPackedKv, webgpuAvailable } from "../../src/backend/webgpu.ts";
import { randomArray, rng, scaledErr } from "../../src/backend/_webgpu_check.ts";
import {
  type KvAttentionCache,
  type KvAttentionOptions,
  kvAttentionRef,
  kvGroupWords,
} from "../../kernels/kv_attention.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("kv_attention_test: SKIPPED — no WebGPU adapter");
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

/** Random words with every bit random (codes take the whole 0..2^bits − 1 range). */
function words(n: number, seed: number): Uint32Array {
  const r = rng(seed);
  return Uint32Array.from({ length: n }, () => Math.floor(r() * 2 ** 32) >>> 0);
}

interface Case {
  nH: number;
  nKV: number;
  hd: number;
  bits: number;
  R: number;
  G: number;
  Gv: number;
  /** Query position. */
  pos: number;
}

/** The state a KIVI cache has for a decode query at `pos` (quantized prefix lengths). */
function boundary(c: Case): { qk: number; qv: number } {
  return { qk: c.pos - (c.pos % c.R), qv: Math.max(0, c.pos - c.R) };
}

/** A random packed cache for `c` at capacity `cap`, in the kernel layout. */
function randomCache(c: Case, cap: number, seed: number): KvAttentionCache {
  const kw = c.nKV * c.hd;
  const blocks = Math.floor(cap / c.R);
  const kG = blocks * kw * (c.R / c.G), vG = cap * (kw / c.Gv);
  const par = (n: number, s: number) => {
    const p = randomArray(2 * n, { seed: s, lo: -1, hi: 1 });
    for (let i = 0; i < n; i++) p[2 * i] = Math.abs(p[2 * i]) / (2 ** c.bits - 1) * 2; // scale > 0
    return p;
  };
  return {
    kCodes: words(kG * kvGroupWords(c.G, c.bits), seed),
    kPar: par(kG, seed + 1),
    vCodes: words(vG * kvGroupWords(c.Gv, c.bits), seed + 2),
    vPar: par(vG, seed + 3),
    res: randomArray((2 * c.R + 1) * kw, { seed: seed + 4, lo: -2, hi: 2 }),
  };
}

Deno.test({
  name: "kvAttentionRef equals a plain dequantize-then-softmax oracle",
  fn: () => {
    const c: Case = { nH: 4, nKV: 2, hd: 8, bits: 4, R: 8, G: 4, Gv: 8, pos: 21 };
    const { qk, qv } = boundary(c);
    const cache = randomCache(c, 24, 3);
    const q = randomArray(c.nH * c.hd, { seed: 9 });
    const o: KvAttentionOptions = { ...c, headDim: c.hd, qk, qv };
    const got = kvAttentionRef(q, cache, o);
    // Oracle: codes by (word / 2^shift) mod 2^bits, no block arithmetic shared with the kernel.
    const kw = c.nKV * c.hd, S = c.pos + 1, per = 32 / c.bits;
    const code = (w: Uint32Array, i: number) =>
      Math.floor(w[Math.floor(i / per)] / 2 ** ((i % per) * c.bits)) % 2 ** c.bits;
    const K: number[][] = [], V: number[][] = [];
    for (let s = 0; s < S; s++) {
      K.push([]);
      V.push([]);
      for (let ch = 0; ch < kw; ch++) {
        if (s < qk) {
          // block of R tokens: [channel][group][code]; group = G tokens of one channel
          const b = Math.floor(s / c.R), g = Math.floor((s % c.R) / c.G);
          const gid = b * kw * (c.R / c.G) + ch * (c.R / c.G) + g;
          const cd = code(cache.kCodes, gid * Math.ceil(c.G / per) * per + (s % c.G));
          K[s].push(Math.fround(Math.fround(cd * cache.kPar[2 * gid]) + cache.kPar[2 * gid + 1]));
        } else K[s].push(cache.res[(s % c.R) * kw + ch]);
        if (s < qv) {
          const gid = s * (kw / c.Gv) + Math.floor(ch / c.Gv);
          const cd = code(cache.vCodes, gid * Math.ceil(c.Gv / per) * per + (ch % c.Gv));
          V[s].push(Math.fround(Math.fround(cd * cache.vPar[2 * gid]) + cache.vPar[2 * gid + 1]));
        } else V[s].push(cache.res[(c.R + (s % (c.R + 1))) * kw + ch]);
      }
    }
    for (let h = 0; h < c.nH; h++) {
      const kh = Math.floor(h / 2) * c.hd;
      const sc = K.map((row) =>
        row.slice(kh, kh + c.hd).reduce((a, x, i) => a + x * q[h * c.hd + i], 0) / Math.sqrt(c.hd)
      );
      const m = Math.max(...sc);
      const e = sc.map((x) => Math.exp(x - m));
      const z = e.reduce((a, b) => a + b, 0);
      for (let i = 0; i < c.hd; i++) {
        const want = e.reduce((a, p, s) => a + p * V[s][kh + i], 0) / z;
        assertLess(Math.abs(got[h * c.hd + i] - want), 1e-6);
      }
    }
    // inconsistent boundaries are refused
    assertThrows(() => kvAttentionRef(q, cache, { ...o, qk: qk + 8 }), Error, "qk");
    assertThrows(() => kvAttentionRef(q, cache, { ...o, bits: 9 }), Error, "bits");
  },
});

Deno.test({
  name: "packed-KV decode attention on the device matches the CPU reference (tol 1e-4)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const cases: Case[] = [];
    for (const bits of [2, 4, 8]) {
      for (const [hd, nH, nKV] of [[8, 8, 8], [8, 8, 2], [64, 4, 4], [64, 8, 2]]) {
        // R 32 / G 32 (one group per block) and R 64 / G 16: positions with no packed key, a
        // partial K window, exactly R full values, full blocks with an empty-ish tail, > 256 keys.
        for (const [R, G] of [[32, 32], [64, 16]]) {
          for (const pos of [0, 5, R - 1, R, 2 * R + 7, 300]) {
            if (bits === 8 && pos !== 300 && pos !== 5) continue; // 8 bits: fewer cases
            cases.push({ nH, nKV, hd, bits, R, G, Gv: hd === 8 ? 8 : 32, pos });
          }
        }
      }
    }
    const cap = 320;
    for (const [i, c] of cases.entries()) {
      const cache = randomCache(c, cap, 100 + i);
      const kw = c.nKV * c.hd;
      const dev = gpuPackedKv(ctx, {
        layers: 2,
        nH: c.nH,
        nKV: c.nKV,
        hd: c.hd,
        bits: c.bits,
        groupSize: c.G,
        vGroupSize: c.Gv,
        residualLength: c.R,
        capacity: cap,
      })!;
      const { qk, qv } = boundary(c);
      // Upload as a cache does: K blocks and V rows group by group, the full rows per position.
      const kBlockWords = kw * (c.R / c.G) * kvGroupWords(c.G, c.bits);
      const kBlockPar = kw * (c.R / c.G);
      const unpair = (p: Float32Array) => ({
        scale: p.filter((_, j) => j % 2 === 0),
        mn: p.filter((_, j) => j % 2 === 1),
      });
      for (let b = 0; b * c.R < qk; b++) {
        dev.appendKeyBlock(1, b, {
          codes: cache.kCodes.subarray(b * kBlockWords, (b + 1) * kBlockWords),
          ...unpair(cache.kPar.subarray(2 * b * kBlockPar, 2 * (b + 1) * kBlockPar)),
        });
      }
      const vRowWords = (kw / c.Gv) * kvGroupWords(c.Gv, c.bits), vRowPar = kw / c.Gv;
      for (let s = 0; s < qv; s++) {
        dev.appendValueRow(1, s, {
          codes: cache.vCodes.subarray(s * vRowWords, (s + 1) * vRowWords),
          ...unpair(cache.vPar.subarray(2 * s * vRowPar, 2 * (s + 1) * vRowPar)),
        });
      }
      for (let s = Math.max(0, c.pos - c.R); s <= c.pos; s++) {
        dev.writeRows(
          1,
          s,
          cache.res.subarray((s % c.R) * kw, (s % c.R + 1) * kw),
          cache.res.subarray((c.R + (s % (c.R + 1))) * kw, (c.R + (s % (c.R + 1)) + 1) * kw),
        );
      }
      const q = randomArray(c.nH * c.hd, { seed: 7 + i, lo: -3, hi: 3 });
      const scale = 1 / Math.sqrt(c.hd);
      const got = await dev.attend(1, q, { pos: c.pos, qk, qv, scale });
      const want = kvAttentionRef(q, cache, { ...c, headDim: c.hd, qk, qv });
      const err = scaledErr(got, want);
      assertLess(err, 1e-4, `${JSON.stringify(c)}: ${err}`);
      const t = dev.traffic();
      assertEquals(t.down, c.nH * c.hd * 4);
      dev.release();
    }
  },
});

Deno.test({
  name: "the device cache refuses what the kernel cannot serve",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const l = {
      layers: 1,
      nH: 2,
      nKV: 1,
      hd: 8,
      bits: 2,
      groupSize: 4,
      vGroupSize: 8,
      residualLength: 8,
      capacity: 16,
    };
    assertEquals(gpuPackedKv(ctx, { ...l, bits: 16 }), undefined);
    assertEquals(gpuPackedKv(ctx, { ...l, hd: 512 }), undefined);
    assertEquals(gpuPackedKv(ctx, l, { maxBindingBytes: 64 }), undefined);
    const dev = gpuPackedKv(ctx, l)!;
    assertThrows(() => dev.writeRows(0, 16, new Float32Array(8), new Float32Array(8)), RangeError);
    assertThrows(() => dev.writeRows(1, 0, new Float32Array(8), new Float32Array(8)), RangeError);
    dev.release();
  },
});
