import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.ts";
import {
  createUser,
  emailIndexOf,
  findVerifiedUserByEmail,
  openEmail,
  sealEmail,
} from "../src/modules/identity/users.ts";
import { APPLICATION_INVENTORY } from "../src/modules/inventory.ts";
import { createTestAudit } from "../src/platform/audit/testing.ts";
import { manualClock } from "../src/platform/clock.ts";
import { blindIndex } from "../src/platform/crypto/blind-index.ts";
import type { Binding } from "../src/platform/crypto/envelope.ts";
import { createKeyRing, type KeyRing, MasterKeyMismatchError } from "../src/platform/crypto/key-ring.ts";
import { MasterKey } from "../src/platform/crypto/master-key.ts";
import {
  checkMasterKeyRotations,
  MASTER_KEY_ROTATED,
  type MasterKeyRotationDeps,
  MasterKeyRotationError,
  rotateMasterKey,
} from "../src/platform/crypto/master-rotation.ts";
import { createTestKeyRing, type TestKeyRing } from "../src/platform/crypto/testing.ts";
import type { Tx } from "../src/platform/db/index.ts";
import type { Control } from "../src/platform/doctor/controls.ts";
import { kernelControls } from "../src/platform/doctor/kernel-controls.ts";
import { uuidv7 } from "../src/platform/ids.ts";
import { createTenant, type Tenant } from "../src/platform/tenancy/tenants.ts";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "./support/databases.ts";

/**
 * Promise E4: the master key can be rotated. Every key it wraps moves to the new key, every blind index derived
 * from it is computed again, everything sealed below stays readable with the new key alone, the old key opens
 * nothing, and a rotation cut short is refused at start-up until it is run again to its end.
 */
