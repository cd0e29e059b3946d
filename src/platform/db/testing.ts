import { readFileSync, writeFileSync } from "node:fs";
import pg from "pg";
import { createDatabase, type Database, type DatabaseOptions, openDatabase } from "./database.ts";
import { dumpFreshPglite, type Engine, pgliteEngineFromDump, postgresEngine } from "./engines.ts";
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

/** Builds the migrated PGlite template once per run and writes its dump to `path`. */
export async function writePgliteTemplate(path: string): Promise<void> {
  const dump = await dumpFreshPglite(async (engine) => {
    await createDatabase(engine).migrate();
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
