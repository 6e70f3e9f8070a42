/**
 * CPU backend: matrix products through onnxruntime-node (one cached MatMul session and one cached
 * Gemm-with-transB session, both with dynamic shapes), plain TypeScript below a size threshold
 * where a native call costs more than the arithmetic. onnxruntime-node is imported lazily.
 * @module
 */
import type { Tensor } from "../tensor.ts";
import { type Backend, gemmDims } from "./backend.ts";
import { matmulTransBTS, matmulTS } from "./_matmul_ts.ts";
import { encodeModel } from "./_onnx_proto.ts";

// deno-lint-ignore no-explicit-any
type Ort = any;
// deno-lint-ignore no-explicit-any
type Session = any;

let ortPromise: Promise<Ort> | undefined;
const sessions = new Map<string, Promise<Session>>();

/** Loads onnxruntime-node once (needs `--allow-ffi`). */
export function loadOrt(): Promise<Ort> {
  ortPromise ??= import("onnxruntime-node").then((m) => m.default ?? m);
  return ortPromise;
}

/** The ONNX bytes of `Y = A · B` (MatMul) or `Y = A · Bᵀ` (Gemm transB=1), float32, dynamic dims. */
export function gemmModelBytes(transB: boolean): Uint8Array {
  const f = 1;
  return encodeModel(
    [
      transB
        ? { op: "Gemm", inputs: ["A", "B"], outputs: ["Y"], intAttrs: { transB: 1 } }
        : { op: "MatMul", inputs: ["A", "B"], outputs: ["Y"] },
    ],
    [
      { name: "A", elemType: f, dims: ["m", "k"] },
      { name: "B", elemType: f, dims: transB ? ["n", "k"] : ["k", "n"] },
    ],
    [{ name: "Y", elemType: f, dims: ["m", "n"] }],
  );
}

/**
 * Session options of every CPU-backend session: onnxruntime's intra-op pool is one thread per
 * core by default; the environment variable `QUANTLAB_CPU_THREADS` (read once, when permitted)
 * sets another size, e.g. to compare with a peer at the same thread count.
 */
export function sessionOptions(): Record<string, unknown> {
  threadsFromEnv ??= (() => {
    try {
      const v = Number(Deno.env.get("QUANTLAB_CPU_THREADS"));
      return Number.isInteger(v) && v > 0 ? v : 0;
    } catch {
      return 0; // no --allow-env
    }
  })();
  return {
    graphOptimizationLevel: "all",
    executionMode: "sequential",
    ...(threadsFromEnv ? { intraOpNumThreads: threadsFromEnv } : {}),
  };
}
let threadsFromEnv: number | undefined;

/** A cached session for the given graph kind (threads: {@linkcode sessionOptions}). */
export function gemmSession(transB: boolean): Promise<Session> {
  const key = transB ? "gemmT" : "matmul";
  let s = sessions.get(key);
  if (!s) {
    s = loadOrt().then((ort) =>
      ort.InferenceSession.create(gemmModelBytes(transB), sessionOptions())
    );
    sessions.set(key, s);
  }
  return s;
}

/**
 * A float64 `Y = A · B` through onnxruntime (`MatMul` on `tensor(double)`, MLAS DGEMM, dynamic
 * shapes), or `Y = Aᵀ · B` with `transA` (`Gemm` with `transA = 1`, `a` stored `k × m`):
 * resolves to the product function once the sessions exist. Rejects when onnxruntime-node
 * cannot be loaded (callers fall back to TypeScript).
 */
export async function matmulF64Session(): Promise<
  (
    a: Float64Array,
    b: Float64Array,
    dims: { m: number; k: number; n: number; transA?: boolean },
  ) => Promise<Float64Array>
