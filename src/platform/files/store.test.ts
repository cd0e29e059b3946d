import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { createTestAudit } from "../audit/testing.ts";
import { manualClock } from "../clock.ts";
import { DecryptionError } from "../crypto/envelope.ts";
import { createTestKeyRing, type TestKeyRing } from "../crypto/testing.ts";
import type { Tx } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import { createTenant, type Tenant } from "../tenancy/tenants.ts";
import { createLocalBlobStore } from "./blob-store.ts";
import { CHUNK_BYTES, FileTooLargeError } from "./cipher.ts";
import {
  createFileStore,
  FileIntegrityError,
  FileNotFoundError,
  type FileOwner,
  type FileRef,
  type FileStore,
} from "./store.ts";

const DAY = 86_400_000;
const MAX_BYTES = 1024 * 1024;
const HEADER_BYTES = 16;
const RECORD_BYTES = CHUNK_BYTES + 28;
const slug = () => `t-${uuidv7().slice(-12)}`;

describe.each(DATABASE_KINDS)("the file store on %s (E2)", (kind) => {
  let t: TestDatabase;
  let dir: string;
  let keyRing: TestKeyRing;
  let files: FileStore;
  let a: Tenant;
  let b: Tenant;
  const clock = manualClock("2026-03-01T00:00:00Z");

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    dir = mkdtempSync(join(tmpdir(), "charter-files-"));
    keyRing = createTestKeyRing(t.db, clock);
    await keyRing.ensurePlatformKey();
    files = createFileStore({ keyRing, clock, blobs: createLocalBlobStore(dir), maxBytes: MAX_BYTES });
    a = await createTenant(t.db, clock, { slug: slug(), name: "A" }, keyRing, createTestAudit(t.db, keyRing));
    b = await createTenant(t.db, clock, { slug: slug(), name: "B" }, keyRing, createTestAudit(t.db, keyRing));
  });
  afterAll(async () => {
    await t?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Runs fn in the transaction the owner's files live in. */
  const inOwner = <T>(owner: FileOwner, fn: (tx: Tx) => Promise<T>) =>
    owner.scope === "tenant" || owner.scope === "subject"
      ? t.db.withTenant({ tenantId: owner.tenantId }, fn)
      : t.db.withPlatform(fn);
  const inA = <T>(fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId: a.id }, fn);
  const inB = <T>(fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId: b.id }, fn);

  const blobPaths = () =>
    readdirSync(dir, { recursive: true, withFileTypes: true })
      .filter((entry) => entry.isFile())
      .map((entry) => join(entry.parentPath, entry.name));
  const fileRows = async () =>
    (await t.superuser("SELECT count(*)::int AS n FROM tenant_files")).concat(
      await t.superuser("SELECT count(*)::int AS n FROM platform_files"),
    );
  const blobKeyOf = async (id: string) => {
    const [row] = (await t.superuser(
      `SELECT blob_key FROM tenant_files WHERE id = '${id}' UNION ALL SELECT blob_key FROM platform_files WHERE id = '${id}'`,
    )) as { blob_key: string }[];
    return row?.blob_key as string;
  };
  const blobPathOf = async (id: string) => {
    const key = await blobKeyOf(id);
    return join(dir, key.slice(0, 2), key);
  };

  const subjectOfA = (): Extract<FileOwner, { scope: "subject" }> => ({
    scope: "subject",
    tenantId: a.id,
    subjectId: uuidv7(),
  });

  describe("round trips", () => {
    const owners = (): [string, FileOwner][] => [
      ["tenant", { scope: "tenant", tenantId: a.id }],
      ["subject", subjectOfA()],
      ["person", { scope: "person", personId: uuidv7() }],
      ["platform", { scope: "platform" }],
    ];
    for (const [size, label] of [
      [10, "small"],
      [5 * CHUNK_BYTES + 17, "multi-chunk"],
      [0, "empty"],
    ] as const) {
      it(`stores and reads back ${label} content for every kind of owner`, async () => {
        for (const [, owner] of owners()) {
          const content = randomBytes(size);
          const stored = await inOwner(owner, (tx) =>
            files.put(tx, owner, { kind: "document", mediaType: "Application/PDF", name: "Report 2026.pdf" }, content),
          );
          expect(stored).toMatchObject({
            owner,
            kind: "document",
            mediaType: "application/pdf",
            name: "Report 2026.pdf",
            size,
            createdAt: clock.now(),
            expiresAt: null,
          });
          const read = await inOwner(owner, (tx) => files.read(tx, { owner, id: stored.id }));
          expect(read.content.equals(content)).toBe(true);
          expect(read.file).toEqual(stored);
        }
      });
    }

    it("streams: content staged from a stream before the transaction, read after it ends", async () => {
      const owner = subjectOfA();
      const parts = [randomBytes(1000), randomBytes(3 * CHUNK_BYTES), randomBytes(5)];
      const staged = await files.stage(
        (async function* () {
          yield* parts;
        })(),
      );
      expect(staged.size).toBe(3 * CHUNK_BYTES + 1005);
      const stored = await inA((tx) => files.put(tx, owner, { kind: "attachment", mediaType: "text/plain" }, staged));
      expect(stored.id).toBe(staged.id);
      await expect(
        inA((tx) => files.put(tx, owner, { kind: "attachment", mediaType: "text/plain" }, staged)),
      ).rejects.toThrow("a staged file can be stored once only");

      const opened = await inA((tx) => files.open(tx, { owner, id: stored.id }));
      const chunks: Buffer[] = [];
      for await (const chunk of opened.content) chunks.push(chunk);
      expect(chunks.length).toBe(4);
      expect(Buffer.concat(chunks).equals(Buffer.concat(parts))).toBe(true);
      expect(opened.file.name).toBeNull();
    });

    it("gives exports and imports their default expiry, and others none unless asked", async () => {
      const owner: FileOwner = { scope: "tenant", tenantId: a.id };
      const put = (file: Parameters<FileStore["put"]>[2]) => inA((tx) => files.put(tx, owner, file, Buffer.from("x")));
      expect((await put({ kind: "export", mediaType: "application/zip" })).expiresAt).toEqual(
        new Date(clock.now().getTime() + 7 * DAY),
      );
      expect((await put({ kind: "import", mediaType: "text/csv" })).expiresAt).toEqual(
        new Date(clock.now().getTime() + 7 * DAY),
      );
      const at = new Date(clock.now().getTime() + 2 * DAY);
      expect((await put({ kind: "export", mediaType: "application/zip", expiresAt: at })).expiresAt).toEqual(at);
      expect((await put({ kind: "avatar", mediaType: "image/png" })).expiresAt).toBeNull();
      expect((await put({ kind: "avatar", mediaType: "image/png", expiresAt: at })).expiresAt).toEqual(at);
    });
  });

  it("keeps tenants and owners apart", async () => {
    const owner = subjectOfA();
    const stored = await inA((tx) =>
      files.put(tx, owner, { kind: "document", mediaType: "text/plain" }, Buffer.from("A's secret")),
    );
    const ref: FileRef = { owner, id: stored.id };
    // B's transaction cannot see A's row, whatever the ref claims.
    await expect(inB((tx) => files.read(tx, ref))).rejects.toThrow(FileNotFoundError);
    await expect(inB((tx) => files.read(tx, { owner: { ...owner, tenantId: b.id }, id: stored.id }))).rejects.toThrow(
      FileNotFoundError,
    );
    expect(await inB((tx) => files.delete(tx, ref))).toBe(false);
    // Nor the platform's.
    await expect(t.db.withPlatform((tx) => files.read(tx, ref))).rejects.toThrow(FileNotFoundError);
    // Within A, only as the owner it was stored for.
    await expect(
      inA((tx) => files.read(tx, { owner: { scope: "tenant", tenantId: a.id }, id: stored.id })),
    ).rejects.toThrow(FileNotFoundError);
    await expect(inA((tx) => files.read(tx, { owner: subjectOfA(), id: stored.id }))).rejects.toThrow(
      FileNotFoundError,
    );
    // And a tenant file is not written from another tenant's transaction.
    await expect(
      inB((tx) =>
        files.put(
          tx,
          { scope: "tenant", tenantId: a.id },
          { kind: "document", mediaType: "text/plain" },
          Buffer.from("x"),
        ),
      ),
    ).rejects.toThrow();
    // The control: the owner reads it.
    expect((await inA((tx) => files.read(tx, ref))).content.toString()).toBe("A's secret");
  });

  it("stores no plaintext of the content or the name, on disk or in the database", async () => {
    const marker = "MARKER-d41c-never-in-plain-text";
    const owner = subjectOfA();
    const stored = await inA((tx) =>
      files.put(
        tx,
        owner,
        { kind: "attachment", mediaType: "text/plain", name: `${marker}.txt` },
        Buffer.from(`${marker} `.repeat(20_000)),
      ),
    );
    for (const path of blobPaths()) expect(readFileSync(path).includes(marker)).toBe(false);
    const rows = await t.superuser(`SELECT * FROM tenant_files WHERE id = '${stored.id}'`);
    expect(rows).toHaveLength(1);
    expect(JSON.stringify(rows)).not.toContain(marker);
    expect((await inA((tx) => files.read(tx, { owner, id: stored.id }))).file.name).toBe(`${marker}.txt`);
  });

  describe("refuses stored content that was changed", () => {
    const owner = (): FileOwner => ({ scope: "tenant", tenantId: a.id });
    const store = (content: Buffer) =>
      inA((tx) => files.put(tx, owner(), { kind: "document", mediaType: "application/octet-stream" }, content));
    const read = (id: string) => inA((tx) => files.read(tx, { owner: owner(), id }));

    it("a flipped bit, a cut, reordered chunks, or another file's blob", async () => {
      const content = randomBytes(3 * CHUNK_BYTES + 10);
      const stored = await store(content);
      const other = await store(randomBytes(content.length));
      const path = await blobPathOf(stored.id);
      const original = readFileSync(path);
      const chunk = (i: number) =>
        original.subarray(HEADER_BYTES + i * RECORD_BYTES, HEADER_BYTES + (i + 1) * RECORD_BYTES);

      const flipped = Buffer.from(original);
      flipped[HEADER_BYTES + RECORD_BYTES + 100] = (flipped[HEADER_BYTES + RECORD_BYTES + 100] as number) ^ 1;
      const alterations: [string, Buffer, new (...args: never[]) => Error][] = [
        ["flipped", flipped, DecryptionError],
        ["cut at a chunk boundary", original.subarray(0, HEADER_BYTES + 3 * RECORD_BYTES), DecryptionError],
        ["cut mid-chunk", original.subarray(0, original.length - 5), DecryptionError],
        [
          "reordered",
          Buffer.concat([
            original.subarray(0, HEADER_BYTES),
            chunk(1),
            chunk(0),
            original.subarray(HEADER_BYTES + 2 * RECORD_BYTES),
          ]),
          DecryptionError,
        ],
        ["another file's blob", readFileSync(await blobPathOf(other.id)), DecryptionError],
      ];
      for (const [, altered, error] of alterations) {
        writeFileSync(path, altered);
        await expect(read(stored.id)).rejects.toThrow(error);
      }
      writeFileSync(path, original);
      expect((await read(stored.id)).content.equals(content)).toBe(true);
    });

    it("a changed integrity hash or a missing blob", async () => {
      const stored = await store(Buffer.from("checked"));
      await t.superuser(
        `UPDATE tenant_files SET ciphertext_sha256 = decode(repeat('00', 32), 'hex') WHERE id = '${stored.id}'`,
      );
      await expect(read(stored.id)).rejects.toThrow(FileIntegrityError);

      const gone = await store(Buffer.from("gone"));
      rmSync(await blobPathOf(gone.id));
      await expect(read(gone.id)).rejects.toThrow(FileIntegrityError);
    });

    it("a content key moved onto another file's row", async () => {
      const first = await store(Buffer.from("first"));
      const second = await store(Buffer.from("second"));
      await t.superuser(
        `UPDATE tenant_files SET content_key = (SELECT content_key FROM tenant_files WHERE id = '${first.id}') WHERE id = '${second.id}'`,
      );
      await expect(read(second.id)).rejects.toThrow(DecryptionError);
      expect((await read(first.id)).content.toString()).toBe("first");
    });
  });

  it("refuses content over the size limit and bad input, and changes nothing", async () => {
    const owner: FileOwner = { scope: "tenant", tenantId: a.id };
    const rowsBefore = await fileRows();
    const blobsBefore = blobPaths().sort();
    const put = (
      file: Parameters<FileStore["put"]>[2],
      content: Buffer | AsyncIterable<Uint8Array> = Buffer.from("x"),
    ) => inA((tx) => files.put(tx, owner, file, content));

    await expect(put({ kind: "document", mediaType: "text/plain" }, Buffer.alloc(MAX_BYTES + 1))).rejects.toThrow(
      FileTooLargeError,
    );
    const tooLong = (async function* () {
      for (let i = 0; i < 20; i += 1) yield Buffer.alloc(CHUNK_BYTES);
    })();
    await expect(put({ kind: "document", mediaType: "text/plain" }, tooLong)).rejects.toThrow(FileTooLargeError);
    await expect(files.stage(Buffer.alloc(MAX_BYTES + 1))).rejects.toThrow(FileTooLargeError);

    const past = new Date(clock.now().getTime() - 1);
    for (const file of [
      { kind: "spreadsheet", mediaType: "text/plain" },
      { kind: "document", mediaType: "text/plain; charset=utf-8" },
      { kind: "document", mediaType: "not a type" },
      { kind: "document", mediaType: "text/plain", name: "" },
      { kind: "document", mediaType: "text/plain", name: "../../etc/passwd" },
      { kind: "document", mediaType: "text/plain", name: "a\r\nSet-Cookie: x" },
      { kind: "document", mediaType: "text/plain", name: "x".repeat(256) },
      { kind: "document", mediaType: "text/plain", expiresAt: past },
      { kind: "export", mediaType: "application/zip", expiresAt: null },
      { kind: "export", mediaType: "application/zip", expiresAt: new Date(clock.now().getTime() + 31 * DAY) },
    ]) {
      await expect(put(file as Parameters<FileStore["put"]>[2])).rejects.toThrow(TypeError);
    }
    await expect(
      inA((tx) =>
        files.put(
          tx,
          { scope: "subject", tenantId: a.id, subjectId: "nope" },
          { kind: "document", mediaType: "text/plain" },
          Buffer.from("x"),
        ),
      ),
    ).rejects.toThrow(TypeError);

    expect(await fileRows()).toEqual(rowsBefore);
    expect(blobPaths().sort()).toEqual(blobsBefore);
    // The control: at the limit it is accepted.
    expect((await put({ kind: "document", mediaType: "text/plain" }, Buffer.alloc(MAX_BYTES))).size).toBe(MAX_BYTES);
  });

  it("a deleted file can no longer be opened", async () => {
    const owner: FileOwner = { scope: "person", personId: uuidv7() };
    const stored = await inOwner(owner, (tx) =>
      files.put(tx, owner, { kind: "avatar", mediaType: "image/png" }, Buffer.from("png")),
    );
    const ref = { owner, id: stored.id };
    expect(await t.db.withPlatform((tx) => files.delete(tx, ref))).toBe(true);
    expect(await t.db.withPlatform((tx) => files.delete(tx, ref))).toBe(false);
    await expect(t.db.withPlatform((tx) => files.read(tx, ref))).rejects.toThrow(FileNotFoundError);
  });

  it("a subject's files are unreadable once the subject is erased, a tenant's own files are not (P4)", async () => {
    const owner = subjectOfA();
    const stored = await inA((tx) =>
      files.put(tx, owner, { kind: "attachment", mediaType: "text/plain", name: "cv.txt" }, Buffer.from("a CV")),
    );
    const own = await inA((tx) =>
      files.put(
        tx,
        { scope: "tenant", tenantId: a.id },
        { kind: "document", mediaType: "text/plain" },
        Buffer.from("policy"),
      ),
    );
    const ref = { owner, id: stored.id };
    expect((await inA((tx) => files.read(tx, ref))).content.toString()).toBe("a CV");

    await inA((tx) =>
      keyRing.eraseSubject(tx, { tenantId: a.id, subjectId: owner.subjectId, reason: "erasure-request" }),
    );
    await expect(inA((tx) => files.read(tx, ref))).rejects.toThrow(DecryptionError);
    expect(
      (
        await inA((tx) => files.read(tx, { owner: { scope: "tenant", tenantId: a.id }, id: own.id }))
      ).content.toString(),
    ).toBe("policy");
  });

  it("a person's files are unreadable once the person is erased (P4)", async () => {
    const personId = uuidv7();
    const owner: FileOwner = { scope: "person", personId };
    const stored = await t.db.withPlatform((tx) =>
      files.put(tx, owner, { kind: "export", mediaType: "application/zip" }, Buffer.from("my data")),
    );
    await t.db.withPlatform((tx) => keyRing.erasePerson(tx, { personId, reason: "erasure-request" }));
    await expect(t.db.withPlatform((tx) => files.read(tx, { owner, id: stored.id }))).rejects.toThrow(DecryptionError);
  });
});
