/**
 * CPU benchmark (`deno task bench`): our GEMM path against a raw onnxruntime session over the same
 * graph in the same run (ratio ≥ 0.9 is the target), and stories260K forward tokens/s; then
 * stories260K TinyStories perplexity tokens/s, alternating three paths in the same run: the
 * whole-decoder onnxruntime graph (`src/models/ort_forward.ts`) on a pool of workers with the
 * "auto" count (`src/models/ort_pool.ts`, `PerplexityOptions.workers`), the same graph on the
 * in-process session alone (`workers: 1`), and the TypeScript forward (a subset of windows, 3
 * rounds; `--full`: all of them, 1 round; `--rounds N`: N rounds). Wall and process CPU seconds
 * (user + system, worker threads included) of each path, best of the rounds; the perplexity of
 * the pool and of `workers: 1` must be the same number; speedups are over the TypeScript forward.
 * `--ppl-only` skips the GEMM and forward sections.
 * @module
 */
import { cpuBackend, gemmModelBytes, loadOrt } from "../src/backend/cpu.ts";
import { forward } from "../src/models/decoder.ts";
import { ortForward } from "../src/models/ort_forward.ts";
import { perplexity, type PerplexityOptions } from "../src/eval/perplexity.ts";
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
type Path = "pool" | "ort1" | "ts";
const paths: { key: Path; label: string; opts: PerplexityOptions }[] = [
  { key: "pool", label: "onnxruntime, auto workers", opts: {} },
  { key: "ort1", label: "onnxruntime, workers: 1", opts: { workers: 1 } },
  { key: "ts", label: "TypeScript forward", opts: { ort: false } },
];
const times: Record<Path, number> = { pool: Infinity, ort1: Infinity, ts: Infinity };
const cpuTimes: Record<Path, number> = { pool: Infinity, ort1: Infinity, ts: Infinity };
const ppl: Record<Path, number> = { pool: 0, ort1: 0, ts: 0 };
const workers: Record<Path, number> = { pool: 0, ort1: 0, ts: 0 };
let tokens = 0;
for (let r = 0; r < rounds; r++) {
  for (const p of paths) {
    const c0 = cpuSeconds();
    const res = await perplexity(model, "tinystories", { nsamples, ...p.opts });
    const cpu = cpuSeconds() - c0;
    if (res.ort !== (p.key !== "ts")) {
      throw new Error(`expected the ${p.key} path, got ${res.ortFallback}`);
    }
    console.log(
      `  round ${r + 1}, ${p.label}: ${res.seconds.toFixed(2)} s (CPU ${cpu.toFixed(2)} s, ` +
        `${res.workers} worker${res.workers === 1 ? "" : "s"}${
          res.workersFallback ? `; ${res.workersFallback}` : ""
        })`,
    );
    times[p.key] = Math.min(times[p.key], res.seconds);
    cpuTimes[p.key] = Math.min(cpuTimes[p.key], cpu);
    ppl[p.key] = res.ppl;
    workers[p.key] = res.workers;
    tokens = res.windows * res.seqlen;
  }
}
console.log("path                        workers   seconds   tokens/s   CPU s   ppl");
for (const p of paths) {
  console.log(
    `${p.label.padEnd(27)} ${String(workers[p.key]).padStart(7)} ${
      times[p.key].toFixed(2).padStart(9)
    } ${(tokens / times[p.key]).toFixed(0).padStart(10)} ${
      cpuTimes[p.key].toFixed(2).padStart(7)
    }   ${ppl[p.key].toFixed(6)}`,
  );
}
console.log(
  `ppl: pool ${ppl.pool === ppl.ort1 ? "===" : "!=="} workers: 1 (${ppl.pool} vs ${ppl.ort1})`,
);
for (const k of ["pool", "ort1"] as const) {
  console.log(
    `speedup of ${paths.find((p) => p.key === k)!.label} over the TypeScript forward: ${
      (times.ts / times[k]).toFixed(1)
    }× wall, ${(cpuTimes.ts / cpuTimes[k]).toFixed(1)}× CPU time`,
  );
}
