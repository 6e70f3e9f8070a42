/**
 * The pipeline's GPU-resident block (`src/models/resident_block.ts`) against the host block
 * forward on the CPU backend (`decoder.ts` `block()`): block outputs (max |Δ| < 1e-4 of the
 * activations' scale) and the collected `Σ XᵀX` (relative Frobenius error < 1e-5, against float64
 * sums of the inputs the CPU forward's hooks see), for stories260K and tiny Llama-GQA and
 * OPT post-LN variants, in one pass and split into sub-batches; a replaced weight is used.
 */
import { assert, assertEquals, assertLess } from "@std/assert";
import { cpuBackend } from "../../src/backend/cpu.ts";
import { webgpuAvailable, type WebGPUBackend, webgpuBackend } from "../../src/backend/webgpu.ts";
import { block, embed } from "../../src/models/decoder.ts";
import { loadModel } from "../../src/models/load.ts";
import type { Model } from "../../src/models/model.ts";
import { residentBlockRunner } from "../../src/models/resident_block.ts";
import type { Tensor } from "../../src/tensor.ts";
import { Rng } from "../_rng.ts";
import { CASES, setup } from "./_cases.ts";

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("resident_block_test: SKIPPED — no WebGPU adapter");
const opts = { ignore: !available, sanitizeResources: false, sanitizeOps: false };
let gpu: WebGPUBackend | undefined;
const gpuBe = async () => (gpu ??= await webgpuBackend({ allowFallback: true }));

/** CPU block output and float64 Σ XᵀX of every linear's input. */
async function cpuBlock(model: Model, i: number, h: Tensor, batch: number) {
  const S = new Map<string, Float64Array>();
  const out = await block(model, i, h, {
    batch,
    backend: cpuBackend,
    hooks: {
      linearInput: (name, x) => {
        const d = x.shape[1];
        const s = new Float64Array(d * d);
        for (let r = 0; r < x.shape[0]; r++) {
          for (let a = 0; a < d; a++) {
            const xa = x.data[r * d + a];
            for (let b = 0; b < d; b++) s[a * d + b] += xa * x.data[r * d + b];
          }
        }
        S.set(name, s);
      },
    },
  });
  return { out, S };
}

