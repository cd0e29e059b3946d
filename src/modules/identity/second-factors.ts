import { sql } from "kysely";
import type { Tx } from "../../platform/db/index.ts";

/**
 * Whether a user has a second factor (promise A2): a confirmed authenticator app or a passkey. A password
 * sign-in of such a user opens only a half-session until one of them is proven; backup codes come with the
 * authenticator app and are no factor of their own.
 */
export async function hasSecondFactor(tx: Tx, userId: string): Promise<boolean> {
  const row = await sql<{ enrolled: boolean }>`
    SELECT EXISTS (SELECT 1 FROM totp_factors WHERE user_id = ${userId} AND confirmed_at IS NOT NULL)
        OR EXISTS (SELECT 1 FROM passkeys WHERE user_id = ${userId}) AS enrolled`.execute(tx);
  return row.rows[0]?.enrolled === true;
}
