/**
 * The writing half of test/encryption-at-rest.test.ts, run as a process of its own so that the logs the test
 * searches are the real ones: everything Charter writes to its standard output and standard error.
 *
 *   node test/support/at-rest-server.ts <plan.json> <result.json>
 *
 * with Charter's configuration in the environment (CHARTER_SMTP_URL pointing at the test's SMTP sink). It
 * starts the server, writes the plan's markers through the platform services, lets the jobs run, reads every
 * encrypted value back, shuts the server down and writes what it read to the result file.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { loadConfig } from "../../src/config.ts";
import { systemClock } from "../../src/platform/clock.ts";
import type { Binding } from "../../src/platform/crypto/envelope.ts";
import type { Tx } from "../../src/platform/db/index.ts";
import { newBlobKey } from "../../src/platform/files/blob-store.ts";
import type { FileOwner } from "../../src/platform/files/index.ts";
import { uuidv7 } from "../../src/platform/ids.ts";
import type { Jobs } from "../../src/platform/jobs/index.ts";
import { eventually } from "../../src/platform/jobs/testing.ts";
import { PLATFORM_JOBS } from "../../src/platform/services.ts";
import { createTenant } from "../../src/platform/tenancy/tenants.ts";
import { startServer } from "../../src/server.ts";

/** Values that must never be stored or logged in plain text; each is unique to one run. */
export interface SecretMarkers {
  /** Local parts of the recipients' addresses (…@example.com). */
  tenantMailLocalPart: string;
  platformMailLocalPart: string;
  /** The sign-in-code template's `code` (digits only, as its schema demands). */
  tenantMailCode: string;
  platformMailCode: string;
  subjectFileName: string;
  subjectFileContent: string;
  tenantFileName: string;
  tenantFileContent: string;
  platformFileName: string;
  platformFileContent: string;
  personFileName: string;
  personFileContent: string;
  /** Personal details of an audit event, on a tenant chain (subject key) and a platform chain (person key). */
  tenantAuditDetail: string;
  platformAuditDetail: string;
  /** Quoted by a failing job handler's error message, as a handler's error may quote what it worked on. */
  jobError: string;
}

/** Values written in plain text on purpose, one per place searched: the positive controls. */
export interface ControlMarkers {
  /** The tenant's name (a plain-text column): the database places. */
  tenantName: string;
  /** A job's singleton key, which pg-boss keeps as it is: pg-boss's rows. */
  singletonKey: string;
  /** A blob put into the blob store as it is: the file store. */
  blob: string;
  /** A request path, which the request log keeps: the logs. */
  requestPath: string;
}

export interface AtRestPlan {
  secret: SecretMarkers;
  control: ControlMarkers;
}

export interface AtRestResult {
  /** Each encrypted column written (`table.column`) → what was decrypted from it after the jobs ran. */
  readBack: Record<string, string[]>;
  /** The final pg-boss state of each job the run enqueued, by job kind. */
  jobStates: Record<string, string[]>;
}

/** Job kinds of this run only: one whose handler fails quoting a marker, one that carries the control key. */
const FAILING_JOB = "test.at-rest-fails";
const CONTROL_JOB = "test.at-rest-control";

const address = (localPart: string) => `${localPart}@example.com`;

