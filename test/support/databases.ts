import { randomBytes } from "node:crypto";
import { inject } from "vitest";
import {
  openPgliteFromTemplate,
  openPostgresFromTemplate,
  type TestDatabase,
  type TestDatabaseKind,
} from "../../src/platform/db/testing.ts";

export type { TestDatabase, TestDatabaseKind };

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
