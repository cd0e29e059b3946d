import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../clock.ts";
import { createTestKeyRing, type TestKeyRing } from "../crypto/testing.ts";
import { uuidv7 } from "../ids.ts";
import { createTenant } from "../tenancy/tenants.ts";
import { type Audit, createAudit } from "./audit.ts";
import { eventAt, type StreamedEvent, streamEvents } from "./chains.ts";
import { type AuditEvent, eventHash, type StoredEvent, storedEventHash, tenantChainId } from "./event.ts";
import { exportChain } from "./export.ts";
import { verifyChains } from "./verify.ts";

const slug = () => `v-${uuidv7().slice(-12)}`;

/**
 * Each tamper is made in SQL as the superuser on a chain of its own (tenant.created, then five events, the
 * third with personal details), and verification must name that chain, the sequence and the kind, while a
 * clean chain beside it passes. A rewrite with every hash recomputed and the head moved verifies here: only
 * the signed checkpoints catch it (checkpoints*.ts).
 */
describe.each(DATABASE_KINDS)("chain verification on %s", (kind) => {
  let t: TestDatabase;
  let keyRing: TestKeyRing;
  let audit: Audit;
  const clock = manualClock("2026-04-01T08:00:00.000Z");
  let control: { tenantId: string; chainId: string };

  async function chain() {
    const tenant = await createTenant(t.db, clock, { slug: slug(), name: "Acme" }, keyRing, audit);
    const subject = uuidv7();
    const events = await t.db.withTenant({ tenantId: tenant.id }, async (tx) => {
      const out: StoredEvent[] = [];
      for (let i = 2; i <= 6; i++) {
        clock.advance(10);
        out.push(
          await audit.record(tx, {
            tenantId: tenant.id,
            stream: "changes",
            actor: { kind: "user", id: uuidv7() },
            action: "record.updated",
            target: { type: "contact", id: subject },
            subjects: [subject],
            details: { fields: ["name"], n: i },
            ...(i === 3 ? { personal: { [subject]: { name: "Olga" } } } : {}),
          }),
        );
      }
      return out;
    });
    const chainId = tenantChainId(tenant.id, "changes");
    const where = `tenant_id = '${tenant.id}' AND chain_id = '${chainId}'`;
    return { tenantId: tenant.id, chainId, subject, events, where };
  }

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    keyRing = createTestKeyRing(t.db, clock);
    audit = createAudit({ db: t.db, keyRing, clock });
    control = await chain();
  });
  afterAll(() => t?.close());

  /** Tampers stay in the database: each test verifies its own tenant, and the control beside it. */
  async function expectOnly(tampered: { tenantId: string; chainId: string }, sequence: number, failureKind: string) {
    const report = await verifyChains(t.db, { tenantId: tampered.tenantId });
    expect(report.failures.map(({ chainId, sequence, kind }) => ({ chainId, sequence, kind }))).toEqual([
      { chainId: tampered.chainId, sequence, kind: failureKind },
    ]);
    expect(report.failures[0]?.detail).toBeTruthy();
    // The clean chain beside it passes on its own.
    expect((await verifyChains(t.db, { tenantId: control.tenantId })).failures).toEqual([]);
  }

  it("a clean control passes, streamed in batches smaller than the chain", async () => {
    const report = await verifyChains(t.db, { batchSize: 2 });
    expect(report.failures).toEqual([]);
    expect(report.checked.events).toBeGreaterThanOrEqual(6);
    const one = await verifyChains(t.db, { tenantId: control.tenantId, stream: "changes", batchSize: 4 });
    expect(one).toEqual({ failures: [], checked: { chains: 1, events: 6 } });
  });

  it("streams a tenant's events in sequence order (10 after 9), each hashing as the event the driver reads", async () => {
    const tenant = await createTenant(t.db, clock, { slug: slug(), name: "Long" }, keyRing, audit);
    const cause = { kind: "automation-run", id: uuidv7() };
    await t.db.withTenant({ tenantId: tenant.id }, (tx) =>
      audit.recordMany(
        tx,
        Array.from({ length: 11 }, (_, i) => ({
          tenantId: tenant.id,
          stream: "changes" as const,
          actor: { kind: "workflow" as const, id: uuidv7() },
          action: "record.updated",
          target: { type: "contact", id: null },
          subjects: i % 2 ? [uuidv7(), uuidv7()] : [],
          details: { fields: ["note"], note: `tab\t, "quote", back\\slash, é ${i}`, nested: { z: [1, null, true] } },
          requestId: i % 3 ? null : `req\n${i}`,
          cause: i % 2 ? cause : null,
        })),
      ),
    );
    const streamed: StreamedEvent[] = [];
    const driver: (StoredEvent | undefined)[] = [];
    await t.db.withSnapshot((s) =>
      s.forEachTenant(async (id, tx, copyRows) => {
        if (id !== tenant.id) return;
        await streamEvents(copyRows, id, undefined, (e) => {
          streamed.push(e.detached());
        });
        for (const e of streamed) driver.push(await eventAt(tx, { chainId: e.chainId, tenantId: id }, e.seq));
      }),
    );
    expect(streamed.map((e) => e.seq)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    streamed.forEach((e, i) => {
      const event = driver[i] as StoredEvent;
      expect([e.prev, e.hash]).toEqual([event.prev, event.hash]);
      expect(e.hashAt(e.seq)).toBe(event.hash);
      // At another place in the chain, the same columns give what the driver's event gives there.
      expect(e.hashAt(e.seq + 1)).toBe(storedEventHash(event, e.seq + 1));
    });
  });

  const edits: [string, (c: Awaited<ReturnType<typeof chain>>) => string][] = [
    ["details", () => `details = '{"fields": ["email"], "n": 4}'`],
    ["the personal ciphertext", (c) => `personal = jsonb_build_object('${c.subject}', 'v1.x.1.AAAAAAAAAAAAAAAA.AAAA')`],
    ["the actor", () => `actor_id = '${uuidv7()}'`],
    ["the time, by a microsecond", () => `at = at + interval '1 microsecond'`],
    ["the hash", () => `hash = '${"a".repeat(64)}'`],
    ["the previous hash", () => `prev_hash = '${"b".repeat(64)}'`],
    ["the subjects", () => `subject_ids = ARRAY['${uuidv7()}']::uuid[]`],
    ["the request id", () => `request_id = 'forged'`],
    ["details with a fraction", () => `details = '{"fields": ["name"], "n": 3.5}'`],
  ];
  for (const [what, set] of edits) {
    it(`an edited event (${what}) is reported as edited at its sequence`, async () => {
      const c = await chain();
      await t.superuser(`UPDATE audit_events SET ${set(c)} WHERE ${c.where} AND seq = 3`);
      await expectOnly(c, 3, "edited");
    });
  }

  it("an event replaced with a self-consistent one is reported at it: the next event no longer chains", async () => {
    const c = await chain();
    const third = c.events[1] as StoredEvent;
    const { hash: _, ...unhashed } = third;
    const forged: AuditEvent = { ...unhashed, details: { fields: ["name"], n: 99 } };
    await t.superuser(
      `UPDATE audit_events SET details = '{"fields": ["name"], "n": 99}', hash = '${eventHash(forged)}' WHERE ${c.where} AND seq = 3`,
    );
    await expectOnly(c, 3, "edited");
  });

  it("a deleted event in the middle is reported as deleted", async () => {
    const c = await chain();
    await t.superuser(`DELETE FROM audit_events WHERE ${c.where} AND seq = 4`);
    await expectOnly(c, 4, "deleted");
  });

  it("a deleted event with the rest renumbered is reported as deleted", async () => {
    const c = await chain();
    await t.superuser(`
      DELETE FROM audit_events WHERE ${c.where} AND seq = 4;
      UPDATE audit_events SET seq = seq + 1000 WHERE ${c.where} AND seq > 4;
      UPDATE audit_events SET seq = seq - 1001 WHERE ${c.where} AND seq > 1000;
      UPDATE audit_chain_heads SET sequence = sequence - 1 WHERE chain_id = '${c.chainId}'`);
    await expectOnly(c, 4, "deleted");
  });

  it("a deleted last event (a truncated tail) shows as a head mismatch", async () => {
    const c = await chain();
    await t.superuser(`DELETE FROM audit_events WHERE ${c.where} AND seq = 6`);
    await expectOnly(c, 6, "head-mismatch");
  });

  it("an edited head shows as a head mismatch", async () => {
    const c = await chain();
    await t.superuser(`UPDATE audit_chain_heads SET hash = '${"c".repeat(64)}' WHERE chain_id = '${c.chainId}'`);
    await expectOnly(c, 6, "head-mismatch");
  });

  /** Inserts a copy of event `seq` as the superuser, at `at`, chained to `prev`, with its hash recomputed. */
  async function insertForged(c: Awaited<ReturnType<typeof chain>>, template: StoredEvent, seq: number, prev: string) {
    const { hash: _, ...unhashed } = template;
    const forged: AuditEvent = { ...unhashed, id: uuidv7(), seq, prev, details: { fields: ["name"], n: 0 } };
    await t.superuser(`
      INSERT INTO audit_events (tenant_id, id, chain_id, seq, v, stream, at, actor_kind, actor_id, action, target_type,
        target_id, subject_ids, details, personal, request_id, cause_kind, cause_id, prev_hash, hash)
      SELECT tenant_id, '${forged.id}', chain_id, ${seq}, v, stream, at, actor_kind, actor_id, action, target_type,
        target_id, subject_ids, '{"fields": ["name"], "n": 0}', personal, request_id, cause_kind, cause_id,
        '${prev}', '${eventHash(forged)}'
      FROM audit_events WHERE ${c.where} AND seq = ${template.seq}`);
  }

  it("an event inserted after the head is reported as inserted", async () => {
    const c = await chain();
    const last = c.events[4] as StoredEvent;
    await insertForged(c, last, 7, last.hash);
    await expectOnly(c, 7, "inserted");
  });

  it("an event inserted in the middle, the rest renumbered and the head moved, is reported as inserted", async () => {
    const c = await chain();
    const second = c.events[0] as StoredEvent;
    await t.superuser(`
      UPDATE audit_events SET seq = seq + 1000 WHERE ${c.where} AND seq >= 3;
      UPDATE audit_events SET seq = seq - 999 WHERE ${c.where} AND seq > 1000;
      UPDATE audit_chain_heads SET sequence = sequence + 1 WHERE chain_id = '${c.chainId}'`);
    await insertForged(c, second, 3, second.hash);
    await expectOnly(c, 3, "inserted");
  });

  it("an inserted event with a made-up hash is reported as inserted", async () => {
    const c = await chain();
    await t.superuser(`
      UPDATE audit_events SET seq = seq + 1000 WHERE ${c.where} AND seq >= 3;
      UPDATE audit_events SET seq = seq - 999 WHERE ${c.where} AND seq > 1000;
      INSERT INTO audit_events (tenant_id, id, chain_id, seq, v, stream, at, actor_kind, actor_id, action, target_type,
        target_id, subject_ids, details, personal, request_id, cause_kind, cause_id, prev_hash, hash)
      SELECT tenant_id, '${uuidv7()}', chain_id, 3, v, stream, at, actor_kind, actor_id, action, target_type,
        target_id, subject_ids, details, personal, request_id, cause_kind, cause_id, prev_hash, '${"d".repeat(64)}'
      FROM audit_events WHERE ${c.where} AND seq = 2`);
    await expectOnly(c, 3, "inserted");
  });

  it("two adjacent events swapped are reported as reordered", async () => {
    const c = await chain();
    await t.superuser(`
      UPDATE audit_events SET seq = 1000 WHERE ${c.where} AND seq = 3;
      UPDATE audit_events SET seq = 3 WHERE ${c.where} AND seq = 4;
      UPDATE audit_events SET seq = 4 WHERE ${c.where} AND seq = 1000`);
    await expectOnly(c, 3, "reordered");
  });

  it("two distant events swapped are reported as reordered", async () => {
    const c = await chain();
    await t.superuser(`
      UPDATE audit_events SET seq = 1000 WHERE ${c.where} AND seq = 2;
      UPDATE audit_events SET seq = 2 WHERE ${c.where} AND seq = 5;
      UPDATE audit_events SET seq = 5 WHERE ${c.where} AND seq = 1000`);
    await expectOnly(c, 2, "reordered");
  });

  it("events whose chain head was deleted are reported as missing-head", async () => {
    const c = await chain();
    await t.superuser(`DELETE FROM audit_chain_heads WHERE chain_id = '${c.chainId}'`);
    await expectOnly(c, 1, "missing-head");
  });

  it("a tampered platform chain is found too", async () => {
    const actor = { kind: "user", id: uuidv7() } as const;
    const event = await t.db.withPlatform((tx) =>
      audit.record(tx, {
        tenantId: null,
        stream: "security",
        actor,
        action: "auth.signed-in",
        target: { type: "user", id: actor.id },
      }),
    );
    await t.superuser(`UPDATE platform_audit_events SET action = 'auth.signed-out' WHERE id = '${event.id}'`);
    const report = await verifyChains(t.db, { stream: "security" });
    expect(report.failures.map((f) => [f.chainId, f.sequence, f.kind])).toEqual([[event.chain, event.seq, "edited"]]);
    await t.superuser(`UPDATE platform_audit_events SET action = 'auth.signed-in' WHERE id = '${event.id}'`);
    expect((await verifyChains(t.db, { stream: "security" })).failures).toEqual([]);
  });

  it("exports a chain as JSON Lines that verify with node:crypto alone", async () => {
    const lines: string[] = [];
    const result = await exportChain(t.db, { tenantId: control.tenantId, stream: "changes" }, (line) => {
      lines.push(line);
    });
    expect(result).toMatchObject({ chainId: control.chainId, events: 6 });
    const { createHash } = await import("node:crypto");
    let prev = "0".repeat(64);
    for (const [i, line] of lines.entries()) {
      expect(line.endsWith("\n")).toBe(true);
      const { hash, ...event } = JSON.parse(line);
      // Canonical: sorted keys, no whitespace; this event holds only ASCII and integers.
      const sortKeys = (v: unknown): unknown =>
        Array.isArray(v)
          ? v.map(sortKeys)
          : v && typeof v === "object"
            ? Object.fromEntries(
                Object.keys(v)
                  .sort()
                  .map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]),
              )
            : v;
      const canonical = JSON.stringify(sortKeys(event));
      expect(`${JSON.stringify(sortKeys({ ...event, hash }))}\n`).toBe(line);
      expect(event.seq).toBe(i + 1);
      expect(event.prev).toBe(prev);
      const digest = createHash("sha256").update(Buffer.from(prev, "hex")).update(canonical, "utf8").digest("hex");
      expect(digest).toBe(hash);
      prev = hash;
    }
    expect(result.lastHash).toBe(prev);
  });
});
