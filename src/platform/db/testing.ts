import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import pg from "pg";
import { createDatabase, type Database, type DatabaseOptions, openDatabase } from "./database.ts";
import { dumpFreshPglite, type Engine, pgliteEngineFromDump, pgliteParsers, postgresEngine } from "./engines.ts";
import { acquireDataDirLock } from "./lock.ts";
import type { MigrationFile } from "./migrate.ts";
import { OWNER_ROLE } from "./roles.ts";

/**
 * Test support that needs a driver, so it lives in the data-access layer: tests never open connections
 * themselves. Each test file gets a migrated database cloned from a template built once per run.
 */

export type TestDatabaseKind = "pglite" | "postgres";

export interface TestDatabase {
  kind: TestDatabaseKind;
  db: Database;
  /** The database's URL (PostgreSQL only): for a second engine on the same database. */
  url: string | undefined;
  /** Runs SQL as a superuser, for tests that break something on purpose; returns the last result's rows. */
  superuser(sql: string): Promise<unknown[]>;
  /** Runs SQL as charter_owner (to create or drop objects as a migration would). */
  owner(sql: string): Promise<unknown[]>;
  /**
   * Opens a second Database on the same database as start-up does (migrating unless `migrate: false`).
   * On PGlite it shares the one instance, so never hold a transaction on both at once.
   */
  open(options?: DatabaseOptions & { migrate?: boolean }): Promise<Database>;
  /** Runs `createDatabase(…, { migrations: files }).migrate()` on this database; returns how many ran. */
  migrateWith(files: MigrationFile[]): Promise<number>;
  close(): Promise<void>;
}

/** The part of a TestDatabase that opens more Databases on the same database through `engine()`. */
function openers(engine: () => Engine): Pick<TestDatabase, "open" | "migrateWith"> {
  return {
    open: (options = {}) => openDatabase(engine(), options),
    async migrateWith(files) {
      const db = createDatabase(engine(), { migrations: files });
      try {
        return await db.migrate();
      } finally {
        await db.close();
      }
    },
  };
}

const asOwner = (superuser: (sql: string) => Promise<unknown[]>) => (sql: string) =>
  superuser(`SET ROLE ${OWNER_ROLE}; ${sql}; RESET ROLE`);

/**
 * The shared buffers of a test copy of the embedded database. PostgreSQL zeroes its shared memory at every
 * start, and in WebAssembly zeroing the default 128 MB took a third of the CPU time of opening a test database
 * (one or more per test file); a test database holds a few megabytes, so its pages still all fit.
 */
const TEST_PGLITE_SHARED_BUFFERS = "32MB";

/** Builds the migrated PGlite template once per run and writes its dump to `path`. */
export async function writePgliteTemplate(path: string): Promise<void> {
  const dump = await dumpFreshPglite(async (engine) => {
    await createDatabase(engine).migrate();
    await engine.withOwnerSession(async (session) => {
      // Read by every copy at its start (postgresql.auto.conf travels in the dump).
      await session.query(`ALTER SYSTEM SET shared_buffers = '${TEST_PGLITE_SHARED_BUFFERS}'`);
      // Copies then start from a clean checkpoint instead of replaying the migrations' WAL.
      await session.query("CHECKPOINT");
    });
  });
  writeFileSync(path, Buffer.from(await dump.arrayBuffer()));
}

