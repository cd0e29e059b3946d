import type { Clock } from "../clock.ts";
import type { KeyRing } from "../crypto/key-ring.ts";
import type { Database, Tx } from "../db/index.ts";
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
  status: "active" | "suspended";
  createdAt: Date;
}

/** What creating a tenant needs of the key ring (crypto/key-ring.ts): the tenant's key, in its transaction. */
export type TenantKeys = Pick<KeyRing, "createTenantKey">;

/**
 * Creates a tenant in the platform registry, its settings row and its key inside the new tenant's
 * context: a tenant never exists without the key its data will be encrypted under.
 */
export async function createTenant(db: Database, clock: Clock, input: NewTenant, keys: TenantKeys): Promise<Tenant> {
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
    return { id, slug: tenant.slug, name: tenant.name, status: tenant.status, createdAt: tenant.created_at };
  });
}

export async function findTenant(tx: Tx, id: string): Promise<Tenant | undefined> {
  const row = await tx.selectFrom("tenants").selectAll().where("id", "=", id).executeTakeFirst();
  return row && { id: row.id, slug: row.slug, name: row.name, status: row.status, createdAt: row.created_at };
}
