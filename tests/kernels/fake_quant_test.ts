/**
 * The fake-quant kernel (`kernels/fake_quant.ts`) and its CPU reference against an independent
 * oracle: a plain transcription of QuaRot's `ActQuantizer.find_params` + `quantize`/`asym_quant`
 * (`quant_utils.py`) over float32 tensors, reshaped the way the reference reshapes them
 * (`x.reshape(-1, groupsize)` per token/group, the transpose per channel, one row per tensor).
 * The reference runs in torch float32, so the oracle rounds every step to f32 and the CPU
 * reference must match it exactly; the WGSL must match the CPU reference exactly too (same f32
 * steps; WGSL `round` and torch.round both round half to even).
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { fakeQuantRef, type FakeQuantSpec } from "../../kernels/fake_quant.ts";
import { checkQuantSpec, fakeQuant } from "../../src/backend/ops.ts";
import { OptionError } from "../../src/errors.ts";
import {
  fakeQuantDispatch,
  getWebGPU,
  gpuFakeQuant,
  runAndRead,
  upload,
  webgpuAvailable,
} from "../../src/backend/webgpu.ts";
import { randomArray } from "../../src/backend/_webgpu_check.ts";

const f = Math.fround;
/** Values as numbers, −0 as 0 (signed zeros are not a difference here). */
const vals = (a: ArrayLike<number>) => Array.from(a, (v) => v + 0);
/** torch.round: half to even. */
const tround = (x: number) => {
  const fl = Math.floor(x), d = x - fl;
  if (d > 0.5) return fl + 1;
  if (d < 0.5) return fl;
  return fl % 2 === 0 ? fl : fl + 1;
};

/** QuaRot ActQuantizer over the rows of `X` (each row one unit), float32 like torch. */
function actQuantRows(X: number[][], bits: number, sym: boolean, clip: number): number[][] {
  if (bits === 16) return X.map((r) => r.slice());
  const maxq = sym ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
  return X.map((row) => {
    let xmin = f(Math.min(Math.min(...row), 0) * f(clip));
    let xmax = f(Math.max(Math.max(...row), 0) * f(clip));
    if (sym) {
      xmax = Math.max(Math.abs(xmin), xmax);
      const scale = xmax === 0 ? 1 : f(xmax / maxq);
      return row.map((x) => f(scale * Math.min(Math.max(tround(f(x / scale)), -(maxq + 1)), maxq)));
    }
    if (xmin === 0 && xmax === 0) {
      xmin = -1;
      xmax = 1;
    }
    const scale = f(f(xmax - xmin) / maxq);
    const zero = tround(f(-xmin / scale));
    return row.map((x) =>
      f(scale * (Math.min(Math.max(tround(f(x / scale)) + zero, 0), maxq) - zero))
    );
  });
}

/** The oracle for any spec over x [rows, cols]. */
function oracle(x: Float32Array, rows: number, cols: number, s: FakeQuantSpec): Float32Array {
  const sym = s.sym ?? true, clip = s.clip ?? 1, g = s.granularity ?? "token";
  const out = new Float32Array(x.length);
  if (g === "tensor") {
    out.set(actQuantRows([Array.from(x)], s.bits, sym, clip)[0]);
  } else if (g === "token") {
    const gs = s.groupSize || cols;
    const units: number[][] = [];
    for (let i = 0; i < x.length; i += gs) units.push(Array.from(x.subarray(i, i + gs)));
    out.set(actQuantRows(units, s.bits, sym, clip).flat());
  } else if (s.scales) {
    const maxq = 2 ** (s.bits - 1) - 1;
    for (let i = 0; i < x.length; i++) {
      const sc = s.scales[i % cols];
      out[i] = s.bits === 16
        ? x[i]
        : f(sc * Math.min(Math.max(tround(f(x[i] / sc)), -(maxq + 1)), maxq));
    }
  } else {
    const T = Array.from(
      { length: cols },
      (_, j) => Array.from({ length: rows }, (_, r) => x[r * cols + j]),
    );
    const Q = actQuantRows(T, s.bits, sym, clip);
    for (let r = 0; r < rows; r++) for (let j = 0; j < cols; j++) out[r * cols + j] = Q[j][r];
  }
  return out;
}

/** A test tensor: random values with a zero row, an outlier column and exact grid halves. */
function tensor(rows: number, cols: number, seed: number): Float32Array {
  const x = randomArray(rows * cols, { seed, lo: -2, hi: 2 });
  x.fill(0, cols, 2 * cols); // row 1 is all zeros
  for (let r = 0; r < rows; r++) x[r * cols + (cols - 1)] *= 8; // an outlier channel
  return x;
}

const SPECS: FakeQuantSpec[] = [];
for (const bits of [2, 3, 4, 8, 12, 15, 16]) {
  for (const sym of [true, false]) {
    SPECS.push({ bits, sym });
    SPECS.push({ bits, sym, granularity: "tensor" });
    SPECS.push({ bits, sym, granularity: "channel" });
    SPECS.push({ bits, sym, groupSize: 8 });
    SPECS.push({ bits, sym, clip: 0.9 });
    SPECS.push({ bits, sym, groupSize: 16, clip: 0.75 });
  }
}
const SHAPES: [number, number][] = [[4, 32], [9, 48], [1, 16]];

const name = (s: FakeQuantSpec) => JSON.stringify(s);

