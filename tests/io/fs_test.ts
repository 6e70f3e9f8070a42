/**
 * Paths that are not what a loader expects (issue 13, "Found"): folders, FIFOs, devices, symlink
 * loops, dangling links and missing shards are typed errors naming the path — and a FIFO is never
 * opened (a read would block forever; each case runs under a 10 s guard so a regression fails
 * instead of hanging). Atomic writes: unique temp names, no temp left, stale temps of dead
 * writers removed by the next write.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { FileKindError, QuantlabError } from "../../src/errors.ts";
import { cleanStaleTemps, writeFileAtomic } from "../../src/io/fs.ts";
import { readHeader, writeSafetensors } from "../../src/io/safetensors.ts";
import { loadModel } from "../../src/models/load.ts";

const STORIES = new URL("../../../shared/data/models/stories260K-hf", import.meta.url).pathname;

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "quantlab_fs_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A copy of stories260K-hf (config copied, weights linked). */
async function stories(dir: string): Promise<string> {
  const m = `${dir}/m`;
  await Deno.mkdir(m);
  await Deno.copyFile(`${STORIES}/config.json`, `${m}/config.json`);
  await Deno.symlink(`${STORIES}/model.safetensors`, `${m}/model.safetensors`);
  return m;
}

function mkfifo(path: string): void {
  const r = new Deno.Command("mkfifo", { args: [path] }).outputSync();
  if (!r.success) throw new Error("mkfifo failed");
}

/** `p` must reject with a QuantlabError within 10 s (a hang is a failure, not a stuck suite). */
async function rejectsSoon(
  p: () => Promise<unknown>,
  // deno-lint-ignore no-explicit-any
  cls: new (...args: any[]) => Error = FileKindError,
): Promise<Error> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const guard = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error("hung: no answer within 10 s")), 10_000);
  });
  try {
    return await assertRejects(() => Promise.race([p(), guard]), cls);
  } finally {
    clearTimeout(timer);
  }
}

const opts = { sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "files: config.json or model.safetensors as a FIFO is refused without opening it",
  ...opts,
  fn: () =>
    withDir(async (dir) => {
      const m = await stories(dir);
      await Deno.remove(`${m}/config.json`);
      mkfifo(`${m}/config.json`);
      const e = await rejectsSoon(() => loadModel(m));
      assertStringIncludes(e.message, `${m}/config.json`);
      assertStringIncludes(e.message, "FIFO");
      await Deno.remove(`${m}/config.json`);
      await Deno.copyFile(`${STORIES}/config.json`, `${m}/config.json`);
      await Deno.remove(`${m}/model.safetensors`);
      mkfifo(`${m}/model.safetensors`);
      const e2 = await rejectsSoon(() => loadModel(m));
      assertStringIncludes(e2.message, `${m}/model.safetensors`);
      const e3 = await rejectsSoon(() => readHeader(`${m}/model.safetensors`));
      assertStringIncludes(e3.message, "FIFO");
    }),
});

Deno.test("files: model.safetensors as a folder or a character device is a FileKindError", () =>
  withDir(async (dir) => {
    const m = await stories(dir);
    await Deno.remove(`${m}/model.safetensors`);
    await Deno.mkdir(`${m}/model.safetensors`);
    const e = await rejectsSoon(() => loadModel(m));
    assertStringIncludes(e.message, "a folder");
    await Deno.remove(`${m}/model.safetensors`);
    await Deno.symlink("/dev/zero", `${m}/model.safetensors`);
    const e2 = await rejectsSoon(() => loadModel(m));
    assertStringIncludes(e2.message, "character device");
    const e3 = await rejectsSoon(() => loadModel("/dev/null"));
    assertStringIncludes(e3.message, "/dev/null");
  }));

Deno.test("files: a shard named in the index that is missing is a FileKindError naming it", () =>
  withDir(async (dir) => {
    const m = await stories(dir);
    const h = await readHeader(`${m}/model.safetensors`);
    const map: Record<string, string> = {};
    for (const n of h.tensors.keys()) map[n] = "model.safetensors";
    map["model.norm.weight"] = "model-00002-of-00002.safetensors";
    await Deno.writeTextFile(
      `${m}/model.safetensors.index.json`,
      JSON.stringify({ weight_map: map }),
    );
    const e = await rejectsSoon(() => loadModel(m));
    assertStringIncludes(e.message, `${m}/model-00002-of-00002.safetensors`);
    assertStringIncludes(e.message, "missing");
    map["model.norm.weight"] = "../../etc/passwd";
    await Deno.writeTextFile(
      `${m}/model.safetensors.index.json`,
      JSON.stringify({ weight_map: map }),
    );
    await rejectsSoon(() => loadModel(m), QuantlabError);
  }));

Deno.test("files: symlink loops and dangling links are named as such (not 'no such file' or a hub name)", () =>
  withDir(async (dir) => {
    await Deno.symlink(`${dir}/b`, `${dir}/a`);
    await Deno.symlink(`${dir}/a`, `${dir}/b`);
    const e = await rejectsSoon(() => loadModel(`${dir}/a`));
    assertStringIncludes(e.message, "symlink loop");
    const m = await stories(dir);
    await Deno.remove(`${m}/config.json`);
    await Deno.symlink(`${m}/config.json`, `${m}/config.json`).catch(() => {});
    const e2 = await rejectsSoon(() => loadModel(m));
    assertStringIncludes(e2.message, `${m}/config.json`);
    assertStringIncludes(e2.message, "symlink loop");
    await Deno.remove(`${m}/config.json`);
    await Deno.symlink(`${dir}/nowhere.json`, `${m}/config.json`);
    const e3 = await rejectsSoon(() => loadModel(m));
    assertStringIncludes(e3.message, "dangling");
    // A relative path through a loop is local, never looked up as a hub name "owner/repo".
    const cwd = Deno.cwd();
    Deno.chdir(dir);
    try {
      const e4 = await rejectsSoon(() => loadModel("a/model"));
      assertStringIncludes(e4.message, "symlink loop");
    } finally {
      Deno.chdir(cwd);
    }
  }));

Deno.test("atomic write: temps have unique names; concurrent writers leave one whole file and no temp", () =>
  withDir(async (dir) => {
    const f = `${dir}/x.bin`;
    const payloads = Array.from({ length: 8 }, (_, i) => new Uint8Array(200_000).fill(i + 1));
    await Promise.all(payloads.map((p) => writeFileAtomic(f, p)));
    const got = await Deno.readFile(f);
    assertEquals(got.length, 200_000);
    assert(got.every((b) => b === got[0]), "a mix of two writers");
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["x.bin"]);
  }));

Deno.test("atomic write: a stale temp of a dead writer is removed by the next write; a live one stays", () =>
  withDir(async (dir) => {
    const dead = `${dir}/w.safetensors.999999999-0123abcd.tmp`; // no such pid
    const live = `${dir}/w.safetensors.${Deno.pid}-0123abcd.tmp`;
    await Deno.writeFile(dead, new Uint8Array(100));
    await Deno.writeFile(live, new Uint8Array(100));
    await writeSafetensors(`${dir}/w.safetensors`, {
      a: { shape: [2], data: new Float32Array([1, 2]) },
    });
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assertEquals(names, [`w.safetensors`, `w.safetensors.${Deno.pid}-0123abcd.tmp`].sort());
    await Deno.remove(live);
    await Deno.writeFile(dead, new Uint8Array(100));
    assertEquals(await cleanStaleTemps(dir), [dead]);
  }));
