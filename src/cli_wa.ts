/**
 * The weight-activation CLI command (issue 14): a qllm-infer configuration (seed 003) given as
 * flags named as the seed's knobs (`--bits_a 8 --a_per_token --smoothquant --smoothquant_alpha
 * 0.55`, or `--bits_a=8`), or as a file in the seed's shell-variable form (`--config run.sh`,
 * `bits_a=8` lines, so a qllm-infer script block pastes as is; flags override the file), is
 * applied to a model (`applyQllmConfig`) and its perplexity printed, with the effective
 * settings, SmoothQuant's calibration as used and LLM.int8()'s outlier dimensions per layer;
 * `--analyze_stats` / `--get_layerwise_distance` add the seed's analysis records
 * (`src/eval/wa_analysis.ts`) on 2 windows of 256 tokens.
 *
 * Other flags: `--model PATH` (default stories260K), `--dataset NAME` (evaluation and, for
 * SmoothQuant/GPTQ, calibration: default tinystories, since the seed's "pile" is not shipped),
 * `--nsamples N` windows, `--seqlen N` (default `eval_ppl_seqlen` capped at the context),
 * `--workdir DIR` (resume folder of the weight quantization), `--host-hooks` (QRazor / ZeroQuant
 * activations and LLM.int8() as host JS hooks instead of specs: the escape hatch, host forward
 * only), `--json` (one JSON object), `--help`. Every knob runs as a quantizer spec by default,
 * so on WebGPU the evaluation stays GPU-resident (except with `bits_s` / `s_qrazor`).
 * @module
 */
import { parseArgs } from "node:util";
import { defaultModelPath } from "./_paths.ts";
import { perplexity } from "./eval/perplexity.ts";
import { loadModel } from "./models/load.ts";
import {
  applyQllmConfig,
  nearestKey,
  parseQllmFlags,
  QLLM_KEYS,
  resolveQllmConfig,
} from "./quant/pipeline/qllm_config.ts";
import { qrazorEffectiveBits } from "./quant/weight_activation/qrazor.ts";
import { calibrationSet } from "./quant/pipeline/calibration.ts";
import { analyzeStats, layerwiseDistance } from "./eval/wa_analysis.ts";
import { OptionError } from "./errors.ts";
import { llmInt8 } from "./quant/weight_activation/llm_int8.ts";
import { forward } from "./models/decoder.ts";

const WA_FLAGS = [
  "model",
  "dataset",
  "nsamples",
  "seqlen",
  "json",
  "help",
  "workdir",
  "host-hooks",
];

const USAGE = `usage: quantlab wa [--config FILE] [--<qllm key> VALUE ...] [--model PATH]
                   [--dataset NAME] [--nsamples N] [--seqlen N] [--workdir DIR] [--host-hooks] [--json]
qllm keys (seed 003): ${QLLM_KEYS.join(", ")}`;

