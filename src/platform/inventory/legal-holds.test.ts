import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../clock.ts";
import type { Tx } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import type { Tenant } from "../tenancy/tenants.ts";
import { createTestTenant } from "../tenancy/testing.ts";
import { isHeld, placeHold, releaseHold } from "./legal-holds.ts";

const DAY = 86_400_000;
const slug = () => `t-${uuidv7().slice(-12)}`;

describe.each(DATABASE_KINDS)("legal holds on %s (P4, P9)", (kind) => {
  let t: TestDatabase;
  let a: Tenant;
  let b: Tenant;
  const clock = manualClock("2026-03-01T00:00:00Z");
  const operator = { kind: "operator" as const, id: uuidv7() };

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    a = await createTestTenant(t.db, { slug: slug(), name: "A" }, clock);
    b = await createTestTenant(t.db, { slug: slug(), name: "B" }, clock);
  });
  afterAll(() => t?.close());

  const inA = <T>(fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId: a.id }, fn);

  it("a hold on a subject covers that subject, from when it is placed, until it is released", async () => {
    const subject = uuidv7();
    const other = uuidv7();
    const placedAt = clock.now();
    const hold = await inA((tx) =>
      placeHold(tx, clock, {
        tenantId: a.id,
        scope: "subject",
        subjectId: subject,
        reason: "litigation",
        placedBy: operator,
      }),
    );
    expect(hold).toMatchObject({ scope: "subject", subjectId: subject, placedBy: operator, releasedAt: null });
    const held = (subjectId: string, at: Date) => inA((tx) => isHeld(tx, { tenantId: a.id, subjectId }, at));
    expect(await held(subject, placedAt)).toBe(true);
    expect(await held(other, placedAt)).toBe(false);
    expect(await held(subject, new Date(placedAt.getTime() - 1))).toBe(false);

    clock.advance(DAY);
    const released = await inA((tx) => releaseHold(tx, clock, { tenantId: a.id, id: hold.id }));
    expect(released?.releasedAt).toEqual(clock.now());
    expect(await inA((tx) => releaseHold(tx, clock, { tenantId: a.id, id: hold.id }))).toBeUndefined();
    expect(await held(subject, clock.now())).toBe(false);
    expect(await held(subject, new Date(clock.now().getTime() + DAY))).toBe(false);
    // Still answers for the time it was in force.
    expect(await held(subject, new Date(clock.now().getTime() - 1))).toBe(true);
  });

  it("an expired hold covers nothing", async () => {
    const subject = uuidv7();
    const expiresAt = new Date(clock.now().getTime() + 7 * DAY);
    await inA((tx) =>
      placeHold(tx, clock, {
        tenantId: a.id,
        scope: "subject",
        subjectId: subject,
        reason: "regulator's request",
        placedBy: { kind: "system" },
        expiresAt,
      }),
    );
    const held = (at: Date) => inA((tx) => isHeld(tx, { tenantId: a.id, subjectId: subject }, at));
    expect(await held(new Date(expiresAt.getTime() - 1))).toBe(true);
    expect(await held(expiresAt)).toBe(false);
  });

  it("a tenant hold covers every subject and record type; a record-type hold only its type", async () => {
    const c = await createTestTenant(t.db, { slug: slug(), name: "C" }, clock);
    const inC = <T>(fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId: c.id }, fn);
    const now = clock.now();
    await inC((tx) =>
      placeHold(tx, clock, {
        tenantId: c.id,
        scope: "record-type",
        recordType: "legal_holds",
        reason: "audit",
        placedBy: operator,
      }),
    );
    const held = (query: { subjectId?: string; recordType?: string }) =>
      inC((tx) => isHeld(tx, { tenantId: c.id, ...query }, now));
    expect(await held({ recordType: "legal_holds" })).toBe(true);
    expect(await held({ recordType: "tenant_features" })).toBe(false);
    expect(await held({ subjectId: uuidv7() })).toBe(false);
    await inC((tx) => placeHold(tx, clock, { tenantId: c.id, scope: "tenant", reason: "dispute", placedBy: operator }));
    expect(await held({ subjectId: uuidv7() })).toBe(true);
    expect(await held({ recordType: "tenant_features" })).toBe(true);
    expect(await held({})).toBe(true);
  });

  it("refuses a hold without a reason, with a malformed scope, or that expires before it starts", async () => {
    const base = { tenantId: a.id, reason: "x", placedBy: operator };
    await expect(inA((tx) => placeHold(tx, clock, { ...base, scope: "tenant", reason: "  " }))).rejects.toThrow(
      /reason/,
    );
    await expect(inA((tx) => placeHold(tx, clock, { ...base, scope: "subject", subjectId: "bob" }))).rejects.toThrow(
      /subjectId must be a UUID/,
    );
    await expect(
      inA((tx) => placeHold(tx, clock, { ...base, scope: "record-type", recordType: "Contacts; DROP" })),
    ).rejects.toThrow(/recordType/);
    await expect(
      inA((tx) => placeHold(tx, clock, { ...base, scope: "tenant", expiresAt: clock.now() })),
    ).rejects.toThrow(/expire/);
  });

  it("the table's own constraints refuse inconsistent rows", async () => {
    await expect(
      inA((tx) =>
        sql`INSERT INTO legal_holds (tenant_id, id, scope, subject_id, reason, placed_by_kind, placed_at)
            VALUES (${a.id}, ${uuidv7()}, 'tenant', ${uuidv7()}, 'r', 'system', ${clock.now()})`.execute(tx),
      ),
    ).rejects.toThrow(/check constraint/);
    await expect(
      inA((tx) =>
        sql`INSERT INTO legal_holds (tenant_id, id, scope, reason, placed_by_kind, placed_at)
            VALUES (${a.id}, ${uuidv7()}, 'tenant', 'r', 'user', ${clock.now()})`.execute(tx),
      ),
    ).rejects.toThrow(/check constraint/);
  });

  it("tenant A neither sees nor places nor releases tenant B's holds", async () => {
    const subject = uuidv7();
    const bHold = await t.db.withTenant({ tenantId: b.id }, (tx) =>
      placeHold(tx, clock, {
        tenantId: b.id,
        scope: "subject",
        subjectId: subject,
        reason: "B's matter",
        placedBy: operator,
      }),
    );
    const now = clock.now();
    expect(
      await t.db.withTenant({ tenantId: b.id }, (tx) => isHeld(tx, { tenantId: b.id, subjectId: subject }, now)),
    ).toBe(true);
    expect(await inA((tx) => isHeld(tx, { tenantId: b.id, subjectId: subject }, now))).toBe(false);
    const visible = await inA((tx) => tx.selectFrom("legal_holds").select(["tenant_id", "reason"]).execute());
    expect(visible.length).toBeGreaterThan(0);
    expect(visible.every((row) => row.tenant_id === a.id)).toBe(true);
    expect(await inA((tx) => releaseHold(tx, clock, { tenantId: b.id, id: bHold.id }))).toBeUndefined();
    await expect(
      inA((tx) => placeHold(tx, clock, { tenantId: b.id, scope: "tenant", reason: "planted", placedBy: operator })),
    ).rejects.toThrow(/row-level security/);
    expect(
      await t.db.withTenant({ tenantId: b.id }, (tx) => isHeld(tx, { tenantId: b.id, subjectId: subject }, now)),
    ).toBe(true);
  });
});