describe.each(DATABASE_KINDS)("master key rotation on %s", (kind) => {
  const clock = manualClock("2026-11-24T09:00:00Z");
  let t: TestDatabase;
  let ring: TestKeyRing;
  let tenants: Tenant[];
  let deleted: Tenant;
  const slug = () => `t-${uuidv7().slice(-12)}`;
  const newKey = () => new MasterKey(randomBytes(32));
  /** Bytes as hex (PGlite reads bytea as a Uint8Array, pg as a Buffer). */
  const hex = (bytes: Uint8Array | null) => Buffer.from(bytes ?? []).toString("hex");
  const deps = (): MasterKeyRotationDeps => ({
    db: t.db,
    clock,
    inventory: APPLICATION_INVENTORY,
    audit: createTestAudit(t.db, ring, clock),
  });

  /** What was sealed before the rotation, to be read after it. */
  const sealed: { envelope: string; binding: Binding; value: string; tenantId: string | null }[] = [];
  const users: { id: string; address: string; token: string }[] = [];
  const invitations: { tenantId: string; id: string; address: string }[] = [];

  const inTenant = <T>(tenantId: string, fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId }, fn);

  async function invite(ring: KeyRing, tenantId: string, address: string): Promise<void> {
    const id = uuidv7();
    const binding: Binding = { tenantId, table: "invitations", column: "email", rowId: id };
    await inTenant(tenantId, async (tx) =>
      tx
        .insertInto("invitations")
        .values({
          tenant_id: tenantId,
          id,
          email: await ring.encrypt(tx, { scope: "tenant", tenantId }, address, binding),
          email_index: blindIndex(ring.blindIndexKey({ tenantId }), "email", address),
          role: "member",
          token_hash: randomBytes(32),
          invited_by: null,
          created_at: clock.now(),
          expires_at: new Date(clock.now().getTime() + 86_400_000),
        })
        .execute(),
    );
    invitations.push({ tenantId, id, address });
  }

  async function signUp(ring: KeyRing, address: string): Promise<void> {
    const tokenId = uuidv7();
    const user = await t.db.withPlatform(async (tx) => {
      const user = await createUser(tx, ring, clock.now(), {
        email: emailIndexOf(ring, address),
        displayName: "Someone",
        passwordHash: null,
        verifiedAt: clock.now(),
      });
      // An email change under way: the token carries the new address and its index.
      const next = emailIndexOf(ring, `new.${address}`);
      await tx
        .insertInto("account_tokens")
        .values({
          id: tokenId,
          user_id: user.id,
          purpose: "change-email",
          token_hash: randomBytes(32),
          email: await sealEmail(tx, ring, user.id, "account_tokens", tokenId, next.normalised),
          email_index: next.index,
          created_at: clock.now(),
          expires_at: new Date(clock.now().getTime() + 1_800_000),
        })
        .execute();
      return user;
    });
    users.push({ id: user.id, address, token: tokenId });
  }

  async function sealSubjectValue(ring: KeyRing, tenantId: string): Promise<void> {
    const binding: Binding = { tenantId, table: "contacts", column: "email", rowId: uuidv7() };
    const value = `secret of ${tenantId}`;
    const subject = { scope: "subject" as const, tenantId, subjectId: uuidv7() };
    const envelope = await inTenant(tenantId, (tx) => ring.encrypt(tx, subject, value, binding));
    sealed.push({ envelope, binding, value, tenantId });
  }

  const keyFingerprints = async () => {
    const platform = await t.db.withPlatform((tx) =>
      tx.selectFrom("platform_keys").select("master_key_fingerprint").execute(),
    );
    const tenant = [];
    for (const id of [...tenants, deleted].map((x) => x.id)) {
      tenant.push(
        ...(await inTenant(id, (tx) =>
          tx
            .selectFrom("tenant_keys")
            .select(["master_key_fingerprint", "wrapped_key"])
            .where("tenant_id", "=", id)
            .execute(),
        )),
      );
    }
    return { platform: platform.map((r) => r.master_key_fingerprint), tenant };
  };

  /** Everything sealed before is read with `reader`, and every index is the one `reader`'s keys give. */
  async function expectAllReadableWith(reader: KeyRing): Promise<void> {
    for (const s of sealed) {
      const read = (tx: Tx) => reader.decrypt(tx, s.envelope, s.binding);
      expect(await (s.tenantId ? inTenant(s.tenantId, read) : t.db.withPlatform(read))).toBe(s.value);
    }
    for (const u of users) {
      await t.db.withPlatform(async (tx) => {
        const found = await findVerifiedUserByEmail(tx, emailIndexOf(reader, u.address).index);
        expect(found?.id).toBe(u.id);
        expect(await openEmail(tx, reader, "users", u.id, found?.email as string)).toBe(u.address);
        const token = await tx
          .selectFrom("account_tokens")
          .select(["email", "email_index"])
          .where("id", "=", u.token)
          .executeTakeFirstOrThrow();
        expect(await openEmail(tx, reader, "account_tokens", u.token, token.email as string)).toBe(`new.${u.address}`);
        expect(hex(token.email_index)).toBe(hex(emailIndexOf(reader, `new.${u.address}`).index));
      });
    }
    // The deleted tenant's invitation was shredded with its keys: nothing reads it, before or after.
    for (const i of invitations.filter((x) => x.tenantId !== deleted.id)) {
      await inTenant(i.tenantId, async (tx) => {
        const row = await tx
          .selectFrom("invitations")
          .select(["id", "email"])
          .where("tenant_id", "=", i.tenantId)
          .where("email_index", "=", blindIndex(reader.blindIndexKey({ tenantId: i.tenantId }), "email", i.address))
          .executeTakeFirst();
        expect(row?.id).toBe(i.id);
        const binding: Binding = { tenantId: i.tenantId, table: "invitations", column: "email", rowId: i.id };
        expect(await reader.decrypt(tx, row?.email as string, binding)).toBe(i.address);
      });
    }
  }

  /** Doctor's control keys.master-key-wraps, with `key` configured. */
  const doctor = (key: MasterKey) =>
    (kernelControls().find((c) => c.id === "keys.master-key-wraps") as Control).check({
      db: t.db,
      config: loadConfig({ CHARTER_DATA_DIR: dataDir, CHARTER_MASTER_KEY: key.bytes().toString("base64") }),
    });
  const rotations = () =>
    t.db.withPlatform((tx) => tx.selectFrom("master_key_rotations").selectAll().orderBy("started_at").execute());

  let dataDir: string;
  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), "charter-rotation-"));
    t = await openTestDatabase(kind);
    ring = createTestKeyRing(t.db, clock);
    const audit = createTestAudit(t.db, ring, clock);
    tenants = [];
    for (const name of ["A", "B"]) tenants.push(await createTenant(t.db, clock, { slug: slug(), name }, ring, audit));
    deleted = await createTenant(t.db, clock, { slug: slug(), name: "Gone" }, ring, audit);
    for (const tenant of tenants) {
      await sealSubjectValue(ring, tenant.id);
      await invite(ring, tenant.id, `invitee@${tenant.slug}.example`);
    }
    await invite(ring, deleted.id, "invitee@gone.example");
    await inTenant(deleted.id, (tx) => ring.deleteTenantKey(tx, { tenantId: deleted.id, reason: "offboarding" }));
    await signUp(ring, "ada@example.com");
    await signUp(ring, "grace@example.com");
    const personValue = { tenantId: null, table: "users", column: "note", rowId: users[0]?.id as string };
    const envelope = await t.db.withPlatform((tx) =>
      ring.encrypt(tx, { scope: "person", personId: users[0]?.id as string }, "a person's note", personValue),
    );
    sealed.push({ envelope, binding: personValue, value: "a person's note", tenantId: null });
  });
  afterAll(async () => {
    await t?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("refuses a new key that is the one in use, and a current key that does not open the database", async () => {
    await expect(rotateMasterKey(deps(), ring.masterKey, ring.masterKey)).rejects.toThrow(MasterKeyRotationError);
    await expect(rotateMasterKey(deps(), newKey(), newKey())).rejects.toThrow(MasterKeyMismatchError);
    expect(await rotations()).toEqual([]);
  });

  let rotated: MasterKey;

  it("is refused at start-up while cut short, and finishes when run again with the same keys (E4)", async () => {
    rotated = newKey();
    // A value that cannot be read stops the rotation part-way: after the platform, before tenant B.
    const b = tenants[1] as Tenant;
    const victim = invitations.find((i) => i.tenantId === b.id) as (typeof invitations)[number];
    const original = await inTenant(b.id, (tx) =>
      tx
        .selectFrom("invitations")
        .select("email")
        .where("tenant_id", "=", b.id)
        .where("id", "=", victim.id)
        .executeTakeFirstOrThrow(),
    );
    // Sealed under tenant B's key for another row: its key is there, but it does not authenticate here.
    const misplaced = await inTenant(b.id, (tx) =>
      ring.encrypt(tx, { scope: "tenant", tenantId: b.id }, "x@example.com", {
        tenantId: b.id,
        table: "invitations",
        column: "email",
        rowId: uuidv7(),
      }),
    );
    const setEmail = (email: string) =>
      inTenant(b.id, (tx) =>
        tx
          .updateTable("invitations")
          .set({ email })
          .where("tenant_id", "=", b.id)
          .where("id", "=", victim.id)
          .execute(),
      );
    await setEmail(misplaced);
    await expect(rotateMasterKey(deps(), ring.masterKey, rotated)).rejects.toThrow(
      /invitations\.email of row .* cannot be read/,
    );

    const open = await rotations();
    expect(open).toHaveLength(1);
    expect(open[0]).toMatchObject({
      from_fingerprint: ring.masterKey.fingerprint,
      to_fingerprint: rotated.fingerprint,
      completed_at: null,
    });
    await expect(checkMasterKeyRotations(t.db, ring.masterKey)).rejects.toThrow(/unfinished/);
    expect(await doctor(rotated)).toMatchObject({ ok: false, evidence: expect.stringContaining("is unfinished") });
    const midway = await keyFingerprints();
    expect(new Set(midway.platform)).toEqual(new Set([rotated.fingerprint]));
    // Tenant B's keys and indexes stayed on the old key, in one piece.
    expect(new Set(midway.tenant.map((r) => r.master_key_fingerprint))).toEqual(
      new Set([ring.masterKey.fingerprint, rotated.fingerprint]),
    );
    // Another rotation waits for this one.
    await expect(rotateMasterKey(deps(), ring.masterKey, newKey())).rejects.toThrow(/is unfinished/);

    await setEmail(original.email);
    const report = await rotateMasterKey(deps(), ring.masterKey, rotated);
    expect(report.resumed).toBe(true);
    await checkMasterKeyRotations(t.db, rotated);
    // Start-up with the old key names the key to configure.
    await expect(checkMasterKeyRotations(t.db, ring.masterKey)).rejects.toThrow(
      `master key ${ring.masterKey.fingerprint} was rotated to ${rotated.fingerprint}`,
    );
    const [done] = await rotations();
    expect(done?.completed_at).toEqual(clock.now());
  });

  it("leaves every key wrapped by the new master key and every index under its keys; the old key opens nothing (E4)", async () => {
    const after = await keyFingerprints();
    expect(after.platform.length).toBeGreaterThan(0);
    expect(new Set([...after.platform, ...after.tenant.map((r) => r.master_key_fingerprint)])).toEqual(
      new Set([rotated.fingerprint]),
    );
    // The deleted tenant's keys stay destroyed.
    const gone = await inTenant(deleted.id, (tx) =>
      tx.selectFrom("tenant_keys").select("wrapped_key").where("tenant_id", "=", deleted.id).execute(),
    );
    expect(gone.map((r) => r.wrapped_key)).toEqual([null]);

    await expectAllReadableWith(createKeyRing({ db: t.db, masterKey: rotated, clock }));
    expect(await doctor(rotated)).toEqual({
      ok: true,
      evidence: `${after.platform.length + after.tenant.length} platform and tenant keys, all wrapped by master key ${rotated.fingerprint}; it replaced master key ${ring.masterKey.fingerprint} on ${clock.now().toISOString()}`,
    });
    expect(await doctor(ring.masterKey)).toMatchObject({
      ok: false,
      evidence: expect.stringContaining(`keys wrapped by another master key than ${ring.masterKey.fingerprint}`),
    });

    const old = createKeyRing({ db: t.db, masterKey: ring.masterKey, clock });
    await expect(old.ensurePlatformKey()).rejects.toThrow(MasterKeyMismatchError);
    const s = sealed[0] as (typeof sealed)[number];
    await expect(inTenant(s.tenantId as string, (tx) => old.decrypt(tx, s.envelope, s.binding))).rejects.toThrow(
      MasterKeyMismatchError,
    );
    // The old key's indexes find no one any more.
    const u = users[0] as (typeof users)[number];
    expect(
      await t.db.withPlatform((tx) => findVerifiedUserByEmail(tx, emailIndexOf(old, u.address).index)),
    ).toBeUndefined();
    // The deleted tenant's invitation has no address to index: it gets bytes that match none.
    const lost = invitations.find((i) => i.tenantId === deleted.id) as (typeof invitations)[number];
    const lostIndex = await inTenant(deleted.id, (tx) =>
      tx
        .selectFrom("invitations")
        .select("email_index")
        .where("tenant_id", "=", deleted.id)
        .where("id", "=", lost.id)
        .executeTakeFirstOrThrow(),
    );
    expect(lostIndex.email_index).not.toEqual(
      blindIndex(old.blindIndexKey({ tenantId: deleted.id }), "email", lost.address),
    );
    expect(lostIndex.email_index).toHaveLength(32);
  });

  it("records the rotation on the platform's security chain, naming the keys by fingerprint only", async () => {
    const events = await t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .select(["action", "stream", "details"])
        .where("action", "=", MASTER_KEY_ROTATED)
        .execute(),
    );
    expect(events).toEqual([
      {
        action: MASTER_KEY_ROTATED,
        stream: "security",
        details: { from: ring.masterKey.fingerprint, to: rotated.fingerprint },
      },
    ]);
    for (const key of [ring.masterKey, rotated]) {
      for (const encoding of ["hex", "base64"] as const) {
        expect(JSON.stringify(events)).not.toContain(key.bytes().toString(encoding).slice(0, 16));
      }
    }
  });

  it("refuses to go back to a key it rotated away from", async () => {
    await expect(rotateMasterKey(deps(), rotated, ring.masterKey)).rejects.toThrow(/rotated away from/);
    expect(await rotations()).toHaveLength(1);
  });
});
