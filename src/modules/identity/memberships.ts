import type { Tx } from "../../platform/db/index.ts";
import type { MembershipRole } from "./roles.ts";

export interface ActiveMembership {
  id: string;
  userId: string;
  role: MembershipRole;
}

/** The user's live membership of the tenant of `tx`, if any (the access check of every tenant request). */
export async function activeMembership(
  tx: Tx,
  tenantId: string,
  userId: string,
): Promise<ActiveMembership | undefined> {
  const row = await tx
    .selectFrom("memberships")
    .select(["id", "user_id", "role"])
    .where("tenant_id", "=", tenantId)
    .where("user_id", "=", userId)
    .where("status", "=", "active")
    .executeTakeFirst();
  return row && { id: row.id, userId: row.user_id, role: row.role };
}
