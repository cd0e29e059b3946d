import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestProject } from "vitest/node";
import { createPostgresTemplate, dropPostgresDatabase, writePgliteTemplate } from "../../src/platform/db/testing.ts";

declare module "vitest" {
  export interface ProvidedContext {
    pgliteTemplate: string;
    postgresAdminUrl: string | undefined;
    postgresTemplate: string | undefined;
  }
}

/** Builds the migrated templates once per run: a PGlite dump, and a template database on PostgreSQL. */
export default async function setup(project: TestProject) {
  const dir = mkdtempSync(join(tmpdir(), "charter-test-"));
  const pgliteTemplate = join(dir, "template.tar");
  const adminUrl = process.env.TEST_DATABASE_URL || undefined;
  const postgresTemplate = adminUrl ? `charter_tpl_${process.pid}` : undefined;
  await Promise.all([
    writePgliteTemplate(pgliteTemplate),
    adminUrl && postgresTemplate ? createPostgresTemplate(adminUrl, postgresTemplate) : undefined,
  ]);
  project.provide("pgliteTemplate", pgliteTemplate);
  project.provide("postgresAdminUrl", adminUrl);
  project.provide("postgresTemplate", postgresTemplate);
  return async () => {
    rmSync(dir, { recursive: true, force: true });
    if (adminUrl && postgresTemplate) await dropPostgresDatabase(adminUrl, postgresTemplate);
  };
}