function relFro(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

function scaledMax(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0, s = 0;
  for (let i = 0; i < b.length; i++) {
    m = Math.max(m, Math.abs(a[i] - b[i]));
    s = Math.max(s, Math.abs(b[i]));
  }
  return m / s;
}

async function check(model: Model, i: number, T: number, B: number, label: string) {
  const rng = new Rng(T + B);
  const ids = rng.ids(B * T, model.config.vocabSize);
  const h = await embed(model, ids, { seqLen: T, backend: cpuBackend });
  const ref = await cpuBlock(model, i, h, B);
  const names = [...ref.S.keys()];
  for (const split of [undefined, 1]) {
    const widest = 4 * Math.max(model.config.intermediateSize, model.config.hiddenSize);
    const runner = await residentBlockRunner(model, i, await gpuBe(), {
      seqLen: T,
      // split: one sequence per pass
      maxBindingBytes: split ? widest * T * split : undefined,
    });
    try {
      const out = (await runner.run(h, { batch: B, collect: new Set(names), output: true }))!;
      assertEquals(out.shape, [B * T, model.config.hiddenSize]);
      const e = scaledMax(out.data, ref.out.data);
      assertLess(e, 1e-4, `${label}: block output (split ${split})`);
      const st = await runner.take();
      let worst = 0;
      for (const n of names) {
        const g = st.get(n)!;
        assertEquals(g.n, B * T, n);
        worst = Math.max(worst, relFro(g.S, ref.S.get(n)!));
      }
      assertLess(worst, 1e-5, `${label}: Σ XᵀX (split ${split})`);
      console.log(
        `  ${label}${split ? " (split)" : ""}: output ${e.toExponential(1)}, Σ XᵀX ${
          worst.toExponential(1)
        }`,
      );
      // q/k/v read one input: one statistics object
      const q = names.find((n) => n.endsWith("q_proj"))!;
      assert(st.get(q) === st.get(q.replace("q_proj", "v_proj")));
      assertEquals((await runner.take()).size, 0, "take() clears");
    } finally {
      runner.release();
    }
  }
}

Deno.test({
  name: "resident block = host block (stories260K, Llama GQA, OPT post-LN), one pass and split",
  ...opts,
  fn: async () => {
    const stories = await loadModel("../shared/data/models/stories260K-hf");
    await check(stories, 2, 64, 3, "stories260K block 2");
    for (const prefix of ["llama: GQA", "opt: post-LN (do_layer_norm_before false)"]) {
      const c = CASES.find((k) => k.name.startsWith(prefix))!;
      const { dir, model } = await setup(c);
      try {
        await check(model, 1, 12, 2, c.name.split(",")[0]);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    }
  },
});

Deno.test({
  name: "resident block: a replaced weight is used; collect-only runs return nothing",
  ...opts,
  fn: async () => {
    const model = await loadModel("../shared/data/models/stories260K-hf");
    const T = 32, B = 2;
    const h = await embed(model, new Rng(5).ids(B * T, 512), { seqLen: T, backend: cpuBackend });
    const name = "model.layers.0.self_attn.o_proj";
    const W = await model.weights.get(`${name}.weight`);
    const W2 = { shape: W.shape, data: W.data.map((x) => x * 0.5) };
    const m2 = { ...model, weights: model.weights.with(new Map([[`${name}.weight`, W2]])) };
    const ref = await block(m2, 0, h, { batch: B, backend: cpuBackend });
    const runner = await residentBlockRunner(model, 0, await gpuBe(), { seqLen: T });
    try {
      const none = await runner.run(h, { batch: B, collect: new Set([name]) });
      assertEquals(none, undefined);
      runner.setWeight(name, W2);
      const out = (await runner.run(h, { batch: B, output: true }))!;
      assertLess(scaledMax(out.data, ref.data), 1e-4);
    } finally {
      runner.release();
    }
  },
});

Deno.test({
  name: "resident block: device rows in and out equal host rows, bit for bit; split chunks too",
  ...opts,
  fn: async () => {
    const model = await loadModel("../shared/data/models/stories260K-hf");
    const T = 32, B = 3;
    const h = await embed(model, new Rng(9).ids(B * T, 512), { seqLen: T, backend: cpuBackend });
    const be = await gpuBe();
    // one pass (default limit) and sub-batches of one sequence (a binding limit of ~1 sequence)
    for (const maxBindingBytes of [undefined, 4 * 172 * T]) {
      const r0 = await residentBlockRunner(model, 0, be, { seqLen: T, maxBindingBytes });
      const r1 = await residentBlockRunner(model, 1, be, { seqLen: T, maxBindingBytes });
      try {
        const host0 = (await r0.run(h, { batch: B, output: true }))!;
        const host1 = (await r1.run(host0, { batch: B, output: true }))!;
        const dev0 = await r0.runToDevice(h, { batch: B });
        assertEquals((await dev0.read()).data, host0.data);
        // a collect-only run on device rows leaves them as they were (the block works on a copy)
        await r1.run(dev0, { batch: B, collect: new Set(["model.layers.1.mlp.down_proj"]) });
        const S = (await r1.take()).get("model.layers.1.mlp.down_proj")!;
        assertEquals((await dev0.read()).data, host0.data);
        const dev1 = await r1.runToDevice(dev0, { batch: B });
        assertEquals((await dev1.read()).data, host1.data);
        assertEquals(dev1.shape, [B * T, model.config.hiddenSize]);
        // the statistics of device rows = those of host rows
        await r1.run(host0, { batch: B, collect: new Set(["model.layers.1.mlp.down_proj"]) });
        assertEquals((await r1.take()).get("model.layers.1.mlp.down_proj")!.S, S.S);
        dev0.release();
        dev1.release();
      } finally {
        r0.release();
        r1.release();
      }
    }
  },
});
