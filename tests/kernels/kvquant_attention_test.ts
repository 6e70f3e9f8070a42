/**
 * The KVQuant decode attention kernel (`kernels/kvquant_attention.ts`) against its CPU
 * reference, driven through the device cache of `src/backend/_webgpu_kvquant.ts` (random tokens:
 * code words, V offsets/ranges, sorted sparse outliers, first-few raw rows, codebooks, a RoPE
 * table — uploaded token by token as a cache appends them), across head shapes, bit widths,
 * positions past one 256-key block, per-layer and per-channel key codebooks, with and without
 * rotation; and the reference itself against a plain oracle written here (codes from a bit
 * string, outliers from a map, RoPE as a complex rotation, softmax).
 */
import { assertEquals, assertLess, assertRejects, assertThrows } from "@std/assert";
import { getWebGPU, gpuKvQuant, webgpuAvailable } from "../../src/backend/webgpu.ts";
import { randomArray, rng, scaledErr } from "../../src/backend/_webgpu_check.ts";
import type { KvQuantToken } from "../../src/backend/backend.ts";
import {
  type KvQuantAttentionCache,
  type KvQuantAttentionOptions,
  kvquantAttentionRef,
  kvquantRowWords,
  kvquantTokenWords,
} from "../../kernels/kvquant_attention.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("kvquant_attention_test: SKIPPED — no WebGPU adapter");
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };

interface Case {
  nH: number;
  nKV: number;
  hd: number;
  bits: number;
  pos: number;
  ff: number;
  perChannel: boolean;
  rotate: boolean;
}

interface Random {
  toks: (KvQuantToken | { k: Float32Array; v: Float32Array })[];
  params: { kOff: Float32Array; kRng: Float32Array; kLut: Float32Array; vLut: Float32Array };
  rope: Float32Array;
}

/** Random tokens 0..pos for `c` (outliers: up to 3 K and 3 V channels, sorted, distinct). */
function randomTokens(c: Case, seed: number): Random {
  const r = rng(seed);
  const kw = c.nKV * c.hd, nc = 2 ** c.bits, wpr = kvquantRowWords(kw, c.bits);
  const pick = (n: number) => {
    const s = new Set<number>();
    while (s.size < n) s.add(Math.floor(r() * kw));
    return [...s].sort((a, b) => a - b);
  };
  const toks: Random["toks"] = [];
  for (let s = 0; s <= c.pos; s++) {
    if (s < c.ff) {
      toks.push({
        k: randomArray(kw, { seed: seed + 7 * s, lo: -2, hi: 2 }),
        v: randomArray(kw, { seed: seed + 7 * s + 1, lo: -2, hi: 2 }),
      });
      continue;
    }
    const codes = Uint32Array.from({ length: 2 * wpr }, () => Math.floor(r() * 2 ** 32) >>> 0);
    const ki = pick(Math.floor(r() * 4)), vi = pick(Math.floor(r() * 4));
    const t: KvQuantToken = { codes, vp: Float32Array.of(r() - 0.5, 0.1 + r()) };
    if (ki.length + vi.length > 0 || r() < 0.5) {
      t.nnz = Uint16Array.of(ki.length, vi.length);
      t.idx = Uint16Array.from([...ki, ...vi]);
      t.val = Float32Array.from(t.idx, () => 6 * (r() - 0.5));
    }
    toks.push(t);
  }
  const lut = (n: number) => Float32Array.from({ length: n }, () => 2 * r() - 1);
  const half = c.hd / 2;
  const rope = new Float32Array((c.pos + 1) * half * 2);
  for (let s = 0; s <= c.pos; s++) {
    for (let i = 0; i < half; i++) {
      const a = s / 10000 ** (2 * i / c.hd);
      rope[(s * half + i) * 2] = Math.cos(a);
      rope[(s * half + i) * 2 + 1] = Math.sin(a);
    }
  }
  return {
    toks,
    params: {
      kOff: randomArray(kw, { seed: seed + 1, lo: -1, hi: 1 }),
      kRng: randomArray(kw, { seed: seed + 2, lo: 0.1, hi: 2 }),
      kLut: lut(c.perChannel ? kw * nc : nc),
      vLut: lut(nc),
    },
    rope,
  };
}

