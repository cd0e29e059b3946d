import type { FastifyRequest } from "fastify";
import { z } from "zod";
import type { Actor } from "../../platform/audit/index.ts";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import type { RateRule } from "../../platform/ratelimit/limiter.ts";
import { type AlertDeps, raiseAlert } from "./alerts.ts";
import { checkBackupCode, claimBackupCode, remainingBackupCodes } from "./backup-codes.ts";
import type { IdentityDeps } from "./deps.ts";
import { presentedKnownDevice } from "./devices.ts";
import { type BackoffTarget, backoffTargets, checkBackoff, recordFailure } from "./throttle.ts";
import { claimTotpStep, findTotpFactor, matchTotpCode } from "./totp.ts";

/**
 * The second factors a user types (promise A2): a code from their authenticator app, or one of their backup
 * codes. Proving one takes two steps, so that the slow part runs outside any transaction and the deciding
 * part inside the one that acts on it: checkCodeAnswer finds what the code is worth (Argon2id for a backup
 * code), then spendCodeProof spends it with a conditional update in the caller's transaction, which is how
 * a code is used once even when two requests race with it.
 */

/** Codes of either kind, across every route that takes one, per user: far too few to guess six digits. */
export const SECOND_FACTOR_PER_ACCOUNT: RateRule = { name: "second-factor", limit: 10, windowSeconds: 15 * 60 };
/**
 * The same, per known device of the user, in place of the above: someone who holds the password but not the
 * owner's browser spends only the account's allowance, never the one the owner's own browser proves codes with.
 */
export const SECOND_FACTOR_PER_DEVICE: RateRule = { name: "second-factor-device", limit: 10, windowSeconds: 15 * 60 };

export const totpCode = z.string().trim().max(16).describe("The six digits the authenticator app shows");
export const backupCode = z.string().trim().max(64).describe("One of the backup codes, dashes optional");

/** A typed second factor, as a request body (or part of one) carries it. */
export const codeAnswer = z
  .union([z.strictObject({ totpCode }), z.strictObject({ backupCode })])
  .meta({ id: "SecondFactorCode" });
export type CodeAnswer = z.infer<typeof codeAnswer>;

export type CodeMethod = "totp" | "backup-code";

/** What a right code is worth, until it is spent. */
export type CodeProof = { method: "totp"; step: number } | { method: "backup-code"; codeId: string };

/** Why a code was refused: wrong, or right but already used (a replay: someone else may hold it). */
export type CodeRefusal = "wrong-code" | "replayed";

export type CodeCheck = { ok: true; proof: CodeProof } | { ok: false; method: CodeMethod; reason: CodeRefusal };

export const methodOf = (answer: CodeAnswer): CodeMethod => ("totpCode" in answer ? "totp" : "backup-code");

/** Who attempts a second factor: the user, from a source address, in a browser that may be a known device. */
export interface SecondFactorAttempt {
  userId: string;
  address: string;
  /** The user's known device the browser presented, whose own window and backoff stand in for the account's. */
  deviceId?: string | undefined;
}

/** The attempt of a request: its source address, and the user's known device if the browser presented one. */
export async function secondFactorAttempt(
  deps: Pick<IdentityDeps, "db" | "config">,
  request: FastifyRequest,
  userId: string,
): Promise<SecondFactorAttempt> {
  const device = await presentedKnownDevice(deps, request, [userId]);
  return { userId, address: request.ip, deviceId: device?.id };
}

/**
 * Counts one attempt at a second factor, refusing (429, Retry-After) once the window of the account (or of its
 * known device) is full or while the growing backoff of the source address or of the account (or of its known
 * device) holds it back. Returns the backoff counters, for recordCodeRefused to count a failure and the success
 * to clear.
 */
export async function throttleSecondFactor(
  deps: Pick<IdentityDeps, "rateLimiter" | "db" | "clock" | "keyRing">,
  attempt: SecondFactorAttempt,
): Promise<BackoffTarget[]> {
  const { userId, deviceId } = attempt;
  const backoff = backoffTargets("second-factor", attempt.address, { key: userId, deviceId });
  await checkBackoff(deps, backoff);
  const decision =
    deviceId === undefined
      ? await deps.rateLimiter.consume({ kind: "account", id: userId }, SECOND_FACTOR_PER_ACCOUNT, { exact: true })
      : await deps.rateLimiter.consume({ kind: "token", id: deviceId }, SECOND_FACTOR_PER_DEVICE, { exact: true });
  if (!decision.allowed) {
    throw new HttpProblem("rate-limited", "too many attempts; try again later", {
      headers: { "retry-after": String(decision.retryAfter) },
    });
  }
  return backoff;
}

