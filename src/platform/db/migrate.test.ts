import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "kysely";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  DATABASE_KINDS,
  type EmptyPostgresDatabase,
  openEmptyPostgresDatabase,
  openTestDatabase,
  type TestDatabase,
} from "../../../test/support/databases.ts";
import { uuidv7 } from "../ids.ts";
import type { Database } from "./database.ts";
import {
  type AppliedMigration,
  MigrationError,
  type MigrationFile,
  pendingMigrations,
  readMigrations,
} from "./migrate.ts";
import { inspectRuntimeRole, runtimeRoleProblems } from "./runtime-role.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A temporary migrations directory holding exactly `files` (name → SQL). */
function migrationsDir(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), "charter-migrations-"));
  dirs.push(dir);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

const checksum = (text: string) => createHash("sha256").update(text).digest("hex");

function file(version: number, name: string, text = `SELECT ${version}`): MigrationFile {
  return { version, name, sql: text, checksum: checksum(text) };
}

const applied = (f: MigrationFile): AppliedMigration => ({ version: f.version, name: f.name, checksum: f.checksum });

/** The repository's migrations followed by `extra` (name → SQL) numbered after them. */
function repositoryPlus(extra: Record<string, string>): MigrationFile[] {
  const current = readMigrations();
  const next = Object.entries(extra).map(([name, text], i) => file(current.length + i + 1, name, text));
  return [...current, ...next];
}

describe("readMigrations", () => {
  it("reads NNNN_name.sql files in order with their checksums, ignoring other files", () => {
    const dir = migrationsDir({
      "0002_second.sql": "SELECT 2",
      "0001_first.sql": "SELECT 1",
      "README.md": "not a migration",
    });
    expect(readMigrations(dir)).toEqual([file(1, "first", "SELECT 1"), file(2, "second", "SELECT 2")]);
  });

  it("refuses a gap in the numbering", () => {
    const dir = migrationsDir({ "0001_first.sql": "SELECT 1", "0003_third.sql": "SELECT 3" });
    expect(() => readMigrations(dir)).toThrow(MigrationError);
    expect(() => readMigrations(dir)).toThrow(/expected 2, found 3/);
  });

  it("refuses a history that does not start at 1, and a duplicate number", () => {
    expect(() => readMigrations(migrationsDir({ "0002_second.sql": "SELECT 2" }))).toThrow(/expected 1, found 2/);
    expect(() => readMigrations(migrationsDir({ "0001_a.sql": "SELECT 1", "0001_b.sql": "SELECT 1" }))).toThrow(
      /expected 2, found 1/,
    );
  });

  it.each(["1_first.sql", "0001-first.sql", "0001_First.sql", "00001_first.sql", "0001_.sql"])(
    "refuses a badly named file (%s)",
    (name) => {
      const dir = migrationsDir({ [name]: "SELECT 1" });
      expect(() => readMigrations(dir)).toThrow(MigrationError);
      expect(() => readMigrations(dir)).toThrow(`migration file "${name}" is not named NNNN_name.sql`);
    },
  );

  it("reads the repository's own migrations", () => {
    const migrations = readMigrations();
    expect(migrations[0]).toMatchObject({ version: 1, name: "kernel" });
    expect(migrations.map((m) => m.version)).toEqual(migrations.map((_, i) => i + 1));
  });
});

describe("pendingMigrations", () => {
  const files = [file(1, "one"), file(2, "two"), file(3, "three")];

  it("returns the files after the applied history", () => {
    expect(pendingMigrations(files, [])).toEqual(files);
    expect(pendingMigrations(files, [applied(files[0] as MigrationFile)])).toEqual(files.slice(1));
    expect(pendingMigrations(files, files.map(applied))).toEqual([]);
  });

  it("refuses a migration edited after it was applied", () => {
    const edited = { ...applied(files[0] as MigrationFile), checksum: checksum("SELECT 'edited'") };
    expect(() => pendingMigrations(files, [edited])).toThrow(MigrationError);
    expect(() => pendingMigrations(files, [edited])).toThrow(/migration 1 \(one\) was edited/);
  });

  it("refuses a history with a version the files do not have", () => {
    const unknown = [...files.map(applied), applied(file(4, "future"))];
    expect(() => pendingMigrations(files, unknown)).toThrow(MigrationError);
    expect(() => pendingMigrations(files, unknown)).toThrow(/has migration 4 \(future\) that this version/);
  });

  it("refuses a history with a gap", () => {
    const gap = [applied(files[0] as MigrationFile), applied(files[2] as MigrationFile)];
    expect(() => pendingMigrations(files, gap)).toThrow(MigrationError);
    expect(() => pendingMigrations(files, gap)).toThrow(/gap before version 3/);
    expect(() => pendingMigrations(files, [applied(files[1] as MigrationFile)])).toThrow(/gap before version 2/);
  });
});

