/**
 * One description per model family — tensor names, block layout, norms, MLP shape, positions —
 * read by the host forward (`decoder.ts`), the GPU-resident executor (`backend/webgpu/`, handed
 * this table as plain data by `resident.ts`; it declares the {@linkcode GpuFamily} shape it reads)
 * and `config.ts` (expected shapes, true-sequential groups), so a family's names
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
import type { BlockNames, GpuFamily } from "../backend/webgpu/model.ts";

export type { BlockNames };

/** A family's description (see the module doc): the executor's layout plus the family's name. */
export interface FamilyDescription extends GpuFamily {
  /** The family. */
  family: Family;
  /** Tensor-name prefix of the decoder ("model" or "model.decoder"). */
  prefix: string;
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
