/**
 * GPTQ safetensors checkpoints as transformers, vLLM, AutoGPTQ and GPTQModel read them.
 *
 * Per quantized linear `P` (`[out, in]` weight) the checkpoint holds
 * - `P.qweight` int32 `[in·bits/32, out]`: the codes of output column `j` packed along the input
 *   dimension as an LSB-first bitstream (input `i` at stream bits `[i·bits, (i+1)·bits)` of
 *   column `j`; for 2/4/8 bits, `qweight[i·bits/32, j]` holds input `i` at bit `bits·(i mod
 *   32/bits)`; 3 bits straddle word boundaries as AutoGPTQ's packer does);
 * - `P.qzeros` int32 `[groups, out·bits/32]`: zero points packed the same way along the output
 *   dimension. **Zero-point convention**: `checkpoint_format: "gptq"` (v1, what transformers and
 *   vLLM load, and the default here) stores `zero − 1` (readers add 1 back); `"gptq_v2"`
 *   (GPTQModel) stores `zero`. v1 cannot store a zero of 0 (it would wrap to `2^bits − 1`), so the
 *   writer refuses such a layer under v1 and names it;
 * - `P.scales` float16 `[groups, out]`, `P.g_idx` int32 `[in]` (group of each input channel;
 *   act-order keeps the original channel order and records the groups here);
 * - `W[j, i] = scales[g_idx[i], j] · (code[j, i] − zero[g_idx[i], j])`.
 *
 * `config.json` carries `quantization_config` (`quant_method: "gptq"`, `bits`, `group_size`,
 * `desc_act`, `sym`, `checkpoint_format`, plus `modules_to_not_convert` for linears stored as
 * floats) and `quantize_config.json` repeats it for AutoGPTQ. Unquantized tensors are F32 (default)
 * or F16. A linear whose input width is not a whole number of int32 words (stories260K's
 * 172-wide `down_proj` at 3 or 4 bits... see the export report) is stored as a float tensor.
 * @module
 */
import { FileKindError, FormatError, OptionError } from "../errors.ts";
import { fileIfPresent, readTextChecked } from "./fs.ts";
import { f16ToF32, f32ToF16, type Tensor } from "../tensor.ts";
import { readHeader, readTensor, readTensorBytes, type SafetensorsHeader } from "./safetensors.ts";
import type { PackedLayer } from "./export.ts";

/** GPTQ checkpoint versions (zero-point conventions). */
export type GptqCheckpointFormat = "gptq" | "gptq_v2";

/**
 * Packs `codes[j·len + i]` (`n` sequences of `len` codes each) into int32 words along `i`:
 * `out[w·n + j]` holds word `w` of sequence `j` (the `[len·bits/32, n]` layout of `qweight`;
 * with `transpose` false, `out[j·words + w]`, the `[n, len·bits/32]` layout of `qzeros`).
 */
export function packAlong(
  codes: Uint8Array | Int32Array,
  n: number,
  len: number,
  bits: number,
  transpose: boolean,
): Int32Array {
  const words = (len * bits) / 32;
  if (!Number.isInteger(words)) {
    throw new OptionError("bits", `${len} values of ${bits} bits are not whole int32 words`);
  }
  const out = new Int32Array(words * n);
  const mask = (1 << bits) - 1;
  for (let j = 0; j < n; j++) {
    for (let i = 0; i < len; i++) {
      const c = codes[j * len + i] & mask;
      const pos = i * bits, w = pos >>> 5, off = pos & 31;
      const at = (k: number) => (transpose ? k * n + j : j * words + k);
      out[at(w)] |= c << off;
      if (off + bits > 32) out[at(w + 1)] |= c >>> (32 - off);
    }
  }
  return out;
}

