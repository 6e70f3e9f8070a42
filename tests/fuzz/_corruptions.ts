/**
 * Corruption kinds of a finished pipeline workdir (stories260K: 5 blocks), shared by
 * `tests/quant/resume_integrity_test.ts` and `deno task fuzz`. Each edits the folder in place and
 * says how a resume must answer: recompute the damaged block to the uninterrupted run's weights,
 * or refuse with a ResumeError naming the file.
 * @module
 */
import { assert } from "@std/assert";
import { readHeader } from "../../src/io/safetensors.ts";
import { blockFile } from "../../src/quant/pipeline/_checkpoint.ts";

/** How a corruption of the workdir must be answered. */
export type Want = "recompute" | "refuse" | "refuse-other-recipe";

/** Corruption kinds: each edits a finished workdir in place. */
export const CORRUPTIONS: Record<string, (dir: string) => Promise<Want>> = {
  "flipped byte in a stored weight": async (dir) => {
    await flipIn(blockFile(dir, 1), "w:");
    return "recompute";
  },
  "flipped byte in a stored hidden state": async (dir) => {
    await flipIn(blockFile(dir, 2), "h:");
    return "recompute";
  },
  "truncated block file": async (dir) => {
    const f = blockFile(dir, 3);
    const b = await Deno.readFile(f);
    await Deno.writeFile(f, b.subarray(0, Math.floor(b.length * 0.6)));
    return "recompute";
  },
  "empty block file": async (dir) => {
    await Deno.writeFile(blockFile(dir, 0), new Uint8Array(0));
    return "recompute";
  },
  "flipped byte in the metas string": async (dir) => {
    const f = blockFile(dir, 1);
    const b = await Deno.readFile(f);
    const text = new TextDecoder().decode(
      b.subarray(0, 8 + Number(new DataView(b.buffer).getBigUint64(0, true))),
    );
    const at = text.indexOf('"method');
    assert(at > 0);
    b[at + 3] ^= 0x01; // "method" → "meUhod": still valid JSON, different meta
    await Deno.writeFile(f, b);
    return "recompute";
  },
  "a block file replaced by another block's": async (dir) => {
    await Deno.copyFile(blockFile(dir, 1), blockFile(dir, 2));
    return "recompute";
  },
  "run.json deleted, blocks of another recipe": async (dir) => {
    await Deno.remove(`${dir}/run.json`);
    return "refuse-other-recipe";
  },
  "run.json garbled": async (dir) => {
    await Deno.writeTextFile(`${dir}/run.json`, "{not json");
    return "refuse";
  },
};

/** Flips one bit in the middle of the first tensor whose name starts with `prefix`. */
export async function flipIn(file: string, prefix: string): Promise<void> {
  const h = await readHeader(file);
  const t = [...h.tensors.values()].find((x) => x.name.startsWith(prefix))!;
  const b = await Deno.readFile(file);
  b[t.begin + Math.floor((t.end - t.begin) / 2)] ^= 0x40;
  await Deno.writeFile(file, b);
}
