import { describe, expect, it } from "vitest";
import { z } from "zod";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import type { TenantStatus } from "../../platform/db/schema.ts";
import { type AnyRoute, defineRoute } from "../../platform/http/routes.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { newApiKey } from "./api-keys.ts";
import type { ApiKeyRole, MembershipRole } from "./roles.ts";
import { sessionHeaders, signIn, useIdentityTestApp } from "./testing.ts";

/** Routes that answer who the kernel let in and with what grant: the access control alone is under test. */
function probeRoutes(): AnyRoute[] {
  const answer = z.object({
    kind: z.string(),
    actorId: z.string(),
    grant: z.object({ actorId: z.string(), membershipId: z.string().nullable(), role: z.string() }).nullable(),
  });
  const handler = async (request: { principal: { kind: string; actorId: string } | null; grant?: unknown }) => ({
    kind: request.principal?.kind ?? "",
    actorId: request.principal?.actorId ?? "",
    grant: (request.grant as z.infer<typeof answer>["grant"] | undefined) ?? null,
  });
  const params = z.object({ tenantId: z.string() });
  const tenantRoute = (method: "GET" | "POST", permission: string, operationId: string, url: string) =>
    defineRoute({
      method,
      url,
      operationId,
      summary: operationId,
      permission: { kind: "tenant", permission },
      params,
      response: { 200: answer },
      handler,
    });
  return [
    tenantRoute("GET", "tenant.read", "probeRead", "/api/v1/tenants/:tenantId/probe"),
    tenantRoute("POST", "tenant.settings.update", "probeWrite", "/api/v1/tenants/:tenantId/probe"),
    tenantRoute("GET", "no.such.permission", "probeUnknown", "/api/v1/tenants/:tenantId/unknown"),
    defineRoute({
      method: "GET",
      url: "/api/v1/probe/me",
      operationId: "probeMe",
      summary: "probe",
      permission: { kind: "authenticated" },
      response: { 200: answer },
      handler,
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/operator/probe",
      operationId: "probeOperator",
      summary: "probe",
      permission: { kind: "operator" },
      response: { 200: answer },
      handler,
    }),
  ];
}

