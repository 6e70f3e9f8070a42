/**
 * Strict options and input checks of every quantizer (issue 13, "Found"): values of the wrong
 * type are refused (not coerced), unknown keys are refused with a "did you mean", sizes and counts
 * are bounded (no option makes a search run for hours), and bad W / H are typed errors with the
 * offending index — a non-symmetric H has its own message, distinct from "not positive definite".
 */
import { assert, assertRejects, assertStringIncludes, assertThrows } from "@std/assert";
import { HessianError, NonFiniteError, OptionError, QuantlabError } from "../../src/errors.ts";
import { didYouMean } from "../../src/quant/core/options.ts";
import { framequant } from "../../src/quant/weight_only/framequant.ts";
import { gptq } from "../../src/quant/weight_only/gptq.ts";
import { quantease } from "../../src/quant/weight_only/quantease.ts";
import { quip } from "../../src/quant/weight_only/quip.ts";
import { rtn } from "../../src/quant/weight_only/rtn.ts";
import type { WeightQuantizer } from "../../src/quant/core/types.ts";
import { Rng } from "../_rng.ts";

// deno-lint-ignore no-explicit-any
type Factory = (o: any) => WeightQuantizer;
const METHODS: [string, Factory, Record<string, unknown>][] = [
  ["rtn", rtn, { bits: 4 }],
  ["gptq", gptq, { bits: 4 }],
  ["quantease", quantease, { bits: 4, numIter: 2 }],
  ["quip", quip, { bits: 4 }],
  ["framequant", framequant, { bits: 4 }],
];

function optionError(f: () => unknown, option: string, ...includes: string[]): void {
  const e = assertThrows(f, OptionError);
  assert(e.option === option, `option ${e.option} ≠ ${option}: ${e.message}`);
  for (const s of includes) assertStringIncludes(e.message, s);
}

Deno.test('options: strings are not booleans (actOrder: "false", sym: "no", mse: "yes")', () => {
  optionError(
    () => gptq({ bits: 4, actOrder: "false" as unknown as boolean }),
    "actOrder",
    'string "false"',
  );
  optionError(() => rtn({ bits: 4, sym: "no" as unknown as boolean }), "sym", 'string "no"');
  optionError(() => rtn({ bits: 4, mse: "yes" as unknown as boolean }), "mse", 'string "yes"');
  for (const [name, f, base] of METHODS) {
    if (name === "quip") {
      optionError(() => f({ ...base, incoh: "false" }), "incoh", 'string "false"');
    } else {
      optionError(() => f({ ...base, sym: "no" }), "sym", 'string "no"');
      optionError(() => f({ ...base, mse: "yes" }), "mse", 'string "yes"');
    }
  }
});

Deno.test('options: error texts show the type (bits: "4" → string "4")', () => {
  for (const [, f] of METHODS) optionError(() => f({ bits: "4" }), "bits", 'string "4"');
});

Deno.test("options: unknown keys are refused with the known list and a did-you-mean", () => {
  for (const [name, f, base] of METHODS) {
    const typo = name === "quip" ? "npass" : "groupsize";
    const want = name === "quip" ? "npasses" : "groupSize";
    const e = assertThrows(() => f({ ...base, [typo]: 16 }), OptionError);
    assertStringIncludes(e.message, `did you mean "${want}"`);
    assertStringIncludes(e.message, "known:");
    assertStringIncludes(e.message, name);
  }
  assert(didYouMean("act_order", ["actOrder", "bits"]) === "actOrder");
  assert(didYouMean("zzzzzz", ["actOrder", "bits"]) === undefined);
});

Deno.test("options: sizes and counts are bounded (mse grid, iterations, passes, blocks)", () => {
  const t0 = performance.now();
  for (const [name, f, base] of METHODS) {
    if (name === "quip") continue;
    for (const grid of [Infinity, 1e7, NaN, 0, 2.5]) {
      optionError(() => f({ ...base, mse: { grid } }), "mse", "grid");
    }
    optionError(() => f({ ...base, mse: { maxshrink: 2 } }), "mse", "maxshrink");
    optionError(() => f({ ...base, mse: { norm: 2, typo: 1 } }), "mse", "typo");
  }
  optionError(() => quantease({ bits: 4, numIter: 1e9 }), "numIter");
  optionError(() => quip({ bits: 4, npasses: Infinity }), "npasses");
  optionError(() => quip({ bits: 4, admm: { niters: 1e12 } }), "admm.niters");
  optionError(() => gptq({ bits: 4, blocksize: 2 ** 40 }), "blocksize");
  optionError(() => gptq({ bits: 4, groupSize: 1e300 }), "groupSize");
  assert(performance.now() - t0 < 2000, "option checks must return at once");
});

