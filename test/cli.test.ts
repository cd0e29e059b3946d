import { randomBytes, randomUUID } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.ts";
import { createTestAudit } from "../src/platform/audit/testing.ts";
import { systemClock } from "../src/platform/clock.ts";
import { openJournal } from "../src/platform/crypto/journal.ts";
import { createKeyRing } from "../src/platform/crypto/key-ring.ts";
import { loadMasterKey } from "../src/platform/crypto/master-key.ts";
import { loadSigningKey } from "../src/platform/crypto/signing-key.ts";
import { prepareDataDir } from "../src/platform/data-dir.ts";
import { openConfiguredDatabase } from "../src/platform/db/index.ts";
import { readMigrations } from "../src/platform/db/migrate.ts";
import { APP_ROLE } from "../src/platform/db/roles.ts";
import { createMailer, platformTemplates } from "../src/platform/mail/index.ts";
import { createTenant } from "../src/platform/tenancy/tenants.ts";
import { giveTenantTableToRuntimeRole } from "./fixtures/unsafe-runtime-role.ts";
import {
  type CharterProcess,
  type CliResult,
  cliEnv,
  freePort,
  runCharter,
  STACK_FRAME,
  spawnCharter,
  waitUntilServing,
} from "./support/cli.ts";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "./support/databases.ts";

const CONTROL_IDS = [
  "db.runtime-role",
  "db.tenancy-catalog",
  "privacy.data-inventory",
  "db.migrations",
  "keys.master-key",
  "keys.master-key-wraps",
  "keys.destruction-journal",
  "tls.settings",
  "audit.chains",
  "audit.checkpoint-store",
  "audit.signing-key",
  "audit.checkpoint-fresh",
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
      // The key that cannot be loaded cannot be checked against the keys it wraps either.
      expect(failed.map((l) => l.id)).toEqual(["keys.master-key", "keys.master-key-wraps"]);
      expect(failed[0]?.line).toContain("mode 0644: group or others can access it");
      expect(failed[1]?.line).toContain("mode 0644");
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

/**
 * `charter mail outbox`: with no CHARTER_SMTP_URL, mail stays in the outbox and this command is how a developer
 * reads it, decrypted. Messages are recorded in-process with the data directory's own keys, then listed by
 * the CLI: opening the database itself, and (PGlite) through the running server's control socket.
 */
describe.each(DATABASE_KINDS)("charter mail outbox on %s", (kind) => {
  let root: string;
  let env: NodeJS.ProcessEnv;
  let postgres: TestDatabase | undefined;
  let server: CharterProcess | undefined;
  const ids: Record<string, string> = {};

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), `charter-mail-${kind}-`));
    if (kind === "postgres") postgres = await openTestDatabase("postgres");
    const vars = {
      CHARTER_DATA_DIR: join(root, "data"),
      PORT: String(await freePort()),
      LOG_LEVEL: "warn",
      ...(postgres?.url ? { DATABASE_URL: postgres.url } : {}),
    };
    env = cliEnv(vars);
    const cfg = loadConfig(vars);
    const paths = prepareDataDir(cfg.dataDir);
    const quiet = () => {};
    const journal = openJournal({ dir: paths.journal, signingKey: loadSigningKey(paths, quiet), clock: systemClock });
    const db = await openConfiguredDatabase(cfg);
    try {
      const keyRing = createKeyRing({
        db,
        masterKey: loadMasterKey(cfg.masterKey, paths, quiet),
        clock: systemClock,
        journal,
      });
      const tenant = await createTenant(
        db,
        systemClock,
        { slug: `mail-${kind}`, name: "Acme" },
        keyRing,
        createTestAudit(db, keyRing),
      );
      const mailer = createMailer({ db, keyRing, clock: systemClock, templates: platformTemplates });
      const code = (value: string) => ({ template: "sign-in-code", data: { code: value, minutes: 10 } });
      const common = { purpose: "security", channel: "email" } as const;
      const toSubject = await db.withTenant({ tenantId: tenant.id }, (tx) =>
        mailer.send(tx, {
          ...common,
          ...code("314159"),
          tenantId: tenant.id,
          subjectId: randomUUID(),
          to: "olga@example.com",
        }),
      );
      const toPerson = await db.withPlatform((tx) =>
        mailer.send(tx, { ...common, ...code("271828"), personId: randomUUID(), to: "pia@example.com" }),
      );
      expect([toSubject.status, toPerson.status]).toEqual(["outbox", "outbox"]);
      ids.subject = toSubject.ref.messageId;
      ids.person = toPerson.ref.messageId;
      ids.tenant = tenant.id;
    } finally {
      await db.close();
    }
  });

  afterAll(async () => {
    server?.kill("SIGKILL");
    await server?.exited.catch(() => undefined);
    await postgres?.close();
    rmSync(root, { recursive: true, force: true });
  });

  function expectOutbox(result: CliResult): void {
    expect(result).toMatchObject({ code: 0, stderr: "" });
    const out = result.stdout;
    expect(out).toMatch(new RegExp(`^\\S+Z  outbox  security  sign-in-code  platform  id ${ids.person}$`, "m"));
    expect(out).toMatch(
      new RegExp(`^\\S+Z  outbox  security  sign-in-code  tenant ${ids.tenant}  id ${ids.subject}$`, "m"),
    );
    expect(out).toContain(
      "  To: pia@example.com\n  Subject: Your Charter sign-in code\n\n    Your sign-in code is 271828.",
    );
    expect(out).toContain(
      "  To: olga@example.com\n  Subject: Your Charter sign-in code\n\n    Your sign-in code is 314159.",
    );
  }

  it("lists the outbox with recipients and messages decrypted, opening the database itself", async () => {
    expectOutbox(await runCharter(["mail", "outbox"], env));
  }, 120_000);

  it("says in its help that it shows mail decrypted, for reading mail on the embedded database", async () => {
    const help = await runCharter(["mail", "outbox", "--help"], env);
    expect(help.code).toBe(0);
    expect(help.stdout.replace(/\s+/g, " ")).toContain(
      "This is how a developer on the embedded database reads mail, so recipients and messages are shown decrypted",
    );
  });

  it("while the server runs (on PGlite it holds the database: the CLI goes through its control socket)", async () => {
    server = spawnCharter(["start"], env);
    await waitUntilServing(`http://127.0.0.1:${env.PORT}/health`, server, 60_000);
    expect(existsSync(join(root, "data", "db.lock"))).toBe(kind === "pglite");
    expectOutbox(await runCharter(["mail", "outbox"], env));
  }, 120_000);
});
