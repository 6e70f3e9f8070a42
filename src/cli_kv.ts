/**
 * The `kv` and `needle` commands (wired into `src/cli.ts` by the integrator):
 *
 * ```sh
 * quantlab kv ppl <model> --kv kivi --kv-bits 2 [--group-size 32] [--v-group-size 8]
 *   [--residual-length 128] [--prefill-with-quant] [--kv-chunk 1] [--dataset tinystories]
 *   [--seqlen N] [--nsamples N] [--w-bits 4 [--w-method gptq|rtn]]
 * quantlab kv ppl <model> --kv kvquant --kv-bits 2 [--kv-sparsity 0.99] [--first-few-fp16 1]
 *   [--post-rope] [--uniform-grid] [--dense-only] [--sensitivity uniform|activation]
 *   [--k-codebook layer|channel] [--kv-quantizer FILE | --calib-dataset D --calib-nsamples 16
 *   --calib-seqlen N] [--save-quantizer FILE] ...
 * quantlab kv bytes <model> --kv kivi --kv-bits 2 [--context 512,4096]
 * quantlab kv needle <model> --kv kivi --kv-bits 2 [--contexts 128,256,512]
 *   [--depths 0,0.25,0.5,0.75,1] [--metric accuracy|logProb] [--html out/needle.html]
 * ```
 *
 * KVQuant needs a quantizer: `--kv-quantizer FILE` loads one (`loadKvQuantizer`), else it is
 * calibrated on `--calib-dataset` (default: `--dataset`, i.e. tinystories) and, with
 * `--save-quantizer FILE`, written there. `--w-bits B` quantizes the weights first (GPTQ by
 * default, on 128 TinyStories windows of 256 tokens; RTN with `--w-method rtn`), so a weight method
 * and a KV method run together.
 * @module
 */
import { parseArgs } from "node:util";
import { OptionError } from "./errors.ts";
import { perplexity } from "./eval/perplexity.ts";
import { needleEval } from "./eval/needle.ts";
import { loadModel } from "./models/load.ts";
import { cacheBytes, denseCacheBytes, kvLabel, type KVSpec } from "./quant/kv/cache.ts";
import { loadKvQuantizer, saveKvQuantizer } from "./quant/kv/kvquant.ts";
import { calibrateKvQuant } from "./quant/pipeline/kv_calibration.ts";
import { calibrationSet } from "./quant/pipeline/calibration.ts";
import { quantize } from "./quant/pipeline/pipeline.ts";
import { gptq } from "./quant/weight_only/gptq.ts";
import { rtn } from "./quant/weight_only/rtn.ts";
import type { Model } from "./models/model.ts";
import { needleHeatmap } from "./viz/needle_heatmap.ts";
import { show } from "./viz/display.ts";

const OPTIONS = {
  kv: { type: "string" },
  "kv-bits": { type: "string" },
  "group-size": { type: "string" },
  "v-group-size": { type: "string" },
  "residual-length": { type: "string" },
  "prefill-with-quant": { type: "boolean" },
  "kv-sparsity": { type: "string" },
  "first-few-fp16": { type: "string" },
  "post-rope": { type: "boolean" },
  "uniform-grid": { type: "boolean" },
  "dense-only": { type: "boolean" },
  sensitivity: { type: "string" },
  "k-codebook": { type: "string" },
  "kv-quantizer": { type: "string" },
  "save-quantizer": { type: "string" },
  "calib-dataset": { type: "string" },
  "calib-nsamples": { type: "string" },
  "calib-seqlen": { type: "string" },
  "w-bits": { type: "string" },
  "w-method": { type: "string" },
  "kv-chunk": { type: "string" },
  dataset: { type: "string" },
  seqlen: { type: "string" },
  nsamples: { type: "string" },
  context: { type: "string" },
  contexts: { type: "string" },
  depths: { type: "string" },
  metric: { type: "string" },
  html: { type: "string" },
} as const;

function int(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new OptionError(name, `must be an integer, got "${v}"`);
  return n;
}

function list(name: string, v: string | undefined): number[] | undefined {
  if (v === undefined) return undefined;
  const xs = v.split(",").map(Number);
  if (xs.some((x) => !Number.isFinite(x))) {
    throw new OptionError(name, `must be comma-separated numbers, got "${v}"`);
  }
  return xs;
}

function num(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new OptionError(name, `must be a number, got "${v}"`);
  return n;
}

/**
 * The KV spec of the parsed flags (`--kv fp`, `--kv kivi` or `--kv kvquant` with their knobs);
 * a KVQuant spec has no quantizer yet ({@linkcode withKvQuantizer} attaches one).
 */
export function kvSpecOf(o: Record<string, string | boolean | undefined>): KVSpec {
  const m = (o.kv as string | undefined) ?? "fp";
  if (m === "fp") return { method: "fp" };
  if (m !== "kivi" && m !== "kvquant") {
    throw new OptionError("--kv", `must be "fp", "kivi" or "kvquant", got "${m}"`);
  }
  const spec = { method: m } as KVSpec;
  const set = (k: string, v: number | boolean | undefined) => {
    if (v !== undefined) (spec as unknown as Record<string, unknown>)[k] = v;
  };
  if (m === "kvquant") {
    set("bits", int("--kv-bits", o["kv-bits"] as string));
    set("sparsityThreshold", num("--kv-sparsity", o["kv-sparsity"] as string));
    set("firstFewFp16", int("--first-few-fp16", o["first-few-fp16"] as string));
    if (o["post-rope"]) set("preRope", false);
    if (o["uniform-grid"]) set("nuq", false);
    if (o["dense-only"]) set("includeSparse", false);
    set("prefillWithQuant", o["prefill-with-quant"] as boolean | undefined);
    return spec;
  }
  set("bits", int("--kv-bits", o["kv-bits"] as string));
  set("groupSize", int("--group-size", o["group-size"] as string));
  set("vGroupSize", int("--v-group-size", o["v-group-size"] as string));
  set("residualLength", int("--residual-length", o["residual-length"] as string));
  set("prefillWithQuant", o["prefill-with-quant"] as boolean | undefined);
  return spec;
}

