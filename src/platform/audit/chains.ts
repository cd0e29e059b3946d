import { sql } from "kysely";
import type { Tx } from "../db/index.ts";
import type { JsonObject } from "./canonical.ts";
import type { ActorKind, StoredEvent, Stream } from "./event.ts";
import "./schema.ts";

export interface ChainHead {
  chainId: string;
  /** null for platform chains. */
  tenantId: string | null;
  stream: Stream;
  sequence: number;
  hash: string;
}

/** Every chain head, in one query (one consistent view of all chains), ordered by chain id. */
export async function chainHeads(tx: Tx): Promise<ChainHead[]> {
  const rows = await tx
    .selectFrom("audit_chain_heads")
    .select(["chain_id", "chain_tenant_id", "stream", "sequence", "hash"])
    .orderBy("chain_id")
    .execute();
  return rows.map((r) => ({
    chainId: r.chain_id,
    tenantId: r.chain_tenant_id,
    stream: r.stream,
    sequence: Number(r.sequence),
    hash: r.hash,
  }));
}

/** Where a chain's events are: a tenant's chain in audit_events (read in that tenant's transaction). */
export interface ChainLocation {
  chainId: string;
  tenantId: string | null;
}

interface EventRow {
  id: string;
  chain_id: string;
  seq: number | string;
  v: number;
  stream: Stream;
  at: string;
  actor_kind: ActorKind;
  actor_id: string | null;
  action: string;
  target_type: string;
  target_id: string | null;
  subject_ids: string[];
  details: JsonObject;
  personal: Record<string, string>;
  request_id: string | null;
  cause_kind: string | null;
  cause_id: string | null;
  prev_hash: string;
  hash: string;
}

/**
 * `at` as stored, to the microsecond: an event's time has milliseconds only, so a time edited below the
 * millisecond keeps its extra digits here and no longer matches the hash.
 */
const AT_TEXT = sql.raw(`to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') AS at`);
const COLUMNS = sql.raw(
  "id, chain_id, seq, v, stream, actor_kind, actor_id, action, target_type, target_id, subject_ids, details, " +
    "personal, request_id, cause_kind, cause_id, prev_hash, hash",
);

function toEvent(row: EventRow, tenantId: string | null): StoredEvent {
  const at = row.at.endsWith("000") ? `${row.at.slice(0, -3)}Z` : `${row.at}Z`;
  return {
    v: row.v as 1,
    id: row.id,
    chain: row.chain_id,
    tenant: tenantId,
    stream: row.stream,
    seq: Number(row.seq),
    at,
    actor: { kind: row.actor_kind, id: row.actor_id },
    action: row.action,
    target: { type: row.target_type, id: row.target_id },
    subjects: row.subject_ids,
    details: row.details,
    personal: row.personal,
    request: row.request_id,
    cause: row.cause_kind === null || row.cause_id === null ? null : { kind: row.cause_kind, id: row.cause_id },
    prev: row.prev_hash,
    hash: row.hash,
  };
}

function where(chain: ChainLocation) {
  return chain.tenantId === null
    ? sql`FROM platform_audit_events WHERE chain_id = ${chain.chainId}`
    : sql`FROM audit_events WHERE tenant_id = ${chain.tenantId} AND chain_id = ${chain.chainId}`;
}

async function select(tx: Tx, chain: ChainLocation, condition: ReturnType<typeof sql>, limit: number) {
  const { rows } = await sql<EventRow>`
    SELECT ${COLUMNS}, ${AT_TEXT} ${where(chain)} AND ${condition} ORDER BY seq LIMIT ${limit}`.execute(tx);
  return rows.map((row) => toEvent(row, chain.tenantId));
}

/** The next `limit` events of a chain after sequence `after`, in sequence order (keyset pagination). */
export function eventsAfter(tx: Tx, chain: ChainLocation, after: number, limit: number): Promise<StoredEvent[]> {
  return select(tx, chain, sql`seq > ${after}`, limit);
}

/** The event at a sequence number (the first, if tampering left several). */
export async function eventAt(tx: Tx, chain: ChainLocation, seq: number): Promise<StoredEvent | undefined> {
  return (await select(tx, chain, sql`seq = ${seq}`, 1))[0];
}

/** The event of the chain whose hash (or, with `column: "prev_hash"`, whose previous hash) is `hash`. */
export async function eventByHash(
  tx: Tx,
  chain: ChainLocation,
  column: "hash" | "prev_hash",
  hash: string,
): Promise<StoredEvent | undefined> {
  return (await select(tx, chain, sql`${sql.ref(column)} = ${hash}`, 1))[0];
}

/** Each chain that has events in the table (of one tenant, or the platform's), with its first sequence. */
export async function chainsWithEvents(tx: Tx, tenantId: string | null): Promise<{ chainId: string; first: number }[]> {
  const { rows } = await (tenantId === null
    ? sql<{ chain_id: string; first: number | string }>`
        SELECT chain_id, min(seq) AS first FROM platform_audit_events GROUP BY chain_id`
    : sql<{ chain_id: string; first: number | string }>`
        SELECT chain_id, min(seq) AS first FROM audit_events WHERE tenant_id = ${tenantId} GROUP BY chain_id`
  ).execute(tx);
  return rows.map((r) => ({ chainId: r.chain_id, first: Number(r.first) }));
}