/** Runs the `wa` command with `args` (after the command name); returns the exit code. */
export async function waCommand(args: string[]): Promise<number> {
  const { config, rest } = await parseQllmFlags(args);
  for (const a of rest) {
    const m = /^--([^=]+)/.exec(a);
    if (m && !WA_FLAGS.includes(m[1])) {
      const near = nearestKey(m[1], [...QLLM_KEYS, ...WA_FLAGS]);
      throw new OptionError(m[1], `unknown flag${near ? ` (did you mean "${near}"?)` : ""}`);
    }
  }
  const { values: o } = parseArgs({
    args: rest,
    options: {
      model: { type: "string" },
      dataset: { type: "string", default: "tinystories" },
      nsamples: { type: "string" },
      seqlen: { type: "string" },
      json: { type: "boolean", default: false },
      workdir: { type: "string" },
      "host-hooks": { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    allowPositionals: false,
  });
  if (o.help) {
    console.log(USAGE);
    return 0;
  }
  const c = resolveQllmConfig(config);
  const model = await loadModel(o.model ?? (await defaultModelPath()));
  const log = o.json ? undefined : (s: string) => console.error(s);
  const applied = await applyQllmConfig(model, c, {
    calibDataset: o.dataset,
    log,
    workdir: o.workdir,
    hostHooks: o["host-hooks"],
  });
  const seqlen = o.seqlen
    ? Number(o.seqlen)
    : Math.min(c.eval_ppl_seqlen, model.config.maxPositions);
  const r = await perplexity(applied.model, o.dataset, {
    seqlen,
    nsamples: o.nsamples ? Number(o.nsamples) : undefined,
  });
  const effBits = c.bits_w >= 16
    ? 16
    : c.w_qrazor
    ? qrazorEffectiveBits({ qBit: c.bits_w, rBit: c.w_qrazor_bits, group: c.w_qrazor_group })
    : c.bits_w;
  // LLM.int8() runs as a product spec: its outlier dimensions come from one host pass with the
  // reporting hook over the first window of the dataset (the eval's own with --host-hooks).
  let report = applied.llmInt8;
  if (c.llm_int8 && !report) {
    const win = await calibrationSet(model, o.dataset, { nsamples: 1, seqlen });
    const r = llmInt8(applied.model, { threshold: c.llm_int8_threshold });
    await forward(r.model, win.ids[0], { hooks: r.model.hooks });
    report = r.report;
  }
  const outliers = report
    ? Object.fromEntries(
      [...report.outliers].map(([k, s]) => [k, [...s].sort((a, b) => a - b)]),
    )
    : undefined;
  const changed = Object.fromEntries(Object.keys(config).map((k) => [k, c[k as keyof typeof c]]));
  // The seed's analysis switches: on 2 windows of 256 tokens drawn from the dataset (seed 0).
  let stats, distance;
  if (c.analyze_stats || c.get_layerwise_distance) {
    const win = await calibrationSet(model, o.dataset, {
      nsamples: 2,
      seqlen: Math.min(256, seqlen),
    });
    if (c.analyze_stats) stats = await analyzeStats(model, applied.model, win.ids);
    if (c.get_layerwise_distance) {
      distance = await layerwiseDistance(model, applied.model, win.ids[0]);
    }
  }
  if (o.json) {
    console.log(JSON.stringify({
      analyzeStats: stats,
      layerwiseDistance: distance,
      config: changed,
      ppl: r.ppl,
      windows: r.windows,
      seqlen: r.seqlen,
      dataset: r.source,
      effectiveWeightBits: effBits,
      smoothquant: applied.smoothquant,
      gptq: applied.gptq,
      llmInt8Outliers: outliers,
    }));
    return 0;
  }
  console.log(`config: ${JSON.stringify(changed)}`);
  console.log(`effective weight bits: ${effBits}`);
  if (outliers) {
    for (const [k, v] of Object.entries(outliers)) {
      if (v.length) console.log(`outliers ${k}: [${v}]`);
    }
  }
  for (const x of stats ?? []) {
    console.log(
      `${x.name}: SQNR x ${x.sqnr.x.toFixed(1)} dB, w ${x.sqnr.w.toFixed(1)} dB, out ${
        x.sqnr.out.toFixed(1)
      } dB; ` +
        `|x|max ${x.input.absmax.toFixed(2)} kurtosis ${
          x.input.kurtosis.toFixed(1)
        } outlier channels ${x.input.outlierChannels.length}`,
    );
  }
  for (const d of distance ?? []) {
    console.log(
      `block ${d.block}: relative L2 ${d.relL2.toExponential(3)}, cosine ${d.cosine.toFixed(5)}`,
    );
  }
  console.log(
    `${r.dataset}: ppl ${r.ppl.toFixed(4)} (${r.windows} windows × ${r.seqlen}, ${
      r.seconds.toFixed(1)
    } s)`,
  );
  return 0;
}
