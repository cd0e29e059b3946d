import type { LightMyRequestResponse } from "fastify";
import { beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import type { PasswordHasher } from "./passwords.ts";
import { SIGN_IN_PER_ACCOUNT, SIGN_IN_PER_ADDRESS } from "./session-routes.ts";
import {
  bumpPrivilegeEpoch,
  createSession,
  REPLACED_TOKEN_GRACE_MS,
  SESSION_ABSOLUTE_TIMEOUT_MS,
  SESSION_IDLE_TIMEOUT_MS,
} from "./sessions.ts";
import { randomAddress, sessionHeaders, signIn, useIdentityTestApp } from "./testing.ts";
import { hashToken } from "./tokens.ts";

const COOKIE = "__Host-charter_session";
let counter = 0;
const email = () => `person-${Date.now()}-${++counter}@example.com`;

/** The hasher of the deps, counting calls, so tests can tell which path a sign-in took. */
function counting(hasher: PasswordHasher) {
  const calls = { verify: 0, verifyNothing: 0 };
  const wrapped: PasswordHasher = {
    hash: (password) => hasher.hash(password),
    verify: (hash, password) => {
      calls.verify++;
      return hasher.verify(hash, password);
    },
    verifyNothing: (password) => {
      calls.verifyNothing++;
      return hasher.verifyNothing(password);
    },
  };
  return { wrapped, calls };
}

const cookieOf = (response: LightMyRequestResponse) => {
  const cookie = response.cookies.find((c) => c.name === COOKIE);
  return cookie && `${cookie.name}=${cookie.value}`;
};

describe.each(DATABASE_KINDS)("sessions on %s", (kind) => {
  let hasher: ReturnType<typeof counting>;
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock, {
    deps: (base) => {
      hasher = counting(base.passwords);
      return { ...base, passwords: hasher.wrapped };
    },
  });
  // Each test starts in a fresh rate-limit window and well apart from the previous test's sessions.
  beforeEach(() => clock.advance(SIGN_IN_PER_ACCOUNT.windowSeconds * 1000 + 1000));

  const me = (cookie: string, extra: Record<string, string> = {}) =>
    world.app.app.inject({
      method: "GET",
      url: "/api/v1/sessions/current",
      headers: { ...sessionHeaders(cookie), ...extra },
    });
  const post = (url: string, cookie: string, payload?: object) =>
    world.app.app.inject({ method: "POST", url, headers: sessionHeaders(cookie), ...(payload ? { payload } : {}) });
  const attempt = (payload: { email: string; password: string }, remoteAddress = randomAddress()) =>
    world.app.app.inject({
      method: "POST",
      url: "/api/v1/sessions",
      remoteAddress,
      headers: { "sec-fetch-site": "same-origin" },
      payload,
    });
  const events = (action: string) =>
    world.t.db.withPlatform((tx) =>
      tx.selectFrom("platform_audit_events").selectAll().where("action", "=", action).orderBy("at").execute(),
    );
  const sessionRow = (id: string) =>
    world.t.db.withPlatform((tx) =>
      tx.selectFrom("sessions").selectAll().where("id", "=", id).executeTakeFirstOrThrow(),
    );

  it("signs in with a new session whose token is stored only hashed, in a __Host- cookie", async () => {
    const user = await world.newUser({ displayName: "Ada" });
    const response = await world.app.app.inject({
      method: "POST",
      url: "/api/v1/sessions",
      headers: {
        "sec-fetch-site": "same-origin",
        "user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0",
      },
      payload: { email: user.email.toUpperCase(), password: user.password },
    });
    expect(response.statusCode).toBe(200);
    const setCookie = String(response.headers["set-cookie"]);
    expect(setCookie).toMatch(/^__Host-charter_session=[A-Za-z0-9_-]{43}; /);
    for (const attribute of ["Path=/", "HttpOnly", "SameSite=Lax", "Secure", `Max-Age=${7 * 24 * 3600}`]) {
      expect(setCookie).toContain(attribute);
    }
    const token = response.cookies[0]?.value ?? "";
    const { session } = response.json();
    expect(session.state).toBe("active");
    expect(session.expiresAt).toBe(new Date(clock.now().getTime() + SESSION_ABSOLUTE_TIMEOUT_MS).toISOString());
    const row = await sessionRow(session.id);
    expect(row).toMatchObject({ user_id: user.id, state: "active", device: "Firefox on Linux", revoked_at: null });
    expect(row.factors).toEqual([{ method: "password", at: clock.now().toISOString() }]);
    const tokens = await world.t.db.withPlatform((tx) =>
      tx.selectFrom("session_tokens").selectAll().where("session_id", "=", session.id).execute(),
    );
    expect(tokens).toHaveLength(1);
    expect(Buffer.from(tokens[0]?.token_hash ?? []).equals(hashToken(token))).toBe(true);

    const who = await me(`${COOKIE}=${token}`);
    expect(who.statusCode).toBe(200);
    expect(who.json()).toMatchObject({
      user: { id: user.id, displayName: "Ada" },
      operator: false,
      session: {
        id: session.id,
        state: "active",
        factors: [{ method: "password", at: clock.now().toISOString() }],
        recentAuthenticationUntil: new Date(clock.now().getTime() + 10 * 60_000).toISOString(),
      },
    });
    const signedIn = (await events("auth.signed-in")).find((e) => e.target_id === session.id);
    expect(signedIn).toMatchObject({ actor_kind: "user", actor_id: user.id, stream: "security" });
    expect(signedIn?.chain_id).toMatch(/^platform\/security\//);
  });

  it("answers a wrong password and an unknown address alike, with Argon2id run in both cases", async () => {
    const user = await world.newUser();
    const before = { ...hasher.calls };
    const wrong = await attempt({ email: user.email, password: "not the password at all" });
    const afterWrong = { ...hasher.calls };
    const unknownEmail = email();
    const unknown = await attempt({ email: unknownEmail, password: "not the password at all" });
    const afterUnknown = { ...hasher.calls };
    expect(wrong.statusCode).toBe(401);
    expect(unknown.statusCode).toBe(401);
    const strip = (body: Record<string, unknown>) => ({ ...body, instance: undefined, requestId: undefined });
    expect(strip(wrong.json())).toEqual(strip(unknown.json()));
    expect(wrong.headers["set-cookie"]).toBeUndefined();
    expect(afterWrong.verify - before.verify).toBe(1);
    expect(afterUnknown.verifyNothing - afterWrong.verifyNothing).toBe(1);
    expect(afterUnknown.verify).toBe(afterWrong.verify);

    // An account without a password costs the same dummy verification.
    const passwordless = await world.newUser({ password: null });
    const none = await attempt({ email: passwordless.email, password: "anything at all here" });
    expect(none.statusCode).toBe(401);
    expect(hasher.calls.verifyNothing - afterUnknown.verifyNothing).toBe(1);

    // Failures go on the platform chain (never a tenant's), anonymous, naming the account only by id.
    const failed = await events("auth.sign-in-failed");
    const forUser = failed.filter((e) => e.target_id === user.id);
    expect(forUser).toHaveLength(1);
    expect(forUser[0]).toMatchObject({ actor_kind: "anonymous", actor_id: null, target_type: "user" });
    expect(forUser[0]?.chain_id).toMatch(/^platform\/security\//);
    const forUnknown = failed.filter((e) => e.target_id === null && e.request_id === unknown.headers["x-request-id"]);
    expect(forUnknown).toHaveLength(1);
    const tenantEvents = await world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .select("id")
        .where("action", "=", "auth.sign-in-failed")
        .where("chain_id", "like", "tenant/%")
        .execute(),
    );
    expect(tenantEvents).toEqual([]);
    // Nothing personal in the audit log: neither the password nor the address.
    const all = JSON.stringify(
      await world.t.db.withPlatform((tx) => tx.selectFrom("platform_audit_events").selectAll().execute()),
    );
    expect(all).not.toContain("not the password at all");
    expect(all).not.toContain(user.password);
    expect(all).not.toContain(user.email);
    expect(all).not.toContain(unknownEmail);
  });

  it("throttles sign-in per account, existing or not, and per source address", async () => {
    const user = await world.newUser();
    const unknownEmail = email();
    for (const address of [user.email, unknownEmail]) {
      for (let i = 0; i < SIGN_IN_PER_ACCOUNT.limit; i++) {
        expect((await attempt({ email: address, password: "wrong password here" })).statusCode).toBe(401);
      }
      const limited = await attempt({ email: address, password: "wrong password here" });
      expect(limited.statusCode).toBe(429);
      expect(Number(limited.headers["retry-after"])).toBeGreaterThan(0);
      expect(limited.json().type).toBe("/problems/rate-limited");
    }
    // Throttled even with the right password: the limit is checked before the password.
    expect((await attempt({ email: user.email, password: user.password })).statusCode).toBe(429);

    const source = randomAddress();
    for (let i = 0; i < SIGN_IN_PER_ADDRESS.limit; i++) {
      expect((await attempt({ email: email(), password: "wrong password here" }, source)).statusCode).toBe(401);
    }
    expect((await attempt({ email: email(), password: "wrong password here" }, source)).statusCode).toBe(429);
  });

  it("starts a new session on every sign-in and ends the one the browser held", async () => {
    const user = await world.newUser();
    const first = await signIn(world.app, user.email, user.password);
    const again = await world.app.app.inject({
      method: "POST",
      url: "/api/v1/sessions",
      headers: sessionHeaders(first.cookie),
      payload: { email: user.email, password: user.password },
    });
    expect(again.statusCode).toBe(200);
    const second = cookieOf(again) ?? "";
    expect(second).not.toBe(first.cookie);
    expect(again.json().session.id).not.toBe(first.sessionId);
    expect((await me(first.cookie)).statusCode).toBe(401);
    expect((await me(second)).statusCode).toBe(200);
    expect((await sessionRow(first.sessionId)).revoke_reason).toBe("signed-in-again");
  });

  it("signs out: the session ends and the cookie is cleared", async () => {
    const user = await world.newUser();
    const session = await signIn(world.app, user.email, user.password);
    const out = await world.app.app.inject({
      method: "DELETE",
      url: "/api/v1/sessions/current",
      headers: sessionHeaders(session.cookie),
    });
    expect(out.statusCode).toBe(204);
    expect(String(out.headers["set-cookie"])).toMatch(/^__Host-charter_session=; .*Max-Age=0/);
    expect((await me(session.cookie)).statusCode).toBe(401);
    expect((await events("auth.signed-out")).some((e) => e.target_id === session.sessionId)).toBe(true);
  });

  it("lists, revokes one (only one's own) and revokes all", async () => {
    const user = await world.newUser();
    const other = await world.newUser();
    const a = await signIn(world.app, user.email, user.password, { userAgent: "Mozilla/5.0 (Macintosh) Safari/605.1" });
    clock.advance(1000);
    const b = await signIn(world.app, user.email, user.password);
    const c = await signIn(world.app, user.email, user.password);
    const theirs = await signIn(world.app, other.email, other.password);

    const list = await world.app.app.inject({
      method: "GET",
      url: "/api/v1/sessions",
      headers: sessionHeaders(b.cookie),
    });
    expect(list.statusCode).toBe(200);
    const items = list.json().items as { id: string; current: boolean; device: string | null }[];
    expect(items.map((s) => s.id).sort()).toEqual([a.sessionId, b.sessionId, c.sessionId].sort());
    expect(items.filter((s) => s.current).map((s) => s.id)).toEqual([b.sessionId]);
    expect(items.find((s) => s.id === a.sessionId)?.device).toBe("Safari on macOS");

    const del = (id: string, cookie: string) =>
      world.app.app.inject({ method: "DELETE", url: `/api/v1/sessions/${id}`, headers: sessionHeaders(cookie) });
    expect((await del(theirs.sessionId, b.cookie)).statusCode).toBe(404);
    expect((await me(theirs.cookie)).statusCode).toBe(200);
    expect((await del(a.sessionId, b.cookie)).statusCode).toBe(204);
    expect((await me(a.cookie)).statusCode).toBe(401);
    expect((await me(b.cookie)).statusCode).toBe(200);
    expect((await del(a.sessionId, b.cookie)).statusCode).toBe(404);

    const all = await post("/api/v1/sessions/revoke-all", b.cookie);
    expect(all.statusCode).toBe(200);
    expect(all.json()).toEqual({ revoked: 2 });
    expect((await me(b.cookie)).statusCode).toBe(401);
    expect((await me(c.cookie)).statusCode).toBe(401);
    expect((await me(theirs.cookie)).statusCode).toBe(200);
    const revokedAll = (await events("auth.sessions-revoked")).filter((e) => e.target_id === user.id);
    expect(revokedAll).toHaveLength(1);
    expect(revokedAll[0]?.details).toEqual({ reason: "signed-out-everywhere", count: 2 });
  });

  it("rotates the token once the privilege epoch moves; the old one has 10 s grace, then its use ends the session", async () => {
    const user = await world.newUser();
    const session = await signIn(world.app, user.email, user.password);
    expect((await me(session.cookie)).headers["set-cookie"]).toBeUndefined();
    await world.t.db.withPlatform((tx) => bumpPrivilegeEpoch(tx, user.id));

    const rotatedResponse = await me(session.cookie);
    expect(rotatedResponse.statusCode).toBe(200);
    const rotated = cookieOf(rotatedResponse) ?? "";
    expect(rotated).toMatch(/^__Host-charter_session=/);
    expect(rotated).not.toBe(session.cookie);
    expect((await sessionRow(session.sessionId)).privilege_epoch).toBe(1);

    // In flight: the old token still works, is never rotated again, and is not recent authentication.
    clock.advance(REPLACED_TOKEN_GRACE_MS - 1);
    const inFlight = await me(session.cookie);
    expect(inFlight.statusCode).toBe(200);
    expect(inFlight.headers["set-cookie"]).toBeUndefined();
    expect(inFlight.json().session.recentAuthenticationUntil).toBeNull();
    const current = await me(rotated);
    expect(current.statusCode).toBe(200);
    expect(current.headers["set-cookie"]).toBeUndefined();

    // After the grace period it can only be a copy: the whole session ends.
    clock.advance(1);
    expect((await me(session.cookie)).statusCode).toBe(401);
    expect((await me(rotated)).statusCode).toBe(401);
    expect((await sessionRow(session.sessionId)).revoke_reason).toBe("replaced-token-reused");
    const theft = (await events("auth.session-revoked")).filter((e) => e.target_id === session.sessionId);
    expect(theft).toHaveLength(1);
    expect(theft[0]).toMatchObject({ details: { reason: "replaced-token-reused" }, subject_ids: [user.id] });
  });

  it("steps up with the password: a new token, a fresh factor; the old token is never recent authentication", async () => {
    const user = await world.newUser();
    const session = await signIn(world.app, user.email, user.password);
    clock.advance(11 * 60_000);
    expect((await me(session.cookie)).json().session.recentAuthenticationUntil).toBeNull();

    const wrong = await post("/api/v1/sessions/current/reauthenticate", session.cookie, { password: "wrong one!" });
    expect(wrong.statusCode).toBe(403);
    expect(wrong.json().type).toBe("/problems/reauthentication-required");
    expect((await events("auth.reauthentication-failed")).some((e) => e.target_id === session.sessionId)).toBe(true);

    const ok = await post("/api/v1/sessions/current/reauthenticate", session.cookie, { password: user.password });
    expect(ok.statusCode).toBe(200);
    const until = new Date(clock.now().getTime() + 10 * 60_000).toISOString();
    expect(ok.json()).toEqual({ recentAuthenticationUntil: until });
    const stepped = cookieOf(ok) ?? "";
    expect(stepped).not.toBe(session.cookie);
    const who = (await me(stepped)).json();
    expect(who.session.factors).toHaveLength(2);
    expect(who.session.recentAuthenticationUntil).toBe(until);
    expect((await me(session.cookie)).json().session.recentAuthenticationUntil).toBeNull();
    const again = await post("/api/v1/sessions/current/reauthenticate", session.cookie, { password: user.password });
    expect(again.statusCode).toBe(403);
    expect((await events("auth.reauthenticated")).some((e) => e.target_id === session.sessionId)).toBe(true);

    clock.advance(REPLACED_TOKEN_GRACE_MS);
    expect((await me(session.cookie)).statusCode).toBe(401);
    expect((await me(stepped)).statusCode).toBe(401);
  });

  it("ends idle sessions after 8 hours and every session after 7 days; notes use at most once a minute", async () => {
    const user = await world.newUser();
    const idle = await signIn(world.app, user.email, user.password);
    const active = await signIn(world.app, user.email, user.password);
    const signedInAt = clock.now().getTime();

    clock.advance(30_000);
    expect((await me(active.cookie)).statusCode).toBe(200);
    expect((await sessionRow(active.sessionId)).last_seen_at.getTime()).toBe(signedInAt);
    clock.advance(30_000);
    expect((await me(active.cookie)).statusCode).toBe(200);
    expect((await sessionRow(active.sessionId)).last_seen_at.getTime()).toBe(signedInAt + 60_000);

    clock.set(new Date(signedInAt + SESSION_IDLE_TIMEOUT_MS - 1));
    expect((await me(idle.cookie)).statusCode).toBe(200);
    clock.set(new Date(signedInAt + SESSION_IDLE_TIMEOUT_MS * 2 - 2));
    expect((await me(idle.cookie)).statusCode).toBe(200);
    clock.set(new Date(signedInAt + SESSION_IDLE_TIMEOUT_MS * 3 - 2));
    expect((await me(idle.cookie)).statusCode).toBe(401);

    // Used every 7 hours, a session still ends 7 days after sign-in.
    for (let at = signedInAt + 7 * 3600_000; at < signedInAt + SESSION_ABSOLUTE_TIMEOUT_MS; at += 7 * 3600_000) {
      clock.set(new Date(at));
      expect((await me(active.cookie)).statusCode).toBe(200);
    }
    clock.set(new Date(signedInAt + SESSION_ABSOLUTE_TIMEOUT_MS));
    expect((await me(active.cookie)).statusCode).toBe(401);
  });

  it("gives a half-session awaiting its second factor no principal on any current route", async () => {
    const user = await world.newUser();
    const half = await world.t.db.withPlatform((tx) =>
      createSession(tx, {
        userId: user.id,
        factor: { method: "password" },
        now: clock.now(),
        state: "pending-second-factor",
      }),
    );
    expect(half.expiresAt.getTime() - clock.now().getTime()).toBe(5 * 60_000);
    const cookie = `${COOKIE}=${half.token}`;
    expect((await me(cookie)).statusCode).toBe(401);
    expect(
      (await world.app.app.inject({ method: "GET", url: "/api/v1/sessions", headers: sessionHeaders(cookie) }))
        .statusCode,
    ).toBe(401);
    expect((await post("/api/v1/sessions/revoke-all", cookie)).statusCode).toBe(401);
  });

  it("refuses a token it never issued and a malformed cookie", async () => {
    expect((await me(`${COOKIE}=${"A".repeat(43)}`)).statusCode).toBe(401);
    expect((await me(`${COOKIE}=nonsense`)).statusCode).toBe(401);
    expect((await me("charter_session=whatever")).statusCode).toBe(401);
  });
});
