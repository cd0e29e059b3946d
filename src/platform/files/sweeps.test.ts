import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { createTestAudit } from "../audit/testing.ts";
import { manualClock } from "../clock.ts";
import { createTestKeyRing, type TestKeyRing } from "../crypto/testing.ts";
import type { Tx } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import { placeHold, releaseHold } from "../inventory/legal-holds.ts";
import { createTenant, type Tenant } from "../tenancy/tenants.ts";
import { type BlobStore, createLocalBlobStore } from "./blob-store.ts";
import { createFileStore, FileNotFoundError, type FileOwner, type FileStore, type NewFile } from "./store.ts";
import { expirePlatformFiles, expireTenantFiles, type SweepDeps, sweepOrphanBlobs } from "./sweeps.ts";

const DAY = 86_400_000;
const slug = () => `t-${uuidv7().slice(-12)}`;
const system = { kind: "system" as const };

describe.each(DATABASE_KINDS)("file expiry and sweeps on %s (P9)", (kind) => {
  let t: TestDatabase;
  let dir: string;
  let keyRing: TestKeyRing;
  let blobs: BlobStore;
  let files: FileStore;
  let deps: SweepDeps;
  // Near the real time: the orphan sweep compares the clock with the blob files' modification times.
  const clock = manualClock(new Date());

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    dir = mkdtempSync(join(tmpdir(), "charter-files-"));
    keyRing = createTestKeyRing(t.db, clock);
    await keyRing.ensurePlatformKey();
    blobs = createLocalBlobStore(dir);
    files = createFileStore({ keyRing, clock, blobs });
    deps = { db: t.db, clock, blobs };
  });
  afterAll(async () => {
    await t?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const newTenant = () =>
    createTenant(t.db, clock, { slug: slug(), name: "T" }, keyRing, createTestAudit(t.db, keyRing));
  const inTenant = <T>(tenant: Tenant, fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId: tenant.id }, fn);
  const EXPORT: NewFile = { kind: "export", mediaType: "application/zip" };

  async function stored(tenant: Tenant, owner: FileOwner, file: NewFile = EXPORT) {
    const info = await inTenant(tenant, (tx) => files.put(tx, owner, file, Buffer.from("content")));
    const [row] = (await t.superuser(`SELECT blob_key FROM tenant_files WHERE id = '${info.id}'`)) as {
      blob_key: string;
    }[];
    const ref = { owner, id: info.id };
    return {
      ref,
      blobKey: row?.blob_key as string,
      /** Whether the row is still there (deleted or not) and its blob too; both or neither, always. */
      kept: async () => {
        const rows = await t.superuser(`SELECT 1 FROM tenant_files WHERE id = '${info.id}'`);
        const blob = await blobs.exists(row?.blob_key as string);
        expect(rows.length === 1).toBe(blob);
        return blob;
      },
      read: () => inTenant(tenant, (tx) => files.read(tx, ref)),
    };
  }

  it("a held file is not expired; once the hold is released it is", async () => {
    const tenant = await newTenant();
    const subjectId = uuidv7();
    const heldFile = await stored(tenant, { scope: "subject", tenantId: tenant.id, subjectId });
    const otherSubject = await stored(tenant, { scope: "subject", tenantId: tenant.id, subjectId: uuidv7() });
    const tenantOwn = await stored(tenant, { scope: "tenant", tenantId: tenant.id });
    const hold = await inTenant(tenant, (tx) =>
      placeHold(tx, clock, {
        tenantId: tenant.id,
        scope: "subject",
        subjectId,
        reason: "litigation",
        placedBy: system,
      }),
    );
    clock.advance(6 * DAY);
    const notYet = await stored(tenant, { scope: "subject", tenantId: tenant.id, subjectId: uuidv7() });

    // Nothing is due yet.
    expect(await expireTenantFiles(deps, { tenantId: tenant.id })).toEqual({ removed: 0, held: 0, blobsMissing: 0 });

    clock.advance(DAY + 1);
    expect(await expireTenantFiles(deps, { tenantId: tenant.id })).toEqual({ removed: 2, held: 1, blobsMissing: 0 });
    expect(await heldFile.kept()).toBe(true);
    expect((await heldFile.read()).content.toString()).toBe("content");
    expect(await otherSubject.kept()).toBe(false);
    expect(await tenantOwn.kept()).toBe(false);
    expect(await notYet.kept()).toBe(true);

    // Held files are reported on every run, and stay.
    expect(await expireTenantFiles(deps, { tenantId: tenant.id })).toEqual({ removed: 0, held: 1, blobsMissing: 0 });
    expect(await heldFile.kept()).toBe(true);

    await inTenant(tenant, (tx) => releaseHold(tx, clock, { tenantId: tenant.id, id: hold.id }));
    expect(await expireTenantFiles(deps, { tenantId: tenant.id })).toEqual({ removed: 1, held: 0, blobsMissing: 0 });
    expect(await heldFile.kept()).toBe(false);
    expect(await notYet.kept()).toBe(true);

    clock.advance(6 * DAY);
    expect(await expireTenantFiles(deps, { tenantId: tenant.id })).toEqual({ removed: 1, held: 0, blobsMissing: 0 });
    expect(await notYet.kept()).toBe(false);
  });

  it("a hold on the tenant or on the record type keeps every due file of the tenant, and only that tenant's", async () => {
    for (const scope of [{ scope: "tenant" as const }, { scope: "record-type" as const, recordType: "tenant_files" }]) {
      const tenant = await newTenant();
      const other = await newTenant();
      const own = await stored(tenant, { scope: "tenant", tenantId: tenant.id });
      const subjects = await stored(tenant, { scope: "subject", tenantId: tenant.id, subjectId: uuidv7() });
      const others = await stored(other, { scope: "tenant", tenantId: other.id });
      await inTenant(tenant, (tx) =>
        placeHold(tx, clock, { tenantId: tenant.id, ...scope, reason: "audit", placedBy: system }),
      );
      clock.advance(8 * DAY);

      expect(await expireTenantFiles(deps, { tenantId: tenant.id })).toEqual({ removed: 0, held: 2, blobsMissing: 0 });
      expect(await own.kept()).toBe(true);
      expect(await subjects.kept()).toBe(true);
      expect(await expireTenantFiles(deps, { tenantId: other.id })).toEqual({ removed: 1, held: 0, blobsMissing: 0 });
      expect(await others.kept()).toBe(false);
    }
  });

  it("a hold on another record type does not keep files", async () => {
    const tenant = await newTenant();
    const file = await stored(tenant, { scope: "tenant", tenantId: tenant.id });
    await inTenant(tenant, (tx) =>
      placeHold(tx, clock, {
        tenantId: tenant.id,
        scope: "record-type",
        recordType: "legal_holds",
        reason: "x",
        placedBy: system,
      }),
    );
    clock.advance(8 * DAY);
    expect(await expireTenantFiles(deps, { tenantId: tenant.id })).toEqual({ removed: 1, held: 0, blobsMissing: 0 });
    expect(await file.kept()).toBe(false);
  });

  it("deleted files are removed by the sweep unless held; files that never expire stay", async () => {
    const tenant = await newTenant();
    const subjectId = uuidv7();
    const avatar = await stored(
      tenant,
      { scope: "tenant", tenantId: tenant.id },
      { kind: "avatar", mediaType: "image/png" },
    );
    const deleted = await stored(
      tenant,
      { scope: "tenant", tenantId: tenant.id },
      { kind: "avatar", mediaType: "image/png" },
    );
    const heldDeleted = await stored(
      tenant,
      { scope: "subject", tenantId: tenant.id, subjectId },
      { kind: "document", mediaType: "application/pdf" },
    );
    await inTenant(tenant, async (tx) => {
      expect(await files.delete(tx, deleted.ref)).toBe(true);
      expect(await files.delete(tx, heldDeleted.ref)).toBe(true);
      await placeHold(tx, clock, { tenantId: tenant.id, scope: "subject", subjectId, reason: "x", placedBy: system });
    });
    // Deleted, so not readable, but held: the row and blob stay for the hold.
    await expect(heldDeleted.read()).rejects.toThrow(FileNotFoundError);

    clock.advance(365 * DAY);
    expect(await expireTenantFiles(deps, { tenantId: tenant.id })).toEqual({ removed: 1, held: 1, blobsMissing: 0 });
    expect(await deleted.kept()).toBe(false);
    expect(await heldDeleted.kept()).toBe(true);
    expect(await avatar.kept()).toBe(true);
  });

  it("removes at most `limit` files a run, continuing past held ones", async () => {
    const tenant = await newTenant();
    const heldSubject = uuidv7();
    // Held files first in id order, so a run that stopped at them would never reach the others.
    const held = [
      await stored(tenant, { scope: "subject", tenantId: tenant.id, subjectId: heldSubject }),
      await stored(tenant, { scope: "subject", tenantId: tenant.id, subjectId: heldSubject }),
    ];
    const free = [];
    for (let i = 0; i < 5; i += 1) free.push(await stored(tenant, { scope: "tenant", tenantId: tenant.id }));
    await inTenant(tenant, (tx) =>
      placeHold(tx, clock, {
        tenantId: tenant.id,
        scope: "subject",
        subjectId: heldSubject,
        reason: "x",
        placedBy: system,
      }),
    );
    clock.advance(8 * DAY);

    expect(await expireTenantFiles(deps, { tenantId: tenant.id, limit: 2 })).toEqual({
      removed: 2,
      held: 2,
      blobsMissing: 0,
    });
    expect((await expireTenantFiles(deps, { tenantId: tenant.id, limit: 2 })).removed).toBe(2);
    expect((await expireTenantFiles(deps, { tenantId: tenant.id, limit: 2 })).removed).toBe(1);
    for (const file of free) expect(await file.kept()).toBe(false);
    for (const file of held) expect(await file.kept()).toBe(true);
  });

  it("counts a removed file whose blob was already gone", async () => {
    const tenant = await newTenant();
    const file = await stored(tenant, { scope: "tenant", tenantId: tenant.id });
    await blobs.delete(file.blobKey);
    clock.advance(8 * DAY);
    expect(await expireTenantFiles(deps, { tenantId: tenant.id })).toEqual({ removed: 1, held: 0, blobsMissing: 1 });
    expect((await t.superuser(`SELECT 1 FROM tenant_files WHERE id = '${file.ref.id}'`)).length).toBe(0);
  });

  it("expires platform and person files", async () => {
    const person: FileOwner = { scope: "person", personId: uuidv7() };
    const put = (owner: FileOwner, file: NewFile) =>
      t.db.withPlatform((tx) => files.put(tx, owner, file, Buffer.from("platform content")));
    const exported = await put(person, EXPORT);
    const avatar = await put(person, { kind: "avatar", mediaType: "image/png" });
    const published = await put({ scope: "platform" }, { kind: "document", mediaType: "application/pdf" });
    const deleted = await put({ scope: "platform" }, { kind: "document", mediaType: "application/pdf" });
    await t.db.withPlatform((tx) => files.delete(tx, { owner: { scope: "platform" }, id: deleted.id }));
    clock.advance(8 * DAY);

    expect(await expirePlatformFiles(deps)).toEqual({ removed: 2, held: 0, blobsMissing: 0 });
    const left = (await t.superuser(
      `SELECT id FROM platform_files WHERE id IN ('${exported.id}', '${avatar.id}', '${published.id}', '${deleted.id}') ORDER BY id`,
    )) as { id: string }[];
    expect(left.map((row) => row.id)).toEqual([avatar.id, published.id].sort());
    expect(await expirePlatformFiles(deps)).toEqual({ removed: 0, held: 0, blobsMissing: 0 });
  });

  it("removes orphan blobs once old enough, and never a blob a row names", async () => {
    // Back to the file system's time, which the blob store's write times come from.
    clock.set(new Date());
    const tenant = await newTenant();
    const kept = await stored(
      tenant,
      { scope: "tenant", tenantId: tenant.id },
      { kind: "avatar", mediaType: "image/png" },
    );
    const platformFile = await t.db.withPlatform((tx) =>
      files.put(tx, { scope: "platform" }, { kind: "document", mediaType: "text/plain" }, Buffer.from("terms")),
    );
    // A put whose transaction rolled back: its blob was written, its row never committed.
    const before = new Set<string>();
    for await (const { key } of blobs.list()) before.add(key);
    await expect(
      inTenant(tenant, async (tx) => {
        await files.put(tx, { scope: "tenant", tenantId: tenant.id }, EXPORT, Buffer.from("rolled back"));
        throw new Error("the request failed");
      }),
    ).rejects.toThrow("the request failed");
    const orphans: string[] = [];
    for await (const { key } of blobs.list()) if (!before.has(key)) orphans.push(key);
    expect(orphans).toHaveLength(1);
    const orphan = orphans[0] as string;

    // Too young: a transaction might still be about to commit its row.
    expect(await sweepOrphanBlobs(deps)).toEqual({ removed: 0, incomplete: 0 });
    expect(await blobs.exists(orphan)).toBe(true);

    clock.advance(DAY + 60_000);
    const report = await sweepOrphanBlobs(deps);
    expect(report.removed).toBeGreaterThanOrEqual(1);
    expect(await blobs.exists(orphan)).toBe(false);
    expect(await kept.kept()).toBe(true);
    expect((await kept.read()).content.toString()).toBe("content");
    expect(
      (
        await t.db.withPlatform((tx) => files.read(tx, { owner: { scope: "platform" }, id: platformFile.id }))
      ).content.toString(),
    ).toBe("terms");
    // Every blob left is named by a row.
    const named = new Set(
      (
        (await t.superuser("SELECT blob_key FROM tenant_files UNION ALL SELECT blob_key FROM platform_files")) as {
          blob_key: string;
        }[]
      ).map((row) => row.blob_key),
    );
    for await (const { key } of blobs.list()) expect(named.has(key)).toBe(true);
  });
});
