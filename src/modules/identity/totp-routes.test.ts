import type { LightMyRequestResponse } from "fastify";
import { sql } from "kysely";
import { beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { oathtoolCode, secretOfUri } from "../../../test/support/oathtool.ts";
import { manualClock } from "../../platform/clock.ts";
import type { Database } from "../../platform/db/index.ts";
import { BACKUP_CODE_COUNT } from "./backup-codes.ts";
import { SECOND_FACTOR_PER_ACCOUNT } from "./code-factors.ts";
import { SIGN_IN_PER_ACCOUNT } from "./session-routes.ts";
import { PENDING_SECOND_FACTOR_TIMEOUT_MS, RECENT_AUTHENTICATION_MS } from "./sessions.ts";
import { randomAddress, sessionHeaders, signIn, type TestUser, useIdentityTestApp } from "./testing.ts";
import { hashToken } from "./tokens.ts";
import { TOTP_ENROLMENT_LIFETIME_MS, timeStepOf } from "./totp.ts";

const COOKIE = "__Host-charter_session";
const DEVICE = "__Host-charter_device";
const STEP_MS = 30_000;

/**
 * The database, with a gate that makes a race happen on demand: once armed for n parties, a platform
 * transaction that names an actor (as the one spending a code does; the reads before it name none) waits
 * until n of them are waiting, then all start together. Without it PGlite, which runs one query at a time,
 * would mostly finish one request before the other reads anything.
 */
function raceGate(db: Database) {
  let race: { parties: number; waiting: (() => void)[] } | undefined;
  const gated: Database = {
    ...db,
    async withPlatform(fn, ctx) {
      const current = race;
      if (current && ctx?.actorId !== undefined) {
        await new Promise<void>((resolve, reject) => {
          const late = setTimeout(() => reject(new Error("the racing requests never met to spend the code")), 5_000);
          current.waiting.push(() => {
            clearTimeout(late);
            resolve();
          });
          if (current.waiting.length === current.parties) {
            race = undefined;
            for (const go of current.waiting) go();
          }
        });
      }
      return db.withPlatform(fn, ctx);
    },
  };
  return {
    db: gated,
    arm(parties: number) {
      race = { parties, waiting: [] };
    },
  };
}

/** A browser: its session cookie, kept current as responses rotate it. */
interface Browser {
  cookie: string;
}

describe.each(DATABASE_KINDS)("authenticator app and backup codes on %s", (kind) => {
  let gate: ReturnType<typeof raceGate>;
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock, {
    deps: (base, t) => {
      gate = raceGate(t.db);
      return { ...base, db: gate.db };
    },
  });
  // Each test starts in fresh rate-limit windows, far from the previous test's time steps and sessions.
  beforeEach(() => clock.advance(SIGN_IN_PER_ACCOUNT.windowSeconds * 1000 + 1000));

  async function send(
    method: "GET" | "POST" | "DELETE",
    url: string,
    browser?: Browser,
    payload?: object,
  ): Promise<LightMyRequestResponse> {
    const response = await world.app.app.inject({
      method,
      url,
      // From addresses of their own: the per-address backoff is not what these tests are about.
      remoteAddress: randomAddress(),
      headers: browser ? sessionHeaders(browser.cookie) : { "sec-fetch-site": "same-origin" },
      ...(payload ? { payload } : {}),
    });
    const rotated = response.cookies.find((cookie) => cookie.name === COOKIE);
    if (browser && rotated?.value) browser.cookie = `${COOKIE}=${rotated.value}`;
    return response;
  }

  const browserOf = async (user: TestUser): Promise<Browser> => ({
    cookie: (await signIn(world.app, user.email, user.password)).cookie,
  });
  const sessionId = async (browser: Browser) => {
    const token = browser.cookie.slice(COOKIE.length + 1);
    const row = await world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("session_tokens")
        .select("session_id")
        .where("token_hash", "=", hashToken(token))
        .executeTakeFirst(),
    );
    return row?.session_id as string;
  };
  const sessionRow = async (browser: Browser) => {
    const id = await sessionId(browser);
    return world.t.db.withPlatform((tx) =>
      tx.selectFrom("sessions").selectAll().where("id", "=", id).executeTakeFirstOrThrow(),
    );
  };
  const events = (action: string, userId: string) =>
    world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .selectAll()
        .where("action", "=", action)
        .where(sql<boolean>`${userId}::uuid = ANY(subject_ids)`)
        .orderBy("at")
        .orderBy("seq")
        .execute(),
    );
  /** The kinds of the alerts the user was shown (A6), oldest first. */
  const alertKinds = async (userId: string) =>
    (
      await world.t.db.withPlatform((tx) =>
        tx
          .selectFrom("user_alerts")
          .select("kind")
          .where("user_id", "=", userId)
          .orderBy("created_at")
          .orderBy("id")
          .execute(),
      )
    ).map((row) => row.kind);
  const auditText = (userId: string) =>
    world.t.db.withPlatform(async (tx) => {
      const { rows } = await sql<{ row: string }>`
        SELECT to_jsonb(e)::text AS row FROM platform_audit_events e WHERE ${userId}::uuid = ANY(subject_ids)`.execute(
        tx,
      );
      return rows.map((r) => r.row).join("\n");
    });
  const now = () => clock.now();
  const code = (secret: string, offsetMs = 0) => oathtoolCode(secret, new Date(now().getTime() + offsetMs));

  /** A user with a confirmed authenticator app: its secret (read from the URI) and backup codes. */
  async function enrolled(): Promise<{ user: TestUser; secret: string; backupCodes: string[]; browser: Browser }> {
    const user = await world.newUser();
    const browser = await browserOf(user);
    const started = await send("POST", "/api/v1/me/totp", browser);
    expect(started.statusCode).toBe(201);
    const secret = secretOfUri(started.json().uri);
    const confirmed = await send("POST", "/api/v1/me/totp/confirm", browser, { code: await code(secret) });
    expect(confirmed.statusCode).toBe(200);
    // Later codes belong to later steps: the confirmation used this one.
    clock.advance(STEP_MS);
    return { user, secret, backupCodes: confirmed.json().backupCodes, browser };
  }

  /** A password sign-in: the state of the session it opens, and the browser holding it. */
  async function passwordSignIn(user: TestUser): Promise<{ state: string; browser: Browser }> {
    const signedIn = await world.app.app.inject({
      method: "POST",
      url: "/api/v1/sessions",
      remoteAddress: randomAddress(),
      headers: { "sec-fetch-site": "same-origin" },
      payload: { email: user.email, password: user.password },
    });
    expect(signedIn.statusCode).toBe(200);
    const cookie = signedIn.cookies.find((c) => c.name === COOKIE);
    return { state: signedIn.json().session.state, browser: { cookie: `${COOKIE}=${cookie?.value}` } };
  }

  /** A password sign-in of an enrolled user: a half-session. */
  async function halfSession(user: TestUser): Promise<Browser> {
    const { state, browser } = await passwordSignIn(user);
    expect(state).toBe("pending-second-factor");
    return browser;
  }

  const completeWith = (browser: Browser, answer: { totpCode: string } | { backupCode: string }) =>
    send("POST", "/api/v1/sessions/current/second-factor", browser, answer);

  describe("enrolment", () => {
    it("enrols an app from the URI's secret and a first code computed by oathtool; the secret is stored sealed", async () => {
      const user = await world.newUser();
      const browser = await browserOf(user);
      expect((await send("GET", "/api/v1/me/totp", browser)).json()).toEqual({
        status: "none",
        enabledAt: null,
        backupCodesRemaining: 0,
      });

      const started = await send("POST", "/api/v1/me/totp", browser);
      expect(started.statusCode).toBe(201);
      const enrolment = started.json();
      const secret = secretOfUri(enrolment.uri);
      expect(enrolment.secret).toBe(secret);
      expect(decodeURIComponent(new URL(enrolment.uri).pathname)).toBe(`/Charter (charter.test):${user.email}`);
      expect(enrolment.qrCode).toMatch(/^data:image\/svg\+xml;base64,/);
      expect(enrolment.expiresAt).toBe(new Date(now().getTime() + TOTP_ENROLMENT_LIFETIME_MS).toISOString());
      expect((await send("GET", "/api/v1/me/totp", browser)).json().status).toBe("pending");
      const stored = await world.t.db.withPlatform((tx) =>
        tx.selectFrom("totp_factors").selectAll().where("user_id", "=", user.id).executeTakeFirstOrThrow(),
      );
      expect(stored.secret).not.toContain(secret);
      // An unconfirmed app is no factor: a password sign-in is still complete.
      expect((await passwordSignIn(user)).state).toBe("active");

      const before = await sessionRow(browser);
      const confirmed = await send("POST", "/api/v1/me/totp/confirm", browser, { code: await code(secret) });
      expect(confirmed.statusCode).toBe(200);
      const { backupCodes } = confirmed.json();
      expect(backupCodes).toHaveLength(BACKUP_CODE_COUNT);
      expect(new Set(backupCodes).size).toBe(BACKUP_CODE_COUNT);
      expect((await send("GET", "/api/v1/me/totp", browser)).json()).toEqual({
        status: "enabled",
        enabledAt: now().toISOString(),
        backupCodesRemaining: BACKUP_CODE_COUNT,
      });
      // The first code proved the app: the session records it, under a new token.
      const after = await sessionRow(browser);
      expect(after.id).toBe(before.id);
      expect(after.factors.map((f) => f.method)).toEqual(["password", "totp"]);
      expect(
        Number(
          (
            await world.t.db.withPlatform((tx) =>
              tx.selectFrom("totp_factors").select("last_used_step").where("user_id", "=", user.id).executeTakeFirst(),
            )
          )?.last_used_step,
        ),
      ).toBe(timeStepOf(now()));

      expect(await events("auth.totp-enrolment-started", user.id)).toHaveLength(1);
      expect(await events("auth.totp-enrolled", user.id)).toMatchObject([
        { actor_kind: "user", actor_id: user.id, details: { backupCodes: BACKUP_CODE_COUNT } },
      ]);
      expect((await alertKinds(user.id)).filter((kind) => kind === "factor-added")).toHaveLength(1);
      const audited = await auditText(user.id);
      expect(audited).not.toContain(secret);
      for (const backup of backupCodes) expect(audited).not.toContain(backup);
    });

    it("refuses a wrong first code (audited), and confirms with a right one after it", async () => {
      const user = await world.newUser();
      const browser = await browserOf(user);
      const secret = secretOfUri((await send("POST", "/api/v1/me/totp", browser)).json().uri);
      const wrong = await send("POST", "/api/v1/me/totp/confirm", browser, {
        code: await code(secret, 5 * STEP_MS),
      });
      expect(wrong.statusCode).toBe(400);
      expect((await send("GET", "/api/v1/me/totp", browser)).json().status).toBe("pending");
      expect(await events("auth.second-factor-failed", user.id)).toMatchObject([
        { details: { method: "totp", purpose: "enrolment", reason: "wrong-code" } },
      ]);
      expect((await send("POST", "/api/v1/me/totp/confirm", browser, { code: "12345" })).statusCode).toBe(400);
      expect((await send("POST", "/api/v1/me/totp/confirm", browser, { code: await code(secret) })).statusCode).toBe(
        200,
      );
    });

    it("starting again replaces the secret; an expired enrolment and a second app are refused", async () => {
      const user = await world.newUser();
      const browser = await browserOf(user);
      const first = secretOfUri((await send("POST", "/api/v1/me/totp", browser)).json().uri);
      const second = secretOfUri((await send("POST", "/api/v1/me/totp", browser)).json().uri);
      expect(second).not.toBe(first);
      expect((await send("POST", "/api/v1/me/totp/confirm", browser, { code: await code(first) })).statusCode).toBe(
        400,
      );

      clock.advance(TOTP_ENROLMENT_LIFETIME_MS);
      expect((await send("GET", "/api/v1/me/totp", browser)).json().status).toBe("none");
      expect(
        (await send("POST", "/api/v1/sessions/current/reauthenticate", browser, { password: user.password }))
          .statusCode,
      ).toBe(200);
      const expired = await send("POST", "/api/v1/me/totp/confirm", browser, { code: await code(second) });
      expect(expired.statusCode).toBe(409);
      expect(expired.json().detail).toMatch(/expired/);

      const third = secretOfUri((await send("POST", "/api/v1/me/totp", browser)).json().uri);
      expect((await send("POST", "/api/v1/me/totp/confirm", browser, { code: await code(third) })).statusCode).toBe(
        200,
      );
      const again = await send("POST", "/api/v1/me/totp", browser);
      expect(again.statusCode).toBe(409);
      expect((await send("POST", "/api/v1/me/totp/confirm", browser, { code: "123456" })).statusCode).toBe(409);
    });

    it("needs recent authentication to enrol, confirm, issue new backup codes or remove the app", async () => {
      const { browser, secret } = await enrolled();
      const other = await world.newUser();
      const otherBrowser = await browserOf(other);
      const pending = secretOfUri((await send("POST", "/api/v1/me/totp", otherBrowser)).json().uri);
      clock.advance(RECENT_AUTHENTICATION_MS);
      const refusals = [
        await send("POST", "/api/v1/me/totp", otherBrowser),
        await send("POST", "/api/v1/me/totp/confirm", otherBrowser, { code: await code(pending) }),
        await send("POST", "/api/v1/me/totp/backup-codes", browser),
        await send("DELETE", "/api/v1/me/totp", browser),
      ];
      for (const refused of refusals) {
        expect(refused.statusCode).toBe(403);
        expect(refused.json().type).toMatch(/reauthentication-required$/);
      }
      expect((await send("GET", "/api/v1/me/totp", browser)).json().status).toBe("enabled");
      // A code from the app confirms it is them.
      const stepUp = await send("POST", "/api/v1/sessions/current/reauthenticate/totp", browser, {
        code: await code(secret),
      });
      expect(stepUp.statusCode).toBe(200);
      expect((await send("POST", "/api/v1/me/totp/backup-codes", browser)).statusCode).toBe(200);
    });

    it("refuses API keys and signed-out callers", async () => {
      expect((await send("GET", "/api/v1/me/totp")).statusCode).toBe(401);
      expect((await send("POST", "/api/v1/me/totp")).statusCode).toBe(401);
      const keyed = await world.app.app.inject({
        method: "POST",
        url: "/api/v1/me/totp",
        headers: { authorization: `Bearer charter_${"A".repeat(40)}` },
      });
      expect(keyed.statusCode).toBe(401);
    });
  });

  describe("finishing a sign-in", () => {
    it("a password sign-in opens a half-session that only a code from the app completes", async () => {
      const { user, secret } = await enrolled();
      const browser = await halfSession(user);
      // The half-session opens nothing else.
      expect((await send("GET", "/api/v1/sessions/current", browser)).statusCode).toBe(401);
      expect((await send("GET", "/api/v1/me/totp", browser)).statusCode).toBe(401);

      const wrong = await completeWith(browser, { totpCode: await code(secret, 3 * STEP_MS) });
      expect(wrong.statusCode).toBe(401);
      expect(wrong.json().type).toMatch(/second-factor-required$/);
      expect(await events("auth.second-factor-failed", user.id)).toMatchObject([
        { details: { method: "totp", purpose: "sign-in", reason: "wrong-code" } },
      ]);

      const before = browser.cookie;
      const done = await completeWith(browser, { totpCode: await code(secret) });
      expect(done.statusCode).toBe(200);
      const session = await sessionRow(browser);
      expect(done.json().session).toEqual({
        id: session.id,
        state: "active",
        expiresAt: session.expires_at.toISOString(),
      });
      expect(browser.cookie).not.toBe(before);
      expect(session.factors.map((f) => f.method)).toEqual(["password", "totp"]);
      expect((await send("GET", "/api/v1/sessions/current", browser)).statusCode).toBe(200);
      expect(await events("auth.second-factor", user.id)).toMatchObject([
        { target_id: session.id, details: { method: "totp" } },
      ]);
    });

    it("accepts a code one step behind or ahead of the server's time, and no further", async () => {
      const { user, secret } = await enrolled();
      // Well past the confirmation's step, so that no code below is refused as a replay.
      clock.advance(3 * STEP_MS);
      for (const offset of [-2 * STEP_MS, 2 * STEP_MS]) {
        expect((await completeWith(await halfSession(user), { totpCode: await code(secret, offset) })).statusCode).toBe(
          401,
        );
      }
      expect(await events("auth.second-factor-failed", user.id)).toMatchObject([
        { details: { reason: "wrong-code" } },
        { details: { reason: "wrong-code" } },
      ]);
      for (const offset of [-STEP_MS, STEP_MS]) {
        expect((await completeWith(await halfSession(user), { totpCode: await code(secret, offset) })).statusCode).toBe(
          200,
        );
      }
    });

    it("refuses a replayed code: the confirmation's, and one that already finished a sign-in", async () => {
      const { user, secret } = await enrolled();
      const first = await halfSession(user);
      const used = await code(secret);
      expect((await completeWith(first, { totpCode: used })).statusCode).toBe(200);
      const second = await halfSession(user);
      const replay = await completeWith(second, { totpCode: used });
      expect(replay.statusCode).toBe(401);
      expect(replay.json().detail).toMatch(/already used/);
      // An earlier step (the confirmation's) is older than the last one used: refused too.
      expect((await completeWith(second, { totpCode: await code(secret, -STEP_MS) })).statusCode).toBe(401);
      expect(await events("auth.second-factor-failed", user.id)).toMatchObject([
        { details: { reason: "replayed" } },
        { details: { reason: "replayed" } },
      ]);
      clock.advance(STEP_MS);
      expect((await completeWith(second, { totpCode: await code(secret) })).statusCode).toBe(200);
    });

    it("lets exactly one of two requests racing with the same code through", async () => {
      const { user, secret } = await enrolled();
      const browsers = [await halfSession(user), await halfSession(user)];
      const same = await code(secret);
      // Both have checked the code and are about to spend it: only the conditional update can tell them apart.
      gate.arm(2);
      const answers = await Promise.all(browsers.map((browser) => completeWith(browser, { totpCode: same })));
      expect(answers.map((answer) => answer.statusCode).sort()).toEqual([200, 401]);
      expect(await events("auth.second-factor", user.id)).toHaveLength(1);
      expect(await events("auth.second-factor-failed", user.id)).toMatchObject([{ details: { reason: "replayed" } }]);
      const states = await Promise.all(browsers.map(async (browser) => (await sessionRow(browser)).state));
      expect(states.sort()).toEqual(["active", "pending-second-factor"]);
    });

    it("a backup code finishes a sign-in once; the code is audited by id only", async () => {
      const { user, backupCodes } = await enrolled();
      const [first = "", second = ""] = backupCodes;
      const browser = await halfSession(user);
      expect((await completeWith(browser, { backupCode: "0000-0000-0000-0000" })).statusCode).toBe(401);
      const done = await completeWith(browser, { backupCode: first.toUpperCase().replaceAll("-", " ") });
      expect(done.statusCode).toBe(200);
      expect((await sessionRow(browser)).factors.map((f) => f.method)).toEqual(["password", "backup-code"]);
      expect(await events("auth.second-factor", user.id)).toMatchObject([{ details: { method: "backup-code" } }]);
      expect(await events("auth.backup-code-used", user.id)).toMatchObject([
        { target_id: user.id, details: { remaining: BACKUP_CODE_COUNT - 1 } },
      ]);
      expect((await alertKinds(user.id)).filter((kind) => kind === "backup-code-used")).toHaveLength(1);

      const again = await halfSession(user);
      expect((await completeWith(again, { backupCode: first })).statusCode).toBe(401);
      expect(await events("auth.second-factor-failed", user.id)).toMatchObject([
        { details: { method: "backup-code", reason: "wrong-code" } },
        { details: { method: "backup-code", reason: "wrong-code" } },
      ]);
      expect((await completeWith(again, { backupCode: second })).statusCode).toBe(200);
      expect((await send("GET", "/api/v1/me/totp", again)).json().backupCodesRemaining).toBe(BACKUP_CODE_COUNT - 2);
      const audited = await auditText(user.id);
      for (const backup of backupCodes) expect(audited).not.toContain(backup.slice(5));
    });

    it("never takes one user's code for another's half-session", async () => {
      const a = await enrolled();
      const b = await enrolled();
      const browser = await halfSession(b.user);
      expect((await completeWith(browser, { totpCode: await code(a.secret) })).statusCode).toBe(401);
      expect((await completeWith(browser, { backupCode: a.backupCodes[0] ?? "" })).statusCode).toBe(401);
      expect((await sessionRow(browser)).state).toBe("pending-second-factor");
    });

    it("refuses without a half-session: none, a full session, an expired one, another site's request", async () => {
      const { user, secret, browser: full } = await enrolled();
      expect((await completeWith({ cookie: `${COOKIE}=${"A".repeat(43)}` }, { totpCode: "123456" })).statusCode).toBe(
        401,
      );
      expect(
        (await send("POST", "/api/v1/sessions/current/second-factor", undefined, { totpCode: "1" })).statusCode,
      ).toBe(401);
      expect((await completeWith(full, { totpCode: await code(secret) })).statusCode).toBe(401);

      const crossSite = await halfSession(user);
      const forged = await world.app.app.inject({
        method: "POST",
        url: "/api/v1/sessions/current/second-factor",
        headers: { cookie: crossSite.cookie, "sec-fetch-site": "cross-site" },
        payload: { totpCode: await code(secret) },
      });
      expect(forged.statusCode).toBe(403);

      const late = await halfSession(user);
      clock.advance(PENDING_SECOND_FACTOR_TIMEOUT_MS);
      expect((await completeWith(late, { totpCode: await code(secret) })).statusCode).toBe(401);
      // Nothing was spent by the refusals: the code still finishes a live half-session.
      expect((await completeWith(await halfSession(user), { totpCode: await code(secret) })).statusCode).toBe(200);
    });

    it("refuses malformed answers as bad input", async () => {
      const { user } = await enrolled();
      const browser = await halfSession(user);
      for (const payload of [
        {},
        { totpCode: "123456", backupCode: "abcd" },
        { code: "123456" },
        { totpCode: 123456 },
      ]) {
        expect((await send("POST", "/api/v1/sessions/current/second-factor", browser, payload)).statusCode).toBe(400);
      }
    });

    it("throttles codes per user, across routes, with Retry-After", async () => {
      const { user, secret } = await enrolled();
      const browser = await halfSession(user);
      // The enrolment's first code counted too: the limit is one for every route that takes a code.
      for (let i = 1; i < SECOND_FACTOR_PER_ACCOUNT.limit; i++) {
        expect((await completeWith(browser, { totpCode: "000000" })).statusCode).toBe(401);
      }
      const limited = await completeWith(browser, { totpCode: await code(secret) });
      expect(limited.statusCode).toBe(429);
      expect(Number(limited.headers["retry-after"])).toBeGreaterThan(0);
      expect((await sessionRow(browser)).state).toBe("pending-second-factor");
    });

    it("keeps the owner's known browser an allowance of its own, whatever someone with the password spends (A6)", async () => {
      const { user, secret } = await enrolled();
      /** A request from the owner's own browser: its session and its device cookie. */
      const fromOwner = (url: string, cookies: string, payload: object) =>
        world.app.app.inject({
          method: "POST",
          url,
          remoteAddress: randomAddress(),
          headers: { cookie: cookies, "sec-fetch-site": "same-origin" },
          payload,
        });
      // The owner finishes a sign-in: the browser becomes a known device of the account.
      const first = await completeWith(await halfSession(user), { totpCode: await code(secret) });
      expect(first.statusCode).toBe(200);
      const device = first.cookies.find((cookie) => cookie.name === DEVICE)?.value;
      expect(device).toBeDefined();
      // Someone who holds the password spends the account's window (the enrolment and the owner's code counted).
      const attacker = await halfSession(user);
      for (let i = 2; i < SECOND_FACTOR_PER_ACCOUNT.limit; i++) {
        expect((await completeWith(attacker, { totpCode: "000000" })).statusCode).toBe(401);
      }
      expect((await completeWith(attacker, { totpCode: "000000" })).statusCode).toBe(429);

      clock.advance(STEP_MS);
      const signedIn = await fromOwner("/api/v1/sessions", `${DEVICE}=${device}`, {
        email: user.email,
        password: user.password,
      });
      expect(signedIn.json().session.state).toBe("pending-second-factor");
      const session = signedIn.cookies.find((cookie) => cookie.name === COOKIE)?.value;
      const done = await fromOwner(
        "/api/v1/sessions/current/second-factor",
        `${COOKIE}=${session}; ${DEVICE}=${device}`,
        {
          totpCode: await code(secret),
        },
      );
      expect(done.statusCode, done.body).toBe(200);
      // The account's window is still spent for every other browser.
      expect((await completeWith(await halfSession(user), { totpCode: await code(secret) })).statusCode).toBe(429);
    });

    it("holds a guesser back with a growing delay that outlives the window, stored and audited (A6)", async () => {
      const { user } = await enrolled();
      let browser = await halfSession(user);
      for (let i = 1; i < SECOND_FACTOR_PER_ACCOUNT.limit; i++) {
        expect((await completeWith(browser, { totpCode: "000000" })).statusCode).toBe(401);
      }
      // The window's limit is reached; past it, the account's backoff counts on: each failure doubles the wait.
      clock.advance(SECOND_FACTOR_PER_ACCOUNT.windowSeconds * 1000);
      browser = await halfSession(user);
      // Nine failures so far (the enrolment's code was right): the tenth is the last free one.
      expect((await completeWith(browser, { totpCode: "000000" })).statusCode).toBe(401);
      expect((await completeWith(browser, { totpCode: "000000" })).statusCode).toBe(401);
      const held = await completeWith(browser, { totpCode: "000000" });
      expect(held.statusCode).toBe(429);
      expect(Number(held.headers["retry-after"])).toBe(1);
      clock.advance(1000);
      expect((await completeWith(browser, { totpCode: "000000" })).statusCode).toBe(401);
      const longer = await completeWith(browser, { totpCode: "000000" });
      expect(longer.statusCode).toBe(429);
      expect(Number(longer.headers["retry-after"])).toBe(2);
      expect(await events("auth.locked-out", user.id)).toMatchObject([
        { details: { flow: "second-factor", scope: "account", seconds: 1 } },
        { details: { flow: "second-factor", scope: "account", seconds: 2 } },
      ]);
    });
  });

  describe("step-up with the app", () => {
    it("a code counts as recent authentication and issues a new token; wrong and replayed codes are refused", async () => {
      const { user, secret, browser } = await enrolled();
      clock.advance(RECENT_AUTHENTICATION_MS);
      expect((await send("DELETE", "/api/v1/me/totp", browser)).statusCode).toBe(403);

      const wrong = await send("POST", "/api/v1/sessions/current/reauthenticate/totp", browser, {
        code: await code(secret, 4 * STEP_MS),
      });
      expect(wrong.statusCode).toBe(403);
      expect(await events("auth.second-factor-failed", user.id)).toMatchObject([
        { details: { method: "totp", purpose: "step-up", reason: "wrong-code" } },
      ]);

      const before = browser.cookie;
      const fresh = await code(secret);
      const ok = await send("POST", "/api/v1/sessions/current/reauthenticate/totp", browser, { code: fresh });
      expect(ok.statusCode).toBe(200);
      expect(ok.json().recentAuthenticationUntil).toBe(
        new Date(now().getTime() + RECENT_AUTHENTICATION_MS).toISOString(),
      );
      expect(browser.cookie).not.toBe(before);
      expect((await sessionRow(browser)).factors.map((f) => f.method)).toEqual(["password", "totp", "totp"]);
      expect(await events("auth.reauthenticated", user.id)).toMatchObject([{ details: { method: "totp" } }]);

      const replay = await send("POST", "/api/v1/sessions/current/reauthenticate/totp", browser, { code: fresh });
      expect(replay.statusCode).toBe(403);
      // The token replaced by the step-up cannot step up again.
      const old = await send(
        "POST",
        "/api/v1/sessions/current/reauthenticate/totp",
        { cookie: before },
        {
          code: await code(secret, STEP_MS),
        },
      );
      expect(old.statusCode).toBe(403);
      expect((await send("DELETE", "/api/v1/me/totp", browser)).statusCode).toBe(204);
    });

    it("tells a user without an app to use their password", async () => {
      const user = await world.newUser();
      const browser = await browserOf(user);
      const answer = await send("POST", "/api/v1/sessions/current/reauthenticate/totp", browser, { code: "123456" });
      expect(answer.statusCode).toBe(409);
    });
  });

  describe("backup codes and removal", () => {
    it("keeps the app of a member of tenants that require MFA while it is the last second factor (409)", async () => {
      const { user, browser } = await enrolled();
      for (const name of ["Beta GmbH", "Alpha SA"]) {
        const tenantId = await world.newTenant(name);
        await world.addMember(tenantId, user.id, "viewer");
        await world.setPolicy(tenantId, { requireMfa: true });
      }
      const refused = await send("DELETE", "/api/v1/me/totp", browser);
      expect(refused.statusCode).toBe(409);
      expect(refused.headers["content-type"]).toMatch(/^application\/problem\+json/);
      expect(refused.json()).toMatchObject({
        type: "/problems/last-second-factor",
        status: 409,
        detail: expect.stringMatching(/^2 of your organizations require a second factor \(Alpha SA, Beta GmbH\)/),
      });
      expect((await send("GET", "/api/v1/me/totp", browser)).json()).toMatchObject({
        status: "enabled",
        backupCodesRemaining: BACKUP_CODE_COUNT,
      });
      expect(await events("auth.totp-removed", user.id)).toEqual([]);
      expect(await alertKinds(user.id)).not.toContain("factor-removed");

      // A passkey left is a second factor still: the app may go.
      await world.addPasskey(user.id);
      expect((await send("DELETE", "/api/v1/me/totp", browser)).statusCode).toBe(204);
    });

    it("lets an enrolment never confirmed go wherever MFA is required: it was no factor", async () => {
      const user = await world.newUser();
      const tenantId = await world.newTenant();
      await world.addMember(tenantId, user.id, "member");
      await world.setPolicy(tenantId, { requireMfa: true });
      const browser = await browserOf(user);
      expect((await send("POST", "/api/v1/me/totp", browser)).statusCode).toBe(201);
      expect((await send("DELETE", "/api/v1/me/totp", browser)).statusCode).toBe(204);
    });

    it("issues ten new backup codes, and the previous ones stop working", async () => {
      const { user, backupCodes, browser } = await enrolled();
      const renewed = await send("POST", "/api/v1/me/totp/backup-codes", browser);
      expect(renewed.statusCode).toBe(200);
      const fresh: string[] = renewed.json().backupCodes;
      expect(fresh).toHaveLength(BACKUP_CODE_COUNT);
      expect(fresh.filter((c) => backupCodes.includes(c))).toEqual([]);
      expect(await events("auth.backup-codes-regenerated", user.id)).toHaveLength(1);
      const half = await halfSession(user);
      expect((await completeWith(half, { backupCode: backupCodes[0] ?? "" })).statusCode).toBe(401);
      expect((await completeWith(half, { backupCode: fresh[0] ?? "" })).statusCode).toBe(200);
    });

    it("has no backup codes to issue without an app", async () => {
      const user = await world.newUser();
      expect((await send("POST", "/api/v1/me/totp/backup-codes", await browserOf(user))).statusCode).toBe(409);
    });

    it("removing the app deletes it and its backup codes: a password sign-in is complete again", async () => {
      const { user, browser } = await enrolled();
      const removed = await send("DELETE", "/api/v1/me/totp", browser);
      expect(removed.statusCode).toBe(204);
      const left = await world.t.db.withPlatform(async (tx) => ({
        totp: await tx.selectFrom("totp_factors").select("user_id").where("user_id", "=", user.id).execute(),
        codes: await tx.selectFrom("backup_codes").select("id").where("user_id", "=", user.id).execute(),
      }));
      expect(left).toEqual({ totp: [], codes: [] });
      expect(await events("auth.totp-removed", user.id)).toMatchObject([
        { actor_id: user.id, details: { confirmed: true, backupCodesDeleted: BACKUP_CODE_COUNT } },
      ]);
      expect((await alertKinds(user.id)).at(-1)).toBe("factor-removed");
      expect((await send("DELETE", "/api/v1/me/totp", browser)).statusCode).toBe(404);
      const signedIn = await signIn(world.app, user.email, user.password);
      expect((await send("GET", "/api/v1/sessions/current", { cookie: signedIn.cookie })).json().session.state).toBe(
        "active",
      );
    });
  });
});
