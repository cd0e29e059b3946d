import type { Actor } from "../audit/event.ts";
import type { Clock } from "../clock.ts";
import type { Tx } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import type { AuditRecorder } from "./tenants.ts";

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

/**
 * Switches a feature for the tenant of `tx`, recording who changed it and when, and records
 * tenant.feature-changed (with the previous state) in the same transaction. `changedBy` is the member who
 * switched it (null: the system); `actor` defaults to that member as a user.
 */
export async function setFeature(
  tx: Tx,
  clock: Clock,
  change: { tenantId: string; feature: string; enabled: boolean; changedBy: string | null; actor?: Actor },
  audit: AuditRecorder,
): Promise<void> {
  const now = clock.now();
  const previous = await isFeatureEnabled(tx, change.tenantId, change.feature);
  const row = await tx
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
    .returning("id")
    .executeTakeFirstOrThrow();
  const actor: Actor =
    change.actor ?? (change.changedBy === null ? { kind: "system", id: null } : { kind: "user", id: change.changedBy });
  await audit.record(tx, {
    tenantId: change.tenantId,
    stream: "changes",
    actor,
    action: "tenant.feature-changed",
    target: { type: "tenant-feature", id: row.id },
    details: { feature: change.feature, enabled: change.enabled, previous },
  });
}
