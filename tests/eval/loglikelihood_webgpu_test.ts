/**
 * The log-likelihood engine on the WebGPU backend (the software adapter, lavapipe, in CI):
 * per-request log-likelihoods and is-greedy flags of real PIQA, ARC-Easy, HellaSwag and MMLU
 * requests (a few documents each) equal the CPU's within 1e-4 nats. On WebGPU the engine runs
 * the TypeScript forward (products on the GPU, prefix reuse through the KV cache); the CPU side
 * is the onnxruntime graph, so two independent forwards agree.
 */
import { assert, assertAlmostEquals, assertEquals } from "@std/assert";
import { getBackend, setBackend } from "../../src/backend/device.ts";
import { webgpuAvailable, webgpuBackend } from "../../src/backend/webgpu.ts";
import { type EvalResult, evaluate } from "../../src/eval/evaluate.ts";
import { loglikelihoodEngine } from "../../src/eval/loglikelihood.ts";
import { loadModel } from "../../src/models/load.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const skip = await webgpuAvailable({ allowFallback: true })
  ? ""
  : "no WebGPU adapter (on Linux install mesa-vulkan-drivers for lavapipe)";
if (skip) console.log(`loglikelihood_webgpu_test: SKIPPED — ${skip}`);

function resps(r: EvalResult): [number, boolean][] {
  return r.samples!.flatMap((s) => s.resps as [number, boolean][]);
}

Deno.test({
  name: "engine on WebGPU equals the CPU on real piqa/arc_easy/hellaswag/mmlu requests (≤ 1e-4)",
  ignore: skip !== "",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const m = await loadModel(`${DATA}models/stories260K`);
    const gpu = await webgpuBackend({ allowFallback: true });
    const prev = getBackend();
    const tasks = [["piqa", 4], ["arc_easy", 3], ["hellaswag", 2], ["mmlu_anatomy", 1]] as const;
    let worst = 0, n = 0;
    for (const [task, limit] of tasks) {
      const go = { limit, logSamples: true, progress: false };
      const [cpu] = await evaluate(m, [task], go);
      assertEquals(cpu.protocol.engine?.engine, "onnxruntime");
      let w: EvalResult;
      try {
        setBackend(gpu);
        assertEquals((await loglikelihoodEngine(m)).engine, "typescript");
        [w] = await evaluate(m, [task], go);
      } finally {
        setBackend(prev);
      }
      assertEquals(w.protocol.engine?.fallback, "the webgpu backend runs the TypeScript forward");
      const a = resps(cpu), b = resps(w);
      assertEquals(a.length, b.length);
      for (let i = 0; i < a.length; i++) {
        assertAlmostEquals(b[i][0], a[i][0], 1e-4, `${task} request ${i}`);
        assertEquals(b[i][1], a[i][1], `${task} request ${i} is-greedy`);
        worst = Math.max(worst, Math.abs(b[i][0] - a[i][0]));
        n++;
      }
      assertEquals(w.metrics.map((x) => x.value), cpu.metrics.map((x) => x.value));
    }
    assert(n >= 28);
    console.log(`WebGPU vs CPU: ${n} requests, max |Δ log-likelihood| ${worst.toExponential(2)}`);
  },
});
