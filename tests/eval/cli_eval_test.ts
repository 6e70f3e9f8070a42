import { assert, assertEquals } from "@std/assert";
import { chatCommand, evalCommand } from "../../src/cli_eval.ts";

const DATA = new URL("../../../shared/data/", import.meta.url).pathname;
const MODEL = `${DATA}models/stories260K`;

async function capture(fn: () => Promise<number>): Promise<{ out: string; code: number }> {
  const log = console.log, err = console.error;
  let out = "";
  console.log = (...a: unknown[]) => void (out += a.join(" ") + "\n");
  console.error = (...a: unknown[]) => void (out += a.join(" ") + "\n");
  try {
    const code = await fn();
    return { out, code };
  } finally {
    console.log = log;
    console.error = err;
  }
}

Deno.test("cli eval: table, JSON output, fake-quant RTN-3, bad task and usage exit codes", async () => {
  const tmp = await Deno.makeTempFile({ suffix: ".json" });
  try {
    const r = await capture(() =>
      evalCommand(["--model", MODEL, "--tasks", "piqa,boolq", "--limit", "3", "--output", tmp])
    );
    assertEquals(r.code, 0, r.out);
    assert(r.out.includes("|Tasks") && r.out.includes("piqa") && r.out.includes("acc_norm"));
    const j = JSON.parse(await Deno.readTextFile(tmp));
    assertEquals(j.map((x: { task: string }) => x.task), ["piqa", "boolq"]);
    assertEquals(j[0].protocol.docs.evaluated, 3);
    const q = await capture(() =>
      evalCommand([
        "--model",
        MODEL,
        "--tasks",
        "arc_easy",
        "--limit",
        "2",
        "--method",
        "rtn",
        "--bits",
        "3",
      ])
    );
    assertEquals(q.code, 0, q.out);
  } finally {
    await Deno.remove(tmp);
  }
  const bad = await capture(() => evalCommand(["--model", MODEL, "--tasks", "piqa,nope"]));
  assertEquals(bad.code, 1);
  assert(bad.out.includes("unknown task") && bad.out.includes("hellaswag"));
  assertEquals((await capture(() => evalCommand(["--model", MODEL]))).code, 2);
  assertEquals((await capture(() => evalCommand(["--bogus"]))).code, 2);
});

Deno.test("cli eval kld and chat", async () => {
  const k = await capture(() =>
    evalCommand([
      "kld",
      "--model",
      MODEL,
      "--method",
      "rtn",
      "--bits",
      "3",
      "--ctx",
      "64",
      "--nsamples",
      "2",
    ])
  );
  assertEquals(k.code, 0, k.out);
  assert(k.out.includes("Mean    KLD:") && k.out.includes("Same top p"));
  const c = await capture(() =>
    chatCommand([
      "--model",
      MODEL,
      "--prompt",
      "Once upon a time",
      "--chat-template",
      "{{ bos_token }}{{ messages[0]['content'] }}",
      "--max-new-tokens",
      "8",
      "--compare",
      "rtn:3",
    ])
  );
  assertEquals(c.code, 0, c.out);
  assert(c.out.includes("--- fp ---") && c.out.includes("--- rtn:3 ---"), c.out);
  const e = await capture(() => chatCommand(["--model", MODEL, "--prompt", "hi"]));
  assertEquals(e.code, 1);
  assert(e.out.includes("chatTemplate"));
});
