/**
 * The weight-activation table of issue 14 (seed 003's rows) on a model (stories260K in the
 * demo): TinyStories perplexity and effective weight bits for W8A8 (RTN, SmoothQuant,
 * LLM.int8(), ZeroQuant), ZeroQuant W4/8A16, W4/8A8 and W4A4, QRazor W4A16 / W4A8 / W4A4 /
 * W4KV4 / W4A4KV4 at groups 8…128, GPTQ + QRazor, and ZeroQuant W4/8 with layer-wise knowledge
 * distillation (LKD) vs steps. Every row is a qllm-infer configuration
 * (`src/quant/pipeline/qllm_config.ts`) applied by `applyQllmConfig`, so every knob runs as a
 * quantizer spec: on WebGPU the evaluation stays GPU-resident.
 *
 * Protocol: the first `windows` windows of 512 TinyStories validation tokens, one window per
 * forward (a per-tensor spec and QRazor's flattened groups span the rows of one sequence, as the
 * reference's batch-1 `eval_ppl`). SmoothQuant calibrates on `calib` × 256 TinyStories train
 * tokens (seed 0; the seed's 512 × 512 exceeds what this model needs), α = `alpha`. QRazor rows
 * follow the seed: weights INT8 per-channel symmetric → 4 bits; activations INT16 per-tensor
 * symmetric → 8 or 4 bits; K/V INT8 per-tensor symmetric → 4 bits; SDR group = the row's g.
 * GPTQ + QRazor: act-order, `calib` × 256 TinyStories train tokens (the seed: WikiText-2 or C4,
 * 128 × 2048). LKD (the last layer only, as the seed): Adam at `lkdLr`, batch 4 windows of 256
 * tokens of the teacher's hidden states at the last block's input, `lkdSteps`; training runs
 * the block at A16 (activation quantization applies at evaluation only).
 *
 * Measured on stories260K (8 × 512 validation tokens, calib 64, CPU; `tools/wa_table.ts`): FP32
 * 3.4215; W8A8 RTN 3.4214, SmoothQuant α 0.5 3.4251, LLM.int8() 3.4222, ZeroQuant 3.4212 (W8A8 is
 * at this model's noise floor); ZeroQuant W4/8A16 3.6599, W4/8A8 3.6612, W4A4 5.2594; QRazor
 * g8/16/32/64/128: W4A16 3.8858/3.9201/3.9523/3.9461/3.9427, W4A8 3.8880/3.9277/3.9550/3.9545/
 * 3.9488, W4A4 4.4325/4.8375/5.4806/6.4877/8.7890, W4KV4 17.62/21.02/26.07/27.11/28.48, W4A4KV4
 * 21.22/28.41/38.45/51.14/66.53 (per-tensor INT8 K/V hurt this 8-dim-head model); GPTQ + QRazor
 * W4A16 3.7383/3.7925/3.7719/3.7895/3.7895; LKD (lr 1e-4, last layer) W4/8A16 3.6599 → 3.6342 (25
 * steps) → 3.6371 (50) → 3.6498 (100), W4/8A8 3.6612 → 3.6338 → 3.6388 → 3.6517 (more steps
 * overfit the 64 calibration windows).
 * @module
 */
import type { Model } from "../models/model.ts";
import { block, embed } from "../models/decoder.ts";
import { perplexity } from "./perplexity.ts";
import { applyQllmConfig, resolveQllmConfig } from "../quant/pipeline/qllm_config.ts";
import { qrazorEffectiveBits } from "../quant/weight_activation/qrazor.ts";
import { calibrationSet } from "../quant/pipeline/calibration.ts";
import { lkdBlock, type LkdLinear } from "../quant/weight_activation/lkd.ts";
import { dsSymQuant } from "../quant/weight_activation/zeroquant.ts";

/** One configuration row of the table. */
export interface WaTableConfig {
  /** Row label. */
  name: string;
  /** The qllm-infer keys (seed 003's names). */
  cfg: Record<string, unknown>;
  /** Effective weight bits as displayed. */
  effBits: string;
}

/** A measured row. */
export interface WaTableRow extends WaTableConfig {
  /** TinyStories perplexity. */
  ppl: number;
  /** Seconds for the row (quantization + evaluation), or LKD seconds per step. */
  seconds: number;
  /** LKD rows: seconds per step (0 at 0 steps). */
  secondsPerStep?: number;
  /** Whether the evaluation ran GPU-resident (WebGPU). */
  resident: boolean;
}

