/**
 * Independent reference forwards for the oracle tests. Written from the Hugging Face modeling
 * semantics (LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM / OPTForCausalLM) and from
 * karpathy/llama2.c `run.c`, in plain TypeScript with float64 accumulation. Nothing here imports
 * or copies library code from src/: it is a second, deliberately naive implementation.
 *
 * - `referenceForward(config, weights, ids)`: full-sequence forward (layer by layer over all
 *   positions, explicit causal mask), logits per position.
 * - `ReferenceDecoder`: incremental forward (one token at a time with its own KV cache).
 * - `Llama2cReference`: run.c semantics on the RAW llama2.c weights (interleaved RoPE on
 *   consecutive pairs, unpermuted wq/wk), reading the .bin file itself.
 * - Closed-form float16 / bfloat16 rounding and decoding.
 * @module
 */

/** A row-major float32 tensor with a shape. */
export interface RefTensor {
  /** Dimensions, outermost first. */
  shape: number[];
  /** Values. */
  data: Float32Array;
}

/** Named weights (Hugging Face names, `model.` prefix). */
export type RefWeights = Record<string, RefTensor>;

/** A config.json object. */
export type ConfigJson = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------
// Half-precision: closed-form rounding (round to nearest, ties to even) and bit decoding.
// ---------------------------------------------------------------------------------------------

function roundHalfEven(y: number): number {
  const f = Math.floor(y);
  const d = y - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** floor(log2(a)) for a > 0, exact (no reliance on Math.log2 rounding). */
function exponentOf(a: number): number {
  let e = Math.floor(Math.log2(a));
  while (2 ** e > a) e--;
  while (2 ** (e + 1) <= a) e++;
  return e;
}

/** Rounds to a binary format with `mant` stored mantissa bits, min normal exponent `emin`. */
function roundBinary(x: number, mant: number, emin: number, maxFinite: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  const e = Math.max(exponentOf(a), emin);
  const ulp = 2 ** (e - mant);
  const r = roundHalfEven(a / ulp) * ulp;
  const v = r > maxFinite ? Infinity : r;
  return x < 0 ? -v : v;
}

/** The value `x` takes when stored as IEEE binary16 (round to nearest even; overflow → ±Inf). */
export function roundToF16(x: number): number {
  return roundBinary(x, 10, -14, 65504);
}

/** The value `x` takes when stored as bfloat16 (round to nearest even; overflow → ±Inf). */
export function roundToBf16(x: number): number {
  return roundBinary(x, 7, -126, (2 - 2 ** -7) * 2 ** 127);
}

/** IEEE binary16 bits → value (closed form). */
export function decodeF16Bits(b: number): number {
  const s = (b >> 15) & 1 ? -1 : 1;
  const e = (b >> 10) & 0x1f;
  const m = b & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1024 + m) * 2 ** (e - 25);
}

/** bfloat16 bits → value (closed form). */
export function decodeBf16Bits(b: number): number {
  const s = (b >> 15) & 1 ? -1 : 1;
  const e = (b >> 7) & 0xff;
  const m = b & 0x7f;
  if (e === 0) return s * m * 2 ** -133;
  if (e === 255) return m ? NaN : s * Infinity;
  return s * (128 + m) * 2 ** (e - 134);
}

// ---------------------------------------------------------------------------------------------
// Small numeric helpers (float64).
// ---------------------------------------------------------------------------------------------

/** y = W·x (+ b) for W [rows, cols] row-major. */
function matvec(W: RefTensor, x: ArrayLike<number>, b?: RefTensor): Float64Array {
  const [rows, cols] = W.shape;
  if (x.length !== cols) throw new Error(`reference: matvec ${W.shape} · [${x.length}]`);
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const o = r * cols;
    for (let c = 0; c < cols; c++) s += W.data[o + c] * x[c];
    y[r] = b ? s + b.data[r] : s;
  }
  return y;
}

function rmsNorm(x: Float64Array, w: ArrayLike<number>, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * inv * w[i]);
}

