import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readMigrations } from "../src/platform/db/migrate.ts";
import { APP_ROLE } from "../src/platform/db/roles.ts";
import { giveTenantTableToRuntimeRole } from "./fixtures/unsafe-runtime-role.ts";
import { type CliResult, cliEnv, freePort, runCharter, STACK_FRAME } from "./support/cli.ts";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "./support/databases.ts";

const CONTROL_IDS = [
  "db.runtime-role",
  "db.tenancy-catalog",
  "privacy.data-inventory",
  "db.migrations",
  "keys.master-key",
  "tls.settings",
];

/** Doctor's report, one control per line: `PASS  id [promises]  evidence`. */
function doctorLines(result: CliResult): { status: string; id: string; line: string }[] {
  const output = result.code === 0 ? result.stdout : result.stderr;
  return output
    .trimEnd()
    .split("\n")
    .map((line) => {
      const match = /^(PASS|FAIL) {2}(\S+) \[/.exec(line);
      if (!match?.[1] || !match[2]) throw new Error(`not a doctor line: ${line}`);
      return { status: match[1], id: match[2], line };
    });
}

/** One line on stderr, prefixed `charter:`, and no stack trace: how the CLI reports a mistake to fix. */
function expectOneLineError(result: CliResult, ...fragments: string[]): void {
  expect(result.code).not.toBe(0);
  expect(result.code).not.toBeNull();
  const lines = result.stderr.trimEnd().split("\n");
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^charter: /);
  for (const fragment of fragments) expect(lines[0]).toContain(fragment);
  expect(result.stderr).not.toMatch(STACK_FRAME);
}

/**
 * The "done when": `charter doctor` passes on both databases, and fails naming the check when the
 * master key file becomes world-readable or the runtime role becomes unsafe; `start` refuses both.
 * No server runs here, so on PGlite the CLI opens the data directory's database itself.
 */
describe.each(DATABASE_KINDS)("charter migrate, doctor and start on %s", (kind) => {
  let root: string;
  let dataDir: string;
  let env: NodeJS.ProcessEnv;
  let postgres: TestDatabase | undefined;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), `charter-cli-${kind}-`));
    dataDir = join(root, "data");
    if (kind === "postgres") postgres = await openTestDatabase("postgres");
    env = cliEnv({
      CHARTER_DATA_DIR: dataDir,
      PORT: String(await freePort()),
      LOG_LEVEL: "warn",
      ...(postgres?.url ? { DATABASE_URL: postgres.url } : {}),
    });
  });

  afterAll(async () => {
    await postgres?.close();
    rmSync(root, { recursive: true, force: true });
  });

  const keyPath = () => join(dataDir, "keys", "master.key");

  it("migrate on a fresh data directory, then doctor: every control passes", async () => {
    const migrate = await runCharter(["migrate"], env);
    expect(migrate.code).toBe(0);
    expect(migrate.stdout.trim()).toBe(
      kind === "pglite" ? `applied ${readMigrations().length} migrations` : "the database is up to date",
    );
    // The first command on a data directory creates the master key, loudly, as start would.
    expect(migrate.stderr).toContain("generated a new master key");
    expect(existsSync(keyPath())).toBe(true);

    const doctor = await runCharter(["doctor"], env);
    expect(doctor).toMatchObject({ code: 0, stderr: "" });
    const lines = doctorLines(doctor);
    expect(lines.map((l) => l.id)).toEqual(CONTROL_IDS);
    for (const { status, line } of lines) expect(status, line).toBe("PASS");
    expect(lines[0]?.line).toContain(`requests run as ${APP_ROLE}`);
    if (kind === "pglite") expect(existsSync(join(dataDir, "db.lock"))).toBe(false);
  }, 120_000);

  it("a world-readable master key file: start refuses, doctor fails naming keys.master-key", async () => {
    expect(existsSync(keyPath())).toBe(true);
    chmodSync(keyPath(), 0o644);
    try {
      const start = await runCharter(["start"], env);
      expectOneLineError(start, keyPath(), "mode 0644", `chmod 600 ${keyPath()}`);

      const doctor = await runCharter(["doctor"], env);
      expect(doctor.code).not.toBe(0);
      expect(doctor.stdout).toBe("");
      const failed = doctorLines(doctor).filter((l) => l.status === "FAIL");
      expect(failed.map((l) => l.id)).toEqual(["keys.master-key"]);
      expect(failed[0]?.line).toContain("mode 0644: group or others can access it");
    } finally {
      chmodSync(keyPath(), 0o600);
    }
  }, 120_000);

  it("a runtime role that owns a tenant table: doctor fails naming db.runtime-role, start refuses to serve", async () => {
    if (postgres) {
      // Database-local: the roles are shared by every test database on the server, table ownership is not.
      await postgres.superuser(`ALTER TABLE tenant_settings OWNER TO ${APP_ROLE}`);
    } else {
      await giveTenantTableToRuntimeRole(dataDir);
    }

    const doctor = await runCharter(["doctor"], env);
    expect(doctor.code).not.toBe(0);
    const failed = doctorLines(doctor).filter((l) => l.status === "FAIL");
    expect(failed.map((l) => l.id)).toEqual(["db.runtime-role"]);
    expect(failed[0]?.line).toContain(`${APP_ROLE} owns tenant tables: tenant_settings`);

    const start = await runCharter(["start"], env);
    expectOneLineError(
      start,
      `refusing to serve: the runtime role is unsafe: ${APP_ROLE} owns tenant tables: tenant_settings`,
    );
    expect(start.stdout).not.toContain("serving on");
    if (kind === "pglite") expect(existsSync(join(dataDir, "db.lock"))).toBe(false);
  }, 120_000);
});