Deno.test("fakeQuantRef equals the QuaRot ActQuantizer transcription exactly (bits 2–16)", () => {
  for (const [rows, cols] of SHAPES) {
    const x = tensor(rows, cols, rows * cols);
    if (rows > 1) x.fill(0, cols, 2 * cols);
    for (const s of SPECS) {
      const y = fakeQuantRef(x, rows, cols, s);
      assertEquals(
        vals(y),
        vals(oracle(x, rows, cols, s)),
        `${name(s)} [${rows},${cols}]`,
      );
    }
  }
});

Deno.test("an all-zero row stays zero; a b-bit unit takes at most 2^b levels", () => {
  const rows = 5, cols = 32;
  const x = tensor(rows, cols, 7);
  for (const s of SPECS) {
    const y = fakeQuantRef(x, rows, cols, s);
    if ((s.granularity ?? "token") === "token") {
      for (let j = 0; j < cols; j++) assertEquals(y[cols + j], 0, name(s));
    }
    if (s.bits < 16 && (s.granularity ?? "token") === "token" && !s.groupSize) {
      for (let r = 0; r < rows; r++) {
        const lv = new Set(y.subarray(r * cols, (r + 1) * cols));
        assert(lv.size <= 2 ** s.bits, `${name(s)}: ${lv.size} levels`);
      }
    }
  }
});

Deno.test("static per-channel scales: round(x / s_j) clamped to the symmetric range", () => {
  const rows = 6, cols = 16;
  const x = tensor(rows, cols, 3);
  const scales = Float32Array.from({ length: cols }, (_, j) => 0.01 + 0.02 * j);
  for (const bits of [2, 4, 8, 16]) {
    const s: FakeQuantSpec = { bits, granularity: "channel", scales };
    assertEquals(vals(fakeQuantRef(x, rows, cols, s)), vals(oracle(x, rows, cols, s)));
  }
  // a hand case: 4 bits, scale 0.5 → levels −4..3 (·0.5); 2.6 clamps to 3.5, 0.25 rounds to 0 (even)
  const y = fakeQuantRef(Float32Array.of(2.6, 0.25, -0.75, -9), 4, 1, {
    bits: 4,
    granularity: "channel",
    scales: Float32Array.of(0.5),
  });
  assertEquals(vals(y), [2.5, 0, -1, -4]);
});

Deno.test("a per-token 8-bit symmetric row is SmoothQuant's absmax rounding (closed form)", () => {
  const x = Float32Array.of(1, -0.5, 0.25, 127 / 64);
  // scale = max|x| / 127 = 1/64: every value is a multiple of 1/64 → unchanged
  assertEquals(vals(fakeQuantRef(x, 1, 4, { bits: 8 })), vals(x));
});

Deno.test("bad specs are OptionErrors naming the field", () => {
  const cases: [FakeQuantSpec, string][] = [
    [{ bits: 1 }, "p.bits"],
    [{ bits: 17 }, "p.bits"],
    [{ bits: 4.5 }, "p.bits"],
    [{ bits: 4, clip: 0 }, "p.clip"],
    [{ bits: 4, clip: 1.5 }, "p.clip"],
    [{ bits: 4, groupSize: 5 }, "p.groupSize"],
    [{ bits: 4, granularity: "tensor", groupSize: 8 }, "p.groupSize"],
    [{ bits: 4, granularity: "row" as "token" }, "p.granularity"],
    [{ bits: 4, scales: new Float32Array(16).fill(1) }, "p.scales"],
    [{ bits: 4, granularity: "channel", scales: new Float32Array(3).fill(1) }, "p.scales"],
    [{ bits: 4, granularity: "channel", scales: new Float32Array(16) }, "p.scales"],
    [
      { bits: 4, granularity: "channel", sym: false, scales: new Float32Array(16).fill(1) },
      "p.scales",
    ],
  ];
  for (const [s, field] of cases) {
    const e = assertThrows(() => checkQuantSpec(s, "p", 16), OptionError);
    assert(e.message.includes(field), `${name(s)}: ${e.message}`);
  }
  assertThrows(
    () => fakeQuant({ shape: [2, 10], data: new Float32Array(20) }, { bits: 4, groupSize: 4 }),
    OptionError,
  );
});

const available = await webgpuAvailable({ allowFallback: true });
if (!available) console.log("fake_quant_test: SKIPPED (GPU part) — no WebGPU adapter");

Deno.test({
  name: "the WGSL fake-quant equals the CPU reference exactly (every spec, in and out of place)",
  ignore: !available,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const ctx = await getWebGPU({ allowFallback: true });
    for (const [rows, cols] of [...SHAPES, [70, 64] as [number, number]]) {
      const x = tensor(rows, cols, rows + cols);
      const scales = Float32Array.from({ length: cols }, (_, j) => 0.05 + 0.01 * j);
      for (const s of [...SPECS, { bits: 4, granularity: "channel", scales } as FakeQuantSpec]) {
        const want = fakeQuantRef(x, rows, cols, s);
        const got = await gpuFakeQuant(ctx, x, s, { rows, cols });
        assertEquals(vals(got), vals(want), `${name(s)} [${rows},${cols}]`);
        const yb = upload(ctx, x);
        const sb = s.scales ? upload(ctx, s.scales) : undefined;
        const d = fakeQuantDispatch(ctx, { y: yb, scales: sb }, { spec: s, rows, cols });
        const inPlace = new Float32Array(await runAndRead(ctx, d ? [d] : [], yb, x.byteLength));
        ctx.pool.release(yb, ...(sb ? [sb] : []));
        assertEquals(vals(inPlace), vals(want), `in place ${name(s)} [${rows},${cols}]`);
      }
    }
  },
});
