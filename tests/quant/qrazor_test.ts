/**
 * QRazor (src/quant/weight_activation/qrazor.ts):
 * - SDR matches a direct transcription of the seed's reference forward (`lib/qrazor/qrazor.py`,
 *   written below as the masks-per-bit-position loop it is) on 12,288 seeded integer magnitudes
 *   for each (q_bit, r_bit, group) — values spread over every leading-one position, zeros and
 *   groups at the overflow edge included;
 * - effective bits from the formula give the seed's 4.38 / 4.19 / 4.10 / 4.05 / 4.03 (g8…g128);
 * - the qllm-infer grid (symmetric and asymmetric) equals a plain reference; QRazor weights
 *   dequantize bit-exactly from their meta and keep at most `rBit − 1` significant bits.
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { OptionError } from "../../src/errors.ts";
import { dequantize } from "../../src/quant/core/grid.ts";
import {
  qllmFakeQuant,
  qrazorEffectiveBits,
  qrazorWeight,
  sdr,
} from "../../src/quant/weight_activation/qrazor.ts";
import { Rng } from "../_rng.ts";

/** torch.round: half to even. */
function tround(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Direct transcription of the seed's `QRazor.forward` (pad, view(-1, group), the b loop). */
function qrazorReference(x: Float64Array, qBit: number, rBit: number, group: number): Float64Array {
  const orgLen = x.length;
  const padded = orgLen % group ? orgLen + (group - (orgLen % group)) : orgLen;
  const raw = new Float64Array(padded);
  raw.set(x);
  const rowsN = padded / group;
  const maxDim1 = new Float64Array(rowsN);
  for (let r = 0; r < rowsN; r++) {
    let m = -Infinity;
    for (let j = 0; j < group; j++) m = Math.max(m, raw[r * group + j]);
    maxDim1[r] = m;
  }
  for (let b = rBit; b <= qBit; b++) {
    const mulXth = 2 ** (b - 1);
    const roundValue = 2 ** (b + 1 - rBit);
    const threshold = Math.floor(2 * mulXth - 2 ** (b - 4));
    for (let r = 0; r < rowsN; r++) {
      const outlier = maxDim1[r] >= mulXth && maxDim1[r] < mulXth * 2;
      if (!outlier) continue;
      const cond2 = maxDim1[r] >= 2 * mulXth - 2 ** (b - 4);
      for (let j = 0; j < group; j++) {
        const i = r * group + j;
        if (cond2 && raw[i] >= threshold) raw[i] = Math.floor(raw[i] / roundValue) * roundValue;
        else raw[i] = tround(raw[i] / roundValue) * roundValue;
      }
    }
  }
  return raw.slice(0, orgLen);
}

function magnitudes(rng: Rng, n: number, qBit: number, group: number): Float64Array {
  const top = 2 ** (qBit - 1) - 1;
  const out = new Float64Array(n);
  for (let g = 0; g < n; g += group) {
    // Each group its own range: every leading-one position, and some groups at the top edge.
    const kind = rng.int(4);
    const range = kind === 0
      ? top
      : kind === 1
      ? 2 ** rng.int(qBit)
      : Math.max(1, rng.int(top + 1));
    for (let i = g; i < Math.min(g + group, n); i++) {
      out[i] = kind === 3 && rng.next() < 0.3
        ? top - rng.int(3)
        : Math.min(top, rng.int(range + 1));
    }
  }
  return out;
}

Deno.test("SDR equals the reference QRazor forward on ≥ 10,000 seeded values per configuration", () => {
  const rng = new Rng(14);
  let configs = 0;
  for (const [qBit, rBit] of [[8, 4], [16, 4], [16, 8], [8, 5]]) {
    for (const group of [8, 16, 32, 64, 128]) {
      const n = 12_288 + 5; // a padded last group
      const x = magnitudes(rng, n, qBit, group);
      const want = qrazorReference(x, qBit, rBit, group);
      const got = sdr(new Float64Array(x), { qBit, rBit, group });
      let changed = 0;
      for (let i = 0; i < n; i++) {
        if (got[i] !== want[i]) {
          throw new Error(
            `q${qBit} r${rBit} g${group}: value ${i} (${x[i]}) → ${got[i]}, reference ${want[i]}`,
          );
        }
        if (got[i] !== x[i]) changed++;
      }
      assert(changed > n / 10, `the razor must act on this data (${changed} changed)`);
      configs++;
    }
  }
  assertEquals(configs, 20);
});

Deno.test("SDR keeps at most rBit − 1 significant magnitude bits per group, below 2^qBit", () => {
  const rng = new Rng(7);
  const x = magnitudes(rng, 8192, 8, 16);
  const y = sdr(new Float64Array(x), { qBit: 8, rBit: 4, group: 16 });
  for (let g = 0; g < y.length; g += 16) {
    const m = Math.max(...y.subarray(g, g + 16));
    for (const v of y.subarray(g, g + 16)) {
      if (v === 0 || m < 8) continue;
      const lead = Math.floor(Math.log2(Math.max(...x.subarray(g, g + 16))));
      assertEquals(v % 2 ** (lead - 2), 0, `group ${g}: ${v} has bits below the kept three`);
      assert(v < 128);
    }
  }
});

Deno.test("effective bits: the seed's 4.38 / 4.19 / 4.10 / 4.05 / 4.03 from rBit + flag/group", () => {
  const want = [4.38, 4.19, 4.10, 4.05, 4.03];
  [8, 16, 32, 64, 128].forEach((group, i) => {
    const o = { qBit: 8, rBit: 4, group };
    assertEquals(qrazorEffectiveBits(o), 4 + 3 / group); // 6 shift states → 3 flag bits
    assertEquals(qrazorEffectiveBits(o, { roundUp: true }), want[i]);
  });
  assertThrows(() => qrazorEffectiveBits({ qBit: 8, rBit: 9, group: 8 }), OptionError, "rBit");
});

Deno.test("qllm-infer grid: symmetric clamps ±maxq, asymmetric is min–max; per row, column, tensor", () => {
  const rng = new Rng(3);
  const rows = 6, cols = 16;
  const x = rng.normals(rows * cols, 2);
  for (const sym of [true, false]) {
    for (const unit of ["row", "column", "tensor"] as const) {
      const got = qllmFakeQuant(x, rows, cols, { bits: 4, sym, unit }).y;
      const members = (i: number) =>
        [...x.keys()].filter((k) =>
          unit === "tensor"
            ? true
            : unit === "row"
            ? Math.floor(k / cols) === Math.floor(i / cols)
            : k % cols === i % cols
        ).map((k) => x[k]);
      for (let i = 0; i < x.length; i++) {
        const v = members(i);
        const lo = Math.min(0, ...v), hi = Math.max(0, ...v);
        let want: number;
        if (sym) {
          const s = Math.fround(Math.max(-lo, hi) / 7);
          want = Math.fround(s * Math.min(Math.max(tround(Math.fround(x[i] / s)), -7), 7));
        } else {
          const s = Math.fround(Math.fround(hi - lo) / 15), z = tround(Math.fround(-lo / s));
          want = Math.fround(
            s * (Math.min(Math.max(tround(Math.fround(x[i] / s)) + z, 0), 15) - z),
          );
        }
        assertEquals(got[i], want + 0, `${sym ? "sym" : "asym"} ${unit} element ${i}`);
      }
    }
  }
});

Deno.test("qrazorWeight: W8 → 4-bit SDR in groups of 8, dequantized bit-exactly from its meta", async () => {
  const rng = new Rng(5);
  const W = { shape: [8, 64] as [number, number], data: rng.normals(512, 0.05) };
  const r = await qrazorWeight({ bits: 8, groupSize: 32, qrazorBits: 4, qrazorGroup: 8 })
    .quantizeWeight(W, {
      nsamples: 0,
    });
  assertEquals(dequantize(r.meta).data, r.Wq.data);
  const plain = await qrazorWeight({ bits: 8, groupSize: 32 }).quantizeWeight(W, { nsamples: 0 });
  // SDR of the plain codes (sign apart) is the QRazor weight's code set.
  const zero = 127;
  const mag = new Float64Array(512).map((_, i) => Math.abs(plain.meta.codes[i] - zero));
  sdr(mag, { qBit: 8, rBit: 4, group: 8 });
  for (let i = 0; i < 512; i++) {
    assertEquals(r.meta.codes[i] - zero, Math.sign(plain.meta.codes[i] - zero) * mag[i] + 0);
  }
  assertEquals(r.bitsPerWeight, 4 + 3 / 8 + 16 / 32);
  assertThrows(
    () => qrazorWeight({ bits: 8, qrazorBits: 4, qrazorGroup: 8, groupsize: 3 } as never),
    OptionError,
    "groupsize",
  );
});