function layerNorm(x: Float64Array, w: RefTensor, b: RefTensor, eps: number): Float64Array {
  let mean = 0;
  for (const v of x) mean += v;
  mean /= x.length;
  let varSum = 0;
  for (const v of x) varSum += (v - mean) ** 2;
  const inv = 1 / Math.sqrt(varSum / x.length + eps);
  return x.map((v, i) => (v - mean) * inv * w.data[i] + b.data[i]);
}

function addInPlace(a: Float64Array, b: Float64Array): void {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
}

function row(E: RefTensor, id: number): Float64Array {
  const d = E.shape[1];
  if (!(id >= 0 && id < E.shape[0])) throw new Error(`reference: id ${id} out of range`);
  return Float64Array.from(E.data.subarray(id * d, (id + 1) * d));
}

/**
 * Attention of one query vector (all heads) against cached keys/values `ks[s]`, `vs[s]` for the
 * allowed positions `allowed` (list of s). Grouped-query: query head h reads kv head
 * floor(h / (nH / nKV)).
 */
function attendOne(
  q: Float64Array,
  ks: Float64Array[],
  vs: Float64Array[],
  allowed: number[],
  nH: number,
  nKV: number,
  hd: number,
  scale: number,
): Float64Array {
  const out = new Float64Array(nH * hd);
  const group = nH / nKV;
  for (let h = 0; h < nH; h++) {
    const kh = Math.floor(h / group);
    const scores = allowed.map((s) => {
      let dot = 0;
      for (let i = 0; i < hd; i++) dot += q[h * hd + i] * ks[s][kh * hd + i];
      return dot * scale;
    });
    const mx = Math.max(...scores);
    const ex = scores.map((z) => Math.exp(z - mx));
    const sum = ex.reduce((a, b) => a + b, 0);
    allowed.forEach((s, j) => {
      const p = ex[j] / sum;
      for (let i = 0; i < hd; i++) out[h * hd + i] += p * vs[s][kh * hd + i];
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Config interpretation (Hugging Face defaults).
// ---------------------------------------------------------------------------------------------

interface LlamaSpec {
  kind: "llama";
  hidden: number;
  nH: number;
  nKV: number;
  hd: number;
  layers: number;
  eps: number;
  invFreq: Float64Array;
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  tied: boolean;
  slidingWindow: number;
}

interface OptSpec {
  kind: "opt";
  hidden: number;
  nH: number;
  hd: number;
  layers: number;
  preLN: boolean;
  finalLN: boolean;
  project: boolean;
  bias: boolean;
  tied: boolean;
}

type Spec = LlamaSpec | OptSpec;

const f32 = Math.fround;

/**
 * HF `_compute_default_rope_parameters` (+ `_compute_llama3_parameters`): inverse frequencies in
 * float32, as HF computes them (`1 / base ** (arange(0, dim, 2).float() / dim)`).
 */
export function hfInvFreq(cfg: ConfigJson, headDim: number): Float64Array {
  const base = typeof cfg.rope_theta === "number" ? cfg.rope_theta : 10000;
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = f32(1 / f32(base ** f32((2 * i) / headDim)));
  const rs = cfg.rope_scaling as Record<string, unknown> | null | undefined;
  const type = rs ? String(rs.rope_type ?? rs.type) : "default";
  if (type === "linear") {
    for (let i = 0; i < half; i++) inv[i] = f32(inv[i] / Number(rs!.factor));
  } else if (type === "llama3") {
    const factor = Number(rs!.factor);
    const low = Number(rs!.low_freq_factor);
    const high = Number(rs!.high_freq_factor);
    const old = Number(rs!.original_max_position_embeddings);
    const lowWavelen = old / low;
    const highWavelen = old / high;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i];
      if (wavelen < highWavelen) continue; // high frequency: unchanged
      if (wavelen > lowWavelen) inv[i] = f32(inv[i] / factor); // low frequency: divided
      else {
        const smooth = (old / wavelen - low) / (high - low);
        inv[i] = f32((1 - smooth) * (inv[i] / factor) + smooth * inv[i]);
      }
    }
  } else if (type !== "default") {
    throw new Error(`reference: rope type ${type}`);
  }
  return inv;
}

function specOf(cfg: ConfigJson): Spec {
  const num = (k: string, dflt?: number): number => {
    const v = cfg[k];
    if (typeof v === "number") return v;
    if (dflt !== undefined) return dflt;
    throw new Error(`reference: config lacks ${k}`);
  };
  const mt = String(cfg.model_type);
  if (mt === "opt") {
    const hidden = num("hidden_size");
    const nH = num("num_attention_heads");
    const preLN = cfg.do_layer_norm_before !== false;
    if ((cfg.activation_function ?? "relu") !== "relu") throw new Error("reference: relu only");
    return {
      kind: "opt",
      hidden,
      nH,
      hd: hidden / nH,
      layers: num("num_hidden_layers"),
      preLN,
      finalLN: preLN && cfg._remove_final_layer_norm !== true,
      project: num("word_embed_proj_dim", hidden) !== hidden,
      bias: cfg.enable_bias !== false,
      tied: cfg.tie_word_embeddings !== false,
    };
  }
  if (!["llama", "mistral", "qwen2"].includes(mt)) throw new Error(`reference: ${mt}`);
  const hidden = num("hidden_size");
  const nH = num("num_attention_heads");
  const hd = num("head_dim", hidden / nH);
  const attentionBias = cfg.attention_bias === true;
  const sw = mt === "mistral" && typeof cfg.sliding_window === "number"
    ? cfg.sliding_window
    : Infinity;
  return {
    kind: "llama",
    hidden,
    nH,
    nKV: num("num_key_value_heads", nH),
    hd,
    layers: num("num_hidden_layers"),
    eps: num("rms_norm_eps", 1e-6),
    invFreq: hfInvFreq(cfg, hd),
    qkvBias: mt === "qwen2" || attentionBias,
    oBias: mt !== "qwen2" && attentionBias,
    mlpBias: cfg.mlp_bias === true,
    tied: cfg.tie_word_embeddings === true,
    slidingWindow: sw,
  };
}

/** HF rotate-half RoPE on each head of `x` (in place) at position `pos`; angles in float32. */
function ropeRotateHalf(
  x: Float64Array,
  nHeads: number,
  hd: number,
  inv: Float64Array,
  pos: number,
) {
  const half = hd / 2;
  for (let i = 0; i < half; i++) {
    const angle = f32(f32(pos) * inv[i]);
    const c = f32(Math.cos(angle));
    const s = f32(Math.sin(angle));
    for (let h = 0; h < nHeads; h++) {
      const a = x[h * hd + i];
      const b = x[h * hd + half + i];
      x[h * hd + i] = a * c - b * s;
      x[h * hd + half + i] = b * c + a * s;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The reference decoder.
// ---------------------------------------------------------------------------------------------

function getter(weights: RefWeights) {
  const w = (name: string): RefTensor => {
    const t = weights[name];
    if (!t) throw new Error(`reference: missing weight ${name}`);
    return t;
  };
  const opt = (name: string, present: boolean): RefTensor | undefined =>
    present ? w(name) : undefined;
  return { w, opt };
}

/** Per-layer q/k/v of one token (RoPE applied for Llama; OPT's 1/√d scaling is in attention). */
function qkv(spec: Spec, weights: RefWeights, l: number, x: Float64Array, pos: number) {
  const { w, opt } = getter(weights);
  if (spec.kind === "llama") {
    const p = `model.layers.${l}.self_attn`;
    const q = matvec(w(`${p}.q_proj.weight`), x, opt(`${p}.q_proj.bias`, spec.qkvBias));
    const k = matvec(w(`${p}.k_proj.weight`), x, opt(`${p}.k_proj.bias`, spec.qkvBias));
    const v = matvec(w(`${p}.v_proj.weight`), x, opt(`${p}.v_proj.bias`, spec.qkvBias));
    ropeRotateHalf(q, spec.nH, spec.hd, spec.invFreq, pos);
    ropeRotateHalf(k, spec.nKV, spec.hd, spec.invFreq, pos);
    return { q, k, v };
  }
  const p = `model.decoder.layers.${l}.self_attn`;
  const q = matvec(w(`${p}.q_proj.weight`), x, opt(`${p}.q_proj.bias`, spec.bias));
  const k = matvec(w(`${p}.k_proj.weight`), x, opt(`${p}.k_proj.bias`, spec.bias));
  const v = matvec(w(`${p}.v_proj.weight`), x, opt(`${p}.v_proj.bias`, spec.bias));
  return { q, k, v };
}

function attnNormIn(spec: Spec, weights: RefWeights, l: number, h: Float64Array): Float64Array {
  const { w } = getter(weights);
  if (spec.kind === "llama") {
    return rmsNorm(h, w(`model.layers.${l}.input_layernorm.weight`).data, spec.eps);
  }
  const p = `model.decoder.layers.${l}.self_attn_layer_norm`;
  return spec.preLN ? layerNorm(h, w(`${p}.weight`), w(`${p}.bias`), 1e-5) : h;
}

/** Everything after attention for one token: o-proj, residual, MLP, residual (norms as needed). */
function afterAttention(
  spec: Spec,
  weights: RefWeights,
  l: number,
  h: Float64Array,
  attn: Float64Array,
): Float64Array {
  const { w, opt } = getter(weights);
  const out = Float64Array.from(h);
  if (spec.kind === "llama") {
    const p = `model.layers.${l}`;
    addInPlace(
      out,
      matvec(
        w(`${p}.self_attn.o_proj.weight`),
        attn,
        opt(`${p}.self_attn.o_proj.bias`, spec.oBias),
      ),
    );
    const x = rmsNorm(out, w(`${p}.post_attention_layernorm.weight`).data, spec.eps);
    const b = spec.mlpBias;
    const g = matvec(w(`${p}.mlp.gate_proj.weight`), x, opt(`${p}.mlp.gate_proj.bias`, b));
    const u = matvec(w(`${p}.mlp.up_proj.weight`), x, opt(`${p}.mlp.up_proj.bias`, b));
    const a = g.map((gi, i) => (gi / (1 + Math.exp(-gi))) * u[i]); // SiLU(gate) · up
    addInPlace(out, matvec(w(`${p}.mlp.down_proj.weight`), a, opt(`${p}.mlp.down_proj.bias`, b)));
    return out;
  }
  const p = `model.decoder.layers.${l}`;
  const b = spec.bias;
  addInPlace(
    out,
    matvec(w(`${p}.self_attn.out_proj.weight`), attn, opt(`${p}.self_attn.out_proj.bias`, b)),
  );
  const ln1 = () =>
    layerNorm(
      out,
      w(`${p}.self_attn_layer_norm.weight`),
      w(`${p}.self_attn_layer_norm.bias`),
      1e-5,
    );
  const ln2 = (x: Float64Array) =>
    layerNorm(x, w(`${p}.final_layer_norm.weight`), w(`${p}.final_layer_norm.bias`), 1e-5);
  let h2 = spec.preLN ? out : ln1(); // post-LN: normalise after the residual add
  const x = spec.preLN ? ln2(h2) : h2;
  const f = matvec(w(`${p}.fc1.weight`), x, opt(`${p}.fc1.bias`, b)).map((z) => (z > 0 ? z : 0));
  const m = matvec(w(`${p}.fc2.weight`), f, opt(`${p}.fc2.bias`, b));
  h2 = Float64Array.from(h2);
  addInPlace(h2, m);
  return spec.preLN ? h2 : ln2(h2);
}

function embedOne(spec: Spec, weights: RefWeights, id: number, pos: number): Float64Array {
  const { w } = getter(weights);
  if (spec.kind === "llama") return row(w("model.embed_tokens.weight"), id);
  let e = row(w("model.decoder.embed_tokens.weight"), id);
  if (spec.project) e = matvec(w("model.decoder.project_in.weight"), e);
  addInPlace(e, row(w("model.decoder.embed_positions.weight"), pos + 2)); // OPT offset 2
  return e;
}

function logitsOf(spec: Spec, weights: RefWeights, h: Float64Array): Float64Array {
  const { w } = getter(weights);
  if (spec.kind === "llama") {
    const x = rmsNorm(h, w("model.norm.weight").data, spec.eps);
    return matvec(w(spec.tied ? "model.embed_tokens.weight" : "lm_head.weight"), x);
  }
  let x = h;
  if (spec.finalLN) {
    x = layerNorm(
      x,
      w("model.decoder.final_layer_norm.weight"),
      w("model.decoder.final_layer_norm.bias"),
      1e-5,
    );
  }
  if (spec.project) x = matvec(w("model.decoder.project_out.weight"), x);
  return matvec(w(spec.tied ? "model.decoder.embed_tokens.weight" : "lm_head.weight"), x);
}

function kvHeads(spec: Spec): number {
  return spec.kind === "llama" ? spec.nKV : spec.nH;
}

/** Positions s that query position t may attend to (causal, Mistral sliding window). */
function allowedPositions(spec: Spec, t: number): number[] {
  const w = spec.kind === "llama" ? spec.slidingWindow : Infinity;
  const out: number[] = [];
  for (let s = 0; s <= t; s++) if (t - s < w) out.push(s);
  return out;
}

/**
 * Full-sequence reference forward of one sequence: layer by layer over all positions, with an
 * explicit causal mask. Returns logits per position (float64).
 */
export function referenceForward(
  config: ConfigJson,
  weights: RefWeights,
  ids: number[],
): Float64Array[] {
  const spec = specOf(config);
  const T = ids.length;
  let H = ids.map((id, t) => embedOne(spec, weights, id, t));
  for (let l = 0; l < spec.layers; l++) {
    const X = H.map((h) => attnNormIn(spec, weights, l, h));
    const Q: Float64Array[] = [];
    const K: Float64Array[] = [];
    const V: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const { q, k, v } = qkv(spec, weights, l, X[t], t);
      Q.push(q);
      K.push(k);
      V.push(v);
    }
    const scale = 1 / Math.sqrt(spec.hd);
    H = H.map((h, t) => {
      const a = attendOne(
        Q[t],
        K,
        V,
        allowedPositions(spec, t),
        spec.nH,
        kvHeads(spec),
        spec.hd,
        scale,
      );
      return afterAttention(spec, weights, l, h, a);
    });
  }
  return H.map((h) => logitsOf(spec, weights, h));
}

/** Incremental reference: feeds one token at a time through all layers with its own KV cache. */
export class ReferenceDecoder {
  #spec: Spec;
  #weights: RefWeights;
  #k: Float64Array[][];
  #v: Float64Array[][];
  /** Tokens fed so far (the next token's position). */
  pos = 0;

  /** A decoder over a config.json object and HF-named weights. */
  constructor(config: ConfigJson, weights: RefWeights) {
    this.#spec = specOf(config);
    this.#weights = weights;
    this.#k = Array.from({ length: this.#spec.layers }, () => []);
    this.#v = Array.from({ length: this.#spec.layers }, () => []);
  }

  /** Feeds `id` at the next position; returns its logits. */
  step(id: number): Float64Array {
    const spec = this.#spec;
    const t = this.pos++;
    let h = embedOne(spec, this.#weights, id, t);
    for (let l = 0; l < spec.layers; l++) {
      const x = attnNormIn(spec, this.#weights, l, h);
      const { q, k, v } = qkv(spec, this.#weights, l, x, t);
      this.#k[l].push(k);
      this.#v[l].push(v);
      const scale = 1 / Math.sqrt(spec.hd);
      const a = attendOne(
        q,
        this.#k[l],
        this.#v[l],
        allowedPositions(spec, t),
        spec.nH,
        kvHeads(spec),
        spec.hd,
        scale,
      );
      h = afterAttention(spec, this.#weights, l, h, a);
    }
    return logitsOf(spec, this.#weights, h);
  }
}

/** Incremental reference forward of a whole sequence (token by token). */
export function referenceForwardIncremental(
  config: ConfigJson,
  weights: RefWeights,
  ids: number[],
): Float64Array[] {
  const d = new ReferenceDecoder(config, weights);
  return ids.map((id) => d.step(id));
}

// ---------------------------------------------------------------------------------------------
// llama2.c run.c semantics on raw weights.
// ---------------------------------------------------------------------------------------------

/** The llama2.c header as run.c reads it. */
export interface Llama2cRefConfig {
  /** dim. */
  dim: number;
  /** hidden_dim. */
  hiddenDim: number;
  /** n_layers. */
  nLayers: number;
  /** n_heads. */
  nHeads: number;
  /** n_kv_heads. */
  nKvHeads: number;
  /** |vocab_size|. */
  vocabSize: number;
  /** seq_len. */
  seqLen: number;
  /** vocab_size > 0: classifier is the token embedding. */
  shared: boolean;
}

/** run.c `forward` on raw llama2.c weights, one token at a time (own KV cache). */
export class Llama2cReference {
  /** Header. */
  readonly cfg: Llama2cRefConfig;
  #w: Record<string, Float32Array>;
  #keyCache: Float64Array[][];
  #valCache: Float64Array[][];

  private constructor(cfg: Llama2cRefConfig, w: Record<string, Float32Array>) {
    this.cfg = cfg;
    this.#w = w;
    this.#keyCache = Array.from({ length: cfg.nLayers }, () => []);
    this.#valCache = Array.from({ length: cfg.nLayers }, () => []);
  }

  /** Reads a llama2.c .bin (run.c `read_checkpoint` / `memory_map_weights`). */
  static async load(file: string | URL): Promise<Llama2cReference> {
    const bytes = await Deno.readFile(file);
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const hdr = Array.from({ length: 7 }, (_, i) => dv.getInt32(4 * i, true));
    const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocab, seqLen] = hdr;
    const cfg: Llama2cRefConfig = {
      dim,
      hiddenDim,
      nLayers,
      nHeads,
      nKvHeads,
      vocabSize: Math.abs(vocab),
      seqLen,
      shared: vocab > 0,
    };
    const floats = new Float32Array((bytes.byteLength - 28) / 4);
    for (let i = 0; i < floats.length; i++) floats[i] = dv.getFloat32(28 + 4 * i, true);
    const headSize = dim / nHeads;
    let ptr = 0;
    const take = (n: number) => floats.subarray(ptr, ptr += n);
    const V = cfg.vocabSize;
    const w: Record<string, Float32Array> = {};
    w.token_embedding = take(V * dim);
    w.rms_att = take(nLayers * dim);
    w.wq = take(nLayers * dim * nHeads * headSize);
    w.wk = take(nLayers * dim * nKvHeads * headSize);
    w.wv = take(nLayers * dim * nKvHeads * headSize);
    w.wo = take(nLayers * nHeads * headSize * dim);
    w.rms_ffn = take(nLayers * dim);
    w.w1 = take(nLayers * dim * hiddenDim);
    w.w2 = take(nLayers * hiddenDim * dim);
    w.w3 = take(nLayers * dim * hiddenDim);
    w.rms_final = take(dim);
    take((seqLen * headSize) / 2); // freq_cis_real (unused)
    take((seqLen * headSize) / 2); // freq_cis_imag (unused)
    w.wcls = cfg.shared ? w.token_embedding : take(V * dim);
    if (ptr !== floats.length) {
      throw new Error(`reference: ${file}: ${floats.length} floats, layout needs ${ptr}`);
    }
    return new Llama2cReference(cfg, w);
  }

  /** Forgets the KV cache. */
  reset(): void {
    this.#keyCache = Array.from({ length: this.cfg.nLayers }, () => []);
    this.#valCache = Array.from({ length: this.cfg.nLayers }, () => []);
  }

  /** run.c `forward(transformer, token, pos)`: logits of `token` at `pos` (pos = cache length). */
  forward(token: number, pos: number): Float64Array {
    const { dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize } = this.cfg;
    if (pos !== this.#keyCache[0].length) {
      throw new Error("reference: positions must be sequential");
    }
    const w = this.#w;
    const headSize = dim / nHeads;
    const kvDim = (dim * nKvHeads) / nHeads;
    const kvMul = nHeads / nKvHeads;
    const mv = (W: Float32Array, off: number, x: Float64Array, n: number, d: number) => {
      // run.c matmul: W (d,n) @ x (n,) -> (d,)
      const out = new Float64Array(d);
      for (let i = 0; i < d; i++) {
        let s = 0;
        for (let j = 0; j < n; j++) s += W[off + i * n + j] * x[j];
        out[i] = s;
      }
      return out;
    };
    const rms = (x: Float64Array, W: Float32Array, off: number) => {
      let ss = 0;
      for (const v of x) ss += v * v;
      ss = 1 / Math.sqrt(ss / x.length + 1e-5);
      return x.map((v, j) => W[off + j] * (ss * v));
    };
    const x = Float64Array.from(w.token_embedding.subarray(token * dim, (token + 1) * dim));
    for (let l = 0; l < nLayers; l++) {
      const xb = rms(x, w.rms_att, l * dim);
      const q = mv(w.wq, l * dim * dim, xb, dim, dim);
      const k = mv(w.wk, l * dim * kvDim, xb, dim, kvDim);
      const v = mv(w.wv, l * dim * kvDim, xb, dim, kvDim);
      // RoPE relative positional encoding: complex-valued rotate q and k in each head
      for (let i = 0; i < dim; i += 2) {
        const headDim = i % headSize;
        const freq = f32(1 / f32(10000 ** f32(headDim / headSize)));
        const val = f32(pos * freq);
        const fcr = f32(Math.cos(val));
        const fci = f32(Math.sin(val));
        const rotn = i < kvDim ? 2 : 1; // how many vectors? 2 = q & k, 1 = q only
        for (let r = 0; r < rotn; r++) {
          const vec = r === 0 ? q : k;
          const v0 = vec[i];
          const v1 = vec[i + 1];
          vec[i] = v0 * fcr - v1 * fci;
          vec[i + 1] = v0 * fci + v1 * fcr;
        }
      }
      this.#keyCache[l].push(k);
      this.#valCache[l].push(v);
      const xbAttn = new Float64Array(dim);
      for (let h = 0; h < nHeads; h++) {
        const att = new Float64Array(pos + 1);
        const kvh = Math.floor(h / kvMul);
        for (let t = 0; t <= pos; t++) {
          const kt = this.#keyCache[l][t];
          let score = 0;
          for (let i = 0; i < headSize; i++) score += q[h * headSize + i] * kt[kvh * headSize + i];
          att[t] = score / Math.sqrt(headSize);
        }
        let mx = -Infinity;
        for (const a of att) mx = Math.max(mx, a);
        let sum = 0;
        for (let t = 0; t <= pos; t++) sum += att[t] = Math.exp(att[t] - mx);
        for (let t = 0; t <= pos; t++) {
          const a = att[t] / sum;
          const vt = this.#valCache[l][t];
          for (let i = 0; i < headSize; i++) xbAttn[h * headSize + i] += a * vt[kvh * headSize + i];
        }
      }
      const xb2 = mv(w.wo, l * dim * dim, xbAttn, dim, dim);
      for (let i = 0; i < dim; i++) x[i] += xb2[i];
      const xf = rms(x, w.rms_ffn, l * dim);
      const hb = mv(w.w1, l * dim * hiddenDim, xf, dim, hiddenDim);
      const hb2 = mv(w.w3, l * dim * hiddenDim, xf, dim, hiddenDim);
      for (let i = 0; i < hiddenDim; i++) hb[i] = (hb[i] * (1 / (1 + Math.exp(-hb[i])))) * hb2[i];
      const down = mv(w.w2, l * dim * hiddenDim, hb, hiddenDim, dim);
      for (let i = 0; i < dim; i++) x[i] += down[i];
    }
    const xf = rms(x, w.rms_final, 0);
    return mv(w.wcls, 0, xf, dim, vocabSize);
  }
}

// ---------------------------------------------------------------------------------------------
// Comparison helpers.
// ---------------------------------------------------------------------------------------------

/** Max |a - b| between a [rows, vocab] flat array and per-row reference logits. */
export function maxAbsDiffRows(actual: ArrayLike<number>, ref: Float64Array[]): number {
  const V = ref[0].length;
  if (actual.length !== ref.length * V) {
    throw new Error(`compare: ${actual.length} values vs ${ref.length}×${V}`);
  }
  let m = 0;
  for (let r = 0; r < ref.length; r++) {
    for (let j = 0; j < V; j++) {
      const d = Math.abs(actual[r * V + j] - ref[r][j]);
      if (Number.isNaN(d)) return NaN;
      if (d > m) m = d;
    }
  }
  return m;
}

/** Index of the largest value (first on ties). */
export function argmax(x: ArrayLike<number>): number {
  let b = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[b]) b = i;
  return b;
}
