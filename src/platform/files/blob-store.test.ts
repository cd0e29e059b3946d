import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type BlobStore, createLocalBlobStore, newBlobKey } from "./blob-store.ts";

let root: string;
let blobs: BlobStore;

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), "charter-blobs-"));
  blobs = createLocalBlobStore(root);
});

afterEach(() => {
  rmSync(root, { recursive: true, force: true });
});

async function read(key: string): Promise<Buffer | undefined> {
  const stream = await blobs.get(key);
  if (!stream) return undefined;
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

/** Every file under the store's directory, relative to it. */
function filesOnDisk(): string[] {
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name).slice(root.length + 1))
    .sort();
}

async function listed(): Promise<string[]> {
  const keys: string[] = [];
  for await (const { key } of blobs.list()) keys.push(key);
  return keys.sort();
}

describe("the local blob store", () => {
  it("stores, reads, lists and deletes a blob under an opaque key, privately", async () => {
    const key = newBlobKey();
    const data = randomBytes(200_000);
    expect(await blobs.exists(key)).toBe(false);
    expect(await blobs.get(key)).toBeUndefined();

    await blobs.put(key, data);
    expect(await blobs.exists(key)).toBe(true);
    expect(await read(key)).toEqual(data);
    expect(await listed()).toEqual([key]);
    expect(filesOnDisk()).toEqual([join(key.slice(0, 2), key)]);
    expect(statSync(join(root, key.slice(0, 2), key)).mode & 0o777).toBe(0o600);
    expect(statSync(join(root, key.slice(0, 2))).mode & 0o777).toBe(0o700);

    expect(await blobs.delete(key)).toBe(true);
    expect(await blobs.delete(key)).toBe(false);
    expect(await blobs.exists(key)).toBe(false);
    expect(await listed()).toEqual([]);
  });

  it("streams a blob in from an async source", async () => {
    const key = newBlobKey();
    const parts = [randomBytes(10), randomBytes(70_000), randomBytes(3)];
    await blobs.put(
      key,
      (async function* () {
        yield* parts;
      })(),
    );
    expect(await read(key)).toEqual(Buffer.concat(parts));
  });

  it("shows nothing under the key until the write is complete, and nothing at all when it fails", async () => {
    const key = newBlobKey();
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let written: () => void = () => {};
    const firstWritten = new Promise<void>((resolve) => {
      written = resolve;
    });
    const source = async function* () {
      yield Buffer.from("first half ");
      written();
      await held;
      yield Buffer.from("second half");
    };
    const putting = blobs.put(key, source());
    await firstWritten;
    expect(await blobs.exists(key)).toBe(false);
    expect(await blobs.get(key)).toBeUndefined();
    expect(await listed()).toEqual([]);
    release();
    await putting;
    expect((await read(key))?.toString()).toBe("first half second half");

    const failing = newBlobKey();
    const broken = async function* () {
      yield Buffer.from("partial content");
      throw new Error("the upload was cut off");
    };
    await expect(blobs.put(failing, broken())).rejects.toThrow("the upload was cut off");
    expect(await blobs.exists(failing)).toBe(false);
    expect(filesOnDisk()).toEqual([join(key.slice(0, 2), key)]);
  });

  it("discards writes a crash left incomplete, once they are older than the cut-off", async () => {
    const key = newBlobKey();
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const putting = blobs.put(
      key,
      (async function* () {
        yield Buffer.from("never finished");
        await held;
      })(),
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    const [draft] = readdirSync(join(root, "incomplete"));
    expect(draft).toBeDefined();
    const draftPath = join(root, "incomplete", draft as string);
    expect(readFileSync(draftPath).toString()).toBe("never finished");

    const hourAgo = new Date(Date.now() - 3_600_000);
    expect(await blobs.discardIncomplete(hourAgo)).toBe(0);
    utimesSync(draftPath, new Date(hourAgo.getTime() - 1000), new Date(hourAgo.getTime() - 1000));
    expect(await blobs.discardIncomplete(hourAgo)).toBe(1);
    expect(readdirSync(join(root, "incomplete"))).toEqual([]);
    // The interrupted write then fails instead of publishing anything.
    release();
    await expect(putting).rejects.toThrow();
    expect(await blobs.exists(key)).toBe(false);
  });

  it("refuses keys that are not opaque hex ids, so no key names a path", async () => {
    for (const key of ["../etc/passwd", "ABCDEF0123456789ABCDEF0123456789", "a".repeat(31), "", "incomplete"]) {
      await expect(blobs.put(key, Buffer.from("x"))).rejects.toThrow(TypeError);
      await expect(blobs.get(key)).rejects.toThrow(TypeError);
      await expect(blobs.delete(key)).rejects.toThrow(TypeError);
      await expect(blobs.exists(key)).rejects.toThrow(TypeError);
    }
    expect(filesOnDisk()).toEqual([]);
  });
});
