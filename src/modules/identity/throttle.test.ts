import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import type { IdentityDeps } from "./deps.ts";
import { createIdentityTestDeps } from "./testing.ts";
import {
  BACKOFF_POLICIES,
  type BackoffTarget,
  backoffSeconds,
  backoffTargets,
  checkBackoff,
  type FailureContext,
  linkBackoffTargets,
  recordFailure,
  recordSuccess,
} from "./throttle.ts";

describe("backoff arithmetic", () => {
  const policy = { freeFailures: 3, baseSeconds: 2, maxSeconds: 60, forgetAfterSeconds: 3600 };

  it("lets the free failures through, then doubles the delay up to the cap", () => {
    expect([1, 2, 3, 4, 5, 6, 7, 8, 9, 50, 10_000].map((n) => backoffSeconds(policy, n))).toEqual([
      0, 0, 0, 2, 4, 8, 16, 32, 60, 60, 60,
    ]);
  });

  it("counts an IPv6 /64 as one source and lets a known device stand in for the account", () => {
    const [a] = backoffTargets("sign-in", "2001:db8:1:2::1", { key: "k" });
    const [b] = backoffTargets("sign-in", "2001:db8:1:2:ffff:1:2:3", { key: "k" });
    const [c] = backoffTargets("sign-in", "2001:db8:1:3::1", { key: "k" });
    expect(a?.key).toBe(b?.key);
    expect(a?.key).not.toBe(c?.key);
    expect(backoffTargets("sign-in", "10.0.0.1", { key: "k" })[1]).toEqual({
      flow: "sign-in",
      scope: "account",
      key: "k",
    });
    expect(backoffTargets("second-factor", "10.0.0.1", { key: "k", deviceId: "d" })[1]).toEqual({
      flow: "second-factor",
      scope: "device",
      key: "d",
    });
    expect(linkBackoffTargets("verification", "::ffff:10.0.0.1")).toEqual([
      { flow: "verification", scope: "address", key: "10.0.0.1" },
    ]);
  });
});

describe.each(DATABASE_KINDS)("backoff counters on %s", (kind) => {
  let t: TestDatabase;
  let deps: IdentityDeps;
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const context: FailureContext = { requestId: "req", actor: { kind: "anonymous", id: null }, userId: null };

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    deps = createIdentityTestDeps(t.db, clock);
  });
  afterAll(async () => {
    await deps?.rateLimiter.close();
    await t?.close();
  });

  const fail = (targets: readonly BackoffTarget[]) =>
    t.db.withPlatform((tx) => recordFailure(tx, deps, targets, context));
  /** The Retry-After of the refusal, or 0 when the attempt may go ahead. */
  const retryAfter = async (targets: readonly BackoffTarget[]) => {
    try {
      await checkBackoff(deps, targets);
      return 0;
    } catch (error) {
      if (!(error instanceof HttpProblem)) throw error;
      expect(error.slug).toBe("rate-limited");
      return Number(error.headers["retry-after"]);
    }
  };
  const fresh = (scope: "account" | "device"): BackoffTarget[] => [
    { flow: "sign-in", scope: "address", key: `10.9.${randomBytes(1)[0]}.${randomBytes(1)[0]}` },
    { flow: "sign-in", scope, key: randomBytes(8).toString("hex") },
  ];

  it("blocks an account once its free failures are spent, for a time that doubles", async () => {
    const targets = fresh("account");
    const free = BACKOFF_POLICIES.account.freeFailures;
    for (let i = 0; i < free; i++) {
      expect(await retryAfter(targets)).toBe(0);
      expect(await fail(targets)).toBe(0);
    }
    expect(await fail(targets)).toBe(1);
    expect(await retryAfter(targets)).toBe(1);
    clock.advance(1000);
    expect(await retryAfter(targets)).toBe(0);
    expect(await fail(targets)).toBe(2);
    expect(await retryAfter(targets)).toBe(2);
    clock.advance(2000);
    expect(await fail(targets)).toBe(4);
    clock.advance(1000);
    expect(await retryAfter(targets)).toBe(3);

    // Each block is audited as a lockout, without the address or the account's key.
    const lockouts = await t.db.withPlatform((tx) =>
      tx.selectFrom("platform_audit_events").select("details").where("action", "=", "auth.locked-out").execute(),
    );
    expect(lockouts.map((row) => row.details)).toContainEqual({
      flow: "sign-in",
      scope: "account",
      failures: free + 3,
      seconds: 4,
    });
    const text = JSON.stringify(lockouts);
    for (const target of targets) expect(text).not.toContain(target.key);
    const stored = await t.db.withPlatform((tx) => tx.selectFrom("auth_backoff").selectAll().execute());
    for (const target of targets) expect(JSON.stringify(stored)).not.toContain(target.key);
  });

  it("caps the delay, and forgets a counter after a quiet spell", async () => {
    const targets = fresh("account");
    const { freeFailures, maxSeconds, forgetAfterSeconds } = BACKOFF_POLICIES.account;
    let longest = 0;
    for (let i = 0; i < freeFailures + 20; i++) longest = await fail(targets);
    expect(longest).toBe(maxSeconds);
    expect(await retryAfter(targets)).toBe(maxSeconds);
    clock.advance(forgetAfterSeconds * 1000 + 1000);
    expect(await retryAfter(targets)).toBe(0);
    // Counting starts again from the first failure.
    expect(await fail(targets)).toBe(0);
  });

  it("clears the account's and the device's counters on success, never the address's", async () => {
    const address: BackoffTarget = { flow: "sign-in", scope: "address", key: "10.200.0.1" };
    const account: BackoffTarget = { flow: "sign-in", scope: "account", key: "acct" };
    const device: BackoffTarget = { flow: "sign-in", scope: "device", key: "dev" };
    for (let i = 0; i < BACKOFF_POLICIES.address.freeFailures + 1; i++) await fail([address]);
    for (let i = 0; i < BACKOFF_POLICIES.account.freeFailures + 1; i++) await fail([account, device]);
    expect(await retryAfter([account])).toBeGreaterThan(0);
    expect(await retryAfter([device])).toBeGreaterThan(0);
    await t.db.withPlatform((tx) => recordSuccess(tx, deps, [address, account, device]));
    expect(await retryAfter([account])).toBe(0);
    expect(await retryAfter([device])).toBe(0);
    expect(await retryAfter([address])).toBeGreaterThan(0);
  });

  it("keeps flows and scopes apart", async () => {
    const key = randomBytes(8).toString("hex");
    const signIn: BackoffTarget = { flow: "sign-in", scope: "account", key };
    for (let i = 0; i < BACKOFF_POLICIES.account.freeFailures + 1; i++) await fail([signIn]);
    expect(await retryAfter([signIn])).toBeGreaterThan(0);
    expect(await retryAfter([{ ...signIn, flow: "second-factor" }])).toBe(0);
    expect(await retryAfter([{ ...signIn, scope: "device" }])).toBe(0);
  });
});
