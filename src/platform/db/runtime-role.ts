import { sql } from "kysely";
import type { Database } from "./database.ts";

export interface RuntimeRoleReport {
  role: string;
  superuser: boolean;
  bypassRls: boolean;
  /** Tenant tables (those with a tenant_id column) that the runtime role owns, or can act as the owner of. */
  ownedTenantTables: string[];
  /** Roles the runtime role can become that are superusers or bypass row-level security. */
  privilegedMemberships: string[];
}

const NIL_TENANT = "00000000-0000-0000-0000-000000000000";

/** Reads, from inside a tenant transaction, what the role that runs requests could do. */
export async function inspectRuntimeRole(db: Database): Promise<RuntimeRoleReport> {
  return db.withTenant({ tenantId: NIL_TENANT }, async (tx) => {
    const { rows } = await sql<{
      role: string;
      superuser: boolean;
      bypass_rls: boolean;
      owned: string[] | null;
      privileged: string[] | null;
    }>`
      SELECT r.rolname AS role, r.rolsuper AS superuser, r.rolbypassrls AS bypass_rls,
        (SELECT array_agg(c.relname::text ORDER BY c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
            AND pg_has_role(current_user, c.relowner, 'USAGE')
            AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                          AND a.attname = 'tenant_id' AND NOT a.attisdropped)) AS owned,
        (SELECT array_agg(o.rolname::text ORDER BY o.rolname) FROM pg_roles o
          WHERE o.rolname <> current_user AND (o.rolsuper OR o.rolbypassrls)
            AND pg_has_role(current_user, o.oid, 'MEMBER')) AS privileged
      FROM pg_roles r WHERE r.rolname = current_user`.execute(tx);
    const row = rows[0];
    if (!row) throw new Error("the runtime role is not in pg_roles");
    return {
      role: row.role,
      superuser: row.superuser,
      bypassRls: row.bypass_rls,
      ownedTenantTables: row.owned ?? [],
      privilegedMemberships: row.privileged ?? [],
    };
  });
}

/** What makes a runtime role unsafe, in words; empty when it is safe. */
export function runtimeRoleProblems(report: RuntimeRoleReport): string[] {
  const problems: string[] = [];
  if (report.superuser) problems.push(`${report.role} is a superuser`);
  if (report.bypassRls) problems.push(`${report.role} has BYPASSRLS`);
  if (report.ownedTenantTables.length > 0) {
    problems.push(`${report.role} owns tenant tables: ${report.ownedTenantTables.join(", ")}`);
  }
  if (report.privilegedMemberships.length > 0) {
    problems.push(`${report.role} can become ${report.privilegedMemberships.join(", ")}`);
  }
  return problems;
}

export class UnsafeRuntimeRoleError extends Error {
  override name = "UnsafeRuntimeRoleError";
}

/** Start-up refuses to serve when the role inside withTenant could read past row-level security. */
export async function assertRuntimeRoleSafe(db: Database): Promise<RuntimeRoleReport> {
  const report = await inspectRuntimeRole(db);
  const problems = runtimeRoleProblems(report);
  if (problems.length > 0) {
    throw new UnsafeRuntimeRoleError(`refusing to serve: the runtime role is unsafe: ${problems.join("; ")}`);
  }
  return report;
}
