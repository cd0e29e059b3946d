import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import pg from "pg";
import { type Database, openDatabase } from "./database.ts";
import { type Engine, pgliteEngine, pgliteEngineFrom, pgliteParsers, postgresEngine } from "./engines.ts";
import { acquireDataDirLock } from "./lock.ts";
import { migrate } from "./migrate.ts";
import { OWNER_ROLE } from "./roles.ts";

/**
 * Benchmark support that needs a driver, so it lives in the data-access layer (bench/ opens no
 * connections itself). Nothing in the product imports this file.
 */

/** Where a benchmark database lives: a database on a PostgreSQL server, or a PGlite data directory. */
export type BenchTarget =
  | { kind: "postgres"; adminUrl: string; database: string }
  | { kind: "pglite"; dataDir: string };

const SAFE_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

function databaseUrl(adminUrl: string, database: string): string {
  if (!SAFE_NAME.test(database)) throw new Error(`unsafe database name ${database}`);
  const url = new URL(adminUrl);
  url.pathname = `/${database}`;
  return url.toString();
}

async function asAdmin(adminUrl: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/** Whether the PostgreSQL server at `adminUrl` answers; the error message when it does not. */
export async function postgresReachable(adminUrl: string): Promise<string | undefined> {
  try {
    await asAdmin(adminUrl, "SELECT 1");
    return undefined;
  } catch (error) {
    return (error as Error).message || String(error);
  }
}

/**
 * Brings the PostgreSQL benchmark database to rest after a bulk fill, as the server's superuser: VACUUM
 * (ANALYZE) of every table (visibility map and statistics current, as pgbench vacuums before it measures)
 * and a CHECKPOINT, so that a read measured next pays neither for setting every row's hint bits nor beside
 * the checkpointer writing the fill out.
 */
export async function settleBenchDatabase(target: BenchTarget & { kind: "postgres" }): Promise<void> {
  const url = databaseUrl(target.adminUrl, target.database);
  await asAdmin(url, "VACUUM (ANALYZE)");
  await asAdmin(url, "CHECKPOINT");
}

/**
 * Creates a fresh, migrated Charter database for `target` (a previous one of that name is dropped), then
 * runs `ownerStatements` one by one as charter_owner, as a migration would. Returns each statement's time in ms.
 */
export async function createBenchDatabase(target: BenchTarget, ownerStatements: string[]): Promise<number[]> {
  let engine: Engine;
  if (target.kind === "postgres") {
    await dropBenchDatabase(target);
    await asAdmin(target.adminUrl, `CREATE DATABASE ${target.database}`);
    const url = databaseUrl(target.adminUrl, target.database);
    engine = postgresEngine({ ownerUrl: url, runtimeUrl: undefined, poolSize: 1 });
  } else {
    engine = await pgliteEngine(target.dataDir);
  }
  try {
    return await engine.withOwnerSession(async (session) => {
      await migrate(session);
      await session.query(`SET ROLE ${OWNER_ROLE}`);
      const times: number[] = [];
      for (const statement of ownerStatements) {
        const start = performance.now();
        await session.query(statement);
        times.push(performance.now() - start);
      }
      await session.query("RESET ROLE");
      return times;
    });
  } finally {
    await engine.close();
  }
}

/** Drops the benchmark database of a PostgreSQL target (a PGlite target is a directory the caller removes). */
export async function dropBenchDatabase(target: BenchTarget & { kind: "postgres" }): Promise<void> {
  databaseUrl(target.adminUrl, target.database);
  await asAdmin(target.adminUrl, `DROP DATABASE IF EXISTS ${target.database} WITH (FORCE)`);
}

/** A benchmark database opened as Charter serves it, plus the superuser baseline beside it. */
export interface BenchServing {
  kind: BenchTarget["kind"];
  db: Database;
  /**
   * One statement as a superuser, outside any transaction, with no tenant context or role switch: on
   * PostgreSQL on a plain `pg` pool of its own, on PGlite straight on the same instance. Row-level security
   * does not apply (superusers bypass it), so this is the cost of the query alone.
   */
  superuserQuery<Row = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<Row[]>;
  close(): Promise<void>;
}

/** Opens a database prepared by createBenchDatabase; `poolSize` applies to both PostgreSQL pools. */
export async function openBenchServing(
  target: BenchTarget,
  options: { poolSize?: number } = {},
): Promise<BenchServing> {
  const poolSize = options.poolSize ?? 10;
  if (target.kind === "postgres") {
    const url = databaseUrl(target.adminUrl, target.database);
    const db = await openDatabase(postgresEngine({ ownerUrl: url, runtimeUrl: undefined, poolSize }), {
      migrate: false,
    });
    const pool = new pg.Pool({ connectionString: url, max: poolSize });
    pool.on("error", () => {});
    return {
      kind: "postgres",
      db,
      superuserQuery: async (sql, params) => (await pool.query(sql, params)).rows,
      close: async () => {
        await pool.end();
        await db.close();
      },
    };
  }
  const lock = acquireDataDirLock(join(target.dataDir, "db.lock"));
  let pglite: PGlite;
  try {
    pglite = new PGlite({ dataDir: join(target.dataDir, "db"), parsers: pgliteParsers });
    await pglite.waitReady;
  } catch (error) {
    lock.release();
    throw error;
  }
  const db = await openDatabase(pgliteEngineFrom(pglite, lock.release), { migrate: false });
  // Start-up dropped the session to the runtime role; the baseline needs the superuser back. Charter's own
  // transactions are unaffected: each one enters the runtime role itself (SET LOCAL ROLE).
  await pglite.exec("RESET ROLE");
  return {
    kind: "pglite",
    db,
    superuserQuery: async (sql, params) => (await pglite.query(sql, params)).rows as never[],
    close: () => db.close(),
  };
}
