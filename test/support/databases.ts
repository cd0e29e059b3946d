import { randomBytes } from "node:crypto";
import { inject } from "vitest";
import {
  createEmptyPostgresDatabase,
  type EmptyPostgresDatabase,
  openPgliteFromTemplate,
  openPostgresFromTemplate,
  type TestDatabase,
  type TestDatabaseKind,
} from "../../src/platform/db/testing.ts";

export type { EmptyPostgresDatabase, TestDatabase, TestDatabaseKind };

/** The databases every database test runs on: PGlite always, PostgreSQL when TEST_DATABASE_URL is set. */
export const DATABASE_KINDS: TestDatabaseKind[] = inject("postgresAdminUrl") ? ["pglite", "postgres"] : ["pglite"];

/** A migrated database of its own for one test file, cloned from the run's template. */
export function openTestDatabase(kind: TestDatabaseKind): Promise<TestDatabase> {
  if (kind === "pglite") return openPgliteFromTemplate(inject("pgliteTemplate"));
  const adminUrl = inject("postgresAdminUrl");
  const template = inject("postgresTemplate");
  if (!adminUrl || !template) throw new Error("PostgreSQL tests need TEST_DATABASE_URL");
  return openPostgresFromTemplate(adminUrl, template, `charter_t_${randomBytes(6).toString("hex")}`);
}

/** An empty PostgreSQL database with a random name (no migration run yet); drop() it when done. */
export function openEmptyPostgresDatabase(): Promise<EmptyPostgresDatabase> {
  const adminUrl = inject("postgresAdminUrl");
  if (!adminUrl) throw new Error("PostgreSQL tests need TEST_DATABASE_URL");
  return createEmptyPostgresDatabase(adminUrl, `charter_e_${randomBytes(6).toString("hex")}`);
}
