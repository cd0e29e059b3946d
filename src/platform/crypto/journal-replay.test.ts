import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { loadConfig } from "../../config.ts";
import { startServer } from "../../server.ts";
import { createTestAudit } from "../audit/testing.ts";
import { manualClock } from "../clock.ts";
import type { Tx } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import { createTenant, type Tenant } from "../tenancy/tenants.ts";
import type { Binding } from "./envelope.ts";
import { envelopeKey } from "./envelope.ts";
import { JournalError } from "./journal.ts";
import { replayHandlers, replayJournal } from "./journal-replay.ts";
import { type KeyRing, SubjectErasedError } from "./key-ring.ts";
import { createTestKeyRing, type TestKeyRing } from "./testing.ts";

class CommitFailed extends Error {}

/** An erasure whose journal entry is written but whose transaction then fails, as a crash before commit. */
async function eraseThenFail(db: TestDatabase["db"], ring: KeyRing, tenantId: string, subjectId: string) {
  await expect(
    db.withTenant({ tenantId }, async (tx) => {
      await ring.eraseSubject(tx, { tenantId, subjectId, reason: "erasure-request" });
      throw new CommitFailed("the commit failed");
    }),
  ).rejects.toThrow(CommitFailed);
}

describe.each(DATABASE_KINDS)("destruction journal replay on %s", (kind) => {
  let t: TestDatabase;
  let ring: TestKeyRing;
  let a: Tenant;
  const clock = manualClock("2026-04-01T08:00:00Z");
  const bind = (): Binding => ({ tenantId: a.id, table: "contacts", column: "email", rowId: uuidv7() });
  const inA = <T>(fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId: a.id }, fn);
  const liveKeys = (subjectId: string) =>
    inA((tx) =>
      tx
        .selectFrom("subject_keys")
        .select(["id", "wrapped_key"])
        .where("tenant_id", "=", a.id)
        .where("subject_id", "=", subjectId)
        .where("destroyed_at", "is", null)
        .execute(),
    );
  const replay = async (handlers = replayHandlers()) =>
    replayJournal({ db: t.db, entries: ring.journal.read(), clock, handlers });

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    ring = createTestKeyRing(t.db, clock);
    a = await createTenant(
      t.db,
      clock,
      { slug: `t-${uuidv7().slice(-12)}`, name: "A" },
      ring,
      createTestAudit(t.db, ring),
    );
  });
  afterAll(() => t?.close());

  it("a commit that fails after its journal entry was written is completed at the next start-up", async () => {
    const subjectId = uuidv7();
    const owner = { scope: "subject", tenantId: a.id, subjectId } as const;
    const binding = bind();
    const envelope = await inA((tx) => ring.encrypt(tx, owner, "jane@example.com", binding));
    const entriesBefore = ring.journal.read().length;

    clock.advance(60_000);
    await eraseThenFail(t.db, ring, a.id, subjectId);
    const entries = ring.journal.read();
    expect(entries).toHaveLength(entriesBefore + 1);
    expect(entries.at(-1)?.record).toEqual({
      type: "subject-erased",
      tenantId: a.id,
      subjectId,
      reason: "erasure-request",
    });
    // The transaction rolled back: the key is live and the subject not recorded as erased.
    expect(await liveKeys(subjectId)).toHaveLength(1);
    expect(await inA((tx) => ring.decrypt(tx, envelope, binding))).toBe("jane@example.com");
    expect(await inA((tx) => ring.isErased(tx, owner))).toBe(false);

    clock.advance(60_000);
    const report = await replay();
    expect(report).toMatchObject({ entries: entries.length, destroyedKeys: 1 });

    expect(await liveKeys(subjectId)).toEqual([]);
    await expect(inA((tx) => ring.decrypt(tx, envelope, binding))).rejects.toMatchObject({ reason: "unknown-key" });
    expect(await inA((tx) => ring.isErased(tx, owner))).toBe(true);
    // Destroyed at the journalled time, not the replay's.
    const tombstone = await inA((tx) =>
      tx
        .selectFrom("subject_keys")
        .select("destroyed_at")
        .where("id", "=", envelopeKey(envelope).keyId)
        .executeTakeFirst(),
    );
    expect(tombstone?.destroyed_at).toEqual(entries.at(-1)?.at);

    // And the subject cannot get a new key.
    await expect(inA((tx) => ring.encrypt(tx, owner, "again", bind()))).rejects.toThrow(SubjectErasedError);
    expect(await liveKeys(subjectId)).toEqual([]);

    // The next start-up has nothing left to do.
    expect(await replay()).toMatchObject({ replayed: 0, destroyedKeys: 0 });
  });

  it("re-applies the journal to a restored older backup, running what modules registered", async () => {
    const subjectId = uuidv7();
    const owner = { scope: "subject", tenantId: a.id, subjectId } as const;
    const binding = bind();
    const envelope = await inA((tx) => ring.encrypt(tx, owner, "sam@example.com", binding));
    const [key] = await liveKeys(subjectId);
    await inA((tx) => ring.eraseSubject(tx, { tenantId: a.id, subjectId, reason: "erasure-request" }));
    const ran: string[] = [];
    const handlers = replayHandlers().on("subject-erased", async (tx, entry) => {
      // Runs in the entry's tenant transaction.
      const row = await tx.selectFrom("tenant_keys").select("tenant_id").where("tenant_id", "=", entry.record.tenantId);
      expect((await row.execute()).length).toBeGreaterThan(0);
      ran.push(entry.record.subjectId);
    });
    await replay(handlers);
    expect(ran).toContain(subjectId);

    // The backup was taken before the erasure: the key is live again, the erasure forgotten, and the
    // database remembers having applied less of the journal.
    await t.superuser(`
      UPDATE subject_keys SET wrapped_key = '${key?.wrapped_key}', destroyed_at = NULL, subject_id = '${subjectId}'
       WHERE id = '${key?.id}';
      DELETE FROM erased_subjects WHERE subject_id = '${subjectId}';
      DELETE FROM journal_replays`);
    expect(await inA((tx) => ring.decrypt(tx, envelope, binding))).toBe("sam@example.com");

    ran.length = 0;
    const report = await replay(handlers);
    expect(report.replayed).toBe(report.entries);
    expect(report.destroyedKeys).toBe(1);
    expect(ran).toContain(subjectId);
    await expect(inA((tx) => ring.decrypt(tx, envelope, binding))).rejects.toMatchObject({ reason: "unknown-key" });
    await expect(inA((tx) => ring.encrypt(tx, owner, "x", bind()))).rejects.toThrow(SubjectErasedError);
  });

  it("replays person erasures, single key destructions and tenant deletions; skips tenants this database lacks", async () => {
    const personId = uuidv7();
    const person = { scope: "person", personId } as const;
    const platformBinding: Binding = { tenantId: null, table: "users", column: "email", rowId: personId };
    const personEnvelope = await t.db.withPlatform((tx) => ring.encrypt(tx, person, "p", platformBinding));
    const subjectId = uuidv7();
    const subject = { scope: "subject", tenantId: a.id, subjectId } as const;
    const binding = bind();
    const old = await inA((tx) => ring.encrypt(tx, subject, "old", binding));
    await inA((tx) => ring.rotateKey(tx, subject));
    const c = await createTenant(
      t.db,
      clock,
      { slug: `t-${uuidv7().slice(-12)}`, name: "C" },
      ring,
      createTestAudit(t.db, ring),
    );
    const tenantBinding: Binding = { ...binding, tenantId: c.id };
    const tenantEnvelope = await t.db.withTenant({ tenantId: c.id }, (tx) =>
      ring.encrypt(tx, { scope: "tenant", tenantId: c.id }, "t", tenantBinding),
    );

    await expect(
      t.db.withPlatform(async (tx) => {
        await ring.erasePerson(tx, { personId, reason: "erasure-request" });
        throw new CommitFailed();
      }),
    ).rejects.toThrow(CommitFailed);
    await expect(
      inA(async (tx) => {
        await ring.destroyKey(
          tx,
          { scope: "subject", tenantId: a.id, subjectId, keyId: envelopeKey(old).keyId },
          "rotation",
        );
        throw new CommitFailed();
      }),
    ).rejects.toThrow(CommitFailed);
    await expect(
      t.db.withTenant({ tenantId: c.id }, async (tx) => {
        await ring.deleteTenantKey(tx, { tenantId: c.id, reason: "offboarding" });
        throw new CommitFailed();
      }),
    ).rejects.toThrow(CommitFailed);
    // A journal entry about a tenant this database never had (a backup older than the tenant).
    await ring.journal.append({ type: "tenant-deleted", tenantId: uuidv7(), reason: "offboarding" });
    expect(await t.db.withPlatform((tx) => ring.decrypt(tx, personEnvelope, platformBinding))).toBe("p");

    const report = await replay();
    expect(report.destroyedKeys).toBe(3);
    await expect(t.db.withPlatform((tx) => ring.decrypt(tx, personEnvelope, platformBinding))).rejects.toMatchObject({
      reason: "unknown-key",
    });
    await expect(t.db.withPlatform((tx) => ring.encrypt(tx, person, "p", platformBinding))).rejects.toThrow(
      SubjectErasedError,
    );
    await expect(inA((tx) => ring.decrypt(tx, old, binding))).rejects.toMatchObject({ reason: "unknown-key" });
    expect(await liveKeys(subjectId)).toHaveLength(1);
    await expect(
      t.db.withTenant({ tenantId: c.id }, (tx) => ring.decrypt(tx, tenantEnvelope, tenantBinding)),
    ).rejects.toMatchObject({ reason: "unknown-key" });
  });

  it("refuses a journal cut short or tampered with, before changing anything", async () => {
    await replay();
    const path = ring.journal.path;
    const original = readFileSync(path, "utf8");
    const lines = original.trimEnd().split("\n");
    try {
      writeFileSync(path, `${lines.slice(0, -1).join("\n")}\n`);
      await expect(replay()).rejects.toThrow(/entries were removed from its end/);
      writeFileSync(path, `${[lines[0], lines[2], lines[1], ...lines.slice(3)].join("\n")}\n`);
      await expect(replay()).rejects.toThrow(JournalError);
    } finally {
      writeFileSync(path, original);
    }
    expect(await replay()).toMatchObject({ replayed: 0 });
  });
});

