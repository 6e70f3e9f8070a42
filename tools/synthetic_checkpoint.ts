/**
 * Synthetic Llama-shaped checkpoints: a Hugging Face folder (config.json, safetensors shards and
 * `model.safetensors.index.json`) with seeded random weights in the shapes of a named config
 * (TinyLlama-1.1B, Llama-2-7B, a tiny one for tests), so the forward, the GPTQ pipeline, memory
 * use and speed can be measured at real sizes without downloading anything.
 *
 * Weights: linear layers N(0, 1/in_features) (activations stay O(1) through the blocks),
 * embeddings and LM head N(0, 0.02²) (HF's `initializer_range`), norms 1. Every tensor has its
 * own stream seeded by (seed, tensor name), so a truncated model (`--layers`) or another shard
 * size holds exactly the same values under the same names.
 *
 * The folder is written under a temporary sibling name and renamed into place at the end, so an
 * interrupted run never leaves a half-written checkpoint at `--out`.
 *
 * Usage:
 * ```sh
 * deno run -A tools/synthetic_checkpoint.ts --preset tinyllama-1.1b --out out/tinyllama-synth \
 *   [--layers N] [--dtype f16|bf16|f32] [--seed 0] [--shard-mb 2000] [--force]
 * ```
 * @module
 */
import { OptionError } from "../src/errors.ts";
import { writeFileAtomic, writeSafetensors } from "../src/io/safetensors.ts";
import { exists } from "../src/io/hf_checkpoint.ts";
import { f32ToBf16, f32ToF16 } from "../src/tensor.ts";

/** A Llama-family config.json (the fields quantlab reads). */
export interface LlamaConfigJson {
  /** Always ["LlamaForCausalLM"]. */
  architectures: string[];
  /** "llama". */
  model_type: "llama";
  /** Model width. */
  hidden_size: number;
  /** MLP width. */
  intermediate_size: number;
  /** Decoder blocks. */
  num_hidden_layers: number;
  /** Query heads. */
  num_attention_heads: number;
  /** Key/value heads (GQA). */
  num_key_value_heads: number;
  /** Vocabulary. */
  vocab_size: number;
  /** Context. */
  max_position_embeddings: number;
  /** RMSNorm epsilon. */
  rms_norm_eps: number;
  /** RoPE base. */
  rope_theta: number;
  /** "silu". */
  hidden_act: string;
  /** Tied LM head. */
  tie_word_embeddings: boolean;
  /** BOS id. */
  bos_token_id: number;
  /** EOS id. */
  eos_token_id: number;
  /** Stored dtype ("float16", "bfloat16", "float32"). */
  torch_dtype: string;
  /** Init std of embeddings (HF). */
  initializer_range: number;
  /** Extra keys. */
  [k: string]: unknown;
}

const llama = (o: Partial<LlamaConfigJson>): LlamaConfigJson => ({
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 4096,
  intermediate_size: 11008,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 32,
  vocab_size: 32000,
  max_position_embeddings: 4096,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  hidden_act: "silu",
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
  torch_dtype: "float16",
  initializer_range: 0.02,
  ...o,
});

/**
 * Named shapes. "tinyllama-1.1b" and "llama-2-7b" follow the published config.json files of
 * TinyLlama/TinyLlama-1.1B-Chat-v1.0 and meta-llama/Llama-2-7b-hf; "tiny" (2 blocks, width 64,
 * GQA 4/2) is for tests.
 */
export const PRESETS: Readonly<Record<string, LlamaConfigJson>> = {
  "tinyllama-1.1b": llama({
    hidden_size: 2048,
    intermediate_size: 5632,
    num_hidden_layers: 22,
    num_attention_heads: 32,
    num_key_value_heads: 4,
    max_position_embeddings: 2048,
  }),
  "llama-2-7b": llama({}),
  "tiny": llama({
    hidden_size: 64,
    intermediate_size: 176,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 256,
    max_position_embeddings: 256,
    torch_dtype: "float32",
  }),
};

/** Stored dtypes. */
export type SyntheticDtype = "f16" | "bf16" | "f32";

