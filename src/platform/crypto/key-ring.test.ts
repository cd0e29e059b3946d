import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { createTestAudit } from "../audit/testing.ts";
import { manualClock } from "../clock.ts";
import type { Tx } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import { placeHold, releaseHold } from "../inventory/legal-holds.ts";
import { createTenant, type Tenant } from "../tenancy/tenants.ts";
import { blindIndex, blindIndexKey } from "./blind-index.ts";
import { type Binding, DecryptionError, envelopeKey, open } from "./envelope.ts";
import {
  createKeyRing,
  LegalHoldError,
  MasterKeyMismatchError,
  SubjectErasedError,
  TenantDeletedError,
} from "./key-ring.ts";
import { createTestKeyRing, type TestKeyRing } from "./testing.ts";

describe.each(DATABASE_KINDS)("key ring on %s", (kind) => {
  let t: TestDatabase;
  let ring: TestKeyRing;
  let a: Tenant;
  let b: Tenant;
  const clock = manualClock("2026-02-01T09:00:00Z");
  const slug = () => `t-${uuidv7().slice(-12)}`;

  const bind = (tenantId: string | null, rowId = uuidv7(), column = "email"): Binding => ({
    tenantId,
    table: "contacts",
    column,
    rowId,
  });
  const inA = <T>(fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId: a.id }, fn);
  const inB = <T>(fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId: b.id }, fn);
  const subjectKeys = (tenantId: string, subjectId: string) =>
    t.db.withTenant({ tenantId }, (tx) =>
      tx
        .selectFrom("subject_keys")
        .selectAll()
        .where("tenant_id", "=", tenantId)
        .where("subject_id", "=", subjectId)
        .orderBy("version")
        .execute(),
    );
  const journalLength = () => ring.journal.read().length;

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    ring = createTestKeyRing(t.db, clock);
    a = await createTenant(t.db, clock, { slug: slug(), name: "A" }, ring, createTestAudit(t.db, ring));
    b = await createTenant(t.db, clock, { slug: slug(), name: "B" }, ring, createTestAudit(t.db, ring));
  });
  afterAll(() => t?.close());

  it("creates the tenant's key with the tenant, wrapped by the master key it names", async () => {
    const keys = await inA((tx) => tx.selectFrom("tenant_keys").selectAll().where("tenant_id", "=", a.id).execute());
    expect(keys).toHaveLength(1);
    expect(keys[0]).toMatchObject({
      version: 1,
      master_key_fingerprint: ring.masterKey.fingerprint,
      destroyed_at: null,
    });
    expect(keys[0]?.wrapped_key).toMatch(/^w1\./);
  });

  it("round-trips a value in every scope, and only at the place it was sealed for", async () => {
    const personId = uuidv7();
    const subjectId = uuidv7();
    await inA(async (tx) => {
      const cases = [
        { owner: { scope: "platform" } as const, binding: bind(null) },
        { owner: { scope: "person", personId } as const, binding: bind(null) },
        { owner: { scope: "tenant", tenantId: a.id } as const, binding: bind(a.id) },
        { owner: { scope: "subject", tenantId: a.id, subjectId } as const, binding: bind(a.id) },
      ];
      for (const { owner, binding } of cases) {
        const envelope = await ring.encrypt(tx, owner, "jane@example.com", binding);
        expect(envelope).not.toContain("jane");
        expect(await ring.decrypt(tx, envelope, binding), owner.scope).toBe("jane@example.com");
        const bytes = await ring.encrypt(tx, owner, Buffer.from([0, 1, 255]), binding);
        expect(await ring.decryptBytes(tx, bytes, binding)).toEqual(Buffer.from([0, 1, 255]));

        for (const moved of [
          { ...binding, rowId: uuidv7() },
          { ...binding, column: "phone" },
          { ...binding, table: "notes" },
        ]) {
          await expect(ring.decrypt(tx, envelope, moved)).rejects.toMatchObject({ reason: "authentication" });
        }
      }
    });
  });

  it("refuses a ciphertext moved to another tenant, and tenant A's transaction cannot use tenant B's keys", async () => {
    const subjectId = uuidv7();
    const binding = bind(a.id);
    const envelope = await inA((tx) => ring.encrypt(tx, { scope: "subject", tenantId: a.id, subjectId }, "x", binding));
    const tenantEnvelope = await inA((tx) => ring.encrypt(tx, { scope: "tenant", tenantId: a.id }, "y", binding));
    // In B's transaction A's keys are invisible (row-level security), under either tenant's binding.
    for (const env of [envelope, tenantEnvelope]) {
      await expect(inB((tx) => ring.decrypt(tx, env, binding))).rejects.toMatchObject({ reason: "unknown-key" });
      await expect(inB((tx) => ring.decrypt(tx, env, { ...binding, tenantId: b.id }))).rejects.toMatchObject({
        reason: "unknown-key",
      });
    }
    // Nor can B's transaction make or use keys for A's subjects or A itself.
    await expect(
      inB((tx) => ring.encrypt(tx, { scope: "subject", tenantId: a.id, subjectId: uuidv7() }, "x", binding)),
    ).rejects.toThrow(/transaction of their tenant/);
    await expect(inB((tx) => ring.encrypt(tx, { scope: "tenant", tenantId: a.id }, "x", binding))).rejects.toThrow(
      /transaction of their tenant/,
    );
    // And a platform transaction cannot either.
    await expect(
      t.db.withPlatform((tx) => ring.encrypt(tx, { scope: "subject", tenantId: a.id, subjectId }, "x", binding)),
    ).rejects.toThrow(/transaction of their tenant/);
    // A value under a tenant's key must be bound to that tenant.
    await expect(
      inA((tx) => ring.encrypt(tx, { scope: "subject", tenantId: a.id, subjectId }, "x", bind(b.id))),
    ).rejects.toThrow(TypeError);
  });

  it("gives a subject exactly one key on first use and reuses it", async () => {
    const subjectId = uuidv7();
    const owner = { scope: "subject", tenantId: a.id, subjectId } as const;
    const envelopes = await inA(async (tx) => [
      await ring.encrypt(tx, owner, "one", bind(a.id)),
      await ring.encrypt(tx, owner, "two", bind(a.id)),
    ]);
    await inA((tx) => ring.encrypt(tx, owner, "three", bind(a.id)));
    const keys = await subjectKeys(a.id, subjectId);
    expect(keys).toHaveLength(1);
    expect(keys[0]).toMatchObject({ version: 1, destroyed_at: null });
    expect(envelopes.map((e) => envelopeKey(e))).toEqual([
      { keyId: keys[0]?.id, version: 1 },
      { keyId: keys[0]?.id, version: 1 },
    ]);
  });

  it("rotates: the new version encrypts, the old one still decrypts, and destroying it shreds only its values", async () => {
    const subjectId = uuidv7();
    const owner = { scope: "subject", tenantId: a.id, subjectId } as const;
    const binding = bind(a.id);
    const old = await inA((tx) => ring.encrypt(tx, owner, "old", binding));
    const rotated = await inA((tx) => ring.rotateKey(tx, owner));
    expect(rotated.version).toBe(2);
    const fresh = await inA((tx) => ring.encrypt(tx, owner, "new", binding));
    expect(envelopeKey(fresh)).toEqual({ keyId: rotated.id, version: 2 });
    expect(await inA((tx) => ring.decrypt(tx, old, binding))).toBe("old");

    const oldKeyId = envelopeKey(old).keyId;
    const entry = await inA((tx) =>
      ring.destroyKey(tx, { scope: "subject", tenantId: a.id, subjectId, keyId: oldKeyId }, "rotation"),
    );
    expect(entry.record).toMatchObject({ type: "key-destroyed", keyId: oldKeyId });
    await expect(inA((tx) => ring.decrypt(tx, old, binding))).rejects.toMatchObject({ reason: "unknown-key" });
    expect(await inA((tx) => ring.decrypt(tx, fresh, binding))).toBe("new");
    const keys = await subjectKeys(a.id, subjectId);
    expect(keys.map((k) => [k.version, k.wrapped_key === null, k.destroyed_at !== null])).toEqual([
      [1, true, true],
      [2, false, false],
    ]);
    // A key that is not live is bad input: refused, nothing journalled.
    const length = journalLength();
    await expect(
      inA((tx) => ring.destroyKey(tx, { scope: "subject", tenantId: a.id, subjectId, keyId: oldKeyId }, "rotation")),
    ).rejects.toThrow(TypeError);
    expect(journalLength()).toBe(length);
  });

  it("rotates tenant, person and platform keys too, old versions still decrypting", async () => {
    const personId = uuidv7();
    const owners = [
      { owner: { scope: "tenant", tenantId: a.id } as const, binding: bind(a.id) },
      { owner: { scope: "person", personId } as const, binding: bind(null) },
      { owner: { scope: "platform" } as const, binding: bind(null) },
    ];
    await inA(async (tx) => {
      for (const { owner, binding } of owners) {
        const old = await ring.encrypt(tx, owner, "old", binding);
        const rotated = await ring.rotateKey(tx, owner);
        expect(rotated.version, owner.scope).toBe(envelopeKey(old).version + 1);
        const fresh = await ring.encrypt(tx, owner, "new", binding);
        expect(envelopeKey(fresh).keyId).toBe(rotated.id);
        expect(await ring.decrypt(tx, old, binding)).toBe("old");
      }
    });
  });

  it("erases a subject: its keys are destroyed, its values unreadable, and it can get no new key", async () => {
    const subjectId = uuidv7();
    const owner = { scope: "subject", tenantId: a.id, subjectId } as const;
    const binding = bind(a.id);
    const envelope = await inA((tx) => ring.encrypt(tx, owner, "jane@example.com", binding));
    await inA((tx) => ring.rotateKey(tx, owner));
    const keyIds = (await subjectKeys(a.id, subjectId)).map((k) => k.id);
    expect(keyIds).toHaveLength(2);

    const entry = await inA((tx) => ring.eraseSubject(tx, { tenantId: a.id, subjectId, reason: "erasure-request" }));
    expect(entry.record).toEqual({ type: "subject-erased", tenantId: a.id, subjectId, reason: "erasure-request" });
    await expect(inA((tx) => ring.decrypt(tx, envelope, binding))).rejects.toMatchObject({ reason: "unknown-key" });
    expect(await inA((tx) => ring.isErased(tx, owner))).toBe(true);

    // The tombstones stay, without key material and without naming the subject.
    const tombstones = await inA((tx) =>
      tx.selectFrom("subject_keys").selectAll().where("tenant_id", "=", a.id).where("id", "in", keyIds).execute(),
    );
    expect(tombstones.map((k) => [k.subject_id, k.wrapped_key, k.destroyed_at])).toEqual([
      [null, null, clock.now()],
      [null, null, clock.now()],
    ]);

    await expect(inA((tx) => ring.encrypt(tx, owner, "again", binding))).rejects.toThrow(SubjectErasedError);
    await expect(inA((tx) => ring.rotateKey(tx, owner))).rejects.toThrow(SubjectErasedError);
    expect(await subjectKeys(a.id, subjectId)).toEqual([]);
    // The same subject id in another tenant is another subject.
    await expect(inB((tx) => ring.encrypt(tx, { ...owner, tenantId: b.id }, "x", bind(b.id)))).resolves.toBeTypeOf(
      "string",
    );
  });

  it("a key ring opened without a journal decrypts but refuses to destroy, leaving the key live", async () => {
    const reader = createKeyRing({ db: t.db, masterKey: ring.masterKey, clock });
    const subjectId = uuidv7();
    const binding = bind(a.id);
    const envelope = await inA((tx) =>
      ring.encrypt(tx, { scope: "subject", tenantId: a.id, subjectId }, "kept", binding),
    );
    expect(await inA((tx) => reader.decrypt(tx, envelope, binding))).toBe("kept");
    const before = journalLength();
    await expect(
      inA((tx) => reader.eraseSubject(tx, { tenantId: a.id, subjectId, reason: "erasure-request" })),
    ).rejects.toThrow(/no destruction journal/);
    expect(journalLength()).toBe(before);
    expect(await inA((tx) => ring.decrypt(tx, envelope, binding))).toBe("kept");
  });

  it("an erased subject that never had a key cannot get one either, and no key row is created", async () => {
    const subjectId = uuidv7();
    await inA((tx) => ring.eraseSubject(tx, { tenantId: a.id, subjectId, reason: "retention" }));
    await expect(
      inA((tx) => ring.encrypt(tx, { scope: "subject", tenantId: a.id, subjectId }, "x", bind(a.id))),
    ).rejects.toThrow(SubjectErasedError);
    expect(await subjectKeys(a.id, subjectId)).toEqual([]);
  });

  it("erases a person: their keys are destroyed and they get no new key", async () => {
    const personId = uuidv7();
    const owner = { scope: "person", personId } as const;
    const binding = bind(null);
    const envelope = await t.db.withPlatform((tx) => ring.encrypt(tx, owner, "sam@example.com", binding));
    // A person key is platform data: reachable from a tenant transaction too.
    expect(await inA((tx) => ring.decrypt(tx, envelope, binding))).toBe("sam@example.com");
    await t.db.withPlatform((tx) => ring.erasePerson(tx, { personId, reason: "erasure-request" }));
    await expect(t.db.withPlatform((tx) => ring.decrypt(tx, envelope, binding))).rejects.toMatchObject({
      reason: "unknown-key",
    });
    await expect(t.db.withPlatform((tx) => ring.encrypt(tx, owner, "x", binding))).rejects.toThrow(SubjectErasedError);
    const rows = await t.db.withPlatform((tx) =>
      tx.selectFrom("person_keys").selectAll().where("person_id", "=", personId).execute(),
    );
    expect(rows).toEqual([]);
  });

  it("refuses erasure under a legal hold on the subject or the tenant, and writes nothing", async () => {
    const subjectId = uuidv7();
    const owner = { scope: "subject", tenantId: a.id, subjectId } as const;
    const binding = bind(a.id);
    const envelope = await inA((tx) => ring.encrypt(tx, owner, "kept", binding));
    const keyId = envelopeKey(envelope).keyId;
    const placedBy = { kind: "system" } as const;
    const length = journalLength();

    const subjectHold = await inA((tx) =>
      placeHold(tx, clock, { tenantId: a.id, scope: "subject", subjectId, reason: "litigation", placedBy }),
    );
    await expect(
      inA((tx) => ring.eraseSubject(tx, { tenantId: a.id, subjectId, reason: "erasure-request" })),
    ).rejects.toThrow(LegalHoldError);
    await expect(
      inA((tx) => ring.destroyKey(tx, { scope: "subject", tenantId: a.id, subjectId, keyId }, "rotation")),
    ).rejects.toThrow(LegalHoldError);
    await expect(inA((tx) => ring.deleteTenantKey(tx, { tenantId: a.id, reason: "offboarding" }))).rejects.toThrow(
      LegalHoldError,
    );
    await inA((tx) => releaseHold(tx, clock, { tenantId: a.id, id: subjectHold.id }));

    const tenantHold = await inA((tx) =>
      placeHold(tx, clock, { tenantId: a.id, scope: "tenant", reason: "regulator", placedBy }),
    );
    await expect(
      inA((tx) => ring.eraseSubject(tx, { tenantId: a.id, subjectId, reason: "erasure-request" })),
    ).rejects.toThrow(LegalHoldError);
    await expect(inA((tx) => ring.deleteTenantKey(tx, { tenantId: a.id, reason: "offboarding" }))).rejects.toThrow(
      LegalHoldError,
    );
    await inA((tx) => releaseHold(tx, clock, { tenantId: a.id, id: tenantHold.id }));

    expect(journalLength()).toBe(length);
    expect(await inA((tx) => ring.decrypt(tx, envelope, binding))).toBe("kept");
    expect(await inA((tx) => ring.isErased(tx, owner))).toBe(false);
    // Once released, erasure goes ahead.
    await inA((tx) => ring.eraseSubject(tx, { tenantId: a.id, subjectId, reason: "erasure-request" }));
    expect(journalLength()).toBe(length + 1);
  });

  it("loads the keys of a list in one resolver, for envelope.ts open", async () => {
    const subjects = [uuidv7(), uuidv7(), uuidv7()];
    const rows = subjects.map(() => uuidv7());
    const envelopes = await inA(async (tx) => {
      const out: string[] = [];
      for (const [i, subjectId] of subjects.entries()) {
        out.push(await ring.encrypt(tx, { scope: "subject", tenantId: a.id, subjectId }, `v${i}`, bind(a.id, rows[i])));
      }
      out.push(await ring.encrypt(tx, { scope: "tenant", tenantId: a.id }, "tenant", bind(a.id, rows[0])));
      return out;
    });
    const values = await inA(async (tx) => {
      const resolve = await ring.resolver(tx, envelopes, a.id);
      return envelopes.map((e, i) => open(resolve, e, bind(a.id, rows[i % 3])));
    });
    expect(values).toEqual(["v0", "v1", "v2", "tenant"]);
  });

  it("refuses a database whose keys another master key wrapped, naming both fingerprints", async () => {
    const other = createTestKeyRing(t.db, clock);
    const envelope = await inA((tx) => ring.encrypt(tx, { scope: "tenant", tenantId: a.id }, "x", bind(a.id)));
    await expect(inA((tx) => other.decrypt(tx, envelope, bind(a.id)))).rejects.toThrow(MasterKeyMismatchError);
    await expect(inA((tx) => other.decrypt(tx, envelope, bind(a.id)))).rejects.toThrow(other.masterKey.fingerprint);
  });

  it("an altered wrapped key or one moved to another owner's row does not unwrap", async () => {
    const s1 = uuidv7();
    const s2 = uuidv7();
    const binding = bind(a.id);
    const e1 = await inA((tx) => ring.encrypt(tx, { scope: "subject", tenantId: a.id, subjectId: s1 }, "one", binding));
    await inA((tx) => ring.encrypt(tx, { scope: "subject", tenantId: a.id, subjectId: s2 }, "two", binding));
    // Re-pointing s1's key row at s2 (as someone with database access might): it no longer unwraps.
    await t.superuser(
      `UPDATE subject_keys SET subject_id = '${s2}', version = 99 WHERE id = '${envelopeKey(e1).keyId}'`,
    );
    await expect(inA((tx) => ring.decrypt(tx, e1, binding))).rejects.toBeInstanceOf(DecryptionError);
  });

  it("deletes a tenant's keys: everything under them, subject keys included, becomes unreadable", async () => {
    const c = await createTenant(t.db, clock, { slug: slug(), name: "C" }, ring, createTestAudit(t.db, ring));
    const binding = bind(c.id);
    const inC = <T>(fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId: c.id }, fn);
    const subjectId = uuidv7();
    const envelopes = await inC(async (tx) => [
      await ring.encrypt(tx, { scope: "tenant", tenantId: c.id }, "t", binding),
      await ring.encrypt(tx, { scope: "subject", tenantId: c.id, subjectId }, "s", binding),
    ]);
    await inC((tx) => ring.deleteTenantKey(tx, { tenantId: c.id, reason: "offboarding" }));
    for (const envelope of envelopes) {
      await expect(inC((tx) => ring.decrypt(tx, envelope, binding))).rejects.toMatchObject({ reason: "unknown-key" });
    }
    await expect(inC((tx) => ring.encrypt(tx, { scope: "tenant", tenantId: c.id }, "t", binding))).rejects.toThrow(
      TenantDeletedError,
    );
    await expect(
      inC((tx) => ring.encrypt(tx, { scope: "subject", tenantId: c.id, subjectId: uuidv7() }, "s", binding)),
    ).rejects.toThrow(TenantDeletedError);
  });

  it("derives blind index keys as blind-index.ts does: one for the platform, one per tenant", () => {
    const own = ring.blindIndexKey({ tenantId: a.id });
    expect(own).toEqual(blindIndexKey(ring.masterKey, { tenantId: a.id }));
    expect(own).not.toEqual(ring.blindIndexKey({ tenantId: b.id }));
    expect(ring.blindIndexKey("platform")).toEqual(blindIndexKey(ring.masterKey, "platform"));
    expect(blindIndex(own, "email", "jane@example.com")).not.toEqual(
      blindIndex(ring.blindIndexKey({ tenantId: b.id }), "email", "jane@example.com"),
    );
  });

  it("refuses bad input before touching anything", async () => {
    await expect(
      inA((tx) => ring.encrypt(tx, { scope: "subject", tenantId: a.id, subjectId: "bob" }, "x", bind(a.id))),
    ).rejects.toThrow(TypeError);
    await expect(
      inA((tx) => ring.eraseSubject(tx, { tenantId: a.id, subjectId: uuidv7(), reason: "because" as never })),
    ).rejects.toThrow(TypeError);
    await expect(inA((tx) => ring.decrypt(tx, "plain text", bind(a.id)))).rejects.toMatchObject({
      reason: "malformed",
    });
  });
});

