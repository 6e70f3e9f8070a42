/**
 * CPU benchmark (`deno task bench`): our GEMM path against a raw onnxruntime session over the same
 * graph in the same run (ratio ≥ 0.9 is the target), and stories260K forward tokens/s; then
 * stories260K TinyStories perplexity tokens/s through the whole-decoder onnxruntime graph
 * (`src/models/ort_forward.ts`) against the TypeScript forward, alternating in the same run (a
 * subset of windows, 3 rounds; `--full`: all of them, 1 round; `--rounds N`: N rounds), wall and
 * process CPU seconds (user + system) of each path, best of the rounds.
 * `--ppl-only` skips the GEMM and forward sections.
 * @module
 */
import { cpuBackend, gemmModelBytes, loadOrt } from "../src/backend/cpu.ts";
import { forward } from "../src/models/decoder.ts";
import { ortForward } from "../src/models/ort_forward.ts";
import { perplexity } from "../src/eval/perplexity.ts";
import { loadModel } from "../src/models/load.ts";
import { mulberry32, randnArray } from "../src/rng.ts";
import process from "node:process";

const rng = mulberry32(1);
const ort = await loadOrt();

async function best(fn: () => Promise<unknown>, reps: number): Promise<number> {
  await fn();
  let b = Infinity;
  for (let r = 0; r < reps; r++) {
    const t = performance.now();
    await fn();
    b = Math.min(b, performance.now() - t);
  }
  return b / 1000;
}

const pplOnly = Deno.args.includes("--ppl-only");
const DATA = new URL("../../shared/data/", import.meta.url).pathname;
const model = await loadModel(`${DATA}models/stories260K-hf`);
if (!pplOnly) {
  console.log("GEMM (float32, C = A·B): ours vs a raw onnxruntime session, best of 5");
  console.log("shape (m×k×n)     ours GFLOP/s   raw GFLOP/s   ratio");
  for (const [m, k, n] of [[1024, 1024, 1024], [2048, 768, 768], [256, 64, 172]]) {
    const a = { shape: [m, k], data: randnArray(rng, m * k) };
    const b = { shape: [k, n], data: randnArray(rng, k * n) };
    const ours = await best(() => cpuBackend.matmul(a, b), 5);
    const raw = await ort.InferenceSession.create(gemmModelBytes(false));
    const A = new ort.Tensor("float32", a.data, [m, k]);
    const B = new ort.Tensor("float32", b.data, [k, n]);
    const rawT = await best(() => raw.run({ A, B }), 5);
    const f = 2 * m * k * n / 1e9;
    console.log(
      `${`${m}×${k}×${n}`.padEnd(17)} ${(f / ours).toFixed(1).padStart(14)} ${
        (f / rawT).toFixed(1).padStart(13)
      } ${(rawT / ours).toFixed(2).padStart(7)}`,
    );
  }

  const ids = Array.from({ length: 8 * 256 }, () => Math.floor(rng() * 512));
  const t = await best(() => forward(model, ids, { batch: 8 }), 3);
  console.log(
    `\nstories260K forward, 8 × 256 tokens: ${(ids.length / t).toFixed(0)} tokens/s (${
      (t * 1000).toFixed(0)
    } ms)`,
  );
  const tg = await best(() => ortForward(model, ids, { batch: 8 }), 3);
  console.log(
    `stories260K forward, 8 × 256 tokens, onnxruntime graph: ${
      (ids.length / tg).toFixed(0)
    } tokens/s (${(tg * 1000).toFixed(0)} ms, ${(t / tg).toFixed(1)}× the TypeScript forward)`,
  );
}

const full = Deno.args.includes("--full");
const nsamples = full ? undefined : 32;
const ri = Deno.args.indexOf("--rounds");
const rounds = ri >= 0 ? Number(Deno.args[ri + 1]) : full ? 1 : 3;
console.log(
  `\nstories260K TinyStories perplexity (${full ? "all" : nsamples} windows of 512), ` +
    `alternating ${rounds} rounds (best of each path)`,
);
// Tokenize once before timing (evalTokens caches the stream), so both paths are timed on the
// same warm cache: the first call of a process pays ~5 s (loaded core) of tokenization.
const tok0 = performance.now();
await perplexity(model, "tinystories", { nsamples: 1 });
console.log(
  `first call (tokenizer, token stream, graph): ${
    ((performance.now() - tok0) / 1000).toFixed(1)
  } s`,
);
// Process CPU seconds (user + system) beside wall seconds: on a shared machine the load
// stretches wall time; CPU time is the less disturbed measure of each path's own work.
const cpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
const times = { ort: Infinity, ts: Infinity };
const cpuTimes = { ort: Infinity, ts: Infinity };
let ppl = { ort: 0, ts: 0 };
let tokens = 0;
for (let r = 0; r < rounds; r++) {
  for (const ort of [true, false]) {
    const c0 = cpuSeconds();
    const res = await perplexity(model, "tinystories", { nsamples, ort });
    const cpu = cpuSeconds() - c0;
    const k = ort ? "ort" : "ts";
    if (res.ort !== ort) throw new Error(`expected the ${k} path, got ${res.ortFallback}`);
    console.log(`  round ${r + 1}, ${k}: ${res.seconds.toFixed(2)} s (CPU ${cpu.toFixed(2)} s)`);
    times[k] = Math.min(times[k], res.seconds);
    cpuTimes[k] = Math.min(cpuTimes[k], cpu);
    ppl = { ...ppl, [k]: res.ppl };
    tokens = res.windows * res.seqlen;
  }
}
console.log("path                 seconds   tokens/s   CPU s   ppl");
for (const k of ["ort", "ts"] as const) {
  console.log(
    `${(k === "ort" ? "onnxruntime graph" : "TypeScript forward").padEnd(20)} ${
      times[k].toFixed(2).padStart(7)
    } ${(tokens / times[k]).toFixed(0).padStart(10)} ${cpuTimes[k].toFixed(2).padStart(7)}   ${
      ppl[k].toFixed(4)
    }`,
  );
}
console.log(
  `speedup: ${(times.ts / times.ort).toFixed(1)}× wall, ${
    (cpuTimes.ts / cpuTimes.ort).toFixed(1)
  }× CPU time`,
);
