export type { AuditLogDeps, CheckpointStore } from "./deps.ts";
export { auditLogRoutes, EXPORTS_PER_TENANT, VERIFICATIONS_PER_TENANT } from "./routes.ts";
