/**
 * CLI commands of the task evaluators, for `src/cli.ts` to dispatch (`eval`, `chat`):
 *
 * ```sh
 * deno task cli eval --tasks piqa,arc_easy --limit 100
 * deno task cli eval --tasks mmlu --num-fewshot 5 --method gptq --bits 3 --output out/mmlu.json
 * deno task cli eval kld --method rtn --bits 3 --dataset tinystories
 * deno task cli chat --prompt "Tell me a story" --chat-template "{{ bos_token }}{{ messages[0]['content'] }}" --compare gptq:3
 * ```
 *
 * `--method rtn|gptq --bits B [--group-size G]` evaluates a fake-quantized copy of the model
 * (GPTQ calibrated on 128 TinyStories windows of 256 tokens, seed 0). Exit codes: 0 success,
 * 1 a typed quantlab error (printed), 2 bad usage.
 * @module
 */
import { parseArgs } from "node:util";
import { defaultModelPath } from "./_paths.ts";
import { QuantlabError } from "./errors.ts";
import { chatCompare } from "./eval/chat.ts";
import { resultsMarkdown } from "./eval/evaluate.ts";
import { evaluate } from "./api.ts";
import { kld, kldSummary } from "./eval/kld.ts";
import { loadModel } from "./models/load.ts";
import type { Model } from "./models/model.ts";
import { calibrationSet } from "./quant/pipeline/calibration.ts";
import { gptq } from "./quant/weight_only/gptq.ts";
import { quantize } from "./quant/pipeline/pipeline.ts";
import { rtn } from "./quant/weight_only/rtn.ts";
import { chatSideBySide } from "./viz/chat_view.ts";

const EVAL_USAGE =
  `usage: deno task cli eval --tasks T1,T2 [--model PATH] [--limit N] [--num-fewshot N]
         [--seed S] [--batch N] [--no-reuse] [--max-length N] [--max-gen-toks N]
         [--data-root DIR] [--log-samples] [--output FILE.json] [--bootstrap-iters N]
         [--method rtn|gptq --bits B [--group-size G]] [--force] [--no-ledger]
       deno task cli eval kld --method rtn|gptq --bits B [--group-size G] [--dataset tinystories]
         [--ctx N] [--nsamples N]   (or: eval --kld ...)
tasks: piqa arc_easy arc_challenge hellaswag winogrande boolq openbookqa lambada_openai
       mmlu mmlu_<subject> gsm8k`;

const CHAT_USAGE = `usage: deno task cli chat --prompt TEXT [--system TEXT] [--model PATH]
         [--chat-template JINJA|FILE] [--max-new-tokens N] [--temperature T] [--seed S]
         [--compare rtn:3,gptq:3] [--group-size G]`;

const OPTS = {
  model: { type: "string" },
  tasks: { type: "string" },
  limit: { type: "string" },
  "num-fewshot": { type: "string" },
  seed: { type: "string" },
  batch: { type: "string" },
  "no-reuse": { type: "boolean", default: false },
  "max-length": { type: "string" },
  "max-gen-toks": { type: "string" },
  "data-root": { type: "string" },
  "log-samples": { type: "boolean", default: false },
  output: { type: "string" },
  "bootstrap-iters": { type: "string" },
  method: { type: "string" },
  bits: { type: "string" },
  "group-size": { type: "string" },
  kld: { type: "boolean", default: false },
  dataset: { type: "string", default: "tinystories" },
  ctx: { type: "string" },
  nsamples: { type: "string" },
  prompt: { type: "string" },
  system: { type: "string" },
  "chat-template": { type: "string" },
  "max-new-tokens": { type: "string", default: "64" },
  temperature: { type: "string", default: "0" },
  compare: { type: "string" },
  force: { type: "boolean", default: false },
  "no-ledger": { type: "boolean", default: false },
  help: { type: "boolean", default: false },
} as const;

function num(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new QuantlabError(`--${name}: expected a number, got "${v}"`);
  return n;
}

/** A fake-quantized copy of `model` (rtn or gptq at `bits`), or the model itself. */
async function quantized(
  model: Model,
  method: string | undefined,
  bits: number | undefined,
  groupSize: number | undefined,
): Promise<Model> {
  if (!method) return model;
  if (bits === undefined) throw new QuantlabError("--method needs --bits");
  const gs = groupSize ?? -1;
  if (method === "rtn") return await quantize(model, rtn({ bits, groupSize: gs }), {});
  if (method !== "gptq") throw new QuantlabError(`--method: rtn or gptq, got "${method}"`);
  const calib = await calibrationSet(model, "tinystories", { nsamples: 128, seqlen: 256, seed: 0 });
  return await quantize(model, gptq({ bits, groupSize: gs }), { calib });
}

