import { assert, assertEquals, assertGreater } from "@std/assert";
import { readHeader, readTensor } from "../../src/io/safetensors.ts";

const CHILD = new URL("./_resume_child.ts", import.meta.url).pathname;

function child(args: string[], env: Record<string, string> = {}) {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CHILD, ...args],
    env,
    stdout: "piped",
    stderr: "inherit",
  });
}

async function readAll(file: string): Promise<Map<string, Float32Array>> {
  const h = await readHeader(file);
  const out = new Map<string, Float32Array>();
  for (const n of h.tensors.keys()) out.set(n, (await readTensor(h, n)).data);
  return out;
}

Deno.test("resume: a run killed mid-way restarts from the last finished block, same result", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // 1. Uninterrupted reference run.
    const ref = await child([`${dir}/ref`, `${dir}/ref.safetensors`]).output();
    assert(ref.success);
    // 2. A run killed (SIGKILL) after its second finished block.
    const proc = child([`${dir}/work`, `${dir}/killed.safetensors`], { SLOW: "1" }).spawn();
    const reader = proc.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    while (!seen.includes("block-done 2")) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += value;
    }
    proc.kill("SIGKILL");
    await proc.status;
    await reader.cancel().catch(() => {});
    assert(!seen.includes("finished"), "the child finished before it was killed");
    const files = [...Deno.readDirSync(`${dir}/work`)].map((e) => e.name).filter((n) =>
      n.startsWith("block_")
    );
    assert(files.length >= 2 && files.length < 5, `checkpointed blocks: ${files}`);
    assert(
      ![...Deno.readDirSync(`${dir}/work`)].some((e) => e.name.endsWith(".tmp")),
      "temp file left",
    );
    // 3. Resume to the end.
    const res = await child([`${dir}/work`, `${dir}/resumed.safetensors`]).output();
    assert(res.success);
    const h = await readHeader(`${dir}/resumed.safetensors`);
    assertGreater(Number(h.metadata.resumed), 1);
    const a = await readAll(`${dir}/ref.safetensors`);
    const b = await readAll(`${dir}/resumed.safetensors`);
    assertEquals([...a.keys()].sort(), [...b.keys()].sort());
    for (const [k, v] of a) assertEquals(b.get(k), v, k);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
