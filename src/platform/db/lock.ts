import { closeSync, linkSync, openSync, readFileSync, unlinkSync, writeSync } from "node:fs";

/** Another live process holds the embedded database. */
export class DataDirLocked extends Error {
  override name = "DataDirLocked";
  readonly path: string;
  readonly pid: number;
  constructor(path: string, pid: number) {
    super(`the embedded database is in use by process ${pid} (lock file ${path})`);
    this.path = path;
    this.pid = pid;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Takes the one-process lock of a PGlite data directory: an exclusive-create lock file with our pid.
 * A lock left by a process that no longer runs is taken over; a live holder makes this throw.
 */
export function acquireDataDirLock(path: string): { release: () => void } {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      // Written in full under a private name, then linked into place: the link either appears complete or
      // fails with EEXIST, so no other process ever reads a half-written lock and takes it for stale.
      const draft = `${path}.${process.pid}.draft`;
      const fd = openSync(draft, "w", 0o600);
      try {
        writeSync(fd, JSON.stringify({ pid: process.pid, since: new Date().toISOString() }));
      } finally {
        closeSync(fd);
      }
      try {
        linkSync(draft, path);
      } finally {
        unlinkSync(draft);
      }
      let held = true;
      return {
        release: () => {
          if (!held) return;
          held = false;
          unlinkSync(path);
        },
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      let pid = Number.NaN;
      try {
        pid = Number(JSON.parse(readFileSync(path, "utf8")).pid);
      } catch {
        // unreadable or half-written: treated as stale below only if it stays so
      }
      if (Number.isInteger(pid) && pid !== process.pid && alive(pid)) throw new DataDirLocked(path, pid);
      if (pid === process.pid) throw new DataDirLocked(path, pid);
      unlinkSync(path);
    }
  }
  throw new Error(`could not take the database lock ${path}`);
}
