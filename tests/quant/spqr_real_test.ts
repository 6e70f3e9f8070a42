/**
 * SpQR against GPTQ on the 35 real stories260K layers (calibration Hessians from the pipeline):
 * per layer, SpQR's proxy loss `tr(ΔW H ΔWᵀ)` at no more bits than GPTQ's.
 *
 * Measured (32 × 256 calibration tokens, act-order for both): SpQR b_w 3, β1 16, b_s = b_z = 3,
 * τ 0.5 → 3.695 bits/weight, loss ratio to GPTQ 3-bit g32 (4.421 bits with its g_idx) 0.69
 * (geometric mean), ≤ on 35/35 layers; SpQR b_w 2, β1 32, τ 0.5 → 3.216 bits, ratio to GPTQ
 * 2-bit g32 (3.421 bits) 0.52, ≤ on 35/35. Against per-channel GPTQ the same SpQR rows are not
 * better at lower bits here (3.216 bits vs GPTQ 3-bit per-channel at 3.424: ratio 2.05): at 64 or
 * 172 input columns a per-channel grid costs only 0.19–0.5 bits of statistics.
 */
import { assert } from "@std/assert";
import { realLayers } from "./_real_stats.ts";
import { spqrQuantize } from "../../src/quant/weight_only/spqr.ts";
import { gptqQuantize } from "../../src/quant/weight_only/gptq.ts";
import { proxyLoss } from "./_oracles.ts";

Deno.test("spqr ≤ gptq proxy loss at ≤ bits on ≥ 20 of the 35 real stories260K layers", async () => {
  const layers = await realLayers();
  const pairs = [
    {
      spqr: {
        bits: 3,
        groupSize: 16,
        qqScaleBits: 3,
        qqZeroBits: 3,
        outlierRelativeThreshold: 0.5,
      },
      gptq: { bits: 3, groupSize: 32 },
    },
    {
      spqr: {
        bits: 2,
        groupSize: 32,
        qqScaleBits: 3,
        qqZeroBits: 3,
        outlierRelativeThreshold: 0.5,
      },
      gptq: { bits: 2, groupSize: 32 },
    },
  ];
  for (const p of pairs) {
    let wins = 0;
    for (const L of layers) {
      const stats = { H: L.H, nsamples: 32 };
      const s = await spqrQuantize(L.W, stats, { ...p.spqr, permutationOrder: "act_order" });
      const g = await gptqQuantize(L.W, stats, { ...p.gptq, actOrder: true, partialGroups: true });
      if (
        s.bitsPerWeight <= g.bitsPerWeight &&
        proxyLoss(L.W, s.Wq, L.H) <= proxyLoss(L.W, g.Wq, L.H)
      ) wins++;
    }
    assert(wins >= 20, `${JSON.stringify(p)}: ${wins}/35`);
  }
});
