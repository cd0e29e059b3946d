import type { LightMyRequestResponse } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { oathtoolCode, secretOfUri } from "../../../test/support/oathtool.ts";
import { manualClock } from "../../platform/clock.ts";
import type { TestApp } from "../../platform/http/test-app.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { OutboundClient } from "../../platform/net/index.ts";
import { newApiKey } from "./api-keys.ts";
import { sessionCookieName } from "./cookies.ts";
import { DEFAULT_POLICY, policyJson, type SecurityPolicy } from "./policy.ts";
import { createSession, type ProvenFactor, reauthenticate } from "./sessions.ts";
import { buildIdentityTestApp, sessionHeaders, signIn, TEST_PUBLIC_URL, useIdentityTestApp } from "./testing.ts";

/**
 * Tenant security policies enforced on every request (promise A4): from the factors each session recorded,
 * whatever method it signed in with, tenant by tenant; API keys by kind; break-glass to the security settings only.
 */

const COOKIE = sessionCookieName(TEST_PUBLIC_URL);

describe.each(DATABASE_KINDS)("tenant security policies on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);

  /** A session that proved `factors` in order, now; its cookie header. */
  async function sessionWith(userId: string, factors: ProvenFactor[]): Promise<Record<string, string>> {
    const [first, ...rest] = factors;
    if (!first) throw new Error("a session needs a factor");
    const token = await world.t.db.withPlatform(async (tx) => {
      const created = await createSession(tx, { userId, factor: first, now: clock.now() });
      let current = created.token;
      for (const factor of rest) {
        const next = await reauthenticate(tx, created.id, current, factor, clock.now());
        if (!next) throw new Error("step-up failed");
        current = next.token;
      }
      return current;
    });
    return sessionHeaders(`${COOKIE}=${token}`);
  }

  const getTenant = (tenantId: string, headers: Record<string, string>) =>
    world.app.app.inject({ method: "GET", url: `/api/v1/tenants/${tenantId}`, headers });
  const getPolicy = (tenantId: string, headers: Record<string, string>) =>
    world.app.app.inject({ method: "GET", url: `/api/v1/tenants/${tenantId}/security/policy`, headers });
  const putPolicy = (tenantId: string, headers: Record<string, string>, policy: Partial<SecurityPolicy>) =>
    world.app.app.inject({
      method: "PUT",
      url: `/api/v1/tenants/${tenantId}/security/policy`,
      headers,
      payload: { ...policyJson(DEFAULT_POLICY), ...policy },
    });

  function expectProblem(response: LightMyRequestResponse, status: number, slug?: string) {
    expect(response.statusCode, response.body).toBe(status);
    if (slug) expect(response.json().type).toBe(`/problems/${slug}`);
  }

  const tenantEvents = (tenantId: string) =>
    world.t.db.withTenant({ tenantId }, (tx) =>
      tx
        .selectFrom("audit_events")
        .select(["action", "stream", "actor_id", "details"])
        .where("tenant_id", "=", tenantId)
        .orderBy("seq")
        .execute(),
    );

  const ssoOf = (tenantId: string, mfa = false): ProvenFactor => ({
    method: "sso",
    tenantId,
    configurationId: uuidv7(),
    mfa,
  });

  it("confines a member without MFA in a tenant that requires it, while their other tenants keep working", async () => {
    const [strict, lax] = [await world.newTenant(), await world.newTenant()];
    const member = await world.newUser();
    await world.addMember(strict, member.id, "member");
    await world.addMember(lax, member.id, "member");
    await world.setPolicy(strict, { requireMfa: true });

    const passwordOnly = await sessionWith(member.id, [{ method: "password" }]);
    expectProblem(await getTenant(strict, passwordOnly), 403, "mfa-required");
    expectProblem(await getTenant(lax, passwordOnly), 200);
    // Enrolment is an account route, open to the same session.
    expectProblem(await world.app.app.inject({ method: "GET", url: "/api/v1/me", headers: passwordOnly }), 200);

    expectProblem(
      await getTenant(strict, await sessionWith(member.id, [{ method: "password" }, { method: "totp" }])),
      200,
    );
    expectProblem(
      await getTenant(strict, await sessionWith(member.id, [{ method: "passkey", userVerified: true }])),
      200,
    );
    expectProblem(
      await getTenant(strict, await sessionWith(member.id, [{ method: "passkey", userVerified: false }])),
      403,
      "mfa-required",
    );
  });

  it("end to end: a member signed in with a password is confined until they enrol an app, then the tenant opens", async () => {
    const tenantId = await world.newTenant();
    const member = await world.newUser();
    await world.addMember(tenantId, member.id, "member");
    await world.setPolicy(tenantId, { requireMfa: true });
    const signedIn = await signIn(world.app, member.email, member.password);
    let headers = sessionHeaders(signedIn.cookie);
    const send = async (method: "GET" | "POST", url: string, payload?: object) => {
      const response = await world.app.app.inject({ method, url, headers, ...(payload ? { payload } : {}) });
      const rotated = response.cookies.find((cookie) => cookie.name === COOKIE);
      if (rotated) headers = sessionHeaders(`${COOKIE}=${rotated.value}`);
      return response;
    };

    expectProblem(await send("GET", `/api/v1/tenants/${tenantId}`), 403, "mfa-required");
    expectProblem(await send("GET", `/api/v1/tenants/${tenantId}/members`), 403, "mfa-required");
    const started = await send("POST", "/api/v1/me/totp");
    expectProblem(started, 201);
    const code = await oathtoolCode(secretOfUri(started.json().uri), clock.now());
    expectProblem(await send("POST", "/api/v1/me/totp/confirm", { code }), 200);
    // Confirming the app proved it on this session: the tenant opens without signing in again.
    expectProblem(await send("GET", `/api/v1/tenants/${tenantId}`), 200);

    // A later password sign-in is a half-session until the app's code completes it, and then it opens too.
    clock.advance(60_000);
    const again = await signIn(world.app, member.email, member.password);
    headers = sessionHeaders(again.cookie);
    expectProblem(await send("GET", `/api/v1/tenants/${tenantId}`), 401);
    const next = await oathtoolCode(secretOfUri(started.json().uri), clock.now());
    expectProblem(await send("POST", "/api/v1/sessions/current/second-factor", { totpCode: next }), 200);
    expectProblem(await send("GET", `/api/v1/tenants/${tenantId}`), 200);
  });

  it("refuses a password session in a tenant that requires SSO, and an SSO factor opens only its own tenant", async () => {
    const [ssoTenant, other] = [await world.newTenant(), await world.newTenant()];
    const member = await world.newUser();
    await world.addMember(ssoTenant, member.id, "member");
    await world.addMember(other, member.id, "member");
    await world.setPolicy(ssoTenant, { requireSso: true });

    const strong = await sessionWith(member.id, [{ method: "password" }, { method: "totp" }]);
    expectProblem(await getTenant(ssoTenant, strong), 403, "sso-required");
    expectProblem(await getTenant(other, strong), 200);

    const viaSso = await sessionWith(member.id, [ssoOf(ssoTenant)]);
    expectProblem(await getTenant(ssoTenant, viaSso), 200);
    // Tenant A's SSO session opens neither tenant B nor account-wide settings.
    expectProblem(await getTenant(other, viaSso), 403, "sign-in-method-not-allowed");
    expectProblem(await world.app.app.inject({ method: "GET", url: "/api/v1/me", headers: viaSso }), 401);
    expectProblem(
      await world.app.app.inject({ method: "POST", url: "/api/v1/me/password", headers: viaSso, payload: {} }),
      401,
    );
    // It still sees and ends itself, and lists its tenants.
    expectProblem(await world.app.app.inject({ method: "GET", url: "/api/v1/sessions/current", headers: viaSso }), 200);
    expectProblem(await world.app.app.inject({ method: "GET", url: "/api/v1/me/tenants", headers: viaSso }), 200);

    // Another tenant's SSO factor is no SSO factor here.
    const otherSso = await sessionWith(member.id, [{ method: "password" }, ssoOf(other, true)]);
    expectProblem(await getTenant(ssoTenant, otherSso), 403, "sso-required");
  });

  it("accepts only the allowed sign-in methods and ends the tenant's sessions after its lifetime", async () => {
    const tenantId = await world.newTenant();
    const member = await world.newUser();
    await world.addMember(tenantId, member.id, "viewer");
    await world.setPolicy(tenantId, { allowedMethods: ["passkey"], sessionLifetimeMinutes: 60 });

    expectProblem(
      await getTenant(tenantId, await sessionWith(member.id, [{ method: "password" }])),
      403,
      "sign-in-method-not-allowed",
    );
    const passkey = await sessionWith(member.id, [{ method: "passkey", userVerified: true }]);
    expectProblem(await getTenant(tenantId, passkey), 200);
    clock.advance(61 * 60_000);
    expectProblem(await getTenant(tenantId, passkey), 403, "tenant-session-expired");
    // The session itself lives on (the platform's lifetimes are longer): only this tenant asks for a new sign-in.
    expectProblem(
      await world.app.app.inject({ method: "GET", url: "/api/v1/sessions/current", headers: passkey }),
      200,
    );
  });

  it("lets the policy decide whether personal and service API keys work", async () => {
    const tenantId = await world.newTenant();
    const admin = await world.newUser();
    const membershipId = await world.addMember(tenantId, admin.id, "admin");
    const key = async (kind: "personal" | "service") => {
      const id = uuidv7();
      const { key, secretHash } = newApiKey(id);
      await world.t.db.withTenant({ tenantId }, (tx) =>
        tx
          .insertInto("api_keys")
          .values({
            tenant_id: tenantId,
            id,
            kind,
            membership_id: kind === "personal" ? membershipId : null,
            role: "viewer",
            name: `${kind} key`,
            secret_hash: secretHash,
            created_by: membershipId,
            created_at: clock.now(),
            expires_at: new Date(clock.now().getTime() + 86_400_000),
          })
          .execute(),
      );
      return { authorization: `Bearer ${key}` };
    };
    const [personal, service] = [await key("personal"), await key("service")];
    expectProblem(await getTenant(tenantId, service), 200);
    await world.setPolicy(tenantId, { allowServiceKeys: false });
    expectProblem(await getTenant(tenantId, service), 403, "forbidden");
    expectProblem(await getTenant(tenantId, personal), 200);
    await world.t.db.withTenant({ tenantId }, (tx) =>
      tx
        .updateTable("security_policies")
        .set({ allow_personal_keys: false })
        .where("tenant_id", "=", tenantId)
        .execute(),
    );
    expectProblem(await getTenant(tenantId, personal), 403, "forbidden");
  });

  it("changes the policy only after recent authentication, never locking out the one who changes it, audited", async () => {
    const tenantId = await world.newTenant();
    const admin = await world.newUser();
    await world.addMember(tenantId, admin.id, "admin");
    const passwordOnly = await sessionWith(admin.id, [{ method: "password" }]);

    expect((await getPolicy(tenantId, passwordOnly)).json()).toEqual(policyJson(DEFAULT_POLICY));
    expectProblem(await putPolicy(tenantId, passwordOnly, { requireMfa: true }), 409, "conflict");
    expectProblem(await putPolicy(tenantId, passwordOnly, { requireSso: true }), 409, "conflict");
    expectProblem(await putPolicy(tenantId, passwordOnly, { allowedMethods: ["passkey"] }), 409, "conflict");
    expectProblem(await putPolicy(tenantId, passwordOnly, { sessionLifetimeMinutes: 5 }), 400, "validation");
    expectProblem(await putPolicy(tenantId, passwordOnly, { allowedMethods: [] }), 400, "validation");
    expect((await getPolicy(tenantId, passwordOnly)).json()).toEqual(policyJson(DEFAULT_POLICY));

    const strong = await sessionWith(admin.id, [{ method: "password" }, { method: "totp" }]);
    clock.advance(11 * 60_000);
    expectProblem(await putPolicy(tenantId, strong, { requireMfa: true }), 403, "reauthentication-required");
    const fresh = await sessionWith(admin.id, [{ method: "password" }, { method: "totp" }]);
    const updated = await putPolicy(tenantId, fresh, { requireMfa: true, sessionLifetimeMinutes: 120 });
    expectProblem(updated, 200);
    expect(updated.json()).toMatchObject({ requireMfa: true, sessionLifetimeMinutes: 120 });
    expectProblem(await getTenant(tenantId, passwordOnly), 403, "mfa-required");

    const events = (await tenantEvents(tenantId)).filter((e) => e.action === "tenant.security-policy-updated");
    expect(events).toHaveLength(1);
    expect(events[0]?.details).toMatchObject({
      before: { requireMfa: false, sessionLifetimeMinutes: null },
      after: { requireMfa: true, sessionLifetimeMinutes: 120 },
    });
  });

  it("lets only owners name the break-glass owner, and only an owner", async () => {
    const tenantId = await world.newTenant();
    const [owner, admin] = [await world.newUser(), await world.newUser()];
    const ownerMembership = await world.addMember(tenantId, owner.id, "owner");
    const adminMembership = await world.addMember(tenantId, admin.id, "admin");
    const adminSession = await sessionWith(admin.id, [{ method: "password" }]);
    const ownerSession = await sessionWith(owner.id, [{ method: "password" }]);

    expectProblem(
      await putPolicy(tenantId, adminSession, { breakGlassMembershipId: ownerMembership }),
      403,
      "forbidden",
    );
    expectProblem(
      await putPolicy(tenantId, ownerSession, { breakGlassMembershipId: adminMembership }),
      400,
      "validation",
    );
    expectProblem(await putPolicy(tenantId, ownerSession, { breakGlassMembershipId: uuidv7() }), 400, "validation");
    expectProblem(await putPolicy(tenantId, ownerSession, { breakGlassMembershipId: ownerMembership }), 200);
    // An admin may change the rest of the policy but not who holds break-glass.
    expectProblem(
      await putPolicy(tenantId, adminSession, { breakGlassMembershipId: ownerMembership, allowServiceKeys: false }),
      200,
    );
    expectProblem(await putPolicy(tenantId, adminSession, { breakGlassMembershipId: null }), 403, "forbidden");
  });

  it("lets an open break-glass reach the security settings only, for its session, until it expires, audited", async () => {
    const tenantId = await world.newTenant();
    const owner = await world.newUser();
    const membershipId = await world.addMember(tenantId, owner.id, "owner");
    await world.setPolicy(tenantId, { requireSso: true, breakGlassMembershipId: membershipId });
    const passkey = await sessionWith(owner.id, [{ method: "passkey", userVerified: true }]);
    const sameOwnerElsewhere = await sessionWith(owner.id, [{ method: "passkey", userVerified: true }]);
    expectProblem(await getPolicy(tenantId, passkey), 403, "sso-required");

    const [session] = await world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("sessions")
        .select("id")
        .where("user_id", "=", owner.id)
        .orderBy("created_at")
        .orderBy("id")
        .execute(),
    );
    await world.t.db.withTenant({ tenantId }, (tx) =>
      tx
        .insertInto("break_glass_openings")
        .values({
          tenant_id: tenantId,
          id: uuidv7(),
          membership_id: membershipId,
          session_id: session?.id as string,
          opened_at: clock.now(),
          expires_at: new Date(clock.now().getTime() + 60 * 60_000),
        })
        .execute(),
    );
    expectProblem(await getPolicy(tenantId, passkey), 200);
    expectProblem(await getTenant(tenantId, passkey), 403, "sso-required");
    expectProblem(await getPolicy(tenantId, sameOwnerElsewhere), 403, "sso-required");
    const uses = (await tenantEvents(tenantId)).filter((e) => e.action === "auth.break-glass-access");
    expect(uses).toEqual([
      expect.objectContaining({ stream: "security", actor_id: membershipId, details: { permission: "security.read" } }),
    ]);

    clock.advance(60 * 60_000);
    expectProblem(await getPolicy(tenantId, passkey), 403, "sso-required");
  });

  describe("break-glass", () => {
    let providerAnswers = true;
    const probed: string[] = [];
    let glassApp: TestApp;
    beforeAll(async () => {
      // The provider's reachability is what break-glass turns on: an outbound client that answers or fails on cue.
      const outbound: OutboundClient = {
        async request(input) {
          probed.push(String(input.url));
          if (!providerAnswers) throw new Error("connect ECONNREFUSED");
          return { status: 200, headers: {}, body: Buffer.from("{}"), url: String(input.url) };
        },
      };
      glassApp = await buildIdentityTestApp({ ...world.deps, outbound });
    });
    afterAll(async () => {
      await glassApp?.close();
    });

    const openGlass = (tenantId: string, headers: Record<string, string>) =>
      glassApp.app.inject({ method: "POST", url: `/api/v1/tenants/${tenantId}/security/break-glass`, headers });

    async function ssoOnlyTenant() {
      const tenantId = await world.newTenant();
      const [designee, otherOwner, admin] = [await world.newUser(), await world.newUser(), await world.newUser()];
      const designeeMembership = await world.addMember(tenantId, designee.id, "owner");
      await world.addMember(tenantId, otherOwner.id, "owner");
      await world.addMember(tenantId, admin.id, "admin");
      await world.setPolicy(tenantId, {
        requireSso: true,
        allowedMethods: ["sso"],
        breakGlassMembershipId: designeeMembership,
      });
      await world.t.db.withTenant({ tenantId }, (tx) =>
        tx
          .insertInto("sso_configurations")
          .values({
            tenant_id: tenantId,
            id: uuidv7(),
            name: "Corporate",
            issuer: "https://idp.example.com/tenant",
            client_id: "charter",
            client_secret: "sealed elsewhere; never read here",
            email_claim: "email",
            name_claim: "name",
            mfa_amr_values: [],
            enabled: true,
            created_at: clock.now(),
            updated_at: clock.now(),
          })
          .execute(),
      );
      return { tenantId, designee, designeeMembership, otherOwner, admin };
    }

    it("opens for the designated owner with a fresh user-verified passkey only while the provider is down", async () => {
      const { tenantId, designee, designeeMembership, otherOwner, admin } = await ssoOnlyTenant();
      const passkey = await sessionWith(designee.id, [{ method: "passkey", userVerified: true }]);

      providerAnswers = true;
      expectProblem(await openGlass(tenantId, passkey), 409, "conflict");
      expect(probed.at(-1)).toBe("https://idp.example.com/tenant/.well-known/openid-configuration");

      providerAnswers = false;
      expectProblem(
        await openGlass(tenantId, await sessionWith(otherOwner.id, [{ method: "passkey", userVerified: true }])),
        403,
        "forbidden",
      );
      expectProblem(
        await openGlass(tenantId, await sessionWith(admin.id, [{ method: "passkey", userVerified: true }])),
        403,
        "forbidden",
      );
      expectProblem(
        await openGlass(tenantId, await sessionWith(designee.id, [{ method: "password" }, { method: "totp" }])),
        403,
        "reauthentication-required",
      );
      expectProblem(
        await openGlass(tenantId, await sessionWith(designee.id, [{ method: "passkey", userVerified: false }])),
        403,
        "reauthentication-required",
      );
      const stale = await sessionWith(designee.id, [{ method: "passkey", userVerified: true }]);
      clock.advance(11 * 60_000);
      expectProblem(await openGlass(tenantId, stale), 403, "reauthentication-required");
      expect(
        await world.t.db.withTenant({ tenantId }, (tx) => tx.selectFrom("break_glass_openings").select("id").execute()),
      ).toEqual([]);

      const fresh = await sessionWith(designee.id, [{ method: "passkey", userVerified: true }]);
      const opened = await openGlass(tenantId, fresh);
      expectProblem(opened, 201);
      expect(Date.parse(opened.json().expiresAt) - Date.parse(opened.json().openedAt)).toBe(60 * 60_000);

      // Security settings only: the policy can be read and changed, nothing else opens.
      expectProblem(await getPolicy(tenantId, fresh), 200);
      expectProblem(await getTenant(tenantId, fresh), 403, "sso-required");
      const relaxed = await glassApp.app.inject({
        method: "PUT",
        url: `/api/v1/tenants/${tenantId}/security/policy`,
        headers: fresh,
        payload: { ...policyJson(DEFAULT_POLICY), breakGlassMembershipId: designeeMembership },
      });
      expectProblem(relaxed, 200);
      expectProblem(await getTenant(tenantId, fresh), 200);

      const events = (await tenantEvents(tenantId)).map((e) => e.action);
      expect(events).toEqual(
        expect.arrayContaining([
          "auth.break-glass-opened",
          "auth.break-glass-access",
          "tenant.security-policy-updated",
        ]),
      );
      const alerts = await world.t.db.withTenant({ tenantId }, (tx) =>
        tx.selectFrom("tenant_alerts").select(["kind", "membership_id"]).where("tenant_id", "=", tenantId).execute(),
      );
      expect(alerts).toEqual([{ kind: "break-glass-used", membership_id: designeeMembership }]);
    });

    it("is refused where SSO is not required, and lasts one hour", async () => {
      const { tenantId, designee } = await ssoOnlyTenant();
      providerAnswers = false;
      const fresh = await sessionWith(designee.id, [{ method: "passkey", userVerified: true }]);
      expectProblem(await openGlass(tenantId, fresh), 201);
      clock.advance(60 * 60_000);
      expectProblem(await getPolicy(tenantId, fresh), 403, "sso-required");

      const lax = await world.newTenant();
      const owner = await world.newUser();
      const membershipId = await world.addMember(lax, owner.id, "owner");
      await world.setPolicy(lax, { breakGlassMembershipId: membershipId });
      expectProblem(
        await openGlass(lax, await sessionWith(owner.id, [{ method: "passkey", userVerified: true }])),
        409,
        "conflict",
      );
    });
  });
});