/** Options of {@linkcode waTableConfigs} and {@linkcode waTable}. */
export interface WaTableOptions {
  /** Evaluation windows of 512 tokens (default 8). */
  windows?: number;
  /** Calibration windows of 256 tokens for SmoothQuant, GPTQ and LKD (default 64). */
  calib?: number;
  /** SmoothQuant α (default 0.5). */
  alpha?: number;
  /** Keep only rows whose name contains one of these substrings ("LKD" selects the LKD rows). */
  only?: string[];
  /** LKD steps (default [0, 25, 50, 100]; empty: no LKD rows unless `only` asks). */
  lkdSteps?: number[];
  /** LKD learning rate (default 1e-4). */
  lkdLr?: number;
  /** Called with each row as it is measured. */
  onRow?: (row: WaTableRow) => void;
}

const GROUPS = [8, 16, 32, 64, 128];

/** The table's configuration rows (without the LKD rows), in order. */
export function waTableConfigs(opts: WaTableOptions = {}): WaTableConfig[] {
  const calib = opts.calib ?? 64, alpha = opts.alpha ?? 0.5;
  const rows: WaTableConfig[] = [
    { name: "FP32", cfg: {}, effBits: "32" },
    { name: "W8A8 RTN", cfg: { bits_w: 8, bits_a: 8 }, effBits: "8" },
    {
      name: `W8A8 SmoothQuant (α ${alpha})`,
      cfg: {
        bits_w: 8,
        bits_a: 8,
        smoothquant: true,
        smoothquant_alpha: alpha,
        smoothquant_nsamples: calib,
        smoothquant_seqlen: 256,
      },
      effBits: "8",
    },
    {
      name: "W8A8 LLM.int8() (threshold 6)",
      cfg: { llm_int8: true },
      effBits: "8 (+FP outlier dims)",
    },
    { name: "W8A8 ZeroQuant", cfg: { zeroquant: true, bits_w: 8, bits_a: 8 }, effBits: "8" },
    {
      name: "W4/8A16 ZeroQuant",
      cfg: { zeroquant: true, bits_w: 8, zeroquant_ffn_bits: 4 },
      effBits: "4 (MLP) / 8",
    },
    {
      name: "W4/8A8 ZeroQuant",
      cfg: { zeroquant: true, bits_w: 8, zeroquant_ffn_bits: 4, bits_a: 8 },
      effBits: "4 (MLP) / 8",
    },
    { name: "W4A4 ZeroQuant", cfg: { zeroquant: true, bits_w: 4, bits_a: 4 }, effBits: "4" },
  ];
  const W4 = (g: number) => ({
    bits_w: 8,
    sym_w: true,
    w_qrazor: true,
    w_qrazor_bits: 4,
    w_qrazor_group: g,
  });
  const A = (bits: number, g: number) => ({
    bits_a: 16,
    sym_a: true,
    a_per_tensor: true,
    a_per_token: false,
    a_qrazor: true,
    a_qrazor_bits: bits,
    a_qrazor_group: g,
  });
  const KV = (g: number) => ({
    bits_k: 8,
    sym_k: true,
    k_qrazor: true,
    k_qrazor_bits: 4,
    k_qrazor_group: g,
    bits_v: 8,
    sym_v: true,
    v_qrazor: true,
    v_qrazor_bits: 4,
    v_qrazor_group: g,
  });
  const eff = (g: number) =>
    qrazorEffectiveBits({ qBit: 8, rBit: 4, group: g }, { roundUp: true }).toFixed(2);
  const kinds: [string, (g: number) => Record<string, unknown>][] = [
    ["W4A16", (g) => W4(g)],
    ["W4A8", (g) => ({ ...W4(g), ...A(8, g) })],
    ["W4A4", (g) => ({ ...W4(g), ...A(4, g) })],
    ["W4KV4", (g) => ({ ...W4(g), ...KV(g) })],
    ["W4A4KV4", (g) => ({ ...W4(g), ...A(4, g), ...KV(g) })],
  ];
  for (const [label, make] of kinds) {
    for (const g of GROUPS) {
      rows.push({ name: `QRazor ${label} (g${g})`, cfg: make(g), effBits: eff(g) });
    }
  }
  for (const g of GROUPS) {
    rows.push({
      name: `GPTQ + QRazor W4A16 (g${g})`,
      cfg: { ...W4(g), gptq: true, gptq_nsamples: calib, gptq_seqlen: 256, gptq_act_order: true },
      effBits: eff(g),
    });
  }
  return opts.only ? rows.filter((r) => opts.only!.some((s) => r.name.includes(s))) : rows;
}

