import type { LightMyRequestResponse } from "fastify";
import { sql } from "kysely";
import { beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import {
  type AssertionOverrides,
  type CreationOptions,
  type RegistrationOverrides,
  type RequestOptions,
  SoftwareAuthenticator,
} from "../../../test/support/webauthn-authenticator.ts";
import { manualClock } from "../../platform/clock.ts";
import { SECOND_FACTOR_PER_ACCOUNT } from "./code-factors.ts";
import { CHALLENGE_LIFETIME_MS } from "./passkeys.ts";
import { RECENT_AUTHENTICATION_MS } from "./sessions.ts";
import { BURST_FAILURES, BURST_WINDOW_MS } from "./sign-in-alerts.ts";
import { randomAddress, signIn, type TestUser, useIdentityTestApp } from "./testing.ts";

const SESSION = "__Host-charter_session";
const PREAUTH = "__Host-charter_preauth";

describe.each(DATABASE_KINDS)("passkey routes on %s", (kind) => {
  const clock = manualClock("2026-05-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);

  // Each test starts in fresh rate-limit windows, well apart from the previous test's ceremonies.
  beforeEach(() => clock.advance(60 * 60_000));

  /** A browser: its cookies (kept current as responses set them) and its authenticator. */
  interface Browser {
    cookies: Map<string, string>;
    authenticator: SoftwareAuthenticator;
  }
  const browser = (authenticator = new SoftwareAuthenticator()): Browser => ({ cookies: new Map(), authenticator });
  const cookieHeader = (b: Browser) => [...b.cookies].map(([name, value]) => `${name}=${value}`).join("; ");
  function keep(b: Browser, response: LightMyRequestResponse) {
    for (const cookie of response.cookies) {
      if (cookie.value === "" || cookie.maxAge === 0) b.cookies.delete(cookie.name);
      else b.cookies.set(cookie.name, cookie.value);
    }
    return response;
  }
  async function send(b: Browser, method: "GET" | "POST" | "PATCH" | "DELETE", url: string, payload?: object) {
    const response = await world.app.app.inject({
      method,
      url,
      remoteAddress: randomAddress(),
      headers: { "sec-fetch-site": "same-origin", ...(b.cookies.size > 0 ? { cookie: cookieHeader(b) } : {}) },
      ...(payload ? { payload } : {}),
    });
    return keep(b, response);
  }
  async function signedIn(user: TestUser, b = browser()): Promise<Browser> {
    const session = await signIn(world.app, user.email, user.password);
    b.cookies.set(SESSION, session.token);
    return b;
  }
  const me = (b: Browser) => send(b, "GET", "/api/v1/sessions/current");

  async function registrationOptions(b: Browser): Promise<CreationOptions> {
    const response = await send(b, "POST", "/api/v1/me/passkeys/registration-options");
    expect(response.statusCode, response.body).toBe(200);
    return response.json();
  }
  async function register(b: Browser, overrides: RegistrationOverrides = {}, name = "Laptop") {
    const response = b.authenticator.register(await registrationOptions(b), overrides);
    return send(b, "POST", "/api/v1/me/passkeys", { name, response });
  }
  /** A user with a password and a registered passkey, and the browser holding both. */
  async function userWithPasskey(authenticator = new SoftwareAuthenticator()) {
    const user = await world.newUser();
    const b = await signedIn(user, browser(authenticator));
    const registered = await register(b);
    expect(registered.statusCode, registered.body).toBe(201);
    return { user, b, passkeyId: registered.json().id as string };
  }
  async function signInOptions(b: Browser): Promise<RequestOptions> {
    const response = await send(b, "POST", "/api/v1/sessions/passkey/options");
    expect(response.statusCode, response.body).toBe(200);
    return response.json();
  }
  async function passkeySignIn(b: Browser, overrides: AssertionOverrides = {}) {
    const response = b.authenticator.assert(await signInOptions(b), overrides);
    return send(b, "POST", "/api/v1/sessions/passkey", { response });
  }
  const events = (action: string, subject?: string) =>
    world.t.db.withPlatform((tx) => {
      let query = tx.selectFrom("platform_audit_events").selectAll().where("action", "=", action);
      if (subject) query = query.where(sql<boolean>`${subject}::uuid = ANY(subject_ids)`);
      return query.orderBy("at").orderBy("id").execute();
    });
  const failures = async (subject: string) => (await events("auth.passkey-failed", subject)).map((e) => e.details);
  const passkeyRow = (id: string) =>
    world.t.db.withPlatform((tx) =>
      tx.selectFrom("passkeys").selectAll().where("id", "=", id).executeTakeFirstOrThrow(),
    );
  const sessionRow = (id: string) =>
    world.t.db.withPlatform((tx) =>
      tx.selectFrom("sessions").selectAll().where("id", "=", id).executeTakeFirstOrThrow(),
    );

  describe("registration", () => {
    it("registers a passkey with packed self-attestation: options, verification, storage, audit, list", async () => {
      const user = await world.newUser({ displayName: "Ada" });
      const b = await signedIn(user);
      const options = await registrationOptions(b);
      expect(options).toMatchObject({
        rp: { id: "charter.test", name: "Charter" },
        user: { name: user.email, displayName: "Ada" },
        attestation: "none",
        excludeCredentials: [],
        authenticatorSelection: { residentKey: "required", userVerification: "required" },
      });
      const handle = await world.t.db.withPlatform((tx) =>
        tx.selectFrom("users").select("webauthn_handle").where("id", "=", user.id).executeTakeFirstOrThrow(),
      );
      expect(Buffer.from(handle.webauthn_handle ?? []).toString("base64url")).toBe(options.user.id);
      expect(handle.webauthn_handle).toHaveLength(32);

      const response = b.authenticator.register(options, { format: "packed" });
      const created = await send(b, "POST", "/api/v1/me/passkeys", { name: "  Work laptop ", response });
      expect(created.statusCode, created.body).toBe(201);
      const passkey = created.json();
      expect(passkey).toMatchObject({
        name: "Work laptop",
        deviceType: "singleDevice",
        backedUp: false,
        transports: ["internal", "hybrid"],
        createdAt: clock.now().toISOString(),
        lastUsedAt: null,
      });
      const row = await passkeyRow(passkey.id);
      expect(row.user_id).toBe(user.id);
      expect(Buffer.from(row.credential_id).toString("base64url")).toBe(response.id);
      expect(Number(row.sign_count)).toBe(0);
      expect(row.aaguid?.replaceAll("-", "")).toBe(b.authenticator.aaguid.toString("hex"));
      const registered = await events("auth.passkey-registered", user.id);
      expect(registered).toHaveLength(1);
      expect(registered[0]).toMatchObject({ actor_id: user.id, target_type: "passkey", target_id: passkey.id });
      expect(JSON.stringify(registered[0]?.details)).not.toContain("Work laptop");

      const list = await send(b, "GET", "/api/v1/me/passkeys");
      expect(list.json()).toEqual({ items: [passkey] });

      // The handle is made once; the next ceremony excludes the credential already registered.
      const again = await registrationOptions(b);
      expect(again.user.id).toBe(options.user.id);
      expect(again).toMatchObject({ excludeCredentials: [{ id: response.id, type: "public-key" }] });
    });

    it('accepts "none" attestation and a synced passkey', async () => {
      const user = await world.newUser();
      const b = await signedIn(user, browser(new SoftwareAuthenticator({ backedUp: true })));
      const created = await register(b, { format: "none" });
      expect(created.statusCode, created.body).toBe(201);
      expect(created.json()).toMatchObject({ deviceType: "multiDevice", backedUp: true, name: "Laptop" });
    });

    it("needs recent authentication, for the options and for the response", async () => {
      const user = await world.newUser();
      const b = await signedIn(user);
      const options = await registrationOptions(b);
      clock.advance(RECENT_AUTHENTICATION_MS + 1000);
      const late = await send(b, "POST", "/api/v1/me/passkeys", { response: b.authenticator.register(options) });
      expect(late.statusCode).toBe(403);
      expect(late.json().type).toBe("/problems/reauthentication-required");
      const refused = await send(b, "POST", "/api/v1/me/passkeys/registration-options");
      expect(refused.statusCode).toBe(403);
      expect(
        await world.t.db.withPlatform((tx) =>
          tx.selectFrom("passkeys").select("id").where("user_id", "=", user.id).execute(),
        ),
      ).toEqual([]);
    });

    it.each([
      ["a wrong origin", { origin: "https://charter.test.evil.example" }, "wrong-origin"],
      ["a wrong RP id", { rpId: "evil.example" }, "wrong-rp-id"],
      ["no user verification", { userVerified: false }, "user-not-verified"],
      ["no user presence", { userPresent: false }, "user-not-present"],
      ["an assertion's type", { type: "webauthn.get" }, "invalid-response"],
      ["a challenge of its own", { challenge: "A".repeat(43) }, "challenge"],
    ] as const)("refuses a registration with %s, and audits why", async (_label, overrides, reason) => {
      const user = await world.newUser();
      const b = await signedIn(user);
      const refused = await register(b, overrides);
      expect(refused.statusCode).toBe(400);
      expect(refused.json().type).toBe("/problems/bad-request");
      expect(await failures(user.id)).toEqual([{ purpose: "register", reason }]);
      expect((await send(b, "GET", "/api/v1/me/passkeys")).json()).toEqual({ items: [] });
    });

    it("refuses a replayed response and a challenge issued to another session", async () => {
      const user = await world.newUser();
      const b = await signedIn(user);
      const options = await registrationOptions(b);
      const response = b.authenticator.register(options);
      // Posted from another session of the same user: that session never asked for this challenge.
      const other = await signedIn(user);
      expect((await send(other, "POST", "/api/v1/me/passkeys", { response })).statusCode).toBe(400);
      // The challenge is still the first session's… but a new options call replaced it.
      const replay = b.authenticator.register(options);
      await registrationOptions(b);
      expect((await send(b, "POST", "/api/v1/me/passkeys", { response: replay })).statusCode).toBe(400);
      // A fresh challenge works once; the same response again is a replay.
      const fresh = b.authenticator.register(await registrationOptions(b));
      expect((await send(b, "POST", "/api/v1/me/passkeys", { response: fresh })).statusCode).toBe(201);
      expect((await send(b, "POST", "/api/v1/me/passkeys", { response: fresh })).statusCode).toBe(400);
      expect(await failures(user.id)).toEqual([
        { purpose: "register", reason: "challenge" },
        { purpose: "register", reason: "challenge" },
        { purpose: "register", reason: "challenge" },
      ]);
    });

    it("refuses an expired challenge", async () => {
      const user = await world.newUser();
      const b = await signedIn(user);
      const options = await registrationOptions(b);
      clock.advance(CHALLENGE_LIFETIME_MS);
      const refused = await send(b, "POST", "/api/v1/me/passkeys", { response: b.authenticator.register(options) });
      expect(refused.statusCode).toBe(400);
      expect(await failures(user.id)).toEqual([{ purpose: "register", reason: "challenge" }]);
    });

    it("refuses a credential id already known, the user's own or another user's (409)", async () => {
      const { user, b } = await userWithPasskey();
      const known = b.authenticator.credentials[0]?.id as Buffer;
      const own = await register(b, { credentialId: known });
      expect(own.statusCode).toBe(409);
      const stranger = await world.newUser();
      const sb = await signedIn(stranger);
      const theirs = await register(sb, { credentialId: known });
      expect(theirs.statusCode).toBe(409);
      expect(await failures(user.id)).toEqual([{ purpose: "register", reason: "known-credential" }]);
      expect(await failures(stranger.id)).toEqual([{ purpose: "register", reason: "known-credential" }]);
      expect(
        await world.t.db.withPlatform((tx) =>
          tx.selectFrom("passkeys").select("id").where("user_id", "=", stranger.id).execute(),
        ),
      ).toEqual([]);
    });

    it("refuses malformed input before verifying anything", async () => {
      const user = await world.newUser();
      const b = await signedIn(user);
      const response = b.authenticator.register(await registrationOptions(b));
      for (const body of [
        { response: { ...response, type: "password" } },
        { response: { ...response, id: "not base64url!" } },
        { response, name: "two\nlines" },
        { response, name: "x".repeat(65) },
      ]) {
        expect((await send(b, "POST", "/api/v1/me/passkeys", body)).statusCode).toBe(400);
      }
      expect(await failures(user.id)).toEqual([]);
    });

    it("is for signed-in people only", async () => {
      const anonymous = browser();
      expect((await send(anonymous, "POST", "/api/v1/me/passkeys/registration-options")).statusCode).toBe(401);
      expect((await send(anonymous, "GET", "/api/v1/me/passkeys")).statusCode).toBe(401);
    });
  });

  describe("rename and remove", () => {
    it("renames one's own passkey; another user's is not found", async () => {
      const { user, b, passkeyId } = await userWithPasskey();
      const renamed = await send(b, "PATCH", `/api/v1/me/passkeys/${passkeyId}`, { name: "Phone" });
      expect(renamed.statusCode).toBe(200);
      expect(renamed.json()).toMatchObject({ id: passkeyId, name: "Phone" });
      expect(await events("auth.passkey-renamed", user.id)).toHaveLength(1);

      const stranger = await signedIn(await world.newUser());
      const theirs = await send(stranger, "PATCH", `/api/v1/me/passkeys/${passkeyId}`, { name: "Mine now" });
      expect(theirs.statusCode).toBe(404);
      expect((await send(stranger, "DELETE", `/api/v1/me/passkeys/${passkeyId}`)).statusCode).toBe(404);
      expect((await passkeyRow(passkeyId)).name).toBe("Phone");
    });

    it("removes a passkey after recent authentication; then it signs in no more", async () => {
      const { user, b, passkeyId } = await userWithPasskey();
      clock.advance(RECENT_AUTHENTICATION_MS + 1000);
      const stale = await send(b, "DELETE", `/api/v1/me/passkeys/${passkeyId}`);
      expect(stale.statusCode).toBe(403);
      expect(stale.json().type).toBe("/problems/reauthentication-required");
      await passkeyRow(passkeyId);

      const stepUp = b.authenticator.assert(await ownOptions(b, "reauthenticate"));
      expect(
        (await send(b, "POST", "/api/v1/sessions/current/reauthenticate/passkey", { response: stepUp })).statusCode,
      ).toBe(200);
      expect((await send(b, "DELETE", `/api/v1/me/passkeys/${passkeyId}`)).statusCode).toBe(204);
      expect(await events("auth.passkey-removed", user.id)).toHaveLength(1);
      expect((await send(b, "DELETE", `/api/v1/me/passkeys/${passkeyId}`)).statusCode).toBe(404);

      const refused = await passkeySignIn(browser(b.authenticator));
      expect(refused.statusCode).toBe(401);
      // Without a second factor, a password sign-in is complete again.
      const session = await signIn(world.app, user.email, user.password);
      expect((await sessionRow(session.sessionId)).state).toBe("active");
    });

    it("keeps the last second factor of a member of a tenant that requires MFA, not any other passkey (409)", async () => {
      const { user, b, passkeyId } = await userWithPasskey();
      const strict = await world.newTenant("Strict Ltd");
      await world.addMember(strict, user.id, "member");
      await world.setPolicy(strict, { requireMfa: true });
      await world.addMember(await world.newTenant("Lax Ltd"), user.id, "member");

      const refused = await send(b, "DELETE", `/api/v1/me/passkeys/${passkeyId}`);
      expect(refused.statusCode).toBe(409);
      expect(refused.headers["content-type"]).toMatch(/^application\/problem\+json/);
      expect(refused.json()).toMatchObject({
        type: "/problems/last-second-factor",
        detail: expect.stringMatching(/^1 of your organizations requires a second factor \(Strict Ltd\)/),
      });
      await passkeyRow(passkeyId);
      expect(await events("auth.passkey-removed", user.id)).toEqual([]);

      // With another passkey left, either may go; the one left is again the last.
      const other = await register(b, {}, "Phone");
      expect(other.statusCode, other.body).toBe(201);
      expect((await send(b, "DELETE", `/api/v1/me/passkeys/${passkeyId}`)).statusCode).toBe(204);
      const last = await send(b, "DELETE", `/api/v1/me/passkeys/${other.json().id}`);
      expect(last.statusCode).toBe(409);
      expect(last.json().type).toBe("/problems/last-second-factor");
    });
  });

  async function ownOptions(b: Browser, purpose: "reauthenticate" | "second-factor"): Promise<RequestOptions> {
    const url =
      purpose === "reauthenticate"
        ? "/api/v1/sessions/current/reauthenticate/passkey/options"
        : "/api/v1/sessions/current/second-factor/passkey/options";
    const response = await send(b, "POST", url);
    expect(response.statusCode, response.body).toBe(200);
    return response.json();
  }

  describe("sign-in with a passkey", () => {
    it("signs in: a discoverable credential, bound to this browser's pre-authentication cookie", async () => {
      const { user, passkeyId, b: owner } = await userWithPasskey();
      const b = browser(owner.authenticator);
      const optionsResponse = await send(b, "POST", "/api/v1/sessions/passkey/options");
      expect(optionsResponse.statusCode).toBe(200);
      const options = optionsResponse.json();
      expect(options).toMatchObject({ rpId: "charter.test", userVerification: "required", allowCredentials: [] });
      const setCookie = String(optionsResponse.headers["set-cookie"]);
      expect(setCookie).toMatch(/^__Host-charter_preauth=[A-Za-z0-9_-]{43}; /);
      for (const attribute of ["Path=/", "HttpOnly", "SameSite=Lax", "Secure", "Max-Age=300"]) {
        expect(setCookie).toContain(attribute);
      }

      clock.advance(1000);
      const response = b.authenticator.assert(options);
      const signedIn = await send(b, "POST", "/api/v1/sessions/passkey", { response });
      expect(signedIn.statusCode, signedIn.body).toBe(200);
      expect(signedIn.json().session.state).toBe("active");
      expect(b.cookies.has(PREAUTH)).toBe(false);
      expect(b.cookies.get(SESSION)).toMatch(/^[A-Za-z0-9_-]{43}$/);
      const who = await me(b);
      expect(who.statusCode).toBe(200);
      expect(who.json().user.id).toBe(user.id);
      const session = await sessionRow(signedIn.json().session.id);
      expect(session.factors).toEqual([{ method: "passkey", userVerified: true, at: clock.now().toISOString() }]);
      const audited = (await events("auth.signed-in", user.id)).filter((e) => e.target_id === session.id);
      expect(audited.map((e) => e.details)).toEqual([{ method: "passkey", userVerified: true }]);
      const row = await passkeyRow(passkeyId);
      expect(Number(row.sign_count)).toBe(1);
      expect(row.last_used_at?.toISOString()).toBe(clock.now().toISOString());
    });

    it("replaces the session the browser held before", async () => {
      const { b } = await userWithPasskey();
      const before = b.cookies.get(SESSION) as string;
      expect((await passkeySignIn(b)).statusCode).toBe(200);
      expect(b.cookies.get(SESSION)).not.toBe(before);
      const old = browser();
      old.cookies.set(SESSION, before);
      expect((await me(old)).statusCode).toBe(401);
    });

    it.each([
      ["a wrong origin", { origin: "https://evil.example" }, "wrong-origin"],
      ["a wrong RP id", { rpId: "evil.example" }, "wrong-rp-id"],
      ["no user verification", { userVerified: false }, "user-not-verified"],
      ["no user handle", { userHandle: null }, "user-handle-mismatch"],
      ["another account's user handle", { userHandle: Buffer.alloc(32, 1) }, "user-handle-mismatch"],
      ["a counter that went back", { counter: 0 }, "counter-regression"],
      ["a challenge of its own", { challenge: "B".repeat(43) }, "challenge"],
    ] as const)("refuses %s (401), audited for the credential's owner", async (_label, overrides, reason) => {
      const { user, b: owner } = await userWithPasskey();
      const b = browser(owner.authenticator);
      // One good use first, so that the stored counter is above zero.
      expect((await passkeySignIn(b)).statusCode).toBe(200);
      const signedInBefore = (await events("auth.signed-in", user.id)).length;
      const refused = await passkeySignIn(b, overrides);
      expect(refused.statusCode).toBe(401);
      expect(refused.json().type).toBe("/problems/unauthenticated");
      expect(refused.json().detail).not.toContain(reason);
      const audited = await events("auth.passkey-failed", user.id);
      const expectedSubject = reason === "challenge" ? [] : [{ purpose: "sign-in", reason }];
      expect(audited.map((e) => e.details)).toEqual(expectedSubject);
      if (reason === "challenge") {
        const anonymous = (await events("auth.passkey-failed")).at(-1);
        expect(anonymous).toMatchObject({ actor_kind: "anonymous", details: { purpose: "sign-in", reason } });
      }
      expect(await events("auth.signed-in", user.id)).toHaveLength(signedInBefore);
    });

    it("counts refusals of a known credential as failed sign-ins of its owner: a burst alerts, so does a success after (A6)", async () => {
      const { user, b: owner } = await userWithPasskey();
      const b = browser(owner.authenticator);
      expect((await passkeySignIn(b)).statusCode).toBe(200);
      const alertsOf = (kind: string) =>
        world.t.db.withPlatform((tx) =>
          tx
            .selectFrom("user_alerts")
            .select("details")
            .where("user_id", "=", user.id)
            .where("kind", "=", kind as never)
            .execute(),
        );
      for (let i = 0; i < BURST_FAILURES; i++) {
        expect((await passkeySignIn(b, { userVerified: false })).statusCode).toBe(401);
        expect(await alertsOf("failed-sign-in-burst")).toHaveLength(i === BURST_FAILURES - 1 ? 1 : 0);
      }
      expect(await alertsOf("failed-sign-in-burst")).toEqual([
        { details: { failures: BURST_FAILURES, windowMinutes: BURST_WINDOW_MS / 60_000 } },
      ]);
      expect(await alertsOf("sign-in-after-failures")).toEqual([]);
      expect((await passkeySignIn(b)).statusCode).toBe(200);
      expect(await alertsOf("sign-in-after-failures")).toEqual([{ details: { failures: BURST_FAILURES } }]);
      // The success started the count again: the next success alerts nothing.
      expect((await passkeySignIn(b)).statusCode).toBe(200);
      expect(await alertsOf("sign-in-after-failures")).toHaveLength(1);
    });

    it("refuses an unknown credential, without naming anyone", async () => {
      const stranger = browser();
      stranger.authenticator.register({
        challenge: "C".repeat(43),
        rp: { id: "charter.test", name: "Charter" },
        user: { id: Buffer.alloc(32, 7).toString("base64url"), name: "x", displayName: "x" },
      });
      const refused = await passkeySignIn(stranger);
      expect(refused.statusCode).toBe(401);
      const audited = (await events("auth.passkey-failed")).at(-1);
      expect(audited).toMatchObject({
        actor_kind: "anonymous",
        subject_ids: [],
        details: { purpose: "sign-in", reason: "unknown-credential" },
      });
    });

    it("refuses a replayed assertion, another browser's challenge, no cookie, and an expired challenge", async () => {
      const { b: owner } = await userWithPasskey();
      const b = browser(owner.authenticator);
      const options = await signInOptions(b);
      const response = b.authenticator.assert(options);
      // Another browser posts it: its own pre-authentication cookie holds another challenge.
      const other = browser(owner.authenticator);
      await signInOptions(other);
      expect((await send(other, "POST", "/api/v1/sessions/passkey", { response })).statusCode).toBe(401);
      // No cookie at all.
      expect((await send(browser(), "POST", "/api/v1/sessions/passkey", { response })).statusCode).toBe(401);
      // The right browser: works once…
      const cookie = b.cookies.get(PREAUTH) as string;
      expect((await send(b, "POST", "/api/v1/sessions/passkey", { response })).statusCode).toBe(200);
      // …and a replay with the same cookie and assertion (counter and all) is refused.
      b.cookies.set(PREAUTH, cookie);
      const replay = await send(b, "POST", "/api/v1/sessions/passkey", { response });
      expect(replay.statusCode).toBe(401);
      // A challenge lives 5 minutes.
      const slow = browser(owner.authenticator);
      const late = slow.authenticator.assert(await signInOptions(slow));
      clock.advance(CHALLENGE_LIFETIME_MS);
      expect((await send(slow, "POST", "/api/v1/sessions/passkey", { response: late })).statusCode).toBe(401);
    });

    it("refuses a challenge issued for another ceremony", async () => {
      const { user, b } = await userWithPasskey();
      // A step-up challenge of the session, presented to sign-in: purposes and bindings both differ.
      const stepUp = b.authenticator.assert(await ownOptions(b, "reauthenticate"));
      await signInOptions(b);
      expect((await send(b, "POST", "/api/v1/sessions/passkey", { response: stepUp })).statusCode).toBe(401);
      // …and a sign-in challenge presented to step-up.
      const signInAssertion = b.authenticator.assert(await signInOptions(b));
      const refused = await send(b, "POST", "/api/v1/sessions/current/reauthenticate/passkey", {
        response: signInAssertion,
      });
      expect(refused.statusCode).toBe(403);
      expect((await failures(user.id)).at(-1)).toEqual({ purpose: "reauthenticate", reason: "challenge" });
    });

    it("lets one of two racing uses of the same counter win", async () => {
      const { user, passkeyId, b: owner } = await userWithPasskey();
      const one = browser(owner.authenticator);
      const two = browser(owner.authenticator);
      const first = one.authenticator.assert(await signInOptions(one), { counter: 5 });
      const second = two.authenticator.assert(await signInOptions(two), { counter: 5 });
      const results = await Promise.all([
        send(one, "POST", "/api/v1/sessions/passkey", { response: first }),
        send(two, "POST", "/api/v1/sessions/passkey", { response: second }),
      ]);
      expect(results.map((r) => r.statusCode).sort()).toEqual([200, 401]);
      expect(Number((await passkeyRow(passkeyId)).sign_count)).toBe(5);
      expect(await failures(user.id)).toEqual([{ purpose: "sign-in", reason: "counter-regression" }]);
    });

    it("is refused when forged by another site", async () => {
      const refused = await world.app.app.inject({
        method: "POST",
        url: "/api/v1/sessions/passkey/options",
        headers: { "sec-fetch-site": "cross-site" },
      });
      expect(refused.statusCode).toBe(403);
      expect(refused.cookies).toEqual([]);
    });
  });

  describe("second factor", () => {
    /** A user with a passkey, signed in again with the password only: a half-session. */
    async function halfSignedIn() {
      const setup = await userWithPasskey();
      const b = browser(setup.b.authenticator);
      const session = await signIn(world.app, setup.user.email, setup.user.password);
      b.cookies.set(SESSION, session.token);
      expect((await sessionRow(session.sessionId)).state).toBe("pending-second-factor");
      return { ...setup, b, sessionId: session.sessionId };
    }

    it("finishes a password sign-in with a passkey: the half-session becomes active, with both factors", async () => {
      const { user, b, sessionId } = await halfSignedIn();
      expect((await me(b)).statusCode).toBe(401);
      const options = await ownOptions(b, "second-factor");
      expect(options.allowCredentials?.map((c) => c.id)).toEqual([
        b.authenticator.credentials[0]?.id.toString("base64url"),
      ]);
      const before = b.cookies.get(SESSION);
      const done = await send(b, "POST", "/api/v1/sessions/current/second-factor/passkey", {
        response: b.authenticator.assert(options),
      });
      expect(done.statusCode, done.body).toBe(200);
      expect(done.json().session).toMatchObject({ id: sessionId, state: "active" });
      expect(b.cookies.get(SESSION)).not.toBe(before);
      expect((await me(b)).statusCode).toBe(200);
      const row = await sessionRow(sessionId);
      expect(row.state).toBe("active");
      expect(row.factors.map((f) => [f.method, f.userVerified])).toEqual([
        ["password", undefined],
        ["passkey", true],
      ]);
      const audited = (await events("auth.second-factor", user.id)).filter((e) => e.target_id === sessionId);
      expect(audited.map((e) => e.details)).toEqual([{ method: "passkey", userVerified: true }]);
    });

    it("records a passkey that returned no user handle as proven, but not user-verified with our handle", async () => {
      const { b, sessionId } = await halfSignedIn();
      const done = await send(b, "POST", "/api/v1/sessions/current/second-factor/passkey", {
        response: b.authenticator.assert(await ownOptions(b, "second-factor"), { userHandle: null }),
      });
      expect(done.statusCode).toBe(200);
      expect((await sessionRow(sessionId)).factors.at(-1)).toMatchObject({ method: "passkey", userVerified: false });
    });

    it("refuses without a half-session, and for a full session", async () => {
      const { b } = await userWithPasskey();
      expect((await send(browser(), "POST", "/api/v1/sessions/current/second-factor/passkey/options")).statusCode).toBe(
        401,
      );
      const full = await send(b, "POST", "/api/v1/sessions/current/second-factor/passkey/options");
      expect(full.statusCode).toBe(401);
    });

    it("refuses another user's passkey, another half-session's challenge, and a wrong response", async () => {
      const { user, b, sessionId } = await halfSignedIn();
      const other = await halfSignedIn();
      const url = "/api/v1/sessions/current/second-factor/passkey";

      // The other user's own passkey, over this session's challenge.
      const foreign = other.b.authenticator.assert(await ownOptions(b, "second-factor"), {
        credential: other.b.authenticator.credentials[0],
      });
      const refusedForeign = await send(b, "POST", url, { response: foreign });
      expect(refusedForeign.statusCode).toBe(401);
      expect(refusedForeign.json().type).toBe("/problems/second-factor-required");

      // This user's passkey over a challenge issued to the other half-session.
      const crossed = b.authenticator.assert(await ownOptions(other.b, "second-factor"), {
        credential: b.authenticator.credentials[0],
      });
      expect((await send(b, "POST", url, { response: crossed })).statusCode).toBe(401);

      const unverified = b.authenticator.assert(await ownOptions(b, "second-factor"), { userVerified: false });
      expect((await send(b, "POST", url, { response: unverified })).statusCode).toBe(401);

      expect((await sessionRow(sessionId)).state).toBe("pending-second-factor");
      expect(await failures(user.id)).toEqual([
        { purpose: "second-factor", reason: "unknown-credential" },
        { purpose: "second-factor", reason: "challenge" },
        { purpose: "second-factor", reason: "user-not-verified" },
      ]);
    });

    it("counts refused passkeys in the account's growing delay, like wrong codes (A6)", async () => {
      const { user, b } = await halfSignedIn();
      const refuse = async (on: Browser) => {
        const unverified = on.authenticator.assert(await ownOptions(on, "second-factor"), { userVerified: false });
        return send(on, "POST", "/api/v1/sessions/current/second-factor/passkey", { response: unverified });
      };
      for (let i = 0; i < SECOND_FACTOR_PER_ACCOUNT.limit; i++) expect((await refuse(b)).statusCode).toBe(401);
      // Past the window, the account's backoff counts on: its ten free failures are spent.
      clock.advance(SECOND_FACTOR_PER_ACCOUNT.windowSeconds * 1000);
      const again = browser(b.authenticator);
      again.cookies.set(SESSION, (await signIn(world.app, user.email, user.password)).token);
      expect((await refuse(again)).statusCode).toBe(401);
      const held = await refuse(again);
      expect(held.statusCode).toBe(429);
      expect(Number(held.headers["retry-after"])).toBe(1);
      expect(await events("auth.locked-out", user.id)).toMatchObject([
        { details: { flow: "second-factor", scope: "account", seconds: 1 } },
      ]);
    });

    it("answers 409 to a half-session of a user without passkeys", async () => {
      const { user, b, passkeyId } = await halfSignedIn();
      await world.t.db.withPlatform((tx) => tx.deleteFrom("passkeys").where("id", "=", passkeyId).execute());
      const none = await send(b, "POST", "/api/v1/sessions/current/second-factor/passkey/options");
      expect(none.statusCode).toBe(409);
      expect(await failures(user.id)).toEqual([]);
    });
  });

  describe("step-up", () => {
    it("confirms it is you: a new token, the factor appended, recent authentication again", async () => {
      const { user, b } = await userWithPasskey();
      clock.advance(RECENT_AUTHENTICATION_MS + 1000);
      expect((await me(b)).json().session.recentAuthenticationUntil).toBeNull();
      const before = b.cookies.get(SESSION);
      const done = await send(b, "POST", "/api/v1/sessions/current/reauthenticate/passkey", {
        response: b.authenticator.assert(await ownOptions(b, "reauthenticate")),
      });
      expect(done.statusCode, done.body).toBe(200);
      expect(done.json()).toEqual({
        recentAuthenticationUntil: new Date(clock.now().getTime() + RECENT_AUTHENTICATION_MS).toISOString(),
      });
      expect(b.cookies.get(SESSION)).not.toBe(before);
      const current = (await me(b)).json();
      expect(current.session.factors.map((f: { method: string }) => f.method)).toEqual(["password", "passkey"]);
      expect((await events("auth.reauthenticated", user.id)).map((e) => e.details)).toEqual([
        { method: "passkey", userVerified: true },
      ]);
    });

    it("refuses an assertion without user verification (403) and audits it", async () => {
      const { user, b } = await userWithPasskey();
      const refused = await send(b, "POST", "/api/v1/sessions/current/reauthenticate/passkey", {
        response: b.authenticator.assert(await ownOptions(b, "reauthenticate"), { userVerified: false }),
      });
      expect(refused.statusCode).toBe(403);
      expect(refused.json().type).toBe("/problems/reauthentication-required");
      expect(await failures(user.id)).toEqual([{ purpose: "reauthenticate", reason: "user-not-verified" }]);
    });

    it("answers 409 to a user without passkeys", async () => {
      const b = await signedIn(await world.newUser());
      expect((await send(b, "POST", "/api/v1/sessions/current/reauthenticate/passkey/options")).statusCode).toBe(409);
    });
  });

  describe("password reset", () => {
    const TOKEN = /#token=([A-Za-z0-9_-]{43})$/m;
    const NEW_PASSWORD = "a brand new passphrase 73";

    /** Asks for a reset link for the user's address and reads its token from the outbox. */
    async function resetToken(user: TestUser): Promise<string> {
      const asked = await send(browser(), "POST", "/api/v1/accounts/password-reset", { email: user.email });
      expect(asked.statusCode).toBe(202);
      const mail = (await world.deps.mailer.outbox({ limit: 10_000 })).filter(
        (entry) => entry.to === user.email && entry.template === "password-reset",
      );
      const token = TOKEN.exec(mail[0]?.rendered?.text ?? "")?.[1];
      if (!token) throw new Error("no reset link in the outbox");
      return token;
    }
    async function resetOptions(b: Browser, token: string): Promise<RequestOptions> {
      const response = await send(b, "POST", "/api/v1/accounts/password-reset/passkey-options", { token });
      expect(response.statusCode, response.body).toBe(200);
      return response.json();
    }
    const complete = (b: Browser, token: string, secondFactor?: object) =>
      send(b, "POST", "/api/v1/accounts/password-reset/complete", {
        token,
        password: NEW_PASSWORD,
        ...(secondFactor ? { secondFactor } : {}),
      });
    const passwordHash = async (userId: string) =>
      (
        await world.t.db.withPlatform((tx) =>
          tx.selectFrom("users").select("password_hash").where("id", "=", userId).executeTakeFirstOrThrow(),
        )
      ).password_hash;

    it("demands the passkey of an account that has one, and accepts its assertion for this link", async () => {
      const { user, b, passkeyId } = await userWithPasskey();
      const token = await resetToken(user);
      const before = await passwordHash(user.id);
      const missing = await complete(browser(), token);
      expect(missing.statusCode).toBe(401);
      expect(missing.json().type).toBe("/problems/second-factor-required");

      const options = await resetOptions(browser(), token);
      expect(options.allowCredentials?.map((c) => c.id)).toEqual([
        b.authenticator.credentials[0]?.id.toString("base64url"),
      ]);
      const done = await complete(browser(), token, { passkey: b.authenticator.assert(options) });
      expect(done.statusCode, done.body).toBe(204);
      expect(await passwordHash(user.id)).not.toBe(before);
      expect((await me(b)).statusCode).toBe(401);
      const reset = (await events("auth.password-reset")).filter((e) => e.target_id === user.id);
      expect(reset.at(-1)?.details).toMatchObject({ secondFactor: "passkey" });
      expect(Number((await passkeyRow(passkeyId)).sign_count)).toBe(1);
      // The new password opens a half-session: the passkey is still the second factor.
      const session = await signIn(world.app, user.email, NEW_PASSWORD);
      expect((await sessionRow(session.sessionId)).state).toBe("pending-second-factor");
    });

    it("refuses an assertion not asked for with this link, without user verification, or of another account", async () => {
      const { user, b } = await userWithPasskey();
      const other = await userWithPasskey();
      const token = await resetToken(user);
      const before = await passwordHash(user.id);

      const otherToken = await resetToken(other.user);
      const attempts = [
        // A sign-in challenge, and the challenge of another account's reset link.
        async () => b.authenticator.assert(await signInOptions(browser())),
        async () =>
          b.authenticator.assert(await resetOptions(browser(), otherToken), {
            credential: b.authenticator.credentials[0],
          }),
        // This link's challenge, answered without user verification, then by the other account's passkey.
        async () => b.authenticator.assert(await resetOptions(browser(), token), { userVerified: false }),
        async () =>
          other.b.authenticator.assert(await resetOptions(browser(), token), {
            credential: other.b.authenticator.credentials[0],
          }),
      ];
      for (const attempt of attempts) {
        const refused = await complete(browser(), token, { passkey: await attempt() });
        expect(refused.statusCode).toBe(401);
        expect(refused.json().type).toBe("/problems/second-factor-required");
      }
      expect(await passwordHash(user.id)).toBe(before);
      expect(await failures(user.id)).toEqual([
        { purpose: "password-reset", reason: "challenge" },
        { purpose: "password-reset", reason: "challenge" },
        { purpose: "password-reset", reason: "user-not-verified" },
        { purpose: "password-reset", reason: "unknown-credential" },
      ]);
      // The link still works with a right answer.
      const done = await complete(browser(), token, { passkey: b.authenticator.assert(await resetOptions(b, token)) });
      expect(done.statusCode).toBe(204);
    });

    it("gives options only for a live link of an account with a passkey", async () => {
      const anyone = browser();
      const invalid = await send(anyone, "POST", "/api/v1/accounts/password-reset/passkey-options", {
        token: "A".repeat(43),
      });
      expect(invalid.statusCode).toBe(400);
      const plain = await world.newUser();
      const none = await send(anyone, "POST", "/api/v1/accounts/password-reset/passkey-options", {
        token: await resetToken(plain),
      });
      expect(none.statusCode).toBe(409);
    });
  });
});
