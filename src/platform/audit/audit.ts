import { sql } from "kysely";
import type { Clock } from "../clock.ts";
import type { KeyOwner, KeyRing } from "../crypto/key-ring.ts";
import type { Database, Tx } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import { canonicalize, type JsonObject } from "./canonical.ts";
import {
  type AuditEvent,
  checkNewEvent,
  EVENT_VERSION,
  eventHash,
  GENESIS_HASH,
  type NewEvent,
  platformChainId,
  type StoredEvent,
  type Stream,
  tenantChainId,
} from "./event.ts";
import "./schema.ts";

/** What a wake-up tells a listener: a chain grew (see onAppend for when it is called). */
export interface Appended {
  tenantId: string | null;
  chainId: string;
  stream: Stream;
  seq: number;
}

export interface Audit {
  /**
   * Appends an event to its chain in the caller's transaction, so it commits or rolls back with the change
   * it records. A tenant event needs a transaction of its tenant (db.withTenant). Personal details are
   * encrypted per subject under that subject's key (tenant events) or person key (platform events); for a
   * subject already erased this throws SubjectErasedError and nothing is written.
   */
  record(tx: Tx, event: NewEvent): Promise<StoredEvent>;
  /**
   * Appends a batch of events to one chain (same tenant and stream; for platform events, the same actor
   * shard) in the caller's transaction, in two statements whatever its size: the head advanced by the
   * batch's length, then every event in one INSERT. Every event is checked before anything is written; one
   * refused event refuses the batch. At most MAX_BATCH events; an empty batch writes nothing. Listeners are
   * woken once, with the batch's last sequence number.
   */
  recordMany(tx: Tx, events: readonly NewEvent[]): Promise<StoredEvent[]>;
  /**
   * Records a denied or failed action on the actor's platform chain, after the current transaction rolls
   * back, in its own short transaction (db.recordOnFailure): the request's own changes are undone, the
   * denial stays. It is written only if the transaction fails, so the caller throws after calling it (as
   * a denial does). Outside a transaction it throws; record it with withPlatform and record() instead.
   */
  recordDenied(event: Omit<NewEvent, "tenantId">): void;
  /**
   * Registers a listener for appends, e.g. a dispatcher that wakes per tenant; returns its removal.
   *
   * A listener is called once the appending transaction has committed (db.afterCommit), once per record or
   * recordMany call, and never for an append that rolled back, so every wake-up names events that other
   * transactions can read. It is still a hint, not a delivery: a process that stops between the commit and
   * the call loses the wake-up, so the dispatcher reads each chain by cursor (seq greater than the last it
   * handled) and also polls on a timer. A listener must not throw; an error it throws is ignored, so it can
   * never turn a committed append into a failure.
   */
  onAppend(listener: (appended: Appended) => void): () => void;
  /** Decrypts the personal details of one subject in an event; DecryptionError once the subject is erased. */
  openPersonal(tx: Tx, event: StoredEvent, subjectId: string): Promise<JsonObject>;
}

export interface AuditOptions {
  db: Database;
  keyRing: Pick<KeyRing, "encrypt" | "decrypt">;
  clock: Clock;
}

const PERSONAL = "personal";
/** Events per recordMany call: 20 parameters per row stay well below PostgreSQL's 65,535 per statement. */
export const MAX_BATCH = 1_000;

function personalBinding(event: { id: string; tenant: string | null }, subjectId: string) {
  return {
    tenantId: event.tenant,
    table: event.tenant === null ? "platform_audit_events" : "audit_events",
    column: PERSONAL,
    // One block per subject: a block moved to another subject's entry, or another event, does not open.
    rowId: `${event.id}/${subjectId}`,
  };
}

function keyOwner(tenantId: string | null, subjectId: string): KeyOwner {
  return tenantId === null ? { scope: "person", personId: subjectId } : { scope: "subject", tenantId, subjectId };
}

