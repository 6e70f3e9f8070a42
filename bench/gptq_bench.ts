/**
 * GPTQ seconds per layer on the CPU backend against the PyTorch CPU reference, 4-bit, groupSize
 * 128, act-order, blocksize 128, for common layer shapes `[rows = out, cols = in]`, with a random
 * SPD Hessian `H = 2/n · XᵀX + 1e-2·I` (`n = cols + 256` Gaussian rows with log-normal channel
 * scales) on both sides (same construction, different random streams).
 *
 * The peer is `bench/_gptq_torch_cpu.py` (IST-DASLab/gptq `fasterquant`'s steps on Debian's
 * PyTorch CPU, float32 LAPACK `Hinv`), one persistent process; both sides use `--threads N`
 * threads (default 1: `torch.set_num_threads(N)`, onnxruntime's `intraOpNumThreads` through
 * `QUANTLAB_CPU_THREADS`). The two
 * sides alternate, `--reps` runs each (default 3), and each side's minimum is reported (the
 * machine is shared; the minimum is the least disturbed run). Columns: reference and quantlab
 * seconds, ratio (quantlab / reference, < 1 = faster), each side's `Hinv` share of its total,
 * quantlab's phases (`GptqTimings`), and each side's minimum process CPU seconds (user + system;
 * at one thread a load-independent proxy of unloaded wall time, though page faults that the
 * hypervisor serves are not in it) with their ratio.
 *
 * The peer's BLAS is printed: Debian's torch links `libblas.so.3`, which is the reference
 * (netlib) BLAS unless `libopenblas0-pthread` is installed (`apt-get install
 * libopenblas0-pthread`: OpenBLAS, the fair peer; its threads are pinned to `--threads` too).
 * The last column says which lazy batch update quantlab's CPU column pass used ("left": the
 * onnxruntime Scan, "right": trailing products; `--block-update right|left|auto`, default auto).
 *
 * Run: `deno run -A bench/gptq_bench.ts [--quick] [--large] [--reps N] [--threads N] [--no-peer]
 * [--shapes 4096x4096,…] [--block-update auto|left|right]` (`--quick`: the three small shapes;
 * `--large`: adds 4096×11008; `--shapes`: exactly these `rows x cols`; `--no-peer`: quantlab
 * only).
 * @module
 */
import { type BlockUpdate, gptqQuantize, type GptqTimings } from "../src/quant/weight_only/gptq.ts";
import process from "node:process";
import { cpuBackend } from "../src/backend/cpu.ts";
import { mulberry32, randn } from "../src/rng.ts";

import { randomHessian } from "./_hessian.ts";

const args = Deno.args;
const quick = args.includes("--quick");
const large = args.includes("--large");
const usePeer = !args.includes("--no-peer");
const reps = args.includes("--reps") ? Number(args[args.indexOf("--reps") + 1]) : 3;
// Same thread count both sides: torch.set_num_threads and onnxruntime's intra-op pool (default
// 1, PyTorch's default on this machine; `--threads N` for more).
const blockUpdate =
  (args.includes("--block-update")
    ? args[args.indexOf("--block-update") + 1]
    : "auto") as BlockUpdate;
if (!["auto", "left", "right"].includes(blockUpdate)) {
  throw new Error(`--block-update: expected auto, left or right, got ${blockUpdate}`);
}
const threads = args.includes("--threads") ? Number(args[args.indexOf("--threads") + 1]) : 1;
Deno.env.set("QUANTLAB_CPU_THREADS", String(threads)); // before the first session exists

let shapes: [number, number][] = [[768, 768], [3072, 768], [768, 3072]];
if (!quick) shapes.push([4096, 4096]);
if (large) shapes.push([4096, 11008]);
if (args.includes("--shapes")) {
  shapes = args[args.indexOf("--shapes") + 1].split(",").map((s) => {
    const [r, c] = s.split("x").map(Number);
    return [r, c];
  });
}