/**
 * A code from the user's confirmed authenticator app, for a step after the last one accepted. A code of a
 * step already used is told apart (a replay), so that it is audited as such.
 */
async function checkTotp(
  deps: Pick<IdentityDeps, "db" | "keyRing">,
  userId: string,
  code: string,
  now: Date,
): Promise<CodeCheck> {
  const factor = await deps.db.withPlatform((tx) => findTotpFactor(tx, deps.keyRing, userId));
  if (!factor?.confirmedAt) return { ok: false, method: "totp", reason: "wrong-code" };
  const step = await matchTotpCode(factor.secret, code, now, factor.lastUsedStep);
  if (step !== null) return { ok: true, proof: { method: "totp", step } };
  const replayed = factor.lastUsedStep !== null && (await matchTotpCode(factor.secret, code, now, null)) !== null;
  return { ok: false, method: "totp", reason: replayed ? "replayed" : "wrong-code" };
}

/** Checks a typed code (nothing is spent yet). */
export async function checkCodeAnswer(
  deps: Pick<IdentityDeps, "db" | "keyRing" | "passwords">,
  userId: string,
  answer: CodeAnswer,
  now: Date,
): Promise<CodeCheck> {
  if ("totpCode" in answer) return checkTotp(deps, userId, answer.totpCode, now);
  const codeId = await checkBackupCode(deps, userId, answer.backupCode);
  return codeId === null
    ? { ok: false, method: "backup-code", reason: "wrong-code" }
    : { ok: true, proof: { method: "backup-code", codeId } };
}

/** Spends a checked code in the caller's transaction; false when another request spent it first. */
export function spendCodeProof(tx: Tx, userId: string, proof: CodeProof, now: Date): Promise<boolean> {
  return proof.method === "totp"
    ? claimTotpStep(tx, userId, proof.step, now)
    : claimBackupCode(tx, userId, proof.codeId, now);
}

/** Where a code was asked for: finishing a sign-in, confirming it is you, resetting a password, enrolling. */
export type CodePurpose = "sign-in" | "step-up" | "password-reset" | "enrolment";

/**
 * Records a refused code on the user's platform chain, in a transaction of its own (the request is refused
 * and rolls back). The code itself is never recorded.
 */
export async function recordCodeRefused(
  deps: Pick<IdentityDeps, "db" | "audit" | "clock" | "keyRing">,
  input: {
    actor: Actor;
    userId: string;
    sessionId?: string;
    method: CodeMethod;
    purpose: CodePurpose;
    reason: CodeRefusal;
    requestId: string;
    /** The attempt's backoff counters (from throttleSecondFactor): the failure counts against each. */
    backoff: readonly BackoffTarget[];
  },
): Promise<void> {
  await deps.db.withPlatform(async (tx) => {
    await recordFailure(tx, deps, input.backoff, {
      requestId: input.requestId,
      actor: input.actor,
      userId: input.userId,
    });
    await deps.audit.record(tx, {
      tenantId: null,
      stream: "security",
      actor: input.actor,
      action: "auth.second-factor-failed",
      target: input.sessionId ? { type: "session", id: input.sessionId } : { type: "user", id: input.userId },
      subjects: [input.userId],
      details: { method: input.method, purpose: input.purpose, reason: input.reason },
      requestId: input.requestId,
    });
  });
}

/**
 * A backup code was spent (signing in, or with a password reset): audited with how many are left, and the user
 * alerted, since someone else may hold their codes.
 */
export async function backupCodeUsed(deps: AlertDeps, tx: Tx, userId: string, requestId: string): Promise<void> {
  const remaining = await remainingBackupCodes(tx, userId);
  await deps.audit.record(tx, {
    tenantId: null,
    stream: "security",
    actor: { kind: "user", id: userId },
    action: "auth.backup-code-used",
    target: { type: "user", id: userId },
    subjects: [userId],
    details: { remaining },
    requestId,
  });
  await raiseAlert(deps, tx, { kind: "backup-code-used", userId, details: { remaining }, requestId });
}
