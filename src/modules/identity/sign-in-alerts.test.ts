import { randomBytes } from "node:crypto";
import { beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { SIGN_IN_PER_ACCOUNT } from "./session-routes.ts";
import { BURST_FAILURES, BURST_WINDOW_MS, FAILURES_BEFORE_SUCCESS } from "./sign-in-alerts.ts";
import { createTenantWithOwner } from "./tenants.ts";
import { randomAddress, type TestUser, useIdentityTestApp } from "./testing.ts";

const WRONG = "not the password at all";

describe.each(DATABASE_KINDS)("sign-in alerts on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);
  const email = () => `s-${randomBytes(5).toString("hex")}@example.com`;

  beforeEach(() => clock.advance(SIGN_IN_PER_ACCOUNT.windowSeconds * 1000 + 1000));

  const attempt = (user: Pick<TestUser, "email">, password: string) =>
    world.app.app.inject({
      method: "POST",
      url: "/api/v1/sessions",
      remoteAddress: randomAddress(),
      headers: { "sec-fetch-site": "same-origin" },
      payload: { email: user.email, password },
    });
  const fail = async (user: TestUser, times: number) => {
    for (let i = 0; i < times; i++) expect((await attempt(user, WRONG)).statusCode).toBe(401);
  };
  const alerts = (userId: string) =>
    world.t.db.withPlatform((tx) =>
      tx.selectFrom("user_alerts").select(["kind", "details"]).where("user_id", "=", userId).orderBy("id").execute(),
    );
  /** A user who signed in once already, so that later sign-ins from new browsers raise only their own alerts. */
  async function seasoned(): Promise<TestUser> {
    const user = await world.newUser();
    expect((await attempt(user, user.password)).statusCode).toBe(200);
    clock.advance(SIGN_IN_PER_ACCOUNT.windowSeconds * 1000);
    return user;
  }

  it("raises one burst alert per window of failed sign-ins, shown to the user and their tenants' admins", async () => {
    const user = await seasoned();
    const tenant = await createTenantWithOwner(world.deps, {
      userId: user.id,
      tenant: { slug: `b-${randomBytes(4).toString("hex")}`, name: "Burst" },
      requestId: "setup",
    });
    await fail(user, BURST_FAILURES - 1);
    expect(await alerts(user.id)).toEqual([]);
    await fail(user, 1);
    expect(await alerts(user.id)).toEqual([
      { kind: "failed-sign-in-burst", details: { failures: BURST_FAILURES, windowMinutes: 15 } },
    ]);
    // (One more only: past ten failures the account's backoff would hold the next ones back.)
    await fail(user, 1);
    expect(await alerts(user.id)).toHaveLength(1);
    const copies = await world.t.db.withTenant({ tenantId: tenant.id }, (tx) =>
      tx.selectFrom("tenant_alerts").select(["kind", "membership_id"]).where("tenant_id", "=", tenant.id).execute(),
    );
    expect(copies).toEqual([{ kind: "failed-sign-in-burst", membership_id: tenant.membershipId }]);
    const mail = (await world.deps.mailer.outbox({ limit: 1000 })).filter((m) => m.to === user.email);
    expect(mail.map((m) => m.template)).toEqual(["security-alert"]);
    expect(mail[0]?.rendered?.text).toContain("Several attempts to sign in to your account failed");

    // The next window's burst is a new one.
    clock.advance(BURST_WINDOW_MS);
    await fail(user, BURST_FAILURES);
    expect((await alerts(user.id)).map((a) => a.kind)).toEqual(["failed-sign-in-burst", "failed-sign-in-burst"]);
  });

  it("raises a burst alert once even when the failures race", async () => {
    const user = await seasoned();
    const responses = await Promise.all(Array.from({ length: BURST_FAILURES + 3 }, () => attempt(user, WRONG)));
    expect(responses.map((r) => r.statusCode)).toEqual(Array(BURST_FAILURES + 3).fill(401));
    expect((await alerts(user.id)).map((a) => a.kind)).toEqual(["failed-sign-in-burst"]);
  });

  it("raises an alert for a success after several failures, not after fewer", async () => {
    const user = await seasoned();
    await fail(user, FAILURES_BEFORE_SUCCESS - 1);
    expect((await attempt(user, user.password)).statusCode).toBe(200);
    expect((await alerts(user.id)).map((a) => a.kind)).toEqual(["new-device"]);

    clock.advance(SIGN_IN_PER_ACCOUNT.windowSeconds * 1000);
    await fail(user, FAILURES_BEFORE_SUCCESS);
    expect((await attempt(user, user.password)).statusCode).toBe(200);
    const raised = await alerts(user.id);
    expect(raised.map((a) => a.kind)).toEqual(["new-device", "sign-in-after-failures", "new-device"]);
    expect(raised[1]?.details).toEqual({ failures: FAILURES_BEFORE_SUCCESS });
    // The count started again with that success.
    expect((await attempt(user, user.password)).statusCode).toBe(200);
    expect((await alerts(user.id)).filter((a) => a.kind === "sign-in-after-failures")).toHaveLength(1);
  });

  it("forgets failures a day old", async () => {
    const user = await seasoned();
    await fail(user, FAILURES_BEFORE_SUCCESS);
    clock.advance(24 * 3_600_000 + 1000);
    expect((await attempt(user, user.password)).statusCode).toBe(200);
    expect((await alerts(user.id)).map((a) => a.kind)).toEqual(["new-device"]);
  });

  it("raises the success alert on a right password that still awaits its second factor", async () => {
    const user = await seasoned();
    await world.addPasskey(user.id);
    await fail(user, FAILURES_BEFORE_SUCCESS);
    const response = await attempt(user, user.password);
    expect(response.json().session.state).toBe("pending-second-factor");
    expect((await alerts(user.id)).map((a) => a.kind)).toEqual(["sign-in-after-failures"]);
  });

  it("counts nothing for an address without an account", async () => {
    const before = await world.t.db.withPlatform((tx) => tx.selectFrom("sign_in_failures").select("user_id").execute());
    const nobody = { email: email() };
    for (let i = 0; i < BURST_FAILURES; i++) expect((await attempt(nobody, WRONG)).statusCode).toBe(401);
    const after = await world.t.db.withPlatform((tx) => tx.selectFrom("sign_in_failures").select("user_id").execute());
    expect(after).toHaveLength(before.length);
  });
});