/** The kernel layout of `R` (what the device cache holds), built here from the tokens. */
function layoutOf(c: Case, R: Random): KvQuantAttentionCache {
  const kw = c.nKV * c.hd, nc = 2 ** c.bits, wpr = kvquantRowWords(kw, c.bits);
  const ts = kvquantTokenWords(kw, c.bits);
  const tok = new Uint32Array((c.pos + 1) * ts);
  const tf = new Float32Array(tok.buffer);
  const sp: number[] = [];
  const raw = new Float32Array(Math.max(1, c.ff) * 2 * kw);
  R.toks.forEach((t, s) => {
    if ("k" in t) {
      raw.set(t.k, s * 2 * kw);
      raw.set(t.v, s * 2 * kw + kw);
      return;
    }
    tok.set(t.codes, s * ts);
    tf[s * ts + 2 * wpr] = t.vp[0];
    tf[s * ts + 2 * wpr + 1] = t.vp[1];
    tok[s * ts + 2 * wpr + 2] = sp.length / 2;
    tok[s * ts + 2 * wpr + 3] = t.nnz ? t.nnz[0] + 65536 * t.nnz[1] : 0;
    t.idx?.forEach((ch, j) => {
      sp.push(ch, new Uint32Array(Float32Array.of(t.val![j]).buffer)[0]);
    });
  });
  const par = new Float32Array(2 * kw + nc + R.params.kLut.length);
  par.set(R.params.kOff);
  par.set(R.params.kRng, kw);
  par.set(R.params.vLut, 2 * kw);
  par.set(R.params.kLut, 2 * kw + nc);
  return { tok, sp: Uint32Array.from(sp), par, raw, rope: R.rope };
}

const optsOf = (c: Case): KvQuantAttentionOptions => ({
  nH: c.nH,
  nKV: c.nKV,
  headDim: c.hd,
  pos: c.pos,
  nraw: Math.min(c.ff, c.pos + 1),
  bits: c.bits,
  perChannel: c.perChannel,
  rotate: c.rotate,
});

Deno.test({
  name: "kvquantAttentionRef equals a plain decode-rotate-softmax oracle",
  fn: () => {
    for (
      const c of [
        { nH: 4, nKV: 2, hd: 8, bits: 3, pos: 13, ff: 2, perChannel: false, rotate: true },
        { nH: 2, nKV: 2, hd: 6, bits: 5, pos: 9, ff: 0, perChannel: true, rotate: false },
      ]
    ) {
      const R = randomTokens(c, 11);
      const q = randomArray(c.nH * c.hd, { seed: 5, lo: -2, hi: 2 });
      const got = kvquantAttentionRef(q, layoutOf(c, R), optsOf(c));
      const kw = c.nKV * c.hd, nc = 2 ** c.bits, per = Math.floor(32 / c.bits);
      const wpr = Math.ceil(kw / per);
      // Codes from each word's bit string, least significant first.
      const codeOf = (words: Uint32Array, ch: number) => {
        const bitsStr = words[Math.floor(ch / per)].toString(2).padStart(32, "0");
        const lo = (ch % per) * c.bits;
        return parseInt(bitsStr.slice(32 - lo - c.bits, 32 - lo), 2);
      };
      const K: number[][] = [], V: number[][] = [];
      R.toks.forEach((t, s) => {
        const kr: number[] = [], vr: number[] = [];
        if ("k" in t) {
          kr.push(...t.k);
          vr.push(...t.v);
        } else {
          const kOut = new Map<number, number>(), vOut = new Map<number, number>();
          t.idx?.forEach((ch, j) => (j < t.nnz![0] ? kOut : vOut).set(ch, t.val![j]));
          for (let ch = 0; ch < kw; ch++) {
            const kc = codeOf(t.codes.subarray(0, wpr), ch), vc = codeOf(t.codes.subarray(wpr), ch);
            const lut = R.params.kLut[(c.perChannel ? ch * nc : 0) + kc];
            kr.push(
              kOut.get(ch) ??
                Math.fround(Math.fround(lut * R.params.kRng[ch]) + R.params.kOff[ch]),
            );
            vr.push(
              vOut.get(ch) ?? Math.fround(Math.fround(R.params.vLut[vc] * t.vp[1]) + t.vp[0]),
            );
          }
        }
        if (c.rotate) {
          // (x1 + i·x2) · (cos + i·sin), pairs (j, j + hd/2) of each head
          for (let g = 0; g < c.nKV; g++) {
            for (let j = 0; j < c.hd / 2; j++) {
              const a = g * c.hd + j, b = a + c.hd / 2;
              const cs = R.rope[(s * c.hd / 2 + j) * 2], sn = R.rope[(s * c.hd / 2 + j) * 2 + 1];
              const [x1, x2] = [kr[a], kr[b]];
              kr[a] = Math.fround(x1 * cs - x2 * sn);
              kr[b] = Math.fround(x1 * sn + x2 * cs);
            }
          }
        }
        K.push(kr);
        V.push(vr);
      });
      for (let h = 0; h < c.nH; h++) {
        const k0 = Math.floor(h / (c.nH / c.nKV)) * c.hd;
        const sc = K.map((row) =>
          row.slice(k0, k0 + c.hd).reduce((a, x, i) => a + x * q[h * c.hd + i], 0) /
          Math.sqrt(c.hd)
        );
        const m = Math.max(...sc);
        const e = sc.map((x) => Math.exp(x - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let i = 0; i < c.hd; i++) {
          const want = e.reduce((a, p, s) => a + p * V[s][k0 + i], 0) / z;
          assertLess(Math.abs(got[h * c.hd + i] - want), 1e-6, `${JSON.stringify(c)} h${h} i${i}`);
        }
      }
    }
    const c = { nH: 2, nKV: 2, hd: 8, bits: 3, pos: 3, ff: 1, perChannel: false, rotate: false };
    const L = layoutOf(c, randomTokens(c, 1));
    const q = new Float32Array(16);
    assertThrows(() => kvquantAttentionRef(q, L, { ...optsOf(c), nraw: 5 }), Error, "nraw");
    assertThrows(() => kvquantAttentionRef(q, L, { ...optsOf(c), bits: 9 }), Error, "bits");
    assertThrows(
      () => kvquantAttentionRef(q, L, { ...optsOf(c), headDim: 7, rotate: true }),
      Error,
      "even",
    );
  },
});

Deno.test({
  name: "KVQuant decode attention on the device matches the CPU reference (tol 1e-4)",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const cases: Case[] = [];
    for (const bits of [2, 3, 4, 5]) {
      for (const [hd, nH, nKV] of [[8, 8, 4], [8, 8, 8], [64, 8, 2], [128, 4, 4]]) {
        for (const pos of [0, 3, 255, 300]) {
          if (hd >= 64 && bits !== 3 && pos !== 300) continue; // wide heads: fewer cases
          const i = cases.length;
          cases.push({
            nH,
            nKV,
            hd,
            bits,
            pos,
            ff: [1, 0, 4][i % 3],
            perChannel: i % 4 === 1,
            rotate: i % 2 === 0,
          });
        }
      }
    }
    for (const [i, c] of cases.entries()) {
      const R = randomTokens(c, 100 + i);
      const dev = gpuKvQuant(ctx, {
        layers: 2,
        nH: c.nH,
        nKV: c.nKV,
        hd: c.hd,
        bits: c.bits,
        firstFew: c.ff,
        perChannel: c.perChannel,
        rope: c.rotate ? R.rope : undefined,
        params: [R.params, R.params],
        // a small pool: sequences with more outliers make it grow (copied on the device)
        outliersPerToken: 0.05,
        capacity: c.pos + 1,
      })!;
      R.toks.forEach((t, s) => {
        if ("k" in t) dev.writeRaw(1, s, t.k, t.v);
        else dev.appendToken(1, s, t);
      });
      const q = randomArray(c.nH * c.hd, { seed: 7 + i, lo: -3, hi: 3 });
      const scale = 1 / Math.sqrt(c.hd);
      const got = await dev.attend(1, q, { pos: c.pos, scale });
      const want = kvquantAttentionRef(q, layoutOf(c, R), optsOf(c));
      const err = scaledErr(got, want);
      assertLess(err, 1e-4, `${JSON.stringify(c)}: ${err}`);
      // and an earlier query position reads only its prefix
      if (c.pos > 2) {
        const p2 = c.pos - 2;
        const got2 = await dev.attend(1, q, { pos: p2, scale });
        const want2 = kvquantAttentionRef(
          q,
          layoutOf({ ...c, pos: p2 }, {
            ...R,
            toks: R.toks.slice(0, p2 + 1),
          }),
          optsOf({ ...c, pos: p2 }),
        );
        assertLess(scaledErr(got2, want2), 1e-4, `${JSON.stringify(c)} at ${p2}`);
      }
      const t = dev.traffic();
      assertEquals(t.down, (c.pos > 2 ? 2 : 1) * c.nH * c.hd * 4);
      dev.release();
    }
    console.log(`${cases.length} cases`);
  },
});

