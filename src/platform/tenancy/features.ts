import type { Clock } from "../clock.ts";
import type { Tx } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";

/** Whether a tenant has switched a feature on. Features are off until an admin enables them. */
export async function isFeatureEnabled(tx: Tx, tenantId: string, feature: string): Promise<boolean> {
  const row = await tx
    .selectFrom("tenant_features")
    .select("enabled")
    .where("tenant_id", "=", tenantId)
    .where("feature", "=", feature)
    .executeTakeFirst();
  return row?.enabled ?? false;
}

/** Switches a feature for the tenant of `tx`, recording who changed it and when. */
export async function setFeature(
  tx: Tx,
  clock: Clock,
  change: { tenantId: string; feature: string; enabled: boolean; changedBy: string | null },
): Promise<void> {
  const now = clock.now();
  await tx
    .insertInto("tenant_features")
    .values({
      tenant_id: change.tenantId,
      id: uuidv7(now.getTime()),
      feature: change.feature,
      enabled: change.enabled,
      changed_at: now,
      changed_by: change.changedBy,
    })
    .onConflict((oc) =>
      oc.columns(["tenant_id", "feature"]).doUpdateSet({
        enabled: change.enabled,
        changed_at: now,
        changed_by: change.changedBy,
      }),
    )
    .execute();
}
