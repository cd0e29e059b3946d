import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { Validator } from "@seriousme/openapi-schema-validator";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { type CheckpointRecord, headLeafHash, signatureValid } from "../../platform/audit/checkpoint-record.ts";
import { createCheckpoint } from "../../platform/audit/checkpoints.ts";
import { canonicalize, eventHash, type NewEvent, type StoredEvent } from "../../platform/audit/index.ts";
import { verifyInclusion } from "../../platform/audit/merkle.ts";
import { manualClock } from "../../platform/clock.ts";
import { SigningKey } from "../../platform/crypto/signing-key.ts";
import type { TestApp } from "../../platform/http/test-app.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { createRateLimiter } from "../../platform/ratelimit/limiter.ts";
import type { IdentityDeps } from "../identity/deps.ts";
import { addMembership } from "../identity/memberships.ts";
import type { MembershipRole } from "../identity/roles.ts";
import { createTenantWithOwner } from "../identity/tenants.ts";
import { createIdentityTestDeps, createTestUser, sessionHeaders, signIn } from "../identity/testing.ts";
import { CSV_COLUMNS } from "./csv.ts";
import { encodeCursor } from "./filters.ts";
import { VERIFICATIONS_PER_TENANT } from "./routes.ts";
import type { EventView } from "./service.ts";
import { buildAuditLogTestApp, createAuditLogTestDeps, parseCsv } from "./testing.ts";

type Headers = Record<string, string>;

interface Org {
  id: string;
  /** Session headers per role. */
  as: Record<"owner" | "admin" | "member", Headers>;
  /** The membership ids, the actors of the tenant's chains. */
  memberships: Record<"owner" | "admin" | "member", string>;
}

