import { sql } from "kysely";
import { type CopyRows, decodeCopyLine, type TextRow, type Tx } from "../db/index.ts";
import { canonicalizeAt, type JsonObject } from "./canonical.ts";
import { type ActorKind, type StoredEvent, type Stream, storedEventHash } from "./event.ts";
import {
  COLUMN,
  COLUMN_COUNT,
  columnDigits,
  columnEnds,
  columnStart,
  isNull,
  LONG_WAY,
  lineHash,
  plainColumns,
} from "./line-hash.ts";
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
 * The columns streamed for each event, in line-hash.ts's COLUMN order: each as its type's text output (uuid
 * and text as they are, bigint and smallint as decimal, jsonb as jsonb prints it, uuid[] as an array
 * literal, as the driver reads them for `select`), `at` to the microsecond in UTC.
 */
const STREAMED_COLUMNS =
  "id, chain_id, seq, v, stream, actor_kind, actor_id, action, target_type, target_id, subject_ids, details, " +
  `personal, request_id, cause_kind, cause_id, prev_hash, hash, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')`;

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
 * A row of STREAMED_COLUMNS as the event `select` gives for it, or undefined where the text is not in the
 * form this reads (then the event is read through the driver instead). Never a different event: a value it
 * cannot take as the driver would is undefined, not guessed.
 */
function textRowEvent(row: TextRow, tenantId: string | null): StoredEvent | undefined {
  const [id, chainId, seq, v, stream, actorKind, actorId, action, targetType, targetId, subjects] = row;
  const [details, personal, requestId, causeKind, causeId, prev, hash, at] = row.slice(11);
  if (row.length !== COLUMN_COUNT || seq == null || v == null || subjects == null || details == null) return undefined;
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

/** The tenant as the event's `tenant` member is written (its canonical text), kept for the tenant last asked. */
let tenantText: { tenantId: string | null; text: Buffer } = { tenantId: null, text: Buffer.from("null") };
function tenantMember(tenantId: string | null): Buffer {
  if (tenantText.tenantId !== tenantId) {
    tenantText = { tenantId, text: Buffer.from(canonicalizeAt(tenantId, "$.tenant", 1), "utf8") };
  }
  return tenantText.text;
}

/**
 * One row of the stream: where its event sits, its links, and the hash its columns give. It reads the
 * line it was last given, which is the driver's buffer: use it only inside the callback it was handed to,
 * or keep `detached()`. streamEvents hands every row of a stream to one StreamedEvent, moved on with
 * `read` (a small typed array per row would cost more than hashing it).
 */
export class StreamedEvent {
  #line: Buffer;
  readonly #tenantId: string | null;
  /** Where each column ends, when the line needs no decoding (line-hash.ts: plainColumns). */
  readonly #ends = columnEnds();
  #plain = false;
  /** The columns decoded: for any other line, or once the long way needed them. */
  #row: TextRow | undefined;
  #seq = 0;
  constructor(line: Buffer, tenantId: string | null) {
    this.#tenantId = tenantId;
    this.#line = line;
    this.read(line);
  }
  /** Moves this event to the next line of its stream. */
  read(line: Buffer): this {
    this.#line = line;
    this.#row = undefined;
    this.#plain = plainColumns(line, this.#ends);
    const seq = this.#plain ? columnDigits(line, this.#ends, COLUMN.seq) : -1;
    this.#seq = seq >= 0 ? seq : bigint(this.#column(COLUMN.seq) as string);
    return this;
  }
  /** A column's text (null for NULL). */
  #column(column: number): string | null {
    if (!this.#plain) return this.#decoded()[column] ?? null;
    const ends = this.#ends;
    if (isNull(this.#line, ends, column)) return null;
    return this.#line.toString("latin1", columnStart(ends, column), ends[column]);
  }
  /**
   * Whether a column's text is `text`, compared where it lies (the checks of every event, which would
   * otherwise cut three strings from each line).
   */
  #columnIs(column: number, text: string): boolean {
    if (!this.#plain) return this.#decoded()[column] === text;
    const ends = this.#ends;
    const from = columnStart(ends, column);
    if ((ends[column] as number) - from !== text.length || isNull(this.#line, ends, column)) return false;
    for (let i = 0; i < text.length; i++) if (this.#line[from + i] !== text.charCodeAt(i)) return false;
    return true;
  }
  get chainId(): string {
    return this.#column(COLUMN.chain) as string;
  }
  chainIs(chainId: string): boolean {
    return this.#columnIs(COLUMN.chain, chainId);
  }
  get seq(): number {
    return this.#seq;
  }
  /** The stored previous hash (null: a NULL where a hash belongs). */
  get prev(): string | null {
    return this.#column(COLUMN.prev);
  }
  prevIs(hash: string): boolean {
    return this.#columnIs(COLUMN.prev, hash);
  }
  get hash(): string | null {
    return this.#column(COLUMN.hash);
  }
  hashIs(hash: string): boolean {
    return this.#columnIs(COLUMN.hash, hash);
  }
  #decoded(): TextRow {
    this.#row ??= decodeCopyLine(this.#line);
    return this.#row;
  }
  /**
   * The hash this event's columns give at sequence `seq` (storedEventHash of the event the driver would
   * read, at `seq`); undefined when they give none, or are not in a form this reads (then read the event
   * through `eventAt` to know what it holds).
   */
  hashAt(seq: number): string | undefined {
    if (this.#plain) {
      const hash = lineHash(this.#line, this.#ends, tenantMember(this.#tenantId), seq);
      if (hash !== LONG_WAY) return hash;
    }
    try {
      const event = this.event();
      return event && storedEventHash(event, seq);
    } catch {
      // A column that does not parse (jsonb text that is not JSON) or a value outside the canonical form.
      return undefined;
    }
  }
  /** The event as the driver reads it; undefined when the row is not in a form this reads as the driver would. */
  event(): StoredEvent | undefined {
    return textRowEvent(this.#decoded(), this.#tenantId);
  }
  /** The same event on a copy of its line: valid after the callback too. */
  detached(): StreamedEvent {
    return new StreamedEvent(Buffer.from(this.#line), this.#tenantId);
  }
}

/**
 * Every event of the tenant set on the transaction (tenantId), or of the platform's table (null), ordered
 * by chain and sequence, one at a time as the database sends them, in one statement: verification's read,
 * with no page boundaries and no row objects. `stream`: only chains of that stream (by chain id). Each
 * event is valid only inside `onEvent` (see StreamedEvent).
 */
export function streamEvents(
  copyRows: CopyRows,
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
  // Qualified: unqualified, ORDER BY would take the text output column `seq`.
  let event: StreamedEvent | undefined;
  return copyRows(`SELECT ${STREAMED_COLUMNS} ${where} ORDER BY e.chain_id, e.seq`, (line) => {
    if (event === undefined) event = new StreamedEvent(line, tenantId);
    else event.read(line);
    onEvent(event);
  });
}
