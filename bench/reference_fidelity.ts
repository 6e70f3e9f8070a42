/**
 * Issue 19's fidelity comparisons on real stories260K layer statistics (35 layers, 32 × 256
 * calibration tokens): summed proxy loss `Σ tr((W − Wq) H (W − Wq)ᵀ)` of the reference-default
 * options against quantlab's variants. `deno run -A bench/reference_fidelity.ts [--bits 4,3,2]`.
 * @module
 */
import { realLayers } from "../tests/quant/_real_stats.ts";
import { proxyLoss } from "../tests/quant/_oracles.ts";
import { quanteaseQuantize } from "../src/quant/weight_only/quantease.ts";
import { type QuipOptions, quipQuantize } from "../src/quant/weight_only/quip.ts";
import { type FramequantOptions, framequantQuantize } from "../src/quant/weight_only/framequant.ts";
import type { QuantResult } from "../src/quant/core/types.ts";
import type { Tensor } from "../src/tensor.ts";

const bitsArg = Deno.args.indexOf("--bits");
const BITS = bitsArg >= 0 ? Deno.args[bitsArg + 1].split(",").map(Number) : [4, 3, 2];
const layers = await realLayers();

type Run = (W: Tensor, H: Float32Array) => Promise<QuantResult>;
async function total(run: Run, filter: (W: Tensor) => boolean = () => true): Promise<number> {
  let s = 0;
  for (const l of layers) {
    if (!filter(l.W)) continue;
    const r = await run(l.W, l.H);
    s += proxyLoss(l.W, r.Wq, l.H);
  }
  return s;
}

const rows: string[] = [];
function compare(label: string, a: number, b: number, names: [string, string]) {
  rows.push(
    `${label.padEnd(44)} ${names[0]} ${a.toExponential(4)}  ${names[1]} ${
      b.toExponential(4)
    }  ratio ${(a / b).toFixed(3)}`,
  );
  console.log(rows[rows.length - 1]);
}

for (const bits of BITS) {
  const st = (H: Float32Array) => ({ H, nsamples: 32 });
  const qeRef = await total((W, H) => quanteaseQuantize(W, st(H), { bits }));
  const qeVar = await total((W, H) =>
    quanteaseQuantize(W, st(H), { bits, init: "rtn", relax: false })
  );
  compare(`quantease ${bits}-bit: reference default / rtn,no-relax`, qeRef, qeVar, ["ref", "var"]);

  const qa = (o: Partial<QuipOptions>): Run => (W, H) =>
    quipQuantize(W, st(H), { bits, incoh: false, preGptqH: true, method: "ldlq", ...o });
  const ordRef = await total(qa({ columnOrder: "reference" }));
  const ordG = await total(qa({}));
  compare(`quip ${bits}-bit ldlq (no incoh): reference / gptq order`, ordRef, ordG, [
    "ref",
    "gptq",
  ]);
  const fullRef = await total(
    qa({ columnOrder: "reference", qfnaClamp: true, greedyClamp: "pass", npasses: 2 }),
  );
  const fullQ = await total(qa({ npasses: 2 }));
  compare(`quip ${bits}-bit ldlq+2 passes: reference / quantlab`, fullRef, fullQ, ["ref", "ql"]);
  const bf = await total((W, H) => quipQuantize(W, st(H), { bits, proj: "butterfly" }));
  const kr = await total((W, H) => quipQuantize(W, st(H), { bits }));
  compare(`quip ${bits}-bit incoh: butterfly / kron`, bf, kr, ["bfly", "kron"]);

  const fq = (o: Partial<FramequantOptions>): Run => (W, H) =>
    framequantQuantize(W, st(H), { bits, ...o });
  const mult32 = (W: Tensor) => W.shape[0] % 32 === 0 && W.shape[1] % 32 === 0;
  const fRef = await total(fq({ frames: "reference", gridFit: "reference" }), mult32);
  const fHad = await total(fq({}), mult32);
  compare(`framequant ${bits}-bit r=1 (64×64 layers): ref / hadamard`, fRef, fHad, ["ref", "had"]);
  const fHadRefGrid = await total(fq({ gridFit: "reference" }), mult32);
  compare(`framequant ${bits}-bit: hadamard+ref grid / hadamard`, fHadRefGrid, fHad, [
    "hrg",
    "had",
  ]);
}
