import type { Clock } from "../clock.ts";
import type { Database } from "../db/index.ts";
import { isUuid } from "../ids.ts";
import { isHeld } from "../inventory/legal-holds.ts";
import type { BlobStore } from "./blob-store.ts";
import "./schema.ts";

/**
 * The file store's sweeps, for scheduled jobs: expired and deleted files go (their rows, then their
 * blobs), and blobs that no row names (a put whose transaction rolled back, a crash between a row's
 * deletion and its blob's) are removed once old enough.
 */

export interface SweepDeps {
  db: Database;
  clock: Clock;
  blobs: BlobStore;
  /** Who the sweep's transactions act for: the jobs' system actor when a job runs it. */
  actorId?: string;
}

export interface ExpiryReport {
  /** Files whose row and blob were removed. */
  removed: number;
  /** Files due for removal that a legal hold keeps. */
  held: number;
  /** Removed files whose blob was already gone. */
  blobsMissing: number;
}

const DEFAULT_LIMIT = 500;

function checkLimit(limit: number): void {
  if (!Number.isSafeInteger(limit) || limit < 1) throw new TypeError("limit must be a positive integer");
}

/**
 * Removes up to `limit` of one tenant's files that expired or were deleted, as of the clock's now, except
 * those a legal hold keeps (on the tenant, on the file's subject, or on the record type tenant_files):
 * those stay, row and blob, and are counted as held. Each page of rows goes in its own short transaction;
 * the blobs go after it commits, so a failure between the two leaves an orphan blob, never a row without
 * its content.
 */
export async function expireTenantFiles(
  deps: SweepDeps,
  options: { tenantId: string; limit?: number },
): Promise<ExpiryReport> {
  const { tenantId, limit = DEFAULT_LIMIT } = options;
  if (!isUuid(tenantId)) throw new TypeError("tenantId must be a UUID");
  checkLimit(limit);
  const now = deps.clock.now();
  const report: ExpiryReport = { removed: 0, held: 0, blobsMissing: 0 };
  let after: string | undefined;
  while (report.removed < limit) {
    const pageSize = limit - report.removed;
    const page = await deps.db.withTenant({ tenantId, actorId: deps.actorId }, async (tx) => {
      const due = await tx
        .selectFrom("tenant_files")
        .select(["id", "subject_id"])
        .where("tenant_id", "=", tenantId)
        .where((eb) => eb.or([eb("expires_at", "<=", now), eb("deleted_at", "is not", null)]))
        .$if(after !== undefined, (q) => q.where("id", ">", after as string))
        .orderBy("id")
        .limit(pageSize)
        .execute();
      if (due.length === 0) return { scanned: 0, last: undefined, held: 0, blobKeys: [] };
      const last = (due.at(-1) as { id: string }).id;
      if (await isHeld(tx, { tenantId, recordType: "tenant_files" }, now)) {
        return { scanned: due.length, last, held: due.length, blobKeys: [] };
      }
      const heldSubjects = new Set<string>();
      for (const subjectId of new Set(due.flatMap((row) => (row.subject_id === null ? [] : [row.subject_id])))) {
        if (await isHeld(tx, { tenantId, subjectId }, now)) heldSubjects.add(subjectId);
      }
      const free = due.filter((row) => row.subject_id === null || !heldSubjects.has(row.subject_id));
      const removed =
        free.length === 0
          ? []
          : await tx
              .deleteFrom("tenant_files")
              .where("tenant_id", "=", tenantId)
              .where(
                "id",
                "in",
                free.map((row) => row.id),
              )
              .returning("blob_key")
              .execute();
      return {
        scanned: due.length,
        last,
        held: due.length - free.length,
        blobKeys: removed.map((row) => row.blob_key),
      };
    });
    report.held += page.held;
    await removeBlobs(deps.blobs, page.blobKeys, report);
    if (page.scanned < pageSize) break;
    after = page.last;
  }
  return report;
}

