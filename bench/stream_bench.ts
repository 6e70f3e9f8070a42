/**
 * Memory of the streamed pipeline (`QuantizeOptions.stream`) at real sizes, on synthetic
 * checkpoints from `tools/synthetic_checkpoint.ts`: each job runs in its own process under
 * `/usr/bin/time -v` (peak RSS from the kernel), reports seconds and RSS after every block, and
 * the table prints them with the RSS growth from the first to the last block.
 *
 * Jobs:
 * - `tiny-gptq`: GPTQ 4-bit g128 act-order, 16 × 512 TinyStories calibration tokens, over the
 *   first `--blocks` blocks of a TinyLlama-1.1B-shaped checkpoint (`--tiny DIR`).
 * - `7b-rtn`: RTN 4-bit g128 through every block (or the first `--rtn-blocks`) of a
 *   Llama-2-7B-shaped checkpoint (`--big DIR`),
 *   then the perplexity of the streamed result on `--windows` wikitext2 windows of `--seqlen`
 *   tokens, block by block (`perplexity(..., { layerwise: true })`).
 * - `7b-gptq`: GPTQ as in `tiny-gptq` over the first `--blocks` blocks of the 7B-shaped checkpoint;
 *   the full time is extrapolated as (mean s/block) × 32.
 *
 * Usage (checkpoints: `deno run -A tools/synthetic_checkpoint.ts --preset llama-2-7b --out DIR`):
 * ```sh
 * nice -n 5 deno run -A bench/stream_bench.ts --tiny /work/big/tinyllama --big /work/big/llama7b \
 *   [--jobs tiny-gptq,7b-rtn,7b-gptq] [--blocks 4] [--rtn-blocks N] [--windows 2] [--seqlen 128] [--work DIR]
 * ```
 * The tokenizer is the Llama-2 SentencePiece model in the shared data (`--tokenizer` to change).
 * @module
 */
import { loadModel } from "../src/models/load.ts";
import { calibrationSet } from "../src/quant/pipeline/calibration.ts";
import { quantize } from "../src/quant/pipeline/pipeline.ts";
import { gptq } from "../src/quant/weight_only/gptq.ts";
import { rtn } from "../src/quant/weight_only/rtn.ts";
import { perplexity } from "../src/eval/perplexity.ts";

const DATA = new URL("../../shared/data/", import.meta.url).pathname;

interface Job {
  job: string;
  model: string;
  blocks?: number;
  windows: number;
  seqlen: number;
  tokenizer: string;
  workdir: string;
}

/** One line per event on stdout, JSON, prefixed so the parent can find them. */
function emit(x: Record<string, unknown>): void {
  console.log(`@@ ${JSON.stringify(x)}`);
}

const mib = () => Deno.memoryUsage().rss / 2 ** 20;

