/**
 * CI-sized safetensors fuzzing (2,000 seeded mutations; `deno task fuzz` runs ≥ 10,000): every
 * case is a correct read or a typed, bounded refusal, judged by the independent oracle in
 * `_safetensors_fuzz.ts`.
 */
import { assert, assertEquals } from "@std/assert";
import { FAILURES, fuzzSafetensors } from "./_safetensors_fuzz.ts";

Deno.test("fuzz: 2,000 safetensors mutations — 0 untyped, 0 accepted-but-wrong, 0 slow", async () => {
  const { counts, examples } = await fuzzSafetensors(2000, 13);
  const failures = Object.entries(counts).filter(([k]) => FAILURES.has(k as never));
  assertEquals(failures, [], `${JSON.stringify(counts)}\n${examples.join("\n")}`);
  // Both sides of the oracle are exercised.
  assert((counts["read-correct"] ?? 0) >= 250, JSON.stringify(counts));
  assert((counts["refused-typed"] ?? 0) >= 1000, JSON.stringify(counts));
});
