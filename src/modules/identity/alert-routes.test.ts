import { randomBytes } from "node:crypto";
import { beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { raiseAlert } from "./alerts.ts";
import type { MembershipRole } from "./roles.ts";
import { SIGN_IN_PER_ACCOUNT } from "./session-routes.ts";
import { createTenantWithOwner } from "./tenants.ts";
import { sessionHeaders, signIn, type TestUser, useIdentityTestApp } from "./testing.ts";

describe.each(DATABASE_KINDS)("alert routes on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);
  const unique = () => randomBytes(5).toString("hex");

  beforeEach(() => clock.advance(SIGN_IN_PER_ACCOUNT.windowSeconds * 1000 + 1000));

  const person = async () => {
    const displayName = `Person ${unique()}`;
    return { ...(await world.newUser({ displayName })), displayName };
  };
  const cookieOf = async (user: TestUser) => (await signIn(world.app, user.email, user.password)).cookie;
  const get = (url: string, cookie?: string) =>
    world.app.app.inject({ method: "GET", url, headers: cookie ? sessionHeaders(cookie) : {} });
  const post = (url: string, cookie: string, payload?: object) =>
    world.app.app.inject({ method: "POST", url, headers: sessionHeaders(cookie), ...(payload ? { payload } : {}) });
  const raise = (user: TestUser, kind: "factor-added" | "new-device", tenantId?: string) =>
    world.t.db.withPlatform((tx) =>
      raiseAlert(world.deps, tx, { kind, userId: user.id, tenantId, details: { factor: "passkey" }, requestId: "r" }),
    );
  async function tenantWith(owner: TestUser, members: [TestUser, MembershipRole][] = []) {
    const tenant = await createTenantWithOwner(world.deps, {
      userId: owner.id,
      tenant: { slug: `r-${unique()}`, name: `Org ${unique()}` },
      requestId: "setup",
    });
    const ids: string[] = [];
    for (const [user, role] of members) {
      ids.push(await world.addMember(tenant.id, user.id, role));
    }
    return { ...tenant, memberIds: ids };
  }

  it("lists a user's own alerts, newest first, a page at a time", async () => {
    const user = await person();
    const other = await person();
    const ids = [await raise(user, "factor-added"), await raise(user, "new-device"), await raise(user, "factor-added")];
    await raise(other, "factor-added");
    const cookie = await cookieOf(user);
    const first = await get("/api/v1/me/alerts?limit=2", cookie);
    expect(first.statusCode).toBe(200);
    const page = first.json();
    expect(page.items.map((a: { id: string }) => a.id)).toEqual([ids[2], ids[1]]);
    expect(page.items[0]).toEqual({
      id: ids[2],
      kind: "factor-added",
      severity: "info",
      details: { factor: "passkey" },
      organization: null,
      createdAt: clock.now().toISOString(),
      readAt: null,
    });
    const second = (await get(`/api/v1/me/alerts?limit=2&cursor=${page.nextCursor}`, cookie)).json();
    expect(second).toEqual({ items: [expect.objectContaining({ id: ids[0] })], nextCursor: null });
    expect((await get("/api/v1/me/alerts")).statusCode).toBe(401);
  });

  it("names the organization of a tenant's alert", async () => {
    const user = await person();
    const tenant = await tenantWith(user);
    await world.t.db.withTenant({ tenantId: tenant.id }, (tx) =>
      raiseAlert(world.deps, tx, {
        kind: "api-key-created",
        userId: user.id,
        tenantId: tenant.id,
        details: { apiKey: uuidv7() },
        requestId: "r",
      }),
    );
    const { items } = (await get("/api/v1/me/alerts", await cookieOf(user))).json();
    expect(items[0].organization).toEqual({ id: tenant.id, name: tenant.name });
  });

  it("marks an own alert read, and finds no one else's", async () => {
    const user = await person();
    const other = await person();
    const mine = await raise(user, "factor-added");
    const theirs = await raise(other, "factor-added");
    const cookie = await cookieOf(user);
    expect((await post(`/api/v1/me/alerts/${mine}/read`, cookie)).statusCode).toBe(204);
    const readAt = clock.now().toISOString();
    clock.advance(60_000);
    // Again: still read, at the first time.
    expect((await post(`/api/v1/me/alerts/${mine}/read`, cookie)).statusCode).toBe(204);
    const { items } = (await get("/api/v1/me/alerts", cookie)).json();
    expect(items[0]).toMatchObject({ id: mine, readAt });

    const refused = await post(`/api/v1/me/alerts/${theirs}/read`, cookie);
    expect(refused.statusCode).toBe(404);
    expect((await post(`/api/v1/me/alerts/${uuidv7()}/read`, cookie)).statusCode).toBe(404);
    const untouched = await world.t.db.withPlatform((tx) =>
      tx.selectFrom("user_alerts").select("read_at").where("id", "=", theirs).executeTakeFirstOrThrow(),
    );
    expect(untouched.read_at).toBeNull();
    const marked = await world.t.db.withPlatform((tx) =>
      tx.selectFrom("platform_audit_events").select("target_id").where("action", "=", "alert.marked-read").execute(),
    );
    expect(marked.filter((e) => e.target_id === mine)).toHaveLength(1);
  });

  it("shows a tenant's alerts to its owners and admins only, naming the member, and nothing of other tenants", async () => {
    const owner = await person();
    const admin = await person();
    const member = await person();
    const subject = await person();
    const tenant = await tenantWith(owner, [
      [admin, "admin"],
      [member, "member"],
      [subject, "viewer"],
    ]);
    const elsewhere = await tenantWith(subject);
    const subjectHere = tenant.memberIds[2];
    await raise(subject, "new-device");
    await raise(subject, "factor-added");
    await world.t.db.withTenant({ tenantId: elsewhere.id }, (tx) =>
      raiseAlert(world.deps, tx, {
        kind: "api-key-created",
        userId: subject.id,
        tenantId: elsewhere.id,
        details: { apiKey: uuidv7() },
        requestId: "r",
      }),
    );
    const url = `/api/v1/tenants/${tenant.id}/security/alerts`;
    // One sign-in each: another, from a browser without the device cookie, would raise an alert of its own.
    const ownerCookie = await cookieOf(owner);
    for (const cookie of [ownerCookie, await cookieOf(admin)]) {
      const response = await get(url, cookie);
      expect(response.statusCode).toBe(200);
      const { items, nextCursor } = response.json();
      expect(items.map((a: { kind: string }) => a.kind)).toEqual(["factor-added", "new-device"]);
      expect(items[0].member).toEqual({ id: subjectHere, displayName: subject.displayName });
      expect(nextCursor).toBeNull();
      expect(JSON.stringify(items)).not.toContain(elsewhere.id);
      expect(JSON.stringify(items)).not.toContain(subject.id);
    }
    const page = (await get(`${url}?limit=1`, ownerCookie)).json();
    expect(page.items).toHaveLength(1);
    const rest = (await get(`${url}?limit=1&cursor=${page.nextCursor}`, ownerCookie)).json();
    expect(rest.items.map((a: { kind: string }) => a.kind)).toEqual(["new-device"]);
    expect((await get(url, await cookieOf(member))).statusCode).toBe(403);
  });

  it("alerts the creator of an API key and the tenant's owners and admins", async () => {
    const owner = await person();
    const admin = await person();
    const tenant = await tenantWith(owner, [[admin, "admin"]]);
    const cookie = await cookieOf(owner);
    const created = await post(`/api/v1/tenants/${tenant.id}/api-keys`, cookie, {
      name: "ci",
      expiresAt: new Date(clock.now().getTime() + 7 * 86_400_000).toISOString(),
    });
    expect(created.statusCode).toBe(201);
    const keyId = created.json().id;
    const mine = (await get("/api/v1/me/alerts", cookie)).json().items;
    expect(mine[0]).toMatchObject({
      kind: "api-key-created",
      severity: "warning",
      organization: { id: tenant.id },
      details: { apiKey: keyId, keyKind: "personal", role: "owner" },
    });
    const theirs = (await get(`/api/v1/tenants/${tenant.id}/security/alerts`, await cookieOf(admin))).json().items;
    expect(theirs[0]).toMatchObject({ kind: "api-key-created", member: { id: tenant.membershipId } });
    const mail = await world.deps.mailer.outbox({ limit: 1000 });
    expect(mail.filter((m) => m.to === owner.email).map((m) => m.template)).toContain("security-alert");
    expect(mail.filter((m) => m.to === admin.email).map((m) => m.template)).toEqual(["tenant-security-alert"]);
    expect(JSON.stringify(mine)).not.toContain(created.json().key);
  });

  it("alerts a member given an owner or admin role, and no one for lesser changes", async () => {
    const owner = await person();
    const member = await person();
    const tenant = await tenantWith(owner, [[member, "member"]]);
    const cookie = await cookieOf(owner);
    const change = (role: MembershipRole) =>
      world.app.app.inject({
        method: "PATCH",
        url: `/api/v1/tenants/${tenant.id}/members/${tenant.memberIds[0]}`,
        headers: sessionHeaders(cookie),
        payload: { role },
      });
    const kinds = async () =>
      (
        await world.t.db.withPlatform((tx) =>
          tx
            .selectFrom("user_alerts")
            .select(["kind", "details"])
            .where("user_id", "=", member.id)
            .orderBy("id")
            .execute(),
        )
      ).map((a) => a.details);
    expect((await change("viewer")).statusCode).toBe(200);
    expect(await kinds()).toEqual([]);
    expect((await change("admin")).statusCode).toBe(200);
    expect(await kinds()).toEqual([{ membership: tenant.memberIds[0], role: "admin", from: "viewer" }]);
    expect((await change("member")).statusCode).toBe(200);
    expect((await change("owner")).statusCode).toBe(200);
    expect((await kinds()).map((d) => d.role)).toEqual(["admin", "owner"]);
    const mail = (await world.deps.mailer.outbox({ limit: 1000 })).filter((m) => m.to === member.email);
    expect(mail.map((m) => m.rendered?.text ?? "").some((text) => text.includes(`owner role in ${tenant.name}`))).toBe(
      true,
    );
  });
});
