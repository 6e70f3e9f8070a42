/**
 * KVQuant's packed cache against independent oracles: the full-precision forward (bits 16), a
 * plain fake-quant transcription of the reference's `quant_fn_nuq_recon` / `get_outliers` /
 * `get_outliers_dynamic` written here (bit-exact), the uniform grid's weighted error on
 * stories260K's real calibration keys, percentile counts, the quantizer file's round trip, and the
 * byte accounting against a hand-derived closed form.
 */
import { assert, assertEquals, assertNotEquals, assertRejects, assertThrows } from "@std/assert";
import { FormatError, OptionError } from "../../src/errors.ts";
import { getBackend } from "../../src/backend/device.ts";
import { createKVCache, forward, type KVCache } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import type { ModelConfig } from "../../src/models/config.ts";
import type { Model } from "../../src/models/model.ts";
import {
  collectKv,
  fitKvQuantLayer,
  KvQuantCache,
  type KvQuantizer,
  loadKvQuantizer,
  saveKvQuantizer,
  vOutliersPerRow,
} from "../../src/quant/kv/kvquant.ts";
import { calibrateKvQuant } from "../../src/quant/pipeline/kv_calibration.ts";
import { calibrationSet } from "../../src/quant/pipeline/calibration.ts";
import { cacheBytes, createCache } from "../../src/quant/kv/cache.ts";
import { mulberry32 } from "../../src/rng.ts";
import { perplexity } from "../../src/eval/perplexity.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K-hf`;
let model: Model | undefined;
const getModel = async () => model ??= await loadModel(MODEL);
const f = Math.fround;

const quantizers = new Map<string, Promise<KvQuantizer>>();
/** A quantizer calibrated on 4 TinyStories windows of 256 tokens (memoized per options). */
function quantizerFor(o: Record<string, unknown> = {}): Promise<KvQuantizer> {
  const key = JSON.stringify(o);
  if (!quantizers.has(key)) {
    quantizers.set(
      key,
      getModel().then((m) =>
        calibrateKvQuant(m, { dataset: "tinystories", nsamples: 4, seqlen: 256, ...o })
      ),
    );
  }
  return quantizers.get(key)!;
}

function ids(n: number, seed = 1): number[] {
  const r = mulberry32(seed);
  return [1, ...Array.from({ length: n - 1 }, () => 3 + Math.floor(r() * 500))];
}

/** Rows the cache was handed, per layer: pre-RoPE K, post-RoPE K, V. */
interface Seen {
  kPre: number[][];
  kPost: number[][];
  v: number[][];
}

/** Feeds `sizes` chunks of `x` through `cache`; returns all logits and the rows attend saw. */
async function run(m: Model, x: number[], sizes: number[], cache: KVCache) {
  const cfg = m.config;
  const kw = cfg.numKvHeads * cfg.headDim;
  const seen: Seen[] = Array.from(
    { length: cfg.numLayers },
    () => ({ kPre: [], kPost: [], v: [] }),
  );
  if (cache.attend) {
    const orig = cache.attend;
    cache.attend = (l, inp) => {
      for (let t = 0; t < inp.dims.T; t++) {
        seen[l].kPre.push(Array.from(inp.kPreRope.subarray(t * kw, (t + 1) * kw)));
        seen[l].kPost.push(Array.from(inp.k.subarray(t * kw, (t + 1) * kw)));
        seen[l].v.push(Array.from(inp.v.subarray(t * kw, (t + 1) * kw)));
      }
      return orig(l, inp);
    };
  }
  const V = cfg.vocabSize;
  const out = new Float32Array(x.length * V);
  let t = 0;
  for (const n of sizes) {
    out.set((await forward(m, x.slice(t, t + n), { cache })).data, t * V);
    t += n;
  }
  assertEquals(t, x.length);
  return { logits: out, seen };
}

Deno.test("KVQuant: bits 16 gives the full-precision logits exactly, pre- and post-RoPE", async () => {
  const m = await getModel();
  const x = ids(70);
  const sizes = [30, 1, 1, 9, 1, 28];
  const fp = (await run(m, x, sizes, createKVCache(m.config, 70))).logits;
  for (
    const o of [
      { bits: 16 },
      { bits: 16, preRope: false },
      { bits: 16, prefillWithQuant: true, firstFewFp16: 0 },
    ]
  ) {
    const q = (await run(m, x, sizes, new KvQuantCache(m.config, o, 70))).logits;
    assertEquals(q, fp, JSON.stringify(o));
  }
  // 2 bits does change them (the check above can fail).
  const q2 = await quantizerFor({ bits: 2 });
  const l2 = (await run(m, x, sizes, new KvQuantCache(m.config, { quantizer: q2 }, 70))).logits;
  assert(l2.some((v, i) => v !== fp[i]));
});