describe.each(DATABASE_KINDS)("access control on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock, { routes: (identity) => [...identity.routes, ...probeRoutes()] });

  const user = async () => {
    const created = await world.newUser();
    return { ...created, session: await signIn(world.app, created.email, created.password) };
  };
  const join = async (tenantId: string, userId: string, role: MembershipRole) => {
    const id = uuidv7();
    await world.t.db.withTenant({ tenantId }, (tx) =>
      tx
        .insertInto("memberships")
        .values({ tenant_id: tenantId, id, user_id: userId, role, status: "active", created_at: clock.now() })
        .execute(),
    );
    return id;
  };
  const remove = (tenantId: string, membershipId: string) =>
    world.t.db.withTenant({ tenantId }, (tx) =>
      tx
        .updateTable("memberships")
        .set({ status: "removed", removed_at: clock.now() })
        .where("tenant_id", "=", tenantId)
        .where("id", "=", membershipId)
        .execute(),
    );
  const setStatus = (tenantId: string, status: TenantStatus) =>
    world.t.db.withPlatform((tx) => tx.updateTable("tenants").set({ status }).where("id", "=", tenantId).execute());
  const apiKey = async (
    tenantId: string,
    input: { role: ApiKeyRole; createdBy: string; personal?: boolean; revoked?: boolean },
  ) => {
    const id = uuidv7();
    const { key, secretHash } = newApiKey(id);
    await world.t.db.withTenant({ tenantId }, (tx) =>
      tx
        .insertInto("api_keys")
        .values({
          tenant_id: tenantId,
          id,
          kind: input.personal ? "personal" : "service",
          membership_id: input.personal ? input.createdBy : null,
          role: input.role,
          name: "probe key",
          secret_hash: secretHash,
          created_by: input.createdBy,
          created_at: clock.now(),
          expires_at: new Date(clock.now().getTime() + 86_400_000),
          revoked_at: input.revoked ? clock.now() : null,
        })
        .execute(),
    );
    return { id, key };
  };

  const read = (tenantId: string, headers: Record<string, string>) =>
    world.app.app.inject({ method: "GET", url: `/api/v1/tenants/${tenantId}/probe`, headers });
  const write = (tenantId: string, headers: Record<string, string>) =>
    world.app.app.inject({ method: "POST", url: `/api/v1/tenants/${tenantId}/probe`, headers });
  const bearer = (key: string) => ({ authorization: `Bearer ${key}` });
  const problem = (response: { json(): { type: string } }) => response.json().type;

  it("grants a member what their role allows, acting as their membership", async () => {
    const tenantId = await world.newTenant();
    const owner = await user();
    const membershipId = await join(tenantId, owner.id, "owner");
    const response = await write(tenantId, sessionHeaders(owner.session.cookie));
    expect(response.statusCode).toBe(200);
    expect(response.json()).toEqual({
      kind: "user",
      actorId: owner.id,
      grant: { actorId: membershipId, membershipId, role: "owner" },
    });
  });

  it("answers 404 to non-members, guests and unknown tenants, 403 to a role without the permission", async () => {
    const tenantId = await world.newTenant();
    const outsider = await user();
    const guest = await user();
    const viewer = await user();
    await join(tenantId, guest.id, "guest");
    await join(tenantId, viewer.id, "viewer");
    expect((await read(tenantId, sessionHeaders(outsider.session.cookie))).statusCode).toBe(404);
    expect((await write(tenantId, sessionHeaders(outsider.session.cookie))).statusCode).toBe(404);
    expect((await read(tenantId, sessionHeaders(guest.session.cookie))).statusCode).toBe(404);
    expect((await read(uuidv7(), sessionHeaders(viewer.session.cookie))).statusCode).toBe(404);
    expect((await read("not-a-uuid", sessionHeaders(viewer.session.cookie))).statusCode).toBe(404);
    expect((await read(tenantId, sessionHeaders(viewer.session.cookie))).statusCode).toBe(200);
    const denied = await write(tenantId, sessionHeaders(viewer.session.cookie));
    expect(denied.statusCode).toBe(403);
    expect(problem(denied)).toBe("/problems/forbidden");
    expect((await read(tenantId, {})).statusCode).toBe(401);
  });

  it("fails closed on a permission that does not exist", async () => {
    const tenantId = await world.newTenant();
    const owner = await user();
    await join(tenantId, owner.id, "owner");
    const response = await world.app.app.inject({
      method: "GET",
      url: `/api/v1/tenants/${tenantId}/unknown`,
      headers: sessionHeaders(owner.session.cookie),
    });
    expect(response.statusCode).toBe(403);
  });

  it("enforces the tenant's status: suspended refuses all, cancelled is read-only, deleted is gone", async () => {
    const tenantId = await world.newTenant();
    const owner = await user();
    await join(tenantId, owner.id, "owner");
    const headers = sessionHeaders(owner.session.cookie);

    await setStatus(tenantId, "suspended");
    for (const response of [await read(tenantId, headers), await write(tenantId, headers)]) {
      expect(response.statusCode).toBe(403);
      expect(problem(response)).toBe("/problems/tenant-suspended");
    }
    for (const status of ["cancelled", "pending-deletion"] as const) {
      await setStatus(tenantId, status);
      expect((await read(tenantId, headers)).statusCode).toBe(200);
      const refused = await write(tenantId, headers);
      expect(refused.statusCode).toBe(403);
      expect(problem(refused)).toBe("/problems/tenant-read-only");
    }
    await setStatus(tenantId, "deleted");
    expect((await read(tenantId, headers)).statusCode).toBe(404);
    await setStatus(tenantId, "active");
    expect((await write(tenantId, headers)).statusCode).toBe(200);
  });

  it("refuses a removed member's session on the next request to that tenant while their other tenant works", async () => {
    const [a, b] = [await world.newTenant(), await world.newTenant()];
    const member = await user();
    const inA = await join(a, member.id, "member");
    await join(b, member.id, "member");
    const headers = sessionHeaders(member.session.cookie);
    expect((await read(a, headers)).statusCode).toBe(200);
    await remove(a, inA);
    expect((await read(a, headers)).statusCode).toBe(404);
    expect((await read(b, headers)).statusCode).toBe(200);
  });

  it("lets operators through operator routes only: a tenant is not theirs", async () => {
    const tenantId = await world.newTenant();
    const operator = await user();
    const someone = await user();
    await world.t.db.withPlatform((tx) =>
      tx.insertInto("operators").values({ user_id: operator.id, created_at: clock.now() }).execute(),
    );
    const asOperator = sessionHeaders(operator.session.cookie);
    const probe = await world.app.app.inject({ method: "GET", url: "/api/v1/operator/probe", headers: asOperator });
    expect(probe.statusCode).toBe(200);
    expect(probe.json()).toMatchObject({ kind: "operator", actorId: operator.id });
    expect((await read(tenantId, asOperator)).statusCode).toBe(404);
    const denied = await world.app.app.inject({
      method: "GET",
      url: "/api/v1/operator/probe",
      headers: sessionHeaders(someone.session.cookie),
    });
    expect(denied.statusCode).toBe(403);
  });

  it("takes an API key on its own tenant's routes only, with the lower of its role and its owner's", async () => {
    const [a, b] = [await world.newTenant(), await world.newTenant()];
    const admin = await user();
    const viewer = await user();
    const adminMembership = await join(a, admin.id, "admin");
    const viewerMembership = await join(a, viewer.id, "viewer");
    await join(b, admin.id, "admin");
    const service = await apiKey(a, { role: "admin", createdBy: adminMembership });

    const ok = await write(a, bearer(service.key));
    expect(ok.statusCode).toBe(200);
    expect(ok.json()).toEqual({
      kind: "api-key",
      actorId: service.id,
      grant: { actorId: service.id, membershipId: null, role: "admin" },
    });
    // Another tenant's path: a non-member there, like a session without a membership.
    expect((await read(b, bearer(service.key))).statusCode).toBe(404);
    // Not a tenant route: keys are for tenant routes only.
    const me = await world.app.app.inject({ method: "GET", url: "/api/v1/probe/me", headers: bearer(service.key) });
    expect(me.statusCode).toBe(401);
    // A key that does not verify is refused, and never falls back to the cookie next to it.
    const broken = `${service.key.slice(0, -1)}${service.key.endsWith("A") ? "B" : "A"}`;
    expect((await read(a, bearer(broken))).statusCode).toBe(401);
    expect((await read(a, { ...bearer("nonsense"), ...sessionHeaders(admin.session.cookie) })).statusCode).toBe(401);
    expect((await read(a, { authorization: "Basic abc" })).statusCode).toBe(401);
    const revoked = await apiKey(a, { role: "admin", createdBy: adminMembership, revoked: true });
    expect((await read(a, bearer(revoked.key))).statusCode).toBe(401);

    const personal = await apiKey(a, { role: "admin", createdBy: viewerMembership, personal: true });
    const lowered = await read(a, bearer(personal.key));
    expect(lowered.json().grant).toEqual({ actorId: personal.id, membershipId: viewerMembership, role: "viewer" });
    expect((await write(a, bearer(personal.key))).statusCode).toBe(403);
    await remove(a, viewerMembership);
    expect((await read(a, bearer(personal.key))).statusCode).toBe(401);

    await setStatus(a, "suspended");
    const suspended = await read(a, bearer(service.key));
    expect(suspended.statusCode).toBe(403);
    expect(problem(suspended)).toBe("/problems/tenant-suspended");
  });

  it("refuses a cookie-authenticated unsafe request that may be forged, and takes API clients as they are", async () => {
    const tenantId = await world.newTenant();
    const owner = await user();
    const membershipId = await join(tenantId, owner.id, "owner");
    const cookie = owner.session.cookie;
    const foreign = await write(tenantId, { cookie, origin: "https://evil.example" });
    expect(foreign.statusCode).toBe(403);
    expect(problem(foreign)).toBe("/problems/cross-site-request");
    expect(problem(await write(tenantId, { cookie }))).toBe("/problems/cross-site-request");
    expect((await write(tenantId, { cookie, origin: "https://charter.test" })).statusCode).toBe(200);
    expect((await write(tenantId, { cookie, "sec-fetch-site": "same-site" })).statusCode).toBe(403);
    // Reads cannot be forged into changes: a cross-site GET is served.
    expect((await read(tenantId, { cookie, "sec-fetch-site": "cross-site" })).statusCode).toBe(200);
    const service = await apiKey(tenantId, { role: "owner", createdBy: membershipId });
    expect((await write(tenantId, bearer(service.key))).statusCode).toBe(200);
  });
});
