/**
 * The `kv` and `needle` commands (wired into `src/cli.ts` by the integrator):
 *
 * ```sh
 * quantlab kv ppl <model> --kv kivi --kv-bits 2 [--group-size 32] [--v-group-size 8]
 *   [--residual-length 128] [--prefill-with-quant] [--kv-chunk 1] [--dataset tinystories]
 *   [--seqlen N] [--nsamples N]
 * quantlab kv bytes <model> --kv kivi --kv-bits 2 [--context 512,4096]
 * quantlab kv needle <model> --kv kivi --kv-bits 2 [--contexts 128,256,512]
 *   [--depths 0,0.25,0.5,0.75,1] [--metric accuracy|logProb] [--html out/needle.html]
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { OptionError } from "./errors.ts";
import { perplexity } from "./eval/perplexity.ts";
import { needleEval } from "./eval/needle.ts";
import { loadModel } from "./models/load.ts";
import { cacheBytes, denseCacheBytes, kvLabel, type KVSpec } from "./quant/kv/cache.ts";
import { needleHeatmap } from "./viz/needle_heatmap.ts";
import { show } from "./viz/display.ts";

const OPTIONS = {
  kv: { type: "string" },
  "kv-bits": { type: "string" },
  "group-size": { type: "string" },
  "v-group-size": { type: "string" },
  "residual-length": { type: "string" },
  "prefill-with-quant": { type: "boolean" },
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

/** The KV spec of the parsed flags (`--kv fp` or `--kv kivi` with its knobs). */
export function kvSpecOf(o: Record<string, string | boolean | undefined>): KVSpec {
  const m = (o.kv as string | undefined) ?? "fp";
  if (m === "fp") return { method: "fp" };
  if (m !== "kivi") throw new OptionError("--kv", `must be "fp" or "kivi", got "${m}"`);
  const spec: KVSpec = { method: "kivi" };
  const set = (k: string, v: number | boolean | undefined) => {
    if (v !== undefined) (spec as unknown as Record<string, unknown>)[k] = v;
  };
  set("bits", int("--kv-bits", o["kv-bits"] as string));
  set("groupSize", int("--group-size", o["group-size"] as string));
  set("vGroupSize", int("--v-group-size", o["v-group-size"] as string));
  set("residualLength", int("--residual-length", o["residual-length"] as string));
  set("prefillWithQuant", o["prefill-with-quant"] as boolean | undefined);
  return spec;
}

/** Runs `kv <ppl|bytes|needle> <model> [flags]`; returns the exit code. */
export async function kvCommand(args: string[]): Promise<number> {
  const [sub, path, ...rest] = args;
  if (!sub || !["ppl", "bytes", "needle"].includes(sub) || !path) {
    console.error("usage: kv <ppl|bytes|needle> <model> [--kv fp|kivi --kv-bits N ...]");
    return 2;
  }
  const { values: o } = parseArgs({ args: rest, options: OPTIONS, allowPositionals: false });
  const kv = kvSpecOf(o);
  const model = await loadModel(path);
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
  if (sub === "ppl") {
    const r = await perplexity(model, o.dataset ?? "tinystories", {
      seqlen: int("--seqlen", o.seqlen),
      nsamples: int("--nsamples", o.nsamples),
      kv: kv.method === "fp" ? undefined : kv,
      kvChunk: int("--kv-chunk", o["kv-chunk"]),
    });
    console.log(`${kvLabel(kv)} ${r.dataset} ppl ${r.ppl.toFixed(4)} (${r.windows}×${r.seqlen})`);
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
