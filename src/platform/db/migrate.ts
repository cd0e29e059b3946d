import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { APP_ROLE, bootstrapRoles, OWNER_ROLE, type OwnerQuery } from "./roles.ts";

export const MIGRATIONS_DIR = fileURLToPath(new URL("../../../migrations/", import.meta.url));

export interface MigrationFile {
  version: number;
  name: string;
  sql: string;
  checksum: string;
}

export class MigrationError extends Error {
  override name = "MigrationError";
}

const FILE_NAME = /^(\d{4})_([a-z0-9_]+)\.sql$/;

/** Reads the numbered SQL files; a gap or a duplicate number is an error, not something to skip. */
export function readMigrations(dir: string = MIGRATIONS_DIR): MigrationFile[] {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith(".sql"))
    .sort();
  const migrations = files.map((file) => {
    const match = FILE_NAME.exec(file);
    if (!match) throw new MigrationError(`migration file "${file}" is not named NNNN_name.sql`);
    const sql = readFileSync(`${dir}/${file}`, "utf8");
    return {
      version: Number(match[1]),
      name: match[2] as string,
      sql,
      checksum: createHash("sha256").update(sql).digest("hex"),
    };
  });
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) {
      throw new MigrationError(`migrations are not numbered 1..N without gaps: expected ${i + 1}, found ${m.version}`);
    }
  });
  return migrations;
}

export interface AppliedMigration {
  version: number;
  name: string;
  checksum: string;
}

/** Compares the history in the database with the files; any disagreement stops start-up (fail closed). */
export function pendingMigrations(files: MigrationFile[], applied: AppliedMigration[]): MigrationFile[] {
  const byVersion = new Map(files.map((f) => [f.version, f]));
  applied.forEach((row, i) => {
    if (row.version !== i + 1) {
      throw new MigrationError(`the database's migration history has a gap before version ${row.version}`);
    }
    const file = byVersion.get(row.version);
    if (!file) {
      throw new MigrationError(
        `the database has migration ${row.version} (${row.name}) that this version of Charter does not know`,
      );
    }
    if (file.checksum !== row.checksum) {
      throw new MigrationError(
        `migration ${row.version} (${row.name}) was edited after it was applied: checksum differs`,
      );
    }
  });
  return files.slice(applied.length);
}

/** How a driver runs one migration file in its own transaction. */
export interface OwnerSession {
  query: OwnerQuery;
  /** Runs `sql` (several statements) and then records it, all in one transaction. */
  applyInTransaction(sql: string, record: { sql: string; params: unknown[] }): Promise<void>;
}

// Any constant works; it only has to be the same for every runner of every Charter version.
const MIGRATION_LOCK = 7_262_415_337;

const HISTORY_TABLE = `CREATE TABLE IF NOT EXISTS schema_migrations (
  version integer PRIMARY KEY,
  name text NOT NULL,
  checksum text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)`;

/**
 * Applies pending migrations as charter_owner. Concurrent runners (several instances starting at once)
 * serialise on a session advisory lock; each file runs in its own transaction with its history row.
 */
export async function migrate(session: OwnerSession, files: MigrationFile[] = readMigrations()): Promise<number> {
  const { query } = session;
  await query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK]);
  try {
    await bootstrapRoles(query);
    await query(`SET ROLE ${OWNER_ROLE}`);
    await query(HISTORY_TABLE);
    await query(`GRANT SELECT ON schema_migrations TO ${APP_ROLE}`);
    const applied = await query<AppliedMigration>(
      "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
    );
    const pending = pendingMigrations(files, applied);
    for (const m of pending) {
      try {
        await session.applyInTransaction(m.sql, {
          sql: "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
          params: [m.version, m.name, m.checksum],
        });
      } catch (error) {
        throw new MigrationError(`migration ${m.version} (${m.name}) failed: ${(error as Error).message}`);
      }
    }
    return pending.length;
  } finally {
    await query("RESET ROLE");
    await query("SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK]);
  }
}
