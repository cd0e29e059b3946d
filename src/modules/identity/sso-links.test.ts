import type { LightMyRequestResponse } from "fastify";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { outboundFor, startTestProvider, type TestProvider } from "../../../test/support/oidc-provider.ts";
import { manualClock } from "../../platform/clock.ts";
import type { SessionFactor } from "./schema.ts";
import { RECENT_AUTHENTICATION_MS } from "./sessions.ts";
import { PENDING_LINK_MS } from "./sso-links.ts";
import { SSO_START_PER_ADDRESS } from "./sso-routes.ts";
import {
  addVerifiedDomain,
  createTenantWithOwner,
  joinTenant,
  ssoHarness,
  type TenantWithOwner,
  TestBrowser,
} from "./sso-testing.ts";
import { createTestUser, TEST_PASSWORD, type TestUser, useIdentityTestApp } from "./testing.ts";

let counter = 0;
const unique = () => `${Date.now().toString(36)}${(++counter).toString(36)}`;
const CONFIRM = "/api/v1/sso/links/current/confirm";

describe.each(DATABASE_KINDS)("linking an existing account to a tenant's provider on %s", (kind) => {
  let idp: TestProvider;
  let a: TenantWithOwner;
  let h: ReturnType<typeof ssoHarness>;
  const clock = manualClock(new Date());

  const world = useIdentityTestApp(kind, clock, {
    // The provider starts first: the outbound client lets its loopback address through.
    deps: async (base) => {
      idp = await startTestProvider();
      return { ...base, outbound: outboundFor([idp]) };
    },
  });
  afterAll(() => idp?.close());
  beforeAll(async () => {
    h = ssoHarness(world.deps, [idp]);
    a = await createTenantWithOwner(world.deps, "A");
    await addVerifiedDomain(world.deps, a.tenant.id, "a.example");
  });
  beforeEach(() => clock.advance(SSO_START_PER_ADDRESS.windowSeconds * 1000 + 1000));

  const signIn = (browser: TestBrowser, user: TestUser) =>
    browser.request("POST", "/api/v1/sessions", { email: user.email, password: user.password });

  const membershipsOf = (userId: string) =>
    world.t.db.withTenant({ tenantId: a.tenant.id }, (tx) =>
      tx
        .selectFrom("memberships")
        .select(["id", "role", "status"])
        .where("tenant_id", "=", a.tenant.id)
        .where("user_id", "=", userId)
        .execute(),
    );

  const identitiesOf = (subject: string) =>
    world.t.db.withTenant({ tenantId: a.tenant.id }, (tx) =>
      tx
        .selectFrom("sso_identities")
        .select(["membership_id"])
        .where("tenant_id", "=", a.tenant.id)
        .where("subject", "=", subject)
        .execute(),
    );

  async function expectRefused(response: LightMyRequestResponse, status: number, reason: string) {
    expect(response.statusCode, response.body).toBe(status);
    expect(await h.failuresOf(response.json().requestId)).toEqual([reason]);
  }

  /** An account with a password whose address the provider also vouches for, and the provider's person. */
  async function existingAccount() {
    const user = await createTestUser(world.deps, { email: `bob-${unique()}@a.example` });
    const login = h.person({ email: user.email, email_verified: true, name: "Robert" });
    return { user, login };
  }

  it("links only after the account's owner signs in with their own factor, then adds the SSO factor", async () => {
    const configuration = await h.configure(a.tenant.id);
    const { user, login } = await existingAccount();
    const browser = new TestBrowser(world.app);

    const { response } = await h.signInThrough(browser, a.tenant.id, configuration.id, login);
    expect(response.statusCode, response.body).toBe(303);
    expect(response.headers.location).toBe("https://charter.test/sso/link");
    // Nothing yet: no session, no membership, no identity; only the link waiting in this browser.
    expect(browser.cookie(h.sessionCookie)).toBeUndefined();
    expect(await membershipsOf(user.id)).toEqual([]);
    expect(await identitiesOf(login.sub)).toEqual([]);
    expect((await browser.request("POST", CONFIRM)).statusCode).toBe(401);

    expect((await signIn(browser, user)).statusCode).toBe(200);
    const confirmed = await browser.request("POST", CONFIRM);
    expect(confirmed.statusCode, confirmed.body).toBe(200);
    const [membership] = await membershipsOf(user.id);
    expect(membership).toMatchObject({ role: "member", status: "active" });
    expect(confirmed.json()).toMatchObject({
      tenantId: a.tenant.id,
      configurationId: configuration.id,
      membershipId: membership?.id,
    });
    expect(await identitiesOf(login.sub)).toEqual([{ membership_id: membership?.id }]);
    const session = await h.sessionOf(browser);
    expect(session?.user_id).toBe(user.id);
    expect(session?.factors.map(({ at: _, ...factor }: SessionFactor) => factor)).toEqual([
      { method: "password" },
      { method: "sso", tenantId: a.tenant.id, configurationId: configuration.id, mfa: false },
    ]);
    const events = await world.t.db.withTenant({ tenantId: a.tenant.id }, (tx) =>
      tx
        .selectFrom("audit_events")
        .select("action")
        .where("tenant_id", "=", a.tenant.id)
        .where("target_id", "in", [membership?.id as string])
        .execute(),
    );
    expect(events.map((event) => event.action)).toContain("sso.jit-membership");

    // Linked: the provider alone signs the person in from now on, in any browser.
    const elsewhere = new TestBrowser(world.app);
    const again = await h.signInThrough(elsewhere, a.tenant.id, configuration.id, login);
    expect(again.response.statusCode).toBe(303);
    expect(again.response.headers.location).toBe("https://charter.test/");
    expect((await h.sessionOf(elsewhere))?.user_id).toBe(user.id);
    // The link was used once.
    await expectRefused(await browser.request("POST", CONFIRM), 404, "no-pending-link");
  });

  it("keeps an existing member's role when linking", async () => {
    const configuration = await h.configure(a.tenant.id);
    const { user, login } = await existingAccount();
    const membershipId = await joinTenant(world.deps, a.tenant.id, user.id, "admin");
    const browser = new TestBrowser(world.app);
    await h.signInThrough(browser, a.tenant.id, configuration.id, login);
    await signIn(browser, user);
    expect((await browser.request("POST", CONFIRM)).json().membershipId).toBe(membershipId);
    expect(await membershipsOf(user.id)).toEqual([{ id: membershipId, role: "admin", status: "active" }]);
  });

  it("refuses another user, another browser, a stale sign-in, a late or spent link", async () => {
    const configuration = await h.configure(a.tenant.id);
    const { user, login } = await existingAccount();
    const browser = new TestBrowser(world.app);
    await h.signInThrough(browser, a.tenant.id, configuration.id, login);

    // Someone else signed in in this browser cannot take the link.
    const carol = await createTestUser(world.deps, { email: `carol-${unique()}@a.example` });
    await signIn(browser, carol);
    await expectRefused(await browser.request("POST", CONFIRM), 404, "no-pending-link");

    // The owner, in another browser (without this one's SSO cookie).
    const other = new TestBrowser(world.app);
    await signIn(other, user);
    await expectRefused(await other.request("POST", CONFIRM), 404, "no-pending-link");

    // The owner in this browser, but signed in too long ago.
    await signIn(browser, user);
    clock.advance(RECENT_AUTHENTICATION_MS + 1000);
    const stale = await browser.request("POST", CONFIRM);
    expect(stale.statusCode).toBe(403);
    expect(stale.json().type).toBe("/problems/reauthentication-required");
    const reauthenticate = () =>
      browser.request("POST", "/api/v1/sessions/current/reauthenticate", { password: TEST_PASSWORD });

    // …and once the link expired (a fresh password confirmation does not revive it): a new SSO sign-in is needed.
    clock.advance(PENDING_LINK_MS);
    expect((await reauthenticate()).statusCode).toBe(200);
    await expectRefused(await browser.request("POST", CONFIRM), 404, "no-pending-link");
    expect(await membershipsOf(user.id)).toEqual([]);
    expect(await identitiesOf(login.sub)).toEqual([]);

    await h.signInThrough(browser, a.tenant.id, configuration.id, login);
    await signIn(browser, user);
    expect((await browser.request("POST", CONFIRM)).statusCode).toBe(200);
    await expectRefused(await browser.request("POST", CONFIRM), 404, "no-pending-link");
  });

  it("does not count a session that only a provider opened as the account's own factor", async () => {
    const first = await h.configure(a.tenant.id);
    const second = await h.configure(a.tenant.id);
    const { user, login } = await existingAccount();
    const linking = new TestBrowser(world.app);
    await h.signInThrough(linking, a.tenant.id, first.id, login);
    await signIn(linking, user);
    expect((await linking.request("POST", CONFIRM)).statusCode).toBe(200);

    // A browser where the first provider alone signed the user in asks to link the second.
    const browser = new TestBrowser(world.app);
    await h.signInThrough(browser, a.tenant.id, first.id, login);
    expect((await h.sessionOf(browser))?.user_id).toBe(user.id);
    const { response } = await h.signInThrough(browser, a.tenant.id, second.id, login);
    expect(response.headers.location).toBe("https://charter.test/sso/link");
    expect((await browser.request("POST", CONFIRM)).statusCode).toBe(401);
    const linked = await world.t.db.withTenant({ tenantId: a.tenant.id }, (tx) =>
      tx
        .selectFrom("sso_identities")
        .select("configuration_id")
        .where("tenant_id", "=", a.tenant.id)
        .where("subject", "=", login.sub)
        .execute(),
    );
    expect(linked).toEqual([{ configuration_id: first.id }]);
  });

  it("leaves no link when the provider did not verify the address, or the domain is not the tenant's", async () => {
    const configuration = await h.configure(a.tenant.id);
    const user = await createTestUser(world.deps, { email: `eve-${unique()}@a.example` });
    const browser = new TestBrowser(world.app);
    const unverified = await h.signInThrough(
      browser,
      a.tenant.id,
      configuration.id,
      h.person({ email: user.email, email_verified: false }),
    );
    await expectRefused(unverified.response, 403, "email-unverified");
    const outside = await createTestUser(world.deps, { email: `mallory-${unique()}@elsewhere.example` });
    const foreign = await h.signInThrough(
      browser,
      a.tenant.id,
      configuration.id,
      h.person({ email: outside.email, email_verified: true }),
    );
    await expectRefused(foreign.response, 403, "domain-unverified");
    const links = await world.t.db.withPlatform((tx) =>
      tx.selectFrom("sso_pending_links").select("id").where("user_id", "in", [user.id, outside.id]).execute(),
    );
    expect(links).toEqual([]);
  });
});
