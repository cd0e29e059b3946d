import { mkdirSync, statSync } from "node:fs";
import { join, resolve } from "node:path";

/**
 * The data directory. The database (`db/`) is kept apart from `keys/`, so a copy or backup of the
 * database never carries the keys that decrypt it.
 */
export interface DataDirPaths {
  root: string;
  /** The embedded PGlite database; PGlite creates it. */
  db: string;
  keys: string;
  checkpoints: string;
  journal: string;
  /** Encrypted file blobs (the local blob store); no names or owners appear in it. */
  files: string;
  /** The local control socket. */
  run: string;
}

/** The data directory cannot be used as it is: the message names the directory and the fix. */
export class DataDirError extends Error {
  override name = "DataDirError";
}

/**
 * Directories whose contents grant control or secrets, or reveal what is stored (how many files, how
 * large, when): must not be open to group or others.
 */
const PRIVATE = new Set(["keys", "run", "files"]);

function ensureDirectory(path: string, mustBePrivate: boolean): void {
  try {
    mkdirSync(path, { mode: 0o700 });
    return;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
  const stats = statSync(path);
  if (!stats.isDirectory()) throw new DataDirError(`${path} exists but is not a directory`);
  const mode = stats.mode & 0o777;
  // An operator's permissions are reported, never changed behind their back.
  if (mustBePrivate && (mode & 0o077) !== 0) {
    throw new DataDirError(
      `${path} has mode ${mode.toString(8).padStart(4, "0")}: group or others can access it; fix: chmod 700 ${path}`,
    );
  }
}

/** Creates the data directory layout (new directories with mode 0700) and returns its paths. */
export function prepareDataDir(dataDir: string): DataDirPaths {
  const root = resolve(dataDir);
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const paths: DataDirPaths = {
    root,
    db: join(root, "db"),
    keys: join(root, "keys"),
    checkpoints: join(root, "checkpoints"),
    journal: join(root, "journal"),
    files: join(root, "files"),
    run: join(root, "run"),
  };
  for (const name of ["keys", "checkpoints", "journal", "files", "run"] as const) {
    ensureDirectory(paths[name], PRIVATE.has(name));
  }
  return paths;
}