// ---- the plain fake-quant oracle (a transcription of the reference, f32 steps) ----

function argminAbs(u: number, lut: ArrayLike<number>, o: number, n: number): number {
  const d = Array.from({ length: n }, (_, i) => Math.abs(u - lut[o + i]));
  return d.indexOf(Math.min(...d));
}

/** torch.quantile (linear) of `xs` at q. */
function torchQuantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const p = q * (s.length - 1);
  const i = Math.floor(p);
  const j = Math.min(i + 1, s.length - 1);
  return s[i] + (p - i) * (s[j] - s[i]);
}

/** `get_outliers` + `quant_fn_nuq_recon` on one key row (static per-channel thresholds). */
function oracleK(row: number[], qz: KvQuantizer, l: number): { y: number[]; out: boolean[] } {
  const L = qz.layers[l];
  const nc = 2 ** qz.bits;
  const y: number[] = [];
  const out: boolean[] = [];
  row.forEach((x, c) => {
    const isOut = qz.includeSparse && (x < L.kLower[c] || x > L.kUpper[c]);
    out.push(isOut);
    if (isOut) return y.push(x);
    const off = f(f(L.kUpper[c] + L.kLower[c]) / 2);
    const rng = f(f(L.kUpper[c] - L.kLower[c]) / 2);
    const u = rng === 0 ? 0 : f(f(x - off) / rng);
    const o = qz.kCodebook === "channel" ? c * nc : 0;
    const e = L.kLut[o + argminAbs(u, L.kLut, o, nc)];
    y.push(f(f(e * rng) + off));
  });
  return { y, out };
}

/** `get_outliers_dynamic` + median re-centering + `quant_fn_nuq_recon` on one value row. */
function oracleV(row: number[], qz: KvQuantizer, l: number): { y: number[]; out: boolean[] } {
  const L = qz.layers[l];
  const nc = 2 ** qz.bits;
  let out = row.map(() => false);
  let trimmed = row;
  if (qz.includeSparse) {
    const t = 1 - (1 - qz.sparsityThreshold) / 2;
    const up = f(torchQuantile(row, t));
    const lo = f(torchQuantile(row, 1 - t));
    out = row.map((x) => x <= lo || x >= up);
    const med = [...row].sort((a, b) => a - b)[Math.floor((row.length - 1) / 2)];
    trimmed = row.map((x, i) => out[i] ? med : x);
  }
  const mx = Math.max(...trimmed), mn = Math.min(...trimmed);
  const off = f(f(mx + mn) / 2);
  const rng = f(f(mx - mn) / 2);
  const y = row.map((x, i) => {
    if (out[i]) return x;
    const u = rng === 0 ? 0 : f(f(x - off) / rng);
    return f(f(L.vLut[argminAbs(u, L.vLut, 0, nc)] * rng) + off);
  });
  return { y, out };
}