/**
 * Start-up itself: the server's key ring, journal and replay on a data directory. On PGlite the database
 * lives in the data directory; on PostgreSQL the server gets a test database of its own.
 */
describe.each(DATABASE_KINDS)("start-up completes journalled destructions on %s", (kind) => {
  let root: string;
  let t: TestDatabase | undefined;
  let env: Record<string, string>;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "charter-replay-"));
    env = { CHARTER_DATA_DIR: join(root, "data"), PORT: "0", LOG_LEVEL: "silent" };
    if (kind === "postgres") {
      t = await openTestDatabase(kind);
      env.DATABASE_URL = t.url as string;
    }
  });
  afterAll(async () => {
    await t?.close();
    rmSync(root, { recursive: true, force: true });
  });

  const start = () => startServer(loadConfig(env), { log: false, warn: () => {}, clock: manualClock() });

  it("an erasure journalled before a failed commit is done before the restarted server serves", {
    timeout: 120_000,
  }, async () => {
    const subjectId = uuidv7();
    const first = await start();
    let tenant: Tenant;
    let envelope: string;
    const binding = (tenantId: string): Binding => ({ tenantId, table: "contacts", column: "email", rowId: subjectId });
    try {
      tenant = await createTenant(
        first.db,
        manualClock(),
        { slug: `t-${uuidv7().slice(-12)}`, name: "S" },
        first.services.keyRing,
        first.services.audit,
      );
      const owner = { scope: "subject", tenantId: tenant.id, subjectId } as const;
      envelope = await first.db.withTenant({ tenantId: tenant.id }, (tx) =>
        first.services.keyRing.encrypt(tx, owner, "jane@example.com", binding(tenant.id)),
      );
      await eraseThenFail(first.db, first.services.keyRing, tenant.id, subjectId);
      expect(
        await first.db.withTenant({ tenantId: tenant.id }, (tx) =>
          first.services.keyRing.decrypt(tx, envelope, binding(tenant.id)),
        ),
      ).toBe("jane@example.com");
    } finally {
      await first.shutdown();
    }

    const second = await start();
    try {
      const inTenant = <T>(fn: (tx: Tx) => Promise<T>) => second.db.withTenant({ tenantId: tenant.id }, fn);
      await expect(
        inTenant((tx) => second.services.keyRing.decrypt(tx, envelope, binding(tenant.id))),
      ).rejects.toMatchObject({
        reason: "unknown-key",
      });
      await expect(
        inTenant((tx) =>
          second.services.keyRing.encrypt(
            tx,
            { scope: "subject", tenantId: tenant.id, subjectId },
            "x",
            binding(tenant.id),
          ),
        ),
      ).rejects.toThrow(SubjectErasedError);
    } finally {
      await second.shutdown();
    }
  });
});