describe.each(DATABASE_KINDS)("the audit log API on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  let t: TestDatabase;
  let deps: IdentityDeps;
  let log: ReturnType<typeof createAuditLogTestDeps>;
  let app: TestApp;
  let A: Org;
  let B: Org;
  /** Events written into A by the test, by name. */
  const seeded: Record<string, StoredEvent> = {};
  const contact = uuidv7();
  const otherContact = uuidv7();
  const subject = uuidv7();
  const apiKey = uuidv7();
  const marker = `b-only-${uuidv7()}`;

  const unique = () => uuidv7().slice(-12);

  async function person(): Promise<{ id: string; headers: Headers }> {
    const user = await createTestUser(deps, { email: `audit-${unique()}@example.com` });
    const session = await signIn(app, user.email, user.password);
    return { id: user.id, headers: sessionHeaders(session.cookie) };
  }

  async function org(): Promise<Org> {
    const owner = await person();
    const tenant = await createTenantWithOwner(deps, {
      userId: owner.id,
      tenant: { slug: `audit-${unique()}`, name: `Audit ${unique()}` },
      requestId: uuidv7(),
    });
    const join = async (role: MembershipRole) => {
      const who = await person();
      const membershipId = await deps.db.withTenant({ tenantId: tenant.id }, (tx) =>
        addMembership(tx, clock.now(), { tenantId: tenant.id, userId: who.id, role, invitedBy: null }),
      );
      return { headers: who.headers, membershipId };
    };
    const admin = await join("admin");
    const member = await join("member");
    return {
      id: tenant.id,
      as: { owner: owner.headers, admin: admin.headers, member: member.headers },
      memberships: { owner: tenant.membershipId, admin: admin.membershipId, member: member.membershipId },
    };
  }

  function record(tenantId: string, event: Omit<NewEvent, "tenantId">): Promise<StoredEvent> {
    clock.advance(60_000);
    return deps.db.withTenant({ tenantId }, (tx) => deps.audit.record(tx, { ...event, tenantId }));
  }

  const get = (url: string, headers: Headers, query: Record<string, string> = {}) =>
    app.app.inject({ method: "GET", url, headers, query });
  const base = (o: Org) => `/api/v1/tenants/${o.id}/audit`;

  /** Every page of A's events for the query, as the admin reads them. */
  async function allPages(query: Record<string, string>, limit = 200): Promise<EventView[]> {
    const items: EventView[] = [];
    let cursor: string | null = null;
    for (let pages = 0; pages < 100; pages++) {
      const response = await get(`${base(A)}/events`, A.as.admin, {
        ...query,
        limit: String(limit),
        ...(cursor ? { cursor } : {}),
      });
      expect(response.statusCode, response.body).toBe(200);
      const page = response.json() as { items: EventView[]; nextCursor: string | null };
      items.push(...page.items);
      cursor = page.nextCursor;
      if (!cursor) return items;
    }
    throw new Error("more than 100 pages");
  }

  /** A's events as the database holds them, newest first, read as A (the ground truth of the filters). */
  async function truth(): Promise<{ id: string; action: string }[]> {
    return deps.db.withTenant({ tenantId: A.id }, (tx) =>
      tx.selectFrom("audit_events").select(["id", "action"]).orderBy("id", "desc").execute(),
    );
  }

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    deps = createIdentityTestDeps(t.db, clock);
    log = createAuditLogTestDeps(deps);
    app = await buildAuditLogTestApp(deps, log);
    A = await org();
    B = await org();
    const member = { kind: "user" as const, id: A.memberships.member };
    seeded.created = await record(A.id, {
      stream: "changes",
      actor: member,
      action: "record.created",
      target: { type: "contact", id: contact },
      subjects: [subject],
    });
    seeded.updated = await record(A.id, {
      stream: "changes",
      actor: { kind: "api-key", id: apiKey },
      action: "record.updated",
      target: { type: "contact", id: contact },
      subjects: [subject],
      details: { fields: ["name"] },
      requestId: '=HYPERLINK("https://evil.example")',
    });
    seeded.enrolled = await record(A.id, {
      stream: "security",
      actor: member,
      action: "auth.totp-enrolled",
      target: { type: "membership", id: A.memberships.member },
    });
    seeded.denied = await record(A.id, {
      stream: "security",
      actor: { kind: "anonymous", id: null },
      action: "auth.sign-in-failed",
      target: { type: "user", id: null },
      details: { reason: "wrong-password" },
    });
    seeded.read = await record(A.id, {
      stream: "access",
      actor: member,
      action: "access.contact-read",
      target: { type: "contact", id: otherContact },
      subjects: [subject],
      personal: { [subject]: { email: "private-person@example.com" } },
    });
    await record(B.id, {
      stream: "changes",
      actor: { kind: "user", id: B.memberships.member },
      action: "record.created",
      target: { type: "contact", id: uuidv7() },
      details: { marker },
    });
  });
  afterAll(async () => {
    await app?.close();
    await t?.close();
    if (log) rmSync(log.checkpoints.dir, { recursive: true, force: true });
  });

  it("documents its operations in a valid OpenAPI document, each with its permission", async () => {
    const doc = (await app.app.inject({ url: "/openapi.json" })).json();
    const result = await new Validator().validate(doc);
    expect(result.errors).toBeUndefined();
    expect(doc.paths["/api/v1/tenants/{tenantId}/audit/events"].get["x-charter-permission"]).toBe("tenant:audit.read");
    expect(doc.paths["/api/v1/tenants/{tenantId}/audit/verify"].post["x-charter-permission"]).toBe("tenant:audit.read");
    expect(doc.paths["/api/v1/me/security-events"].get["x-charter-permission"]).toBe("authenticated");
  });

  describe("listing events", () => {
    it("lists every event of the tenant and nothing else, newest first, for admins and owners only", async () => {
      const items = await allPages({});
      expect(items.map((e) => e.id)).toEqual((await truth()).map((e) => e.id));
      expect(items.every((e) => e.chain.startsWith(`tenant/${A.id}/`))).toBe(true);
      expect(JSON.stringify(items)).not.toContain(marker);
      expect(JSON.stringify(items)).not.toContain(B.id);
      const owner = await get(`${base(A)}/events`, A.as.owner);
      expect(owner.statusCode).toBe(200);
      const member = await get(`${base(A)}/events`, A.as.member);
      expect(member.statusCode).toBe(403);
      // A's admin is no one in B: B is not there for them.
      const other = await get(`${base(B)}/events`, A.as.admin);
      expect(other.statusCode).toBe(404);
      expect(other.body).not.toContain(marker);
    });

    it("shows the non-personal fields of an event and never its personal details", async () => {
      const [read] = await allPages({ action: "access.contact-read" });
      expect(read).toEqual({
        id: seeded.read?.id,
        chain: `tenant/${A.id}/access`,
        stream: "access",
        seq: seeded.read?.seq,
        at: seeded.read?.at,
        actor: { kind: "user", id: A.memberships.member },
        action: "access.contact-read",
        target: { type: "contact", id: otherContact },
        subjects: [subject],
        details: {},
        requestId: null,
        cause: null,
        hash: seeded.read?.hash,
      });
      const raw = await get(`${base(A)}/events`, A.as.admin, { stream: "access" });
      expect(raw.body).not.toContain("private-person");
      expect(raw.body).not.toContain(Object.values(seeded.read?.personal ?? {})[0]);
    });

    it("filters by stream, actor, action (exact or prefix), target and time", async () => {
      const all = await allPages({});
      const ids = (events: EventView[]) => events.map((e) => e.id);
      const expectFilter = async (query: Record<string, string>, keep: (e: EventView) => boolean) => {
        const expected = ids(all.filter(keep));
        expect(expected.length, `the filter ${JSON.stringify(query)} has something to find`).toBeGreaterThan(0);
        expect(expected.length, `the filter ${JSON.stringify(query)} leaves something out`).toBeLessThan(all.length);
        expect(ids(await allPages(query))).toEqual(expected);
      };
      await expectFilter({ stream: "security" }, (e) => e.stream === "security");
      await expectFilter({ stream: "changes" }, (e) => e.stream === "changes");
      await expectFilter({ actorId: A.memberships.member }, (e) => e.actor.id === A.memberships.member);
      await expectFilter({ actorKind: "api-key" }, (e) => e.actor.kind === "api-key");
      await expectFilter({ actorKind: "anonymous" }, (e) => e.actor.kind === "anonymous");
      await expectFilter({ action: "record.updated" }, (e) => e.action === "record.updated");
      await expectFilter({ action: "auth.*" }, (e) => e.action.startsWith("auth."));
      await expectFilter({ action: "membership.*" }, (e) => e.action.startsWith("membership."));
      await expectFilter({ targetType: "contact" }, (e) => e.target.type === "contact");
      await expectFilter({ targetType: "contact", targetId: contact }, (e) => e.target.id === contact);
      const { at: from } = seeded.updated as StoredEvent;
      const { at: to } = seeded.read as StoredEvent;
      await expectFilter({ from }, (e) => e.at >= from);
      await expectFilter({ to }, (e) => e.at < to);
      await expectFilter({ from, to }, (e) => e.at >= from && e.at < to);
      // Filters combine.
      await expectFilter(
        { stream: "changes", actorId: A.memberships.member, action: "record.*" },
        (e) => e.stream === "changes" && e.actor.id === A.memberships.member && e.action.startsWith("record."),
      );
      expect(ids(await allPages({ action: "auth.signed-in" }))).toEqual([]);
      // A time with an offset is the same instant.
      const offset = new Date(from).toISOString().replace("Z", "+00:00");
      expect(ids(await allPages({ from: offset }))).toEqual(ids(await allPages({ from })));
    });

    it("pages with an opaque cursor: every event once, in order, whatever the page size", async () => {
      const all = await allPages({});
      for (const limit of [1, 2, 3, 7]) {
        expect((await allPages({}, limit)).map((e) => e.id)).toEqual(all.map((e) => e.id));
      }
      const first = (await get(`${base(A)}/events`, A.as.admin, { limit: "2" })).json();
      expect(first.items).toHaveLength(2);
      expect(first.nextCursor).toEqual(expect.any(String));
      const filtered = await allPages({ stream: "security" }, 1);
      expect(filtered.map((e) => e.stream)).toEqual(filtered.map(() => "security"));
    });

    it("refuses bad input with a clear 400", async () => {
      const bad: Record<string, string>[] = [
        { limit: "201" },
        { limit: "0" },
        { stream: "everything" },
        { actorId: "not-a-uuid" },
        { action: "auth.*.*" },
        { action: "AUTH.signed-in" },
        { action: "auth.sign_in" },
        { action: "auth%" },
        { from: "yesterday" },
        { from: "2026-04-02T00:00:00Z", to: "2026-04-01T00:00:00Z" },
        { cursor: "not a cursor" },
        { cursor: encodeCursor("not-a-uuid") },
      ];
      for (const query of bad) {
        const response = await get(`${base(A)}/events`, A.as.admin, query);
        expect(response.statusCode, JSON.stringify(query)).toBe(400);
        expect(response.headers["content-type"]).toContain("application/problem+json");
      }
    });
  });

  /** The audit.exported and audit.verified events of the tenant, oldest first. */
  async function auditEvents(o: Org) {
    const rows = await deps.db.withTenant({ tenantId: o.id }, (tx) =>
      tx
        .selectFrom("audit_events")
        .select(["id", "action", "actor_kind", "actor_id", "details", "chain_id"])
        .where("action", "like", "audit.%")
        .orderBy("id")
        .execute(),
    );
    return rows.map((r) => ({
      id: r.id,
      action: r.action,
      actor: { kind: r.actor_kind, id: r.actor_id },
      details: r.details,
      chain: r.chain_id,
    }));
  }

  describe("the CSV export", () => {
    it("streams the filtered events as RFC 4180 CSV with formulas defused, and records the export", async () => {
      const before = (await auditEvents(A)).length;
      const response = await get(`${base(A)}/export.csv`, A.as.admin, { stream: "changes" });
      expect(response.statusCode, response.body).toBe(200);
      expect(response.headers["content-type"]).toMatch(/^text\/csv; charset=utf-8/);
      expect(response.headers["content-disposition"]).toBe(`attachment; filename="audit-${A.id}.csv"`);
      const [header, ...rows] = parseCsv(response.body);
      expect(header).toEqual([...CSV_COLUMNS]);
      const column = (name: (typeof CSV_COLUMNS)[number]) => CSV_COLUMNS.indexOf(name);
      expect(rows.map((row) => row[column("id")])).toEqual((await allPages({ stream: "changes" })).map((e) => e.id));
      const updated = rows.find((row) => row[column("id")] === seeded.updated?.id) as string[];
      expect(updated[column("request_id")]).toBe('\'=HYPERLINK("https://evil.example")');
      expect(updated[column("details")]).toBe('{"fields":["name"]}');
      expect(updated[column("subjects")]).toBe(subject);
      expect(response.body).not.toContain(marker);

      const exported = (await auditEvents(A)).slice(before);
      expect(exported).toEqual([
        {
          id: expect.any(String),
          action: "audit.exported",
          actor: { kind: "user", id: A.memberships.admin },
          details: { format: "csv", filters: { stream: "changes" } },
          chain: `tenant/${A.id}/security`,
        },
      ]);
    });

    it("refuses a member, and bad filters before anything is recorded", async () => {
      const before = (await auditEvents(A)).length;
      expect((await get(`${base(A)}/export.csv`, A.as.member)).statusCode).toBe(403);
      expect((await get(`${base(A)}/export.csv`, A.as.admin, { action: "=cmd" })).statusCode).toBe(400);
      expect((await get(`${base(B)}/export.csv`, A.as.owner)).statusCode).toBe(404);
      expect(await auditEvents(A)).toHaveLength(before);
    });
  });

  describe("the JSON Lines export", () => {
    /** Checks one chain's part of an export: its hash chain, and each checkpoint's signature and inclusion. */
    function verifyChainLines(lines: Record<string, unknown>[]) {
      let prev = "0".repeat(64);
      const hashes = new Map<number, string>();
      let checkpoints = 0;
      for (const line of lines) {
        if ("checkpoint" in line) {
          const c = line.checkpoint as {
            record: CheckpointRecord;
            sig: string;
            head: { chain: string; seq: number; hash: string };
            index: number;
            proof: string[];
          };
          expect(signatureValid(c, log.signingKey)).toBe(true);
          expect(hashes.get(c.head.seq)).toBe(c.head.hash);
          expect(verifyInclusion(headLeafHash(c.head), c.index, c.record.leaves, c.proof, c.record.root)).toBe(true);
          checkpoints += 1;
          continue;
        }
        const { hash, ...event } = line as { hash: string; seq: number; prev: string };
        expect(event.prev).toBe(prev);
        expect(event.seq).toBe(hashes.size + 1);
        const digest = createHash("sha256")
          .update(Buffer.from(prev, "hex"))
          .update(canonicalize(event as never), "utf8")
          .digest("hex");
        expect(digest).toBe(hash);
        hashes.set(event.seq, hash);
        prev = hash;
      }
      return { events: hashes.size, checkpoints };
    }

    it("exports every chain of the tenant with the checkpoints that cover it, verifiable on its own", async () => {
      await createCheckpoint({ db: t.db, clock, dir: log.checkpoints.dir, signingKey: log.signingKey });
      await record(A.id, {
        stream: "changes",
        actor: { kind: "user", id: A.memberships.owner },
        action: "record.deleted",
        target: { type: "contact", id: contact },
      });
      await createCheckpoint({ db: t.db, clock, dir: log.checkpoints.dir, signingKey: log.signingKey });
      const heads = await deps.db.withPlatform((tx) =>
        tx
          .selectFrom("audit_chain_heads")
          .select(["chain_id", "sequence"])
          .where("chain_tenant_id", "=", A.id)
          .execute(),
      );
      const response = await get(`${base(A)}/export.jsonl`, A.as.owner);
      expect(response.statusCode, response.body).toBe(200);
      expect(response.headers["content-type"]).toBe("application/jsonl; charset=utf-8");
      expect(response.body).not.toContain(marker);
      expect(response.body).not.toContain(B.id);
      const lines = response.body
        .trimEnd()
        .split("\n")
        .map((text) => {
          const parsed = JSON.parse(text) as Record<string, unknown>;
          expect(canonicalize(parsed as never)).toBe(text);
          return parsed;
        });
      const chainOf = (line: Record<string, unknown>) =>
        "checkpoint" in line ? (line.checkpoint as { head: { chain: string } }).head.chain : (line.chain as string);
      const chains = [...new Set(lines.map(chainOf))];
      expect(chains).toEqual(["changes", "security", "access"].map((s) => `tenant/${A.id}/${s}`));
      for (const chain of chains) {
        const part = lines.filter((line) => chainOf(line) === chain);
        // Each chain whole, in one block: its events, then its checkpoints.
        const first = lines.findIndex((line) => chainOf(line) === chain);
        expect(lines.slice(first, first + part.length)).toEqual(part);
        const { events, checkpoints } = verifyChainLines(part);
        // The export was recorded before it was read: the security chain holds one more event than its head.
        const head = Number(heads.find((h) => h.chain_id === chain)?.sequence);
        expect(events).toBe(chain.endsWith("/security") ? head + 1 : head);
        expect(checkpoints).toBeGreaterThanOrEqual(1);
      }
      const exported = (await auditEvents(A)).at(-1);
      expect(exported).toMatchObject({ action: "audit.exported", details: { format: "jsonl" } });
    });

    it("exports one stream's chain when asked", async () => {
      const response = await get(`${base(A)}/export.jsonl`, A.as.admin, { stream: "access" });
      expect(response.statusCode).toBe(200);
      const lines = response.body
        .trimEnd()
        .split("\n")
        .map((text) => JSON.parse(text) as Record<string, unknown>);
      expect(lines.filter((l) => !("checkpoint" in l)).map((l) => l.id)).toEqual([seeded.read?.id]);
      // The first checkpoint to sign its only event, and the latest one that names the chain.
      expect(verifyChainLines(lines)).toEqual({ events: 1, checkpoints: 2 });
      expect((await auditEvents(A)).at(-1)).toMatchObject({ details: { format: "jsonl", stream: "access" } });
    });

    it("refuses to export, and records nothing, while the checkpoints do not verify", async () => {
      const before = (await auditEvents(A)).length;
      // Checked against another key, the store's signatures do not verify.
      const otherKey = new SigningKey(generateKeyPairSync("ed25519").privateKey);
      const forged = { ...log, checkpoints: { ...log.checkpoints, verifier: otherKey } };
      const limiter = createRateLimiter({ db: t.db, clock, hashKey: randomBytes(32) });
      const other = await buildAuditLogTestApp({ ...deps, rateLimiter: limiter }, forged);
      try {
        const response = await other.app.inject({ method: "GET", url: `${base(A)}/export.jsonl`, headers: A.as.admin });
        expect(response.statusCode).toBe(409);
        expect(response.json()).toMatchObject({ type: "/problems/conflict" });
      } finally {
        await other.close();
      }
      expect(await auditEvents(A)).toHaveLength(before);
    });
  });

  describe("verification", () => {
    const verify = (o: Org, headers: Headers) => app.app.inject({ method: "POST", url: `${base(o)}/verify`, headers });

    it("passes an intact log, names the latest signed checkpoint, and records the verification", async () => {
      const checkpoint = await createCheckpoint({
        db: t.db,
        clock,
        dir: log.checkpoints.dir,
        signingKey: log.signingKey,
      });
      const response = await verify(A, A.as.admin);
      expect(response.statusCode, response.body).toBe(200);
      const result = response.json();
      expect(result).toMatchObject({ ok: true, failures: [], checked: { chains: 3 } });
      expect(result.checked.events).toBeGreaterThan(5);
      expect(result.checked.checkpoints).toBe(checkpoint.record.seq);
      expect(result.latestCheckpoint).toEqual({
        record: checkpoint.record,
        signature: checkpoint.sig,
        hash: checkpoint.hash,
      });
      expect(
        signatureValid(
          { record: result.latestCheckpoint.record, sig: result.latestCheckpoint.signature },
          log.signingKey,
        ),
      ).toBe(true);
      expect((await auditEvents(A)).at(-1)).toMatchObject({
        action: "audit.verified",
        actor: { kind: "user", id: A.memberships.admin },
        details: { ok: true, failures: 0, checkpoint: checkpoint.record.seq },
      });
      expect((await verify(A, A.as.member)).statusCode).toBe(403);
    });

    it("finds an edited event, and a rewrite with every hash recomputed that only the checkpoints catch", async () => {
      const C = await org();
      const first = await record(C.id, {
        stream: "changes",
        actor: { kind: "user", id: C.memberships.owner },
        action: "record.created",
        target: { type: "contact", id: uuidv7() },
      });
      const last = await record(C.id, {
        stream: "changes",
        actor: { kind: "user", id: C.memberships.owner },
        action: "record.deleted",
        target: { type: "contact", id: uuidv7() },
      });
      await createCheckpoint({ db: t.db, clock, dir: log.checkpoints.dir, signingKey: log.signingKey });
      expect((await verify(C, C.as.owner)).json()).toMatchObject({ ok: true, failures: [] });

      await t.superuser(`UPDATE audit_events SET details = '{"edited": 1}' WHERE id = '${first.id}'`);
      const edited = (await verify(C, C.as.owner)).json();
      expect(edited.ok).toBe(false);
      expect(edited.failures).toContainEqual(
        expect.objectContaining({ chain: first.chain, sequence: first.seq, kind: "edited" }),
      );
      // Other tenants' verification does not see C's trouble.
      expect((await verify(A, A.as.owner)).json()).toMatchObject({ ok: true, failures: [] });
      await t.superuser(`UPDATE audit_events SET details = '{}' WHERE id = '${first.id}'`);
      expect((await verify(C, C.as.owner)).json()).toMatchObject({ ok: true, failures: [] });

      // The last event rewritten, its hash recomputed and the head moved with it: the chain alone verifies.
      const { hash: _, ...unhashed } = last;
      const forgedHash = eventHash({ ...unhashed, details: { forged: 1 } });
      await t.superuser(`
        UPDATE audit_events SET details = '{"forged": 1}', hash = '${forgedHash}' WHERE id = '${last.id}';
        UPDATE audit_chain_heads SET hash = '${forgedHash}' WHERE chain_id = '${last.chain}'`);
      const rewritten = (await verify(C, C.as.owner)).json();
      expect(rewritten.ok).toBe(false);
      expect(rewritten.failures).toEqual([
        expect.objectContaining({ chain: last.chain, sequence: last.seq, kind: "chain-rewritten" }),
      ]);
      expect((await auditEvents(C)).at(-1)).toMatchObject({
        action: "audit.verified",
        details: { ok: false, failures: 1 },
      });
      // A's admin is told nothing of C's failures.
      const fromA = (await verify(A, A.as.admin)).json();
      expect(fromA).toMatchObject({ ok: true, failures: [] });
      expect(JSON.stringify(fromA)).not.toContain(C.id);
    });

    it("is limited per tenant, answered 429 with Retry-After", async () => {
      const D = await org();
      for (let i = 0; i < VERIFICATIONS_PER_TENANT.limit; i++) {
        expect((await verify(D, D.as.owner)).statusCode).toBe(200);
      }
      const refused = await verify(D, D.as.admin);
      expect(refused.statusCode).toBe(429);
      expect(Number(refused.headers["retry-after"])).toBeGreaterThan(0);
      // Another tenant keeps its own budget.
      expect((await verify(A, A.as.owner)).statusCode).toBe(200);
    });
  });
});
