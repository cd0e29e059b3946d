import { randomBytes } from "node:crypto";
import type { LightMyRequestResponse } from "fastify";
import { beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { newApiKey } from "./api-keys.ts";
import { createTestUser, sessionHeaders, signIn, useIdentityTestApp } from "./testing.ts";

type Headers = Record<string, string>;

interface Person {
  id: string;
  email: string;
  headers: Headers;
}

describe.each(DATABASE_KINDS)("tenants, members and invitations on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);
  // Fresh rate-limit windows (the longest are an hour) for each test, so sign-ins never run into another test's budget.
  beforeEach(() => clock.advance(60 * 60_000 + 1000));

  const unique = () => randomBytes(5).toString("hex");

  async function person(options: { verified?: boolean; name?: string } = {}): Promise<Person> {
    const user = await createTestUser(world.deps, {
      email: `p-${unique()}@example.com`,
      displayName: options.name ?? `Person ${unique()}`,
      ...(options.verified === undefined ? {} : { verified: options.verified }),
    });
    const session = await signIn(world.app, user.email, user.password);
    return { id: user.id, email: user.email, headers: sessionHeaders(session.cookie) };
  }

  const call = (method: "GET" | "POST" | "PATCH" | "DELETE", url: string, headers: Headers, payload?: object) =>
    world.app.app.inject({ method, url, headers, ...(payload ? { payload } : {}) });

  async function createOrg(owner: Person): Promise<string> {
    const response = await call("POST", "/api/v1/tenants", owner.headers, { slug: `s-${unique()}`, name: "Acme" });
    expect(response.statusCode, response.body).toBe(201);
    return response.json().id;
  }

  /** The token of the newest invitation mailed to `email`, read from the outbox as the invitee would. */
  async function mailedToken(email: string): Promise<string> {
    const mail = (await world.deps.mailer.outbox()).find(
      (entry) => entry.to === email && entry.template === "member-invitation",
    );
    const token = /#token=([^\s]+)/.exec(mail?.rendered?.text ?? "")?.[1];
    if (!token) throw new Error("no invitation mailed");
    return token;
  }

  async function invite(by: Person, tenantId: string, email: string, role: string): Promise<string> {
    const response = await call("POST", `/api/v1/tenants/${tenantId}/invitations`, by.headers, { email, role });
    expect(response.statusCode, response.body).toBe(201);
    return mailedToken(email.toLowerCase());
  }

  const accept = (who: Person, token: string) => call("POST", "/api/v1/invitations/accept", who.headers, { token });

  /** A new person who joined `tenantId` with `role` through an invitation. */
  async function joined(owner: Person, tenantId: string, role: string, options: { name?: string } = {}) {
    const member = await person(options);
    const response = await accept(member, await invite(owner, tenantId, member.email, role));
    expect(response.statusCode, response.body).toBe(200);
    return { ...member, membershipId: response.json().membershipId as string };
  }

  const members = async (who: Person, tenantId: string) =>
    (await call("GET", `/api/v1/tenants/${tenantId}/members`, who.headers)).json().items as {
      id: string;
      role: string;
    }[];

  const tenantEvents = (tenantId: string) =>
    world.t.db.withTenant({ tenantId }, (tx) =>
      tx
        .selectFrom("audit_events")
        .select(["action", "actor_kind", "actor_id", "target_id", "details"])
        .where("tenant_id", "=", tenantId)
        .orderBy("seq")
        .execute(),
    );

  const platformEvents = (actorId: string) =>
    world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .select(["action", "actor_kind", "details", "target_id"])
        .where("actor_id", "=", actorId)
        .orderBy("seq")
        .execute(),
    );

  function expectStatus(response: LightMyRequestResponse, status: number, type?: string) {
    expect(response.statusCode, response.body).toBe(status);
    if (type) expect(response.json().type).toBe(`/problems/${type}`);
  }

  it("the creator of a tenant becomes its owner, in one transaction with its events", async () => {
    const ada = await person();
    const response = await call("POST", "/api/v1/tenants", ada.headers, {
      slug: `s-${unique()}`,
      name: "Acme",
      timeZone: "Europe/Paris",
    });
    expectStatus(response, 201);
    const tenant = response.json();
    expect(tenant).toMatchObject({ name: "Acme", status: "active", settings: { timeZone: "Europe/Paris" } });
    const mine = await call("GET", "/api/v1/me/tenants", ada.headers);
    expect(mine.json().items).toEqual([
      { id: tenant.id, slug: tenant.slug, name: "Acme", status: "active", role: "owner" },
    ]);
    const [self] = await members(ada, tenant.id);
    expect(self?.role).toBe("owner");
    const events = await tenantEvents(tenant.id);
    expect(events.map((e) => [e.action, e.actor_kind, e.actor_id])).toEqual([
      ["tenant.created", "user", self?.id],
      ["membership.joined", "user", self?.id],
    ]);
  });

  it("refuses a taken slug (409), an unverified address (403) and an operator (403)", async () => {
    const ada = await person();
    const slug = `s-${unique()}`;
    expectStatus(await call("POST", "/api/v1/tenants", ada.headers, { slug, name: "One" }), 201);
    expectStatus(await call("POST", "/api/v1/tenants", ada.headers, { slug, name: "Two" }), 409, "conflict");
    const unverified = await person({ verified: false });
    const refused = await call("POST", "/api/v1/tenants", unverified.headers, { slug: `s-${unique()}`, name: "X" });
    expectStatus(refused, 403, "forbidden");
    expect((await call("GET", "/api/v1/me/tenants", unverified.headers)).json().items).toEqual([]);
    const operator = await person();
    await world.t.db.withPlatform((tx) =>
      tx.insertInto("operators").values({ user_id: operator.id, created_at: clock.now() }).execute(),
    );
    const byOperator = await call("POST", "/api/v1/tenants", operator.headers, { slug: `s-${unique()}`, name: "Op" });
    expectStatus(byOperator, 403, "forbidden");
  });

  it("reads and changes settings (guest sharing included), audited; a member may read but not change them", async () => {
    const owner = await person();
    const tenantId = await createOrg(owner);
    const changed = await call("PATCH", `/api/v1/tenants/${tenantId}/settings`, owner.headers, {
      guestSharing: false,
      locale: "fr",
    });
    expectStatus(changed, 200);
    expect(changed.json().settings).toEqual({ timeZone: "UTC", locale: "fr", guestSharing: false });
    const event = (await tenantEvents(tenantId)).find((e) => e.action === "tenant.settings-changed");
    expect(event?.details).toEqual({
      fields: ["locale", "guestSharing"],
      from: { locale: "en", guestSharing: true },
      to: { locale: "fr", guestSharing: false },
    });
    const member = await joined(owner, tenantId, "member");
    expectStatus(await call("GET", `/api/v1/tenants/${tenantId}`, member.headers), 200);
    const refused = await call("PATCH", `/api/v1/tenants/${tenantId}/settings`, member.headers, { locale: "de" });
    expectStatus(refused, 403, "forbidden");
  });

  it("members see each other's display name, avatar and role only (T7), page by page", async () => {
    const owner = await person({ name: "Olive Owner" });
    const tenantId = await createOrg(owner);
    const viewer = await joined(owner, tenantId, "viewer", { name: "Vic Viewer" });
    const first = await call("GET", `/api/v1/tenants/${tenantId}/members?limit=1`, viewer.headers);
    expectStatus(first, 200);
    const page = first.json();
    expect(page.items).toHaveLength(1);
    expect(Object.keys(page.items[0]).sort()).toEqual(["avatar", "displayName", "id", "joinedAt", "role"]);
    const second = await call(
      "GET",
      `/api/v1/tenants/${tenantId}/members?limit=1&cursor=${page.nextCursor}`,
      viewer.headers,
    );
    expect(second.json().nextCursor).toBeNull();
    const all = [...page.items, ...second.json().items];
    expect(all.map((m: { displayName: string; role: string }) => [m.displayName, m.role])).toEqual([
      ["Olive Owner", "owner"],
      ["Vic Viewer", "viewer"],
    ]);
    for (const body of [first.body, second.body]) {
      expect(body).not.toContain("@");
      expect(body).not.toContain(owner.id);
      expect(body).not.toContain(viewer.id);
    }
  });

  it("rank rules: an admin cannot grant owner, make an admin owner or demote an owner; a member cannot manage", async () => {
    const owner = await person();
    const tenantId = await createOrg(owner);
    const [self] = await members(owner, tenantId);
    const admin = await joined(owner, tenantId, "admin");
    const other = await joined(owner, tenantId, "admin");
    const member = await joined(owner, tenantId, "member");
    const patch = (by: Person, membershipId: string, role: string) =>
      call("PATCH", `/api/v1/tenants/${tenantId}/members/${membershipId}`, by.headers, { role });
    expectStatus(await patch(admin, member.membershipId, "owner"), 403, "forbidden");
    expectStatus(await patch(admin, other.membershipId, "owner"), 403, "forbidden");
    expectStatus(await patch(admin, self?.id ?? "", "admin"), 403, "forbidden");
    expectStatus(await patch(member, other.membershipId, "viewer"), 403, "forbidden");
    const promoted = await patch(admin, member.membershipId, "admin");
    expectStatus(promoted, 200);
    expect(promoted.json()).toMatchObject({ id: member.membershipId, role: "admin" });
    expectStatus(await patch(owner, other.membershipId, "owner"), 200);
    const roles = Object.fromEntries((await members(owner, tenantId)).map((m) => [m.id, m.role]));
    expect(roles).toEqual({
      [self?.id ?? ""]: "owner",
      [admin.membershipId]: "admin",
      [other.membershipId]: "owner",
      [member.membershipId]: "admin",
    });
    // The refusals went to the admin's own platform chain; the tenant's chain holds the changes only.
    const refusals = (await platformEvents(admin.id)).filter((e) => e.action === "membership.change-refused");
    expect(refusals.map((e) => e.details)).toEqual([
      { tenant: tenantId, operation: "role-change", reason: "rank" },
      { tenant: tenantId, operation: "role-change", reason: "rank" },
      { tenant: tenantId, operation: "role-change", reason: "rank" },
    ]);
    const changes = (await tenantEvents(tenantId)).filter((e) => e.action === "membership.role-changed");
    expect(changes.map((e) => [e.target_id, e.details])).toEqual([
      [member.membershipId, { from: "member", to: "admin" }],
      [other.membershipId, { from: "admin", to: "owner" }],
    ]);
    // The promoted member's sessions rotate on their next request.
    const epochs = await world.t.db.withPlatform((tx) =>
      tx.selectFrom("users").select(["id", "privilege_epoch"]).where("id", "in", [member.id, admin.id]).execute(),
    );
    expect(Object.fromEntries(epochs.map((u) => [u.id, Number(u.privilege_epoch)]))).toEqual({
      [member.id]: 1,
      [admin.id]: 0,
    });
  });

  it("the last owner can be neither demoted, removed nor leave (409); with a second owner they can", async () => {
    const owner = await person();
    const tenantId = await createOrg(owner);
    const [self] = await members(owner, tenantId);
    const url = `/api/v1/tenants/${tenantId}/members/${self?.id}`;
    expectStatus(await call("PATCH", url, owner.headers, { role: "admin" }), 409, "conflict");
    expectStatus(await call("DELETE", url, owner.headers), 409, "conflict");
    expectStatus(await call("DELETE", `/api/v1/me/tenants/${tenantId}`, owner.headers), 409, "conflict");
    const refusals = (await platformEvents(owner.id)).filter((e) => e.action === "membership.change-refused");
    expect(refusals.map((e) => e.details)).toEqual([
      { tenant: tenantId, operation: "role-change", reason: "last-owner" },
      { tenant: tenantId, operation: "removal", reason: "last-owner" },
      { tenant: tenantId, operation: "removal", reason: "last-owner" },
    ]);
    await joined(owner, tenantId, "owner");
    expectStatus(await call("PATCH", url, owner.headers, { role: "admin" }), 200);
  });

  it("removal keeps the row, ends access to that tenant at once (session and API key) and not to others", async () => {
    const owner = await person();
    const tenantId = await createOrg(owner);
    const member = await joined(owner, tenantId, "member");
    const ownTenant = await createOrg(member);
    // A personal key of the member, as the API key routes would have made it.
    const keyId = uuidv7();
    const { key, secretHash } = newApiKey(keyId);
    await world.t.db.withTenant({ tenantId }, (tx) =>
      tx
        .insertInto("api_keys")
        .values({
          tenant_id: tenantId,
          id: keyId,
          kind: "personal",
          membership_id: member.membershipId,
          role: "member",
          name: "script",
          secret_hash: secretHash,
          created_by: member.membershipId,
          created_at: clock.now(),
          expires_at: new Date(clock.now().getTime() + 86_400_000),
        })
        .execute(),
    );
    const bearer = { authorization: `Bearer ${key}` };
    const list = `/api/v1/tenants/${tenantId}/members`;
    expectStatus(await call("GET", list, member.headers), 200);
    expectStatus(await call("GET", list, bearer), 200);
    expectStatus(
      await call("DELETE", `/api/v1/tenants/${tenantId}/members/${member.membershipId}`, owner.headers),
      204,
    );
    expectStatus(await call("GET", list, member.headers), 404, "not-found");
    expectStatus(await call("GET", list, bearer), 401, "unauthenticated");
    expectStatus(await call("GET", `/api/v1/tenants/${ownTenant}/members`, member.headers), 200);
    expect(
      (await call("GET", "/api/v1/me/tenants", member.headers)).json().items.map((i: { id: string }) => i.id),
    ).toEqual([ownTenant]);
    expect((await members(owner, tenantId)).map((m) => m.id)).not.toContain(member.membershipId);
    const { row, apiKey } = await world.t.db.withTenant({ tenantId }, async (tx) => ({
      row: await tx
        .selectFrom("memberships")
        .select(["status", "removed_at", "removed_by"])
        .where("tenant_id", "=", tenantId)
        .where("id", "=", member.membershipId)
        .executeTakeFirst(),
      apiKey: await tx.selectFrom("api_keys").select("revoked_at").where("tenant_id", "=", tenantId).executeTakeFirst(),
    }));
    const [self] = await members(owner, tenantId);
    expect(row).toEqual({ status: "removed", removed_at: clock.now(), removed_by: self?.id });
    expect(apiKey?.revoked_at).toEqual(clock.now());
    const removed = (await tenantEvents(tenantId)).find((e) => e.action === "membership.removed");
    expect(removed).toMatchObject({
      actor_id: self?.id,
      target_id: member.membershipId,
      details: { role: "member", left: false, apiKeysRevoked: 1 },
    });
  });

  it("a member may leave; an admin ends a member's sessions but not an owner's", async () => {
    const owner = await person();
    const tenantId = await createOrg(owner);
    const admin = await joined(owner, tenantId, "admin");
    const viewer = await joined(owner, tenantId, "viewer");
    const [self] = await members(owner, tenantId);
    const end = (by: Person, membershipId: string) =>
      call("POST", `/api/v1/tenants/${tenantId}/members/${membershipId}/end-sessions`, by.headers);
    expectStatus(await end(admin, self?.id ?? ""), 403, "forbidden");
    expectStatus(await call("GET", "/api/v1/me/tenants", owner.headers), 200);
    const ended = await end(admin, viewer.membershipId);
    expectStatus(ended, 200);
    expect(ended.json()).toEqual({ sessionsEnded: 1 });
    expectStatus(await call("GET", "/api/v1/me/tenants", viewer.headers), 401, "unauthenticated");
    const event = (await tenantEvents(tenantId)).find((e) => e.action === "membership.sessions-ended");
    expect(event).toMatchObject({
      actor_id: admin.membershipId,
      target_id: viewer.membershipId,
      details: { sessions: 1 },
    });
    expectStatus(await call("DELETE", `/api/v1/me/tenants/${tenantId}`, admin.headers), 204);
    expectStatus(await call("GET", `/api/v1/tenants/${tenantId}`, admin.headers), 404, "not-found");
    const left = (await tenantEvents(tenantId)).find((e) => e.action === "membership.removed");
    expect(left).toMatchObject({ actor_id: admin.membershipId, details: { left: true } });
  });

  it("an invitation is accepted once, only by the verified account with its address", async () => {
    const owner = await person();
    const tenantId = await createOrg(owner);
    const invitee = await person();
    const token = await invite(owner, tenantId, invitee.email.toUpperCase(), "member");
    const listed = await call("GET", `/api/v1/tenants/${tenantId}/invitations`, owner.headers);
    expect(listed.json().items).toMatchObject([{ email: invitee.email, role: "member" }]);
    const stranger = await person();
    expectStatus(await accept(stranger, token), 404, "not-found");
    // An account whose address is not verified cannot accept, even an invitation to that very address.
    const unverified = await person({ verified: false });
    expectStatus(await accept(unverified, await invite(owner, tenantId, unverified.email, "member")), 404, "not-found");
    expectStatus(await accept(invitee, "not-a-token"), 404, "not-found");
    expectStatus(await accept(invitee, `${tenantId}.${"A".repeat(43)}`), 404, "not-found");
    const accepted = await accept(invitee, token);
    expectStatus(accepted, 200);
    expect(accepted.json()).toMatchObject({ tenantId, role: "member" });
    expectStatus(await accept(invitee, token), 404, "not-found");
    const open = (await call("GET", `/api/v1/tenants/${tenantId}/invitations`, owner.headers)).json().items;
    expect(open.map((i: { email: string }) => i.email)).toEqual([unverified.email]);
    // A second invitation to a member: the invited account gets 409, nobody else learns anything.
    expectStatus(await accept(invitee, await invite(owner, tenantId, invitee.email, "admin")), 409, "conflict");
    const refusals = async (who: Person) =>
      (await platformEvents(who.id)).filter((e) => e.action === "membership.invitation-refused").map((e) => e.details);
    expect(await refusals(stranger)).toEqual([{ tenant: tenantId, reason: "other-address" }]);
    expect(await refusals(unverified)).toEqual([{ tenant: tenantId, reason: "unverified" }]);
    expect(await refusals(invitee)).toEqual([
      { tenant: tenantId, reason: "unknown" },
      { tenant: tenantId, reason: "used" },
    ]);
    // No address in any event of the tenant.
    const events = JSON.stringify(await tenantEvents(tenantId));
    expect(events).toContain("membership.invited");
    expect(events).not.toContain("@");
  });

  it("an invitation expires after 7 days; a revoked one is refused; an admin cannot invite an owner", async () => {
    const owner = await person();
    const tenantId = await createOrg(owner);
    const admin = await joined(owner, tenantId, "admin");
    expectStatus(
      await call("POST", `/api/v1/tenants/${tenantId}/invitations`, admin.headers, {
        email: "x@example.com",
        role: "owner",
      }),
      403,
      "forbidden",
    );
    const late = await createTestUser(world.deps, { email: `late-${unique()}@example.com` });
    const lateToken = await invite(admin, tenantId, late.email, "viewer");
    const revokedUser = await person();
    const revokedToken = await invite(admin, tenantId, revokedUser.email, "viewer");
    const [, revoked] = (await call("GET", `/api/v1/tenants/${tenantId}/invitations`, admin.headers)).json().items;
    expectStatus(await call("DELETE", `/api/v1/tenants/${tenantId}/invitations/${revoked.id}`, admin.headers), 204);
    expectStatus(await accept(revokedUser, revokedToken), 404, "not-found");
    expect((await tenantEvents(tenantId)).map((e) => e.action)).toContain("membership.invitation-revoked");
    clock.advance(7 * 24 * 60 * 60 * 1000);
    const lateSession = await signIn(world.app, late.email, late.password);
    const lateAccept = await accept({ ...revokedUser, headers: sessionHeaders(lateSession.cookie) }, lateToken);
    expectStatus(lateAccept, 404, "not-found");
    const reasons = (await platformEvents(late.id)).map((e) => (e.details as { reason?: string }).reason);
    expect(reasons).toContain("expired");
  });

  it("a guest joins and sees nothing of the tenant (404) until records can be shared", async () => {
    const owner = await person();
    const tenantId = await createOrg(owner);
    const guest = await joined(owner, tenantId, "guest");
    expectStatus(await call("GET", `/api/v1/tenants/${tenantId}`, guest.headers), 404, "not-found");
    expectStatus(await call("GET", `/api/v1/tenants/${tenantId}/members`, guest.headers), 404, "not-found");
    expect((await members(owner, tenantId)).map((m) => m.role)).toEqual(["owner", "guest"]);
  });

  describe("the operator", () => {
    async function operator(): Promise<Person> {
      const user = await createTestUser(world.deps, { email: `op-${unique()}@example.com` });
      await world.t.db.withPlatform((tx) =>
        tx.insertInto("operators").values({ user_id: user.id, created_at: clock.now() }).execute(),
      );
      const session = await signIn(world.app, user.email, user.password);
      return { id: user.id, email: user.email, headers: sessionHeaders(session.cookie) };
    }

    it("operator routes refuse normal users (403); the operator sees no tenant's members or records", async () => {
      const owner = await person();
      const tenantId = await createOrg(owner);
      expectStatus(await call("GET", "/api/v1/operator/tenants", owner.headers), 403, "forbidden");
      expectStatus(await call("POST", `/api/v1/operator/tenants/${tenantId}/suspend`, owner.headers), 403, "forbidden");
      const op = await operator();
      let cursor: string | null = null;
      const seen: { id: string }[] = [];
      do {
        const response: LightMyRequestResponse = await call(
          "GET",
          `/api/v1/operator/tenants?limit=100${cursor ? `&cursor=${cursor}` : ""}`,
          op.headers,
        );
        expectStatus(response, 200);
        seen.push(...response.json().items);
        cursor = response.json().nextCursor;
      } while (cursor);
      const entry = seen.find((tenant) => tenant.id === tenantId);
      expect(Object.keys(entry ?? {}).sort()).toEqual(["createdAt", "id", "name", "slug", "status"]);
      expectStatus(await call("GET", `/api/v1/tenants/${tenantId}/members`, op.headers), 404, "not-found");
      expectStatus(await accept(op, await invite(owner, tenantId, op.email, "member")), 403, "forbidden");
    });

    it("creates a tenant with no member and invites its owner; suspends and reinstates it, audited", async () => {
      const op = await operator();
      const future = await person();
      const created = await call("POST", "/api/v1/operator/tenants", op.headers, {
        slug: `s-${unique()}`,
        name: "Client",
        ownerEmail: future.email,
      });
      expectStatus(created, 201);
      const { id: tenantId, invitationId } = created.json();
      const joinedAsOwner = await accept(future, await mailedToken(future.email));
      expectStatus(joinedAsOwner, 200);
      expect(joinedAsOwner.json().role).toBe("owner");
      const invitation = await world.t.db.withTenant({ tenantId }, (tx) =>
        tx.selectFrom("invitations").select("invited_by").where("tenant_id", "=", tenantId).executeTakeFirst(),
      );
      expect(invitation).toEqual({ invited_by: null });
      const owner = { ...future };
      const member = await joined(owner, tenantId, "member");

      expectStatus(await call("POST", `/api/v1/operator/tenants/${tenantId}/suspend`, op.headers), 200);
      expectStatus(await call("POST", `/api/v1/operator/tenants/${tenantId}/suspend`, op.headers), 409, "conflict");
      for (const who of [owner, member]) {
        expectStatus(await call("GET", `/api/v1/tenants/${tenantId}`, who.headers), 403, "tenant-suspended");
      }
      const listed = (await call("GET", "/api/v1/me/tenants", member.headers)).json().items;
      expect(listed).toMatchObject([{ id: tenantId, status: "suspended" }]);
      expectStatus(await call("POST", `/api/v1/operator/tenants/${tenantId}/reinstate`, op.headers), 200);
      expectStatus(await call("GET", `/api/v1/tenants/${tenantId}`, member.headers), 200);
      expectStatus(await call("POST", `/api/v1/operator/tenants/${uuidv7()}/suspend`, op.headers), 404, "not-found");

      const operatorEvents = (await platformEvents(op.id)).filter((e) => !e.action.startsWith("auth."));
      expect(operatorEvents.map((e) => [e.action, e.actor_kind, e.target_id, e.details])).toEqual([
        ["operator.tenant-created", "operator", tenantId, {}],
        ["tenant.suspended", "operator", tenantId, { from: "active", to: "suspended", members: 2 }],
        ["tenant.reinstated", "operator", tenantId, { from: "suspended", to: "active", members: 2 }],
      ]);
      const events = await tenantEvents(tenantId);
      expect(events.slice(0, 2).map((e) => [e.action, e.actor_kind, e.actor_id, e.target_id])).toEqual([
        ["tenant.created", "operator", op.id, tenantId],
        ["membership.invited", "operator", op.id, invitationId],
      ]);
      expect(JSON.stringify([events, operatorEvents])).not.toContain("@");
    });
  });
});
