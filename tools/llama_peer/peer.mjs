// quantlab's peer runtime: runs a GGUF with node-llama-cpp (pinned 3.21.1, prebuilt llama.cpp) on
// the CPU with 1 thread. Reads a JSON request on argv[2]:
//   { model, prompt: number[], n: number, teacher?: number[], kvF32?: boolean, threads?: number,
//     ignoreEos?: boolean }
// (kvF32: F32 KV cache instead of llama.cpp's default F16)
// and prints one JSON line: { greedy: number[] (n tokens, greedy), logprobs: number[] (log p of
// teacher[i] given prompt + teacher[<i], when teacher is given), tokenize: number[] (the runtime's
// tokenization of "Once upon a time", no BOS), genSeconds (prompt + n greedy tokens),
// teacherSeconds (the teacher-forced pass), seconds }.
import { getLlama } from "node-llama-cpp";

const req = JSON.parse(process.argv[2]);
const t0 = performance.now();
const llama = await getLlama({ gpu: false, logLevel: "error", build: "never" });
const model = await llama.loadModel({ modelPath: req.model, gpuLayers: 0 });
const ctxOpts = {
  contextSize: 512,
  threads: req.threads ?? 1,
  batchSize: 512,
  flashAttention: false,
};
if (req.kvF32) {
  ctxOpts.experimentalKvCacheKeyType = "F32";
  ctxOpts.experimentalKvCacheValueType = "F32";
}
const out = {
  greedy: [],
  logprobs: [],
  tokenize: model.tokenize("Once upon a time", false),
};
{
  const ctx = await model.createContext(ctxOpts);
  const seq = ctx.getSequence();
  const g0 = performance.now();
  for await (
    const t of seq.evaluate(req.prompt, { temperature: 0, yieldEogToken: !!req.ignoreEos })
  ) {
    out.greedy.push(t);
    if (out.greedy.length >= req.n) break;
  }
  out.genSeconds = (performance.now() - g0) / 1000;
  await ctx.dispose();
}
if (req.teacher) {
  const t1 = performance.now();
  const ctx = await model.createContext(ctxOpts);
  const seq = ctx.getSequence();
  const input = [...req.prompt, ...req.teacher.slice(0, -1)].map((t, i) =>
    i >= req.prompt.length - 1 ? [t, { generateNext: { probabilities: true } }] : t
  );
  const res = await seq.controlledEvaluate(input);
  for (let i = req.prompt.length - 1; i < input.length; i++) {
    const target = req.teacher[i - req.prompt.length + 1];
    const p = res[i]?.next?.probabilities?.get(target) ?? 0;
    out.logprobs.push(Math.log(p));
  }
  await ctx.dispose();
  out.teacherSeconds = (performance.now() - t1) / 1000;
}
out.seconds = (performance.now() - t0) / 1000;
console.log(JSON.stringify(out));
await model.dispose();
await llama.dispose();