/** Options of {@linkcode writeSyntheticCheckpoint}. */
export interface SyntheticOptions {
  /** A {@linkcode PRESETS} name, or a config object. */
  preset: string | LlamaConfigJson;
  /** Keep only the first `layers` blocks (default: all). */
  layers?: number;
  /** Stored dtype (default "f16"; the "tiny" preset defaults to "f32"). */
  dtype?: SyntheticDtype;
  /** Seed (default 0). */
  seed?: number;
  /** Largest shard in MiB (default 2000); a tensor larger than that gets a shard of its own. */
  shardMiB?: number;
  /** Replace an existing folder at the destination (default false: OptionError). */
  force?: boolean;
  /** Progress: called after each shard. */
  onShard?: (done: number, total: number, file: string) => void;
}

/** What {@linkcode writeSyntheticCheckpoint} wrote. */
export interface SyntheticReport {
  /** The folder. */
  dir: string;
  /** The config written. */
  config: LlamaConfigJson;
  /** Shard file names. */
  shards: string[];
  /** Tensors written. */
  tensors: number;
  /** Parameters written. */
  params: number;
  /** Bytes of tensor data. */
  bytes: number;
  /** Wall time (seconds). */
  seconds: number;
}

/** One tensor of the plan: name, shape and init std (0 = all ones). */
interface Planned {
  name: string;
  shape: number[];
  std: number;
}

/** The tensors of a Llama checkpoint for `cfg`, in HF's order, with their init. */
export function llamaTensorPlan(cfg: LlamaConfigJson): { name: string; shape: number[] }[] {
  return plan(cfg).map(({ name, shape }) => ({ name, shape }));
}

function plan(cfg: LlamaConfigJson): Planned[] {
  const H = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size;
  const hd = (cfg.head_dim as number | undefined) ?? H / cfg.num_attention_heads;
  const q = cfg.num_attention_heads * hd, kv = cfg.num_key_value_heads * hd;
  const out: Planned[] = [{
    name: "model.embed_tokens.weight",
    shape: [V, H],
    std: cfg.initializer_range,
  }];
  const lin = (name: string, o: number, i: number) =>
    out.push({ name, shape: [o, i], std: 1 / Math.sqrt(i) });
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    out.push({ name: `${p}.input_layernorm.weight`, shape: [H], std: 0 });
    lin(`${p}.mlp.down_proj.weight`, H, I);
    lin(`${p}.mlp.gate_proj.weight`, I, H);
    lin(`${p}.mlp.up_proj.weight`, I, H);
    out.push({ name: `${p}.post_attention_layernorm.weight`, shape: [H], std: 0 });
    lin(`${p}.self_attn.k_proj.weight`, kv, H);
    lin(`${p}.self_attn.o_proj.weight`, H, q);
    lin(`${p}.self_attn.q_proj.weight`, q, H);
    lin(`${p}.self_attn.v_proj.weight`, kv, H);
  }
  out.push({ name: "model.norm.weight", shape: [H], std: 0 });
  if (!cfg.tie_word_embeddings) {
    out.push({ name: "lm_head.weight", shape: [V, H], std: cfg.initializer_range });
  }
  return out;
}

/** FNV-1a of a string (per-tensor seeds). */
function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * Fills `out` with N(0, std²) from a seeded stream (xorshift128+ style 32-bit generator and
 * Box–Muller), or with ones when `std` is 0. Deterministic in (seed, name).
 */
