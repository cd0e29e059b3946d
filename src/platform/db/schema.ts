import type { ColumnType, Generated } from "kysely";

/**
 * Kysely types for the kernel's tables. Modules add theirs by declaration merging
 * (`declare module "../../platform/db/schema.ts" { interface Tables { … } }`).
 */
export interface Tables {
  tenants: TenantsTable;
  tenant_settings: TenantSettingsTable;
  tenant_features: TenantFeaturesTable;
  rate_limit_buckets: RateLimitBucketsTable;
  schema_migrations: SchemaMigrationsTable;
}

export interface TenantsTable {
  id: string;
  slug: string;
  name: string;
  status: "active" | "suspended";
  created_at: ColumnType<Date, Date | string, never>;
}

export interface TenantSettingsTable {
  tenant_id: string;
  time_zone: string;
  locale: string;
  updated_at: ColumnType<Date, Date | string, Date | string>;
}

export interface TenantFeaturesTable {
  tenant_id: string;
  id: string;
  feature: string;
  enabled: boolean;
  changed_at: ColumnType<Date, Date | string, Date | string>;
  /** The membership that last changed the switch; null for the system. */
  changed_by: string | null;
}

export interface RateLimitBucketsTable {
  key_hash: Buffer;
  window_start: ColumnType<Date, Date | string, Date | string>;
  hits: number;
  expires_at: ColumnType<Date, Date | string, Date | string>;
}

export interface SchemaMigrationsTable {
  version: number;
  name: string;
  checksum: string;
  applied_at: Generated<Date>;
}
