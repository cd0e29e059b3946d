import { z } from "zod";
import { type Actor, type NewEvent, SYSTEM_ACTOR } from "../../platform/audit/index.ts";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute } from "../../platform/http/routes.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { Cadence, Jobs } from "../../platform/jobs/index.ts";
import { factorResetRequested, factorsReset } from "./account-mail.ts";
import { link, mailResetLink, mailUser, retireTokens } from "./accounts.ts";
import { deleteBackupCodes } from "./backup-codes.ts";
import type { IdentityDeps } from "./deps.ts";
import { isSessionPrincipal, revokeUserSessions } from "./sessions.ts";
import { deleteTotpFactor } from "./totp.ts";
import { emailIndexOf, findUserById, findVerifiedUserByEmail, lockUser, userEmail } from "./users.ts";

/**
 * Resetting a user's lost sign-in factors (issue 5, item 2): whoever runs the platform asks for it on the
 * command line (`charter account reset-factors <email>`), for someone who lost the factors a mailed reset
 * link alone cannot replace (a second factor: an authenticator app, backup codes, passkeys). Because
 * the command needs no proof from the account's owner, it never takes effect at once: the owner is mailed
 * when it is asked for and has FACTOR_RESET_DELAY to sign in and cancel it. Only when it falls due do the
 * password and every second factor stop working (whoever holds them can no longer use them), every session
 * end, and the mailbox get a link to choose a new password.
 *
 * The audit actor of the request is the system, with `details.via = "cli"`: the command is run by whoever
 * holds the machine and the master key, not by an operator account that could be named (the operator's
 * sessions have no route to users' factors, by design).
 */

/** What resets need: the command line builds only these when it runs without the server. */
export type FactorResetDeps = Pick<IdentityDeps, "db" | "clock" | "keyRing" | "audit" | "mailer" | "config">;

/**
 * How long a requested reset waits before it takes effect: 72 hours, long enough for the owner to read the
 * notice after a weekend away and cancel it, short enough for someone really locked out.
 */
export const FACTOR_RESET_DELAY = 72 * 3_600_000;

/** The job that applies due resets, and how often it runs: a reset takes effect at most this late. */
export const FACTOR_RESET_JOB = "identity.factor-resets";
export const FACTOR_RESET_CADENCE = { kind: "every", minutes: 15 } as const satisfies Cadence;

/** The account page, where a signed-in user cancels a pending reset. */
const ACCOUNT_PAGE = "/account";

/** A refusal of the command-line request, printed as it is (no account named, nothing written). */
export class FactorResetError extends Error {
  override name = "FactorResetError";
}

function resetEvent(
  action: `auth.${string}`,
  actor: Actor,
  userId: string,
  details: NewEvent["details"],
  requestId?: string,
): NewEvent {
  return {
    tenantId: null,
    stream: "security",
    actor,
    action,
    target: { type: "user", id: userId },
    details,
    requestId: requestId ?? null,
  };
}

const pending = (tx: Tx, userId: string) =>
  tx
    .selectFrom("factor_resets")
    .selectAll()
    .where("user_id", "=", userId)
    .where("cancelled_at", "is", null)
    .where("completed_at", "is", null)
    .executeTakeFirst();

/**
 * Asks for a reset of the factors of the verified account holding `email`, due FACTOR_RESET_DELAY from now,
 * and tells its owner at once. Refused (FactorResetError, nothing written) when no verified account holds
 * the address or a reset is already pending. Resolves to the time it takes effect.
 */
export async function requestFactorReset(deps: FactorResetDeps, email: string, requestId?: string): Promise<Date> {
  const indexed = emailIndexOf(deps.keyRing, email);
  return deps.db.withPlatform(async (tx) => {
    const now = deps.clock.now();
    const found = await findVerifiedUserByEmail(tx, indexed.index);
    if (!found) throw new FactorResetError("no verified account has this address");
    await lockUser(tx, found.id);
    const existing = await pending(tx, found.id);
    if (existing) {
      throw new FactorResetError(
        `a reset of this account's factors is already pending: it takes effect at ${existing.due_at.toISOString()}`,
      );
    }
    const dueAt = new Date(now.getTime() + FACTOR_RESET_DELAY);
    await tx
      .insertInto("factor_resets")
      .values({ id: uuidv7(now.getTime()), user_id: found.id, requested_at: now, due_at: dueAt })
      .execute();
    const to = await userEmail(tx, deps.keyRing, found);
    await mailUser(tx, deps, found, to, factorResetRequested.name, link(deps, ACCOUNT_PAGE), {
      at: dueAt.toISOString(),
    });
    await deps.audit.record(
      tx,
      resetEvent(
        "auth.factor-reset-requested",
        SYSTEM_ACTOR,
        found.id,
        { via: "cli", dueAt: dueAt.toISOString() },
        requestId,
      ),
    );
    return dueAt;
  });
}

