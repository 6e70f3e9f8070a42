/**
 * A small ONNX ModelProto writer for exported decoder graphs: nodes with int, float and ints
 * attributes in any domain, initializers as `raw_data` (little-endian), symbolic input/output
 * dims, several opset imports. Field numbers follow `onnx/onnx.proto` (ModelProto 1 ir_version,
 * 2 producer_name, 7 graph, 8 opset_import; GraphProto 1 node, 2 name, 5 initializer, 11 input,
 * 12 output; NodeProto 1 input, 2 output, 3 name, 4 op_type, 5 attribute, 7 domain;
 * AttributeProto 1 name, 2 f, 3 i, 8 ints, 20 type; TensorProto 1 dims, 2 data_type, 8 name,
 * 9 raw_data, 13 external_data, 14 data_location). Large initializers can go to an external data
 * file as they are added (streamed: their bytes are not kept), referenced by location, offset
 * (aligned to 4096) and length, as onnxruntime reads them. The backend's `_onnx_proto.ts` writes one-node matmul graphs only; this one is the
 * io layer's own (a backend module cannot import io, and io may not import a private backend file).
 * @module
 */

/** ONNX TensorProto.DataType codes used here. */
import { transpose2d } from "../tensor.ts";

export const ONNX_DTYPE = { FLOAT: 1, UINT8: 2, INT64: 7, BOOL: 9 } as const;

/** A dimension: a number (fixed) or a string (symbolic). */
export type OnnxDim = number | string;

/** An attribute value: integer, float (tagged), or list of integers. */
export type OnnxAttr = number | { f: number } | number[];

/** A list of byte chunks (never copied until `bytes()`), so nesting costs no copies. */
class Buf {
  parts: Uint8Array[] = [];
  len = 0;
  push(b: Uint8Array) {
    this.parts.push(b);
    this.len += b.length;
  }
  append(o: Buf) {
    for (const p of o.parts) this.parts.push(p);
    this.len += o.len;
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.len);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}

function varint(n: number | bigint): Uint8Array {
  let v = BigInt(n);
  if (v < 0n) v += 1n << 64n; // int64 two's complement, as protobuf encodes negative ints
  const out: number[] = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return Uint8Array.from(out);
}

function fInt(b: Buf, field: number, v: number | bigint) {
  b.push(varint(field << 3));
  b.push(varint(v));
}

function fBytes(b: Buf, field: number, data: Uint8Array) {
  b.push(varint((field << 3) | 2));
  b.push(varint(data.length));
  b.push(data);
}

function fStr(b: Buf, field: number, s: string) {
  fBytes(b, field, new TextEncoder().encode(s));
}

function fFloat(b: Buf, field: number, v: number) {
  b.push(varint((field << 3) | 5));
  const f = new Uint8Array(4);
  new DataView(f.buffer).setFloat32(0, v, true);
  b.push(f);
}

function sub(b: Buf, field: number, fill: (s: Buf) => void) {
  const s = new Buf();
  fill(s);
  b.push(varint((field << 3) | 2));
  b.push(varint(s.len));
  b.append(s);
}

interface NodeRec {
  op: string;
  inputs: string[];
  outputs: string[];
  attrs: Record<string, OnnxAttr>;
  domain: string;
}

interface InitRec {
  name: string;
  dtype: number;
  dims: number[];
  raw: Uint8Array;
  ext?: { offset: number; length: number };
}

/** Where {@linkcode OnnxGraph} streams large initializers. */
export interface OnnxExternalData {
  /** File to write (created or truncated). */
  path: string;
  /** Its name relative to the model file, as stored in the model (`model.onnx_data`). */
  location: string;
  /** Initializers of at least this many bytes go to the file (default 1024). */
  threshold?: number;
}

interface IoRec {
  name: string;
  dtype: number;
  dims: OnnxDim[];
}

/** Builds a graph node by node and encodes it as a ModelProto. */
export class OnnxGraph {
  #nodes: NodeRec[] = [];
  #inits: InitRec[] = [];
  #inputs: IoRec[] = [];
  #outputs: IoRec[] = [];
  #n = 0;
  #consts = new Map<string, string>();
  #extLocation = "";
  #ext: { file: Deno.FsFile; location: string; threshold: number; size: number } | null = null;