/**
 * Removes up to `limit` platform and person files that expired or were deleted. Legal holds are placed
 * within a tenant and cover tenant data only, so none applies here.
 */
export async function expirePlatformFiles(deps: SweepDeps, options: { limit?: number } = {}): Promise<ExpiryReport> {
  const { limit = DEFAULT_LIMIT } = options;
  checkLimit(limit);
  const now = deps.clock.now();
  const blobKeys = await deps.db.withPlatform(
    async (tx) => {
      const due = tx
        .selectFrom("platform_files")
        .select("id")
        .where((eb) => eb.or([eb("expires_at", "<=", now), eb("deleted_at", "is not", null)]))
        .orderBy("id")
        .limit(limit);
      const removed = await tx.deleteFrom("platform_files").where("id", "in", due).returning("blob_key").execute();
      return removed.map((row) => row.blob_key);
    },
    { actorId: deps.actorId },
  );
  const report: ExpiryReport = { removed: 0, held: 0, blobsMissing: 0 };
  await removeBlobs(deps.blobs, blobKeys, report);
  return report;
}

async function removeBlobs(blobs: BlobStore, keys: string[], report: ExpiryReport): Promise<void> {
  for (const key of keys) {
    report.removed += 1;
    if (!(await blobs.delete(key))) report.blobsMissing += 1;
  }
}

export interface OrphanReport {
  /** Blobs no file row names, removed. */
  removed: number;
  /** Writes left incomplete by a crash, discarded. */
  incomplete: number;
}

const ORPHAN_BATCH = 500;

/**
 * Removes up to `limit` blobs that no row of platform_files or any tenant's tenant_files names, among
 * those written more than `minAgeMs` before the clock's now (default one day), and discards incomplete
 * writes as old. The age is what makes this safe: a blob is written before its row's transaction commits,
 * so a younger blob may belong to a transaction still running. The blob store's times come from its own
 * clock (the file system's), so the age should dwarf any skew.
 */
export async function sweepOrphanBlobs(
  deps: SweepDeps,
  options: { minAgeMs?: number; limit?: number } = {},
): Promise<OrphanReport> {
  const { minAgeMs = 86_400_000, limit = 10_000 } = options;
  checkLimit(limit);
  if (!Number.isSafeInteger(minAgeMs) || minAgeMs < 0) throw new TypeError("minAgeMs must be a non-negative integer");
  const cutoff = new Date(deps.clock.now().getTime() - minAgeMs);
  const report: OrphanReport = { removed: 0, incomplete: await deps.blobs.discardIncomplete(cutoff) };

  let batch: string[] = [];
  const settle = async () => {
    const named = await namedBlobs(deps.db, batch);
    for (const key of batch) {
      if (report.removed >= limit) break;
      if (!named.has(key) && (await deps.blobs.delete(key))) report.removed += 1;
    }
    batch = [];
  };
  for await (const { key, writtenAt } of deps.blobs.list()) {
    if (writtenAt >= cutoff) continue;
    batch.push(key);
    if (batch.length === ORPHAN_BATCH) await settle();
    if (report.removed >= limit) return report;
  }
  if (batch.length > 0) await settle();
  return report;
}

/** Which of `keys` a file row names, in one snapshot of the platform and every tenant. */
async function namedBlobs(db: Database, keys: string[]): Promise<Set<string>> {
  return db.withSnapshot(async (snapshot) => {
    const named = new Set<string>();
    const platform = await snapshot.tx
      .selectFrom("platform_files")
      .select("blob_key")
      .where("blob_key", "in", keys)
      .execute();
    for (const row of platform) named.add(row.blob_key);
    await snapshot.forEachTenant(async (tenantId, tx) => {
      const rows = await tx
        .selectFrom("tenant_files")
        .select("blob_key")
        .where("tenant_id", "=", tenantId)
        .where("blob_key", "in", keys)
        .execute();
      for (const row of rows) named.add(row.blob_key);
    });
    return named;
  });
}