> {
  const ort = await loadOrt();
  const f64 = 11; // TensorProto.DOUBLE
  const create = (transA: boolean) =>
    ort.InferenceSession.create(
      encodeModel(
        [
          transA
            ? { op: "Gemm", inputs: ["A", "B"], outputs: ["Y"], intAttrs: { transA: 1 } }
            : { op: "MatMul", inputs: ["A", "B"], outputs: ["Y"] },
        ],
        [
          { name: "A", elemType: f64, dims: transA ? ["k", "m"] : ["m", "k"] },
          { name: "B", elemType: f64, dims: ["k", "n"] },
        ],
        [{ name: "Y", elemType: f64, dims: ["m", "n"] }],
      ),
      sessionOptions(),
    );
  const [plain, transposed] = await Promise.all([create(false), create(true)]);
  return async (a, b, { m, k, n, transA }) => {
    const out = await (transA ? transposed : plain).run({
      A: new ort.Tensor("float64", a, transA ? [k, m] : [m, k]),
      B: new ort.Tensor("float64", b, [k, n]),
    });
    return out.Y.data as Float64Array;
  };
}

/** The ONNX bytes of batched attention: MatMul(Q, Kᵀ) + mask → Softmax → MatMul(·, V). */
export function attentionModelBytes(): Uint8Array {
  const f = 1;
  return encodeModel(
    [
      { op: "MatMul", inputs: ["Q", "KT"], outputs: ["S"] },
      { op: "Add", inputs: ["S", "M"], outputs: ["SM"] },
      { op: "Softmax", inputs: ["SM"], outputs: ["P"], intAttrs: { axis: -1 } },
      { op: "MatMul", inputs: ["P", "V"], outputs: ["Y"] },
    ],
    [
      { name: "Q", elemType: f, dims: ["g", "t", "d"] },
      { name: "KT", elemType: f, dims: ["g", "d", "s"] },
      { name: "V", elemType: f, dims: ["g", "s", "d"] },
      { name: "M", elemType: f, dims: ["t", "s"] },
    ],
    [{ name: "Y", elemType: f, dims: ["g", "t", "d"] }],
  );
}

async function runAttention(q: Tensor, kT: Tensor, v: Tensor, mask: Tensor): Promise<Tensor> {
  const ort = await loadOrt();
  let s = sessions.get("attn");
  if (!s) {
    s = ort.InferenceSession.create(attentionModelBytes(), sessionOptions());
    sessions.set("attn", s!);
  }
  const out = await (await s!).run({
    Q: new ort.Tensor("float32", q.data, q.shape),
    KT: new ort.Tensor("float32", kT.data, kT.shape),
    V: new ort.Tensor("float32", v.data, v.shape),
    M: new ort.Tensor("float32", mask.data, mask.shape),
  });
  return { shape: [...q.shape], data: out.Y.data as Float32Array };
}

/**
 * The ONNX bytes of a left-looking block update: `Scan` over the earlier blocks b (in order) of
 * `W ← W − E_b · H_b` (float32 `MatMul`, then `Sub`), from `W0` [rows, count], `E` [nb, rows, k]
 * and `H` [nb, k, count] to `W` [rows, count].
 */
export function blockUpdateModelBytes(): Uint8Array {
  const f = 1;
  return encodeModel(
    [{
      op: "Scan",
      inputs: ["W0", "E", "H"],
      outputs: ["W"],
      intAttrs: { num_scan_inputs: 2 },
      graphAttrs: {
        body: {
          nodes: [
            { op: "MatMul", inputs: ["e", "h"], outputs: ["p"] },
            { op: "Sub", inputs: ["w_in", "p"], outputs: ["w_out"] },
          ],
          inputs: [
            { name: "w_in", elemType: f, dims: ["rows", "count"] },
            { name: "e", elemType: f, dims: ["rows", "k"] },
            { name: "h", elemType: f, dims: ["k", "count"] },
          ],
          outputs: [{ name: "w_out", elemType: f, dims: ["rows", "count"] }],
        },
      },
    }],
    [
      { name: "W0", elemType: f, dims: ["rows", "count"] },
      { name: "E", elemType: f, dims: ["nb", "rows", "k"] },
      { name: "H", elemType: f, dims: ["nb", "k", "count"] },
    ],
    [{ name: "W", elemType: f, dims: ["rows", "count"] }],
  );
}

