/**
 * The demo (`deno task demo`): stories260K (from ../shared/data, else the hub), its TinyStories
 * perplexity, a greedy continuation of "Once upon a time", and a quantization table — FP, RTN and
 * GPTQ at 4/3/2 bits, per-channel and group 32, then QuantEase, QuIP (incoherence processing) and
 * FrameQuant (r = 1.1) at 4/3/2 bits per-channel and BCQ 4-bit g128, calibrated on 128 × 256
 * TinyStories train tokens — with TinyStories perplexity, bits/weight and seconds, and the run's peak memory.
 * Then rows marked `[W-A]` (issue 14: W8A8 SmoothQuant α 0.5, W8A8 LLM.int8(), ZeroQuant W4/8A8,
 * QRazor W4A4 g16, qllm-infer configurations as `tools/wa_table.ts`; their bits/weight is the
 * effective weight bits) and `[KV]` (issue 21: KIVI-4 and KIVI-2 caches, then KVQuant-4/3/2bit-1%
 * calibrated on 4 × 256 TinyStories tokens, token by token on the first `--kv-windows` windows,
 * default 4, next to the FP32 model on those windows; bytes per token in the setup column), and a
 * small needle-in-a-haystack grid (2 context lengths × 3 depths × the seed's 5 needles: FP vs
 * KIVI-2 vs KVQuant-2, mean answer log-probability and exact match). `--no-wa-kv` leaves those
 * rows out.
 *
 * Flags: `--windows N` evaluates on the first N windows of 512 tokens (default 64, about 33k
 * tokens, the same default as `deno task cli ppl` / `quantize --windows`; `--windows all` uses all
 * 762 windows of the 1,000 validation stories, which takes 40–60 minutes for the whole table on 2
 * cores), `--no-table` stops after the FP figures. Every row, the FP one included, is evaluated
 * on the same windows; the `setup` column says what each row is (act-order, per-channel or
 * static/partial groups, what bits/weight counts).
 * @module
 */
import { parseArgs } from "node:util";
import { defaultModelPath } from "./_paths.ts";
import { generate } from "./eval/generate.ts";
import { perplexity } from "./eval/perplexity.ts";
import { loadModel } from "./models/load.ts";
import { calibrationSet } from "./quant/pipeline/calibration.ts";
import { gptq } from "./quant/weight_only/gptq.ts";
import { quantize } from "./quant/pipeline/pipeline.ts";
import { rtn } from "./quant/weight_only/rtn.ts";
import { quantease } from "./quant/weight_only/quantease.ts";
import { quip } from "./quant/weight_only/quip.ts";
import { framequant } from "./quant/weight_only/framequant.ts";
import { bcq } from "./quant/weight_only/bcq.ts";
import { oa } from "./quant/weight_only/oa.ts";
import { spqr } from "./quant/weight_only/spqr.ts";
import type { WeightQuantizer } from "./quant/core/types.ts";
import { applyQllmConfig, resolveQllmConfig } from "./quant/pipeline/qllm_config.ts";
import { qrazorEffectiveBits } from "./quant/weight_activation/qrazor.ts";
import { cacheBytes, kvLabel, type KVSpec } from "./quant/kv/cache.ts";
import { calibrateKvQuant } from "./quant/pipeline/kv_calibration.ts";
import { needleEval } from "./eval/needle.ts";
import { type ResultRow, resultsTable } from "./viz/table.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    windows: { type: "string" },
    "no-table": { type: "boolean", default: false },
    "no-wa-kv": { type: "boolean", default: false },
    "kv-windows": { type: "string", default: "4" },
  },
});
const nsamples = flags.windows === "all" ? undefined : Number(flags.windows ?? 64);
if (nsamples !== undefined && !(Number.isInteger(nsamples) && nsamples >= 1)) {
  console.error(`--windows: expected a positive integer or "all", got "${flags.windows}"`);
  Deno.exit(2);
}
const kvWindows = Number(flags["kv-windows"]);
if (!(Number.isInteger(kvWindows) && kvWindows >= 1)) {
  console.error(`--kv-windows: expected a positive integer, got "${flags["kv-windows"]}"`);
  Deno.exit(2);
}

const path = await defaultModelPath();
const model = await loadModel(path);
const c = model.config;
console.log(
  `model: ${path} (${c.modelType}, ${c.numLayers} layers, hidden ${c.hiddenSize}, heads ${c.numHeads}/${c.numKvHeads}, vocab ${c.vocabSize}, context ${c.maxPositions})`,
);
const fp = await perplexity(model, "tinystories", { nsamples });
console.log(
  `TinyStories perplexity (FP32): ${
    fp.ppl.toFixed(4)
  }  [${fp.windows} windows × ${fp.seqlen} tokens, ${fp.seconds.toFixed(1)} s]`,
);
const g = await generate(model, "Once upon a time", { maxNewTokens: 100, temperature: 0 });
console.log(`greedy continuation (${g.tokensPerSecond.toFixed(0)} tokens/s):\n${g.text}\n`);

