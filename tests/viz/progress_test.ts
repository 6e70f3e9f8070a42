import { assertEquals, assertStringIncludes } from "@std/assert";
import { progress, progressLine } from "../../src/viz/progress.ts";

Deno.test("progressLine draws bar, counts, percent, rate and info", () => {
  const line = progressLine({
    label: "ppl",
    count: 5,
    total: 10,
    elapsed: 2.5,
    info: "loss 1.2",
    finished: false,
  }, 10);
  assertEquals(line, "ppl [#####.....] 5/10 50% 2.00 it/s eta 2.5s loss 1.2");
  const done = progressLine({
    label: "q",
    count: 10,
    total: 10,
    elapsed: 3,
    info: "",
    finished: true,
  }, 4);
  assertEquals(done, "q [####] 10/10 100% in 3.0s");
});

Deno.test("progress: disabled handle is silent and tolerant", async () => {
  const p = progress("x", 3, { enabled: false });
  p.tick();
  p.tick(2, "info");
  await p.done();
});

Deno.test("progress: forced on a non-terminal stderr writes rate-limited lines", async () => {
  // run in a subprocess so its stderr is a pipe
  const code = `
    import { progress } from ${
    JSON.stringify(new URL("../../src/viz/progress.ts", import.meta.url).href)
  };
    const p = progress("work", 1000, { enabled: true, minIntervalMs: 1e9 });
    for (let i = 0; i < 1000; i++) p.tick(1, "i=" + i);
    await p.done("ok");
    const q = progress("quiet", 10);
    q.tick(10);
    await q.done();
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    stdout: "piped",
    stderr: "piped",
    env: { QUANTLAB_PROGRESS: "" },
  }).output();
  const err = new TextDecoder().decode(out.stderr).trim().split("\n");
  // first draw, the draw on reaching total, and done(); nothing from the auto-disabled "quiet"
  assertEquals(err.length, 3, err.join("\n"));
  assertStringIncludes(err[0], "work [..............................] 0/1000 0%");
  assertStringIncludes(err[1], "1000/1000 100%");
  assertStringIncludes(err[2], "in ");
  assertStringIncludes(err[2], " ok");
});