/** Inverse of {@linkcode packAlong}: `n` sequences of `len` codes. */
export function unpackAlong(
  packed: Int32Array,
  n: number,
  len: number,
  bits: number,
  transpose: boolean,
): Uint8Array {
  const words = (len * bits) / 32;
  const out = new Uint8Array(n * len);
  const mask = (1 << bits) - 1;
  for (let j = 0; j < n; j++) {
    for (let i = 0; i < len; i++) {
      const pos = i * bits, w = pos >>> 5, off = pos & 31;
      const at = (k: number) => (transpose ? k * n + j : j * words + k);
      let c = packed[at(w)] >>> off;
      if (off + bits > 32) c |= packed[at(w + 1)] << (32 - off);
      out[j * len + i] = c & mask;
    }
  }
  return out;
}

/** The `qweight`/`qzeros`/`scales`/`g_idx` tensors of one layer. */
export interface GptqTensors {
  /** int32 `[in·bits/32, out]`. */
  qweight: Int32Array;
  /** int32 `[groups, out·bits/32]`. */
  qzeros: Int32Array;
  /** f16 bits `[groups, out]`. */
  scales: Uint16Array;
  /** int32 `[in]`. */
  gIdx: Int32Array;
  /** Number of groups. */
  groups: number;
}

/**
 * A layer's packed description as GPTQ tensors, or a reason it cannot be (a string). Scales are
 * rounded to f16 (exact when the layer was quantized with f16 scales).
 */
export function toGptqTensors(
  meta: PackedLayer,
  format: GptqCheckpointFormat,
  layer: string,
): GptqTensors | string {
  const [out, inn] = meta.shape;
  const bits = meta.bits;
  const fit = gptqFit(meta);
  if (fit) return fit;
  const codesIn = meta.codes!, sc = meta.scales!, zr = meta.zeros!;
  const groups = sc.length / out;
  const gIdx = new Int32Array(inn);
  for (let i = 0; i < inn; i++) {
    gIdx[i] = meta.gIdx ? meta.gIdx[i] : meta.groupSize > 0 ? Math.floor(i / meta.groupSize) : 0;
  }
  // codes [out, in] row-major are already `out` sequences of `in` codes.
  const qweight = packAlong(codesIn, out, inn, bits, true);
  const zt = new Int32Array(groups * out);
  const scales = new Uint16Array(groups * out);
  for (let j = 0; j < out; j++) {
    for (let g = 0; g < groups; g++) {
      const z = zr[j * groups + g];
      if (!Number.isInteger(z) || z < 0 || z > (1 << bits) - 1) {
        return `zero ${z} is not a ${bits}-bit integer`;
      }
      if (format === "gptq" && z === 0) {
        throw new OptionError(
          "checkpointFormat",
          `layer ${layer} has a zero point of 0 (row ${j}, group ${g}); GPTQ v1 stores zero − 1 and ` +
            `cannot hold it: pass checkpointFormat: "gptq_v2"`,
        );
      }
      zt[g * out + j] = format === "gptq" ? z - 1 : z;
      scales[g * out + j] = f32ToF16(sc[j * groups + g]);
    }
  }
  const qzeros = packAlong(zt, groups, out, bits, false);
  return { qweight, qzeros, scales, gIdx, groups };
}

/** Why a layer cannot be stored as GPTQ tensors (bits, word alignment), or null when it can. */
export function gptqFit(meta: PackedLayer): string | null {
  const [out, inn] = meta.shape;
  const bits = meta.bits;
  if (![2, 3, 4, 8].includes(bits)) return `${bits}-bit codes (GPTQ packs 2, 3, 4 or 8)`;
  if ((inn * bits) % 32 !== 0) {
    return `${inn} input columns × ${bits} bits are not whole int32 words`;
  }
  if ((out * bits) % 32 !== 0) return `${out} output rows × ${bits} bits are not whole int32 words`;
  if (!meta.codes || !meta.scales || !meta.zeros) return "no codes/scales/zeros";
  return null;
}

