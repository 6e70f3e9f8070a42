import { assert, assertEquals, assertLess } from "@std/assert";
import { buildForwardGraph } from "../../src/io/onnx_forward_graph.ts";
import { loadOrt } from "../../src/backend/cpu.ts";
import { forward } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K-hf`;

Deno.test("forward graph, 'matmul' attention: logits match forward() at any length and block count; lse is the rows' log-sum-exp", async () => {
  const ort = await loadOrt();
  const m = await loadModel(MODEL);
  const V = m.config.vocabSize;
  // chunks 8 (default) with S < 8 leaves some query blocks empty; 3 blocks give uneven bounds.
  for (const chunks of [undefined, 1, 3]) {
    const bytes = await buildForwardGraph(m.config, (n) => m.weights.get(n), { chunks });
    const s = await ort.InferenceSession.create(bytes);
    for (const S of [1, 3, 7, 9, 64]) {
      const B = 2;
      const ids = Array.from({ length: B * S }, (_, i) => (i * 53 + 5 + S) % V);
      const ref = await forward(m, ids, { batch: B });
      const x = new ort.Tensor("int64", BigInt64Array.from(ids, (v) => BigInt(v)), [B, S]);
      const out = await s.run({ input_ids: x });
      const got = out.logits.data as Float32Array;
      assertEquals(got.length, ref.data.length);
      let md = 0;
      for (let i = 0; i < got.length; i++) md = Math.max(md, Math.abs(got[i] - ref.data[i]));
      assertLess(md, 1e-3, `chunks ${chunks}, S ${S}: max |Δ logit| ${md}`);
      // lse against a float64 log-sum-exp of the graph's own logits.
      const lse = out.lse.data as Float32Array;
      assertEquals(lse.length, B * S);
      for (let r = 0; r < B * S; r++) {
        let mx = -Infinity;
        for (let j = 0; j < V; j++) mx = Math.max(mx, got[r * V + j]);
        let sum = 0;
        for (let j = 0; j < V; j++) sum += Math.exp(got[r * V + j] - mx);
        assertLess(Math.abs(lse[r] - (mx + Math.log(sum))), 1e-5);
      }
    }
  }
});

Deno.test("forward graph: the three attention layouts agree on a 512-token window", async () => {
  const ort = await loadOrt();
  const m = await loadModel(MODEL);
  const S = m.config.maxPositions;
  const ids = Array.from({ length: S }, (_, i) => (i * 97 + 3) % m.config.vocabSize);
  const ref = await forward(m, ids);
  for (const attention of ["matmul", "gqa", "mha"] as const) {
    const bytes = await buildForwardGraph(m.config, (n) => m.weights.get(n), { attention });
    const s = await ort.InferenceSession.create(bytes);
    const x = new ort.Tensor("int64", BigInt64Array.from(ids, (v) => BigInt(v)), [1, S]);
    const got = (await s.run({ input_ids: x })).logits.data as Float32Array;
    let md = 0;
    for (let i = 0; i < got.length; i++) md = Math.max(md, Math.abs(got[i] - ref.data[i]));
    assert(md < 1e-3, `${attention}: max |Δ logit| ${md}`);
  }
});
