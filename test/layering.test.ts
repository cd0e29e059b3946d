import { spawnSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  importedModules,
  layeringViolations,
  ROLE_STATEMENT,
  scanRepository,
  sourceFiles,
  tokenize,
} from "./support/layering.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

// Role statements are assembled at run time: written out whole, this file would break the rule it tests.
const role = (verb: string) => `${verb} ROLE charter_owner`;
const setConfigRole = (q: string) => `SELECT set_config(${q}role${q}, 'charter_owner', true)`;

describe("layering (promises T1 and T4)", () => {
  it("no file outside src/platform/db imports a database driver or holds a role statement", () => {
    const files = sourceFiles(ROOT);
    expect(files).toContain("src/platform/db/engines.ts");
    expect(files).toContain("test/layering.test.ts");
    expect(scanRepository(ROOT)).toEqual([]);
  });

  it("the scanner sees the driver imports and role statements of the one layer allowed them", () => {
    const engines = readFileSync(join(ROOT, "src/platform/db/engines.ts"), "utf8");
    expect(importedModules(tokenize(engines))).toEqual(expect.arrayContaining(["pg", "@electric-sql/pglite"]));
    expect(layeringViolations("src/platform/db/engines.ts", engines)).toEqual([]);
    const moved = layeringViolations("src/platform/http/engines.ts", engines);
    expect(moved).toContain('src/platform/http/engines.ts imports the database driver "pg"');
    expect(moved).toContain('src/platform/http/engines.ts imports the database driver "@electric-sql/pglite"');
    expect(moved.some((v) => v.includes("holds a role statement"))).toBe(true);
  });

  it.each([
    ['import pg from "pg";', "pg"],
    ["import { Pool } from 'pg-pool';", "pg-pool"],
    ['import type { PGlite } from "@electric-sql/pglite";', "@electric-sql/pglite"],
    ['import { PGlite } from "@electric-sql/pglite/worker";', "@electric-sql/pglite/worker"],
    ['import {\n  Client,\n  Pool,\n} from "pg";', "pg"],
    ['import "pg";', "pg"],
    ['export * from "pg";', "pg"],
    ['const postgres = await import("postgres");', "postgres"],
    ['const { Client } = require("pg/lib/client");', "pg/lib/client"],
    ['import pg = require("pg");', "pg"],
  ])("catches a driver import: %s", (source, module) => {
    expect(layeringViolations("src/modules/crm/service.ts", source)).toEqual([
      `src/modules/crm/service.ts imports the database driver "${module}"`,
    ]);
    expect(layeringViolations("test/helpers.ts", source)).toHaveLength(1);
    expect(layeringViolations("src/platform/db/engines.ts", source)).toEqual([]);
    expect(layeringViolations("src/platform/db/sub/driver.ts", source)).toEqual([]);
  });

  it.each([
    'import pgvector from "pgvector";',
    'import array from "postgres-array";',
    'import { pg } from "./pg.ts";',
    '// import pg from "pg";',
    '/* import pg from "pg"; */',
    `const text = 'import pg from "pg"';`,
    'const url = "http://example.com/*"; import { x } from "./x.ts";',
    'const re = /"pg"/; const from = 1;',
  ])("does not take this for a driver import: %s", (source) => {
    expect(layeringViolations("src/modules/crm/service.ts", source)).toEqual([]);
  });

  it.each([
    `const q = "${role("SET")}";`,
    `const q = '${role("set local")}';`,
    `const q = "${role("SET SESSION")}";`,
    `const q = "${role("RESET")}";`,
    `const q = "${setConfigRole("'")}";`,
    `const q = \`${role("SET")} \${name}\`;`,
    `const q = sql\`${role("SET\n  LOCAL")}\`;`,
  ])("catches a role statement in a string: %s", (source) => {
    expect(layeringViolations("src/platform/http/app.ts", source)).toHaveLength(1);
    expect(layeringViolations("test/helpers.ts", source)).toHaveLength(1);
    // As the lint rule: only the data-access layer is exempt.
    expect(layeringViolations("src/platform/dbx/roles.ts", source)).toHaveLength(1);
    expect(layeringViolations("src/platform/db/engines.ts", source)).toEqual([]);
  });

  it.each([`// ${role("SET")}`, `const q = "SET TIME ZONE 'UTC'";`, 'const q = "SELECT current_user";'])(
    "does not take this for a role statement: %s",
    (source) => {
      expect(layeringViolations("src/platform/http/app.ts", source)).toEqual([]);
    },
  );

  it("uses the same regex as the lint rule", () => {
    const grit = readFileSync(join(ROOT, "lint/no-role-statements.grit"), "utf8");
    const pattern = /\$s <: r"\(\?is\)\.\*(.+)\.\*",/.exec(grit)?.[1];
    expect(pattern).toBe(ROLE_STATEMENT.source);
    expect(ROLE_STATEMENT.flags).toBe("is");
  });

  it("biome reports a driver import and a role statement outside src/platform/db, and neither inside it", () => {
    const probe = `src/__lint_probe_${process.pid}__.ts`;
    const allowed = `src/platform/db/__lint_probe_${process.pid}__.ts`;
    const source = `import pg from "pg";\nexport const statement = "${role("SET")}";\nexport default pg;\n`;
    try {
      writeFileSync(join(ROOT, probe), source);
      writeFileSync(join(ROOT, allowed), source);
      const run = spawnSync("npx", ["biome", "lint", "--reporter=json", probe, allowed], {
        cwd: ROOT,
        encoding: "utf8",
        timeout: 120_000,
      });
      const start = run.stdout.indexOf("{");
      expect(start, `biome printed no report: ${run.stderr}`).toBeGreaterThanOrEqual(0);
      const report = JSON.parse(run.stdout.slice(start)) as {
        diagnostics: { category: string; message: string; location: { path: string } }[];
      };
      const found = report.diagnostics.map((d) => ({
        path: d.location.path,
        category: d.category,
        message: d.message,
      }));
      expect(found).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ path: probe, category: "lint/style/noRestrictedImports" }),
          { path: probe, category: "plugin", message: "Role statements belong only in src/platform/db." },
        ]),
      );
      expect(found.filter((d) => d.path === allowed)).toEqual([]);
      expect(run.status).not.toBe(0);
    } finally {
      rmSync(join(ROOT, probe), { force: true });
      rmSync(join(ROOT, allowed), { force: true });
    }
  });
});