/** Decodes GPTQ tensors into a quantlab grid description (codes `[out, in]`, scales, zeros). */
export function fromGptqTensors(
  t: { qweight: Int32Array; qzeros: Int32Array; scales: Float32Array; gIdx: Int32Array },
  shape: { out: number; in: number; bits: number; groups: number },
  format: GptqCheckpointFormat,
): { codes: Uint8Array; scales: Float32Array; zeros: Float32Array; gIdx: Int32Array } {
  const { out, bits, groups } = shape;
  const inn = shape.in;
  const codes = unpackAlong(t.qweight, out, inn, bits, true);
  const zt = unpackAlong(t.qzeros, groups, out, bits, false);
  const scales = new Float32Array(out * groups), zeros = new Float32Array(out * groups);
  const mask = (1 << bits) - 1;
  for (let j = 0; j < out; j++) {
    for (let g = 0; g < groups; g++) {
      scales[j * groups + g] = t.scales[g * out + j];
      // v1 readers add 1 (AutoGPTQ `zeros + 1`, masked like the exllama kernels).
      zeros[j * groups + g] = format === "gptq" ? ((zt[g * out + j] + 1) & mask) : zt[g * out + j];
    }
  }
  return { codes, scales, zeros, gIdx: t.gIdx };
}

/** A GPTQ checkpoint folder read back. */
export interface GptqCheckpoint {
  /** config.json. */
  config: Record<string, unknown>;
  /** Lazy HF-named float32 tensors (quantized linears dequantized), a `WeightSource`. */
  source: {
    names(): string[];
    shape(name: string): number[] | undefined;
    load(name: string): Promise<Tensor>;
  };
  /** Packed layers (method "gptq"), keyed by linear name. */
  packed(): Promise<Record<string, Record<string, unknown>>>;
}

/**
 * Reads a GPTQ checkpoint folder (ours or another tool's): `config.json` with
 * `quantization_config.quant_method === "gptq"` and `model.safetensors` (or an index with
 * shards). Zero points follow `checkpoint_format` ("gptq" = v1 by default, "gptq_v2").
 */
