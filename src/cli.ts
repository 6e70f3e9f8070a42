/**
 * A thin CLI over the library: `generate`, `ppl`, `quantize`.
 *
 * ```sh
 * deno task cli generate --prompt "Once upon a time" --max-new-tokens 64
 * deno task cli ppl --dataset tinystories --seqlen 512
 * deno task cli quantize --method gptq --bits 3 --group-size 32 --act-order --eval tinystories
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { defaultModelPath } from "./_paths.ts";
import { generate } from "./eval/generate.ts";
import { perplexity } from "./eval/perplexity.ts";
import { loadModel } from "./models/load.ts";
import { calibrationSet } from "./quant/calibration.ts";
import { gptq } from "./quant/gptq.ts";
import { quantize } from "./quant/pipeline.ts";
import { withF16Scales } from "./quant/f16_grid.ts";
import { exportModel, type ExportOptions } from "./io/export.ts";
import { rtn } from "./quant/rtn.ts";
import { quantease, type QuantEaseInit } from "./quant/quantease.ts";
import { quip, type QuipOptions } from "./quant/quip.ts";
import { framequant } from "./quant/framequant.ts";
import { spqr } from "./quant/spqr.ts";
import { oa } from "./quant/oa.ts";
import { bcq } from "./quant/bcq.ts";
import type { WeightQuantizer } from "./quant/types.ts";
import { QuantlabError } from "./errors.ts";

const USAGE = `usage: deno task cli <command> [options]
commands:
  generate  --model PATH --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]
  sweep     run|submit|status|collect SPEC.json (see: sweep --help)
  ppl       --model PATH --dataset NAME [--seqlen N] [--nsamples N] [--data-path FILE]
  quantize  --model PATH --method rtn|gptq|quantease|quip|framequant|spqr|oa|bcq --bits B [--group-size G]
            [--sym] [--act-order] [--static-groups] [--percdamp D] [--calib NAME] [--nsamples N]
            [--seqlen N] [--seed S] [--workdir DIR] [--eval NAME] [--no-true-sequential]
            quantease: [--num-iter N] [--init rtn|gptq|weight] [--outlier F] [--structure-outlier]
            quip:      [--quip-method ldlq|ldlqRG|allbal|ldlbal_admm] [--npasses N]
                       [--no-incoh] [--proj kron|hadamard]
            framequant: [--redundancy R]
            spqr:      [--qq-scale-bits B] [--qq-zero-bits B] [--qq-group-size G] [--round-zero]
                       [--outlier-threshold T] [--simplified-outliers] (--act-order = act_order)
            oa:        [--per-out-dim] [--block-size N] [--outlier-mode] [--offset-mode]
                       [--qq-scale-bits B] [--qq-zero-bits B] [--qq-zero-sym] [--qq-group-size G]
                       [--nearest] [--baseline]   (--bits is wbits; --sym for offset mode)
            bcq:       [--rounds N] [--no-bst]
            export:    [--f16-scales] [--save DIR --format gguf [--gguf-type auto|f32|f16|q8_0|q4_0|q4_1]
                       [--overwrite]]
--model defaults to stories260K (../shared/data, else the hub).`;

const OPTIONS = {
  model: { type: "string" },
  tokenizer: { type: "string" },
  prompt: { type: "string", default: "Once upon a time" },
  "max-new-tokens": { type: "string", default: "64" },
  temperature: { type: "string", default: "0" },
  "top-p": { type: "string", default: "1" },
  seed: { type: "string", default: "0" },
  dataset: { type: "string", default: "tinystories" },
  "data-path": { type: "string" },
  seqlen: { type: "string" },
  nsamples: { type: "string" },
  method: { type: "string", default: "gptq" },
  bits: { type: "string", default: "4" },
  "group-size": { type: "string", default: "-1" },
  sym: { type: "boolean", default: false },
  "act-order": { type: "boolean", default: false },
  "static-groups": { type: "boolean", default: false },
  percdamp: { type: "string", default: "0.01" },
  calib: { type: "string", default: "tinystories" },
  workdir: { type: "string" },
  save: { type: "string" },
  format: { type: "string", default: "gguf" },
  "gguf-type": { type: "string", default: "auto" },
  "f16-scales": { type: "boolean", default: false },
  overwrite: { type: "boolean", default: false },
  eval: { type: "string" },
  "no-true-sequential": { type: "boolean", default: false },
  "num-iter": { type: "string" },
  init: { type: "string" },
  outlier: { type: "string" },
  "structure-outlier": { type: "boolean", default: false },
  "quip-method": { type: "string" },
  npasses: { type: "string" },
  "no-incoh": { type: "boolean", default: false },
  proj: { type: "string" },
  redundancy: { type: "string" },
  "qq-scale-bits": { type: "string" },
  "qq-zero-bits": { type: "string" },
  "qq-group-size": { type: "string" },
  "qq-zero-sym": { type: "boolean", default: false },
  "round-zero": { type: "boolean", default: false },
  "outlier-threshold": { type: "string" },
  "simplified-outliers": { type: "boolean", default: false },
  "per-out-dim": { type: "boolean", default: false },
  "block-size": { type: "string" },
  "outlier-mode": { type: "boolean", default: false },
  "offset-mode": { type: "boolean", default: false },
  nearest: { type: "boolean", default: false },
  baseline: { type: "boolean", default: false },
  rounds: { type: "string" },
  "no-bst": { type: "boolean", default: false },
  help: { type: "boolean", default: false },
} as const;

function num(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new QuantlabError(`expected a number, got "${v}"`);
  return n;
}

/** Runs the CLI with `args`; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const [cmd, ...rest] = args;
  if (cmd === "sweep") {
    const { sweepCommand } = await import("./ledger/sweep_cli.ts");
    return await sweepCommand(rest);
  }
  const { values: o } = parseArgs({ args: rest, options: OPTIONS, allowPositionals: false });
  if (!cmd || o.help || !["generate", "ppl", "quantize"].includes(cmd)) {
    console.log(USAGE);
    return cmd && !o.help ? 2 : 0;
  }
  const model = await loadModel(o.model ?? (await defaultModelPath()), { tokenizer: o.tokenizer });
  if (cmd === "generate") {
    const r = await generate(model, o.prompt, {
      maxNewTokens: num(o["max-new-tokens"]),
      temperature: num(o.temperature),
      topP: num(o["top-p"]),
      seed: num(o.seed),
    });
    console.log(r.text);
    console.error(`(${r.ids.length} tokens, ${r.tokensPerSecond.toFixed(1)} tokens/s)`);
    return 0;
  }
  if (cmd === "ppl") {
    const r = await perplexity(model, o.dataset, {
      seqlen: num(o.seqlen),
      nsamples: num(o.nsamples),
      path: o["data-path"],
    });
    console.log(
      `${r.dataset}: ppl ${
        r.ppl.toFixed(4)
      } (${r.windows} windows × ${r.seqlen}, ${r.tokens} tokens, ${
        r.seconds.toFixed(1)
      } s; ${r.source})`,
    );
    return 0;
  }
  const common = {
    bits: num(o.bits)!,
    groupSize: num(o["group-size"]),
    sym: o.sym,
  };
  const gptqLike = {
    ...common,
    actOrder: o["act-order"],
    staticGroups: o["static-groups"],
    percdamp: num(o.percdamp),
  };
  const makers: Record<string, () => WeightQuantizer> = {
    rtn: () => rtn(common),
    gptq: () => gptq(gptqLike),
    quantease: () =>
      quantease({
        ...gptqLike,
        numIter: num(o["num-iter"]),
        init: o.init as QuantEaseInit | undefined,
        outlier: num(o.outlier),
        structureOutlier: o["structure-outlier"],
      }),
    quip: () =>
      quip({
        bits: common.bits,
        method: o["quip-method"] as QuipOptions["method"],
        npasses: num(o.npasses),
        incoh: !o["no-incoh"],
        proj: o.proj as QuipOptions["proj"],
        percdamp: num(o.percdamp),
      }),
    framequant: () => framequant({ ...gptqLike, r: num(o.redundancy) }),
    spqr: () =>
      spqr({
        bits: common.bits,
        groupSize: common.groupSize,
        sym: common.sym,
        percdamp: num(o.percdamp),
        permutationOrder: o["act-order"] ? "act_order" : "identity",
        qqScaleBits: num(o["qq-scale-bits"]),
        qqZeroBits: num(o["qq-zero-bits"]),
        qqGroupSize: num(o["qq-group-size"]),
        qqZeroSym: o["qq-zero-sym"],
        roundZero: o["round-zero"],
        outlierRelativeThreshold: num(o["outlier-threshold"]),
        simplifiedOutliers: o["simplified-outliers"],
      }),
    oa: () =>
      oa({
        wbits: common.bits,
        sym: common.sym,
        perOutDim: o["per-out-dim"],
        blockSize: num(o["block-size"]),
        outlierMode: o["outlier-mode"],
        offsetMode: o["offset-mode"],
        qqScaleBits: num(o["qq-scale-bits"]),
        qqZeroBits: num(o["qq-zero-bits"]),
        qqZeroSym: o["qq-zero-sym"],
        qqGroupSize: num(o["qq-group-size"]),
        nearest: o.nearest,
        baseline: o.baseline,
        percdamp: num(o.percdamp),
        trueSequential: !o["no-true-sequential"],
      }),
    bcq: () =>
      bcq({
        bits: common.bits,
        groupSize: common.groupSize,
        rounds: num(o.rounds),
        useBst: !o["no-bst"],
        partialGroups: true,
      }),
  };
  const make = makers[o.method];
  if (!make) {
    throw new QuantlabError(
      `--method: unknown method "${o.method}" (${Object.keys(makers).join(", ")})`,
    );
  }
  const q = o["f16-scales"] ? withF16Scales(make()) : make();
  const calib = q.needsHessian
    ? await calibrationSet(model, o.calib, {
      nsamples: num(o.nsamples) ?? 128,
      seqlen: num(o.seqlen) ?? Math.min(256, model.config.maxPositions),
      seed: num(o.seed),
    })
    : undefined;
  const qm = await quantize(model, q, {
    calib,
    workdir: o.workdir,
    trueSequential: !o["no-true-sequential"],
    onProgress: (p) => p.stage === "block" && console.error(`${p.info} (${p.done}/${p.total})`),
  });
  const rep = qm.report;
  console.log(
    `${q.name}: ${rep.layers.length} layers, ${rep.bitsPerWeight.toFixed(3)} bits/weight, ${
      rep.seconds.toFixed(1)
    } s, peak RSS ${rep.peakRssMiB.toFixed(0)} MiB`,
  );
  if (o.save) {
    const ex = await exportModel(qm, o.save, {
      format: o.format as ExportOptions["format"],
      type: o["gguf-type"] as ExportOptions["type"],
      overwrite: o.overwrite,
    });
    console.log(`saved ${ex.format} to ${ex.dir} (${ex.files.join(", ")})`);
    for (const n of ex.notes) console.log(`  note: ${n}`);
  }
  if (o.eval) {
    const r = await perplexity(qm, o.eval, { seqlen: num(o.seqlen) });
    console.log(`${r.dataset}: ppl ${r.ppl.toFixed(4)}`);
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof QuantlabError || (e as Error).name === "TypeError") {
      console.error(`error: ${(e as Error).message}`);
      Deno.exit(1);
    }
    throw e;
  }
}
