/**
 * One description per model family — tensor names, block layout, norms, MLP shape, positions —
 * read by the host forward (`decoder.ts`), the GPU-resident executor (`_gpu_block.ts`,
 * `resident.ts`) and `config.ts` (expected shapes, true-sequential groups), so a family's names
 * are spelled once. Plain data plus name functions; adding a family is one entry here (and its
 * `model_type` in `config.ts`).
 *
 * - Llama (Llama 1/2/3, Mistral, Qwen2): `model.*`, RMSNorm (weight only) before attention and
 *   MLP, rotary positions, SwiGLU MLP `down(silu(gate(x)) · up(x))`, final `model.norm`.
 * - OPT: `model.decoder.*`, LayerNorm (weight and bias) before (or, with
 *   `do_layer_norm_before: false`, after) each sub-block, learned positions at offset 2,
 *   `fc2(act(fc1(x)))`, optional `project_in`/`project_out` and `final_layer_norm`.
 * @module
 */
import type { Family, ModelConfig } from "./config.ts";

/** The tensor names (no ".weight") of one decoder block. */
export interface BlockNames {
  /** The norm before (or, post-LN, after) attention. */
  attnNorm: string;
  /** The norm before (or after) the MLP. */
  mlpNorm: string;
  /** Query projection. */
  q: string;
  /** Key projection. */
  k: string;
  /** Value projection. */
  v: string;
  /** Output projection. */
  o: string;
  /** MLP linears in order: gate, up, down (SwiGLU) or fc1, fc2. */
  mlp: string[];
}

/** A family's description (see the module doc). */
export interface FamilyDescription {
  /** The family. */
  family: Family;
  /** Tensor-name prefix of the decoder ("model" or "model.decoder"). */
  prefix: string;
  /** Norm kind: RMSNorm (weight) or LayerNorm (weight and bias). */
  norm: "rms" | "layer";
  /** MLP shape: gated SwiGLU, or fc1 → activation → fc2. */
  mlp: "swiglu" | "fc";
  /** Positions: rotary (applied to Q and K) or a learned table added to the embeddings. */
  positions: "rope" | "learned";
  /** Row of the learned position table for position 0 (OPT: 2). */
  positionOffset: number;
  /** Token embedding table. */
  embed: string;
  /** Learned position table (learned positions only). */
  positionTable?: string;
  /** Final norm before the LM head (OPT checkpoints may lack it: check the weights). */
  finalNorm: string;
  /** OPT's embedding projections (present when word_embed_proj_dim ≠ hidden_size). */
  projIn?: string;
  /** See `projIn`. */
  projOut?: string;
  /** Names of block `i`. */
  block(i: number): BlockNames;
}

/** The description of `cfg`'s family. */
export function familyOf(cfg: Pick<ModelConfig, "family">): FamilyDescription {
  if (cfg.family === "opt") {
    const P = "model.decoder";
    return {
      family: "opt",
      prefix: P,
      norm: "layer",
      mlp: "fc",
      positions: "learned",
      positionOffset: 2,
      embed: `${P}.embed_tokens`,
      positionTable: `${P}.embed_positions`,
      finalNorm: `${P}.final_layer_norm`,
      projIn: `${P}.project_in`,
      projOut: `${P}.project_out`,
      block: (i) => {
        const p = `${P}.layers.${i}`;
        return {
          attnNorm: `${p}.self_attn_layer_norm`,
          mlpNorm: `${p}.final_layer_norm`,
          q: `${p}.self_attn.q_proj`,
          k: `${p}.self_attn.k_proj`,
          v: `${p}.self_attn.v_proj`,
          o: `${p}.self_attn.out_proj`,
          mlp: [`${p}.fc1`, `${p}.fc2`],
        };
      },
    };
  }
  const P = "model";
  return {
    family: "llama",
    prefix: P,
    norm: "rms",
    mlp: "swiglu",
    positions: "rope",
    positionOffset: 0,
    embed: `${P}.embed_tokens`,
    finalNorm: `${P}.norm`,
    block: (i) => {
      const p = `${P}.layers.${i}`;
      return {
        attnNorm: `${p}.input_layernorm`,
        mlpNorm: `${p}.post_attention_layernorm`,
        q: `${p}.self_attn.q_proj`,
        k: `${p}.self_attn.k_proj`,
        v: `${p}.self_attn.v_proj`,
        o: `${p}.self_attn.o_proj`,
        mlp: [`${p}.mlp.gate_proj`, `${p}.mlp.up_proj`, `${p}.mlp.down_proj`],
      };
    },
  };
}

/** Block `i`'s linears in true-sequential groups: q/k/v, o, gate+up (or fc1), down (or fc2). */
export function linearGroups(fam: FamilyDescription, i: number): string[][] {
  const b = fam.block(i);
  const last = b.mlp.length - 1;
  return [[b.q, b.k, b.v], [b.o], b.mlp.slice(0, last), [b.mlp[last]]];
}