  /** Bytes of initializers so far (inline and external). */
  initBytes = 0;

  /** A graph; with `opts.external`, large initializers are streamed to that file. */
  constructor(opts: { external?: OnnxExternalData } = {}) {
    const e = opts.external;
    if (e) {
      const file = Deno.openSync(e.path, { write: true, create: true, truncate: true });
      this.#ext = { file, location: e.location, threshold: e.threshold ?? 1024, size: 0 };
      this.#extLocation = e.location;
    }
  }

  /** Bytes kept inline (what counts toward protobuf's 2 GiB limit). */
  get inlineBytes(): number {
    let n = 0;
    for (const t of this.#inits) n += t.raw.length;
    return n;
  }

  /** Closes the external data file (call after the last initializer). */
  close(): void {
    this.#ext?.file.close();
    this.#ext = null;
  }

  /** Declares a graph input. */
  input(name: string, dtype: number, dims: OnnxDim[]): string {
    this.#inputs.push({ name, dtype, dims });
    return name;
  }

  /** Declares a graph output (produced by some node under that name). */
  output(name: string, dtype: number, dims: OnnxDim[]): void {
    this.#outputs.push({ name, dtype, dims });
  }

  /** Adds an initializer from raw little-endian bytes; returns its name. */
  init(name: string, dtype: number, dims: number[], raw: Uint8Array): string {
    this.initBytes += raw.length;
    const e = this.#ext;
    if (e && raw.length >= e.threshold) {
      const offset = Math.ceil(e.size / 4096) * 4096;
      const writeAll = (b: Uint8Array) => {
        let o = 0;
        while (o < b.length) o += e.file.writeSync(b.subarray(o));
      };
      if (offset > e.size) writeAll(new Uint8Array(offset - e.size));
      writeAll(raw);
      e.size = offset + raw.length;
      this.#inits.push({
        name,
        dtype,
        dims,
        raw: new Uint8Array(0),
        ext: { offset, length: raw.length },
      });
      return name;
    }
    this.#inits.push({ name, dtype, dims, raw });
    return name;
  }

  /** A float32 initializer. */
  f32(name: string, dims: number[], data: Float32Array): string {
    return this.init(
      name,
      ONNX_DTYPE.FLOAT,
      dims,
      new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    );
  }

  /** A shared int64 constant (shape, axes, index), created once per value. */
  i64(values: number[], scalar = false): string {
    const key = `${scalar ? "s" : "v"}${values.join(",")}`;
    const have = this.#consts.get(key);
    if (have) return have;
    const name = `const_i64_${this.#consts.size}`;
    const a = BigInt64Array.from(values.map((v) => BigInt(v)));
    this.init(name, ONNX_DTYPE.INT64, scalar ? [] : [values.length], new Uint8Array(a.buffer));
    this.#consts.set(key, name);
    return name;
  }

  /** A shared float32 scalar constant. */
  scalar(v: number): string {
    const key = `f${v}`;
    const have = this.#consts.get(key);
    if (have) return have;
    const name = `const_f32_${this.#consts.size}`;
    this.f32(name, [], Float32Array.of(v));
    this.#consts.set(key, name);
    return name;
  }

  /**
   * `x · Wᵀ` with `W` `[rows, cols]` row-major, stored transposed as the float32 initializer
   * `${name}.T` `[cols, rows]` (ONNX MatMul's right operand).
   */
  matmulT(x: string, name: string, W: Float32Array, rows: number, cols: number): string {
    const Wt = transpose2d({ shape: [rows, cols], data: W }).data;
    return this.node("MatMul", [x, this.f32(`${name}.T`, [cols, rows], Wt)]);
  }

  /** RMSNorm over the last axis: `x / √(mean(x²) + eps) · w`, `w` stored as `name`. */
  rmsNorm(x: string, name: string, w: Float32Array, eps: number): string {
    const ms = this.node("ReduceMean", [this.node("Mul", [x, x])], {
      attrs: { axes: [-1], keepdims: 1 },
    });
    const inv = this.node("Reciprocal", [
      this.node("Sqrt", [this.node("Add", [ms, this.scalar(eps)])]),
    ]);
    return this.node("Mul", [this.node("Mul", [x, inv]), this.f32(name, [w.length], w)]);
  }

  /** SwiGLU: `silu(gate) · up`. */
  swiglu(gate: string, up: string): string {
    return this.node("Mul", [this.node("Mul", [gate, this.node("Sigmoid", [gate])]), up]);
  }

  /**
   * Adds a node; returns its first output. Outputs are fresh names unless `opts.outputs` names
   * them (graph outputs).
   */
  node(
    op: string,
    inputs: string[],
    opts: { attrs?: Record<string, OnnxAttr>; domain?: string; outputs?: string[] } = {},
  ): string {
    const outputs = opts.outputs ?? [`${op.toLowerCase()}_${this.#n}`];
    this.#n++;
    this.#nodes.push({
      op,
      inputs,
      outputs,
      attrs: opts.attrs ?? {},
      domain: opts.domain ?? "",
    });
    return outputs[0];
  }

  /** Encodes the ModelProto (IR 8; opsets: default domain 17, com.microsoft 1). */
  encode(producer = "quantlab"): Uint8Array {
    return this.#encode(producer).bytes();
  }

  /**
   * Writes the ModelProto to `path` chunk by chunk: the initializers' bytes are written from
   * where they are, never copied into one buffer. Returns the bytes written.
   */
  async write(path: string, producer = "quantlab"): Promise<number> {
    const b = this.#encode(producer);
    const f = await Deno.open(path, { write: true, create: true, truncate: true });
    try {
      for (const p of b.parts) {
        let o = 0;
        while (o < p.length) o += await f.write(p.subarray(o));
      }
    } finally {
      f.close();
    }
    return b.len;
  }

  #encode(producer: string): Buf {
    const m = new Buf();
    fInt(m, 1, 8);
    fStr(m, 2, producer);
    sub(m, 7, (g) => {
      this.#nodes.forEach((n, i) =>
        sub(g, 1, (nb) => {
          for (const s of n.inputs) fStr(nb, 1, s);
          for (const s of n.outputs) fStr(nb, 2, s);
          fStr(nb, 3, `node_${i}`);
          fStr(nb, 4, n.op);
          for (const [k, v] of Object.entries(n.attrs)) {
            sub(nb, 5, (a) => {
              fStr(a, 1, k);
              if (Array.isArray(v)) {
                for (const x of v) fInt(a, 8, x);
                fInt(a, 20, 7);
              } else if (typeof v === "object") {
                fFloat(a, 2, v.f);
                fInt(a, 20, 1);
              } else {
                fInt(a, 3, v);
                fInt(a, 20, 2);
              }
            });
          }
          if (n.domain) fStr(nb, 7, n.domain);
        })
      );
      fStr(g, 2, "main_graph");
      for (const t of this.#inits) {
        sub(g, 5, (tb) => {
          for (const d of t.dims) fInt(tb, 1, d);
          fInt(tb, 2, t.dtype);
          fStr(tb, 8, t.name);
          if (t.ext) {
            const entry = (k: string, v: string) =>
              sub(tb, 13, (kv) => {
                fStr(kv, 1, k);
                fStr(kv, 2, v);
              });
            entry("location", this.#extLocation);
            entry("offset", String(t.ext.offset));
            entry("length", String(t.ext.length));
            fInt(tb, 14, 1); // DataLocation.EXTERNAL
          } else fBytes(tb, 9, t.raw);
        });
      }
      const io = (field: number, v: IoRec) =>
        sub(g, field, (vb) => {
          fStr(vb, 1, v.name);
          sub(vb, 2, (tp) =>
            sub(tp, 1, (tt) => {
              fInt(tt, 1, v.dtype);
              sub(tt, 2, (sh) => {
                for (const d of v.dims) {
                  sub(sh, 1, (db) => (typeof d === "number" ? fInt(db, 1, d) : fStr(db, 2, d)));
                }
              });
            }));
        });
      for (const v of this.#inputs) io(11, v);
      for (const v of this.#outputs) io(12, v);
    });
    sub(m, 8, (o) => {
      fStr(o, 1, "");
      fInt(o, 2, 17);
    });
    sub(m, 8, (o) => {
      fStr(o, 1, "com.microsoft");
      fInt(o, 2, 1);
    });
    return m;
  }
}
