import { sql } from "kysely";
import { type ActorKind, type JsonObject, type Stream, tenantChainId } from "../../platform/audit/index.ts";
import type { Database, Tx } from "../../platform/db/index.ts";
import { decodeCursor, type EventFilters, encodeCursor } from "./filters.ts";

/**
 * Reading the audit log (promise L4): a tenant's events through its own transaction (row-level security), and
 * a person's own security events from the platform chains. Events are listed newest first by id (UUIDv7, so
 * in the order they were made) with keyset pagination on it, which the primary keys serve. What is read is
 * the non-personal part of each event: its `personal` ciphertexts are never selected.
 */

/** An event as the API shows it: every field but the personal ciphertexts and `prev`. */
export interface EventView {
  id: string;
  chain: string;
  stream: Stream;
  seq: number;
  at: string;
  actor: { kind: ActorKind; id: string | null };
  action: string;
  target: { type: string; id: string | null };
  subjects: string[];
  details: JsonObject;
  requestId: string | null;
  cause: { kind: string; id: string } | null;
  hash: string;
}

export interface EventPage {
  items: EventView[];
  nextCursor: string | null;
}

export interface PageRequest {
  cursor?: string | undefined;
  limit: number;
}

/** The columns both event tables share, without `personal`. */
const COLUMNS = [
  "id",
  "chain_id",
  "seq",
  "stream",
  "at",
  "actor_kind",
  "actor_id",
  "action",
  "target_type",
  "target_id",
  "subject_ids",
  "details",
  "request_id",
  "cause_kind",
  "cause_id",
  "hash",
] as const;

interface EventRow {
  id: string;
  chain_id: string;
  seq: number | string;
  stream: Stream;
  at: Date;
  actor_kind: ActorKind;
  actor_id: string | null;
  action: string;
  target_type: string;
  target_id: string | null;
  subject_ids: string[];
  details: JsonObject;
  request_id: string | null;
  cause_kind: string | null;
  cause_id: string | null;
  hash: string;
}

function view(row: EventRow): EventView {
  return {
    id: row.id,
    chain: row.chain_id,
    stream: row.stream,
    seq: Number(row.seq),
    at: row.at.toISOString(),
    actor: { kind: row.actor_kind, id: row.actor_id },
    action: row.action,
    target: { type: row.target_type, id: row.target_id },
    subjects: row.subject_ids,
    details: row.details,
    requestId: row.request_id,
    cause: row.cause_kind === null || row.cause_id === null ? null : { kind: row.cause_kind, id: row.cause_id },
    hash: row.hash,
  };
}

/** One more row than the page is asked for: whether it came tells whether there is a next page. */
function pageOf(rows: readonly EventRow[], limit: number): EventPage {
  const items = rows.slice(0, limit).map(view);
  const last = items.at(-1);
  return { items, nextCursor: rows.length > limit && last ? encodeCursor(last.id) : null };
}

/** The tenant's events matching the filters, newest first, from just below `before` (an event id). */
function tenantQuery(q: Tx, tenantId: string, filters: EventFilters, before: string | undefined, limit: number) {
  let query = q.selectFrom("audit_events").select(COLUMNS).where("tenant_id", "=", tenantId);
  if (filters.stream) query = query.where("chain_id", "=", tenantChainId(tenantId, filters.stream));
  if (filters.actorKind) query = query.where("actor_kind", "=", filters.actorKind);
  if (filters.actorId) query = query.where("actor_id", "=", filters.actorId);
  if (filters.action) query = query.where("action", "=", filters.action);
  // The prefix is a-z, 0-9, - and dots (filters.ts), none of them special to LIKE.
  if (filters.actionPrefix) query = query.where("action", "like", `${filters.actionPrefix}%`);
  if (filters.targetType) query = query.where("target_type", "=", filters.targetType);
  if (filters.targetId) query = query.where("target_id", "=", filters.targetId);
  if (filters.from) query = query.where("at", ">=", filters.from);
  if (filters.to) query = query.where("at", "<", filters.to);
  if (before) query = query.where("id", "<", before);
  return query.orderBy("id", "desc").limit(limit);
}

/** One page of the tenant's events, read as the tenant (row-level security) in one statement. */
export async function tenantEventsPage(
  db: Database,
  tenantId: string,
  filters: EventFilters,
  page: PageRequest,
): Promise<EventPage> {
  const before = decodeCursor(page.cursor);
  const rows = await db.selectAsTenant({ tenantId }, (q) => tenantQuery(q, tenantId, filters, before, page.limit + 1));
  return pageOf(rows as EventRow[], page.limit);
}

/**
 * Every event of the tenant matching the filters, newest first, a page at a time, each page in a short
 * transaction of its own (no transaction stays open while a slow client reads). Events appended meanwhile
 * have newer ids than where the reading started, so they are not part of it: the result is the log as it
 * stood when the first page was read.
 */
export async function* tenantEvents(
  db: Database,
  tenantId: string,
  filters: EventFilters,
  batchSize = 500,
): AsyncGenerator<EventView> {
  let before: string | undefined;
  for (;;) {
    const rows = (await db.selectAsTenant({ tenantId }, (q) =>
      tenantQuery(q, tenantId, filters, before, batchSize),
    )) as EventRow[];
    for (const row of rows) yield view(row);
    const last = rows.at(-1);
    if (!last || rows.length < batchSize) return;
    before = last.id;
  }
}

/**
 * One page of a person's own security events on the platform chains: sign-ins and failed sign-ins on the
 * account, second factors, sessions, resets. An event is theirs when they are among its subjects, its
 * target is their account, or they are its actor (as a user, or as an operator acting under their own id).
 */
export async function userSecurityEventsPage(db: Database, userId: string, page: PageRequest): Promise<EventPage> {
  const before = decodeCursor(page.cursor);
  const rows = await db.withPlatform((tx) => {
    let query = tx
      .selectFrom("platform_audit_events")
      .select(COLUMNS)
      .where("stream", "=", "security")
      .where((eb) =>
        eb.or([
          eb(sql<string[]>`subject_ids`, "@>", sql<string[]>`ARRAY[${userId}]::uuid[]`),
          eb.and([eb("target_type", "=", "user"), eb("target_id", "=", userId)]),
          eb.and([eb("actor_kind", "in", ["user", "operator"]), eb("actor_id", "=", userId)]),
        ]),
      );
    if (before) query = query.where("id", "<", before);
    return query
      .orderBy("id", "desc")
      .limit(page.limit + 1)
      .execute();
  });
  return pageOf(rows as EventRow[], page.limit);
}
