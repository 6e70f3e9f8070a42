/**
 * CI run of every config.json case and every quantizer option case (`_sweeps.ts`): each judged by
 * an independent oracle; no case may land in a failure class (untyped error, an invalid config or
 * mistyped option accepted, a valid config refused or giving another perplexity, a hang).
 */
import { assert, assertEquals } from "@std/assert";
import { configSweep, optionSweep, type Sweep } from "./_sweeps.ts";

function check(r: Sweep, minCases: number): void {
  const bad = Object.keys(r.counts).filter((k) => r.failures.has(k));
  assertEquals(bad, [], `${JSON.stringify(r.counts)}\n${r.examples.join("\n")}`);
  const n = Object.values(r.counts).reduce((a, b) => a + b, 0);
  assert(n >= minCases, `${r.title}: ${n} cases`);
}

Deno.test("fuzz: every config.json case loads with the reference perplexity or is a typed error", async () => {
  const r = await configSweep({ nsamples: 1, seqlen: 64 }, "logits");
  check(r, 300);
  assert(
    (r.counts["refused-typed"] ?? 0) > 200 && (r.counts["loads, reference numbers"] ?? 0) > 30,
  );
});

Deno.test("fuzz: every quantizer option case is an OptionError or runs to finite values", async () => {
  check(await optionSweep(1), 1400);
});