describe("a mistake to fix prints one line and no stack trace", () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), "charter-cli-mistakes-"));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it("a database URL that is not PostgreSQL", async () => {
    const result = await runCharter(["migrate"], cliEnv({ CHARTER_DATA_DIR: root, DATABASE_URL: "mysql://x/db" }));
    expectOneLineError(result, "DATABASE_URL", "postgres://");
  });

  it("a master key in the environment that is not 32 bytes", async () => {
    const result = await runCharter(["migrate"], cliEnv({ CHARTER_DATA_DIR: root, CHARTER_MASTER_KEY: "short" }));
    expectOneLineError(result, "CHARTER_MASTER_KEY must be 32 bytes");
  });

  it("a TLS key file that does not exist", async () => {
    const keyPath = join(root, "missing-key.pem");
    const env = cliEnv({
      CHARTER_DATA_DIR: root,
      CHARTER_MASTER_KEY: randomBytes(32).toString("base64"),
      CHARTER_TLS_CERT: join(root, "cert.pem"),
      CHARTER_TLS_KEY: keyPath,
    });
    const result = await runCharter(["start"], env);
    expectOneLineError(result, `CHARTER_TLS_KEY ${keyPath} cannot be read (ENOENT)`);
    expect(result.code).toBe(2);
  });

  it("a data directory locked by a live process that is not a server", async () => {
    const dataDir = join(root, "locked");
    const lockPath = join(dataDir, "db.lock");
    // This test process is alive and holds no control socket: a CLI command left running would look so.
    mkdirSync(dataDir, { mode: 0o700 });
    writeFileSync(lockPath, JSON.stringify({ pid: process.pid, since: new Date().toISOString() }));
    const result = await runCharter(["doctor"], cliEnv({ CHARTER_DATA_DIR: dataDir }));
    expectOneLineError(
      result,
      `the embedded database is in use by process ${process.pid} (lock file ${lockPath})`,
      "its control socket does not answer",
    );
    expect(result.code).toBe(2);
    expect(existsSync(lockPath)).toBe(true);
  });
});