Deno.test("KVQuant: the packed cache dequantizes bit-exactly to a plain fake-quant", async () => {
  const m = await getModel();
  const kw = m.config.numKvHeads * m.config.headDim;
  const x = ids(48, 5);
  for (
    const o of [
      { bits: 2 },
      { bits: 3 },
      { bits: 4 },
      { bits: 3, includeSparse: false },
      { bits: 2, kCodebook: "channel" },
      { bits: 2, preRope: false, sparsityThreshold: 0.9 },
      { bits: 4, nuq: false },
    ]
  ) {
    const qz = await quantizerFor(o);
    const cache = new KvQuantCache(m.config, { quantizer: qz, firstFewFp16: 2 }, 48);
    const { seen } = await run(m, x, [20, 1, 1, 26], cache);
    let outK = 0, outV = 0;
    for (let l = 0; l < m.config.numLayers; l++) {
      const snap = cache.snapshot(l);
      const ks = qz.preRope ? seen[l].kPre : seen[l].kPost;
      const wantK: number[] = [], wantV: number[] = [];
      const maskK: number[] = [], maskV: number[] = [];
      for (let p = 0; p < x.length; p++) {
        if (p < 2) {
          wantK.push(...ks[p]);
          wantV.push(...seen[l].v[p]);
          maskK.push(...ks[p].map(() => 0));
          maskV.push(...ks[p].map(() => 0));
          continue;
        }
        const a = oracleK(ks[p], qz, l), b = oracleV(seen[l].v[p], qz, l);
        wantK.push(...a.y);
        wantV.push(...b.y);
        maskK.push(...a.out.map(Number));
        maskV.push(...b.out.map(Number));
      }
      assertEquals(snap.k, Float32Array.from(wantK), `${JSON.stringify(o)} layer ${l} K`);
      assertEquals(snap.v, Float32Array.from(wantV), `${JSON.stringify(o)} layer ${l} V`);
      assertEquals(Array.from(snap.kOutlier), maskK);
      assertEquals(Array.from(snap.vOutlier), maskV);
      outK += maskK.reduce((a, b) => a + b, 0);
      outV += maskV.reduce((a, b) => a + b, 0);
      assertEquals(snap.k.length, x.length * kw);
    }
    if (qz.includeSparse) assert(outK > 0 && outV > 0, "outliers exercised");
    else assertEquals(outK + outV, 0);
  }
});

Deno.test("KVQuant: pre-RoPE and post-RoPE keys are both available and differ", async () => {
  const m = await getModel();
  const x = ids(40, 7);
  const pre = await quantizerFor({ bits: 2 });
  const post = await quantizerFor({ bits: 2, preRope: false });
  assert(pre.preRope && !post.preRope);
  assertNotEquals(Array.from(pre.layers[1].kUpper), Array.from(post.layers[1].kUpper));
  const a = await run(
    m,
    x,
    [x.length],
    new KvQuantCache(m.config, { quantizer: pre, prefillWithQuant: true }, 40),
  );
  const b = await run(
    m,
    x,
    [x.length],
    new KvQuantCache(m.config, { quantizer: post, prefillWithQuant: true }, 40),
  );
  assert(a.logits.some((v, i) => v !== b.logits[i]));
  // What each stores: the first (unquantized) token is the pre-RoPE, resp. post-RoPE, key.
  const c = new KvQuantCache(m.config, { quantizer: pre }, 40);
  const s = await run(m, x, [x.length], c);
  assertEquals(Array.from(c.snapshot(2).k.subarray(0, 32)), s.seen[2].kPre[0]);
  const d = new KvQuantCache(m.config, { quantizer: post }, 40);
  const t = await run(m, x, [x.length], d);
  assertEquals(Array.from(d.snapshot(2).k.subarray(32, 64)).length, 32);
  assertEquals(Array.from(d.snapshot(2).k.subarray(0, 32)), t.seen[2].kPost[0]);
  assertNotEquals(t.seen[2].kPost[3], t.seen[2].kPre[3]); // RoPE did rotate position 3
  // Spec options disagreeing with the quantizer are refused, naming the option.
  assertThrows(
    () => createCache(m.config, { method: "kvquant", quantizer: pre, preRope: false }, 8),
    OptionError,
    "preRope",
  );
  assertThrows(
    () => createCache(m.config, { method: "kvquant", quantizer: pre, bits: 4 }, 8),
    OptionError,
    "bits",
  );
  assertThrows(
    () => createCache(m.config, { method: "kvquant", bits: 2 }, 8),
    OptionError,
    "quantizer",
  );
});

/** Σ w (u − nearest)² over the normalized, non-outlier calibration keys (written here). */
function keyError(
  k: Float32Array,
  kw: number,
  qz: KvQuantizer,
  l: number,
  lut: (c: number) => number[],
  weighted: boolean,
  skip: (i: number) => boolean,
): number {
  const L = qz.layers[l];
  let e = 0;
  for (let i = 0; i < k.length / kw; i++) {
    if (skip(i)) continue;
    for (let c = 0; c < kw; c++) {
      const x = k[i * kw + c];
      const zp = (L.kUpper[c] + L.kLower[c]) / 2;
      const r = (L.kUpper[c] - L.kLower[c]) / 2;
      const u = (x - zp) / r;
      if (Math.abs(u) > 1) continue;
      const g = lut(c);
      const best = Math.min(...g.map((v) => Math.abs(u - v)));
      e += (weighted ? x * x : 1) * best * best;
    }
  }
  return e;
}