Deno.test({
  name: "the KVQuant device cache refuses what the kernel cannot serve and out-of-order writes",
  ...opts,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    const c = { nH: 2, nKV: 1, hd: 8, bits: 2, pos: 3, ff: 1, perChannel: false, rotate: false };
    const R = randomTokens(c, 3);
    const l = {
      layers: 1,
      nH: 2,
      nKV: 1,
      hd: 8,
      bits: 2,
      firstFew: 1,
      perChannel: false,
      params: [R.params],
      outliersPerToken: 1,
      capacity: 4,
    };
    assertEquals(gpuKvQuant(ctx, { ...l, bits: 16 }), undefined);
    assertEquals(gpuKvQuant(ctx, { ...l, hd: 512 }), undefined);
    assertEquals(gpuKvQuant(ctx, { ...l, hd: 7, rope: new Float32Array(12) }), undefined);
    assertEquals(gpuKvQuant(ctx, l, { maxBindingBytes: 16 }), undefined);
    const dev = gpuKvQuant(ctx, l)!;
    const t = R.toks[1] as KvQuantToken;
    assertThrows(() => dev.appendToken(0, 1, t), RangeError, "out of order");
    assertThrows(() => dev.writeRaw(0, 1, new Float32Array(8), new Float32Array(8)), RangeError);
    assertThrows(() => dev.appendToken(1, 0, t), RangeError, "layer");
    await assertRejects(
      () => dev.attend(0, new Float32Array(16), { pos: 0, scale: 1 }),
      RangeError,
      "written",
    );
    dev.release();
  },
});
