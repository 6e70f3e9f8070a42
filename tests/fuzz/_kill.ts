/**
 * SIGKILL fault injection for the pipeline's resume: a child (`_kill_child.ts`) quantizes
 * stories260K with a workdir and is killed at a seeded random moment of its run; a second child
 * resumes to the end; its weights must equal an uninterrupted run's bit for bit (or the resume
 * must be a typed refusal). Shared by `deno task fuzz` (≥ 10 kills) and the CI test (2 kills).
 * @module
 */
import { readHeader, readTensor } from "../../src/io/safetensors.ts";
import { Rng } from "../_rng.ts";

const CHILD = new URL("./_kill_child.ts", import.meta.url).pathname;

/** Outcome classes that are failures. */
export const KILL_FAILURES: Set<string> = new Set(["resume crashed", "different result"]);

/** All tensors of a safetensors file. */
export async function readAll(file: string): Promise<Map<string, Float32Array>> {
  const h = await readHeader(file);
  const out = new Map<string, Float32Array>();
  for (const n of h.tensors.keys()) out.set(n, (await readTensor(h, n)).data);
  return out;
}

/** Same names and bit-identical values. */
export function sameMaps(a: Map<string, Float32Array>, b: Map<string, Float32Array>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) {
    const w = b.get(k);
    if (!w || w.length !== v.length || v.some((x, i) => !Object.is(x, w[i]))) return false;
  }
  return true;
}

function child(workdir: string, out: string): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CHILD, workdir, out],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

async function waitFor(p: Deno.ChildProcess, word: string): Promise<void> {
  const rd = p.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let s = "";
  while (!s.includes(word)) {
    const r = await rd.read();
    if (r.done) break;
    s += r.value;
  }
  rd.cancel().catch(() => {});
}

/** Runs `kills` kill-and-resume rounds; returns the count per outcome and one line per round. */
export async function killAndResume(
  kills: number,
  seed: number,
): Promise<{ counts: Record<string, number>; examples: string[] }> {
  const dir = await Deno.makeTempDir({ prefix: "quantlab_kill_" });
  const counts: Record<string, number> = {};
  const examples: string[] = [];
  try {
    // Reference run (no workdir), timed from "start" to exit to aim the kills.
    const ref = child("-", `${dir}/ref.safetensors`);
    await waitFor(ref, "start");
    const t0 = performance.now();
    ref.stderr.cancel().catch(() => {});
    if (!(await ref.status).success) throw new Error("reference child failed");
    const span = performance.now() - t0;
    const oracle = await readAll(`${dir}/ref.safetensors`);
    const rng = new Rng(seed);
    for (let k = 0; k < kills; k++) {
      const work = `${dir}/w${k}`;
      const p = child(work, `${dir}/k${k}.safetensors`);
      await waitFor(p, "start");
      const at = rng.next() * span;
      await new Promise((r) => setTimeout(r, at));
      try {
        p.kill("SIGKILL");
      } catch { /* already exited */ }
      p.stderr.cancel().catch(() => {});
      await p.status;
      const resumed = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", CHILD, work, `${dir}/r${k}.safetensors`],
        stdout: "null",
        stderr: "piped",
      }).output();
      let o: string;
      if (!resumed.success) {
        const err = new TextDecoder().decode(resumed.stderr);
        o = /ResumeError|QuantlabError|FormatError/.test(err) ? "typed refusal" : "resume crashed";
      } else {
        const h = await readHeader(`${dir}/r${k}.safetensors`);
        const same = sameMaps(oracle, await readAll(`${dir}/r${k}.safetensors`));
        o = same ? `identical (resumed ${h.metadata.resumed} blocks)` : "different result";
      }
      counts[o] = (counts[o] ?? 0) + 1;
      examples.push(`kill ${k} at ${at.toFixed(0)} ms of ${span.toFixed(0)} ms: ${o}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return { counts, examples };
}
