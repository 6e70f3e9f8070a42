/**
 * Child process of the SIGKILL test in `export_test.ts`: exports stories260K (F32 GGUF) to
 * `Deno.args[0]` with every weight read delayed by 150 ms, so the parent can kill it mid-write.
 * @module
 */
import { loadModel } from "../../src/models/load.ts";
import { exportModel } from "../../src/io/export.ts";

const m = await loadModel("../shared/data/models/stories260K-hf");
const slow = {
  ...m,
  weights: {
    names: () => m.weights.names(),
    get: async (n: string) => {
      await new Promise((r) => setTimeout(r, 150));
      return m.weights.get(n);
    },
  },
};
await exportModel(slow, Deno.args[0], { format: "gguf" });
console.log("done");