/**
 * GPTQ's lazy batch update of one block, left-looking: `W1 − E_0·H_0 − E_1·H_1 − …` over the
 * `nb` earlier blocks in order, each product a float32 MatMul rounded on its own and each
 * subtraction rounded in turn (one onnxruntime `Scan`, {@linkcode blockUpdateModelBytes}). Those
 * are the operations the right-looking `W[:, i2:] −= Err1 · Hinv[i1:i2, i2:]` applies to these
 * columns, block after block, and onnxruntime's MatMul gives each column of a product the same
 * bits whatever the width of the right-hand side (`tests/quant/gptq_left_looking_test.ts`), so
 * the result is bit-identical; but only `[rows, count]` floats leave the session per block
 * instead of `[rows, cols − i2]`. (Large fresh outputs are what made the right-looking update
 * slow here: onnxruntime-node copies each output into a new ArrayBuffer, and first-touch page
 * faults in this VM cut a 4096×128×2048 product from ~90 to ~16 GFLOP/s.) `E` holds the earlier
 * blocks' `Err1` stacked [nb, rows, k], `H` the matching `Hinv` tiles [nb, k, count].
 */
export async function blockUpdateSession(): Promise<
  (
    W1: Float32Array,
    stacks: { E: Float32Array; H: Float32Array },
    dims: { rows: number; count: number; k: number; nb: number },
  ) => Promise<Float32Array>
> {
  const ort = await loadOrt();
  let s = sessions.get("blockUpdate");
  if (!s) {
    s = ort.InferenceSession.create(blockUpdateModelBytes(), sessionOptions());
    sessions.set("blockUpdate", s!);
  }
  const session = await s!;
  return async (W1, { E, H }, { rows, count, k, nb }) => {
    if (nb === 0) return W1;
    const out = await session.run({
      W0: new ort.Tensor("float32", W1, [rows, count]),
      E: new ort.Tensor("float32", E.subarray(0, nb * rows * k), [nb, rows, k]),
      H: new ort.Tensor("float32", H.subarray(0, nb * k * count), [nb, k, count]),
    });
    return out.W.data as Float32Array;
  };
}

/** Below this many multiply-adds, TypeScript loops win over a native call. */
export const TS_THRESHOLD = 1 << 15;

async function runGemm(a: Tensor, b: Tensor, transB: boolean): Promise<Tensor> {
  const [m, k, n] = gemmDims(a, b, transB);
  if (m * k * n <= TS_THRESHOLD || m === 0 || n === 0 || k === 0) {
    const data = transB
      ? matmulTransBTS(a.data, b.data, m, k, n)
      : matmulTS(a.data, b.data, m, k, n);
    return { shape: [m, n], data };
  }
  const ort = await loadOrt();
  const session = await gemmSession(transB);
  const A = new ort.Tensor("float32", a.data, [m, k]);
  const B = new ort.Tensor("float32", b.data, b.shape);
  const out = await session.run({ A, B });
  const y = out.Y;
  const data = y.data as Float32Array;
  return { shape: [m, n], data };
}

let f64Session: ReturnType<typeof matmulF64Session> | undefined;

/** The CPU backend instance. */
export const cpuBackend: Backend = {
  name: "cpu",
  description: "cpu (onnxruntime-node MatMul/Gemm; TypeScript for tiny shapes)",
  matmul: (a, b) => runGemm(a, b, false),
  matmulTransB: (a, b) => runGemm(a, b, true),
  attention: runAttention,
  matmulF64: async (a, b, dims) => (await (f64Session ??= matmulF64Session()))(a, b, dims),
};
