/**
 * ZeroQuant (src/quant/weight_activation/zeroquant.ts):
 * - `dsSymQuant` equals a transcription of DeepSpeed's `SymQuantizer` written here (reshape to
 *   `(num_groups, −1)`, `scale = 2·max|x| / 2^b`, clamp to [−2^(b−1), 2^(b−1) − 1]) — including
 *   its measured quirk: each group's largest positive value clips one step below its max;
 * - the weight quantizer dequantizes bit-exactly from its meta for per-row, sub-row and
 *   multi-row groups, and refuses groups that split rows unevenly (OptionError);
 * - the activation hook is token-wise (one group per row);
 * - the W4/8 recipe puts 4 bits on the MLP linears and 8 elsewhere on stories260K.
 */
import { assert, assertEquals, assertRejects } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { loadModel } from "../../src/models/load.ts";
import { dequantize } from "../../src/quant/core/grid.ts";
import { quantize } from "../../src/quant/pipeline/pipeline.ts";
import {
  dsSymQuant,
  zeroquantActHooks,
  zeroquantRecipe,
  zeroquantWeight,
} from "../../src/quant/weight_activation/zeroquant.ts";
import { Rng } from "../_rng.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;

function tround(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** DeepSpeed `SymQuantizer.forward` (dynamic range, num_groups) transcribed. */
function symQuantizerRef(input: Float32Array, numBits: number, numGroups: number): Float32Array {
  const qRange = 2 ** numBits;
  const len = input.length / numGroups;
  const out = new Float32Array(input.length);
  for (let g = 0; g < numGroups; g++) {
    const row = input.subarray(g * len, (g + 1) * len);
    const maxInput = Math.max(...row.map(Math.abs));
    const scale = Math.fround((2 * maxInput) / qRange);
    row.forEach((v, i) => {
      const q = Math.min(Math.max(tround(Math.fround(v / scale)), -qRange / 2), qRange / 2 - 1);
      out[g * len + i] = Math.fround(q * scale) + 0; // −0 compares equal to 0 in torch
    });
  }
  return out;
}

Deno.test("dsSymQuant equals DeepSpeed's SymQuantizer; the positive max clips one step low", () => {
  const rng = new Rng(4);
  const x = rng.normals(24 * 40);
  for (const [bits, groups] of [[4, 24], [8, 24], [4, 48], [8, 6], [4, 1]]) {
    assertEquals(
      dsSymQuant(x, groups, bits).y,
      symQuantizerRef(x, bits, groups),
      `W${bits} g${groups}`,
    );
  }
  const v = Float32Array.from([1, -0.5, 0.25, 0]);
  const y = dsSymQuant(v, 1, 4).y; // scale 1/8: 1 → 7/8
  assertEquals(y[0], 0.875);
  assertEquals(y[1], -0.5);
});

Deno.test("zeroquantWeight: bit-exact dequantize for row, sub-row and multi-row groups", async () => {
  const rng = new Rng(6);
  const W = { shape: [8, 32] as [number, number], data: rng.normals(256, 0.1) };
  for (const numberOfGroups of [-1, 8, 32, 2, 1]) {
    const r = await zeroquantWeight({ bits: 4, numberOfGroups }).quantizeWeight(W, { nsamples: 0 });
    assertEquals(dequantize(r.meta).data, r.Wq.data, `groups ${numberOfGroups}`);
    const G = numberOfGroups === -1 ? 8 : numberOfGroups;
    assertEquals(r.Wq.data, symQuantizerRef(W.data, 4, G));
  }
  await assertRejects(
    () => zeroquantWeight({ bits: 4, numberOfGroups: 3 }).quantizeWeight(W, { nsamples: 0 }),
    OptionError,
    "numberOfGroups",
  );
});

Deno.test("zeroquantActHooks: token-wise dynamic quantization", async () => {
  const rng = new Rng(2);
  const x = rng.normals(5 * 16, 2);
  const y = await zeroquantActHooks(8).linearInput!("l", { shape: [5, 16], data: x });
  assertEquals((y as { data: Float32Array }).data, symQuantizerRef(x, 8, 5));
});

Deno.test("W4/8 recipe on stories260K: MLP linears W4, attention W8", async () => {
  const m = await loadModel(`${DATA}models/stories260K-hf`);
  const q = await quantize(m, zeroquantRecipe({ bits: 8, ffnBits: 4 }));
  for (const l of q.report.layers) {
    assertEquals(l.method, "zeroquant");
    assertEquals(q.packed![l.name].bits, l.name.includes(".mlp.") ? 4 : 8, l.name);
  }
  assert(q.report.layers.length === 35);
});