/**
 * `spec` with its KVQuant quantizer: loaded from `--kv-quantizer`, else calibrated on the model
 * (and saved to `--save-quantizer`). Other specs are returned as they are.
 */
export async function withKvQuantizer(
  model: Model,
  spec: KVSpec,
  o: Record<string, string | boolean | undefined>,
): Promise<KVSpec> {
  if (spec.method !== "kvquant" || spec.bits === 16) return spec;
  if (o["kv-quantizer"]) {
    return { ...spec, quantizer: await loadKvQuantizer(o["kv-quantizer"] as string) };
  }
  const sens = o.sensitivity as string | undefined;
  const kcb = o["k-codebook"] as string | undefined;
  const quantizer = await calibrateKvQuant(model, {
    bits: spec.bits,
    nuq: spec.nuq,
    includeSparse: spec.includeSparse,
    sparsityThreshold: spec.sparsityThreshold,
    firstFewFp16: spec.firstFewFp16,
    preRope: spec.preRope,
    sensitivity: sens as "uniform" | "activation" | undefined,
    kCodebook: kcb as "layer" | "channel" | undefined,
    dataset: (o["calib-dataset"] ?? o.dataset ?? "tinystories") as string,
    nsamples: int("--calib-nsamples", o["calib-nsamples"] as string),
    seqlen: int("--calib-seqlen", o["calib-seqlen"] as string),
  });
  if (o["save-quantizer"]) await saveKvQuantizer(o["save-quantizer"] as string, quantizer);
  return { ...spec, quantizer };
}

/** `model` with its weights quantized per `--w-bits` / `--w-method` (unchanged without them). */
async function withWeights(
  model: Model,
  o: Record<string, string | boolean | undefined>,
): Promise<Model> {
  const bits = int("--w-bits", o["w-bits"] as string);
  if (bits === undefined || bits === 16) return model;
  const method = (o["w-method"] as string | undefined) ?? "gptq";
  if (method === "rtn") return quantize(model, rtn({ bits }));
  if (method !== "gptq") {
    throw new OptionError("--w-method", `must be "gptq" or "rtn", got "${method}"`);
  }
  const calib = await calibrationSet(model, "tinystories", { nsamples: 128, seqlen: 256 });
  return quantize(model, gptq({ bits }), { calib });
}

/** Runs `kv <ppl|bytes|needle> <model> [flags]`; returns the exit code. */
export async function kvCommand(args: string[]): Promise<number> {
  const [sub, path, ...rest] = args;
  if (!sub || !["ppl", "bytes", "needle"].includes(sub) || !path) {
    console.error("usage: kv <ppl|bytes|needle> <model> [--kv fp|kivi|kvquant --kv-bits N ...]");
    return 2;
  }
  const { values: o } = parseArgs({ args: rest, options: OPTIONS, allowPositionals: false });
  let kv = kvSpecOf(o);
  let model = await loadModel(path);
  const cfg = model.config;
  if (sub === "bytes") {
    for (const n of list("--context", o.context) ?? [cfg.maxPositions]) {
      const b = cacheBytes(cfg, kv, n);
      console.log(
        `${kvLabel(kv)} n=${n}: ${b} B (${(b / n / cfg.numLayers).toFixed(1)} B/token/layer);` +
          ` f32 ${denseCacheBytes(cfg, n)} B, f16 ${denseCacheBytes(cfg, n, 2)} B`,
      );
    }
    return 0;
  }
  model = await withWeights(model, o);
  kv = await withKvQuantizer(model, kv, o);
  const wLabel = o["w-bits"] ? `W${o["w-bits"]} ${o["w-method"] ?? "gptq"} + ` : "";
  if (sub === "ppl") {
    const r = await perplexity(model, o.dataset ?? "tinystories", {
      seqlen: int("--seqlen", o.seqlen),
      nsamples: int("--nsamples", o.nsamples),
      kv: kv.method === "fp" ? undefined : kv,
      kvChunk: int("--kv-chunk", o["kv-chunk"]),
    });
    console.log(
      `${wLabel}${kvLabel(kv)} ${r.dataset} ppl ${r.ppl.toFixed(4)} (${r.windows}×${r.seqlen})`,
    );
    return 0;
  }
  const metric = (o.metric ?? "accuracy") as "accuracy" | "logProb";
  const r = await needleEval(model, {
    kv: kv.method === "fp" ? undefined : kv,
    contextLengths: list("--contexts", o.contexts),
    depths: list("--depths", o.depths),
  });
  for (let i = 0; i < r.contextLengths.length; i++) {
    console.log(
      `${r.contextLengths[i]}: acc ${r.accuracy[i].map((x) => x.toFixed(2)).join(" ")}` +
        ` | logp ${r.logProb[i].map((x) => x.toFixed(2)).join(" ")}`,
    );
  }
  if (o.html) await show(needleHeatmap([r], { metric }), { file: o.html });
  return 0;
}
