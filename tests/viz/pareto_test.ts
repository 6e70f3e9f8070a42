import { assert, assertEquals } from "@std/assert";
import { paretoFront, paretoPlot, type ParetoPoint } from "../../src/viz/pareto.ts";
import { Rng } from "../_rng.ts";

/** The definition: i is on the front when no j is ≤ in both coordinates and < in one. */
function bruteFront(p: ParetoPoint[], maximizeY = false): number[] {
  const s = maximizeY ? -1 : 1;
  const ok = (i: number) => Number.isFinite(p[i].x) && Number.isFinite(p[i].y);
  return p.map((_, i) => i).filter((i) =>
    ok(i) &&
    !p.some((q, j) =>
      j !== i && ok(j) && q.x <= p[i].x && s * q.y <= s * p[i].y &&
      (q.x < p[i].x || s * q.y < s * p[i].y)
    )
  ).sort((a, b) => a - b);
}

Deno.test("paretoFront equals the dominance definition on 300 seeded point sets (ties included)", () => {
  const r = new Rng(7);
  const rnd = () => r.next();
  for (let t = 0; t < 300; t++) {
    const n = 1 + Math.floor(rnd() * 30);
    const pts: ParetoPoint[] = Array.from({ length: n }, () => ({
      x: Math.floor(rnd() * 8),
      y: rnd() < 0.05 ? NaN : Math.floor(rnd() * 8),
    }));
    for (const maximizeY of [false, true]) {
      const got = paretoFront(pts, { maximizeY }).sort((a, b) => a - b);
      assertEquals(got, bruteFront(pts, maximizeY), JSON.stringify(pts));
    }
  }
});

Deno.test("paretoPlot: one trace per group plus the front, sorted by x", () => {
  const fig = paretoPlot([
    { x: 4.1, y: 5, group: "rtn" },
    { x: 3.1, y: 9, group: "rtn" },
    { x: 4.1, y: 4.5, group: "gptq" },
    { x: 3.1, y: 6, group: "gptq" },
  ]);
  assertEquals(fig.data.map((t) => t.name), ["rtn", "gptq", "Pareto front"]);
  const front = fig.data[2] as unknown as { x: number[]; y: number[] };
  assertEquals(front.x, [3.1, 4.1]);
  assertEquals(front.y, [6, 4.5]);
  assert((fig.layout.yaxis as { type: string }).type === "log");
});
