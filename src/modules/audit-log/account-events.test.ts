import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import type { NewEvent, StoredEvent } from "../../platform/audit/index.ts";
import { manualClock } from "../../platform/clock.ts";
import type { TestApp } from "../../platform/http/test-app.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { IdentityDeps } from "../identity/deps.ts";
import { createTenantWithOwner } from "../identity/tenants.ts";
import {
  createIdentityTestDeps,
  createTestUser,
  randomAddress,
  sessionHeaders,
  signIn,
  type TestUser,
} from "../identity/testing.ts";
import { encodeCursor } from "./filters.ts";
import type { EventView } from "./service.ts";
import { buildAuditLogTestApp, createAuditLogTestDeps } from "./testing.ts";

const URL_ = "/api/v1/me/security-events";

describe.each(DATABASE_KINDS)("a person's own security events on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  let t: TestDatabase;
  let deps: IdentityDeps;
  let app: TestApp;
  let me: TestUser;
  let other: TestUser;
  let headers: Record<string, string>;
  /** Events that are mine, and events that are not, by name. */
  const mine: Record<string, string> = {};
  const notMine: Record<string, string> = {};

  const platformEvent = (event: Omit<NewEvent, "tenantId">): Promise<StoredEvent> => {
    clock.advance(1000);
    return deps.db.withPlatform((tx) => deps.audit.record(tx, { ...event, tenantId: null }));
  };

  const failSignIn = (email: string) =>
    app.app.inject({
      method: "POST",
      url: "/api/v1/sessions",
      remoteAddress: randomAddress(),
      headers: { "sec-fetch-site": "same-origin" },
      payload: { email, password: "not the password at all" },
    });

  /** The id of the latest platform event of this action about this person. */
  async function latest(action: string, userId: string): Promise<string> {
    const row = await deps.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .select("id")
        .where("action", "=", action)
        .where("target_type", "in", ["user", "session"])
        .where((eb) => eb.or([eb("actor_id", "=", userId), eb("target_id", "=", userId)]))
        .orderBy("id", "desc")
        .executeTakeFirstOrThrow(),
    );
    return row.id;
  }

  async function pages(limit: number, as = headers): Promise<EventView[]> {
    const items: EventView[] = [];
    let cursor: string | null = null;
    do {
      const response = await app.app.inject({
        method: "GET",
        url: URL_,
        headers: as,
        query: { limit: String(limit), ...(cursor ? { cursor } : {}) },
      });
      expect(response.statusCode, response.body).toBe(200);
      const page = response.json() as { items: EventView[]; nextCursor: string | null };
      items.push(...page.items);
      cursor = page.nextCursor;
    } while (cursor);
    return items;
  }

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    deps = createIdentityTestDeps(t.db, clock);
    app = await buildAuditLogTestApp(deps, createAuditLogTestDeps(deps));
    me = await createTestUser(deps, { email: `me-${uuidv7()}@example.com` });
    other = await createTestUser(deps, { email: `other-${uuidv7()}@example.com` });

    expect((await failSignIn(me.email)).statusCode).toBe(401);
    mine.failedSignIn = await latest("auth.sign-in-failed", me.id);
    clock.advance(1000);
    headers = sessionHeaders((await signIn(app, me.email, me.password)).cookie);
    mine.signedIn = await latest("auth.signed-in", me.id);
    // Aimed at my account by someone else (no subjects): mine through its target.
    mine.resetRequested = (
      await platformEvent({
        stream: "security",
        actor: { kind: "anonymous", id: null },
        action: "auth.password-reset-requested",
        target: { type: "user", id: me.id },
      })
    ).id;
    // With personal details: mine through its subjects, but the details stay sealed.
    mine.withPersonal = (
      await platformEvent({
        stream: "security",
        actor: { kind: "system", id: null },
        action: "auth.email-changed",
        target: { type: "user", id: me.id },
        subjects: [me.id],
        personal: { [me.id]: { previous: "old-address-of-me@example.com" } },
      })
    ).id;
    // About a session, by no one known, naming me among its subjects: mine through its subjects alone.
    mine.bySubject = (
      await platformEvent({
        stream: "security",
        actor: { kind: "anonymous", id: null },
        action: "auth.session-expired",
        target: { type: "session", id: uuidv7() },
        subjects: [me.id],
      })
    ).id;
    // Done as an operator under my own id: mine through its actor.
    mine.asOperator = (
      await platformEvent({
        stream: "security",
        actor: { kind: "operator", id: me.id },
        action: "auth.operator-signed-in",
        target: { type: "session", id: uuidv7() },
      })
    ).id;

    expect((await failSignIn(other.email)).statusCode).toBe(401);
    notMine.othersFailure = await latest("auth.sign-in-failed", other.id);
    await signIn(app, other.email, other.password);
    notMine.othersSignIn = await latest("auth.signed-in", other.id);
    // Mine, but not a security event.
    notMine.changes = (
      await platformEvent({
        stream: "changes",
        actor: { kind: "user", id: me.id },
        action: "profile.updated",
        target: { type: "user", id: me.id },
        subjects: [me.id],
      })
    ).id;
    // An API key's actor id is the key's, never mine, even when it equals nothing of mine.
    notMine.apiKey = (
      await platformEvent({
        stream: "security",
        actor: { kind: "api-key", id: uuidv7() },
        action: "auth.api-key-used",
        target: { type: "api-key", id: uuidv7() },
      })
    ).id;
    // My tenant's events are the tenant's, read through its audit log.
    const tenant = await createTenantWithOwner(deps, {
      userId: me.id,
      tenant: { slug: `mine-${uuidv7().slice(-12)}`, name: "Mine" },
      requestId: uuidv7(),
    });
    notMine.tenant = (
      await deps.db.withTenant({ tenantId: tenant.id }, (tx) =>
        deps.audit.record(tx, {
          tenantId: tenant.id,
          stream: "security",
          actor: { kind: "user", id: tenant.membershipId },
          action: "auth.totp-enrolled",
          target: { type: "user", id: me.id },
          subjects: [me.id],
        }),
      )
    ).id;
  });
  afterAll(async () => {
    await app?.close();
    await t?.close();
  });

  it("lists my security events, newest first, and nobody else's", async () => {
    const items = await pages(200);
    const ids = items.map((e) => e.id);
    for (const [name, id] of Object.entries(mine)) expect(ids, name).toContain(id);
    for (const [name, id] of Object.entries(notMine)) expect(ids, name).not.toContain(id);
    expect(ids).toEqual([...ids].sort().reverse());
    for (const event of items) {
      expect(event.chain).toMatch(/^platform\/security\/\d\d$/);
      const concernsMe =
        event.subjects.includes(me.id) ||
        (event.target.type === "user" && event.target.id === me.id) ||
        ((event.actor.kind === "user" || event.actor.kind === "operator") && event.actor.id === me.id);
      expect(concernsMe, event.action).toBe(true);
    }
    const failed = items.find((e) => e.id === mine.failedSignIn);
    expect(failed).toMatchObject({ action: "auth.sign-in-failed", details: { reason: "wrong-password" } });
  });

  it("never returns personal details", async () => {
    const response = await app.app.inject({ method: "GET", url: URL_, headers, query: { limit: "200" } });
    expect(response.body).not.toContain("old-address-of-me");
    expect(response.body).not.toContain(me.email);
    const event = (response.json().items as EventView[]).find((e) => e.id === mine.withPersonal);
    expect(event).toBeDefined();
    expect(Object.keys(event as object)).not.toContain("personal");
  });

  it("pages with an opaque cursor, every event once", async () => {
    const all = (await pages(200)).map((e) => e.id);
    expect(all.length).toBeGreaterThanOrEqual(Object.keys(mine).length);
    expect((await pages(1)).map((e) => e.id)).toEqual(all);
    expect((await pages(2)).map((e) => e.id)).toEqual(all);
  });

  it("refuses the anonymous and bad input", async () => {
    expect((await app.app.inject({ method: "GET", url: URL_ })).statusCode).toBe(401);
    const bad: Record<string, string>[] = [
      { limit: "0" },
      { limit: "201" },
      { cursor: encodeCursor("nope") },
      { cursor: "%%%" },
    ];
    for (const query of bad) {
      const response = await app.app.inject({ method: "GET", url: URL_, headers, query });
      expect(response.statusCode, JSON.stringify(query)).toBe(400);
    }
  });
});
