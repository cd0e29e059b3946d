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
  legal_holds: LegalHoldsTable;
}

/** A tenant's lifecycle (migration 0009): cancelled and pending-deletion are read-only with export. */
export const TENANT_STATUSES = ["active", "suspended", "cancelled", "pending-deletion", "deleted"] as const;
export type TenantStatus = (typeof TENANT_STATUSES)[number];

export interface TenantsTable {
  id: string;
  slug: string;
  name: string;
  status: TenantStatus;
  created_at: ColumnType<Date, Date | string, never>;
}

export interface TenantSettingsTable {
  tenant_id: string;
  time_zone: string;
  locale: string;
  /** Whether guests (external collaborators) may see records shared with them (migration 0009). */
  guest_sharing: ColumnType<boolean, boolean | undefined, boolean>;
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

export interface LegalHoldsTable {
  tenant_id: string;
  id: string;
  scope: "tenant" | "subject" | "record-type";
  /** The CRM subject held (scope "subject" only). */
  subject_id: string | null;
  /** The inventory table whose rows are held (scope "record-type" only). */
  record_type: string | null;
  reason: string;
  placed_by_kind: "user" | "api-key" | "operator" | "system";
  /** A membership, API key or operator id; null only for the system. */
  placed_by_id: string | null;
  placed_at: ColumnType<Date, Date | string, never>;
  expires_at: ColumnType<Date | null, Date | string | null, Date | string | null>;
  released_at: ColumnType<Date | null, Date | string | null, Date | string | null>;
}