/** CPU seconds of this process so far (user + system, all threads), from /proc/self/stat. */
function cpuSeconds(): number {
  const f = Deno.readTextFileSync("/proc/self/stat");
  const rest = f.slice(f.lastIndexOf(")") + 2).split(" ");
  return (Number(rest[11]) + Number(rest[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

async function child(j: Job): Promise<void> {
  const t0 = performance.now();
  const m = await loadModel(j.model, { tokenizer: j.tokenizer });
  const model = j.blocks
    ? { ...m, config: { ...m.config, numLayers: Math.min(j.blocks, m.config.numLayers) } }
    : m;
  const isGptq = j.job.endsWith("gptq");
  const calib = isGptq
    ? await calibrationSet(model, "tinystories", { nsamples: 16, seqlen: 512, seed: 0 })
    : undefined;
  emit({ stage: "start", seconds: (performance.now() - t0) / 1000, rss: mib() });
  let last = performance.now(), lastCpu = cpuSeconds();
  const q = isGptq
    ? gptq({ bits: 4, groupSize: 128, actOrder: true })
    : rtn({ bits: 4, groupSize: 128 });
  const qm = await quantize(model, q, {
    calib,
    workdir: j.workdir,
    stream: true,
    onProgress: (p) => {
      if (p.stage !== "block") return;
      const now = performance.now(), cpu = cpuSeconds();
      emit({
        stage: "block",
        block: p.done - 1,
        seconds: (now - last) / 1000,
        cpu: cpu - lastCpu,
        rss: mib(),
      });
      last = now;
      lastCpu = cpu;
    },
  });
  emit({
    stage: "quantized",
    seconds: qm.report.seconds,
    bits: qm.report.bitsPerWeight,
    peakRss: qm.report.peakRssMiB,
    held: Math.max(...qm.report.heldBytes),
    rss: mib(),
  });
  if (j.job === "7b-rtn") {
    const r = await perplexity(qm, "wikitext2", {
      nsamples: j.windows,
      seqlen: j.seqlen,
      batch: j.windows,
      layerwise: true,
    });
    emit({ stage: "ppl", ppl: r.ppl, windows: r.windows, seconds: r.seconds, rss: mib() });
  }
}

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
}

async function parent(args: string[]): Promise<void> {
  const jobs = (flag(args, "jobs") ?? "tiny-gptq,7b-rtn,7b-gptq").split(",");
  const blocks = Number(flag(args, "blocks") ?? 4);
  const rtnBlocks = flag(args, "rtn-blocks") ? Number(flag(args, "rtn-blocks")) : undefined;
  const work = flag(args, "work") ?? (await Deno.makeTempDir({ prefix: "stream_bench" }));
  const base = {
    windows: Number(flag(args, "windows") ?? 2),
    seqlen: Number(flag(args, "seqlen") ?? 128),
    tokenizer: flag(args, "tokenizer") ?? `${DATA}tokenizers/llama2-sentencepiece`,
  };
  const rows: string[] = [];
  for (const name of jobs) {
    const dir = name.startsWith("tiny") ? flag(args, "tiny") : flag(args, "big");
    if (!dir) throw new Error(`${name}: pass --${name.startsWith("tiny") ? "tiny" : "big"} DIR`);
    const workdir = `${work}/${name}`;
    await Deno.remove(workdir, { recursive: true }).catch(() => {});
    const job: Job = {
      job: name,
      model: dir,
      blocks: name.endsWith("gptq") ? blocks : rtnBlocks,
      workdir,
      ...base,
    };
    const cmd = new Deno.Command("/usr/bin/time", {
      args: [
        "-v",
        Deno.execPath(),
        "run",
        "-A",
        import.meta.filename!,
        "--child",
        JSON.stringify(job),
      ],
      stdout: "piped",
      stderr: "piped",
    });
    const proc = cmd.spawn();
    const events: Record<string, unknown>[] = [];
    const out = (async () => {
      let buf = "";
      for await (const c of proc.stdout.pipeThrough(new TextDecoderStream())) {
        buf += c;
        let k;
        while ((k = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, k);
          buf = buf.slice(k + 1);
          if (line.startsWith("@@ ")) {
            const e = JSON.parse(line.slice(3));
            events.push(e);
            console.error(`[${name}] ${line.slice(3)}`);
          }
        }
      }
    })();
    const err = new Response(proc.stderr).text();
    const status = await proc.status;
    await out;
    const stderr = await err;
    const peakKiB = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(stderr)?.[1] ?? NaN);
    const wall = /Elapsed \(wall clock\) time.*: (\S+)/.exec(stderr)?.[1];
    if (!status.success) console.error(stderr.slice(-3000));
    const blk = events.filter((e) => e.stage === "block") as unknown as {
      block: number;
      seconds: number;
      cpu: number;
      rss: number;
    }[];
    const avg = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    const mean = avg(blk.map((b) => b.seconds));
    const meanCpu = avg(blk.map((b) => b.cpu));
    const rss = blk.map((b) => b.rss);
    const ppl = events.find((e) => e.stage === "ppl") as { ppl?: number } | undefined;
    const q = events.find((e) => e.stage === "quantized") as { held?: number } | undefined;
    const total = name.startsWith("7b") ? 32 : 22;
    rows.push(
      [
        name,
        String(blk.length),
        mean.toFixed(1),
        meanCpu.toFixed(1),
        `${rss.map((r) => r.toFixed(0)).join("/")}`,
        rss.length ? (rss[rss.length - 1] - rss[0]).toFixed(0) : "-",
        (peakKiB / 2 ** 20).toFixed(2),
        ((mean * total) / 60).toFixed(1),
        ((meanCpu * total) / 60).toFixed(1),
        ppl?.ppl !== undefined ? ppl.ppl.toFixed(1) : "-",
        String(q?.held ?? "-"),
        `${wall ?? "?"}${status.success ? "" : " FAILED"}`,
      ].join(" | "),
    );
  }
  console.log(
    [
      "job",
      "blocks",
      "s/block",
      "cpu-s/block",
      "RSS after each block (MiB)",
      "Δ RSS MiB",
      "peak RSS GiB",
      "full min",
      "full cpu-min",
      "ppl",
      "held B",
      "wall",
    ].join(" | "),
  );
  for (const r of rows) console.log(r);
  console.log(
    "(peak: /usr/bin/time -v maximum resident set size; Δ: RSS after the last block − after the " +
      "first; cpu-s/b: process CPU seconds per block, all threads (the machine is shared, so " +
      "wall seconds depend on the load); full min: mean (cpu-)s/block × all blocks (22 " +
      "TinyLlama, 32 Llama-2-7B); held: bytes of " +
      "float32 quantized weights the pipeline held after any block)",
  );
}

if (import.meta.main) {
  const i = Deno.args.indexOf("--child");
  if (i >= 0) await child(JSON.parse(Deno.args[i + 1]) as Job);
  else await parent(Deno.args);
}