let peak = Deno.memoryUsage().rss / 2 ** 20;
if (!flags["no-table"]) {
  const calib = await calibrationSet(model, "tinystories", { nsamples: 128, seqlen: 256, seed: 0 });
  console.log(`calibration: ${calib.ids.length} × ${calib.seqlen} tokens from ${calib.source}`);
  const rows: ResultRow[] = [{
    method: "fp32",
    bits: 32,
    group: "-",
    bitsPerWeight: 32,
    ppl: fp.ppl,
    seconds: 0,
    setup: `unquantized, same ${fp.windows} windows`,
  }];
  // What each row is (the table's last column); bits/weight always counts codes plus fp16
  // scales and zeros (and g_idx / outliers / frame redundancy where a method stores them).
  const setups: Record<string, (bits: number, groupSize: number) => string> = {
    rtn: (_b, g) => g === -1 ? "per-channel min-max" : `dynamic groups of ${g} (last one partial)`,
    gptq: (_b, g) =>
      `act-order, ${g === -1 ? "per-channel" : `dynamic groups of ${g} (last one partial)`}`,
    quantease: () => "reference default: start from W, relaxed iterations, 30 sweeps",
    quip: () => "incoherence (kron), ldlq, qfn b",
    "framequant r1.1": () => "frames on both sides: bits/weight counts 1.1² codes per weight",
    bcq: () => "LUT-GEMM binary codes, 30 rounds, groups of 128",
    spqr: () => "b_w 3, β1 16, 3-bit stats in groups of 16, τ 0.25 outliers, act-order",
    "oa int4+outlier+offset": () => "per channel, blocks of 32, ≤ 1 BF16 outlier per block, offset",
  };
  const methods: [string, (bits: number, groupSize: number) => WeightQuantizer][] = [
    ["rtn", (bits, groupSize) => rtn({ bits, groupSize, partialGroups: true })],
    ["gptq", (bits, groupSize) => gptq({ bits, groupSize, actOrder: true, partialGroups: true })],
  ];
  const more: [string, (bits: number) => WeightQuantizer][] = [
    ["quantease", (bits) => quantease({ bits })],
    ["quip", (bits) => quip({ bits, incoh: true, method: "ldlq" })],
    ["framequant r1.1", (bits) => framequant({ bits, r: 1.1 })],
  ];
  const runs: [string, number, number, WeightQuantizer][] = [];
  for (const bits of [4, 3, 2]) {
    for (const groupSize of [-1, 32]) {
      for (const [name, make] of methods) runs.push([name, bits, groupSize, make(bits, groupSize)]);
    }
  }
  for (const bits of [4, 3, 2]) {
    for (const [name, make] of more) runs.push([name, bits, -1, make(bits)]);
  }
  // Issue 18's formats, one row each (the full table with the seed's configurations:
  // tools/outlier_formats_table.ts, notebooks/07_outlier_formats.ipynb): BCQ (LUT-GEMM) 4-bit
  // g128 with 30 alternating rounds; SpQR at the seed's 4-bit-target configuration; OA INT4 with
  // outliers and offset.
  runs.push(["bcq", 4, 128, bcq({ bits: 4, groupSize: 128, partialGroups: true })]);
  runs.push([
    "spqr",
    3,
    16,
    spqr({
      bits: 3,
      groupSize: 16,
      qqScaleBits: 3,
      qqZeroBits: 3,
      qqGroupSize: 16,
      outlierRelativeThreshold: 0.25,
      permutationOrder: "act_order",
    }),
  ]);
  runs.push([
    "oa int4+outlier+offset",
    4,
    32,
    oa({
      wbits: 4,
      sym: true,
      perOutDim: true,
      blockSize: 32,
      outlierMode: true,
      offsetMode: true,
    }),
  ]);
  for (const [name, bits, groupSize, quantizer] of runs) {
    // RTN needs no statistics: without calib its time is the quantizer's alone (with calib the
    // pipeline would also gather Hessians to report each layer's relative error). The
    // calibration blocks run as onnxruntime stage graphs (`forward: "ort"`: the TypeScript
    // forward's Hessians bit for bit on this model, in about a third of the CPU time).
    const qm = await quantize(model, quantizer, {
      calib: quantizer.needsHessian ? calib : undefined,
      forward: "ort",
    });
    const r = await perplexity(qm, "tinystories", { nsamples });
    peak = Math.max(peak, qm.report.peakRssMiB, Deno.memoryUsage().rss / 2 ** 20);
    rows.push({
      method: name,
      bits,
      group: groupSize === -1 ? "channel" : String(groupSize),
      bitsPerWeight: qm.report.bitsPerWeight,
      ppl: r.ppl,
      seconds: qm.report.seconds,
      setup: setups[name]?.(bits, groupSize) ?? "",
    });
    console.error(`  ${name} ${bits}-bit g${groupSize}: ppl ${r.ppl.toFixed(3)}`);
  }
  if (!flags["no-wa-kv"]) {
    // Issue 14's weight-activation rows: qllm-infer configurations (the seed's keys, as
    // tools/wa_table.ts runs them) applied by applyQllmConfig; activation quantizers and
    // LLM.int8() run as host forward hooks (the TypeScript forward), on the same windows. The
    // bits/weight column holds the effective weight bits of tools/wa_table.ts (scales not
    // counted; ZeroQuant W4/8: the parameter-weighted mean of 4-bit MLP and 8-bit attention).
    const D = c.hiddenSize, hd = c.headDim;
    const attn = D * (c.numHeads + c.numKvHeads) * hd * 2, mlp = 3 * D * c.intermediateSize;
    const qr16 = qrazorEffectiveBits({ qBit: 8, rBit: 4, group: 16 }, { roundUp: true });
    const wa: {
      method: string;
      bits: number;
      group: string;
      eff: number;
      cfg: Record<string, unknown>;
      setup: string;
    }[] = [
      {
        method: "[W-A] W8A8 smoothquant",
        bits: 8,
        group: "channel",
        eff: 8,
        cfg: {
          bits_w: 8,
          bits_a: 8,
          smoothquant: true,
          smoothquant_alpha: 0.5,
          smoothquant_nsamples: 128,
          smoothquant_seqlen: 256,
        },
        setup: "issue 14: α 0.5, 128 × 256 calib tokens; W per-channel, A per-token",
      },
      {
        method: "[W-A] W8A8 llm.int8()",
        bits: 8,
        group: "channel",
        eff: 8,
        cfg: { llm_int8: true },
        setup: "issue 14: threshold 6, outlier input dims in FP (not counted)",
      },
      {
        method: "[W-A] W4/8A8 zeroquant",
        bits: 4,
        group: "channel",
        eff: (4 * mlp + 8 * attn) / (mlp + attn),
        cfg: { zeroquant: true, bits_w: 8, zeroquant_ffn_bits: 4, bits_a: 8 },
        setup: "issue 14: 4-bit MLP / 8-bit attention (mean bits), A8 per-token",
      },
      {
        method: "[W-A] W4A4 qrazor",
        bits: 4,
        group: "16",
        eff: qr16,
        cfg: {
          bits_w: 8,
          sym_w: true,
          w_qrazor: true,
          w_qrazor_bits: 4,
          w_qrazor_group: 16,
          bits_a: 16,
          sym_a: true,
          a_per_tensor: true,
          a_per_token: false,
          a_qrazor: true,
          a_qrazor_bits: 4,
          a_qrazor_group: 16,
        },
        setup: "issue 14: W INT8→4, A INT16 per-tensor→4, SDR groups of 16",
      },
    ];
    for (const r of wa) {
      const t0 = performance.now();
      const applied = await applyQllmConfig(
        model,
        resolveQllmConfig(r.cfg),
        {
          calibDataset: "tinystories",
        },
      );
      const seconds = (performance.now() - t0) / 1000;
      const res = await perplexity(applied.model, "tinystories", { nsamples });
      rows.push({
        method: r.method,
        bits: r.bits,
        group: r.group,
        bitsPerWeight: r.eff,
        ppl: res.ppl,
        seconds,
        setup: r.setup,
      });
      console.error(`  ${r.method}: ppl ${res.ppl.toFixed(3)}`);
    }
    // Issue 21's KV-cache rows: KIVI (the reference's group 32 / residual 128 for K, V groups of
    // the head size) through the `kv` option of perplexity, token by token (every prediction a
    // decode step reading the quantized cache, as tools/kv_table.ts), on the first `--kv-windows`
    // windows only (~1.5 s of CPU per window), with the FP32 model on those windows as their
    // reference. Cache bytes per token at the model's context, all layers, float32 for FP.
    const n = c.maxPositions;
    const kvN = nsamples === undefined ? kvWindows : Math.min(kvWindows, nsamples);
    const fpKv = await perplexity(model, "tinystories", { nsamples: kvN });
    const fpBytes = cacheBytes(c, { method: "fp" }, n) / n;
    rows.push({
      method: "[KV] fp32",
      bits: 32,
      group: "-",
      bitsPerWeight: 32,
      ppl: fpKv.ppl,
      seconds: undefined,
      setup: `issue 21: reference of the KV rows, first ${kvN} windows; ${fpBytes} B/token`,
    });
    const specs: KVSpec[] = [
      { method: "kivi", bits: 4, vGroupSize: hd },
      { method: "kivi", bits: 2, vGroupSize: hd },
    ];
    for (const kv of specs) {
      const res = await perplexity(model, "tinystories", { nsamples: kvN, kv });
      const b = cacheBytes(c, kv, n) / n;
      rows.push({
        method: `[KV] kivi-${(kv as { bits: number }).bits} g32 r128`,
        bits: (kv as { bits: number }).bits,
        group: "32",
        bitsPerWeight: 32,
        ppl: res.ppl,
        seconds: undefined,
        setup: `issue 21: KV cache token by token, first ${kvN} windows; ${b} B/token`,
      });
      console.error(`  ${kvLabel(kv)}: ppl ${res.ppl.toFixed(3)}`);
    }
    rows.push(...await kvquantAndNeedle(kvN));
  }
  console.log(
    resultsTable(rows, {
      title: `stories260K, TinyStories perplexity (${fp.windows} windows × ${fp.seqlen})`,
    }).text,
  );
}
peak = Math.max(peak, Deno.memoryUsage().rss / 2 ** 20);
console.log(`peak resident memory: ${peak.toFixed(0)} MiB`);

