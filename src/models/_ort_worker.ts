/**
 * The worker module of {@linkcode OrtForwardPool} (`ort_pool.ts`): one onnxruntime session of a
 * whole-decoder forward graph per worker, one intra-op thread, not spinning. Messages:
 * - in `{ type: "init", graph }` (the graph bytes, a `Uint8Array` over a `SharedArrayBuffer` or
 *   an own buffer) → out `{ type: "ready" }` or `{ type: "error", message }`;
 * - in `{ type: "run", id, ids, batch }` (`ids` an int64 `BigInt64Array` of `batch` equal-length
 *   windows) → out `{ type: "result", id, lse, next }` (float32 per row, the graph's `lse` and
 *   `next_logit` outputs) or `{ type: "error", id, message }`.
 * @module
 */
import { loadOrt } from "../backend/cpu.ts";

// deno-lint-ignore no-explicit-any
type Session = any;

/** The worker global, typed loosely (this module runs only inside a Worker). */
const scope = self as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(msg: unknown, transfer?: Transferable[]): void;
};

let session: Promise<Session> | undefined;

scope.onmessage = async (e: MessageEvent) => {
  const m = e.data;
  if (m.type === "init") {
    try {
      const ort = await loadOrt();
      // onnxruntime-node takes no SharedArrayBuffer-backed bytes: an own copy, dropped once
      // the session has parsed it.
      const g = m.graph as Uint8Array;
      const bytes = g.buffer instanceof SharedArrayBuffer ? g.slice() : g;
      session = ort.InferenceSession.create(bytes, {
        graphOptimizationLevel: "all",
        executionMode: "sequential",
        intraOpNumThreads: 1,
        interOpNumThreads: 1,
        extra: { session: { intra_op: { allow_spinning: "0" } } },
      });
      await session;
      scope.postMessage({ type: "ready" });
    } catch (err) {
      scope.postMessage({ type: "error", message: String((err as Error)?.message ?? err) });
    }
    return;
  }
  if (m.type === "run") {
    try {
      if (!session) throw new Error("the worker has no session (no init message)");
      const s = await session;
      const ort = await loadOrt();
      const ids = m.ids as BigInt64Array;
      const input = new ort.Tensor("int64", ids, [m.batch, ids.length / m.batch]);
      const out = await s.run({ input_ids: input }, ["lse", "next_logit"]);
      const lse = Float32Array.from(out.lse.data as Float32Array);
      const next = Float32Array.from(out.next_logit.data as Float32Array);
      scope.postMessage({ type: "result", id: m.id, lse, next }, [lse.buffer, next.buffer]);
    } catch (err) {
      scope.postMessage({
        type: "error",
        id: m.id,
        message: String((err as Error)?.message ?? err),
      });
    }
  }
};
