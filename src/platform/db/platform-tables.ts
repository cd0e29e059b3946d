/**
 * Tables without `tenant_id`: each one is here on purpose, with the reason it is not tenant-owned.
 * The tenancy catalog test fails on any table that has no `tenant_id` and is not on this list.
 */
export const PLATFORM_TABLES: Readonly<Record<string, string>> = {
  tenants: "the registry of tenants itself; each row is a tenant, keyed by its id",
  rate_limit_buckets: "rate-limit counters keyed by a keyed hash of address, account or token, across tenants",
  schema_migrations: "the migration history of the one shared schema",
};
