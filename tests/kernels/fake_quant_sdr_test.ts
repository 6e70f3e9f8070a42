/**
 * The fake-quant grids beyond QuaRot's (`kernels/fake_quant_sdr.ts`, CPU reference
 * `sdrQuantRef` in `kernels/fake_quant.ts`):
 * - a QRazor spec (`qrazor: { bits, group }`) equals the library's qllm-infer transcription
 *   (`qllmFakeQuant` with SDR, src/quant/weight_activation/qrazor.ts, itself checked against the
 *   seed's reference forward in tests/quant/qrazor_test.ts) bit for bit on 12,416 seeded
 *   activation-like values per (base bits, kept bits, group, unit, sym) — per tensor, per token,
 *   per token in groups, per channel, and INT16 base grids;
 * - a `grid: "deepspeed"` spec per token equals DeepSpeed's `SymQuantizer` transcription
 *   (`dsSymQuant`, one group per token) bit for bit;
 * - the WGSL (lavapipe) equals the CPU reference bit for bit for the same specs, in and out of
 *   place;
 * - bad fields are OptionErrors naming the field.
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { fakeQuantRef, type FakeQuantSpec } from "../../kernels/fake_quant.ts";
import { checkQuantSpec } from "../../src/backend/ops.ts";
import { OptionError } from "../../src/errors.ts";
import {
  fakeQuantDispatches,
  getWebGPU,
  gpuFakeQuant,
  runAndRead,
  upload,
  webgpuAvailable,
} from "../../src/backend/webgpu.ts";
import { qllmFakeQuant, type QllmUnit } from "../../src/quant/weight_activation/qrazor.ts";
import { dsSymQuant } from "../../src/quant/weight_activation/zeroquant.ts";
import { Rng } from "../_rng.ts";

/** Values as numbers, −0 as 0. */
const vals = (a: ArrayLike<number>) => Array.from(a, (v) => v + 0);

/** Activation-like rows: per-row scale, a few outlier channels, exact zeros, ties. */
function activations(rows: number, cols: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const x = new Float32Array(rows * cols);
  const outlier = new Set([3, 17 % cols, cols - 2]);
  for (let r = 0; r < rows; r++) {
    const s = 2 ** (rng.int(9) - 4);
    for (let j = 0; j < cols; j++) {
      const u = rng.next();
      x[r * cols + j] = u < 0.03 ? 0 : s * rng.normal() * (outlier.has(j) ? 20 : 1);
    }
  }
  return x;
}

const UNITS: { name: string; spec: Partial<FakeQuantSpec>; unit: QllmUnit; groupSize?: number }[] =
  [
    { name: "tensor", spec: { granularity: "tensor" }, unit: "tensor" },
    { name: "token", spec: { granularity: "token" }, unit: "row" },
    { name: "token g8", spec: { granularity: "token", groupSize: 8 }, unit: "row", groupSize: 8 },
    { name: "channel", spec: { granularity: "channel" }, unit: "column" },
  ];
const SDR = [[8, 4], [16, 4], [16, 8], [8, 5]];
const GROUPS = [8, 16, 32, 64, 128];
/** 97 × 128 = 12,416 values; 70 × 72: groups of 16…128 span rows, a short last group. */
const SHAPES: [number, number][] = [[97, 128], [70, 72]];

function* cases(): Generator<{ spec: FakeQuantSpec; u: (typeof UNITS)[number]; label: string }> {
  for (const [bits, rBit] of SDR) {
    for (const group of GROUPS) {
      for (const u of UNITS) {
        for (const sym of [true, false]) {
          if (!sym && u.name !== "token") continue;
          const spec = { bits, sym, ...u.spec, qrazor: { bits: rBit, group } } as FakeQuantSpec;
          yield { spec, u, label: `q${bits} r${rBit} g${group} ${u.name}${sym ? "" : " asym"}` };
        }
      }
    }
  }
}

