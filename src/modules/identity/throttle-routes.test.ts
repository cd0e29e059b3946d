import { randomBytes } from "node:crypto";
import type { FastifyInstance } from "fastify";
import { beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { loadConfig } from "../../config.ts";
import { manualClock } from "../../platform/clock.ts";
import { buildApp } from "../../platform/http/app.ts";
import { createRateLimiter } from "../../platform/ratelimit/limiter.ts";
import { createIdentity } from "./index.ts";
import { SIGN_IN_PER_ACCOUNT, SIGN_IN_PER_ADDRESS } from "./session-routes.ts";
import { buildIdentityTestApp, randomAddress, TEST_PUBLIC_URL, useIdentityTestApp } from "./testing.ts";
import { BACKOFF_POLICIES } from "./throttle.ts";

const WRONG = "not the password at all";
const WINDOW_MS = SIGN_IN_PER_ACCOUNT.windowSeconds * 1000;

describe.each(DATABASE_KINDS)("growing backoff through the routes on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);
  const email = () => `b-${randomBytes(5).toString("hex")}@example.com`;

  beforeEach(() => clock.advance(BACKOFF_POLICIES.address.forgetAfterSeconds * 1000 + 1000));

  const post = (server: FastifyInstance, url: string, payload: object, remoteAddress = randomAddress(), headers = {}) =>
    server.inject({
      method: "POST",
      url,
      remoteAddress,
      headers: { "sec-fetch-site": "same-origin", ...headers },
      payload,
    });
  const signIn = (server: FastifyInstance, payload: { email: string; password: string }, address?: string) =>
    post(server, "/api/v1/sessions", payload, address);

  it("holds an account back across windows, before the password is checked, and after a restart", async () => {
    const user = await world.newUser();
    const free = BACKOFF_POLICIES.account.freeFailures;
    expect(free).toBe(SIGN_IN_PER_ACCOUNT.limit);
    for (let i = 0; i < free; i++) {
      expect((await signIn(world.app.app, { email: user.email, password: WRONG })).statusCode).toBe(401);
    }
    clock.advance(WINDOW_MS);
    // A fresh window of the rate limiter, but the account's backoff remembers: each failure now blocks longer.
    expect((await signIn(world.app.app, { email: user.email, password: WRONG })).statusCode).toBe(401);
    const blocked = await signIn(world.app.app, { email: user.email, password: user.password });
    expect(blocked.statusCode).toBe(429);
    expect(blocked.headers["retry-after"]).toBe("1");
    expect(blocked.json().type).toBe("/problems/rate-limited");
    clock.advance(1000);
    expect((await signIn(world.app.app, { email: user.email, password: WRONG })).statusCode).toBe(401);
    expect((await signIn(world.app.app, { email: user.email, password: user.password })).headers["retry-after"]).toBe(
      "2",
    );

    // A restart: a new app with a new rate limiter (its windows start empty) over the same database.
    const restarted = await buildIdentityTestApp({
      ...world.deps,
      rateLimiter: createRateLimiter({ db: world.t.db, clock, hashKey: randomBytes(32) }),
    });
    try {
      const after = await signIn(restarted.app, { email: user.email, password: user.password });
      expect(after.statusCode).toBe(429);
      expect(after.headers["retry-after"]).toBe("2");
      clock.advance(2000);
      expect((await signIn(restarted.app, { email: user.email, password: user.password })).statusCode).toBe(200);
    } finally {
      await restarted.close();
    }
    const lockouts = await world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .select("details")
        .where("action", "=", "auth.locked-out")
        .where("target_id", "=", user.id)
        .execute(),
    );
    expect(lockouts.map((e) => e.details)).toEqual([
      { flow: "sign-in", scope: "account", failures: free + 1, seconds: 1 },
      { flow: "sign-in", scope: "account", failures: free + 2, seconds: 2 },
    ]);
  });

  it("holds a source address back across windows, counting an IPv6 /64 as one", async () => {
    const prefix = `2001:db8:${randomBytes(2).toString("hex")}:${randomBytes(2).toString("hex")}`;
    const host = () => `${prefix}:${randomBytes(2).toString("hex")}::${randomBytes(2).toString("hex")}`;
    for (let i = 0; i < SIGN_IN_PER_ADDRESS.limit; i++) {
      expect((await signIn(world.app.app, { email: email(), password: WRONG }, host())).statusCode).toBe(401);
    }
    clock.advance(WINDOW_MS);
    expect((await signIn(world.app.app, { email: email(), password: WRONG }, host())).statusCode).toBe(401);
    const blocked = await signIn(world.app.app, { email: email(), password: WRONG }, host());
    expect(blocked.statusCode).toBe(429);
    expect(blocked.headers["retry-after"]).toBe("1");
    // Another /64 is another source.
    expect(
      (
        await signIn(
          world.app.app,
          { email: email(), password: WRONG },
          `2001:db8:ffff:${randomBytes(2).toString("hex")}::1`,
        )
      ).statusCode,
    ).toBe(401);
  });

  it("counts the address the trusted proxy reports, and only a trusted proxy's", async () => {
    const identity = createIdentity(world.deps);
    const build = (trustedProxies: string[]) =>
      buildApp({
        config: { ...loadConfig({}), publicUrl: TEST_PUBLIC_URL, trustedProxies },
        db: world.t.db,
        clock,
        rateLimiter: createRateLimiter({ db: world.t.db, clock, hashKey: randomBytes(32) }),
        routes: identity.routes,
        accessControl: identity.accessControl,
        log: false,
      });
    const proxy = "10.99.0.1";
    const client = randomAddress();
    const other = randomAddress();
    const behind = await build([proxy]);
    const exposed = await build([]);
    try {
      const from = (server: FastifyInstance, forwardedFor: string) =>
        post(server, "/api/v1/sessions", { email: email(), password: WRONG }, proxy, {
          "x-forwarded-for": forwardedFor,
        });
      for (let i = 0; i < SIGN_IN_PER_ADDRESS.limit; i++) expect((await from(behind, client)).statusCode).toBe(401);
      expect((await from(behind, client)).statusCode).toBe(429);
      expect((await from(behind, other)).statusCode).toBe(401);
      // Without trust, the header is the client's word: every request counts against the proxy's address.
      for (let i = 0; i < SIGN_IN_PER_ADDRESS.limit; i++)
        expect((await from(exposed, randomAddress())).statusCode).toBe(401);
      expect((await from(exposed, randomAddress())).statusCode).toBe(429);
    } finally {
      await behind.close();
      await exposed.close();
    }
  });

  it.each([
    ["verification", "/api/v1/accounts/verify-email", {}],
    [
      "password reset",
      "/api/v1/accounts/password-reset/complete",
      { password: "correct horse battery staple 42 anew" },
    ],
  ])("holds back a source that keeps presenting dead %s links", async (_, url, extra) => {
    const address = randomAddress();
    const dead = () => ({ token: randomBytes(32).toString("base64url"), ...extra });
    for (let i = 0; i < BACKOFF_POLICIES.address.freeFailures + 1; i++) {
      expect((await post(world.app.app, url, dead(), address)).statusCode).toBe(400);
    }
    const blocked = await post(world.app.app, url, dead(), address);
    expect(blocked.statusCode).toBe(429);
    expect(blocked.headers["retry-after"]).toBe("1");
    expect((await post(world.app.app, url, dead(), randomAddress())).statusCode).toBe(400);
    clock.advance(1000);
    expect((await post(world.app.app, url, dead(), address)).statusCode).toBe(400);
  });
});
