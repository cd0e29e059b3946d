import type { Selectable } from "kysely";
import type { Clock } from "../clock.ts";
import type { Tx } from "../db/index.ts";
import type { LegalHoldsTable } from "../db/schema.ts";
import { isUuid, uuidv7 } from "../ids.ts";

/**
 * Legal holds (P4, P9): while one covers data, erasure, key destruction, retention sweeps and file expiry
 * keep it. A hold covers the whole tenant, one CRM subject, or one record type (an inventory table name).
 */

export type HoldScope =
  | { scope: "tenant" }
  | { scope: "subject"; subjectId: string }
  | { scope: "record-type"; recordType: string };

/** Who placed a hold: a membership, an API key, a platform operator, or the system (which may have no id). */
export type HoldPlacer = { kind: "user" | "api-key" | "operator"; id: string } | { kind: "system"; id?: string };

export type NewLegalHold = HoldScope & {
  tenantId: string;
  reason: string;
  placedBy: HoldPlacer;
  expiresAt?: Date | null;
};

export type LegalHold = HoldScope & {
  tenantId: string;
  id: string;
  reason: string;
  placedBy: HoldPlacer;
  placedAt: Date;
  expiresAt: Date | null;
  releasedAt: Date | null;
};

/** What is about to be destroyed: a subject's data, rows of a record type, or both. */
export interface HoldQuery {
  tenantId: string;
  subjectId?: string;
  recordType?: string;
}

const RECORD_TYPE = /^[a-z][a-z0-9_]{0,62}$/;

function checkUuid(name: string, value: string): void {
  if (!isUuid(value)) throw new TypeError(`${name} must be a UUID, got "${value}"`);
}

/** Places a hold in the tenant of `tx`; it covers data from now until released or expired. */
export async function placeHold(tx: Tx, clock: Clock, hold: NewLegalHold): Promise<LegalHold> {
  const now = clock.now();
  const reason = hold.reason.trim();
  if (reason.length === 0 || reason.length > 2000) throw new TypeError("a hold needs a reason of 1 to 2000 characters");
  if (hold.scope === "subject") checkUuid("subjectId", hold.subjectId);
  if (hold.scope === "record-type" && !RECORD_TYPE.test(hold.recordType)) {
    throw new TypeError(`recordType must be a table name, got "${hold.recordType}"`);
  }
  if (hold.placedBy.kind !== "system") checkUuid("placedBy.id", hold.placedBy.id);
  const expiresAt = hold.expiresAt ?? null;
  if (expiresAt && expiresAt <= now) throw new TypeError("a hold cannot expire before it is placed");
  const row = await tx
    .insertInto("legal_holds")
    .values({
      tenant_id: hold.tenantId,
      id: uuidv7(now.getTime()),
      scope: hold.scope,
      subject_id: hold.scope === "subject" ? hold.subjectId : null,
      record_type: hold.scope === "record-type" ? hold.recordType : null,
      reason,
      placed_by_kind: hold.placedBy.kind,
      placed_by_id: hold.placedBy.id ?? null,
      placed_at: now,
      expires_at: expiresAt,
      released_at: null,
    })
    .returningAll()
    .executeTakeFirstOrThrow();
  return toHold(row);
}

/** Releases a hold; returns it, or undefined when there is no such hold or it was already released. */
export async function releaseHold(
  tx: Tx,
  clock: Clock,
  target: { tenantId: string; id: string },
): Promise<LegalHold | undefined> {
  const row = await tx
    .updateTable("legal_holds")
    .set({ released_at: clock.now() })
    .where("tenant_id", "=", target.tenantId)
    .where("id", "=", target.id)
    .where("released_at", "is", null)
    .returningAll()
    .executeTakeFirst();
  return row && toHold(row);
}

/**
 * Whether a hold in force at `at` covers what is about to be destroyed: a hold on the whole tenant, on the
 * subject, or on the record type. Key destruction and file expiry call this before they act.
 */
export async function isHeld(tx: Tx, query: HoldQuery, at: Date): Promise<boolean> {
  const row = await tx
    .selectFrom("legal_holds")
    .select("id")
    .where("tenant_id", "=", query.tenantId)
    .where("placed_at", "<=", at)
    .where((eb) => eb.or([eb("released_at", "is", null), eb("released_at", ">", at)]))
    .where((eb) => eb.or([eb("expires_at", "is", null), eb("expires_at", ">", at)]))
    .where((eb) => {
      const covers = [eb("scope", "=", "tenant")];
      if (query.subjectId !== undefined) {
        covers.push(eb.and([eb("scope", "=", "subject"), eb("subject_id", "=", query.subjectId)]));
      }
      if (query.recordType !== undefined) {
        covers.push(eb.and([eb("scope", "=", "record-type"), eb("record_type", "=", query.recordType)]));
      }
      return eb.or(covers);
    })
    .limit(1)
    .executeTakeFirst();
  return row !== undefined;
}

function toHold(row: Selectable<LegalHoldsTable>): LegalHold {
  const scope: HoldScope =
    row.scope === "subject"
      ? { scope: "subject", subjectId: row.subject_id as string }
      : row.scope === "record-type"
        ? { scope: "record-type", recordType: row.record_type as string }
        : { scope: "tenant" };
  const placedBy: HoldPlacer =
    row.placed_by_kind === "system"
      ? row.placed_by_id === null
        ? { kind: "system" }
        : { kind: "system", id: row.placed_by_id }
      : { kind: row.placed_by_kind, id: row.placed_by_id as string };
  return {
    ...scope,
    tenantId: row.tenant_id,
    id: row.id,
    reason: row.reason,
    placedBy,
    placedAt: row.placed_at,
    expiresAt: row.expires_at,
    releasedAt: row.released_at,
  };
}
