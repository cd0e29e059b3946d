import { execFile, spawn } from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { APPLICATION_INVENTORY } from "../src/modules/inventory.ts";
import {
  everyRowOfPgliteDataDir,
  everyRowOfPostgres,
  relationFilesOfPostgres,
  type TableRows,
} from "../src/platform/db/testing.ts";
import { type SmtpSink, startSmtpSink } from "../src/platform/mail/testing.ts";
import type { AtRestPlan, AtRestResult, ControlMarkers, SecretMarkers } from "./support/at-rest-server.ts";
import { cliEnv, REPO_ROOT } from "./support/cli.ts";
import { DATABASE_KINDS, type EmptyPostgresDatabase, openEmptyPostgresDatabase } from "./support/databases.ts";

/**
 * Issue 3's "done when" (promises E2, L5): a marker written through the services, or through the HTTP API for
 * the accounts, into every column the application's inventory marks as encrypted, into a stored file and into
 * a queued mail appears nowhere at rest: not in a logical dump of the database, not in its raw files, not in
 * pg-boss's rows, not in the file store and not in the logs. Neither do the account's password and the
 * secrets the server hands out (the session cookie, the tokens of mailed links), which are kept only hashed.
 * Each place also holds a control marker written there in plain text on purpose, which the very same search
 * must find: a search that could not find anything would pass without proving anything.
 */

/** The one search used for every place: the marker's UTF-8 bytes anywhere in the haystack. */
function contains(haystack: Buffer, marker: string): boolean {
  return haystack.includes(Buffer.from(marker, "utf8"));
}

/** `mk` and 24 random hex digits: unique to the run, and short of the 32 characters log scrubbing masks. */
const marker = () => `mk${randomBytes(12).toString("hex")}`;
/** The sign-in-code template takes 6 to 8 digits only: eight, for the rarest chance match. */
const digits = () => String(randomInt(10_000_000, 100_000_000));

/**
 * Which markers stand for which encrypted column. A column the inventory encrypts that is missing here fails
 * the coverage test, so a new encrypted column cannot go unchecked. A file's content key is a random key, not
 * caller data: what it protects, the file's content, stands for it.
 */
const WRITERS: Record<string, (s: SecretMarkers, issued: Record<string, string>) => string[]> = {
  "audit_events.personal": (s) => [s.tenantAuditDetail],
  "platform_audit_events.personal": (s) => [s.platformAuditDetail],
  "mail_messages.recipient": (s) => [s.tenantMailLocalPart, s.inviteeLocalPart],
  "mail_messages.data": (s) => [s.tenantMailCode],
  "platform_mail_messages.recipient": (s) => [s.platformMailLocalPart, s.accountLocalPart, s.newAddressLocalPart],
  "platform_mail_messages.data": (s) => [s.platformMailCode],
  "tenant_files.name": (s) => [s.subjectFileName, s.tenantFileName],
  "tenant_files.content_key": (s) => [s.subjectFileContent, s.tenantFileContent],
  "platform_files.name": (s) => [s.platformFileName, s.personFileName],
  "platform_files.content_key": (s) => [s.platformFileContent, s.personFileContent],
  "users.email": (s) => [s.accountLocalPart],
  "account_tokens.email": (s) => [s.newAddressLocalPart],
  "invitations.email": (s) => [s.inviteeLocalPart],
  "sso_configurations.client_secret": (s) => [s.ssoClientSecret],
  "sso_authorization_requests.checks": (s) => [s.ssoChecks],
  // The server chooses the authenticator app's secret and hands it out once: what it handed out is the marker.
  "totp_factors.secret": (_s, issued) => [issued.totpSecret ?? "no TOTP secret was handed out"],
};

const encryptedColumns = () =>
  APPLICATION_INVENTORY.flatMap((module) =>
    module.tables.flatMap((table) =>
      Object.entries(table.columns)
        .filter(([, entry]) => entry.keyScope !== null)
        .map(([column]) => `${table.table}.${column}`),
    ),
  ).sort();

interface Haystack {
  /** Where the bytes come from: "pg_dump", "every row", "data directory", … */
  source: string;
  /** Which file or table, for the report of a leak. */
  label: string;
  bytes: Buffer;
}

/** The places searched, as the issue names them. */
const PLACES = ["logical dump", "raw bytes", "pg-boss rows", "file store", "logs"] as const;
type PlaceName = (typeof PLACES)[number];

/**
 * One place searched: what exactly it is, its haystacks, and the control marker written there in plain text,
 * which each of `controlSources` must yield (a source that could not yield it would prove nothing).
 */
