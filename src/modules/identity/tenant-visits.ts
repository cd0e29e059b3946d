import { sql } from "kysely";
import type { Tx } from "../../platform/db/index.ts";

/**
 * Reaching each of a user's tenants from one transaction of the platform's, for what an account-wide change
 * must do or check in every tenant the user is in (alerts.ts stores an alert about the account in each; a
 * second factor is not removed while one of them requires MFA: factor-removal.ts).
 */

/** A tenant the user is a live member of. */
export interface MemberTenant {
  tenantId: string;
  name: string;
  membershipId: string;
}

/** The user's live memberships in tenants that are not deleted, from the platform's (user, tenant) index. */
export async function memberTenantsOf(tx: Tx, userId: string): Promise<MemberTenant[]> {
  const rows = await tx
    .selectFrom("user_tenants as ut")
    .innerJoin("tenants as t", "t.id", "ut.member_of")
    .select(["ut.member_of", "ut.membership_id", "t.name"])
    .where("ut.user_id", "=", userId)
    .where("t.status", "!=", "deleted")
    .orderBy("ut.member_of")
    .execute();
  return rows.map((row) => ({ tenantId: row.member_of, name: row.name, membershipId: row.membership_id }));
}

/**
 * Runs `fn` with the caller's transaction acting in `tenantId` (row-level security then shows and accepts that
 * tenant's rows only), then puts back the tenant the transaction acted in before: one transaction visits the
 * tenants one after another, never two at once. On an error the transaction is lost anyway, so nothing is put
 * back.
 */
export async function actingIn<T>(tx: Tx, tenantId: string, fn: () => Promise<T>): Promise<T> {
  const { rows } = await sql<{ previous: string | null }>`
    SELECT current_setting('app.tenant_id', true) AS previous`.execute(tx);
  await sql`SELECT set_config('app.tenant_id', ${tenantId}, true)`.execute(tx);
  const result = await fn();
  await sql`SELECT set_config('app.tenant_id', ${rows[0]?.previous ?? ""}, true)`.execute(tx);
  return result;
}
