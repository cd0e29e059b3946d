import { randomBytes } from "node:crypto";
import { mkdir, open, readdir, rename, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";

/**
 * Where encrypted file content lives, apart from the database (the file store keeps each blob's key in
 * its metadata row). Blobs are opaque ciphertext under opaque random keys: a backend never learns a
 * file's name, owner or tenant. The local directory is the embedded backend; an S3-compatible one comes
 * with backups.
 */
export interface BlobStore {
  /**
   * Stores a blob under a key never used before. All or nothing: until it resolves no blob is visible
   * under `key`, and when it rejects (the source failed, the disk is full) none ever will be.
   */
  put(key: string, data: Buffer | AsyncIterable<Uint8Array>): Promise<void>;
  /** The blob's bytes as a stream, or undefined when there is no such blob. */
  get(key: string): Promise<Readable | undefined>;
  /** Removes the blob; false when there was none. */
  delete(key: string): Promise<boolean>;
  exists(key: string): Promise<boolean>;
  /** Every stored blob with when it was written, in no particular order: for the orphan sweep. */
  list(): AsyncIterable<{ key: string; writtenAt: Date }>;
  /** Discards writes that never completed (a crash mid-put) begun before `before`; returns how many. */
  discardIncomplete(before: Date): Promise<number>;
}

/** 128 random bits in hex: unguessable, and no name, owner or tenant in a path. */
const BLOB_KEY = /^[0-9a-f]{32}$/;

export function newBlobKey(): string {
  return randomBytes(16).toString("hex");
}

function checkKey(key: string): void {
  // Also what keeps a key from naming a path outside the store.
  if (typeof key !== "string" || !BLOB_KEY.test(key)) throw new TypeError("a blob key must be 32 lowercase hex digits");
}

const TEMPORARY = "incomplete";
/** A subdirectory per first two hex digits, so no directory grows to millions of entries. */
const FAN_OUT = /^[0-9a-f]{2}$/;

async function syncDirectory(path: string): Promise<void> {
  const handle = await open(path, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function isMissing(error: unknown): boolean {
  return (error as NodeJS.ErrnoException).code === "ENOENT";
}

/**
 * A blob store in a local directory (the data directory's `files/`, created private by prepareDataDir).
 * A blob is written under a temporary name in `incomplete/`, flushed, renamed into place and its
 * directory flushed: after a crash a blob is either whole under its key or absent, and what was left in
 * `incomplete/` is discarded by `discardIncomplete`.
 */
export function createLocalBlobStore(root: string): BlobStore {
  const temporary = join(root, TEMPORARY);
  const directoryOf = (key: string) => join(root, key.slice(0, 2));
  const pathOf = (key: string) => join(directoryOf(key), key);

  return {
    async put(key, data) {
      checkKey(key);
      await mkdir(temporary, { recursive: true, mode: 0o700 });
      const draft = join(temporary, `${newBlobKey()}.part`);
      const handle = await open(draft, "wx", 0o600);
      try {
        try {
          if (Buffer.isBuffer(data)) {
            await handle.write(data);
          } else {
            for await (const piece of data) await handle.write(piece);
          }
          await handle.sync();
        } finally {
          await handle.close();
        }
        await mkdir(directoryOf(key), { recursive: true, mode: 0o700 });
        await rename(draft, pathOf(key));
      } catch (error) {
        await unlink(draft).catch(() => {});
        throw error;
      }
      await syncDirectory(directoryOf(key));
    },

    async get(key) {
      checkKey(key);
      // Opened first, so a missing blob is an answer here rather than an error in the middle of a stream.
      let handle: Awaited<ReturnType<typeof open>>;
      try {
        handle = await open(pathOf(key), "r");
      } catch (error) {
        if (isMissing(error)) return undefined;
        throw error;
      }
      return handle.createReadStream({ autoClose: true });
    },

    async delete(key) {
      checkKey(key);
      try {
        await unlink(pathOf(key));
      } catch (error) {
        if (isMissing(error)) return false;
        throw error;
      }
      await syncDirectory(directoryOf(key));
      return true;
    },

    async exists(key) {
      checkKey(key);
      try {
        return (await stat(pathOf(key))).isFile();
      } catch (error) {
        if (isMissing(error)) return false;
        throw error;
      }
    },

    async *list() {
      for (const directory of await readdir(root)) {
        if (!FAN_OUT.test(directory)) continue;
        let names: string[];
        try {
          names = await readdir(join(root, directory));
        } catch (error) {
          if (isMissing(error)) continue;
          throw error;
        }
        for (const key of names) {
          if (!BLOB_KEY.test(key) || key.slice(0, 2) !== directory) continue;
          try {
            yield { key, writtenAt: (await stat(join(root, directory, key))).mtime };
          } catch (error) {
            // Deleted while the listing ran.
            if (!isMissing(error)) throw error;
          }
        }
      }
    },

    async discardIncomplete(before) {
      let names: string[];
      try {
        names = await readdir(temporary);
      } catch (error) {
        if (isMissing(error)) return 0;
        throw error;
      }
      let discarded = 0;
      for (const name of names) {
        const path = join(temporary, name);
        try {
          if ((await stat(path)).mtime >= before) continue;
          await unlink(path);
          discarded += 1;
        } catch (error) {
          if (!isMissing(error)) throw error;
        }
      }
      return discarded;
    },
  };
}