async function run(fn: () => Promise<number>): Promise<number> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof QuantlabError) {
      console.error(`error: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

function parse(args: string[]) {
  return parseArgs({ args, options: OPTS, allowPositionals: true, strict: true });
}

/** `eval` (and `eval kld`): prints an lm-eval-style table (or KLD statistics); returns the exit code. */
export function evalCommand(args: string[]): Promise<number> {
  return run(async () => {
    let p;
    try {
      p = parse(args);
    } catch (e) {
      console.error(`${(e as Error).message}\n${EVAL_USAGE}`);
      return 2;
    }
    const o = p.values;
    if (o.help) {
      console.log(EVAL_USAGE);
      return 0;
    }
    const isKld = o.kld || p.positionals[0] === "kld";
    if (!isKld && !o.tasks) {
      console.error(`--tasks is required\n${EVAL_USAGE}`);
      return 2;
    }
    const model = await loadModel(o.model ?? await defaultModelPath());
    const qm = await quantized(
      model,
      o.method,
      num(o.bits, "bits"),
      num(o["group-size"], "group-size"),
    );
    if (isKld) {
      if (qm === model) throw new QuantlabError("eval kld needs --method and --bits");
      const r = await kld(model, qm, o.dataset, {
        ctx: num(o.ctx, "ctx"),
        nsamples: num(o.nsamples, "nsamples"),
        root: o["data-root"],
      });
      console.log(kldSummary(r));
      if (o.output) await Deno.writeTextFile(o.output, JSON.stringify(r, null, 2));
      return 0;
    }
    const results = await evaluate(qm, o.tasks!.split(",").map((s) => s.trim()).filter((s) => s), {
      limit: num(o.limit, "limit"),
      numFewshot: num(o["num-fewshot"], "num-fewshot"),
      seed: num(o.seed, "seed"),
      batch: num(o.batch, "batch"),
      reuse: !o["no-reuse"],
      maxLength: num(o["max-length"], "max-length"),
      maxGenToks: num(o["max-gen-toks"], "max-gen-toks"),
      root: o["data-root"],
      logSamples: o["log-samples"],
      bootstrapIters: num(o["bootstrap-iters"], "bootstrap-iters"),
      force: o.force,
      ledger: o["no-ledger"] ? false : undefined,
    });
    const shown = results.filter((r) =>
      !r.task.startsWith("mmlu_") || !results.some((x) => x.subtasks?.includes(r.task)) ||
      results.length < 10
    );
    console.log(resultsMarkdown(shown));
    if (o.output) await Deno.writeTextFile(o.output, JSON.stringify(results, null, 2));
    return 0;
  });
}

/** `chat`: the same prompt to the model and its `--compare` quantized copies, side by side. */
export function chatCommand(args: string[]): Promise<number> {
  return run(async () => {
    let p;
    try {
      p = parse(args);
    } catch (e) {
      console.error(`${(e as Error).message}\n${CHAT_USAGE}`);
      return 2;
    }
    const o = p.values;
    if (o.help) {
      console.log(CHAT_USAGE);
      return 0;
    }
    if (!o.prompt) {
      console.error(`--prompt is required\n${CHAT_USAGE}`);
      return 2;
    }
    const model = await loadModel(o.model ?? await defaultModelPath());
    const models: Record<string, Model> = { fp: model };
    for (const c of (o.compare ?? "").split(",").filter((s) => s)) {
      const [method, b] = c.split(":");
      models[c] = await quantized(
        model,
        method,
        num(b, "compare"),
        num(o["group-size"], "group-size"),
      );
    }
    let template = o["chat-template"];
    if (template && !template.includes("{")) template = await Deno.readTextFile(template);
    const messages = [
      ...(o.system ? [{ role: "system", content: o.system }] : []),
      { role: "user", content: o.prompt },
    ];
    const r = await chatCompare(models, messages, {
      chatTemplate: template,
      maxNewTokens: num(o["max-new-tokens"], "max-new-tokens"),
      temperature: num(o.temperature, "temperature"),
      seed: num(o.seed, "seed"),
    });
    console.log(String(chatSideBySide(r)));
    return 0;
  });
}