/** The persistent PyTorch peer: one JSON line per `rows cols` request. */
class Peer {
  #proc: Deno.ChildProcess;
  #lines: AsyncIterator<string>;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  info: Record<string, unknown> = {};
  constructor() {
    this.#proc = new Deno.Command("/usr/bin/python3", {
      args: [
        new URL("./_gptq_torch_cpu.py", import.meta.url).pathname,
        "--serve",
        "--threads",
        String(threads),
      ],
      // BLAS threads pinned too: OpenBLAS (Debian's libopenblas0-pthread) starts one thread per
      // core unless told, whatever torch.set_num_threads says.
      env: {
        OPENBLAS_NUM_THREADS: String(threads),
        OMP_NUM_THREADS: String(threads),
        MKL_NUM_THREADS: String(threads),
      },
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.#writer = this.#proc.stdin.getWriter();
    this.#lines = lines(this.#proc.stdout)[Symbol.asyncIterator]();
  }
  async next(): Promise<Record<string, number>> {
    const r = await this.#lines.next();
    if (r.done) {
      throw new Error("the PyTorch peer exited (is torch installed for /usr/bin/python3?)");
    }
    return JSON.parse(r.value);
  }
  async start() {
    this.info = await this.next();
  }
  async run(rows: number, cols: number) {
    await this.#writer.write(new TextEncoder().encode(`${rows} ${cols}\n`));
    return await this.next();
  }
  async close() {
    await this.#writer.close();
    await this.#proc.status;
  }
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buf = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, i);
      buf = buf.slice(i + 1);
    }
  }
}

async function ours(rows: number, cols: number) {
  const H = await randomHessian(cols, cols);
  const rng = mulberry32(rows + cols);
  const W = new Float32Array(rows * cols);
  for (let i = 0; i < W.length; i++) W[i] = 0.02 * randn(rng);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const res = await gptqQuantize({ shape: [rows, cols], data: W }, { H, nsamples: cols + 256 }, {
    bits: 4,
    groupSize: 128,
    actOrder: true,
    backend: cpuBackend,
    blockUpdate,
  });
  const total = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(c0);
  return { total, cpu: (c.user + c.system) / 1e6, t: res.meta.timings as GptqTimings };
}

// Warm up onnxruntime (session creation) outside the timings.
await ours(128, 512);
const peer = usePeer ? new Peer() : undefined;
await peer?.start();

const fmt = (x: number, d = 2, w = 7) => (Number.isFinite(x) ? x.toFixed(d) : "-").padStart(w);
console.log(
  `GPTQ 4-bit g128 act-order, blocksize 128; quantlab: CPU backend (${cpuBackend.description}); ` +
    `reference: ${
      peer ? `PyTorch ${peer.info.torch} CPU, BLAS ${peer.info.blas}` : "not run"
    }, ${threads} threads; ${navigator.hardwareConcurrency} cores; min of ${reps} alternating runs per side`,
);
console.log(
  "shape (out×in)    ref s  ours s   ratio  ref Hinv%  our Hinv%   linalg   params    block    trail" +
    "  ref cpu  our cpu cpu ratio  update",
);
for (const [rows, cols] of shapes) {
  let ref = { total: Infinity, hinv: NaN }, refCpu = Infinity;
  let best: { total: number; t: GptqTimings } | undefined, cpu = Infinity;
  for (let r = 0; r < reps; r++) {
    if (peer) {
      const p = await peer.run(rows, cols);
      if (p.total_s < ref.total) ref = { total: p.total_s, hinv: p.hinv_s };
      refCpu = Math.min(refCpu, p.cpu_s);
    }
    const o = await ours(rows, cols);
    if (!best || o.total < best.total) best = o;
    cpu = Math.min(cpu, o.cpu);
  }
  const { total, t } = best!;
  console.log(
    `${`${rows}×${cols}`.padEnd(15)} ${fmt(ref.total)} ${fmt(total)} ${fmt(total / ref.total)}  ${
      fmt((100 * ref.hinv) / ref.total, 1, 8)
    }%  ${fmt((100 * t.linalg) / total, 1, 8)}%  ${fmt(t.linalg)}  ${fmt(t.params)}  ${
      fmt(t.inBlock)
    }  ${fmt(t.trailing)}  ${fmt(refCpu)} ${fmt(cpu)} ${fmt(cpu / refCpu)}  ${
      t.blockUpdate ?? t.columnPass
    }`,
  );
}
await peer?.close();
