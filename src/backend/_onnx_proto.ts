/**
 * A minimal ONNX protobuf encoder: just enough to build small graphs (MatMul, Gemm, a Scan with
 * its body) with dynamic shapes, so no .onnx file ships and no protobuf package is needed.
 * @module
 */

type Field = Uint8Array;

function varint(n: number | bigint): number[] {
  let v = BigInt(n);
  if (v < 0n) v += 1n << 64n; // int64 two's complement, as protobuf encodes negative ints
  const out: number[] = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function int(field: number, v: number): Field {
  return Uint8Array.from([...varint((field << 3) | 0), ...varint(v)]);
}

function bytes(field: number, b: Uint8Array): Field {
  return concat([Uint8Array.from([...varint((field << 3) | 2), ...varint(b.length)]), b]);
}

function str(field: number, s: string): Field {
  return bytes(field, new TextEncoder().encode(s));
}

function msg(field: number, parts: Field[]): Field {
  return bytes(field, concat(parts));
}

/** A dimension: a number (fixed) or a string (symbolic). */
export type Dim = number | string;

/** Input/output declaration: name, ONNX elem type (1 = FLOAT, 10 = FLOAT16) and dims. */
export interface ValueInfo {
  /** Tensor name. */
  name: string;
  /** ONNX TensorProto.DataType (1 float32). */
  elemType: number;
  /** Dims, fixed or symbolic. */
  dims: Dim[];
}

/** A subgraph (a Scan or Loop body): its nodes, inputs and outputs. */
export interface GraphSpec {
  /** Nodes in order. */
  nodes: NodeSpec[];
  /** Graph inputs. */
  inputs: ValueInfo[];
  /** Graph outputs. */
  outputs: ValueInfo[];
}

/** One graph node. Integer and subgraph attributes only. */
export interface NodeSpec {
  /** Operator type, e.g. "MatMul". */
  op: string;
  /** Input names. */
  inputs: string[];
  /** Output names. */
  outputs: string[];
  /** Integer attributes. */
  intAttrs?: Record<string, number>;
  /** Graph attributes (AttributeProto type GRAPH), e.g. Scan's `body`. */
  graphAttrs?: Record<string, GraphSpec>;
}

function valueInfo(field: number, v: ValueInfo): Field {
  const dims = v.dims.map((d) => msg(1, [typeof d === "number" ? int(1, d) : str(2, d)]));
  const shape = msg(2, dims);
  const tensorType = msg(1, [int(1, v.elemType), shape]);
  return msg(field, [str(1, v.name), msg(2, [tensorType])]);
}

/** GraphProto fields (nodes 1, name 2, inputs 11, outputs 12) of `g`, wrapped as `field`. */
function graphProto(field: number, name: string, g: GraphSpec): Field {
  const nodeFields = g.nodes.map((n, i) =>
    msg(1, [
      ...n.inputs.map((s) => str(1, s)),
      ...n.outputs.map((s) => str(2, s)),
      str(3, name === "g" ? `n${i}` : `${name}_n${i}`),
      str(4, n.op),
      // AttributeProto: name 1, i 3, g 6, type 20 (INT 2, GRAPH 5).
      ...Object.entries(n.intAttrs ?? {}).map(([k, v]) =>
        msg(5, [str(1, k), int(3, v), int(20, 2)])
      ),
      ...Object.entries(n.graphAttrs ?? {}).map(([k, sub]) =>
        msg(5, [str(1, k), graphProto(6, `${name}_${k}${i}`, sub), int(20, 5)])
      ),
    ])
  );
  return msg(field, [
    ...nodeFields,
    str(2, name),
    ...g.inputs.map((v) => valueInfo(11, v)),
    ...g.outputs.map((v) => valueInfo(12, v)),
  ]);
}

/** Encodes a ModelProto (IR 8, default opset 17) holding the given nodes. */
export function encodeModel(
  nodes: NodeSpec[],
  inputs: ValueInfo[],
  outputs: ValueInfo[],
): Uint8Array {
  const graph = graphProto(7, "g", { nodes, inputs, outputs });
  return concat([int(1, 8), str(2, "quantlab"), graph, msg(8, [str(1, ""), int(2, 17)])]);
}
