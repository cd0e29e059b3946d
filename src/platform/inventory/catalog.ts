import { sql } from "kysely";
import { CHARTER_SCHEMAS, relationName, type Tx } from "../db/index.ts";
import type { Inventory } from "./types.ts";
import { inventoryTables } from "./validate.ts";

interface ColumnRow {
  table: string;
  column: string;
}
interface ForeignKeyRow {
  table: string;
  columns: string[];
  referenced_table: string;
  referenced_columns: string[];
}

/**
 * Compares the inventory with the live catalog of every schema (promise P1; pg-boss's tables go by
 * `pgboss.name`): every column of every
 * table needs an entry, every entry needs its column, and a subject path step declared as a foreign key
 * must be one. Returns each problem in words.
 */
export async function inventoryCatalogProblems(tx: Tx, inventory: Inventory): Promise<string[]> {
  const columns = (
    await sql<ColumnRow>`
      SELECT ${relationName("c", "n")} AS table, a.attname AS column
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE ${CHARTER_SCHEMAS} AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
       ORDER BY 1, a.attnum`.execute(tx)
  ).rows;
  const foreignKeys = (
    await sql<ForeignKeyRow>`
      SELECT ${relationName("c", "n")} AS table, ${relationName("r", "rn")} AS referenced_table,
             array(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY AS u(n, o)
                     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.o) AS columns,
             array(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY AS u(n, o)
                     JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.o)
               AS referenced_columns
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_class r ON r.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
       WHERE ${CHARTER_SCHEMAS} AND k.contype = 'f'`.execute(tx)
  ).rows;

  const problems: string[] = [];
  const tables = inventoryTables(inventory);
  const declared = new Map(tables.map((t) => [t.table, t]));
  const live = new Set(columns.map((c) => `${c.table}.${c.column}`));
  const liveTables = new Set(columns.map((c) => c.table));

  const unlisted = new Set<string>();
  for (const { table, column } of columns) {
    const entry = declared.get(table);
    if (!entry) unlisted.add(table);
    else if (!(column in entry.columns)) problems.push(`column ${table}.${column} has no inventory entry`);
  }
  for (const table of unlisted) problems.push(`table ${table} has no inventory entry`);
  for (const t of tables) {
    if (!liveTables.has(t.table)) {
      problems.push(`the inventory declares table ${t.table}, which does not exist`);
      continue;
    }
    for (const column of Object.keys(t.columns)) {
      if (!live.has(`${t.table}.${column}`)) {
        problems.push(`the inventory declares column ${t.table}.${column}, which does not exist`);
      }
    }
    const locators = [t.subject, ...Object.values(t.columns).map((c) => c.subject)];
    for (const locator of locators) {
      if (locator?.kind !== "path") continue;
      let from = t.table;
      for (const hop of locator.via) {
        // A hop may be one column of a composite key (tenant_id leads every tenant key): it is backed when
        // a foreign key pairs this column with the referenced one.
        const backed = foreignKeys.some(
          (fk) =>
            fk.table === from &&
            fk.referenced_table === hop.references.table &&
            fk.columns.some((c, i) => c === hop.column && fk.referenced_columns[i] === hop.references.column),
        );
        if (hop.link === "foreign-key" && !backed) {
          problems.push(
            `subject path of ${t.table}: ${from}.${hop.column} → ${hop.references.table}.${hop.references.column} is declared a foreign key but none exists`,
          );
        }
        from = hop.references.table;
      }
    }
  }
  return problems;
}
