/**
 * File-system helpers every reader and writer of the library goes through: a stat that turns
 * symlink loops, dangling links, permission errors and non-regular files (folders, FIFOs,
 * sockets, devices) into a {@linkcode FileKindError} naming the path *before* anything is opened
 * (opening a FIFO for reading blocks until a writer appears), and an atomic writer (unique temp
 * file, fsync of the file, rename, fsync of the folder) with cleanup of temps left by killed
 * writers.
 * @module
 */
import { FileKindError } from "../errors.ts";

/** What a path is, in words, for error messages. */
export function kindOf(info: Deno.FileInfo): string {
  if (info.isFile) return "a regular file";
  if (info.isDirectory) return "a folder";
  if (info.isSymlink) return "a symlink";
  if (info.isFifo) return "a FIFO (named pipe)";
  if (info.isSocket) return "a socket";
  if (info.isCharDevice) return "a character device";
  if (info.isBlockDevice) return "a block device";
  return "not a regular file";
}

function describeStatError(path: string, e: unknown): FileKindError {
  const err = e as { name?: string; code?: string; message?: string };
  if (err.code === "ELOOP" || err.name === "FilesystemLoop") {
    return new FileKindError(path, "a symlink loop (too many levels of symbolic links)");
  }
  if (err.name === "PermissionDenied" || err.code === "EACCES") {
    return new FileKindError(path, "cannot be read (permission denied)");
  }
  if (err.name === "NotADirectory" || err.code === "ENOTDIR") {
    return new FileKindError(path, "a parent of this path is not a folder");
  }
  return new FileKindError(path, `cannot stat (${clip(String(err.message ?? e), 200)})`);
}

/**
 * `Deno.stat(path)` (following links) or null when nothing is there. A dangling symlink, a symlink
 * loop, a permission error or any other stat failure is a {@linkcode FileKindError} naming `path`.
 */
export async function statPath(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if ((e as Error).name !== "NotFound") throw describeStatError(path, e);
    let link: Deno.FileInfo | null = null;
    try {
      link = await Deno.lstat(path);
    } catch { /* truly absent */ }
    if (link?.isSymlink) {
      throw new FileKindError(path, "a dangling symlink (its target is missing)");
    }
    return null;
  }
}

/**
 * Checks that `path` is a regular file (following links) and returns its info. Absent:
 * {@linkcode FileKindError} "missing" (with `what`, e.g. "shard named in the index"); a folder,
 * FIFO, socket or device: {@linkcode FileKindError} naming the kind — never opened.
 */
export async function requireFile(path: string, what = "file"): Promise<Deno.FileInfo> {
  const st = await statPath(path);
  if (!st) throw new FileKindError(path, `${what} is missing`);
  if (!st.isFile) throw new FileKindError(path, `${what} is ${kindOf(st)}, not a regular file`);
  return st;
}

/** Like {@linkcode requireFile}, but returns null when nothing is at `path`. */
export async function fileIfPresent(path: string, what = "file"): Promise<Deno.FileInfo | null> {
  const st = await statPath(path);
  if (st && !st.isFile) {
    throw new FileKindError(path, `${what} is ${kindOf(st)}, not a regular file`);
  }
  return st;
}

/**
 * Opens `path` for reading after checking it is a regular file ({@linkcode requireFile}); an open
 * failure (permission, a race) is a {@linkcode FileKindError} naming the path, not a raw error.
 */
export async function openForRead(path: string, what = "file"): Promise<Deno.FsFile> {
  await requireFile(path, what);
  try {
    return await Deno.open(path, { read: true });
  } catch (e) {
    throw describeStatError(path, e);
  }
}

/**
 * True when anything (file, folder, link — even a dangling one) is at `path`: what a writer must
 * not overwrite without leave. Never opens it.
 */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Reads a whole regular file: {@linkcode requireFile} first (a FIFO, folder or device is refused
 * before it is opened), then the read; a read failure is a {@linkcode FileKindError} naming it.
 */
export async function readFileChecked(path: string, what = "file"): Promise<Uint8Array> {
  await requireFile(path, what);
  try {
    return await Deno.readFile(path);
  } catch (e) {
    throw describeStatError(path, e);
  }
}

/** {@linkcode readFileChecked} decoded as UTF-8 text. */
export async function readTextChecked(path: string, what = "file"): Promise<string> {
  return new TextDecoder().decode(await readFileChecked(path, what));
}

/** `s` cut to `max` characters with a note of how much was cut (bounded error messages). */
export function clip(s: string, max = 200): string {
  return s.length <= max ? s : `${s.slice(0, max)}… (${s.length - max} more characters)`;
}

/** The temp-file pattern of {@linkcode writeFileAtomic}: `<name>.<pid>-<8 hex>.tmp`. */
const TEMP_RE = /^(.*)\.(\d+)-[0-9a-f]{8}\.tmp$/;

function pidAlive(pid: number): boolean | undefined {
  if (pid === Deno.pid) return true;
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    try {
      Deno.statSync("/proc/self");
      return false; // /proc exists and the pid is not in it
    } catch {
      return undefined; // no /proc: unknown
    }
  }
}

/**
 * Removes temp files of {@linkcode writeFileAtomic} in `dir` left behind by writers that no longer
 * run (their pid is gone, or — where `/proc` is absent — older than `maxAgeMs`, default 1 hour).
 * `target`, when given, limits the cleanup to temps of that file name. Returns the removed paths.
 */
export async function cleanStaleTemps(
  dir: string,
  opts: { target?: string; maxAgeMs?: number } = {},
): Promise<string[]> {
  const removed: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch {
    return removed;
  }
  for (const e of entries) {
    const m = TEMP_RE.exec(e.name);
    if (!m || !e.isFile || (opts.target !== undefined && m[1] !== opts.target)) continue;
    const p = `${dir}/${e.name}`;
    let alive = pidAlive(Number(m[2]));
    if (alive === undefined) {
      const st = await Deno.stat(p).catch(() => null);
      alive = !(st?.mtime && Date.now() - st.mtime.getTime() > (opts.maxAgeMs ?? 3_600_000));
    }
    if (!alive) {
      await Deno.remove(p).catch(() => {});
      removed.push(p);
    }
  }
  return removed;
}

function splitPath(path: string): [string, string] {
  const i = path.lastIndexOf("/");
  return i < 0 ? [".", path] : [path.slice(0, i) || "/", path.slice(i + 1)];
}

/**
 * Writes `bytes` to `path` atomically and durably: a temp file with a unique name
 * (`<path>.<pid>-<random>.tmp`, so two writers never share one), fsync of the file, rename over
 * `path`, fsync of the folder. A failure removes the temp; temps of killed writers of the same
 * file are removed first ({@linkcode cleanStaleTemps}). A reader sees the old file or the new one,
 * never a partial one.
 */
export async function writeFileAtomic(path: string, bytes: Uint8Array | string): Promise<void> {
  const [dir, name] = splitPath(path);
  await cleanStaleTemps(dir, { target: name });
  const rand = crypto.getRandomValues(new Uint32Array(1))[0].toString(16).padStart(8, "0");
  const tmp = `${path}.${Deno.pid}-${rand}.tmp`;
  const data = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
  try {
    const f = await Deno.open(tmp, { write: true, createNew: true });
    try {
      let o = 0;
      while (o < data.length) o += await f.write(data.subarray(o));
      await f.sync();
    } finally {
      f.close();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  try {
    const d = await Deno.open(dir, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  } catch { /* folders cannot be opened for sync on some platforms (Windows) */ }
}