// Two Databases on one PGlite share its single connection: concurrent transactions need PostgreSQL.
describe.each(DATABASE_KINDS.filter((k) => k === "postgres"))("key ring under concurrency on %s", (kind) => {
  let t: TestDatabase;
  let ring: TestKeyRing;
  let a: Tenant;
  const clock = manualClock("2026-02-01T09:00:00Z");

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

  it("two transactions giving one subject its first key at once make one key, not two", async () => {
    const subjectId = uuidv7();
    const owner = { scope: "subject", tenantId: a.id, subjectId } as const;
    const binding: Binding = { tenantId: a.id, table: "contacts", column: "email", rowId: uuidv7() };
    const other = await t.open({ migrate: false });
    try {
      const envelopes = await Promise.all(
        [t.db, other].map((db) =>
          db.withTenant({ tenantId: a.id }, async (tx) => {
            // Both read "no key" before either writes, then hold their transactions open together.
            await sql`SELECT pg_sleep(0.05)`.execute(tx);
            const envelope = await ring.encrypt(tx, owner, "x", binding);
            await sql`SELECT pg_sleep(0.05)`.execute(tx);
            return envelope;
          }),
        ),
      );
      const keys = await t.db.withTenant({ tenantId: a.id }, (tx) =>
        tx
          .selectFrom("subject_keys")
          .select("id")
          .where("tenant_id", "=", a.id)
          .where("subject_id", "=", subjectId)
          .execute(),
      );
      expect(keys).toHaveLength(1);
      expect(envelopes.map((e) => envelopeKey(e).keyId)).toEqual([keys[0]?.id, keys[0]?.id]);
    } finally {
      await other.close();
    }
  });

  it("a key created while the subject is being erased does not outlive the erasure", async () => {
    const subjectId = uuidv7();
    const owner = { scope: "subject", tenantId: a.id, subjectId } as const;
    const binding: Binding = { tenantId: a.id, table: "contacts", column: "email", rowId: uuidv7() };
    const other = await t.open({ migrate: false });
    try {
      const [erasure, creation] = await Promise.allSettled([
        t.db.withTenant({ tenantId: a.id }, async (tx) => {
          await ring.eraseSubject(tx, { tenantId: a.id, subjectId, reason: "erasure-request" });
          await sql`SELECT pg_sleep(0.1)`.execute(tx);
        }),
        other.withTenant({ tenantId: a.id }, async (tx) => {
          await sql`SELECT pg_sleep(0.03)`.execute(tx);
          return ring.encrypt(tx, owner, "x", binding);
        }),
      ]);
      expect(erasure.status).toBe("fulfilled");
      expect(creation).toMatchObject({ status: "rejected", reason: expect.any(SubjectErasedError) });
      const live = await t.db.withTenant({ tenantId: a.id }, (tx) =>
        tx
          .selectFrom("subject_keys")
          .select("id")
          .where("tenant_id", "=", a.id)
          .where("subject_id", "=", subjectId)
          .execute(),
      );
      expect(live).toEqual([]);
    } finally {
      await other.close();
    }
  });
});
