import { createHmac } from "node:crypto";
import { sql } from "kysely";
import type { Actor } from "../../platform/audit/index.ts";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { addressBucket } from "../../platform/ratelimit/limiter.ts";
import type { IdentityDeps } from "./deps.ts";

/**
 * Growing backoff on failed authentication (promise A6): sign-in, second factor, password reset and
 * verification. Each attempt is held back by the counter of its source address (an IPv6 /64 counts as one,
 * as Fastify resolved it through the trusted proxies) and by the counter of its account, or, when it comes
 * from a browser that signed in to that account before, by that device's own counter instead: an attacker
 * who fails against an account delays their own attempts, never the owner's browser.
 *
 * A counter lets its first failures through free, then blocks every attempt (429 with Retry-After, before
 * anything is checked) for a time that doubles with each further failure, up to a cap; a success clears the
 * account's and device's counters (never the address's: one's own account must not clear a guesser's record),
 * and a quiet spell forgets any counter. The counters live in the database (auth_backoff), so a restart or
 * another instance sees them; they complement the fixed windows of the rate limiter, which bound the attempts
 * any one window lets through.
 */

export type BackoffFlow = "sign-in" | "second-factor" | "password-reset" | "verification";
export type BackoffScope = "address" | "account" | "device";

export interface BackoffPolicy {
  /** Failures let through before the first delay. */
  freeFailures: number;
  /** The delay after the first failure beyond the free ones; each further failure doubles it. */
  baseSeconds: number;
  maxSeconds: number;
  /** A counter with no failure for this long starts again from zero. */
  forgetAfterSeconds: number;
}

/**
 * The free failures match the rate limiter's windows (sign-in: 30 per address, 10 per account in 15 minutes),
 * so the backoff bites across windows: past them, an account gets about one guess per quarter of an hour.
 */
export const BACKOFF_POLICIES: Readonly<Record<BackoffScope, BackoffPolicy>> = {
  address: { freeFailures: 30, baseSeconds: 1, maxSeconds: 15 * 60, forgetAfterSeconds: 60 * 60 },
  account: { freeFailures: 10, baseSeconds: 1, maxSeconds: 15 * 60, forgetAfterSeconds: 24 * 60 * 60 },
  device: { freeFailures: 10, baseSeconds: 1, maxSeconds: 15 * 60, forgetAfterSeconds: 24 * 60 * 60 },
};

/** One counter an attempt is held back by. `key`: the address, the account's key, or the known device's id. */
export interface BackoffTarget {
  flow: BackoffFlow;
  scope: BackoffScope;
  key: string;
}

/**
 * The counters of an attempt: its source address, and the account's (its key: a user id, or for a sign-in the
 * address's blind index, which exists whether or not an account holds it) unless `deviceId` names the known
 * device of that account the browser presented, whose own counter then stands in for the account's.
 */
export function backoffTargets(
  flow: BackoffFlow,
  address: string,
  account: { key: string; deviceId?: string | undefined },
): BackoffTarget[] {
  return [
    { flow, scope: "address", key: addressBucket(address) },
    account.deviceId === undefined
      ? { flow, scope: "account", key: account.key }
      : { flow, scope: "device", key: account.deviceId },
  ];
}

/**
 * The counter of a redemption of an emailed link (password reset, address verification): its source address
 * only, since a link that does not work names no account. Links hold 256 random bits, so this holds back
 * scanning, not guessing.
 */
export function linkBackoffTargets(flow: "password-reset" | "verification", address: string): BackoffTarget[] {
  return [{ flow, scope: "address", key: addressBucket(address) }];
}

/** The seconds the n-th failure (counted from 1) blocks for under `policy`: 0 while it is free. */
export function backoffSeconds(policy: BackoffPolicy, failures: number): number {
  const beyond = failures - policy.freeFailures;
  if (beyond <= 0) return 0;
  return Math.min(policy.maxSeconds, policy.baseSeconds * 2 ** Math.min(beyond - 1, 30));
}

type HashDeps = Pick<IdentityDeps, "keyRing">;

/**
 * The counter's key: an HMAC under the platform's blind-index key (the one key at hand that never leaves the
 * process), its input prefixed so it never meets a blind index's.
 */
function keyHash(deps: HashDeps, target: BackoffTarget): Buffer {
  return createHmac("sha256", deps.keyRing.blindIndexKey("platform"))
    .update(`charter/auth-backoff\u0000${target.flow}\u0000${target.scope}\u0000${target.key}`)
    .digest();
}