Deno.test("KVQuant: k-means codebooks never raise the weighted error over the uniform grid (real K)", async () => {
  const m = await getModel();
  const kw = m.config.numKvHeads * m.config.headDim;
  const cal = await calibrationSet(m, "tinystories", { nsamples: 4, seqlen: 256, seed: 0 });
  const rows = await collectKv(m, cal.ids, { preRope: true });
  const skip = (i: number) => i % 256 < 1;
  for (const bits of [2, 3, 4]) {
    const nc = 2 ** bits;
    const grid = Array.from({ length: nc }, (_, i) => -1 + (2 * i) / (nc - 1));
    for (const sensitivity of ["uniform", "activation"] as const) {
      for (const kCodebook of ["layer", "channel"] as const) {
        for (const l of [0, 4]) {
          const L = fitKvQuantLayer(rows[l], kw, {
            bits,
            nuq: true,
            includeSparse: true,
            sparsityThreshold: 0.99,
            sensitivity,
            kCodebook,
            maxIter: 50,
            skip,
          });
          const qz = { bits, kCodebook, layers: [] as unknown[] } as unknown as KvQuantizer;
          qz.layers[l] = L;
          const w = sensitivity === "activation";
          const lut = (c: number) =>
            Array.from(L.kLut.subarray(kCodebook === "channel" ? c * nc : 0).subarray(0, nc));
          const eq = keyError(rows[l].k, kw, qz, l, lut, w, skip);
          const eu = keyError(rows[l].k, kw, qz, l, () => grid, w, skip);
          assert(eq <= eu * (1 + 1e-6), `${bits} ${sensitivity} ${kCodebook} L${l}: ${eq} > ${eu}`);
          assert(eq < 0.99 * eu, `k-means should improve on real keys: ${eq} vs ${eu}`);
        }
      }
    }
  }
});

