import { closeSync, existsSync, fstatSync, fsyncSync, openSync, readFileSync, truncateSync, writeSync } from "node:fs";
import { dirname } from "node:path";

/** Builds the caller's own error class from a one-line message. */
type Fail = (message: string) => Error;

export function modeText(mode: number): string {
  return (mode & 0o777).toString(8).padStart(4, "0");
}

/**
 * Reads a key file that must be a regular file, private to its owner and at most `maxBytes`. The checks run
 * on the open descriptor, so the file that is vetted is the file that is read.
 */
export function readPrivateKeyFile(path: string, label: string, maxBytes: number, fail: Fail): Buffer {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw fail(`${label} does not exist`);
    throw fail(`${label} cannot be opened (${code ?? String(error)})`);
  }
  try {
    const stats = fstatSync(fd);
    if (!stats.isFile()) throw fail(`${label} is not a regular file`);
    if ((stats.mode & 0o077) !== 0) {
      throw fail(
        `${label} has mode ${modeText(stats.mode)}: group or others can read or write it; fix: chmod 600 ${path}`,
      );
    }
    if (stats.size > maxBytes) throw fail(`${label} is ${stats.size} bytes, too large for a key`);
    return readFileSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Creates a key file exclusively with mode 0600 and flushes it and its directory entry: a key lost in a
 * crash makes what depends on it unusable. Returns false if another process created the file first.
 */
export function createPrivateKeyFile(path: string, label: string, content: string, fail: Fail): boolean {
  let fd: number;
  try {
    fd = openSync(path, "wx", 0o600);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw fail(`${label} cannot be created (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
  try {
    writeSync(fd, content);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  fsyncDirectory(dirname(path));
  return true;
}

/** Flushes a directory, so that a file just created, renamed or removed in it survives a crash. */
export function fsyncDirectory(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Appends one line to a file private to its owner (created with mode 0600) and flushes it, and its directory
 * when the file is new. A line a crash left without its newline is cut off first: it was never complete.
 */
export function appendPrivateLine(path: string, line: string, fail: Fail): void {
  const isNew = !existsSync(path);
  try {
    if (!isNew) {
      const content = readFileSync(path);
      const complete = content.lastIndexOf(0x0a) + 1;
      if (complete < content.length) truncateSync(path, complete);
    }
    const fd = openSync(path, "a", 0o600);
    try {
      writeSync(fd, `${line}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch (error) {
    throw fail(`${path} cannot be written (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
  if (isNew) fsyncDirectory(dirname(path));
}