Deno.test("options: valid options still construct (every method, defaults and bounds)", () => {
  for (const [, f, base] of METHODS) f(base);
  rtn({ bits: 4, mse: { grid: 10_000, maxshrink: 1, norm: 2.4 }, perChannel: true });
  gptq({ bits: 3, groupSize: 64, actOrder: true, staticGroups: true, mse: true });
  quantease({ bits: 3, numIter: 0, init: "gptq", outlier: 0.01, structureOutlier: true });
  quip({ bits: 2, method: "ldlq", incoh: true, admm: { rho: 0.5 } });
  framequant({ bits: 2, r: 1.1, clipSigma: false, seed: 3 });
});

function eye(n: number, v = 1): Float32Array {
  const H = new Float32Array(n * n);
  for (let i = 0; i < n; i++) H[i * n + i] = v;
  return H;
}

const ALL: [string, WeightQuantizer][] = METHODS.map(([n, f, b]) => [n, f(b)]);

Deno.test("inputs: a NaN or Inf weight is a NonFiniteError with its (row, col), rtn included", async () => {
  const rng = new Rng(1);
  for (const [name, q] of ALL) {
    for (const bad of [NaN, Infinity]) {
      const W = { shape: [4, 16], data: rng.normals(64) };
      W.data[2 * 16 + 5] = bad;
      const e = await assertRejects(
        () => q.quantizeWeight(W, { H: eye(16), nsamples: 8 }, { layer: "L" }),
        NonFiniteError,
      );
      assertStringIncludes(e.message, "(2, 5)", name);
      assertStringIncludes(e.message, "L", name);
    }
  }
});

Deno.test("inputs: W whose data is shorter than its shape, or with a 0 dimension, is a typed error", async () => {
  const rng = new Rng(2);
  for (const [name, q] of ALL) {
    const short = { shape: [4, 16], data: rng.normals(60) };
    const e = await assertRejects(
      () => q.quantizeWeight(short, { H: eye(16), nsamples: 8 }, { layer: "L" }),
      QuantlabError,
    );
    assertStringIncludes(e.message, "60", name);
    await assertRejects(
      () =>
        q.quantizeWeight({ shape: [0, 64], data: new Float32Array(0) }, {
          H: eye(64),
          nsamples: 8,
        }),
      QuantlabError,
    );
  }
});

Deno.test("inputs: a non-symmetric H is a HessianError ('not symmetric', not 'not positive definite')", async () => {
  const rng = new Rng(3);
  for (const [name, q] of ALL) {
    if (name === "rtn") continue;
    const W = { shape: [4, 16], data: rng.normals(64) };
    const H = eye(16, 2);
    H[1 * 16 + 7] = 0.5; // H(1, 7) = 0.5, H(7, 1) = 0
    const e = await assertRejects(
      () => q.quantizeWeight(W, { H, nsamples: 8 }, { layer: "L" }),
      HessianError,
    );
    assertStringIncludes(e.message, "not symmetric", name);
    assertStringIncludes(e.message, "(1, 7)", name);
    assert(!e.message.includes("positive definite"), e.message);
  }
});

Deno.test("inputs: H = −I is a HessianError (negative diagonal) for every Hessian method", async () => {
  const rng = new Rng(4);
  for (const [name, q] of ALL) {
    if (name === "rtn") continue;
    const W = { shape: [4, 16], data: rng.normals(64) };
    const e = await assertRejects(
      () => q.quantizeWeight(W, { H: eye(16, -1), nsamples: 8 }, { layer: "L" }),
      HessianError,
    );
    assertStringIncludes(e.message, "negative diagonal", name);
  }
});
