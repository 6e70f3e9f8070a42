import { assert, assertEquals } from "@std/assert";
import { taskBarRows, taskBars } from "../../src/viz/task_bars.ts";
import { JUPYTER_DISPLAY } from "../../src/viz/display.ts";

Deno.test("taskBars: one bar trace per model, tasks in order, stderr as error bars", () => {
  const res = (v: number) => [
    { task: "piqa", metrics: [{ metric: "acc", filter: "none", value: v, stderr: 0.01 }] },
    { task: "mmlu_anatomy", metrics: [{ metric: "acc", filter: "none", value: 0.3, stderr: 0.1 }] },
    { task: "mmlu", metrics: [{ metric: "acc", filter: "none", value: 0.25, stderr: NaN }] },
    {
      task: "gsm8k",
      metrics: [
        { metric: "exact_match", filter: "strict-match", value: 0.1, stderr: 0.02 },
        { metric: "exact_match", filter: "flexible-extract", value: 0.2, stderr: 0.03 },
      ],
    },
  ];
  const rows = taskBarRows({ fp: res(0.6), gptq3: res(0.55) });
  assertEquals(rows.map((r) => `${r.model}:${r.task}`), [
    "fp:piqa",
    "fp:mmlu",
    "gptq3:piqa",
    "gptq3:mmlu",
  ]);
  const fig = taskBars(rows, { chance: { piqa: 0.5, mmlu: 0.25 } });
  assertEquals(fig.data.length, 2);
  assertEquals(fig.data[1].y, [0.55, 0.25]);
  assertEquals((fig.data[0].error_y as { array: number[] }).array, [0.01, 0]); // NaN → no bar
  assertEquals((fig.layout.shapes as unknown[]).length, 2);
  assert(JUPYTER_DISPLAY in fig);
  const em = taskBarRows({ fp: res(0.6) }, "exact_match", { filter: "flexible-extract" });
  assertEquals(em, [{ model: "fp", task: "gsm8k", value: 0.2, stderr: 0.03 }]);
});