/** The signed-in user cancels their pending reset; false when none is pending. Nothing is mailed. */
export async function cancelFactorReset(deps: FactorResetDeps, userId: string, requestId?: string): Promise<boolean> {
  return deps.db.withPlatform(async (tx) => {
    await lockUser(tx, userId);
    const reset = await pending(tx, userId);
    if (!reset) return false;
    await tx.updateTable("factor_resets").set({ cancelled_at: deps.clock.now() }).where("id", "=", reset.id).execute();
    await deps.audit.record(
      tx,
      resetEvent("auth.factor-reset-cancelled", { kind: "user", id: userId }, userId, {}, requestId),
    );
    return true;
  });
}

/** Deletes the user's authenticator app, backup codes and passkeys; names the kinds of factor there were. */
async function deleteSecondFactors(tx: Tx, userId: string): Promise<string[]> {
  const totp = await deleteTotpFactor(tx, userId);
  const backupCodes = await deleteBackupCodes(tx, userId);
  const passkeys = await tx.deleteFrom("passkeys").where("user_id", "=", userId).executeTakeFirst();
  return [
    ...(totp?.confirmed ? ["totp"] : []),
    ...(backupCodes > 0 ? ["backup-codes"] : []),
    ...(Number(passkeys.numDeletedRows) > 0 ? ["passkeys"] : []),
  ];
}

/**
 * Applies every pending reset that is due, each in a transaction of its own: the password stops working,
 * every session ends with no grace, the mailbox gets a 30-minute link to choose a new password (and email
 * changes under way are dropped: whoever holds the lost password may have started them). Resolves to how
 * many were applied.
 */
export async function applyDueFactorResets(deps: FactorResetDeps): Promise<number> {
  const due = await deps.db.withPlatform((tx) =>
    tx
      .selectFrom("factor_resets")
      .select(["id", "user_id"])
      .where("due_at", "<=", deps.clock.now())
      .where("cancelled_at", "is", null)
      .where("completed_at", "is", null)
      .orderBy("due_at")
      .execute(),
  );
  let applied = 0;
  for (const { id, user_id: userId } of due) {
    const done = await deps.db.withPlatform(async (tx) => {
      const now = deps.clock.now();
      await lockUser(tx, userId);
      // Cancelled, or applied by another sweep, since it was listed.
      const reset = await pending(tx, userId);
      if (reset?.id !== id) return false;
      const user = await findUserById(tx, userId);
      if (!user) return false;
      // The second factors go too, so that the reset link alone gets the owner back in.
      const secondFactors = await deleteSecondFactors(tx, userId);
      await tx
        .updateTable("users")
        .set({ password_hash: null, password_changed_at: now, updated_at: now })
        .where("id", "=", userId)
        .execute();
      await retireTokens(tx, userId, ["change-email"], now);
      const revoked = await revokeUserSessions(tx, userId, "factors-reset", now);
      await mailResetLink(tx, deps, user, await userEmail(tx, deps.keyRing, user), factorsReset.name, now);
      await tx.updateTable("factor_resets").set({ completed_at: now }).where("id", "=", id).execute();
      await deps.audit.record(
        tx,
        resetEvent("auth.factors-reset", SYSTEM_ACTOR, userId, {
          factors: ["password", ...secondFactors],
          sessionsRevoked: revoked,
        }),
      );
      return true;
    });
    if (done) applied += 1;
  }
  return applied;
}

/** Defines the job that applies due resets and its schedule on the queue, before it starts. */
export function scheduleFactorResets(jobs: Jobs, deps: FactorResetDeps): void {
  jobs.define(FACTOR_RESET_JOB, async () => {
    await applyDueFactorResets(deps);
  });
  jobs.schedule(FACTOR_RESET_JOB, FACTOR_RESET_CADENCE);
}

/** The route a signed-in user cancels a pending reset of their factors with. */
export function factorResetRoutes(deps: IdentityDeps): AnyRoute[] {
  return [
    defineRoute({
      method: "DELETE",
      url: "/api/v1/me/factor-reset",
      operationId: "cancelFactorReset",
      summary: "Cancel the pending reset of the own sign-in factors",
      tags: ["accounts"],
      permission: { kind: "authenticated" },
      response: { 204: z.null(), 403: problemSchema, 404: problemSchema },
      handler: async (request, reply) => {
        const principal = request.principal;
        if (!isSessionPrincipal(principal)) {
          throw new HttpProblem("forbidden", "only a signed-in person has an account");
        }
        if (!(await cancelFactorReset(deps, principal.userId, request.requestId))) {
          throw new HttpProblem("not-found", "no reset of your sign-in factors is pending");
        }
        return reply.code(204).send();
      },
    }),
  ];
}