interface Place {
  what: string;
  control: keyof ControlMarkers;
  controlSources: string[];
  haystacks: Haystack[];
}

/** Every regular file under `dir` (recursively), except those under `skip`. */
function filesUnder(source: string, dir: string, skip: string[] = []): Haystack[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name))
    .filter((path) => !skip.some((s) => path.startsWith(`${s}/`)))
    .map((path) => ({ source, label: relative(dir, path), bytes: readFileSync(path) }));
}

const tableHaystacks = (dump: TableRows[]): Haystack[] =>
  dump.map(({ table, rows }) => ({ source: "every row", label: table, bytes: Buffer.from(rows.join("\n"), "utf8") }));

/** Runs the writer process to its end; its standard output and error together are the server's logs. */
async function runWriter(
  planPath: string,
  resultPath: string,
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; logs: Buffer }> {
  const child = spawn(process.execPath, ["test/support/at-rest-server.ts", planPath, resultPath], {
    cwd: REPO_ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const chunks: Buffer[] = [];
  child.stdout.on("data", (chunk: Buffer) => chunks.push(chunk));
  child.stderr.on("data", (chunk: Buffer) => chunks.push(chunk));
  const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
  try {
    const code = await new Promise<number | null>((done, fail) => {
      child.once("error", fail);
      child.once("close", (exitCode) => done(exitCode));
    });
    return { code, logs: Buffer.concat(chunks) };
  } finally {
    clearTimeout(timer);
  }
}

describe.each(DATABASE_KINDS)("no plaintext at rest on %s (E2, L5)", (kind) => {
  let root: string;
  let sink: SmtpSink;
  let postgres: EmptyPostgresDatabase | undefined;
  const secret: SecretMarkers = {
    tenantMailLocalPart: marker(),
    platformMailLocalPart: marker(),
    tenantMailCode: digits(),
    platformMailCode: digits(),
    subjectFileName: marker(),
    subjectFileContent: marker(),
    tenantFileName: marker(),
    tenantFileContent: marker(),
    platformFileName: marker(),
    platformFileContent: marker(),
    personFileName: marker(),
    personFileContent: marker(),
    tenantAuditDetail: marker(),
    platformAuditDetail: marker(),
    jobError: marker(),
    accountLocalPart: marker(),
    newAddressLocalPart: marker(),
    inviteeLocalPart: marker(),
    password: marker(),
    ssoClientSecret: marker(),
    ssoChecks: marker(),
  };
  const control: ControlMarkers = {
    tenantName: marker(),
    singletonKey: marker(),
    blob: marker(),
    requestPath: marker(),
  };
  let result: AtRestResult;
  const places = new Map<PlaceName, Place>();

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), `charter-at-rest-${kind}-`));
    const dataDir = join(root, "data");
    // The platform mail is refused for good, with a reply that quotes its address.
    sink = await startSmtpSink({ reject: [`${secret.platformMailLocalPart}@example.com`] });
    if (kind === "postgres") postgres = await openEmptyPostgresDatabase();
    const plan: AtRestPlan = { secret, control };
    const planPath = join(root, "plan.json");
    const resultPath = join(root, "result.json");
    writeFileSync(planPath, JSON.stringify(plan));
    const env = cliEnv({
      CHARTER_DATA_DIR: dataDir,
      PORT: "0",
      // The most verbose level: personal data must stay out of every log line an operator could turn on.
      LOG_LEVEL: "trace",
      CHARTER_SMTP_URL: `smtp://127.0.0.1:${sink.port}`,
      CHARTER_MAIL_FROM: "Charter <charter@example.com>",
      ...(postgres ? { DATABASE_URL: postgres.url } : {}),
    });
    const { code, logs } = await runWriter(planPath, resultPath, env);
    if (code !== 0) throw new Error(`the writer exited with ${code}:\n${logs.toString("utf8")}`);
    result = JSON.parse(readFileSync(resultPath, "utf8")) as AtRestResult;

    // The raw files first: opening the embedded database for the logical dump writes to them.
    const rawFiles = filesUnder("data directory", dataDir, [join(dataDir, "files")]);
    if (postgres) {
      for (const file of await relationFilesOfPostgres(postgres.url)) {
        rawFiles.push({ source: "relation files", label: file.path, bytes: file.bytes });
      }
    }
    const rows = postgres ? await everyRowOfPostgres(postgres.url) : await everyRowOfPgliteDataDir(dataDir);
    const logical = tableHaystacks(rows);
    if (postgres) {
      const { stdout } = await promisify(execFile)("pg_dump", ["--dbname", postgres.url], {
        encoding: "buffer",
        maxBuffer: 1 << 30,
      });
      logical.push({ source: "pg_dump", label: "pg_dump", bytes: stdout });
    }
    const pgboss = tableHaystacks(rows.filter((t) => t.table.startsWith("pgboss.")));
    places
      .set("logical dump", {
        what: kind === "pglite" ? "every row of every table" : "pg_dump's output and every row of every table",
        control: "tenantName",
        controlSources: kind === "pglite" ? ["every row"] : ["every row", "pg_dump"],
        haystacks: logical,
      })
      .set("raw bytes", {
        what:
          kind === "pglite"
            ? "every file of the data directory outside files/: the embedded database with its WAL, keys/, journal/"
            : "every file of the data directory outside files/, and every relation file PostgreSQL holds",
        control: "tenantName",
        // On PostgreSQL the database is not in the data directory: its keys/ and journal/ are, with nothing plain.
        controlSources: kind === "pglite" ? ["data directory"] : ["relation files"],
        haystacks: rawFiles,
      })
      .set("pg-boss rows", {
        what: "every row of every table in schema pgboss",
        control: "singletonKey",
        controlSources: ["every row"],
        haystacks: pgboss,
      })
      .set("file store", {
        what: "every file under files/",
        control: "blob",
        controlSources: ["file store"],
        haystacks: filesUnder("file store", join(dataDir, "files")),
      })
      .set("logs", {
        what: "the server's stdout and stderr",
        control: "requestPath",
        controlSources: ["logs"],
        haystacks: [{ source: "logs", label: "stdout and stderr", bytes: logs }],
      });
  }, 180_000);

  afterAll(async () => {
    await sink?.close();
    await postgres?.drop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it("writes a marker into every column the inventory marks as encrypted, and reads each back", () => {
    expect(encryptedColumns()).toEqual(Object.keys(WRITERS).sort());
    expect(Object.keys(result.readBack).sort()).toEqual(encryptedColumns());
    for (const [column, markersOf] of Object.entries(WRITERS)) {
      for (const expected of markersOf(secret, result.issued)) {
        expect(
          result.readBack[column]?.some((value) => value.includes(expected)),
          `${column} holds ${expected}`,
        ).toBe(true);
      }
    }
  });

  it("ran the jobs: four deliveries accepted, one refused for good, one handler failed, the control job done", () => {
    expect(result.jobStates).toEqual({
      "mail.deliver": Array(5).fill("completed"),
      "test.at-rest-fails": ["failed"],
      "test.at-rest-control": ["completed"],
    });
    const delivered = [
      secret.tenantMailLocalPart,
      secret.accountLocalPart,
      secret.newAddressLocalPart,
      secret.inviteeLocalPart,
    ].map((localPart) => [`${localPart}@example.com`]);
    expect(sink.received.map((mail) => mail.to).sort()).toEqual(delivered.sort());
    const codeMail = sink.received.find((mail) => mail.to[0] === `${secret.tenantMailLocalPart}@example.com`);
    expect(codeMail?.raw).toContain(secret.tenantMailCode);
    // What pg-boss keeps of the failed attempt is among the rows searched.
    const pgboss = places.get("pg-boss rows")?.haystacks ?? [];
    expect(pgboss.some((h) => contains(h.bytes, "the handler threw Error"))).toBe(true);
  });

  it("searches for each secret the server handed out: a session token, three mailed links' tokens, a TOTP secret", () => {
    const { totpSecret, ...tokens } = result.issued;
    expect(Object.keys(tokens).sort()).toEqual([
      "emailChangeToken",
      "invitationToken",
      "sessionToken",
      "verificationToken",
    ]);
    for (const [name, value] of Object.entries(tokens)) expect(value, name).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(totpSecret).toMatch(/^[A-Z2-7]{32,}$/);
  });

  it.each(PLACES)("finds no secret marker in the %s, and finds the control written there in plain text", (name) => {
    const place = places.get(name);
    if (!place) throw new Error(`the ${name} were not collected`);
    const controlFoundIn = new Set(
      place.haystacks.filter((h) => contains(h.bytes, control[place.control])).map((h) => h.source),
    );
    expect([...controlFoundIn].sort(), `control ${place.control} in ${place.what}`).toEqual(
      [...place.controlSources].sort(),
    );
    const leaks = place.haystacks.flatMap((h) =>
      Object.entries({ ...secret, ...result.issued })
        .filter(([, value]) => contains(h.bytes, value))
        .map(([secretName]) => `${secretName} in ${h.label}`),
    );
    expect(leaks, place.what).toEqual([]);
  });
});
