import { sql } from "kysely";
import type { Tx } from "./kysely.ts";

interface TableRow {
  name: string;
  kind: string;
  has_tenant_id: boolean;
  rls: boolean;
  force_rls: boolean;
  options: string[] | null;
}
interface PolicyRow {
  table: string;
  name: string;
  command: string;
  qual: string | null;
  with_check: string | null;
}
interface ConstraintRow {
  table: string;
  name: string;
  type: "p" | "u" | "f";
  columns: string[];
  referenced_table: string | null;
}
interface IndexRow {
  table: string;
  name: string;
  unique: boolean;
  columns: (string | null)[];
}
interface SequenceRow {
  name: string;
  type: string;
}

const TENANT_SETTING = "current_setting('app.tenant_id'";

/**
 * Every schema of the database but PostgreSQL's own (`n` is the namespace), so that nothing hides in a second
 * schema such as pg-boss's `pgboss`.
 */
export const CHARTER_SCHEMAS = sql.raw(
  "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'",
);

/** A relation's name as the checks report it: bare in the current schema, `schema.name` in any other. */
export function relationName(relation: string, namespace: string) {
  return sql.raw(
    `CASE WHEN ${namespace}.nspname = current_schema() THEN ${relation}.relname::text ELSE ${namespace}.nspname || '.' || ${relation}.relname END`,
  );
}

/**
 * Checks the live catalog of every schema against the tenancy rules of ARCHITECTURE.md (promises T1, T8)
 * and returns every violation in words. `platformTables` lists the tables allowed to have no tenant_id.
 */
export async function catalogViolations(tx: Tx, platformTables: Readonly<Record<string, string>>): Promise<string[]> {
  const tables = (
    await sql<TableRow>`
      SELECT ${relationName("c", "n")} AS name, c.relkind AS kind, c.relrowsecurity AS rls, c.relforcerowsecurity AS force_rls,
             c.reloptions AS options,
             EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                       AND NOT a.attisdropped) AS has_tenant_id
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE ${CHARTER_SCHEMAS} AND c.relkind IN ('r', 'p', 'v', 'm')
       ORDER BY 1`.execute(tx)
  ).rows;
  const policies = (
    await sql<PolicyRow>`
      SELECT ${relationName("c", "n")} AS table, p.polname AS name, p.polcmd AS command,
             pg_get_expr(p.polqual, p.polrelid) AS qual, pg_get_expr(p.polwithcheck, p.polrelid) AS with_check
        FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE ${CHARTER_SCHEMAS}`.execute(tx)
  ).rows;
  const constraints = (
    await sql<ConstraintRow>`
      SELECT ${relationName("c", "n")} AS table, k.conname AS name, k.contype AS type,
             array(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY AS u(n, o)
                     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.o) AS columns,
             ${relationName("r", "rn")} AS referenced_table
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_class r ON r.oid = k.confrelid LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace
       WHERE ${CHARTER_SCHEMAS} AND k.contype IN ('p', 'u', 'f')`.execute(tx)
  ).rows;
  const indexes = (
    await sql<IndexRow>`
      SELECT ${relationName("c", "n")} AS table, i.relname AS name, x.indisunique AS unique,
             array(SELECT a.attname::text FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS u(n, o)
                     LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = u.n
                    ORDER BY u.o) AS columns
        FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE ${CHARTER_SCHEMAS}`.execute(tx)
  ).rows;
  const sequences = (
    await sql<SequenceRow>`
      SELECT ${relationName("c", "n")} AS name, format_type(s.seqtypid, NULL) AS type
        FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE ${CHARTER_SCHEMAS}`.execute(tx)
  ).rows;

  const violations: string[] = [];
  const tenantTables = new Set(tables.filter((t) => t.has_tenant_id && t.kind !== "v").map((t) => t.name));

  for (const table of tables) {
    if (table.kind === "v") {
      const invoker = (table.options ?? []).some((o) => /^security_invoker=(true|on|1)$/i.test(o));
      if (!invoker) violations.push(`view ${table.name} is not security_invoker`);
      continue;
    }
    if (table.kind === "m") {
      violations.push(`materialized view ${table.name} cannot enforce row-level security`);
      continue;
    }
    if (!table.has_tenant_id) {
      if (!(table.name in platformTables)) {
        violations.push(`table ${table.name} has no tenant_id and is not on the platform list`);
      }
      continue;
    }
    if (table.name in platformTables) violations.push(`platform table ${table.name} has a tenant_id column`);
    if (!table.rls) violations.push(`table ${table.name} does not enable row-level security`);
    if (!table.force_rls) violations.push(`table ${table.name} does not force row-level security`);
    const own = policies.filter((p) => p.table === table.name);
    if (own.length === 0) violations.push(`table ${table.name} has no row-level security policy`);
    for (const p of own) {
      const canonical = p.command === "*" && p.qual?.includes(TENANT_SETTING) && p.with_check?.includes(TENANT_SETTING);
      if (!canonical) {
        violations.push(`policy ${p.name} on ${table.name} is not the tenant policy for all commands`);
      }
    }
  }

  for (const name of Object.keys(platformTables)) {
    if (!tables.some((t) => t.name === name)) violations.push(`platform list names ${name}, which does not exist`);
  }

  for (const c of constraints) {
    if (c.type === "p" && tenantTables.has(c.table) && c.columns[0] !== "tenant_id") {
      violations.push(`primary key ${c.name} of ${c.table} does not lead with tenant_id`);
    }
    if (c.type === "u" && tenantTables.has(c.table) && !c.columns.includes("tenant_id")) {
      violations.push(`unique constraint ${c.name} of ${c.table} does not include tenant_id`);
    }
    if (c.type === "f") {
      const touchesTenantData = tenantTables.has(c.table) || tenantTables.has(c.referenced_table ?? "");
      if (touchesTenantData && !c.columns.includes("tenant_id")) {
        violations.push(`foreign key ${c.name} of ${c.table} does not include tenant_id`);
      }
      const supported = indexes.some(
        (i) =>
          i.table === c.table &&
          c.columns.every((col) => i.columns.slice(0, c.columns.length).includes(col)) &&
          i.columns.length >= c.columns.length,
      );
      if (!supported) violations.push(`foreign key ${c.name} of ${c.table} has no supporting index`);
    }
  }

  const constraintNames = new Set(constraints.map((c) => `${c.table}.${c.name}`));
  for (const i of indexes) {
    const backsConstraint = constraintNames.has(`${i.table}.${i.name}`);
    if (i.unique && !backsConstraint && tenantTables.has(i.table) && !i.columns.includes("tenant_id")) {
      violations.push(`unique index ${i.name} of ${i.table} does not include tenant_id`);
    }
  }

  for (const s of sequences) {
    if (s.type !== "bigint") violations.push(`sequence ${s.name} is ${s.type}, not bigint`);
  }
  return violations;
}
