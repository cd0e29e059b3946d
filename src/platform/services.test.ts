import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../test/support/databases.ts";
import { manualClock } from "./clock.ts";
import { openJournal } from "./crypto/journal.ts";
import { MasterKey } from "./crypto/master-key.ts";
import { SigningKey } from "./crypto/signing-key.ts";
import { prepareDataDir } from "./data-dir.ts";
import type { Tx } from "./db/index.ts";
import { FileNotFoundError } from "./files/index.ts";
import { uuidv7 } from "./ids.ts";
import { placeHold } from "./inventory/legal-holds.ts";
import { eventually, memoryLog, queueRows } from "./jobs/testing.ts";
import { type SmtpSink, startSmtpSink } from "./mail/testing.ts";
import { createPlatformServices, PLATFORM_JOBS, type PlatformServices } from "./services.ts";
import { createTenant, type Tenant } from "./tenancy/tenants.ts";

describe.each(DATABASE_KINDS)("platform services wired together on %s", (kind) => {
  let t: TestDatabase;
  let sink: SmtpSink;
  let services: PlatformServices;
  let tenant: Tenant;
  const clock = manualClock("2026-05-04T10:00:00Z");
  const log = memoryLog();
  const dataDir = mkdtempSync(join(tmpdir(), "charter-services-"));

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    sink = await startSmtpSink({ reject: ["gone@example.com"] });
    const signingKey = new SigningKey(generateKeyPairSync("ed25519").privateKey);
    const paths = prepareDataDir(dataDir);
    services = createPlatformServices({
      config: {
        mail: {
          smtp: {
            host: "127.0.0.1",
            port: sink.port,
            secure: false,
            requireTls: false,
            user: undefined,
            password: undefined,
          },
          from: "Charter <charter@example.test>",
        },
      },
      db: t.db,
      clock,
      paths,
      masterKey: new MasterKey(randomBytes(32)),
      journal: openJournal({ dir: paths.journal, signingKey, clock }),
      log,
      jobs: { pollingIntervalSeconds: 0.5, superviseIntervalSeconds: 1, tickIntervalMs: 0 },
    });
    await services.keyRing.ensurePlatformKey();
    await services.jobs.start();
    tenant = await createTenant(
      t.db,
      clock,
      { slug: `s-${uuidv7().slice(-12)}`, name: "Acme" },
      services.keyRing,
      services.audit,
    );
  });
  afterAll(async () => {
    await services?.jobs.stop();
    await sink?.close();
    await t?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  const inTenant = <T>(fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId: tenant.id }, fn);
  const signInCode = (to: string) => ({
    purpose: "security" as const,
    channel: "email" as const,
    to,
    template: "sign-in-code",
    data: { code: "482913", minutes: 10 },
  });

  it("a queued message is delivered over SMTP by the delivery job its transaction enqueued", async () => {
    const subjectId = uuidv7();
    const { ref, status } = await inTenant((tx) =>
      services.mailer.send(tx, { tenantId: tenant.id, subjectId, ...signInCode("ada@example.com") }),
    );
    expect(status).toBe("queued");
    const received = await eventually(async () => sink.received.find((m) => m.to.includes("ada@example.com")));
    expect(received.raw).toContain("482913");
    const jobs = await eventually(async () => {
      const rows = await queueRows(t.db, PLATFORM_JOBS.deliverMail);
      return rows.some((r) => r.state === "completed") && rows;
    });
    // The job carries the message's ids and nothing else.
    expect(jobs.map((j) => j.data)).toContainEqual({ messageId: ref.messageId, tenantId: tenant.id });
  });

  it("a recipient refused for good is not retried: the job completes and the message is recorded as failed", async () => {
    const personId = uuidv7();
    const { ref } = await t.db.withPlatform((tx) =>
      services.mailer.send(tx, { personId, ...signInCode("gone@example.com") }),
    );
    const job = await eventually(async () =>
      (await queueRows(t.db, PLATFORM_JOBS.deliverMail)).find(
        (r) => (r.data as { messageId: string }).messageId === ref.messageId && r.state === "completed",
      ),
    );
    expect(job.retry_count).toBe(0);
    const [row] = (await t.superuser(`SELECT status FROM platform_mail_messages WHERE id = '${ref.messageId}'`)) as {
      status: string;
    }[];
    expect(row?.status).toBe("failed");
  });

  it("the hourly expiry schedule removes expired files at its slot and keeps those a legal hold covers", async () => {
    const { files } = services;
    const heldSubject = uuidv7();
    const put = (subjectId: string) =>
      inTenant((tx) =>
        files.put(
          tx,
          { scope: "subject", tenantId: tenant.id, subjectId },
          { kind: "export", mediaType: "text/csv" },
          Buffer.from("name,email\n"),
        ),
      );
    const expiring = await put(uuidv7());
    const held = await put(heldSubject);
    await inTenant((tx) =>
      placeHold(tx, clock, {
        tenantId: tenant.id,
        scope: "subject",
        subjectId: heldSubject,
        reason: "litigation",
        placedBy: { kind: "system" },
      }),
    );
    const read = (file: typeof expiring) => inTenant((tx) => files.read(tx, { owner: file.owner, id: file.id }));

    const expiryRuns = async (count: number) =>
      eventually(async () => {
        const rows = await queueRows(t.db, PLATFORM_JOBS.expireFiles);
        return rows.length === count && rows.every((r) => r.state === "completed");
      });
    // Exports live seven days (until 10:00). The first tick fires the latest due slot of each schedule (the
    // expiry's at 09:15, the orphan sweep's at 03:30); the expiry runs while the files are still current.
    clock.set("2026-05-11T09:59:00Z");
    expect(await services.jobs.tick()).toMatchObject({ slots: 2 });
    await expiryRuns(1);
    expect((await read(expiring)).content.toString()).toBe("name,email\n");

    clock.set("2026-05-11T10:15:00Z");
    expect(await services.jobs.tick()).toMatchObject({ slots: 1 });
    await expiryRuns(2);
    await expect(read(expiring)).rejects.toThrow(FileNotFoundError);
    expect((await read(held)).content.toString()).toBe("name,email\n");
  });
});
