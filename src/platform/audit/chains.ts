import { sql } from "kysely";
import type { TextRow, TextRows, Tx } from "../db/index.ts";
import { canonicalizeAt, type JsonObject } from "./canonical.ts";
import {
  type ActorKind,
  chainedDigest,
  isHash,
  pairText,
  type StoredEvent,
  type Stream,
  storedEventHash,
  v1Text,
} from "./event.ts";
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

/** The event's time as hashed: milliseconds, or all six digits when the stored time has more. */
const atOf = (text: string) => (text.endsWith("000") ? `${text.slice(0, -3)}Z` : `${text}Z`);

function toEvent(row: EventRow, tenantId: string | null): StoredEvent {
  const at = atOf(row.at);
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

/**
 * The columns of EventRow as text, in this order, for TextRows: the same values the driver parses for
 * `select` (uuid and text as they are, bigint and smallint as decimal, jsonb as JSON, uuid[] as an array
 * literal), read without a row object per event.
 */
const TEXT_COLUMNS =
  "id::text, chain_id, seq::text, v::text, stream, actor_kind, actor_id::text, action, target_type, " +
  "target_id::text, subject_ids::text, details::text, personal::text, request_id, cause_kind, cause_id::text, " +
  `prev_hash, hash, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')`;
const CHAIN = 1;
const SEQ = 2;

/**
 * A uuid[] literal as the driver parses it, for the only form a uuid array has: `{}` or unquoted elements
 * (NULL for a null). Anything else (nested, quoted) gives undefined: the caller reads that event again
 * through the driver rather than guess.
 */
function uuidArray(text: string): (string | null)[] | undefined {
  if (text === "{}") return [];
  if (text.length < 2 || text[0] !== "{" || text[text.length - 1] !== "}") return undefined;
  const inner = text.slice(1, -1);
  if (/[{}"\\\s]/.test(inner)) return undefined;
  return inner.split(",").map((item) => (item === "NULL" ? null : item));
}

/** BIGINT text as the driver reads it (engines.ts): a number, refused beyond the safe range. */
function bigint(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new RangeError(`bigint ${text} exceeds the safe integer range`);
  return n;
}

/**
 * A row of TEXT_COLUMNS as the event `select` gives for it, or undefined where the text is not in the form
 * this reads (then the event is read through the driver instead). Never a different event: a value it
 * cannot take as the driver would is undefined, not guessed.
 */
function textRowEvent(row: TextRow, tenantId: string | null): StoredEvent | undefined {
  const [id, chainId, seq, v, stream, actorKind, actorId, action, targetType, targetId, subjects] = row;
  const [details, personal, requestId, causeKind, causeId, prev, hash, at] = row.slice(11);
  if (row.length !== 19 || seq == null || v == null || subjects == null || details == null) return undefined;
  if (personal == null || at == null) return undefined;
  const subjectIds = uuidArray(subjects);
  if (subjectIds === undefined) return undefined;
  return {
    v: Number.parseInt(v, 10) as 1,
    id: id as string,
    chain: chainId as string,
    tenant: tenantId,
    stream: stream as Stream,
    seq: bigint(seq),
    at: atOf(at),
    actor: { kind: actorKind as ActorKind, id: actorId ?? null },
    action: action as string,
    target: { type: targetType as string, id: targetId ?? null },
    subjects: subjectIds as string[],
    details: JSON.parse(details) as JsonObject,
    personal: JSON.parse(personal) as Record<string, string>,
    request: requestId ?? null,
    cause: causeKind == null || causeId == null ? null : { kind: causeKind, id: causeId },
    prev: prev as string,
    hash: hash as string,
  };
}

/** `{}` or the elements of a uuid[] literal that are all ids: written as the strings they are. */
const ID_LIST = /^\{([0-9a-f-]+(?:,[0-9a-f-]+)*)\}$/;

/** A string column as a member of the event: itself between quotes when nothing in it needs escaping. */
const member = (value: string | null, path: string) => (value === null ? "null" : canonicalizeAt(value, path, 1));

/** A jsonb column's text as a member: `{}` as it is, anything else parsed as the driver parses it. */
const jsonMember = (text: string, path: string) => (text === "{}" ? "{}" : canonicalizeAt(JSON.parse(text), path, 1));

/**
 * storedEventHash(textRowEvent(row), seq), written straight from the columns' text: no event object, the
 * string columns put between quotes as they are when they need no escaping, the subjects' ids joined as
 * they are. Every member's text is the one writeV1 gives for the same value (event.ts: v1Text writes the
 * shape for both; a property test holds the two paths equal); a row this does not take in that form goes
 * the long way. Undefined where the event cannot be hashed or read as the driver would read it.
 */
/**
 * The hash rowHash gave last. The next row of a chain names it as its previous hash, so that one is known to
 * be 64 lower-case hex digits without testing the pattern again (a measurable share of the time per event).
 */
let lastDigest = "";

function rowHash(row: TextRow, tenantId: string | null, seq: number): string | undefined {
  const prev = row[16] as string | null;
  const subjects = row[10] as string | null;
  const details = row[11] as string | null;
  const personal = row[12] as string | null;
  const at = row[18] as string | null;
  if (row.length !== 19 || row[3] !== "1" || (prev !== lastDigest && !isHash(prev))) return longWay(row, tenantId, seq);
  if (subjects === null || details === null || personal === null || at === null) return undefined;
  const ids = subjects === "{}" ? "[]" : ID_LIST.exec(subjects)?.[1];
  if (ids === undefined) return longWay(row, tenantId, seq);
  const causeKind = row[14] as string | null;
  const causeId = row[15] as string | null;
  try {
    const text = v1Text({
      action: member(row[7] as string | null, "$.action"),
      actor: pairText(
        "id",
        member(row[6] as string | null, "$.actor.id"),
        "kind",
        member(row[5] as string | null, "$.actor.kind"),
      ),
      at: member(atOf(at), "$.at"),
      cause:
        causeKind === null || causeId === null
          ? "null"
          : pairText("id", member(causeId, "$.cause.id"), "kind", member(causeKind, "$.cause.kind")),
      chain: member(row[1] as string | null, "$.chain"),
      details: jsonMember(details, "$.details"),
      id: member(row[0] as string | null, "$.id"),
      personal: jsonMember(personal, "$.personal"),
      prev: `"${prev}"`,
      request: member(row[13] as string | null, "$.request"),
      seq: String(seq),
      stream: member(row[4] as string | null, "$.stream"),
      subjects: ids === "[]" ? ids : `["${ids.replaceAll(",", '","')}"]`,
      target: pairText(
        "id",
        member(row[9] as string | null, "$.target.id"),
        "type",
        member(row[8] as string | null, "$.target.type"),
      ),
      tenant: member(tenantId, "$.tenant"),
      v: "1",
    });
    lastDigest = chainedDigest(prev as string, text);
    return lastDigest;
  } catch {
    // Outside the canonical form (a fraction in details): only an edit writes that.
    return undefined;
  }
}

/** rowHash the long way: the event as the driver would give it, hashed as verification hashes events. */
function longWay(row: TextRow, tenantId: string | null, seq: number): string | undefined {
  try {
    const event = textRowEvent(row, tenantId);
    return event && storedEventHash(event, seq);
  } catch {
    // A column that does not parse (jsonb text that is not JSON) or a value outside the canonical form.
    return undefined;
  }
}

/** One row of the stream: where its event sits, its links, and the hash its columns give. */
export class StreamedEvent {
  readonly #row: TextRow;
  readonly #tenantId: string | null;
  readonly chainId: string;
  readonly seq: number;
  constructor(row: TextRow, tenantId: string | null) {
    this.#row = row;
    this.#tenantId = tenantId;
    this.chainId = row[CHAIN] as string;
    this.seq = bigint(row[SEQ] as string);
  }
  /** The stored previous hash (null: a NULL where a hash belongs). */
  get prev(): string | null {
    return this.#row[16] ?? null;
  }
  get hash(): string | null {
    return this.#row[17] ?? null;
  }
  /**
   * The hash this event's columns give at sequence `seq` (storedEventHash of the event the driver would
   * read, at `seq`); undefined when they give none, or are not in a form this reads (then read the event
   * through `eventAt` to know what it holds).
   */
  hashAt(seq: number): string | undefined {
    return rowHash(this.#row, this.#tenantId, seq);
  }
  /** The event as the driver reads it; undefined when the row is not in a form this reads as the driver would. */
  event(): StoredEvent | undefined {
    return textRowEvent(this.#row, this.#tenantId);
  }
}

/**
 * Every event of the tenant set on the transaction (tenantId), or of the platform's table (null), ordered
 * by chain and sequence, one at a time as the database sends them, in one statement: verification's read,
 * with no page boundaries and no row objects. `stream`: only chains of that stream (by chain id).
 */
export function streamEvents(
  textRows: TextRows,
  tenantId: string | null,
  stream: Stream | undefined,
  onEvent: (streamed: StreamedEvent) => void,
): Promise<number> {
  // The stream is one of STREAMS (checked by the caller), so it is safe in the statement's text.
  const where =
    tenantId === null
      ? `FROM platform_audit_events e${stream === undefined ? "" : ` WHERE e.chain_id LIKE 'platform/${stream}/%'`}`
      : "FROM audit_events e WHERE e.tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid" +
        (stream === undefined ? "" : ` AND e.chain_id LIKE '%/${stream}'`);
  // Qualified: unqualified, ORDER BY would take the text output column `seq` (10 before 2).
  return textRows(`SELECT ${TEXT_COLUMNS} ${where} ORDER BY e.chain_id, e.seq`, (row) => {
    onEvent(new StreamedEvent(row, tenantId));
  });
}
