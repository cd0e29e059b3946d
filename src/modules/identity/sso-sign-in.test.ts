import type { LightMyRequestResponse } from "fastify";
import { sql } from "kysely";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { outboundFor, startTestProvider, type TestProvider } from "../../../test/support/oidc-provider.ts";
import { manualClock } from "../../platform/clock.ts";
import { createOutboundClient } from "../../platform/net/index.ts";
import { sessionCookieName } from "./cookies.ts";
import { deviceCookieName } from "./devices.ts";
import type { SessionFactor } from "./schema.ts";
import { FAILURES_BEFORE_SUCCESS } from "./sign-in-alerts.ts";
import { ssoBindingCookieName } from "./sso-binding.ts";
import { ssoRedirectUri } from "./sso-configurations.ts";
import { SSO_START_PER_ADDRESS } from "./sso-routes.ts";
import {
  addConfiguration,
  addVerifiedDomain,
  createTenantWithOwner,
  joinTenant,
  ssoHarness,
  type TenantWithOwner,
  TestBrowser,
} from "./sso-testing.ts";
import { buildIdentityTestApp, randomAddress, TEST_PUBLIC_URL, useIdentityTestApp } from "./testing.ts";
import { hashToken } from "./tokens.ts";

const SESSION = sessionCookieName(TEST_PUBLIC_URL);
const SSO_COOKIE = ssoBindingCookieName(TEST_PUBLIC_URL);
const DEVICE = deviceCookieName(TEST_PUBLIC_URL);
let counter = 0;
const unique = () => `${Date.now().toString(36)}${(++counter).toString(36)}`;