/** Seconds until every counter of `targets` lets attempts through again; 0 when none blocks. */
export async function backoffRemaining(
  tx: Tx,
  deps: HashDeps & Pick<IdentityDeps, "clock">,
  targets: readonly BackoffTarget[],
) {
  const now = deps.clock.now();
  const rows = await tx
    .selectFrom("auth_backoff")
    .select("blocked_until")
    .where(
      "key_hash",
      "in",
      targets.map((target) => keyHash(deps, target)),
    )
    .where("blocked_until", ">", now)
    .execute();
  const until = Math.max(0, ...rows.map((row) => row.blocked_until?.getTime() ?? 0));
  return until === 0 ? 0 : Math.max(1, Math.ceil((until - now.getTime()) / 1000));
}

const heldBack = (seconds: number) =>
  new HttpProblem("rate-limited", "too many failed attempts; try again later", {
    headers: { "retry-after": String(seconds) },
  });

/** Refuses the attempt (429 with Retry-After) while any of its counters blocks; reads in a short transaction. */
export async function checkBackoff(
  deps: Pick<IdentityDeps, "db" | "clock" | "keyRing">,
  targets: readonly BackoffTarget[],
): Promise<void> {
  const seconds = await deps.db.withPlatform((tx) => backoffRemaining(tx, deps, targets));
  if (seconds > 0) throw heldBack(seconds);
}

export interface FailureContext {
  requestId: string;
  /** Who failed: anonymous for a sign-in, the user for a second factor on their half-session. */
  actor: Actor;
  /** The account attempted, when one is known (recorded on the lockout's audit event). */
  userId: string | null;
}

/**
 * Counts a failure against each counter, in the caller's transaction (the short one that records the failure
 * after the attempt's own rolled back). A failure that blocks a counter records auth.locked-out. Returns the
 * longest block it set, in seconds (0 when every counter still lets failures through free).
 */
export async function recordFailure(
  tx: Tx,
  deps: Pick<IdentityDeps, "clock" | "keyRing" | "audit">,
  targets: readonly BackoffTarget[],
  context: FailureContext,
): Promise<number> {
  const now = deps.clock.now();
  // Forgotten counters go a few at a time with the failures that outlive them: no sweep job needed.
  await sql`
    DELETE FROM auth_backoff WHERE key_hash IN (
      SELECT key_hash FROM auth_backoff WHERE expires_at < ${now} ORDER BY expires_at LIMIT 100)`.execute(tx);
  let longest = 0;
  for (const target of targets) {
    const policy = BACKOFF_POLICIES[target.scope];
    const expiresAt = new Date(now.getTime() + policy.forgetAfterSeconds * 1000);
    const { rows } = await sql<{ failures: number }>`
      INSERT INTO auth_backoff AS b (key_hash, failures, last_failure_at, expires_at)
      VALUES (${keyHash(deps, target)}, 1, ${now}, ${expiresAt})
      ON CONFLICT (key_hash) DO UPDATE SET
        failures = CASE WHEN b.expires_at > ${now} THEN b.failures + 1 ELSE 1 END,
        blocked_until = CASE WHEN b.expires_at > ${now} THEN b.blocked_until END,
        last_failure_at = ${now},
        expires_at = ${expiresAt}
      RETURNING b.failures`.execute(tx);
    const failures = Number(rows[0]?.failures ?? 1);
    const seconds = backoffSeconds(policy, failures);
    if (seconds === 0) continue;
    longest = Math.max(longest, seconds);
    await tx
      .updateTable("auth_backoff")
      .set({ blocked_until: new Date(now.getTime() + seconds * 1000) })
      .where("key_hash", "=", keyHash(deps, target))
      .execute();
    await deps.audit.record(tx, {
      tenantId: null,
      stream: "security",
      actor: context.actor,
      action: "auth.locked-out",
      target: { type: "user", id: context.userId },
      subjects: context.userId ? [context.userId] : [],
      details: { flow: target.flow, scope: target.scope, failures, seconds },
      requestId: context.requestId,
    });
  }
  return longest;
}

/**
 * After a success, in its transaction: the account's and the device's counters start again. The address's
 * stays: a guesser who also holds an account of their own must not clear their record by signing in to it.
 */
export async function recordSuccess(tx: Tx, deps: HashDeps, targets: readonly BackoffTarget[]): Promise<void> {
  const cleared = targets.filter((target) => target.scope !== "address");
  if (cleared.length === 0) return;
  await tx
    .deleteFrom("auth_backoff")
    .where(
      "key_hash",
      "in",
      cleared.map((target) => keyHash(deps, target)),
    )
    .execute();
}

/**
 * For a failure found inside the attempt's own transaction, which then rolls back: counts it in the short
 * transaction the database runs after the rollback (db.recordOnFailure). Call it right before throwing.
 */
export function recordFailureAfterRollback(
  deps: Pick<IdentityDeps, "db" | "clock" | "keyRing" | "audit">,
  targets: readonly BackoffTarget[],
  context: FailureContext,
): void {
  deps.db.recordOnFailure(async (tx) => {
    await recordFailure(tx, deps, targets, context);
  });
}