export function fillNormal(out: Float32Array, std: number, seed: number, name: string): void {
  if (std === 0) {
    out.fill(1);
    return;
  }
  let a = (hash32(name) ^ Math.imul(seed + 1, 0x9e3779b9)) >>> 0 || 1;
  let b = (hash32(`${seed}:${name}`) | 1) >>> 0;
  let c = 0x6a09e667, d = 0xbb67ae85;
  const next = () => {
    // xoshiro128** (32-bit state words)
    const r = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d, 11);
    return r;
  };
  for (let i = 0; i < 8; i++) next();
  const inv = 1 / 4294967296;
  const n = out.length;
  for (let i = 0; i < n; i += 2) {
    const u1 = (next() + 0.5) * inv, u2 = next() * inv;
    const r = std * Math.sqrt(-2 * Math.log(u1)), th = 2 * Math.PI * u2;
    out[i] = r * Math.cos(th);
    if (i + 1 < n) out[i + 1] = r * Math.sin(th);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

const DTYPE = { f16: "F16", bf16: "BF16", f32: "F32" } as const;
const TORCH = { f16: "float16", bf16: "bfloat16", f32: "float32" } as const;

function encode(data: Float32Array, dtype: SyntheticDtype): Uint8Array {
  if (dtype === "f32") return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const F16 = (globalThis as { Float16Array?: new (n: number) => ArrayLike<number> }).Float16Array;
  if (dtype === "f16" && F16) {
    const h = new F16(data.length) as unknown as { [i: number]: number; buffer: ArrayBuffer };
    for (let i = 0; i < data.length; i++) h[i] = data[i];
    return new Uint8Array(h.buffer);
  }
  const out = new Uint16Array(data.length);
  const conv = dtype === "f16" ? f32ToF16 : f32ToBf16;
  for (let i = 0; i < data.length; i++) out[i] = conv(data[i]);
  return new Uint8Array(out.buffer);
}

/** The config a run writes: the preset with `layers` and the stored dtype applied. */
export function syntheticConfig(
  preset: string | LlamaConfigJson,
  opts: { layers?: number; dtype?: SyntheticDtype } = {},
): LlamaConfigJson {
  const base = typeof preset === "string" ? PRESETS[preset] : preset;
  if (!base) {
    throw new OptionError(
      "preset",
      `unknown preset "${preset}"; one of ${Object.keys(PRESETS).join(", ")}`,
    );
  }
  const layers = opts.layers ?? base.num_hidden_layers;
  if (!(Number.isInteger(layers) && layers >= 1 && layers <= base.num_hidden_layers)) {
    throw new OptionError("layers", `must be 1..${base.num_hidden_layers}, got ${opts.layers}`);
  }
  const dtype = opts.dtype ?? (base.torch_dtype === "float32" ? "f32" : "f16");
  if (!(dtype in DTYPE)) throw new OptionError("dtype", `must be f16, bf16 or f32, got ${dtype}`);
  return { ...base, num_hidden_layers: layers, torch_dtype: TORCH[dtype] };
}

/**
 * Writes a synthetic checkpoint folder at `dir` (see the module doc). One shard is in memory at
 * a time. Returns what was written.
 */
export async function writeSyntheticCheckpoint(
  dir: string,
  opts: SyntheticOptions,
): Promise<SyntheticReport> {
  const t0 = performance.now();
  const cfg = syntheticConfig(opts.preset, opts);
  const dtype: SyntheticDtype = cfg.torch_dtype === "float32"
    ? "f32"
    : cfg.torch_dtype === "bfloat16"
    ? "bf16"
    : "f16";
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed)) throw new OptionError("seed", `must be an integer, got ${seed}`);
  const shardBytes = (opts.shardMiB ?? 2000) * 2 ** 20;
  if (!(shardBytes > 0)) throw new OptionError("shardMiB", `must be > 0, got ${opts.shardMiB}`);
  if ((await exists(dir)) && !opts.force) {
    throw new OptionError("out", `${dir} exists; pass force (--force) to replace it`);
  }
  const el = dtype === "f32" ? 4 : 2;
  const tensors = plan(cfg);
  // Shards: consecutive tensors up to shardBytes each.
  const groups: Planned[][] = [];
  let cur: Planned[] = [], curBytes = 0;
  for (const t of tensors) {
    const b = t.shape.reduce((x, y) => x * y, 1) * el;
    if (cur.length && curBytes + b > shardBytes) {
      groups.push(cur);
      cur = [];
      curBytes = 0;
    }
    cur.push(t);
    curBytes += b;
  }
  if (cur.length) groups.push(cur);
  const n = groups.length;
  const names = n === 1
    ? ["model.safetensors"]
    : groups.map((_, i) =>
      `model-${String(i + 1).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.safetensors`
    );
  const slash = dir.replace(/\/+$/, "");
  const tmp = `${slash}.partial-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(tmp, { recursive: true });
  const weightMap: Record<string, string> = {};
  let params = 0, bytes = 0;
  try {
    for (let s = 0; s < n; s++) {
      const entries: Record<string, { shape: number[]; data: Uint8Array; dtype: string }> = {};
      for (const t of groups[s]) {
        const numel = t.shape.reduce((x, y) => x * y, 1);
        const f = new Float32Array(numel);
        fillNormal(f, t.std, seed, t.name);
        const data = encode(f, dtype);
        entries[t.name] = { shape: t.shape, data, dtype: DTYPE[dtype] };
        weightMap[t.name] = names[s];
        params += numel;
        bytes += data.byteLength;
      }
      await writeSafetensors(`${tmp}/${names[s]}`, entries, {
        metadata: { format: "pt", quantlab_synthetic: JSON.stringify({ seed, dtype }) },
      });
      opts.onShard?.(s + 1, n, names[s]);
    }
    if (n > 1) {
      await writeFileAtomic(
        `${tmp}/model.safetensors.index.json`,
        JSON.stringify({ metadata: { total_size: bytes }, weight_map: weightMap }, null, 2),
      );
    }
    await writeFileAtomic(`${tmp}/config.json`, JSON.stringify(cfg, null, 2));
    if (await exists(dir)) await Deno.remove(dir, { recursive: true });
    await Deno.rename(tmp, dir);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
  return {
    dir,
    config: cfg,
    shards: names,
    tensors: tensors.length,
    params,
    bytes,
    seconds: (performance.now() - t0) / 1000,
  };
}

function parseArgs(args: string[]): SyntheticOptions & { out: string } {
  const get = (flag: string): string | undefined => {
    const i = args.indexOf(flag);
    if (i < 0) return undefined;
    const v = args[i + 1];
    if (v === undefined || v.startsWith("--")) throw new OptionError(flag, "needs a value");
    return v;
  };
  const known = new Set(["--preset", "--out", "--layers", "--dtype", "--seed", "--shard-mb"]);
  for (let i = 0; i < args.length; i++) {
    if (known.has(args[i])) i++;
    else if (args[i] !== "--force" && args[i] !== "--help") {
      throw new OptionError(args[i], "unknown flag (see --help)");
    }
  }
  const out = get("--out");
  const preset = get("--preset");
  if (!out || !preset) throw new OptionError("--out", "--preset and --out are required");
  const num = (flag: string) => {
    const v = get(flag);
    if (v === undefined) return undefined;
    const x = Number(v);
    if (!Number.isFinite(x)) throw new OptionError(flag, `not a number: ${v}`);
    return x;
  };
  return {
    out,
    preset,
    layers: num("--layers"),
    dtype: get("--dtype") as SyntheticDtype | undefined,
    seed: num("--seed"),
    shardMiB: num("--shard-mb"),
    force: args.includes("--force"),
  };
}

const HELP = `synthetic_checkpoint: a Llama-shaped HF folder with seeded random weights
  --preset ${Object.keys(PRESETS).join(" | ")}   (required)
  --out DIR        destination folder (required; written atomically)
  --layers N       keep the first N blocks
  --dtype f16|bf16|f32   stored dtype (default f16; tiny: f32)
  --seed S         seed (default 0)
  --shard-mb M     largest shard in MiB (default 2000)
  --force          replace DIR if it exists`;

if (import.meta.main) {
  if (Deno.args.includes("--help") || Deno.args.length === 0) {
    console.log(HELP);
  } else {
    try {
      const o = parseArgs(Deno.args);
      const r = await writeSyntheticCheckpoint(o.out, {
        ...o,
        onShard: (d, t, f) => console.log(`  shard ${d}/${t}: ${f}`),
      });
      console.log(
        `${r.dir}: ${r.config.num_hidden_layers} blocks, ${r.tensors} tensors, ` +
          `${(r.params / 1e9).toFixed(3)} B params, ${(r.bytes / 2 ** 30).toFixed(2)} GiB ` +
          `${r.config.torch_dtype} in ${r.shards.length} shard(s), ${r.seconds.toFixed(1)} s`,
      );
    } catch (e) {
      console.error(`error: ${(e as Error).message}`);
      Deno.exit(2);
    }
  }
}
