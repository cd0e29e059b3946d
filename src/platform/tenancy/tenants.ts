import type { Audit } from "../audit/audit.ts";
import { type Actor, SYSTEM_ACTOR } from "../audit/event.ts";
import type { Clock } from "../clock.ts";
import type { KeyRing } from "../crypto/key-ring.ts";
import type { Database, Tx } from "../db/index.ts";
import type { TenantStatus } from "../db/schema.ts";
import { uuidv7 } from "../ids.ts";

export interface NewTenant {
  slug: string;
  name: string;
  timeZone?: string;
  locale?: string;
}

export interface Tenant {
  id: string;
  slug: string;
  name: string;
  status: TenantStatus;
  createdAt: Date;
}

/** What creating a tenant needs of the key ring (crypto/key-ring.ts): the tenant's key, in its transaction. */
export type TenantKeys = Pick<KeyRing, "createTenantKey">;

/** What the kernel's writers need of the audit log (audit/audit.ts): an append in their transaction. */
export type AuditRecorder = Pick<Audit, "record">;

/**
 * Creates a tenant in the platform registry, its settings row and its key inside the new tenant's
 * context: a tenant never exists without the key its data will be encrypted under. The first event of the
 * tenant's changes chain, tenant.created, is written in the same transaction. `then` runs last in that
 * transaction, so what must exist with the tenant (its first owner) commits or rolls back with it.
 */
export async function createTenant(
  db: Database,
  clock: Clock,
  input: NewTenant,
  keys: TenantKeys,
  audit: AuditRecorder,
  actor: Actor = SYSTEM_ACTOR,
  then?: (tx: Tx, tenant: Tenant) => Promise<void>,
): Promise<Tenant> {
  const id = uuidv7(clock.now().getTime());
  const now = clock.now();
  // One tenant transaction holds both rows: the registry row joins it through withPlatform.
  return db.withTenant({ tenantId: id }, async (tx) => {
    const tenant = await db.withPlatform((ptx) =>
      ptx
        .insertInto("tenants")
        .values({ id, slug: input.slug, name: input.name, status: "active", created_at: now })
        .returningAll()
        .executeTakeFirstOrThrow(),
    );
    await tx
      .insertInto("tenant_settings")
      .values({ tenant_id: id, time_zone: input.timeZone ?? "UTC", locale: input.locale ?? "en", updated_at: now })
      .execute();
    await keys.createTenantKey(tx, id);
    await audit.record(tx, {
      tenantId: id,
      stream: "changes",
      actor,
      action: "tenant.created",
      target: { type: "tenant", id },
      // The slug and name can name a person (a sole trader): the registry row holds them, the event does not.
      details: { timeZone: input.timeZone ?? "UTC", locale: input.locale ?? "en" },
    });
    const created = { id, slug: tenant.slug, name: tenant.name, status: tenant.status, createdAt: tenant.created_at };
    await then?.(tx, created);
    return created;
  });
}

export async function findTenant(tx: Tx, id: string): Promise<Tenant | undefined> {
  const row = await tx.selectFrom("tenants").selectAll().where("id", "=", id).executeTakeFirst();
  return row && { id: row.id, slug: row.slug, name: row.name, status: row.status, createdAt: row.created_at };
}

export interface TenantSettings {
  timeZone: string;
  locale: string;
  guestSharing: boolean;
}

/** The settings of the tenant of `tx`. */
export async function tenantSettings(tx: Tx, tenantId: string): Promise<TenantSettings | undefined> {
  const row = await tx
    .selectFrom("tenant_settings")
    .select(["time_zone", "locale", "guest_sharing"])
    .where("tenant_id", "=", tenantId)
    .executeTakeFirst();
  return row && { timeZone: row.time_zone, locale: row.locale, guestSharing: row.guest_sharing };
}

export interface SettingsChange extends Partial<TenantSettings> {
  tenantId: string;
  actor: Actor;
  requestId?: string | null;
}

/**
 * Changes the settings of the tenant of `tx` and records tenant.settings-changed with the old and new
 * values (settings hold nothing personal) in the same transaction. Fields that keep their value are not
 * listed; a change that changes nothing records nothing.
 */
export async function changeTenantSettings(
  tx: Tx,
  clock: Clock,
  audit: AuditRecorder,
  change: SettingsChange,
): Promise<void> {
  const current = await tx
    .selectFrom("tenant_settings")
    .select(["time_zone", "locale", "guest_sharing"])
    .where("tenant_id", "=", change.tenantId)
    .forUpdate()
    .executeTakeFirst();
  if (!current) throw new TypeError("no settings for this tenant in this transaction");
  const before: TenantSettings = {
    timeZone: current.time_zone,
    locale: current.locale,
    guestSharing: current.guest_sharing,
  };
  const after: TenantSettings = {
    timeZone: change.timeZone ?? before.timeZone,
    locale: change.locale ?? before.locale,
    guestSharing: change.guestSharing ?? before.guestSharing,
  };
  const fields = (["timeZone", "locale", "guestSharing"] as const).filter((field) => before[field] !== after[field]);
  if (fields.length === 0) return;
  await tx
    .updateTable("tenant_settings")
    .set({
      time_zone: after.timeZone,
      locale: after.locale,
      guest_sharing: after.guestSharing,
      updated_at: clock.now(),
    })
    .where("tenant_id", "=", change.tenantId)
    .execute();
  await audit.record(tx, {
    tenantId: change.tenantId,
    stream: "changes",
    actor: change.actor,
    action: "tenant.settings-changed",
    target: { type: "tenant", id: change.tenantId },
    details: {
      fields: [...fields],
      from: Object.fromEntries(fields.map((f) => [f, before[f]])),
      to: Object.fromEntries(fields.map((f) => [f, after[f]])),
    },
    requestId: change.requestId ?? null,
  });
}
