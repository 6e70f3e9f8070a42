/**
 * Config and option sweeps of the fuzz suite, shared by `deno task fuzz` and the CI test.
 *
 * - config.json: every field of stories260K's config (and the fields the forward reads when
 *   present) set to odd values, plus odd model types and roots. An independent oracle
 *   ({@linkcode configValid}) says whether the config is valid *for this checkpoint*; a valid one
 *   must load and give the reference perplexity (or, for the fields in `COMPUTE_FIELDS` that
 *   legitimately change the numbers, a finite one); an invalid one must be a typed error.
 * - options: every option of every quantizer (and typos) set to odd values; a value of the wrong
 *   type (independent type table `TYPES`) must be an OptionError; anything accepted must quantize
 *   a small layer to finite values in < 5 s.
 * @module
 */
import { OptionError, QuantlabError } from "../../src/errors.ts";
import { perplexity } from "../../src/eval/perplexity.ts";
import { forward } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import { framequant } from "../../src/quant/weight_only/framequant.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";
import { quantease } from "../../src/quant/weight_only/quantease.ts";
import { quip } from "../../src/quant/weight_only/quip.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import type { WeightQuantizer } from "../../src/quant/core/types.ts";
import { Rng } from "../_rng.ts";

const MODEL = new URL("../../../shared/data/models/stories260K-hf", import.meta.url).pathname;

/** One sweep's result. */
export interface Sweep {
  /** Title for reports. */
  title: string;
  /** Cases per outcome class. */
  counts: Record<string, number>;
  /** The classes that are failures. */
  failures: Set<string>;
  /** Up to 10 failing cases. */
  examples: string[];
}

/** The independent oracle: is `c` a valid config for the stories260K checkpoint? */
export function configValid(c: unknown): boolean {
  if (c === null || typeof c !== "object" || Array.isArray(c)) return false;
  const j = c as Record<string, unknown>;
  const has = (k: string) => Object.hasOwn(j, k);
  const isInt = (v: unknown) => typeof v === "number" && Number.isInteger(v);
  if (j.model_type !== "llama" && j.model_type !== "mistral") return false;
  const exact: Record<string, number> = {
    hidden_size: 64,
    intermediate_size: 172,
    num_hidden_layers: 5,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    vocab_size: 512,
  };
  for (const [k, v] of Object.entries(exact)) if (j[k] !== v) return false;
  const mp = j.max_position_embeddings;
  if (!(isInt(mp) && (mp as number) >= 1 && (mp as number) <= 2 ** 24)) return false;
  const posFinite = (k: string, hi = Infinity) =>
    !has(k) || (typeof j[k] === "number" && (j[k] as number) > 0 && (j[k] as number) < hi &&
      Number.isFinite(j[k]));
  if (!posFinite("rms_norm_eps", 1) || !posFinite("rope_theta")) return false;
  if (has("hidden_act") && j.hidden_act !== null && j.hidden_act !== "silu") return false;
  if (j.tie_word_embeddings !== true) return false;
  for (const k of ["attention_bias", "mlp_bias"]) if (has(k) && j[k] !== false) return false;
  if (has("use_sliding_window") && typeof j.use_sliding_window !== "boolean") return false;
  for (const k of ["bos_token_id", "eos_token_id"]) {
    const v = j[k];
    const ok = (x: unknown) => isInt(x) && (x as number) >= 0;
    if (has(k) && !(v === null || ok(v) || (Array.isArray(v) && v.length > 0 && v.every(ok)))) {
      return false;
    }
  }
  if (has("sliding_window") && j.sliding_window !== null) {
    const w = j.sliding_window;
    if (!(isInt(w) && (w as number) >= 1 && (w as number) <= 2 ** 24)) return false;
  }
  if (has("head_dim") && j.head_dim !== null && j.head_dim !== 8) return false;
  if (has("rope_scaling") && j.rope_scaling !== null) {
    const r = j.rope_scaling;
    if (typeof r !== "object" || Array.isArray(r)) return false;
    const rs = r as Record<string, unknown>;
    const t = rs.rope_type ?? rs.type ?? "default";
    if (!["default", "linear", "llama3"].includes(String(t))) return false;
    if (t === "linear" && !(typeof rs.factor === "number" && rs.factor > 0)) return false;
  }
  return true;
}

/** Fields whose valid values legitimately change the numbers (a changed perplexity is fine). */
const COMPUTE_FIELDS = new Set(["rms_norm_eps", "rope_theta", "sliding_window", "rope_scaling"]);

