import { sql } from "kysely";
import type { Tx } from "../../platform/db/index.ts";

/**
 * Ends every live session of a user at once, with no grace for tokens in flight (password reset, an admin
 * ending a member's sessions, sign out everywhere). `except` keeps one session (the caller's own, when the
 * user changes their password). Returns how many sessions ended.
 */
export async function revokeUserSessions(
  tx: Tx,
  userId: string,
  reason: string,
  now: Date,
  options: { except?: string } = {},
): Promise<number> {
  let query = tx
    .updateTable("sessions")
    .set({ revoked_at: now, revoke_reason: reason })
    .where("user_id", "=", userId)
    .where("revoked_at", "is", null);
  if (options.except) query = query.where("id", "!=", options.except);
  const result = await query.executeTakeFirst();
  return Number(result.numUpdatedRows);
}

/**
 * A change of the user's privileges (a role changed, a tenant suspended or reinstated): each of their
 * sessions gets a new token on its next request, so a token captured before the change stops working soon.
 */
export async function bumpPrivilegeEpoch(tx: Tx, userId: string): Promise<void> {
  await tx
    .updateTable("users")
    .set({ privilege_epoch: sql<number>`privilege_epoch + 1` })
    .where("id", "=", userId)
    .execute();
}
