import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../clock.ts";
import { DecryptionError } from "../crypto/envelope.ts";
import { createTestKeyRing, type TestKeyRing } from "../crypto/testing.ts";
import type { Tx } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import { changeTenantSettings, createTenant, type Tenant } from "../tenancy/tenants.ts";
import { type Appended, type Audit, createAudit } from "./audit.ts";
import { chainHeads } from "./chains.ts";
import { eventHash, GENESIS_HASH, type NewEvent, platformChainId, type StoredEvent, tenantChainId } from "./event.ts";
import { verifyChains } from "./verify.ts";

const slug = () => `a-${uuidv7().slice(-12)}`;
const alice = { kind: "user", id: "0190a000-0000-7000-8000-00000000a11c" } as const;

function change(tenantId: string, overrides: Partial<NewEvent> = {}): NewEvent {
  return {
    tenantId,
    stream: "changes",
    actor: alice,
    action: "record.updated",
    target: { type: "contact", id: uuidv7() },
    details: { fields: ["name"] },
    ...overrides,
  };
}

/** The hash recomputed from the event as returned, the way an independent verifier would. */
function rehash(event: StoredEvent): string {
  const { hash: _, ...unhashed } = event;
  return eventHash(unhashed);
}

describe.each(DATABASE_KINDS)("audit log on %s", (kind) => {
  let t: TestDatabase;
  let keyRing: TestKeyRing;
  let audit: Audit;
  const clock = manualClock("2026-03-01T10:00:00.000Z");

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    keyRing = createTestKeyRing(t.db, clock);
    audit = createAudit({ db: t.db, keyRing, clock });
  });
  afterAll(() => t?.close());

  const newTenant = () => createTenant(t.db, clock, { slug: slug(), name: "Acme" }, keyRing, audit);
  const inTenant = <T>(tenant: Tenant, fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId: tenant.id }, fn);
  const head = async (chainId: string) =>
    (await t.db.withPlatform((tx) => chainHeads(tx))).find((h) => h.chainId === chainId);

  it("appends to the tenant's changes chain: gapless sequence, each hash over the previous one and the event", async () => {
    const tenant = await newTenant();
    const chainId = tenantChainId(tenant.id, "changes");
    clock.advance(1234);
    const events = await inTenant(tenant, async (tx) => [
      await audit.record(tx, change(tenant.id, { requestId: "req-1" })),
      await audit.record(
        tx,
        change(tenant.id, {
          action: "record.created",
          details: { count: 2 },
          cause: { kind: "automation-run", id: uuidv7() },
        }),
      ),
    ]);
    // tenant.created is the chain's first event.
    expect(events.map((e) => e.seq)).toEqual([2, 3]);
    const [second, third] = events as [StoredEvent, StoredEvent];
    expect(second).toMatchObject({
      v: 1,
      chain: chainId,
      tenant: tenant.id,
      stream: "changes",
      at: "2026-03-01T10:00:01.234Z",
      actor: alice,
      request: "req-1",
      cause: null,
    });
    expect(third.prev).toBe(second.hash);
    for (const event of events) expect(rehash(event)).toBe(event.hash);
    expect(await head(chainId)).toEqual({
      chainId,
      tenantId: tenant.id,
      stream: "changes",
      sequence: 3,
      hash: third.hash,
    });
    const report = await verifyChains(t.db, { tenantId: tenant.id });
    expect(report).toEqual({ failures: [], checked: { chains: 1, events: 3 } });
  });

  it("starts a chain from 64 zeros, and keeps streams apart", async () => {
    const tenant = await newTenant();
    const first = await inTenant(tenant, (tx) =>
      audit.record(tx, { ...change(tenant.id), stream: "access", action: "access.read", details: {} }),
    );
    expect(first).toMatchObject({ chain: tenantChainId(tenant.id, "access"), seq: 1, prev: GENESIS_HASH });
  });

  it("refuses a malformed event and writes nothing", async () => {
    const tenant = await newTenant();
    const subject = uuidv7();
    const bad: [Partial<NewEvent>, RegExp][] = [
      [{ personal: { [subject]: { name: "Olga" } } }, /every key of personal must be one of the subjects/],
      [{ details: {} }, /record.updated needs details.fields/],
      [{ action: "auth.signed-in" }, /belongs on the security stream/],
      [{ actor: { kind: "user", id: null } }, /needs its pseudonymous id/],
      [{ actor: { kind: "anonymous", id: uuidv7() } }, /null for an anonymous actor/],
      [{ details: { fields: ["a"], ratio: 0.5 } }, /not an integer/],
      [{ target: { type: "contact", id: "olga@example.com" } }, /target.id must be a UUID/],
      [{ stream: "everything" as never }, /stream must be one of/],
    ];
    for (const [overrides, message] of bad) {
      await expect(inTenant(tenant, (tx) => audit.record(tx, change(tenant.id, overrides)))).rejects.toThrow(message);
    }
    const other = await newTenant();
    // Another tenant's transaction: refused before the head moves.
    await expect(inTenant(other, (tx) => audit.record(tx, change(tenant.id)))).rejects.toThrow(
      /transaction of that tenant/,
    );
    expect((await head(tenantChainId(tenant.id, "changes")))?.sequence).toBe(1);
  });

  it("recordMany appends a batch to one chain: gapless, chained, the head at its last event, and it verifies", async () => {
    const tenant = await newTenant();
    const chainId = tenantChainId(tenant.id, "changes");
    const olga = uuidv7();
    const woken: Appended[] = [];
    const stop = audit.onAppend((a) => woken.push(a));
    const batch = await inTenant(tenant, (tx) =>
      audit.recordMany(tx, [
        change(tenant.id, { requestId: "req-b" }),
        change(tenant.id, { subjects: [olga], personal: { [olga]: { name: "Olga" } } }),
        change(tenant.id, { action: "record.deleted", details: {} }),
      ]),
    ).finally(stop);
    expect(batch.map((e) => e.seq)).toEqual([2, 3, 4]);
    expect(new Set(batch.map((e) => e.id)).size).toBe(3);
    const [first, second, third] = batch as [StoredEvent, StoredEvent, StoredEvent];
    expect(second.prev).toBe(first.hash);
    expect(third.prev).toBe(second.hash);
    for (const event of batch) expect(rehash(event)).toBe(event.hash);
    expect(first).toMatchObject({ chain: chainId, request: "req-b", action: "record.updated" });
    expect(await inTenant(tenant, (tx) => audit.openPersonal(tx, second, olga))).toEqual({ name: "Olga" });
    expect(woken).toEqual([{ tenantId: tenant.id, chainId, stream: "changes", seq: 4 }]);
    expect(await head(chainId)).toMatchObject({ sequence: 4, hash: third.hash });
    // An empty batch writes nothing; the next append continues the chain.
    expect(await inTenant(tenant, (tx) => audit.recordMany(tx, []))).toEqual([]);
    const next = await inTenant(tenant, (tx) => audit.record(tx, change(tenant.id)));
    expect(next).toMatchObject({ seq: 5, prev: third.hash });
    expect(await verifyChains(t.db, { tenantId: tenant.id })).toEqual({
      failures: [],
      checked: { chains: 1, events: 5 },
    });
  });

  it("recordMany refuses a batch with one bad event, or events of two chains, and writes nothing", async () => {
    const tenant = await newTenant();
    const other = await newTenant();
    const batches: [NewEvent[], RegExp][] = [
      [
        [change(tenant.id), change(tenant.id, { details: {} }), change(tenant.id)],
        /record.updated needs details.fields/,
      ],
      [[change(tenant.id), change(tenant.id, { stream: "access", action: "access.read" })], /go to one chain/],
      [[change(tenant.id), change(other.id)], /go to one chain/],
      [Array.from({ length: 1_001 }, () => change(tenant.id)), /at most 1000 events/],
    ];
    for (const [events, message] of batches) {
      await expect(inTenant(tenant, (tx) => audit.recordMany(tx, events))).rejects.toThrow(message);
    }
    expect(await head(tenantChainId(tenant.id, "changes"))).toMatchObject({ sequence: 1 });
    expect(await head(tenantChainId(tenant.id, "access"))).toBeUndefined();
    const rows = await inTenant(tenant, (tx) =>
      tx.selectFrom("audit_events").select("action").where("tenant_id", "=", tenant.id).execute(),
    );
    expect(rows).toEqual([{ action: "tenant.created" }]);
  });

  it("recordMany appends a batch of platform events to the actor's shard", async () => {
    const operator = { kind: "operator", id: uuidv7() } as const;
    const signIn = (): NewEvent => ({
      tenantId: null,
      stream: "security",
      actor: operator,
      action: "auth.signed-in",
      target: { type: "operator", id: operator.id },
    });
    const batch = await t.db.withPlatform((tx) => audit.recordMany(tx, [signIn(), signIn()]));
    const chainId = platformChainId("security", operator);
    expect(batch.map((e) => e.chain)).toEqual([chainId, chainId]);
    expect((batch[1] as StoredEvent).seq).toBe((batch[0] as StoredEvent).seq + 1);
    expect(await head(chainId)).toMatchObject({ hash: (batch[1] as StoredEvent).hash });
    expect((await verifyChains(t.db, { stream: "security" })).failures).toEqual([]);
  });

  it("a rolled-back append leaves no gap", async () => {
    const tenant = await newTenant();
    await expect(
      inTenant(tenant, async (tx) => {
        await audit.record(tx, change(tenant.id));
        throw new Error("the change fails");
      }),
    ).rejects.toThrow("the change fails");
    const next = await inTenant(tenant, (tx) => audit.record(tx, change(tenant.id)));
    expect(next.seq).toBe(2);
    expect((await verifyChains(t.db, { tenantId: tenant.id })).failures).toEqual([]);
  });

  it("the runtime role cannot UPDATE or DELETE audit events, nor delete a chain head", async () => {
    const tenant = await newTenant();
    const statements = [
      sql`UPDATE audit_events SET action = 'record.deleted' WHERE tenant_id = ${tenant.id}`,
      sql`DELETE FROM audit_events WHERE tenant_id = ${tenant.id}`,
      sql`UPDATE platform_audit_events SET action = 'auth.signed-in'`,
      sql`DELETE FROM platform_audit_events`,
      sql`DELETE FROM audit_chain_heads WHERE chain_tenant_id = ${tenant.id}`,
    ];
    for (const statement of statements) {
      await expect(inTenant(tenant, (tx) => statement.execute(tx))).rejects.toThrow(/permission denied/);
    }
    const rows = await inTenant(tenant, (tx) =>
      tx.selectFrom("audit_events").select("action").where("tenant_id", "=", tenant.id).execute(),
    );
    expect(rows).toEqual([{ action: "tenant.created" }]);
  });

  it("encrypts personal details per subject; erasing one shreds its block and the chain still verifies", async () => {
    const tenant = await newTenant();
    const [olga, pia] = [uuidv7(), uuidv7()];
    const event = await inTenant(tenant, (tx) =>
      audit.record(
        tx,
        change(tenant.id, {
          subjects: [pia, olga, olga],
          personal: {
            [olga]: { name: { from: "Olga Ivanova", to: "Olga Petrova" } },
            [pia]: { email: "pia@example.com" },
          },
        }),
      ),
    );
    expect(event.subjects).toEqual([olga, pia].sort());
    const raw = JSON.stringify(await t.superuser(`SELECT * FROM audit_events WHERE id = '${event.id}'`));
    for (const plaintext of ["Olga", "Petrova", "pia@example.com"]) expect(raw).not.toContain(plaintext);
    expect(await inTenant(tenant, (tx) => audit.openPersonal(tx, event, olga))).toEqual({
      name: { from: "Olga Ivanova", to: "Olga Petrova" },
    });
    // The subject index finds the event.
    const found = await inTenant(tenant, (tx) =>
      tx.selectFrom("audit_events").select("id").where(sql<boolean>`subject_ids @> ARRAY[${olga}]::uuid[]`).execute(),
    );
    expect(found).toEqual([{ id: event.id }]);

    await inTenant(tenant, (tx) =>
      keyRing.eraseSubject(tx, { tenantId: tenant.id, subjectId: olga, reason: "erasure-request" }),
    );
    await expect(inTenant(tenant, (tx) => audit.openPersonal(tx, event, olga))).rejects.toThrow(DecryptionError);
    expect(await inTenant(tenant, (tx) => audit.openPersonal(tx, event, pia))).toEqual({ email: "pia@example.com" });
    expect((await verifyChains(t.db, { tenantId: tenant.id })).failures).toEqual([]);
    // Nothing new can be encrypted for the erased subject.
    await expect(
      inTenant(tenant, (tx) =>
        audit.record(tx, change(tenant.id, { subjects: [olga], personal: { [olga]: { name: "x" } } })),
      ),
    ).rejects.toThrow(/has been erased/);
  });

  it("records a denial on the actor's platform chain after the request's transaction rolls back", async () => {
    const tenant = await newTenant();
    const mallory = { kind: "user", id: uuidv7() } as const;
    const denial = {
      stream: "security",
      actor: mallory,
      action: "auth.denied",
      target: { type: "tenant", id: tenant.id },
      details: { permission: "contacts:write" },
      requestId: "req-denied",
    } as const;
    const chainId = platformChainId("security", mallory);
    expect(chainId).toMatch(/^platform\/security\/(0\d|1[0-5])$/);
    const before = (await head(chainId))?.sequence ?? 0;
    await expect(
      inTenant(tenant, async (tx) => {
        await audit.record(tx, change(tenant.id));
        audit.recordDenied(denial);
        throw new Error("forbidden");
      }),
    ).rejects.toThrow("forbidden");
    // The request's own event is gone with its transaction; the denial is on the platform chain.
    expect((await head(tenantChainId(tenant.id, "changes")))?.sequence).toBe(1);
    expect((await head(chainId))?.sequence).toBe(before + 1);
    const rows = await t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .select(["action", "actor_id", "target_id", "request_id", "seq"])
        .where("chain_id", "=", chainId)
        .orderBy("seq", "desc")
        .limit(1)
        .execute(),
    );
    expect(rows).toEqual([
      { action: "auth.denied", actor_id: mallory.id, target_id: tenant.id, request_id: "req-denied", seq: before + 1 },
    ]);
    // A transaction that commits records no denial.
    await inTenant(tenant, async () => audit.recordDenied(denial));
    expect((await head(chainId))?.sequence).toBe(before + 1);
    expect(() => audit.recordDenied(denial)).toThrow(/open transaction/);
    await expect(inTenant(tenant, async () => audit.recordDenied({ ...denial, action: "record.x" }))).rejects.toThrow(
      /belongs on the changes stream/,
    );
    expect((await verifyChains(t.db, { stream: "security" })).failures).toEqual([]);
  });

  it("wakes append listeners after the commit, never for a rollback; a throwing listener does not break the append", async () => {
    const tenant = await newTenant();
    const seen: Appended[] = [];
    const stop = audit.onAppend((a) => seen.push(a));
    const stopBad = audit.onAppend(() => {
      throw new Error("listener bug");
    });
    try {
      await inTenant(tenant, async (tx) => {
        await audit.record(tx, change(tenant.id));
        // Not yet: the transaction may still roll back.
        expect(seen).toEqual([]);
      });
      await expect(
        inTenant(tenant, async (tx) => {
          await audit.record(tx, change(tenant.id));
          throw new Error("the change fails after its event was appended");
        }),
      ).rejects.toThrow(/change fails/);
    } finally {
      stop();
      stopBad();
    }
    await inTenant(tenant, (tx) => audit.record(tx, change(tenant.id)));
    expect(seen).toEqual([
      { tenantId: tenant.id, chainId: tenantChainId(tenant.id, "changes"), stream: "changes", seq: 2 },
    ]);
  });

  it("the kernel's writers record: tenant.created, tenant.settings-changed, tenant.feature-changed", async () => {
    const { setFeature } = await import("../tenancy/features.ts");
    const tenant = await newTenant();
    const member = uuidv7();
    await inTenant(tenant, async (tx) => {
      await changeTenantSettings(tx, clock, audit, {
        tenantId: tenant.id,
        timeZone: "Europe/Berlin",
        actor: { kind: "user", id: member },
      });
      // No change, no event.
      await changeTenantSettings(tx, clock, audit, { tenantId: tenant.id, locale: "en", actor: alice });
      await setFeature(
        tx,
        clock,
        { tenantId: tenant.id, feature: "ai.drafts", enabled: true, changedBy: member },
        audit,
      );
    });
    // A failing switch (a malformed feature name) rolls back with its event.
    await expect(
      inTenant(tenant, (tx) =>
        setFeature(tx, clock, { tenantId: tenant.id, feature: "Bad Name", enabled: true, changedBy: null }, audit),
      ),
    ).rejects.toThrow();
    const rows = await inTenant(tenant, (tx) =>
      tx
        .selectFrom("audit_events")
        .select(["seq", "action", "actor_kind", "actor_id", "target_type", "details"])
        .where("tenant_id", "=", tenant.id)
        .orderBy("seq")
        .execute(),
    );
    expect(rows).toEqual([
      {
        seq: 1,
        action: "tenant.created",
        actor_kind: "system",
        actor_id: null,
        target_type: "tenant",
        details: { timeZone: "UTC", locale: "en" },
      },
      {
        seq: 2,
        action: "tenant.settings-changed",
        actor_kind: "user",
        actor_id: member,
        target_type: "tenant",
        details: { fields: ["timeZone"], from: { timeZone: "UTC" }, to: { timeZone: "Europe/Berlin" } },
      },
      {
        seq: 3,
        action: "tenant.feature-changed",
        actor_kind: "user",
        actor_id: member,
        target_type: "tenant-feature",
        details: { feature: "ai.drafts", enabled: true, previous: false },
      },
    ]);
    expect((await verifyChains(t.db, { tenantId: tenant.id })).failures).toEqual([]);
  });
});

