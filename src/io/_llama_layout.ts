/**
 * Llama tensor layout shared by the GGUF writer and reader: HF ↔ GGUF tensor names and the q/k
 * row permutation between HF's rotate-half RoPE layout and llama2.c's interleaved one.
 * @module
 */

/** HF per-layer tensor suffix ↔ GGUF `llama` per-block tensor suffix. */
export const LAYER_MAP: [string, string][] = [
  ["input_layernorm.weight", "attn_norm.weight"],
  ["self_attn.q_proj.weight", "attn_q.weight"],
  ["self_attn.k_proj.weight", "attn_k.weight"],
  ["self_attn.v_proj.weight", "attn_v.weight"],
  ["self_attn.o_proj.weight", "attn_output.weight"],
  ["post_attention_layernorm.weight", "ffn_norm.weight"],
  ["mlp.gate_proj.weight", "ffn_gate.weight"],
  ["mlp.up_proj.weight", "ffn_up.weight"],
  ["mlp.down_proj.weight", "ffn_down.weight"],
];

/** HF tensor name → GGUF `llama` tensor name (null when not a tensor of that architecture). */
export function ggufTensorName(hf: string): string | null {
  if (hf === "model.embed_tokens.weight") return "token_embd.weight";
  if (hf === "model.norm.weight") return "output_norm.weight";
  if (hf === "lm_head.weight") return "output.weight";
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hf);
  if (!m) return null;
  for (const [a, b] of LAYER_MAP) if (m[2] === a) return `blk.${m[1]}.${b}`;
  return null;
}

/** GGUF `llama` tensor name → HF name (inverse of {@linkcode ggufTensorName}). */
export function hfTensorName(gguf: string): string | null {
  if (gguf === "token_embd.weight") return "model.embed_tokens.weight";
  if (gguf === "output_norm.weight") return "model.norm.weight";
  if (gguf === "output.weight") return "lm_head.weight";
  const m = /^blk\.(\d+)\.(.+)$/.exec(gguf);
  if (!m) return null;
  for (const [a, b] of LAYER_MAP) if (m[2] === b) return `model.layers.${m[1]}.${a}`;
  return null;
}

/**
 * Row permutation between HF's rotate-half q/k layout and llama2.c's interleaved one (what
 * llama.cpp's `llama` architecture expects): returns `src` such that interleaved row `i` is
 * HF row `src[i]` (`toHf`: false), or the inverse (`toHf`: true).
 */
export function ropeRowOrder(rows: number, nHeads: number, toHf: boolean): Int32Array {
  const hd = rows / nHeads, half = hd / 2;
  const src = new Int32Array(rows);
  for (let h = 0; h < nHeads; h++) {
    for (let j = 0; j < half; j++) {
      const inter0 = h * hd + 2 * j, inter1 = inter0 + 1;
      const hf0 = h * hd + j, hf1 = h * hd + half + j;
      if (toHf) {
        src[hf0] = inter0;
        src[hf1] = inter1;
      } else {
        src[inter0] = hf0;
        src[inter1] = hf1;
      }
    }
  }
  return src;
}

/** Reorders the rows of a row-major byte or float array (`rows` rows) by `src`. */
export function permuteRows<T extends Uint8Array | Float32Array | Uint16Array>(
  a: T,
  rows: number,
  src: Int32Array,
): T {
  const w = a.length / rows;
  const out = new (a.constructor as new (n: number) => T)(a.length);
  for (let r = 0; r < rows; r++) out.set(a.subarray(src[r] * w, src[r] * w + w), r * w);
  return out;
}