async function main(planPath: string, resultPath: string): Promise<void> {
  const plan = JSON.parse(readFileSync(planPath, "utf8")) as AtRestPlan;
  const { secret, control } = plan;
  const defineJobs = (jobs: Jobs) => {
    jobs.define(
      FAILING_JOB,
      async () => {
        throw new Error(`could not process the record of ${secret.jobError}`);
      },
      { retryLimit: 0 },
    );
    jobs.define(CONTROL_JOB, async () => {});
  };
  const server = await startServer(loadConfig(process.env), { defineJobs });
  try {
    const { db, services } = server;
    const { keyRing, audit, mailer, files, jobs, blobs } = services;
    const clock = systemClock;
    const tenant = await createTenant(
      db,
      clock,
      { slug: `at-rest-${uuidv7().slice(-12)}`, name: control.tenantName },
      keyRing,
      audit,
    );
    const tenantId = tenant.id;
    const subjectId = uuidv7();
    const personId = uuidv7();
    const text = (marker: string) => Buffer.from(`a note about ${marker}, kept in the file store\n`);
    const note = { kind: "attachment", mediaType: "text/plain" } as const;

    const owners: Record<"subject" | "tenant" | "platform" | "person", FileOwner> = {
      subject: { scope: "subject", tenantId, subjectId },
      tenant: { scope: "tenant", tenantId },
      platform: { scope: "platform" },
      person: { scope: "person", personId },
    };
    const tenantWrites = await db.withTenant({ tenantId }, async (tx) => {
      const mail = await mailer.send(tx, {
        tenantId,
        subjectId,
        purpose: "transactional",
        channel: "email",
        to: address(secret.tenantMailLocalPart),
        template: "sign-in-code",
        data: { code: secret.tenantMailCode, minutes: 10 },
      });
      const subjectFile = await files.put(
        tx,
        owners.subject,
        { ...note, name: secret.subjectFileName },
        text(secret.subjectFileContent),
      );
      const tenantFile = await files.put(
        tx,
        owners.tenant,
        { ...note, name: secret.tenantFileName },
        text(secret.tenantFileContent),
      );
      const event = await audit.record(tx, {
        tenantId,
        stream: "changes",
        actor: { kind: "system", id: null },
        action: "record.updated",
        target: { type: "contact", id: subjectId },
        subjects: [subjectId],
        details: { fields: ["note"] },
        personal: { [subjectId]: { note: secret.tenantAuditDetail } },
      });
      return { mail, subjectFile, tenantFile, event };
    });
    const platformWrites = await db.withPlatform(async (tx) => {
      const mail = await mailer.send(tx, {
        personId,
        purpose: "security",
        channel: "email",
        to: address(secret.platformMailLocalPart),
        template: "sign-in-code",
        data: { code: secret.platformMailCode, minutes: 10 },
      });
      const platformFile = await files.put(
        tx,
        owners.platform,
        { ...note, name: secret.platformFileName },
        text(secret.platformFileContent),
      );
      const personFile = await files.put(
        tx,
        owners.person,
        { ...note, name: secret.personFileName },
        text(secret.personFileContent),
      );
      await jobs.send(tx, FAILING_JOB, { personId });
      await jobs.send(tx, CONTROL_JOB, {}, { singletonKey: control.singletonKey });
      const event = await audit.record(tx, {
        tenantId: null,
        stream: "security",
        actor: { kind: "user", id: personId },
        action: "auth.profile-changed",
        target: { type: "user", id: personId },
        subjects: [personId],
        personal: { [personId]: { note: secret.platformAuditDetail } },
      });
      return { mail, platformFile, personFile, event };
    });
    if (tenantWrites.mail.status !== "queued" || platformWrites.mail.status !== "queued") {
      throw new Error("with CHARTER_SMTP_URL set, both messages should be queued for delivery");
    }
    await blobs.put(newBlobKey(), Buffer.from(`plain text ${control.blob}\n`));
    // Whatever the answer, the request log names the path.
    await (await fetch(`${server.url}/${control.requestPath}`)).arrayBuffer();

    // Every job this run enqueued reaches a final state: both deliveries (one accepted, one refused for good
    // by the SMTP server), the failing job and the control job.
    const kinds = [PLATFORM_JOBS.deliverMail, FAILING_JOB, CONTROL_JOB];
    const jobStates = await eventually(async () => {
      const rows = (await db.queueSql("SELECT name, state FROM pgboss.job WHERE name = ANY($1::text[])", [kinds])) as {
        name: string;
        state: string;
      }[];
      const final = rows.length === 4 && rows.every((r) => r.state === "completed" || r.state === "failed");
      if (!final) return undefined;
      return Object.fromEntries(
        [...Map.groupBy(rows, (r) => r.name)].map(([name, jobs]) => [name, jobs.map((j) => j.state).sort()]),
      );
    }, 30_000);

    const readBack: Record<string, string[]> = {};
    const record = (column: string, value: string) => {
      readBack[column] = [...(readBack[column] ?? []), value];
    };
    const decryptColumns = async (
      tx: Tx,
      table: "mail_messages" | "platform_mail_messages",
      id: string,
      bindingTenant: string | null,
    ) => {
      const row = await (table === "mail_messages"
        ? tx
            .selectFrom("mail_messages")
            .select(["recipient", "data"])
            .where("tenant_id", "=", tenantId)
            .where("id", "=", id)
        : tx.selectFrom("platform_mail_messages").select(["recipient", "data"]).where("id", "=", id)
      ).executeTakeFirstOrThrow();
      for (const column of ["recipient", "data"] as const) {
        const envelope = row[column];
        if (envelope === null) continue;
        const binding: Binding = { tenantId: bindingTenant, table, column, rowId: id };
        record(`${table}.${column}`, await keyRing.decrypt(tx, envelope, binding));
      }
    };
    const readFile = async (tx: Tx, owner: FileOwner, id: string, table: "tenant_files" | "platform_files") => {
      const { file, content } = await files.read(tx, { owner, id });
      if (file.name !== null) record(`${table}.name`, file.name);
      // The content key protects the content: what it opens is what the column stands for.
      record(`${table}.content_key`, content.toString("utf8"));
    };
    await db.withTenant({ tenantId }, async (tx) => {
      await decryptColumns(tx, "mail_messages", tenantWrites.mail.ref.messageId, tenantId);
      await readFile(tx, owners.subject, tenantWrites.subjectFile.id, "tenant_files");
      await readFile(tx, owners.tenant, tenantWrites.tenantFile.id, "tenant_files");
      const personal = await audit.openPersonal(tx, tenantWrites.event, subjectId);
      record("audit_events.personal", String(personal.note));
    });
    await db.withPlatform(async (tx) => {
      await decryptColumns(tx, "platform_mail_messages", platformWrites.mail.ref.messageId, null);
      await readFile(tx, owners.platform, platformWrites.platformFile.id, "platform_files");
      await readFile(tx, owners.person, platformWrites.personFile.id, "platform_files");
      const personal = await audit.openPersonal(tx, platformWrites.event, personId);
      record("platform_audit_events.personal", String(personal.note));
    });
    const result: AtRestResult = { readBack, jobStates };
    writeFileSync(resultPath, JSON.stringify(result));
  } finally {
    await server.shutdown();
  }
}

const [planPath, resultPath] = process.argv.slice(2);
if (!planPath || !resultPath) {
  process.stderr.write("usage: node test/support/at-rest-server.ts <plan.json> <result.json>\n");
  process.exit(2);
}
await main(planPath, resultPath);