describe.each(DATABASE_KINDS.filter((k) => k === "postgres"))("concurrent appends on %s", (kind) => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
  });
  afterAll(() => t?.close());

  it("concurrent transactions on one chain get 1..N with no gap, committed in sequence order", async () => {
    const clock = manualClock();
    const keyRing = createTestKeyRing(t.db, clock);
    const audit = createAudit({ db: t.db, keyRing, clock });
    const tenant = await createTenant(t.db, clock, { slug: slug(), name: "Busy" }, keyRing, audit);
    const writers = 24;
    let done = false;
    const prefixes: boolean[] = [];
    // A reader by cursor must only ever see a prefix of the chain: count = max(seq) at every moment.
    const reader = (async () => {
      while (!done) {
        const [row] = await t.db.selectAsTenant({ tenantId: tenant.id }, (q) =>
          q
            .selectFrom("audit_events")
            .select([sql<number>`count(*)::int`.as("n"), sql<number>`coalesce(max(seq), 0)::int`.as("max")])
            .where("tenant_id", "=", tenant.id),
        );
        prefixes.push(row?.n === row?.max);
      }
    })();
    await Promise.all(
      Array.from({ length: writers }, (_, i) =>
        t.db.withTenant({ tenantId: tenant.id }, async (tx) => {
          await audit.record(tx, change(tenant.id));
          // Hold the chain a little, in varying amounts, so commits interleave with other appends waiting.
          await new Promise((resolve) => setTimeout(resolve, (i * 7) % 13));
        }),
      ),
    );
    const failed = t.db.withTenant({ tenantId: tenant.id }, async (tx) => {
      await audit.record(tx, change(tenant.id));
      throw new Error("rolled back");
    });
    await expect(failed).rejects.toThrow("rolled back");
    done = true;
    await reader;
    const seqs = await t.db.selectAsTenant({ tenantId: tenant.id }, (q) =>
      q.selectFrom("audit_events").select("seq").where("tenant_id", "=", tenant.id).orderBy("seq"),
    );
    expect(seqs.map((r) => r.seq)).toEqual(Array.from({ length: writers + 1 }, (_, i) => i + 1));
    expect(prefixes.length).toBeGreaterThan(0);
    expect(prefixes.every(Boolean)).toBe(true);
    expect(await verifyChains(t.db, { tenantId: tenant.id })).toEqual({
      failures: [],
      checked: { chains: 1, events: writers + 1 },
    });
  });

  it("batches from concurrent transactions on one chain interleave whole, with no gap", async () => {
    const clock = manualClock();
    const keyRing = createTestKeyRing(t.db, clock);
    const audit = createAudit({ db: t.db, keyRing, clock });
    const tenant = await createTenant(t.db, clock, { slug: slug(), name: "Batches" }, keyRing, audit);
    const sizes = Array.from({ length: 16 }, (_, i) => 1 + ((i * 5) % 7));
    const batches = await Promise.all(
      sizes.map((size, i) =>
        t.db.withTenant({ tenantId: tenant.id }, async (tx) => {
          const events = await audit.recordMany(
            tx,
            Array.from({ length: size }, () => change(tenant.id)),
          );
          await new Promise((resolve) => setTimeout(resolve, (i * 7) % 13));
          return events.map((e) => e.seq);
        }),
      ),
    );
    const total = sizes.reduce((a, b) => a + b, 0);
    for (const [i, seqs] of batches.entries()) {
      const start = seqs[0] as number;
      expect(seqs).toEqual(Array.from({ length: sizes[i] as number }, (_, k) => start + k));
    }
    const all = batches.flat().sort((a, b) => a - b);
    // Sequence 1 is tenant.created.
    expect(all).toEqual(Array.from({ length: total }, (_, k) => k + 2));
    expect(await verifyChains(t.db, { tenantId: tenant.id })).toEqual({
      failures: [],
      checked: { chains: 1, events: total + 1 },
    });
  });
});