/**
 * Measures the table on `model` (see the module doc) on the active backend: the configuration
 * rows, then the LKD rows (ZeroQuant W4/8A16 and W4/8A8, perplexity vs steps).
 */
export async function waTable(model: Model, opts: WaTableOptions = {}): Promise<WaTableRow[]> {
  const windows = opts.windows ?? 8, calib = opts.calib ?? 64;
  const evalOpts = { nsamples: windows, seqlen: 512, batch: 1 };
  const out: WaTableRow[] = [];
  const push = (r: WaTableRow) => {
    out.push(r);
    opts.onRow?.(r);
  };
  for (const r of waTableConfigs(opts)) {
    const t0 = performance.now();
    const applied = await applyQllmConfig(model, resolveQllmConfig(r.cfg), {
      calibDataset: "tinystories",
    });
    const res = await perplexity(applied.model, "tinystories", evalOpts);
    push({ ...r, ppl: res.ppl, seconds: (performance.now() - t0) / 1000, resident: res.resident });
  }
  const steps = opts.lkdSteps ?? [0, 25, 50, 100];
  const wantLkd = opts.only ? opts.only.some((s) => s.includes("LKD")) : steps.length > 0;
  if (!wantLkd) return out;
  const L = model.config.numLayers;
  const cal = await calibrationSet(model, "tinystories", { nsamples: calib, seqlen: 256 });
  const inputs: Float64Array[] = [];
  for (const ids of cal.ids) {
    let h = await embed(model, ids);
    for (let i = 0; i < L - 1; i++) h = await block(model, i, h);
    inputs.push(Float64Array.from(h.data));
  }
  const ffn = new Set<LkdLinear>(["gate", "up", "down"]);
  const q48 = (k: LkdLinear, W: Float64Array, rows: number) =>
    Float64Array.from(dsSymQuant(Float32Array.from(W), rows, ffn.has(k) ? 4 : 8).y);
  const lr = opts.lkdLr ?? 1e-4;
  for (const bitsA of [16, 8]) {
    const cfg = {
      zeroquant: true,
      bits_w: 8,
      zeroquant_ffn_bits: 4,
      ...(bitsA < 16 ? { bits_a: bitsA } : {}),
    };
    const applied = await applyQllmConfig(model, resolveQllmConfig(cfg), {});
    for (const n of steps) {
      const t0 = performance.now();
      const r = await lkdBlock(model, applied.model, L - 1, inputs, q48, {
        lr,
        steps: n,
        batchSize: 4,
      });
      const sPerStep = n ? (performance.now() - t0) / 1000 / n : 0;
      const res = await perplexity(r.model, "tinystories", evalOpts);
      push({
        name: `W4/8A${bitsA} ZeroQuant + LKD (last layer, lr ${lr}, ${n} steps, batch 4)`,
        cfg: { ...cfg, lkd_steps: n, lkd_lr: lr },
        effBits: "4 (MLP) / 8",
        ppl: res.ppl,
        seconds: (performance.now() - t0) / 1000,
        secondsPerStep: sPerStep,
        resident: res.resident,
      });
    }
  }
  return out;
}

/** The table as Markdown rows (header included). */
export function waTableMarkdown(rows: WaTableRow[]): string {
  const lines = [
    "| configuration | eff. weight bits | TinyStories ppl | seconds |",
    "|---|---|---|---|",
  ];
  for (const r of rows) {
    const s = r.secondsPerStep !== undefined
      ? `${r.secondsPerStep.toFixed(3)} s/step`
      : r.seconds.toFixed(1);
    lines.push(`| ${r.name} | ${r.effBits} | ${r.ppl.toFixed(4)} | ${s} |`);
  }
  return lines.join("\n");
}