describe.each(DATABASE_KINDS)("migrating %s", (kind) => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
  });
  afterAll(() => t?.close());

  const exists = async (table: string) => {
    const [row] = (await t.superuser(`SELECT to_regclass('public.${table}') IS NOT NULL AS present`)) as {
      present: boolean;
    }[];
    return row?.present;
  };
  const history = async () =>
    ((await t.superuser("SELECT version, name FROM schema_migrations ORDER BY version")) as AppliedMigration[]).map(
      (row) => `${row.version} ${row.name}`,
    );
  const runsAsApp = (db: Database) =>
    db.withTenant(
      { tenantId: uuidv7() },
      async (tx) => (await sql<{ u: string }>`SELECT current_user AS u`.execute(tx)).rows[0]?.u,
    );

  it("a migrated database has nothing pending, and migrating it again applies nothing", async () => {
    const before = await history();
    expect(await t.db.pendingMigrations()).toEqual([]);
    expect(await t.db.migrate()).toBe(0);
    expect(await t.migrateWith(readMigrations())).toBe(0);
    expect(await history()).toEqual(before);
    expect(await runsAsApp(t.db)).toBe("charter_app");
  });

  it("applies a new migration once, recording it", async () => {
    const files = repositoryPlus({ probe_added: "CREATE TABLE probe_added (id uuid PRIMARY KEY)" });
    const added = files.at(-1) as MigrationFile;
    try {
      expect(await t.migrateWith(files)).toBe(1);
      expect(await t.migrateWith(files)).toBe(0);
      expect(await exists("probe_added")).toBe(true);
      expect(await history()).toContain(`${added.version} probe_added`);
      expect(await runsAsApp(t.db)).toBe("charter_app");
    } finally {
      await t.superuser(
        `DROP TABLE IF EXISTS probe_added; DELETE FROM schema_migrations WHERE version = ${added.version}`,
      );
    }
  });

  it("a failing migration throws MigrationError naming it and leaves no trace", async () => {
    const files = repositoryPlus({
      probe_broken: "CREATE TABLE probe_broken (id uuid PRIMARY KEY);\nSELECT * FROM no_such_table;",
    });
    const broken = files.at(-1) as MigrationFile;
    const before = await history();
    const failure = t.migrateWith(files);
    await expect(failure).rejects.toBeInstanceOf(MigrationError);
    await expect(failure).rejects.toThrow(`migration ${broken.version} (probe_broken) failed`);
    expect(await exists("probe_broken")).toBe(false);
    expect(await history()).toEqual(before);
    expect(await runsAsApp(t.db)).toBe("charter_app");
  });

  it("fails closed when an applied migration's checksum no longer matches its file", async () => {
    const [kernel] = readMigrations();
    await t.superuser("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1");
    try {
      await expect(t.migrateWith(readMigrations())).rejects.toThrow(MigrationError);
      await expect(t.open()).rejects.toThrow(/migration 1 \(kernel\) was edited after it was applied/);
      await expect(t.db.pendingMigrations()).rejects.toThrow(MigrationError);
    } finally {
      await t.superuser(`UPDATE schema_migrations SET checksum = '${kernel?.checksum}' WHERE version = 1`);
    }
    expect(await runsAsApp(t.db)).toBe("charter_app");
    const reopened = await t.open();
    await reopened.close();
  });

  it("fails closed when the database has a migration this version does not know", async () => {
    const future = readMigrations().length + 1;
    await t.superuser(
      `INSERT INTO schema_migrations (version, name, checksum) VALUES (${future}, 'from_the_future', 'x')`,
    );
    try {
      await expect(t.open()).rejects.toThrow(MigrationError);
      await expect(t.migrateWith(readMigrations())).rejects.toThrow(`${future} (from_the_future)`);
    } finally {
      await t.superuser(`DELETE FROM schema_migrations WHERE version = ${future}`);
    }
  });

  if (kind === "postgres") {
    describe("fresh databases", () => {
      const fresh: EmptyPostgresDatabase[] = [];
      const opened: Database[] = [];
      afterEach(async () => {
        await Promise.all(opened.splice(0).map((db) => db.close()));
        await Promise.all(fresh.splice(0).map((f) => f.drop()));
      });

      it("concurrent runs on one database both succeed and apply each migration exactly once", async () => {
        const files = repositoryPlus({ probe_second: "CREATE TABLE probe_second (id uuid PRIMARY KEY)" });
        const empty = await openEmptyPostgresDatabase();
        fresh.push(empty);
        const runners = [1, 2, 3].map(() => empty.create({ migrations: files }));
        opened.push(...runners);
        const counts = await Promise.all(runners.map((db) => db.migrate()));
        expect(counts.sort()).toEqual([0, 0, files.length]);
        const rows = (await empty.superuser(
          "SELECT version, name, count(*) OVER (PARTITION BY version)::int AS copies FROM schema_migrations ORDER BY version",
        )) as { version: number; name: string; copies: number }[];
        expect(rows).toEqual(files.map((f) => ({ version: f.version, name: f.name, copies: 1 })));
      });

      it("several fresh databases migrate at once, roles included, each with a safe runtime role", async () => {
        const empties = await Promise.all([1, 2, 3].map(() => openEmptyPostgresDatabase()));
        fresh.push(...empties);
        const dbs = empties.map((empty) => empty.create());
        opened.push(...dbs);
        const counts = await Promise.all(dbs.map((db) => db.migrate()));
        expect(counts).toEqual(dbs.map(() => readMigrations().length));
        for (const db of dbs) {
          const report = await inspectRuntimeRole(db);
          expect(report.role).toBe("charter_app");
          expect(runtimeRoleProblems(report)).toEqual([]);
        }
      });
    });
  }
});
