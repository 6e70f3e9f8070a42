/**
 * Runs the llama.cpp peer scripts beside this file (node-llama-cpp 3.21.1, `npm ci` here) from
 * Deno: each script takes one JSON request as its argument and prints one JSON line last.
 * Used by the GGUF tests and `bench/llama_peer_bench.ts`.
 * @module
 */

/** This folder (the peer scripts and their `node_modules`). */
export const PEER_DIR: string = new URL("./", import.meta.url).pathname;

/** Whether node-llama-cpp is installed here (`cd tools/llama_peer && npm ci`). */
export async function peerInstalled(): Promise<boolean> {
  try {
    await Deno.stat(`${PEER_DIR}node_modules/node-llama-cpp/package.json`);
    return true;
  } catch {
    return false;
  }
}

/** What `peer.mjs` prints (see its header for the request). */
export interface PeerOut {
  /** Greedy continuation. */
  greedy: number[];
  /** log p of each teacher token. */
  logprobs: number[];
  /** The runtime's tokenization of "Once upon a time" (no BOS). */
  tokenize: number[];
  /** Prompt + greedy tokens, seconds. */
  genSeconds: number;
  /** The teacher-forced pass, seconds (with `teacher`). */
  teacherSeconds?: number;
  /** Whole run, seconds. */
  seconds: number;
}

/** Runs `script` (default `peer.mjs`) with `req`; its last stdout line, parsed. */
export async function runPeer<T = PeerOut>(
  req: Record<string, unknown>,
  script = "peer.mjs",
): Promise<T> {
  const o = await new Deno.Command("node", {
    args: [`${PEER_DIR}${script}`, JSON.stringify(req)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!o.success) throw new Error(`${script} failed: ${new TextDecoder().decode(o.stderr)}`);
  return JSON.parse(new TextDecoder().decode(o.stdout).trim().split("\n").pop() ?? "");
}