/**
 * Issue 21's KVQuant rows and needle grid (appended after the KIVI rows): KVQuant-4/3/2bit-1%
 * (pre-RoPE keys, k-means codebooks calibrated on 4 × 256 TinyStories train tokens), perplexity
 * token by token on the first `kvN` windows with `prefill_with_quant` false, as the KIVI rows;
 * then the needle grid (context 256 and 512 × depth 0, 0.5, 1 × the seed's five needles) for FP,
 * KIVI-2 and KVQuant-2, with `prefillWithQuant` true as `tools/kv_table.ts` runs it (the prompt's
 * own K/V, needle included, are read back quantized). Prints the grid and how long this took.
 */
async function kvquantAndNeedle(kvN: number): Promise<ResultRow[]> {
  const t0 = performance.now();
  const n = c.maxPositions;
  const rows: ResultRow[] = [];
  const kvq: Record<number, KVSpec> = {};
  for (const bits of [4, 3, 2]) {
    const quantizer = await calibrateKvQuant(model, {
      dataset: "tinystories",
      nsamples: 4,
      seqlen: 256,
      bits,
    });
    const kv: KVSpec = { method: "kvquant", quantizer };
    kvq[bits] = kv;
    const res = await perplexity(model, "tinystories", { nsamples: kvN, kv });
    const b = cacheBytes(c, kv, n) / n;
    rows.push({
      method: `[KV] kvquant-${bits}bit-1%`,
      bits,
      group: "-",
      bitsPerWeight: 32,
      ppl: res.ppl,
      seconds: undefined,
      setup: `issue 21: nuq, pre-RoPE K, 1 sink token; token by token, first ${kvN} windows; ` +
        `${b.toFixed(1)} B/token (expected outliers)`,
    });
    console.error(`  ${kvLabel(kv)}: ppl ${res.ppl.toFixed(3)}`);
  }
  const t1 = performance.now();
  const grid = { contextLengths: [256, 512].filter((x) => x <= n), depths: [0, 0.5, 1] };
  const lines = [
    `needle in a haystack (stories260K, seed's 5 needles; mean answer log-prob | exact match), ` +
    `depths ${grid.depths.join(" / ")}:`,
  ];
  const caches: KVSpec[] = [
    { method: "fp" },
    { method: "kivi", bits: 2, vGroupSize: c.headDim, prefillWithQuant: true },
    { ...kvq[2], prefillWithQuant: true } as KVSpec,
  ];
  for (const kv of caches) {
    const r = await needleEval(model, { ...grid, kv: kv.method === "fp" ? undefined : kv });
    r.contextLengths.forEach((len, i) =>
      lines.push(
        `  ${kvLabel(kv).padEnd(22)} ctx ${String(len).padStart(3)}: logp ${
          r.logProb[i].map((x) => x.toFixed(3)).join(" ")
        } | exact ${r.accuracy[i].map((x) => x.toFixed(1)).join(" ")}`,
      )
    );
  }
  const t2 = performance.now();
  lines.push(
    `(KVQuant rows ${((t1 - t0) / 1000).toFixed(1)} s incl. calibration, needle grid ${
      ((t2 - t1) / 1000).toFixed(1)
    } s)`,
  );
  console.log(lines.join("\n"));
  return rows;
}
