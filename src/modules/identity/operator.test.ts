import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import type { TestApp } from "../../platform/http/test-app.ts";
import type { IdentityDeps } from "./deps.ts";
import { ensureOperatorSetupLink, SETUP_LINK_MINUTES } from "./operator.ts";
import { buildIdentityTestApp, createIdentityTestDeps, sessionHeaders, signIn, TEST_PASSWORD } from "./testing.ts";

describe.each(DATABASE_KINDS)("operator setup on %s", (kind) => {
  let t: TestDatabase;
  let deps: IdentityDeps;
  let app: TestApp;
  const clock = manualClock("2026-04-01T09:00:00.000Z");

  // Whether an operator exists is global: each test starts from a database without one.
  beforeEach(async () => {
    t = await openTestDatabase(kind);
    deps = createIdentityTestDeps(t.db, clock);
    app = await buildIdentityTestApp(deps);
  });
  afterEach(async () => {
    await app?.close();
    await t?.close();
  });

  const tokenOf = (link: string | undefined) => {
    const match = /^https:\/\/charter\.test\/setup#token=([A-Za-z0-9_-]{43})$/.exec(link ?? "");
    if (!match?.[1]) throw new Error(`not a setup link: ${link}`);
    return match[1];
  };

  const setup = (token: string, overrides: Record<string, string> = {}) =>
    app.app.inject({
      method: "POST",
      url: "/api/v1/operator/setup",
      payload: { token, email: "root@example.com", displayName: "Root", password: TEST_PASSWORD, ...overrides },
    });

  it("creates the operator once; the link is single use and no new one is made once an operator exists", async () => {
    const token = tokenOf(await ensureOperatorSetupLink(deps));
    const weak = await setup(token, { password: "root" });
    expect(weak.statusCode).toBe(400);
    expect(weak.json().type).toBe("/problems/weak-password");
    const created = await setup(token);
    expect(created.statusCode, created.body).toBe(201);
    const { userId } = created.json();
    const user = await t.db.withPlatform((tx) =>
      tx.selectFrom("users").select(["email_verified_at", "display_name"]).where("id", "=", userId).executeTakeFirst(),
    );
    expect(user).toEqual({ email_verified_at: clock.now(), display_name: "Root" });
    expect((await setup(token, { email: "other@example.com" })).statusCode).toBe(404);
    expect(await ensureOperatorSetupLink(deps)).toBeUndefined();
    const events = await t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .select(["action", "actor_kind", "actor_id", "details"])
        .where("action", "=", "auth.operator-created")
        .execute(),
    );
    expect(events).toEqual([
      { action: "auth.operator-created", actor_kind: "operator", actor_id: userId, details: {} },
    ]);
    // The operator signs in like anyone and reaches the operator routes.
    const session = await signIn(app, "root@example.com", TEST_PASSWORD);
    const tenants = await app.app.inject({
      method: "GET",
      url: "/api/v1/operator/tenants",
      headers: sessionHeaders(session.cookie),
    });
    expect(tenants.statusCode, tenants.body).toBe(200);
  });

  it(`a link expires after ${SETUP_LINK_MINUTES} minutes; each start without an operator replaces the unused one`, async () => {
    const first = tokenOf(await ensureOperatorSetupLink(deps));
    const second = tokenOf(await ensureOperatorSetupLink(deps));
    expect(second).not.toBe(first);
    expect((await setup(first)).statusCode).toBe(404);
    clock.advance(SETUP_LINK_MINUTES * 60_000);
    const expired = await setup(second);
    expect(expired.statusCode).toBe(404);
    expect(expired.json().type).toBe("/problems/not-found");
    expect((await setup(tokenOf(await ensureOperatorSetupLink(deps)))).statusCode).toBe(201);
    const stored = await t.db.withPlatform((tx) => tx.selectFrom("operator_setup_tokens").select("used_at").execute());
    expect(stored).toEqual([{ used_at: clock.now() }]);
  });

  it("refuses a malformed or unknown token the same way", async () => {
    await ensureOperatorSetupLink(deps);
    for (const token of ["nope", "A".repeat(43)]) {
      const response = await setup(token);
      expect(response.statusCode).toBe(404);
      expect(response.json().detail).toBe("this setup link does not exist, was used or has expired");
    }
    const operators = await t.db.withPlatform((tx) => tx.selectFrom("operators").select("user_id").execute());
    expect(operators).toEqual([]);
  });
});