/**
 * Every config case (module doc): returns the count per outcome class, the failure classes and
 * up to 10 failing examples. `measure: "ppl"` compares perplexity on `pplOpts` windows of
 * tinystories with the reference's; `"logits"` (the CI setting, faster) compares the logits of one
 * fixed 64-token window bit for bit — identical logits imply an identical perplexity.
 */
export async function configSweep(
  pplOpts: { nsamples: number; seqlen: number } = { nsamples: 2, seqlen: 128 },
  measure: "ppl" | "logits" = "ppl",
): Promise<Sweep> {
  const base = JSON.parse(await Deno.readTextFile(`${MODEL}/config.json`));
  const ref = await loadModel(MODEL);
  const ids = Array.from({ length: 64 }, (_, i) => (i * 37 + 1) % 512);
  const score = async (m: Model): Promise<number[]> =>
    measure === "ppl"
      ? [(await perplexity(m, "tinystories", pplOpts)).ppl]
      : [...(await forward(m, ids)).data];
  const refScore = await score(ref);
  const refPpl = refScore[0];
  const odd: unknown[] = [0, -1, 2.5, 1e7, 1e308, "5", null, true, [], {}, -1e-5, [1], "toString"];
  const fields = [
    ...Object.keys(base),
    "attention_bias",
    "mlp_bias",
    "sliding_window",
    "use_sliding_window",
    "rope_scaling",
    "head_dim",
  ];
  const cases: { label: string; field: string; cfg: unknown }[] = [];
  for (const f of fields) {
    cases.push({ label: `${f} deleted`, field: f, cfg: { ...base, [f]: undefined } });
    for (const v of odd) {
      cases.push({ label: `${f}: ${JSON.stringify(v)}`, field: f, cfg: { ...base, [f]: v } });
    }
  }
  for (const t of ["toString", "constructor", "__proto__", "mistral", "qwen2", "opt", "LLAMA"]) {
    cases.push({ label: `model_type ${t}`, field: "model_type", cfg: { ...base, model_type: t } });
  }
  cases.push({
    label: "mistral + sliding_window 16",
    field: "sliding_window",
    cfg: { ...base, model_type: "mistral", sliding_window: 16 },
  });
  cases.push({
    label: "rope_scaling linear 2",
    field: "rope_scaling",
    cfg: { ...base, rope_scaling: { type: "linear", factor: 2 } },
  });
  for (const root of [null, [], "x", 3]) {
    cases.push({ label: `root ${JSON.stringify(root)}`, field: "(root)", cfg: root });
  }
  const counts: Record<string, number> = {};
  const ex: string[] = [];
  const dir = await Deno.makeTempDir({ prefix: "quantlab_fuzzcfg_" });
  await Deno.symlink(`${MODEL}/model.safetensors`, `${dir}/model.safetensors`);
  try {
    for (const c of cases) {
      await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(c.cfg));
      const valid = configValid(JSON.parse(JSON.stringify(c.cfg)));
      let o: string;
      try {
        const m = await loadModel(dir, { tokenizer: ref.tokenizerPath });
        if (!valid) o = "accepted-invalid";
        else {
          const got = await score(m);
          const p = got.every(Number.isFinite) ? 0 : NaN;
          o = got.length === refScore.length && got.every((x, i) => Object.is(x, refScore[i]))
            ? "loads, reference numbers"
            : COMPUTE_FIELDS.has(c.field) && Number.isFinite(p)
            ? "loads, numbers changed (valid value)"
            : "loads, wrong numbers";
        }
      } catch (e) {
        o = !(e instanceof QuantlabError) ? "untyped" : valid ? "refused-valid" : "refused-typed";
      }
      counts[o] = (counts[o] ?? 0) + 1;
      if (["untyped", "accepted-invalid", "loads, wrong numbers", "refused-valid"].includes(o)) {
        if (ex.length < 10) ex.push(`${c.label}: ${o}`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return {
    title: measure === "ppl"
      ? `config.json cases (reference ppl ${refPpl.toFixed(4)})`
      : "config.json cases (logits of one window vs the reference)",
    counts,
    failures: new Set(["untyped", "accepted-invalid", "loads, wrong numbers", "refused-valid"]),
    examples: ex,
  };
}

// deno-lint-ignore no-explicit-any
type Factory = (o: any) => WeightQuantizer;
/** The independent type oracle of each option (ranges are left to the methods). */
const TYPES: Record<string, (v: unknown) => boolean> = {
  bool: (v) => typeof v === "boolean",
  int: (v) => typeof v === "number" && Number.isInteger(v),
  num: (v) => typeof v === "number" && Number.isFinite(v),
  mse: (v) => typeof v === "boolean" || (v !== null && typeof v === "object" && !Array.isArray(v)),
  obj: (v) => v !== null && typeof v === "object" && !Array.isArray(v),
  str: (v) => typeof v === "string",
  clip: (v) => v === false || (typeof v === "number" && Number.isFinite(v)),
};
const GRID = { bits: "int", groupSize: "int", sym: "bool", mse: "mse", partialGroups: "bool" };
const GPTQ = { ...GRID, percdamp: "num", blocksize: "int", actOrder: "bool", staticGroups: "bool" };
const METHODS: [string, Factory, Record<string, unknown>, Record<string, string>][] = [
  ["rtn", rtn, { bits: 4 }, { ...GRID, perChannel: "bool" }],
  ["gptq", gptq, { bits: 4 }, GPTQ],
  ["quantease", quantease, { bits: 4, numIter: 2 }, {
    ...GPTQ,
    numIter: "int",
    init: "str",
    relax: "bool",
    outlier: "num",
    structureOutlier: "bool",
    alpha: "num",
  }],
  ["quip", quip, { bits: 4 }, {
    bits: "int",
    method: "str",
    npasses: "int",
    incoh: "bool",
    preGptqH: "bool",
    preRescale: "bool",
    preProj: "bool",
    proj: "str",
    qfn: "str",
    percdamp: "num",
    seed: "int",
    unbiased: "bool",
    lazyBatch: "bool",
    blocksize: "int",
    admm: "obj",
  }],
  ["framequant", framequant, { bits: 4 }, {
    ...GPTQ,
    r: "num",
    rowR: "num",
    seed: "int",
    clipSigma: "clip",
    normDamp: "num",
  }],
];

/** Every option case (module doc), seeded: counts per outcome, failure classes, examples. */
export async function optionSweep(seed = 1): Promise<Sweep> {
  const odd: unknown[] = [
    "4",
    "false",
    "no",
    NaN,
    Infinity,
    -Infinity,
    -1,
    0,
    1,
    1.5,
    3,
    1e7,
    null,
    true,
    false,
    {},
    [],
    { grid: Infinity },
    { grid: 1e7 },
    { rho: 0, niters: 1e12 },
  ];
  const rng = new Rng(seed);
  const cols = 32, rows = 8;
  const W = { shape: [rows, cols], data: rng.normals(rows * cols) };
  const X = rng.normals(64 * cols);
  const H = new Float32Array(cols * cols);
  for (let i = 0; i < cols; i++) {
    for (let j = 0; j < cols; j++) {
      let s = 0;
      for (let t = 0; t < 64; t++) s += X[t * cols + i] * X[t * cols + j];
      H[i * cols + j] = (2 / 64) * s;
    }
  }
  const counts: Record<string, number> = {};
  const ex: string[] = [];
  const bad = new Set(["untyped", "accepted-mistyped", "non-finite result", "slow"]);
  for (const [name, f, base, types] of METHODS) {
    for (const key of [...Object.keys(types), "groupsize", "act_order", "typo"]) {
      for (const v of odd) {
        const opts = { ...base, [key]: v };
        const typeOk = Object.hasOwn(types, key) && TYPES[types[key]](v);
        let o: string;
        const t0 = performance.now();
        try {
          const q = f(opts);
          if (!typeOk) o = "accepted-mistyped";
          else {
            try {
              const r = await q.quantizeWeight(W, { H, nsamples: 64 }, { layer: "fuzz" });
              o = r.Wq.data.every(Number.isFinite) ? "ran, finite" : "non-finite result";
            } catch (e) {
              o = e instanceof QuantlabError ? "refused at run (typed)" : "untyped";
            }
          }
        } catch (e) {
          o = e instanceof OptionError ? "refused (OptionError)" : "untyped";
        }
        if (performance.now() - t0 > 5000) o = "slow";
        counts[o] = (counts[o] ?? 0) + 1;
        if (bad.has(o) && ex.length < 10) ex.push(`${name} ${key}: ${String(v)} → ${o}`);
      }
    }
  }
  return { title: "quantizer options", counts, failures: bad, examples: ex };
}
