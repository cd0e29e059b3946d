import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { hasSecondFactor } from "./second-factors.ts";
import { loadPolicy } from "./security-policies.ts";
import { actingIn, memberTenantsOf } from "./tenant-visits.ts";
import { lockUser } from "./users.ts";

/**
 * A user removing a second factor (the authenticator app, a passkey) must keep one while a tenant they are a
 * member of requires MFA (promise A4): with none left, their sessions there would be refused until they enrol
 * one again, a confinement they would only discover on their next request. The operator's factor reset
 * (factor-resets.ts) removes them regardless: it exists for users who lost them.
 */

/**
 * Removes one of the user's second factors with `remove`, in the caller's transaction, then refuses (409
 * last-second-factor, which rolls the removal back) when it took away the user's last one and one of their
 * tenants requires MFA. `tookFactor` tells from what `remove` answered whether a factor went (nothing found, or
 * an enrolment never confirmed, is none).
 *
 * The user's row is locked first, so that two removals racing (the app and the last passkey) cannot each count
 * the other's factor as remaining: the second waits for the first, then sees it gone.
 */
export async function removeSecondFactor<T>(
  tx: Tx,
  userId: string,
  remove: () => Promise<T>,
  tookFactor: (removed: T) => boolean,
): Promise<T> {
  await lockUser(tx, userId);
  const removed = await remove();
  if (tookFactor(removed) && !(await hasSecondFactor(tx, userId))) await refuseWhereMfaRequired(tx, userId);
  return removed;
}

/**
 * Refuses while one of the user's tenants requires MFA. The detail names those tenants: the caller is the member
 * themselves, who sees the same names in their own list of tenants, and knowing which organization asks is what
 * lets them decide (or ask its admins).
 */
async function refuseWhereMfaRequired(tx: Tx, userId: string): Promise<void> {
  const requiring: string[] = [];
  for (const tenant of await memberTenantsOf(tx, userId)) {
    const policy = await actingIn(tx, tenant.tenantId, () => loadPolicy(tx, tenant.tenantId));
    if (policy.requireMfa) requiring.push(tenant.name);
  }
  if (requiring.length === 0) return;
  const names = requiring.sort((a, b) => a.localeCompare(b)).join(", ");
  throw new HttpProblem(
    "last-second-factor",
    `${requiring.length} of your organizations ${requiring.length === 1 ? "requires" : "require"} a second factor ` +
      `(${names}): add another one before removing this one, or your sessions there will be refused`,
  );
}
