export { CHARTER_SCHEMAS, catalogViolations, relationName } from "./catalog.ts";
export type {
  Database,
  FailureRecord,
  PlatformContext,
  Snapshot,
  TenantContext,
  TextRow,
  TextRows,
} from "./database.ts";
export { createDatabase, NestedTransactionError, openDatabase } from "./database.ts";
export type { Tx } from "./kysely.ts";
export { DataDirLocked } from "./lock.ts";
export { MigrationError } from "./migrate.ts";
export { engineFor, openConfiguredDatabase } from "./open.ts";
export { PLATFORM_TABLES } from "./platform-tables.ts";
export { APP_ROLE, OWNER_ROLE } from "./roles.ts";
export { inspectRuntimeRole, runtimeRoleProblems, UnsafeRuntimeRoleError } from "./runtime-role.ts";
export type { Tables } from "./schema.ts";
export type { SelectQuery } from "./select-query.ts";