Deno.test("KVQuant: outlier fractions follow the sparsity threshold", async () => {
  const m = await getModel();
  const kw = m.config.numKvHeads * m.config.headDim;
  // Keys: per channel, the calibration keys strictly beyond the percentile thresholds number
  // N − 1 − ⌊t(N−1)⌋ above and ⌈(1−t)(N−1)⌉ below when the channel's values are distinct (so the
  // fraction is 1 − thr within 2/N); ties (layer 0's pre-RoPE key depends on the token alone, so
  // repeated tokens repeat it; stories opening with the same words repeat every layer's) only
  // lower the strict count.
  const cal = await calibrationSet(m, "tinystories", { nsamples: 4, seqlen: 256, seed: 0 });
  const rows = await collectKv(m, cal.ids, { preRope: true });
  for (const thr of [0.99, 0.9]) {
    const qz = await quantizerFor({ bits: 2, sparsityThreshold: thr });
    const t = 1 - (1 - thr) / 2;
    let distinctChannels = 0;
    for (let l = 0; l < m.config.numLayers; l++) {
      const N = rows[l].k.length / kw;
      const wantHi = N - 1 - Math.floor(t * (N - 1));
      const wantLo = Math.ceil((1 - t) * (N - 1));
      let total = 0;
      for (let c = 0; c < kw; c++) {
        let hi = 0, lo = 0;
        const vals = new Set<number>();
        for (let i = 0; i < N; i++) {
          const x = rows[l].k[i * kw + c];
          vals.add(x);
          if (x > qz.layers[l].kUpper[c]) hi++;
          if (x < qz.layers[l].kLower[c]) lo++;
        }
        const what = `${thr} L${l} c${c}: ${hi} ${lo} vs ${wantHi} ${wantLo}`;
        if (vals.size === N) {
          distinctChannels++;
          assertEquals([hi, lo], [wantHi, wantLo], what);
        } else assert(hi <= wantHi && lo <= wantLo, what);
        total += hi + lo;
      }
      if (l > 0) assert(Math.abs(total / (N * kw) - (1 - thr)) <= 2 / N, `${thr} L${l}`);
    }
    assert(distinctChannels >= kw, `only ${distinctChannels} channels without ties`);
  }
  // Values: per token, the quantile rule's closed form — on stories260K's 32-wide rows that is the
  // row's minimum and maximum (2/32: the rule keeps at least one per end) ...
  assertEquals(vOutliersPerRow(32, 0.99), 2);
  const qz = await quantizerFor({ bits: 2 });
  const c = new KvQuantCache(m.config, { quantizer: qz }, 64);
  await run(m, ids(64, 9), [64], c);
  for (let l = 0; l < m.config.numLayers; l++) {
    const s = c.snapshot(l);
    for (let p = 1; p < 64; p++) {
      const n = s.vOutlier.subarray(p * kw, (p + 1) * kw).reduce((a, b) => a + b, 0);
      assertEquals(n, 2);
    }
  }
  // ... and on Llama-2-7B-wide rows (4096) it is 1 − thr within rounding: a synthetic cache.
  const wide: ModelConfig = {
    ...m.config,
    numLayers: 1,
    numKvHeads: 32,
    numHeads: 32,
    headDim: 128,
  };
  const W = 4096;
  const r = mulberry32(11);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  const grid = Float32Array.from({ length: 4 }, (_, i) => -1 + (2 * i) / 3);
  const synth: KvQuantizer = {
    bits: 2,
    preRope: false,
    nuq: true,
    includeSparse: true,
    sparsityThreshold: 0.99,
    firstFewFp16: 0,
    sensitivity: "uniform",
    kCodebook: "layer",
    numLayers: 1,
    kvWidth: W,
    calibration: { dataset: "synthetic", source: "", nsamples: 0, seqlen: 0, seed: 0 },
    layers: [{
      kUpper: new Float32Array(W).fill(2.5758293), // N(0,1)'s 99.5% point
      kLower: new Float32Array(W).fill(-2.5758293),
      kLut: grid,
      vLut: grid,
    }],
  };
  const wc = new KvQuantCache(wide, { quantizer: synth, firstFewFp16: 0 }, 64);
  const T = 64;
  const k = Float32Array.from({ length: T * W }, gauss);
  const v = Float32Array.from({ length: T * W }, gauss);
  await wc.attend(0, {
    q: new Float32Array(T * W),
    k,
    kPreRope: k,
    v,
    off: 0,
    dims: { B: 1, T, S: T, nH: 32, nKV: 32, hd: 128, scale: 1 / Math.sqrt(128) },
    backend: getBackend(),
  });
  const s = wc.snapshot(0);
  const vFrac = s.vOutlier.reduce((a, b) => a + b, 0) / (T * W);
  const kFrac = s.kOutlier.reduce((a, b) => a + b, 0) / (T * W);
  assertEquals(vFrac, vOutliersPerRow(W, 0.99) / W); // 42 / 4096
  assert(Math.abs(vFrac - 0.01) <= 2 / W, `V ${vFrac}`);
  assert(Math.abs(kFrac - 0.01) < 0.001, `K ${kFrac}`); // 262144 Gaussian draws: σ ≈ 0.0002
});

Deno.test("KVQuant: the first firstFewFp16 tokens are kept exactly", async () => {
  const m = await getModel();
  const qz = await quantizerFor({ bits: 2 });
  const kw = m.config.numKvHeads * m.config.headDim;
  for (const ff of [0, 1, 3]) {
    const c = new KvQuantCache(m.config, { quantizer: qz, firstFewFp16: ff }, 30);
    const { seen } = await run(m, ids(30, 4), [2, 1, 27], c);
    for (let l = 0; l < m.config.numLayers; l++) {
      const s = c.snapshot(l);
      assertEquals(s.raw.map((b, p) => b === p < ff), s.raw.map(() => true));
      for (let p = 0; p < 30; p++) {
        const k = Array.from(s.k.subarray(p * kw, (p + 1) * kw));
        const v = Array.from(s.v.subarray(p * kw, (p + 1) * kw));
        if (p < ff) {
          assertEquals(k, seen[l].kPre[p]);
          assertEquals(v, seen[l].v[p]);
        } else assertNotEquals(v, seen[l].v[p]);
      }
    }
  }
});