export async function readGptqCheckpoint(dir: string): Promise<GptqCheckpoint> {
  const config = JSON.parse(await readTextChecked(`${dir}/config.json`, "config.json"));
  const qc = (config.quantization_config ?? {}) as Record<string, unknown>;
  if (qc.quant_method !== "gptq") {
    throw new FormatError(`${dir}/config.json`, `quantization_config.quant_method is not "gptq"`);
  }
  const bits = qc.bits as number;
  if (![2, 3, 4, 8].includes(bits)) {
    throw new FormatError(
      `${dir}/config.json`,
      `quantization_config.bits ${bits} (GPTQ packs 2, 3, 4, 8)`,
    );
  }
  const format = (qc.checkpoint_format ?? "gptq") as GptqCheckpointFormat;
  if (format !== "gptq" && format !== "gptq_v2") {
    throw new FormatError(
      `${dir}/config.json`,
      `checkpoint_format ${JSON.stringify(format)} is not gptq or gptq_v2`,
    );
  }
  const groupSize = (qc.group_size ?? -1) as number;
  const sym = (qc.sym ?? true) as boolean;
  let files = ["model.safetensors"];
  if (await fileIfPresent(`${dir}/model.safetensors.index.json`, "index")) {
    const idxPath = `${dir}/model.safetensors.index.json`;
    let idx: { weight_map?: Record<string, string> };
    try {
      idx = JSON.parse(await readTextChecked(idxPath, "index"));
    } catch (e) {
      if (e instanceof FormatError || e instanceof FileKindError) throw e;
      throw new FormatError(idxPath, `not JSON (${(e as Error).message})`);
    }
    if (!idx?.weight_map || typeof idx.weight_map !== "object") {
      throw new FormatError(idxPath, "no weight_map object");
    }
    files = [...new Set(Object.values(idx.weight_map))];
  }
  const where = new Map<string, SafetensorsHeader>();
  for (const f of files) {
    const h = await readHeader(`${dir}/${f}`);
    for (const n of h.tensors.keys()) where.set(n, h);
  }
  const info = (n: string) => where.get(n)?.tensors.get(n);
  const quantized = new Map<string, { out: number; in: number; groups: number }>();
  for (const n of where.keys()) {
    if (!n.endsWith(".qweight")) continue;
    const p = n.slice(0, -".qweight".length);
    for (const s of ["qzeros", "scales"]) {
      if (!where.has(`${p}.${s}`)) {
        throw new FormatError(dir, `tensor "${p}.${s}" is missing beside ${n}`);
      }
    }
    const qw = info(n)!, sc = info(`${p}.scales`)!;
    if (qw.dtype !== "I32") {
      throw new FormatError(where.get(n)!.file, `${n} is ${qw.dtype}, expected I32`);
    }
    const inn = (qw.shape[0] * 32) / bits, out = qw.shape[1];
    if (sc.shape[1] !== out) {
      throw new FormatError(
        where.get(n)!.file,
        `${p}.scales has shape [${sc.shape}] for ${out} outputs`,
      );
    }
    quantized.set(`${p}.weight`, { out, in: inn, groups: sc.shape[0] });
  }
  const raw = async (n: string, dtype: string): Promise<Uint8Array> => {
    const h = where.get(n)!;
    if (h.tensors.get(n)!.dtype !== dtype) {
      throw new FormatError(h.file, `${n} is ${h.tensors.get(n)!.dtype}, expected ${dtype}`);
    }
    return await readTensorBytes(h, n);
  };
  const i32 = (b: Uint8Array) => new Int32Array(b.slice().buffer);
  const decode = async (wname: string) => {
    const q = quantized.get(wname)!;
    const p = wname.slice(0, -".weight".length);
    const sb = new Uint16Array((await raw(`${p}.scales`, "F16")).slice().buffer);
    const gIdx = where.has(`${p}.g_idx`) ? i32(await raw(`${p}.g_idx`, "I32")) : Int32Array.from(
      { length: q.in },
      (_, i) => (groupSize > 0 ? Math.floor(i / groupSize) : 0),
    );
    const dec = fromGptqTensors(
      {
        qweight: i32(await raw(`${p}.qweight`, "I32")),
        qzeros: i32(await raw(`${p}.qzeros`, "I32")),
        scales: Float32Array.from(sb, f16ToF32),
        gIdx,
      },
      { out: q.out, in: q.in, bits, groups: q.groups },
      format,
    );
    return { ...dec, q };
  };
  const names = [
    ...new Set(
      [...where.keys()].filter((n) => !/\.(qweight|qzeros|scales|g_idx)$/.test(n)).concat([
        ...quantized.keys(),
      ]),
    ),
  ];
  return {
    config,
    source: {
      names: () => names,
      shape: (n) => {
        const q = quantized.get(n);
        return q ? [q.out, q.in] : info(n)?.shape;
      },
      load: async (n) => {
        if (!quantized.has(n)) {
          const h = where.get(n);
          if (!h) throw new FormatError(dir, `checkpoint has no tensor "${n}"`);
          return await readTensor(h, n);
        }
        const { codes, scales, zeros, gIdx, q } = await decode(n);
        const W = new Float32Array(q.out * q.in);
        for (let j = 0; j < q.out; j++) {
          for (let i = 0; i < q.in; i++) {
            const g = j * q.groups + gIdx[i];
            W[j * q.in + i] = scales[g] * (codes[j * q.in + i] - zeros[g]);
          }
        }
        return { shape: [q.out, q.in], data: W };
      },
    },
    packed: async () => {
      const out: Record<string, Record<string, unknown>> = {};
      for (const n of quantized.keys()) {
        const { codes, scales, zeros, gIdx, q } = await decode(n);
        const natural = gIdx.every((g, i) => g === (groupSize > 0 ? Math.floor(i / groupSize) : 0));
        out[n.slice(0, -".weight".length)] = {
          method: "gptq",
          bits,
          groupSize,
          sym,
          shape: [q.out, q.in],
          codes,
          scales,
          zeros,
          ...(natural ? {} : { gIdx, gIdxStored: true }),
        };
      }
      return out;
    },
  };
}
