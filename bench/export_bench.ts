/**
 * Export speed and memory: a TinyLlama-1.1B-shaped synthetic checkpoint (`--layers N` blocks of
 * the real shapes, default 2, to keep this short on small machines), RTN 4-bit g32 symmetric with
 * f16 scales, then `exportModel` to GGUF (Q4_0), to GPTQ safetensors and to ONNX (MatMulNBits). Prints seconds and the
 * peak RSS sampled every 20 ms during each export. The GGUF vocabulary is stories260K's
 * (tok512.bin) — the synthetic model has no tokenizer; it only affects the header size.
 *
 * Usage: `deno run -A bench/export_bench.ts [--layers 2]`
 * @module
 */
import { writeSyntheticCheckpoint } from "../tools/synthetic_checkpoint.ts";
import { loadModel } from "../src/models/load.ts";
import { quantize } from "../src/quant/pipeline/pipeline.ts";
import { rtn } from "../src/quant/weight_only/rtn.ts";
import { withF16Scales } from "../src/quant/core/f16_grid.ts";
import { exportModel } from "../src/io/export.ts";
import { dataRoot } from "../src/_paths.ts";

const li = Deno.args.indexOf("--layers");
const layers = li >= 0 ? Number(Deno.args[li + 1]) : 2;
const root = await Deno.makeTempDir({ prefix: "quantlab_export_bench_" });
try {
  const syn = await writeSyntheticCheckpoint(`${root}/tinyllama`, {
    preset: "tinyllama-1.1b",
    layers,
    dtype: "f16",
  });
  const m = await loadModel(syn.dir, {
    tokenizer: `${dataRoot()}/models/stories260K/tok512.bin`,
  });
  const t0 = performance.now();
  const qm = await quantize(m, withF16Scales(rtn({ bits: 4, groupSize: 32, sym: true })), {
    progress: false,
  } as never);
  console.log(
    `TinyLlama-shaped, ${layers} of 22 blocks (${(syn.params / 1e6).toFixed(0)}M params): ` +
      `RTN w4 g32 f16-scales ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  for (const format of ["gguf", "gptq", "onnx"] as const) {
    let peak = Deno.memoryUsage().rss;
    const base = peak;
    const timer = setInterval(() => (peak = Math.max(peak, Deno.memoryUsage().rss)), 20);
    const t1 = performance.now();
    const rep = await exportModel(qm, `${root}/${format}`, { format });
    const s = (performance.now() - t1) / 1000;
    clearInterval(timer);
    peak = Math.max(peak, Deno.memoryUsage().rss);
    let size = 0;
    for (const f of rep.files) size += (await Deno.stat(`${root}/${format}/${f}`)).size;
    console.log(
      `${format}: ${s.toFixed(1)} s, ${(size / 2 ** 20).toFixed(0)} MiB written, RSS before ` +
        `${(base / 2 ** 20).toFixed(0)} MiB, peak ${(peak / 2 ** 20).toFixed(0)} MiB, ` +
        `${
          rep.tensors.filter((t) => t.maxAbsErr === 0).length
        }/${rep.tensors.length} tensors bit-exact`,
    );
  }
} finally {
  await Deno.remove(root, { recursive: true });
}