describe.each(DATABASE_KINDS)("single sign-on against a local OpenID provider on %s", (kind) => {
  let idp: TestProvider;
  let rogue: TestProvider;
  let a: TenantWithOwner;
  let b: TenantWithOwner;
  let h: ReturnType<typeof ssoHarness>;
  const clock = manualClock(new Date());

  const world = useIdentityTestApp(kind, clock, {
    // The providers start first: the outbound client lets their loopback addresses through.
    deps: async (base) => {
      [idp, rogue] = await Promise.all([startTestProvider(), startTestProvider()]);
      return { ...base, outbound: outboundFor([idp, rogue]) };
    },
  });
  afterAll(() => Promise.all([idp?.close(), rogue?.close()]));
  beforeAll(async () => {
    h = ssoHarness(world.deps, [idp, rogue]);
    a = await createTenantWithOwner(world.deps, "A");
    b = await createTenantWithOwner(world.deps, "B");
    await addVerifiedDomain(world.deps, a.tenant.id, "a.example");
    await addVerifiedDomain(world.deps, b.tenant.id, "b.example");
  });
  // A fresh rate-limit window for the starts of each test.
  beforeEach(() => clock.advance(SSO_START_PER_ADDRESS.windowSeconds * 1000 + 1000));

  /** The request was refused with `status`, its reason audited, and no session cookie set. */
  async function expectRefused(response: LightMyRequestResponse, status: number, reason: string) {
    expect(response.statusCode, response.body).toBe(status);
    expect(response.headers["content-type"]).toMatch(/application\/problem\+json/);
    expect(response.cookies.find((cookie) => cookie.name === SESSION)).toBeUndefined();
    expect(await h.failuresOf(response.json().requestId)).toEqual([reason]);
  }

  it("signs a new person in just in time: PKCE, state and nonce out; a member, an identity and a session back", async () => {
    const configuration = await h.configure(a.tenant.id);
    const email = `ada-${unique()}@a.example`;
    const login = h.person({ email, email_verified: true, name: "Ada Lovelace" });
    const browser = new TestBrowser(world.app);

    const started = await h.start(browser, a.tenant.id, configuration.id);
    expect(started.statusCode).toBe(302);
    expect(started.headers["cache-control"]).toBe("no-store");
    const request = new URL(started.headers.location as string);
    expect(request.origin).toBe(idp.issuer);
    const params = request.searchParams;
    expect(params.get("client_id")).toBe(configuration.clientId);
    expect(params.get("redirect_uri")).toBe(`https://charter.test/api/v1/sso/callback/${configuration.id}`);
    expect(params.get("response_type")).toBe("code");
    expect(params.get("code_challenge_method")).toBe("S256");
    expect(params.get("code_challenge")).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(params.get("state")).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(params.get("nonce")).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const ssoCookie = started.cookies.find((cookie) => cookie.name === SSO_COOKIE);
    expect(ssoCookie).toMatchObject({ httpOnly: true, secure: true, sameSite: "Lax", path: "/" });

    const answer = await idp.authorize(request, login);
    expect(answer.searchParams.get("iss")).toBe(idp.issuer);
    const response = await browser.request("GET", `${answer.pathname}${answer.search}`);
    expect(response.statusCode, response.body).toBe(303);
    expect(response.headers.location).toBe("https://charter.test/");

    const [user] = await h.usersByEmail(email);
    expect(user).toMatchObject({ display_name: "Ada Lovelace", password_hash: null });
    expect(user?.email_verified_at).not.toBeNull();
    const session = await h.sessionOf(browser);
    expect(session?.user_id).toBe(user?.id);
    expect(session?.state).toBe("active");
    expect(session?.factors.map(({ at: _, ...factor }: SessionFactor) => factor)).toEqual([
      { method: "sso", tenantId: a.tenant.id, configurationId: configuration.id, mfa: false },
    ]);

    const { membership, identity } = await world.t.db.withTenant({ tenantId: a.tenant.id }, async (tx) => ({
      membership: await tx
        .selectFrom("memberships")
        .selectAll()
        .where("tenant_id", "=", a.tenant.id)
        .where("user_id", "=", user?.id as string)
        .executeTakeFirst(),
      identity: await tx
        .selectFrom("sso_identities")
        .selectAll()
        .where("tenant_id", "=", a.tenant.id)
        .where("subject", "=", login.sub)
        .executeTakeFirst(),
    }));
    expect(membership).toMatchObject({ role: "member", status: "active" });
    expect(identity).toMatchObject({
      configuration_id: configuration.id,
      issuer: idp.issuer,
      membership_id: membership?.id,
    });
    // The tenant opens; account-wide settings do not (an SSO factor opens only its tenant).
    expect((await browser.request("GET", `/api/v1/tenants/${a.tenant.id}`)).statusCode).toBe(200);
    expect((await browser.request("GET", "/api/v1/me")).statusCode).toBe(401);

    const events = await world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .select(["action", "details"])
        .where(sql<boolean>`subject_ids @> ARRAY[${user?.id}]::uuid[]`)
        .execute(),
    );
    expect(events.map((event) => event.action)).toEqual(expect.arrayContaining(["auth.signed-up", "auth.signed-in"]));
    expect(JSON.stringify(events)).not.toContain(email);
    const tenantEvents = await world.t.db.withTenant({ tenantId: a.tenant.id }, (tx) =>
      tx
        .selectFrom("audit_events")
        .select(["action", "stream", "details"])
        .where("tenant_id", "=", a.tenant.id)
        .where("action", "in", ["sso.jit-membership", "sso.identity-linked"])
        .execute(),
    );
    expect(tenantEvents.map((event) => [event.action, event.stream]).sort()).toEqual([
      ["sso.identity-linked", "security"],
      ["sso.jit-membership", "changes"],
    ]);
    expect(JSON.stringify(tenantEvents)).not.toContain(email);
  });

  it("signs a known person in by (configuration, issuer, subject), never by email, and counts the accepted amr as MFA", async () => {
    const configuration = await h.configure(a.tenant.id, idp, { mfaAmrValues: ["mfa", "hwk"] });
    const email = `grace-${unique()}@a.example`;
    const login = h.person({ email, email_verified: true, name: "Grace" });
    const first = new TestBrowser(world.app);
    expect(
      (await h.signInThrough(first, a.tenant.id, configuration.id, { ...login, amr: ["pwd"] })).response.statusCode,
    ).toBe(303);
    const [user] = await h.usersByEmail(email);
    expect((await h.sessionOf(first))?.factors[0]).toMatchObject({ method: "sso", mfa: false });

    // The provider now says another address (even another person's, unverified): the subject decides.
    idp.setAccount({ sub: login.sub, claims: { email: `someone-else-${unique()}@b.example`, email_verified: false } });
    const again = new TestBrowser(world.app);
    const { response } = await h.signInThrough(again, a.tenant.id, configuration.id, { ...login, amr: ["pwd", "mfa"] });
    expect(response.statusCode, response.body).toBe(303);
    const session = await h.sessionOf(again);
    expect(session?.user_id).toBe(user?.id);
    expect(session?.factors[0]).toMatchObject({ method: "sso", mfa: true });
    expect(await h.usersByEmail(email)).toHaveLength(1);
  });

  it("adds the factor to the browser's own session of the same user, and ends another user's session", async () => {
    const configuration = await h.configure(a.tenant.id);
    const email = `hopper-${unique()}@a.example`;
    const login = h.person({ email, email_verified: true });
    const browser = new TestBrowser(world.app);
    await h.signInThrough(browser, a.tenant.id, configuration.id, login);
    const first = await h.sessionOf(browser);
    const firstToken = browser.cookie(SESSION);

    await h.signInThrough(browser, a.tenant.id, configuration.id, login);
    const stepped = await h.sessionOf(browser);
    expect(stepped?.id).toBe(first?.id);
    expect(browser.cookie(SESSION)).not.toBe(firstToken);
    expect(stepped?.factors.map((factor: SessionFactor) => factor.method)).toEqual(["sso", "sso"]);

    // Someone else signs in through the same browser: the first session ends.
    await h.signInThrough(
      browser,
      a.tenant.id,
      configuration.id,
      h.person({ email: `x-${unique()}@a.example`, email_verified: true }),
    );
    const other = await h.sessionOf(browser);
    expect(other?.id).not.toBe(first?.id);
    const ended = await world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("sessions")
        .select("revoke_reason")
        .where("id", "=", first?.id as string)
        .executeTakeFirstOrThrow(),
    );
    expect(ended.revoke_reason).toBe("signed-in-again");
  });

  it("remembers the browser like any sign-in: a device cookie, and a new-device alert from another browser", async () => {
    const configuration = await h.configure(a.tenant.id);
    const email = `turing-${unique()}@a.example`;
    const login = h.person({ email, email_verified: true });
    const first = new TestBrowser(world.app);
    expect((await h.signInThrough(first, a.tenant.id, configuration.id, login)).response.statusCode).toBe(303);
    const device = first.cookie(DEVICE);
    expect(device).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const [user] = await h.usersByEmail(email);
    const userId = user?.id as string;
    const known = () =>
      world.t.db.withPlatform((tx) =>
        tx.selectFrom("known_devices").select("token_hash").where("user_id", "=", userId).execute(),
      );
    const alerts = () =>
      world.t.db.withPlatform((tx) =>
        tx.selectFrom("user_alerts").select(["kind", "details"]).where("user_id", "=", userId).execute(),
      );
    expect((await known()).map((row) => Buffer.from(row.token_hash).equals(hashToken(device ?? "")))).toEqual([true]);
    // The account's very first sign-in is from a new browser by necessity: no alert.
    expect(await alerts()).toEqual([]);

    // The same browser again keeps its cookie and raises nothing.
    await h.signInThrough(first, a.tenant.id, configuration.id, login);
    expect(first.cookie(DEVICE)).toBe(device);
    expect(await alerts()).toEqual([]);

    const second = new TestBrowser(world.app);
    expect((await h.signInThrough(second, a.tenant.id, configuration.id, login)).response.statusCode).toBe(303);
    expect(second.cookie(DEVICE)).not.toBe(device);
    expect(await known()).toHaveLength(2);
    expect(await alerts()).toEqual([{ kind: "new-device", details: expect.objectContaining({ method: "sso" }) }]);
    // The member's tenant sees it too: raised in the tenant's own transaction of the sign-in.
    const copies = await world.t.db.withTenant({ tenantId: a.tenant.id }, (tx) =>
      tx
        .selectFrom("tenant_alerts as ta")
        .innerJoin("memberships as m", (join) =>
          join.onRef("m.tenant_id", "=", "ta.tenant_id").onRef("m.id", "=", "ta.membership_id"),
        )
        .select("ta.kind")
        .where("ta.tenant_id", "=", a.tenant.id)
        .where("m.user_id", "=", userId)
        .execute(),
    );
    expect(copies).toEqual([{ kind: "new-device" }]);
  });

  it("alerts a sign-in through the provider after failed sign-ins to the account, and starts the count again (A6)", async () => {
    const configuration = await h.configure(a.tenant.id);
    const email = `hopper-${unique()}@a.example`;
    const login = h.person({ email, email_verified: true });
    const browser = new TestBrowser(world.app);
    expect((await h.signInThrough(browser, a.tenant.id, configuration.id, login)).response.statusCode).toBe(303);
    const [user] = await h.usersByEmail(email);
    const afterFailures = () =>
      world.t.db.withPlatform((tx) =>
        tx
          .selectFrom("user_alerts")
          .select("details")
          .where("user_id", "=", user?.id as string)
          .where("kind", "=", "sign-in-after-failures")
          .execute(),
      );
    for (let i = 0; i < FAILURES_BEFORE_SUCCESS; i++) {
      const wrong = await world.app.app.inject({
        method: "POST",
        url: "/api/v1/sessions",
        remoteAddress: randomAddress(),
        headers: { "sec-fetch-site": "same-origin" },
        payload: { email, password: "a guess at a password it does not have" },
      });
      expect(wrong.statusCode).toBe(401);
    }
    expect(await afterFailures()).toEqual([]);
    expect((await h.signInThrough(browser, a.tenant.id, configuration.id, login)).response.statusCode).toBe(303);
    expect(await afterFailures()).toEqual([{ details: { failures: FAILURES_BEFORE_SUCCESS } }]);
    expect((await h.signInThrough(browser, a.tenant.id, configuration.id, login)).response.statusCode).toBe(303);
    expect(await afterFailures()).toHaveLength(1);
  });

  it("goes back to the path it was started with, and refuses any other origin", async () => {
    const configuration = await h.configure(a.tenant.id);
    const browser = new TestBrowser(world.app);
    const started = await h.start(browser, a.tenant.id, configuration.id, "?returnTo=%2Fdeals%3Fview%3Dmine");
    const answer = await idp.authorize(
      started.headers.location as string,
      h.person({ email: `r-${unique()}@a.example`, email_verified: true }),
    );
    const response = await browser.request("GET", `${answer.pathname}${answer.search}`);
    expect(response.headers.location).toBe("https://charter.test/deals?view=mine");
    for (const evil of ["//evil.example/", "/\\evil.example", "https://evil.example/", "/\t//evil.example"]) {
      const refused = await h.start(browser, a.tenant.id, configuration.id, `?returnTo=${encodeURIComponent(evil)}`);
      expect(refused.statusCode, evil).toBe(400);
    }
  });

  it("refuses an ID token with another nonce than the one sent", async () => {
    const configuration = await h.configure(a.tenant.id);
    const email = `nonce-${unique()}@a.example`;
    const browser = new TestBrowser(world.app);
    const { response } = await h.signInThrough(
      browser,
      a.tenant.id,
      configuration.id,
      h.person({ email, email_verified: true }),
      {
        request: (url) => {
          url.searchParams.set("nonce", "n".repeat(43));
          return url;
        },
      },
    );
    await expectRefused(response, 401, "nonce-mismatch");
    expect(await h.usersByEmail(email)).toHaveLength(0);
  });

  it("refuses an answer naming another issuer, or none (RFC 9207 mix-up defence)", async () => {
    const configuration = await h.configure(a.tenant.id);
    const login = h.person({ email: `iss-${unique()}@a.example`, email_verified: true });
    const wrong = await h.signInThrough(new TestBrowser(world.app), a.tenant.id, configuration.id, login, {
      answer: (url) => {
        url.searchParams.set("iss", rogue.issuer);
        return url;
      },
    });
    await expectRefused(wrong.response, 401, "issuer-mismatch");
    const missing = await h.signInThrough(new TestBrowser(world.app), a.tenant.id, configuration.id, login, {
      answer: (url) => {
        url.searchParams.delete("iss");
        return url;
      },
    });
    await expectRefused(missing.response, 401, "issuer-mismatch");
  });

  it("refuses a code from another provider sent to this configuration's redirect URI (mix-up)", async () => {
    const configuration = await h.configure(a.tenant.id);
    // The rogue provider knows the same client and redirect URI: the browser is sent to it instead.
    rogue.addClient({
      clientId: configuration.clientId,
      clientSecret: configuration.clientSecret,
      redirectUri: ssoRedirectUri(TEST_PUBLIC_URL, configuration.id),
    });
    const browser = new TestBrowser(world.app);
    const started = await h.start(browser, a.tenant.id, configuration.id);
    const request = new URL(started.headers.location as string);
    const diverted = new URL(`${request.pathname}${request.search}`, rogue.issuer);
    const email = `mixup-${unique()}@a.example`;
    const answer = await rogue.authorize(diverted, h.person({ email, email_verified: true }));
    expect(answer.searchParams.get("iss")).toBe(rogue.issuer);
    const response = await browser.request("GET", `${answer.pathname}${answer.search}`);
    await expectRefused(response, 401, "issuer-mismatch");
    // Without its iss, the rogue's code still fails: it is redeemed at the configured provider, which never issued it.
    const started2 = await h.start(browser, a.tenant.id, configuration.id);
    const request2 = new URL(started2.headers.location as string);
    const answer2 = await rogue.authorize(
      new URL(`${request2.pathname}${request2.search}`, rogue.issuer),
      h.person({ email, email_verified: true }),
    );
    answer2.searchParams.set("iss", idp.issuer);
    await expectRefused(await browser.request("GET", `${answer2.pathname}${answer2.search}`), 401, "provider-error");
    expect(await h.usersByEmail(email)).toHaveLength(0);
  });

  it("refuses the provider's own refusal, and spends the sign-in", async () => {
    const configuration = await h.configure(a.tenant.id);
    const browser = new TestBrowser(world.app);
    const { answer, response } = await h.signInThrough(
      browser,
      a.tenant.id,
      configuration.id,
      h.person({ email: `denied-${unique()}@a.example`, email_verified: true }),
      {
        answer: (url) => {
          const denied = new URL(url.pathname, url);
          denied.searchParams.set("error", "access_denied");
          denied.searchParams.set("state", url.searchParams.get("state") as string);
          denied.searchParams.set("iss", url.searchParams.get("iss") as string);
          return denied;
        },
      },
    );
    await expectRefused(response, 401, "provider-error");
    await expectRefused(await browser.request("GET", `${answer.pathname}${answer.search}`), 401, "replayed");
  });

  it("refuses a person whose address the provider did not verify, or in a domain the tenant did not verify", async () => {
    const configuration = await h.configure(a.tenant.id);
    const unverified = `unverified-${unique()}@a.example`;
    const first = await h.signInThrough(
      new TestBrowser(world.app),
      a.tenant.id,
      configuration.id,
      h.person({ email: unverified, email_verified: false }),
    );
    await expectRefused(first.response, 403, "email-unverified");
    const silent = await h.signInThrough(
      new TestBrowser(world.app),
      a.tenant.id,
      configuration.id,
      h.person({ email: unverified }),
    );
    await expectRefused(silent.response, 403, "email-unverified");
    expect(await h.usersByEmail(unverified)).toHaveLength(0);

    // b.example is B's verified domain, not A's; c.example is claimed by A but not verified.
    await world.deps.db.withTenant({ tenantId: a.tenant.id }, (tx) =>
      tx
        .insertInto("sso_domains")
        .values({
          tenant_id: a.tenant.id,
          id: crypto.randomUUID(),
          domain: "c.example",
          verification_token: "t".repeat(43),
          created_at: clock.now(),
        })
        .execute(),
    );
    for (const email of [
      `other-${unique()}@b.example`,
      `claimed-${unique()}@c.example`,
      `sub-${unique()}@x.a.example`,
    ]) {
      const { response } = await h.signInThrough(
        new TestBrowser(world.app),
        a.tenant.id,
        configuration.id,
        h.person({ email, email_verified: true }),
      );
      await expectRefused(response, 403, "domain-unverified");
      expect(await h.usersByEmail(email)).toHaveLength(0);
    }
    const nameless = await h.signInThrough(
      new TestBrowser(world.app),
      a.tenant.id,
      configuration.id,
      h.person({ name: "No Mail" }),
    );
    await expectRefused(nameless.response, 403, "email-missing");
  });

  it("answers each sign-in once, in the browser that started it, within 10 minutes, at its own configuration", async () => {
    const configuration = await h.configure(a.tenant.id);
    const other = await h.configure(a.tenant.id);
    const login = h.person({ email: `once-${unique()}@a.example`, email_verified: true });

    const browser = new TestBrowser(world.app);
    const { answer, response } = await h.signInThrough(browser, a.tenant.id, configuration.id, login);
    expect(response.statusCode).toBe(303);
    await expectRefused(await browser.request("GET", `${answer.pathname}${answer.search}`), 401, "replayed");

    // Another browser (no SSO cookie, or another one) presenting the answer.
    const victim = new TestBrowser(world.app);
    const stolen = await h.signInThrough(victim, a.tenant.id, configuration.id, login, { answer: (url) => url });
    expect(stolen.response.statusCode).toBe(303);
    const started = await h.start(victim, a.tenant.id, configuration.id);
    const taken = await idp.authorize(started.headers.location as string, login);
    const attacker = new TestBrowser(world.app);
    await expectRefused(await attacker.request("GET", `${taken.pathname}${taken.search}`), 401, "binding-mismatch");
    await h.start(attacker, a.tenant.id, configuration.id);
    await expectRefused(await attacker.request("GET", `${taken.pathname}${taken.search}`), 401, "binding-mismatch");

    // The same answer at another configuration's redirect URI (of this tenant or of another).
    const elsewhere = `/api/v1/sso/callback/${other.id}${taken.search}`;
    await expectRefused(await victim.request("GET", elsewhere), 401, "configuration-mismatch");
    // Still good where it belongs, in the browser that started it: the refusals did not spend it.
    expect((await victim.request("GET", `${taken.pathname}${taken.search}`)).statusCode).toBe(303);

    const late = await h.start(victim, a.tenant.id, configuration.id);
    const lateAnswer = await idp.authorize(late.headers.location as string, login);
    clock.advance(10 * 60_000 + 1);
    await expectRefused(await victim.request("GET", `${lateAnswer.pathname}${lateAnswer.search}`), 401, "expired");

    await expectRefused(
      await victim.request("GET", `/api/v1/sso/callback/${configuration.id}?code=x`),
      400,
      "missing-state",
    );
    await expectRefused(
      await victim.request("GET", `/api/v1/sso/callback/${configuration.id}?code=x&state=${"s".repeat(43)}`),
      401,
      "unknown-state",
    );
  });

  it("keeps tenant A's SSO to tenant A: its answer is refused at B's configuration, its session opens only A", async () => {
    const inA = await h.configure(a.tenant.id);
    const inB = await h.configure(b.tenant.id);
    const email = `both-${unique()}@a.example`;
    const login = h.person({ email, email_verified: true });
    const browser = new TestBrowser(world.app);
    await h.signInThrough(browser, a.tenant.id, inA.id, login);
    const [user] = await h.usersByEmail(email);
    await joinTenant(world.deps, b.tenant.id, user?.id as string, "member");

    // A's sign-in, answered at B's redirect URI.
    const started = await h.start(browser, a.tenant.id, inA.id);
    const answer = await idp.authorize(started.headers.location as string, login);
    await expectRefused(
      await browser.request("GET", `/api/v1/sso/callback/${inB.id}${answer.search}`),
      401,
      "configuration-mismatch",
    );

    // The session A's provider opened reaches A, never B, though the user is B's member too.
    expect((await browser.request("GET", `/api/v1/tenants/${a.tenant.id}`)).statusCode).toBe(200);
    expect((await browser.request("GET", `/api/v1/tenants/${b.tenant.id}`)).statusCode).toBe(403);
    expect(
      (await h.sessionOf(browser))?.factors.every((factor: SessionFactor) => factor.tenantId === a.tenant.id),
    ).toBe(true);
    // B's own provider is no help for A's identity: the subject is not linked in B, and no member is made of it there.
    const { response } = await h.signInThrough(browser, b.tenant.id, inB.id, login);
    await expectRefused(response, 403, "domain-unverified");
  });

  it("lets a removed member back in only by invitation, and a disabled configuration not at all", async () => {
    const configuration = await h.configure(a.tenant.id);
    const email = `gone-${unique()}@a.example`;
    const login = h.person({ email, email_verified: true });
    await h.signInThrough(new TestBrowser(world.app), a.tenant.id, configuration.id, login);
    const [user] = await h.usersByEmail(email);
    await world.t.db.withTenant({ tenantId: a.tenant.id }, async (tx) => {
      await tx
        .updateTable("memberships")
        .set({ status: "removed", removed_at: clock.now() })
        .where("tenant_id", "=", a.tenant.id)
        .where("user_id", "=", user?.id as string)
        .execute();
      await tx
        .deleteFrom("user_tenants")
        .where("user_id", "=", user?.id as string)
        .execute();
    });
    const removed = await h.signInThrough(new TestBrowser(world.app), a.tenant.id, configuration.id, login);
    await expectRefused(removed.response, 403, "not-a-member");

    const membershipId = await joinTenant(world.deps, a.tenant.id, user?.id as string, "viewer");
    const back = new TestBrowser(world.app);
    expect((await h.signInThrough(back, a.tenant.id, configuration.id, login)).response.statusCode).toBe(303);
    expect((await h.sessionOf(back))?.user_id).toBe(user?.id);
    const identity = await world.t.db.withTenant({ tenantId: a.tenant.id }, (tx) =>
      tx
        .selectFrom("sso_identities")
        .select("membership_id")
        .where("tenant_id", "=", a.tenant.id)
        .where("subject", "=", login.sub)
        .executeTakeFirst(),
    );
    expect(identity?.membership_id).toBe(membershipId);

    const browser = new TestBrowser(world.app);
    const started = await h.start(browser, a.tenant.id, configuration.id);
    await world.t.db.withTenant({ tenantId: a.tenant.id }, (tx) =>
      tx
        .updateTable("sso_configurations")
        .set({ enabled: false })
        .where("tenant_id", "=", a.tenant.id)
        .where("id", "=", configuration.id)
        .execute(),
    );
    const answer = await idp.authorize(started.headers.location as string, login);
    await expectRefused(
      await browser.request("GET", `${answer.pathname}${answer.search}`),
      404,
      "configuration-unavailable",
    );
    await expectRefused(await h.start(browser, a.tenant.id, configuration.id), 404, "configuration-unavailable");
    await expectRefused(await h.start(browser, b.tenant.id, configuration.id), 404, "configuration-unavailable");
  });

  it("calls providers only through the outbound client, which refuses loopback and private addresses", async () => {
    const configuration = await h.configure(a.tenant.id);
    const production = {
      ...world.deps,
      outbound: createOutboundClient({ resolve: async () => [{ address: "127.0.0.1" }] }),
    };
    const guarded = await buildIdentityTestApp(production);
    try {
      await expectRefused(
        await h.start(new TestBrowser(guarded), a.tenant.id, configuration.id),
        503,
        "provider-unreachable",
      );
    } finally {
      await guarded.close();
    }
    const internal = await addConfiguration(world.deps, a.tenant.id, { issuer: "https://10.1.2.3/realms/x" });
    await expectRefused(
      await h.start(new TestBrowser(world.app), a.tenant.id, internal.id),
      503,
      "provider-unreachable",
    );
    // The provider answers, but its metadata names another issuer than the one configured.
    const misnamed = await addConfiguration(world.deps, a.tenant.id, {
      issuer: idp.issuer.replace("localhost", "127.0.0.1"),
    });
    await expectRefused(await h.start(new TestBrowser(world.app), a.tenant.id, misnamed.id), 503, "discovery-failed");
  });

  it("throttles sign-in starts per source address", async () => {
    const configuration = await h.configure(a.tenant.id);
    const browser = new TestBrowser(world.app);
    for (let i = 0; i < SSO_START_PER_ADDRESS.limit; i++) {
      expect((await h.start(browser, a.tenant.id, configuration.id)).statusCode).toBe(302);
    }
    const refused = await h.start(browser, a.tenant.id, configuration.id);
    expect(refused.statusCode).toBe(429);
    expect(refused.headers["retry-after"]).toBeDefined();
  });
});
