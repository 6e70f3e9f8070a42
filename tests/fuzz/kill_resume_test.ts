/**
 * CI-sized SIGKILL fault injection (2 seeded random kill moments; `deno task fuzz` runs ≥ 10):
 * each killed pipeline run resumes to weights bit-identical to an uninterrupted run, or refuses
 * with a typed error — never a different result.
 */
import { assertEquals } from "@std/assert";
import { KILL_FAILURES, killAndResume } from "./_kill.ts";

Deno.test("fuzz: SIGKILL at 2 random moments, resumed — identical weights", async () => {
  const { counts, examples } = await killAndResume(2, 21);
  const bad = Object.keys(counts).filter((k) => KILL_FAILURES.has(k));
  assertEquals(bad, [], examples.join("\n"));
  assertEquals(Object.values(counts).reduce((a, b) => a + b, 0), 2);
});