Deno.test("KVQuant: the quantizer file round-trips and a damaged or mismatched file is refused", async () => {
  const m = await getModel();
  const qz = await quantizerFor({ bits: 3, kCodebook: "channel" });
  const dir = await Deno.makeTempDir();
  try {
    const p = `${dir}/q.json`;
    await saveKvQuantizer(p, qz);
    const back = await loadKvQuantizer(p);
    assertEquals({ ...back, source: undefined }, { ...qz, source: undefined });
    assertEquals(back.source, p);
    const x = ids(24, 2);
    const a = await run(m, x, [24], new KvQuantCache(m.config, { quantizer: qz }, 24));
    const b = await run(m, x, [24], new KvQuantCache(m.config, { quantizer: back }, 24));
    assertEquals(a.logits, b.logits);
    const text = await Deno.readTextFile(p);
    // One changed digit: the checksum refuses it.
    const i = text.indexOf('"kUpper":[') + 12;
    const d = text[i] === "1" ? "2" : "1";
    await Deno.writeTextFile(`${dir}/bad.json`, text.slice(0, i) + d + text.slice(i + 1));
    await assertRejects(() => loadKvQuantizer(`${dir}/bad.json`), FormatError, "checksum");
    await Deno.writeTextFile(`${dir}/cut.json`, text.slice(0, text.length >> 1));
    await assertRejects(() => loadKvQuantizer(`${dir}/cut.json`), FormatError, "cut.json");
    await Deno.writeTextFile(`${dir}/other.json`, JSON.stringify({ payload: { format: "x" } }));
    await assertRejects(() => loadKvQuantizer(`${dir}/other.json`), FormatError, "format");
    await assertRejects(() => loadKvQuantizer(`${dir}/missing.json`), Error);
    // A quantizer of another model shape: refused when the cache is made.
    const small = { ...m.config, numKvHeads: 2 };
    assertThrows(() => new KvQuantCache(small, { quantizer: back }), OptionError, p);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Hand-derived bytes of one layer: see the module doc of kvquant.ts. */
function handBytes(
  kw: number,
  o: { bits: number; sparse: boolean; ff: number; perCh: boolean },
  n: number,
  outliers: number,
): number {
  if (o.bits === 16) return n * kw * 2 * 4;
  const nc = 2 ** o.bits;
  const perWord = Math.floor(32 / o.bits);
  const quantizer = 4 * (kw + kw + (o.perCh ? kw * nc : nc) + nc);
  const ff = Math.min(n, o.ff);
  const row = 2 * Math.ceil(kw / perWord) * 4 + 8 + (o.sparse ? 4 : 0);
  return quantizer + ff * 2 * kw * 4 + (n - ff) * row + outliers * 6;
}

Deno.test("KVQuant: cache bytes measured == formula for every configuration", async () => {
  const m = await getModel();
  const kw = m.config.numKvHeads * m.config.headDim;
  const configs = [
    { bits: 2, sparse: true, perCh: false },
    { bits: 3, sparse: false, perCh: false },
    { bits: 2, sparse: true, perCh: true },
    { bits: 4, sparse: true, perCh: false },
    { bits: 16, sparse: true, perCh: false },
  ];
  for (const { bits, sparse, perCh } of configs) {
    const qz = bits === 16 ? undefined : await quantizerFor(
      bits === 3
        ? { bits, includeSparse: false }
        : perCh
        ? { bits, kCodebook: "channel" }
        : { bits },
    );
    for (const ff of [0, 1, 3]) {
      const c = createCache(m.config, {
        method: "kvquant",
        bits: bits === 16 ? 16 : undefined,
        quantizer: qz,
        firstFewFp16: ff,
      }, 40) as KvQuantCache;
      const x = ids(40, bits + ff);
      let t = 0;
      for (const n of [1, 2, 5, 32]) {
        await forward(m, x.slice(t, t + n), { cache: c });
        t += n;
        let hand = 0;
        for (let l = 0; l < m.config.numLayers; l++) {
          const s = c.snapshot(l);
          const outl = s.kOutlier.reduce((a, b) => a + b, 0) +
            s.vOutlier.reduce((a, b) => a + b, 0);
          hand += handBytes(kw, { bits, sparse, ff, perCh }, t, outl);
        }
        const what = `bits ${bits} sparse ${sparse} perCh ${perCh} ff ${ff} n ${t}`;
        assertEquals(c.bytes(), hand, what);
        assertEquals(c.formulaBytes(), hand, what);
      }
    }
  }
  // The data-free accounting (expected outliers) for a Llama-2-7B-shaped fp16 cache, by hand:
  // 2-bit, 1%: per token per layer 2·(4096/16)·4 code bytes + 2·2 V params + 4 counts
  // + (40.96 K + 42 V outliers)·(2 + 2).
  const llama: ModelConfig = {
    ...m.config,
    numLayers: 32,
    numKvHeads: 32,
    numHeads: 32,
    headDim: 128,
  };
  const perTok = 2048 + 4 + 4 + (40.96 + 42) * 4;
  const quant = (2 * 4096 + 4 + 4) * 2;
  const n = 4096;
  const got = cacheBytes(llama, { method: "kvquant", bits: 2 }, n, { floatBytes: 2 });
  const want = 32 * (quant + 1 * 2 * 4096 * 2 + (n - 1) * perTok);
  assert(Math.abs(got - want) < 1e-6 * want, `${got} vs ${want}`);
});

Deno.test("KV caches compose with weight quantization: perplexity(rtn-4 model, { kv })", async () => {
  const m = await getModel();
  const w4 = await quantize(m, rtn({ bits: 4 }));
  const qz = await calibrateKvQuant(w4, {
    dataset: "tinystories",
    nsamples: 2,
    seqlen: 128,
    bits: 2,
  });
  const E = { nsamples: 1, seqlen: 64 };
  const fpW = (await perplexity(m, "tinystories", E)).ppl;
  const w4fp = (await perplexity(w4, "tinystories", E)).ppl;
  const kv = { method: "kvquant", quantizer: qz } as const;
  const w4kv = (await perplexity(w4, "tinystories", { ...E, kv })).ppl;
  const w4kivi = (await perplexity(w4, "tinystories", {
    ...E,
    kv: { method: "kivi", bits: 2, groupSize: 8, vGroupSize: 8, residualLength: 16 },
  })).ppl;
  // The quantized weights are what the cached forward runs: the same logits as a manual forward
  // of the rtn-4 model through the same cache, token by token.
  const ids = (await calibrationSet(m, "tinystories", { nsamples: 1, seqlen: 20, seed: 3 })).ids[0];
  const a = await run(w4, ids, ids.map(() => 1), createCache(m.config, kv, 20));
  const b = await run(m, ids, ids.map(() => 1), createCache(m.config, kv, 20));
  assert(
    a.logits.some((v, i) => v !== b.logits[i]),
    "the weights are quantized on the cached path",
  );
  for (const p of [fpW, w4fp, w4kv, w4kivi]) assert(Number.isFinite(p) && p > 1);
  assert(w4fp !== fpW && w4kv !== w4fp && w4kivi !== w4fp, `${fpW} ${w4fp} ${w4kv} ${w4kivi}`);
});

Deno.test("kv CLI: KVQuant flags map to the spec; the quantizer file is loaded and checked", async () => {
  const { kvSpecOf, withKvQuantizer } = await import("../../src/cli_kv.ts");
  assertEquals(
    kvSpecOf({
      kv: "kvquant",
      "kv-bits": "2",
      "kv-sparsity": "0.99",
      "first-few-fp16": "4",
      "post-rope": true,
      "uniform-grid": true,
    }),
    {
      method: "kvquant",
      bits: 2,
      sparsityThreshold: 0.99,
      firstFewFp16: 4,
      preRope: false,
      nuq: false,
    },
  );
  assertEquals(kvSpecOf({ kv: "kvquant", "dense-only": true }), {
    method: "kvquant",
    includeSparse: false,
  });
  assertThrows(
    () => kvSpecOf({ kv: "kvquant", "kv-sparsity": "most" }),
    OptionError,
    "--kv-sparsity",
  );
  const m = await getModel();
  const qz = await quantizerFor({ bits: 2 });
  const dir = await Deno.makeTempDir();
  try {
    await saveKvQuantizer(`${dir}/q.json`, qz);
    const s = await withKvQuantizer(m, kvSpecOf({ kv: "kvquant" }), {
      "kv-quantizer": `${dir}/q.json`,
    });
    assertEquals((s as { quantizer: KvQuantizer }).quantizer.layers, qz.layers);
    // A flag that disagrees with the loaded file is refused when the cache is made.
    const bad = await withKvQuantizer(m, kvSpecOf({ kv: "kvquant", "kv-bits": "4" }), {
      "kv-quantizer": `${dir}/q.json`,
    });
    assertThrows(() => createCache(m.config, bad, 8), OptionError, "bits");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
