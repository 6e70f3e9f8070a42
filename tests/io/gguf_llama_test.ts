/**
 * An independent runtime runs quantlab's GGUF exports: node-llama-cpp 3.21.1 (prebuilt
 * llama.cpp, CPU, 1 thread) through `tools/llama_peer/peer.mjs`, on stories260K. Checks: the
 * runtime tokenizes with the exported vocabulary as quantlab does; F32 and Q8_0 (f16-scale g32
 * RTN) greedy text is identical to quantlab's forward for 64 tokens; per-token log-probs of
 * quantlab's greedy continuation (teacher-forced) agree within measured bounds; Q4_0/Q4_1 gaps and
 * common greedy prefixes are measured and printed. Skips, saying why, when node-llama-cpp is not
 * installed (`cd tools/llama_peer && npm ci`).
 */
import { assert, assertEquals } from "@std/assert";
import { loadModel } from "../../src/models/load.ts";
import { forward } from "../../src/models/decoder.ts";
import { generate } from "../../src/eval/generate.ts";
import { getTokenizer } from "../../src/models/load.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import { withF16Scales } from "../../src/quant/core/f16_grid.ts";
import { exportModel } from "../../src/io/export.ts";
import { dataRoot } from "../../src/_paths.ts";
import { loadEvalText } from "../../src/io/datasets.ts";
import { peerInstalled, runPeer } from "../../tools/llama_peer/run.ts";

const installed = await peerInstalled();
if (!installed) {
  console.log(
    "gguf_llama_test: skipped — node-llama-cpp is not installed (cd tools/llama_peer && npm ci)",
  );
}

Deno.test({
  name: "node-llama-cpp runs the exported stories260K like quantlab's forward",
  ignore: !installed,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "quantlab_llama_" });
    try {
      const m = await loadModel(`${dataRoot()}/models/stories260K-hf`);
      const tok = await getTokenizer(m);
      const prompt = tok.encode("Once upon a time");
      const g32 = (bits: number, sym: boolean) =>
        withF16Scales(rtn({ bits, groupSize: 32, sym, partialGroups: true }));
      const cases = [
        ["F32", null],
        ["Q8_0", g32(8, true)],
        ["Q4_0", g32(4, true)],
        ["Q4_1", g32(4, false)],
      ] as const;
      const rows: string[] = [];
      for (const [label, q] of cases) {
        const qm = q ? await quantize(m, q, { progress: false } as never) : m;
        await exportModel(qm, `${dir}/${label}`, { format: "gguf" });
        const g = await generate(qm, prompt, {
          maxNewTokens: 64,
          stopAtEos: false,
          resident: false,
        });
        const ids = g.ids;
        assertEquals(ids.length, 64);
        const logits = (await forward(qm, [...prompt, ...ids.slice(0, -1)])).data;
        const V = m.config.vocabSize;
        const ours = ids.map((t, i) => {
          const row = logits.subarray((prompt.length - 1 + i) * V, (prompt.length + i) * V);
          let mx = -Infinity;
          for (const v of row) mx = Math.max(mx, v);
          let s = 0;
          for (const v of row) s += Math.exp(v - mx);
          return row[t] - mx - Math.log(s);
        });
        for (const kvF32 of [false, true]) {
          const r = await runPeer({
            model: `${dir}/${label}/model.gguf`,
            prompt,
            n: 64,
            teacher: ids,
            kvF32,
          });
          assertEquals(r.tokenize, tok.encode("Once upon a time", { addBos: false }));
          let prefix = 0;
          while (prefix < 64 && r.greedy[prefix] === ids[prefix]) prefix++;
          let gap = 0;
          for (let i = 0; i < 64; i++) gap = Math.max(gap, Math.abs(r.logprobs[i] - ours[i]));
          rows.push(
            `${label} kv=${
              kvF32 ? "F32" : "F16"
            }: common greedy prefix ${prefix}/64, max |Δ log p| ` +
              `${gap.toExponential(2)}, llama.cpp ${(65 / r.genSeconds).toFixed(0)} tok/s vs ` +
              `quantlab ${g.tokensPerSecond.toFixed(0)} tok/s`,
          );
          if (label === "F32") {
            assertEquals(prefix, 64, rows.at(-1));
            assert(gap <= (kvF32 ? 1e-4 : 5e-3), rows.at(-1));
          } else if (label === "Q8_0") {
            if (kvF32) assertEquals(prefix, 64, rows.at(-1));
            assert(gap <= 0.1, rows.at(-1));
          } else {
            // llama.cpp's Q4 matmul quantizes activations to 8 bits: close, not identical.
            assert(gap <= 0.25 && prefix >= 16, rows.at(-1));
          }
        }
      }
      console.log(rows.join("\n"));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "node-llama-cpp and quantlab score the same TinyStories window (perplexity, seconds)",
  ignore: !installed,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "quantlab_llama_ppl_" });
    try {
      const m = await loadModel(`${dataRoot()}/models/stories260K-hf`);
      const tok = await getTokenizer(m);
      const { docs } = await loadEvalText("tinystories");
      const ids = tok.encode(docs!.slice(0, 8).join("\n")).slice(0, 256);
      assertEquals(ids.length, 256);
      const rows: string[] = [];
      const q4 = withF16Scales(rtn({ bits: 4, groupSize: 32, sym: true, partialGroups: true }));
      for (const [label, q] of [["F32", null], ["Q4_0", q4]] as const) {
        const qm = q ? await quantize(m, q, { progress: false } as never) : m;
        await exportModel(qm, `${dir}/${label}`, { format: "gguf" });
        const t0 = performance.now();
        const logits = (await forward(qm, ids.slice(0, -1))).data;
        const V = m.config.vocabSize;
        let nll = 0;
        for (let i = 0; i < ids.length - 1; i++) {
          const row = logits.subarray(i * V, (i + 1) * V);
          let mx = -Infinity;
          for (const v of row) mx = Math.max(mx, v);
          let s = 0;
          for (const v of row) s += Math.exp(v - mx);
          nll -= row[ids[i + 1]] - mx - Math.log(s);
        }
        const ours = Math.exp(nll / (ids.length - 1));
        const tq = (performance.now() - t0) / 1000;
        const r = await runPeer({
          model: `${dir}/${label}/model.gguf`,
          prompt: ids.slice(0, 1),
          n: 1,
          teacher: ids.slice(1),
          kvF32: true,
        });
        const theirs = Math.exp(-r.logprobs.reduce((a, b) => a + b, 0) / r.logprobs.length);
        const rel = Math.abs(theirs - ours) / ours;
        rows.push(
          `${label}: 255 tokens, ppl quantlab ${ours.toFixed(4)} (${tq.toFixed(2)} s) vs ` +
            `llama.cpp ${theirs.toFixed(4)} (${r.seconds.toFixed(2)} s incl. load), rel. diff ${
              rel.toExponential(2)
            }`,
        );
        assert(rel <= (label === "F32" ? 1e-4 : 2e-2), rows.at(-1));
      }
      console.log(rows.join("\n"));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