export async function openPgliteFromTemplate(path: string): Promise<TestDatabase> {
  const { engine, superuser } = await pgliteEngineFromDump(new Blob([readFileSync(path)]));
  const db = await openDatabase(engine, { migrate: false });
  // A second Database borrows the instance: closing it must not close the test's database.
  const borrowed = (): Engine => ({ ...engine, close: async () => {} });
  return {
    kind: "pglite",
    db,
    url: undefined,
    superuser,
    owner: asOwner(superuser),
    ...openers(borrowed),
    close: () => db.close(),
  };
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

async function connected<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

const SAFE_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
function checkName(name: string): string {
  if (!SAFE_NAME.test(name)) throw new Error(`unsafe database name ${name}`);
  return name;
}

/** Creates and migrates a template database on the server at `adminUrl` (a superuser URL). */
export async function createPostgresTemplate(adminUrl: string, name: string): Promise<void> {
  await dropPostgresDatabase(adminUrl, name);
  await connected(adminUrl, (c) => c.query(`CREATE DATABASE ${checkName(name)}`));
  const db = createDatabase(
    postgresEngine({ ownerUrl: withDatabase(adminUrl, name), runtimeUrl: undefined, poolSize: 1 }),
  );
  try {
    await db.migrate();
  } finally {
    await db.close();
  }
}

/** A fresh database copied from the template and opened as Charter opens it; dropped on close. */
export async function openPostgresFromTemplate(
  adminUrl: string,
  template: string,
  name: string,
): Promise<TestDatabase> {
  await connected(adminUrl, (c) => c.query(`CREATE DATABASE ${checkName(name)} TEMPLATE ${checkName(template)}`));
  const url = withDatabase(adminUrl, name);
  try {
    const db = await openDatabase(postgresEngine({ ownerUrl: url, runtimeUrl: undefined, poolSize: 4 }), {
      migrate: false,
    });
    const superuser = (sql: string) => connected(url, async (c) => [await c.query(sql)].flat().at(-1)?.rows ?? []);
    return {
      kind: "postgres",
      db,
      url,
      superuser,
      owner: asOwner(superuser),
      ...openers(() => postgresEngine({ ownerUrl: url, runtimeUrl: undefined, poolSize: 2 })),
      close: async () => {
        await db.close();
        await dropPostgresDatabase(adminUrl, name);
      },
    };
  } catch (error) {
    await dropPostgresDatabase(adminUrl, name);
    throw error;
  }
}

/** An empty database that no migration has touched yet, for tests of first-time and concurrent migration. */
export interface EmptyPostgresDatabase {
  url: string;
  /** A new Database on it (its own pool): call migrate() and close() on it. */
  create(options?: DatabaseOptions): Database;
  superuser(sql: string): Promise<unknown[]>;
  drop(): Promise<void>;
}

export async function createEmptyPostgresDatabase(adminUrl: string, name: string): Promise<EmptyPostgresDatabase> {
  await connected(adminUrl, (c) => c.query(`CREATE DATABASE ${checkName(name)}`));
  const url = withDatabase(adminUrl, name);
  return {
    url,
    create: (options) => createDatabase(postgresEngine({ ownerUrl: url, runtimeUrl: undefined, poolSize: 2 }), options),
    superuser: (sql) => connected(url, async (c) => [await c.query(sql)].flat().at(-1)?.rows ?? []),
    drop: () => dropPostgresDatabase(adminUrl, name),
  };
}

export async function dropPostgresDatabase(adminUrl: string, name: string): Promise<void> {
  await connected(adminUrl, (c) => c.query(`DROP DATABASE IF EXISTS ${checkName(name)} WITH (FORCE)`));
}

/** The rows of one table, each as the text of `row_to_json`. */
export interface TableRows {
  /** `schema.table`, quoted where needed. */
  table: string;
  rows: string[];
}

/** Every table with rows outside PostgreSQL's own schemas (partitions included, so each row is read once). */
const TABLES_WITH_ROWS = `
  SELECT format('%I.%I', n.nspname, c.relname) AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'm')
     AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
   ORDER BY 1`;

async function everyRow(query: (sql: string) => Promise<Record<string, unknown>[]>): Promise<TableRows[]> {
  const tables = (await query(TABLES_WITH_ROWS)).map((r) => String(r.name));
  const dump: TableRows[] = [];
  for (const table of tables) {
    const rows = await query(`SELECT row_to_json(t)::text AS row FROM ${table} t`);
    dump.push({ table, rows: rows.map((r) => String(r.row)) });
  }
  return dump;
}

/**
 * A logical dump of a stopped server's embedded database: every row of every table, read as the superuser
 * (row-level security does not apply). Takes the data directory's lock, so it refuses a database in use.
 */
export async function everyRowOfPgliteDataDir(dataDir: string): Promise<TableRows[]> {
  const lock = acquireDataDirLock(join(dataDir, "db.lock"));
  try {
    const pglite = new PGlite({ dataDir: join(dataDir, "db"), parsers: pgliteParsers });
    try {
      await pglite.waitReady;
      return await everyRow(async (sql) => (await pglite.query<Record<string, unknown>>(sql)).rows);
    } finally {
      await pglite.close();
    }
  } finally {
    lock.release();
  }
}

/** As everyRowOfPgliteDataDir, for the database at `url` (a superuser URL). */
export function everyRowOfPostgres(url: string): Promise<TableRows[]> {
  return connected(url, (client) => everyRow(async (sql) => (await client.query(sql)).rows));
}

/**
 * The bytes of every relation file of the database at `url` (a superuser URL) after a checkpoint wrote its
 * dirty pages: tables, TOAST tables and indexes as the server stores them. The server's own files are not
 * readable by this process, so they are read through the server (pg_read_binary_file).
 */
export function relationFilesOfPostgres(url: string): Promise<{ path: string; bytes: Buffer }[]> {
  return connected(url, async (client) => {
    await client.query("CHECKPOINT");
    const { rows } = await client.query<{ path: string }>(`
      SELECT pg_relation_filepath(c.oid) AS path FROM pg_class c
       WHERE c.relkind IN ('r', 'm', 't', 'i') AND pg_relation_filepath(c.oid) IS NOT NULL ORDER BY 1`);
    const files: { path: string; bytes: Buffer }[] = [];
    for (const { path } of rows) {
      // A relation never written to may have no file yet: missing_ok.
      const read = await client.query<{ bytes: Buffer | null }>(
        "SELECT pg_read_binary_file($1, 0, s.size, true) AS bytes FROM pg_stat_file($1, true) s",
        [path],
      );
      const bytes = read.rows[0]?.bytes;
      if (bytes) files.push({ path, bytes });
    }
    return files;
  });
}
