import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { acquireDataDirLock, DataDirLocked } from "./lock.ts";

const OPEN_PGLITE = fileURLToPath(new URL("../../../test/fixtures/open-pglite.ts", import.meta.url));

let dir: string;
let lockPath: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "charter-lock-"));
  lockPath = join(dir, "db.lock");
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const holder = () => JSON.parse(readFileSync(lockPath, "utf8")).pid as number;

/** The pid of a process that has already exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ["-e", ""]);
  if (child.pid === undefined || child.status !== 0) throw new Error("could not run a child process");
  return child.pid;
}

describe("acquireDataDirLock", () => {
  it("writes our pid, refuses a second acquire in the same process, and release removes the file", () => {
    const lock = acquireDataDirLock(lockPath);
    expect(holder()).toBe(process.pid);
    let refused: unknown;
    try {
      acquireDataDirLock(lockPath);
    } catch (error) {
      refused = error;
    }
    expect(refused).toBeInstanceOf(DataDirLocked);
    expect(refused).toMatchObject({ path: lockPath, pid: process.pid });
    expect(existsSync(lockPath)).toBe(true);

    lock.release();
    expect(existsSync(lockPath)).toBe(false);
    lock.release();
    const again = acquireDataDirLock(lockPath);
    expect(holder()).toBe(process.pid);
    again.release();
  });

  it("refuses a lock held by another live process", () => {
    writeFileSync(lockPath, JSON.stringify({ pid: process.ppid, since: new Date().toISOString() }));
    expect(() => acquireDataDirLock(lockPath)).toThrow(DataDirLocked);
    expect(() => acquireDataDirLock(lockPath)).toThrow(`in use by process ${process.ppid} (lock file ${lockPath})`);
    expect(holder()).toBe(process.ppid);
  });

  it("takes over a lock left by a process that no longer runs", () => {
    const pid = deadPid();
    writeFileSync(lockPath, JSON.stringify({ pid, since: new Date().toISOString() }));
    const lock = acquireDataDirLock(lockPath);
    expect(holder()).toBe(process.pid);
    lock.release();
    expect(existsSync(lockPath)).toBe(false);
  });

  it("takes over a lock file that holds no pid", () => {
    writeFileSync(lockPath, "not json");
    const lock = acquireDataDirLock(lockPath);
    expect(holder()).toBe(process.pid);
    lock.release();
  });

  it("a second process cannot open the embedded database while this one holds it", () => {
    // The same lock file pgliteEngine(dir) takes; holding it here keeps the test fast (no PGlite start-up).
    const lock = acquireDataDirLock(join(dir, "db.lock"));
    try {
      const child = spawnSync(process.execPath, [OPEN_PGLITE, dir], { encoding: "utf8", timeout: 60_000 });
      expect(child.stdout).not.toContain("opened");
      expect(child.stderr).toContain(`DataDirLocked: the embedded database is in use by process ${process.pid}`);
      expect(child.stderr).toContain(join(dir, "db.lock"));
      expect(child.status).toBe(1);
      expect(existsSync(join(dir, "db"))).toBe(false);
      expect(holder()).toBe(process.pid);
    } finally {
      lock.release();
    }
  });
});