Deno.test("QRazor spec = qllmFakeQuant + SDR bit for bit (≥ 10,000 values per configuration)", () => {
  let n = 0, razored = 0;
  for (const [rows, cols] of SHAPES) {
    const x = activations(rows, cols, rows * cols);
    for (const { spec, u, label } of cases()) {
      const got = fakeQuantRef(x, rows, cols, spec);
      const want = qllmFakeQuant(x, rows, cols, {
        bits: spec.bits,
        sym: spec.sym!,
        unit: u.unit,
        groupSize: u.groupSize,
        qrazor: spec.qrazor,
      }).y;
      for (let i = 0; i < got.length; i++) {
        if (got[i] !== want[i]) {
          throw new Error(`${label} [${rows},${cols}]: ${i} ${x[i]} → ${got[i]}, want ${want[i]}`);
        }
      }
      // the razor acts: compare with the base grid alone
      const base = qllmFakeQuant(x, rows, cols, {
        bits: spec.bits,
        sym: spec.sym!,
        unit: u.unit,
        groupSize: u.groupSize,
      }).y;
      let changed = 0;
      for (let i = 0; i < got.length; i++) if (got[i] !== base[i]) changed++;
      if (changed > got.length / 20) razored++;
      n++;
    }
  }
  assertEquals(n, 2 * SDR.length * GROUPS.length * 5);
  assert(razored > n * 0.8, `the razor must change most configurations (${razored}/${n})`);
});

Deno.test("deepspeed grid per token = DeepSpeed SymQuantizer (dsSymQuant, a group per token)", () => {
  for (const [rows, cols] of SHAPES) {
    const x = activations(rows, cols, 7 + rows);
    for (const bits of [2, 4, 8, 12]) {
      const got = fakeQuantRef(x, rows, cols, { bits, grid: "deepspeed" });
      const want = dsSymQuant(x, rows, bits).y;
      assertEquals(vals(got), vals(want), `${bits} bits [${rows},${cols}]`);
      // the largest positive value of a row clips one step low (DeepSpeed's measured fact)
      const quarot = fakeQuantRef(x, rows, cols, { bits });
      assert(got.some((v, i) => v !== quarot[i]), "differs from QuaRot's grid");
    }
    assertEquals(vals(fakeQuantRef(x, rows, cols, { bits: 16, grid: "deepspeed" })), vals(x));
  }
});

Deno.test("bad grid / qrazor fields are OptionErrors naming the field", () => {
  const bad: [FakeQuantSpec, string][] = [
    [{ bits: 8, grid: "x" as "quarot" }, "spec.grid"],
    [{ bits: 8, grid: "deepspeed", sym: false }, "spec.sym"],
    [{ bits: 8, qrazor: { bits: 9, group: 8 } }, "spec.qrazor.bits"],
    [{ bits: 8, qrazor: { bits: 4, group: 0 } }, "spec.qrazor.group"],
    [{ bits: 8, grid: "deepspeed", qrazor: { bits: 4, group: 8 } }, "spec.qrazor"],
  ];
  for (const [s, field] of bad) {
    const e = assertThrows(() => checkQuantSpec(s, "spec", 64), OptionError);
    assert(e.message.includes(field), `${e.message} should name ${field}`);
  }
});

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("fake_quant_sdr_test: SKIPPED (GPU part) — no WebGPU adapter");

Deno.test({
  name: "WGSL QRazor and deepspeed grids equal the CPU reference bit for bit (in and out of place)",
  ignore: !available,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    let n = 0;
    for (const [rows, cols] of SHAPES) {
      const x = activations(rows, cols, rows * cols);
      const specs: { spec: FakeQuantSpec; label: string }[] = [...cases()];
      for (const bits of [4, 8]) {
        specs.push({ spec: { bits, grid: "deepspeed" }, label: `ds${bits}` });
      }
      for (const { spec, label } of specs) {
        const want = fakeQuantRef(x, rows, cols, spec);
        const got = await gpuFakeQuant(ctx, x, spec, { rows, cols });
        assertEquals(vals(got), vals(want), `${label} [${rows},${cols}]`);
        if (n++ % 7 === 0) {
          const yb = upload(ctx, x);
          const d = fakeQuantDispatches(ctx, { y: yb }, { spec, rows, cols });
          const inPlace = new Float32Array(await runAndRead(ctx, d, yb, x.byteLength));
          ctx.pool.release(yb);
          assertEquals(vals(inPlace), vals(want), `in place ${label} [${rows},${cols}]`);
        }
      }
    }
  },
});
