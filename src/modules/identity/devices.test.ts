import type { LightMyRequestResponse } from "fastify";
import { beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { DEVICE_COOKIE_MAX_AGE_SECONDS } from "./devices.ts";
import { SIGN_IN_PER_ACCOUNT } from "./session-routes.ts";
import { randomAddress, type TestUser, useIdentityTestApp } from "./testing.ts";
import { hashToken } from "./tokens.ts";

const DEVICE = "__Host-charter_device";
const WRONG = "not the password at all";

describe.each(DATABASE_KINDS)("known devices on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);

  // Each test starts in fresh rate-limit windows.
  beforeEach(() => clock.advance(SIGN_IN_PER_ACCOUNT.windowSeconds * 1000 + 1000));

  /** A sign-in from a browser holding `device` (a device cookie value) or none. */
  const attempt = (user: Pick<TestUser, "email">, password: string, device?: string) =>
    world.app.app.inject({
      method: "POST",
      url: "/api/v1/sessions",
      remoteAddress: randomAddress(),
      headers: { "sec-fetch-site": "same-origin", ...(device ? { cookie: `${DEVICE}=${device}` } : {}) },
      payload: { email: user.email, password },
    });
  const deviceCookie = (response: LightMyRequestResponse) => response.cookies.find((c) => c.name === DEVICE);
  const alerts = (userId: string) =>
    world.t.db.withPlatform((tx) =>
      tx.selectFrom("user_alerts").select(["kind", "details"]).where("user_id", "=", userId).orderBy("id").execute(),
    );
  const devices = (userId: string) =>
    world.t.db.withPlatform((tx) => tx.selectFrom("known_devices").selectAll().where("user_id", "=", userId).execute());

  it("remembers the browser of a sign-in in a __Host- cookie, kept only hashed", async () => {
    const user = await world.newUser();
    const response = await attempt(user, user.password);
    expect(response.statusCode).toBe(200);
    const cookie = deviceCookie(response);
    expect(cookie?.value).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(cookie).toMatchObject({ path: "/", httpOnly: true, secure: true, sameSite: "Lax" });
    expect(cookie?.maxAge).toBe(DEVICE_COOKIE_MAX_AGE_SECONDS);
    const [row] = await devices(user.id);
    expect(Buffer.from(row?.token_hash ?? []).equals(hashToken(cookie?.value ?? ""))).toBe(true);
    expect(JSON.stringify(await devices(user.id))).not.toContain(cookie?.value);
    // The account's very first sign-in is from a new browser by necessity: no alert.
    expect(await alerts(user.id)).toEqual([]);
  });

  it("raises a new-device alert for a browser the account has not used, not for one it has", async () => {
    const user = await world.newUser();
    const first = deviceCookie(await attempt(user, user.password))?.value;
    clock.advance(60_000);
    const again = await attempt(user, user.password, first);
    expect(again.statusCode).toBe(200);
    expect(deviceCookie(again)?.value).toBe(first);
    expect(await alerts(user.id)).toEqual([]);
    const [known] = await devices(user.id);
    expect(known?.last_seen_at.toISOString()).toBe(clock.now().toISOString());

    const elsewhere = await attempt(user, user.password);
    expect(elsewhere.statusCode).toBe(200);
    const second = deviceCookie(elsewhere)?.value;
    expect(second).not.toBe(first);
    const raised = await alerts(user.id);
    expect(raised).toHaveLength(1);
    expect(raised[0]).toMatchObject({ kind: "new-device", details: { method: "password" } });
    expect(await devices(user.id)).toHaveLength(2);
    const mail = (await world.deps.mailer.outbox({ limit: 1000 })).filter((m) => m.to === user.email);
    expect(mail.map((m) => m.template)).toEqual(["security-alert"]);
    expect(mail[0]?.rendered?.text).toContain("from a browser or device that had not been used with it before");
  });

  it("keeps one cookie per browser: signing in to another account makes it known there too, as a new device", async () => {
    const alice = await world.newUser();
    const bob = await world.newUser();
    await attempt(bob, bob.password);
    const browser = deviceCookie(await attempt(alice, alice.password))?.value;
    const response = await attempt(bob, bob.password, browser);
    expect(response.statusCode).toBe(200);
    expect(deviceCookie(response)?.value).toBe(browser);
    expect((await alerts(bob.id)).map((a) => a.kind)).toEqual(["new-device"]);
    expect((await devices(bob.id)).some((d) => Buffer.from(d.token_hash).equals(hashToken(browser ?? "")))).toBe(true);
  });

  it("remembers nothing for a half-session: the browser is known once the second factor is proven", async () => {
    const user = await world.newUser();
    await world.addPasskey(user.id);
    const response = await attempt(user, user.password);
    expect(response.statusCode).toBe(200);
    expect(response.json().session.state).toBe("pending-second-factor");
    expect(deviceCookie(response)).toBeUndefined();
    expect(await devices(user.id)).toEqual([]);
  });

  it("does not let an attacker failing at an account lock its owner's browser out", async () => {
    const owner = await world.newUser();
    const browser = deviceCookie(await attempt(owner, owner.password))?.value;
    clock.advance(SIGN_IN_PER_ACCOUNT.windowSeconds * 1000);
    // The attacker spends the account's window, then, in the next, gets it into backoff.
    for (let i = 0; i < SIGN_IN_PER_ACCOUNT.limit; i++) expect((await attempt(owner, WRONG)).statusCode).toBe(401);
    expect((await attempt(owner, WRONG)).statusCode).toBe(429);
    clock.advance(SIGN_IN_PER_ACCOUNT.windowSeconds * 1000);
    expect((await attempt(owner, WRONG)).statusCode).toBe(401);
    const heldBack = await attempt(owner, WRONG);
    expect(heldBack.statusCode).toBe(429);
    expect(Number(heldBack.headers["retry-after"])).toBeGreaterThan(0);

    // A new browser of the owner is held back like the attacker, even with the right password…
    expect((await attempt(owner, owner.password)).statusCode).toBe(429);
    // …but the browser the owner signed in with before has limits of its own, untouched by the attacker.
    const mine = await attempt(owner, owner.password, browser);
    expect(mine.statusCode).toBe(200);
    expect(mine.json().session.state).toBe("active");
    // Its success does not clear the attacker's record against the account.
    expect((await attempt(owner, WRONG)).statusCode).toBe(429);
  });

  it("counts a known browser's own failures on its own limits", async () => {
    const owner = await world.newUser();
    const browser = deviceCookie(await attempt(owner, owner.password))?.value;
    for (let i = 0; i < SIGN_IN_PER_ACCOUNT.limit; i++) {
      expect((await attempt(owner, WRONG, browser)).statusCode).toBe(401);
    }
    expect((await attempt(owner, owner.password, browser)).statusCode).toBe(429);
    // The account's own counter never saw those failures: a new browser still gets in.
    expect((await attempt(owner, owner.password)).statusCode).toBe(200);
  });

  it("spares only the account the browser signed in to, never another", async () => {
    const alice = await world.newUser();
    const victim = await world.newUser();
    const alicesBrowser = deviceCookie(await attempt(alice, alice.password))?.value;
    for (let i = 0; i < SIGN_IN_PER_ACCOUNT.limit; i++) {
      expect((await attempt(victim, WRONG, alicesBrowser)).statusCode).toBe(401);
    }
    expect((await attempt(victim, WRONG, alicesBrowser)).statusCode).toBe(429);
    // A forged cookie value is no better.
    expect((await attempt(victim, WRONG, "A".repeat(43))).statusCode).toBe(429);
  });
});