export function createAudit(options: AuditOptions): Audit {
  const { db, keyRing, clock } = options;
  const listeners = new Set<(appended: Appended) => void>();

  /**
   * Takes the chain's head row lock (creating the head on first use) and advances it by `count`: returns
   * the first new sequence number and the hash it chains to. The row stays locked until the transaction
   * ends, so a concurrent append to the same chain waits and then continues from this one's committed head:
   * no gaps, commit order. For a tenant chain the statement writes only in a transaction of that tenant.
   */
  async function advance(tx: Tx, chainId: string, tenantId: string | null, stream: Stream, count: number, now: Date) {
    const { rows } = await sql<{ sequence: number | string; hash: string }>`
      INSERT INTO audit_chain_heads AS h (chain_id, chain_tenant_id, stream, sequence, hash, updated_at)
      SELECT ${chainId}, ${tenantId}::uuid, ${stream}, ${count}::bigint, ${GENESIS_HASH}, ${now}
       WHERE ${tenantId}::uuid IS NULL
          OR ${tenantId}::uuid = nullif(current_setting('app.tenant_id', true), '')::uuid
      ON CONFLICT (chain_id) DO UPDATE SET sequence = h.sequence + ${count}::bigint, updated_at = excluded.updated_at
      RETURNING h.sequence, h.hash`.execute(tx);
    const row = rows[0];
    if (!row) throw new TypeError("a tenant's audit events are recorded in a transaction of that tenant (withTenant)");
    // The hash is not in the SET list, so RETURNING gives the head's hash before this append.
    return { first: Number(row.sequence) - count + 1, prev: row.hash };
  }

  async function recordMany(tx: Tx, inputs: readonly NewEvent[]): Promise<StoredEvent[]> {
    if (!Array.isArray(inputs)) throw new TypeError("recordMany takes an array of events");
    if (inputs.length > MAX_BATCH) throw new TypeError(`at most ${MAX_BATCH} events are recorded at once`);
    const events = inputs.map(checkNewEvent);
    const head = events[0];
    if (!head) return [];
    const { tenantId, stream } = head;
    const chainId = tenantId === null ? platformChainId(stream, head.actor) : tenantChainId(tenantId, stream);
    for (const event of events) {
      const other =
        event.tenantId === null
          ? platformChainId(event.stream, event.actor)
          : tenantChainId(event.tenantId, event.stream);
      if (other !== chainId)
        throw new TypeError("the events of one recordMany call go to one chain (tenant and stream)");
    }
    // Encrypted before the chain is locked, so the lock is held for two statements only.
    const sealed: { id: string; personal: Record<string, string> }[] = [];
    for (const event of events) {
      const id = uuidv7(clock.now().getTime());
      const personal: Record<string, string> = {};
      for (const [subjectId, value] of Object.entries(event.personal)) {
        personal[subjectId] = await keyRing.encrypt(
          tx,
          keyOwner(tenantId, subjectId),
          canonicalize(value),
          personalBinding({ id, tenant: tenantId }, subjectId),
        );
      }
      sealed.push({ id, personal });
    }
    const now = clock.now();
    const at = now.toISOString();
    const { first, prev: headHash } = await advance(tx, chainId, tenantId, stream, events.length, now);
    let prev = headHash;
    const stored = events.map((event, i): StoredEvent => {
      const { id, personal } = sealed[i] as (typeof sealed)[number];
      const unhashed: AuditEvent = {
        v: EVENT_VERSION,
        id,
        chain: chainId,
        tenant: tenantId,
        stream,
        seq: first + i,
        at,
        actor: event.actor,
        action: event.action,
        target: event.target,
        subjects: event.subjects as string[],
        details: event.details,
        personal,
        request: event.requestId,
        cause: event.cause,
        prev,
      };
      prev = eventHash(unhashed);
      return { ...unhashed, hash: prev };
    });
    const rows = stored.map((e) => ({
      id: e.id,
      chain_id: chainId,
      seq: e.seq,
      v: EVENT_VERSION,
      stream,
      at: now,
      actor_kind: e.actor.kind,
      actor_id: e.actor.id,
      action: e.action,
      target_type: e.target.type,
      target_id: e.target.id,
      subject_ids: e.subjects,
      details: JSON.stringify(e.details),
      personal: JSON.stringify(e.personal),
      request_id: e.request,
      cause_kind: e.cause?.kind ?? null,
      cause_id: e.cause?.id ?? null,
      prev_hash: e.prev,
      hash: e.hash,
    }));
    // One statement: every event row and the head's new hash.
    if (tenantId === null) {
      await tx
        .with("e", (q) => q.insertInto("platform_audit_events").values(rows).returning("id"))
        .updateTable("audit_chain_heads")
        .set({ hash: prev })
        .where("chain_id", "=", chainId)
        .execute();
    } else {
      await tx
        .with("e", (q) =>
          q
            .insertInto("audit_events")
            .values(rows.map((row) => ({ tenant_id: tenantId, ...row })))
            .returning("id"),
        )
        .updateTable("audit_chain_heads")
        .set({ hash: prev })
        .where("chain_id", "=", chainId)
        .execute();
    }
    if (listeners.size > 0) {
      const appended: Appended = { tenantId, chainId, stream, seq: first + stored.length - 1 };
      db.afterCommit(() => {
        for (const listener of listeners) {
          try {
            listener(appended);
          } catch {
            // A wake-up is a hint (see onAppend): the dispatcher's poll covers one that was lost.
          }
        }
      });
    }
    return stored;
  }

  async function record(tx: Tx, event: NewEvent): Promise<StoredEvent> {
    const [stored] = await recordMany(tx, [event]);
    return stored as StoredEvent;
  }

  return {
    record,
    recordMany,
    recordDenied(event) {
      const platformEvent: NewEvent = { ...event, tenantId: null };
      // Checked now, so a malformed denial fails at the call, not after the rollback.
      checkNewEvent(platformEvent);
      db.recordOnFailure(async (tx) => {
        await record(tx, platformEvent);
      });
    },
    onAppend(listener) {
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
      };
    },
    async openPersonal(tx, event, subjectId) {
      const envelope = event.personal[subjectId.toLowerCase()];
      if (envelope === undefined) throw new TypeError("the event holds no personal details of this subject");
      const text = await keyRing.decrypt(tx, envelope, personalBinding(event, subjectId.toLowerCase()));
      return JSON.parse(text) as JsonObject;
    },
  };
}
