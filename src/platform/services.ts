import type { Config } from "../config.ts";
import { type Audit, createAudit } from "./audit/index.ts";
import type { Clock } from "./clock.ts";
import type { DestructionJournal } from "./crypto/journal.ts";
import { createKeyRing, type KeyRing } from "./crypto/key-ring.ts";
import type { MasterKey } from "./crypto/master-key.ts";
import type { DataDirPaths } from "./data-dir.ts";
import type { Database } from "./db/index.ts";
import {
  type BlobStore,
  createFileStore,
  createLocalBlobStore,
  expirePlatformFiles,
  expireTenantFiles,
  type FileStore,
  sweepOrphanBlobs,
} from "./files/index.ts";
import { createJobs, type JobLog, type Jobs, type JobsOptions, SYSTEM_ACTOR_ID } from "./jobs/index.ts";
import {
  createMailer,
  createSmtpTransport,
  MailDeliveryError,
  type Mailer,
  platformTemplates,
  type TemplateRegistry,
} from "./mail/index.ts";

/** The job kinds the platform itself runs. */
export const PLATFORM_JOBS = {
  deliverMail: "mail.deliver",
  expireFiles: "files.expire",
  sweepOrphanBlobs: "files.sweep-orphans",
} as const;

/** The services every module builds on, wired together once per process. */
export interface PlatformServices {
  keyRing: KeyRing;
  audit: Audit;
  jobs: Jobs;
  mailer: Mailer;
  blobs: BlobStore;
  files: FileStore;
}

export interface PlatformServicesOptions {
  config: Pick<Config, "mail">;
  db: Database;
  clock: Clock;
  paths: DataDirPaths;
  masterKey: MasterKey;
  journal: DestructionJournal;
  log: JobLog;
  /** The mail templates: the platform's own, and the modules' once they have some. Default: the platform's. */
  templates?: TemplateRegistry;
  /** Queue timing, for tests (fast polling, no automatic tick). */
  jobs?: Partial<Pick<JobsOptions, "pollingIntervalSeconds" | "superviseIntervalSeconds" | "tickIntervalMs">>;
}

/**
 * Builds the key ring, the queue, the mailer and the file store, and registers the platform's own job kinds:
 * mail delivery (enqueued with each queued message, in its transaction), the hourly expiry of files and the
 * daily sweep of blobs no row names. Modules define their job kinds on `jobs` before it is started.
 */
export function createPlatformServices(options: PlatformServicesOptions): PlatformServices {
  const { config, db, clock, paths, masterKey, journal } = options;
  const keyRing = createKeyRing({ db, masterKey, clock, journal });
  const audit = createAudit({ db, keyRing, clock });
  const jobs = createJobs({ db, clock, log: options.log, ...options.jobs });
  const smtp = config.mail.smtp;
  const mailer = createMailer({
    db,
    keyRing,
    clock,
    templates: options.templates ?? platformTemplates,
    ...(smtp && {
      transport: createSmtpTransport({ smtp, from: config.mail.from }),
      enqueue: async (tx, ref) => {
        await jobs.send(tx, PLATFORM_JOBS.deliverMail, {
          messageId: ref.messageId,
          ...(ref.tenantId === null ? {} : { tenantId: ref.tenantId }),
        });
      },
    }),
  });
  const blobs = createLocalBlobStore(paths.files);
  const files = createFileStore({ keyRing, clock, blobs });

  jobs.define(PLATFORM_JOBS.deliverMail, async ({ ids }) => {
    const { messageId } = ids;
    if (messageId === undefined) throw new TypeError("a mail delivery job needs a messageId");
    try {
      await mailer.deliver({ tenantId: ids.tenantId ?? null, messageId });
    } catch (error) {
      // A refusal for good is recorded on the message; retrying would only be refused again.
      if (error instanceof MailDeliveryError && error.permanent) return;
      throw error;
    }
  });

  const sweep = { db, clock, blobs, actorId: SYSTEM_ACTOR_ID };
  jobs.define(PLATFORM_JOBS.expireFiles, async (job) => {
    const tenantIds = await job.withPlatform((tx) => tx.selectFrom("tenants").select("id").orderBy("id").execute());
    // Each sweep is idempotent, so a retry after a crash repeats finished tenants harmlessly.
    for (const { id } of tenantIds) await expireTenantFiles(sweep, { tenantId: id });
    await expirePlatformFiles(sweep);
  });
  jobs.schedule(PLATFORM_JOBS.expireFiles, { kind: "hourly", minute: 15 });
  jobs.define(PLATFORM_JOBS.sweepOrphanBlobs, async () => {
    await sweepOrphanBlobs(sweep);
  });
  jobs.schedule(PLATFORM_JOBS.sweepOrphanBlobs, { kind: "daily", at: "03:30" });

  return { keyRing, audit, jobs, mailer, blobs, files };
}
