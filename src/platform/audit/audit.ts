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
   * Records a denied or failed action on the actor's platform chain, after the current transaction rolls
   * back, in its own short transaction (db.recordOnFailure): the request's own changes are undone, the
   * denial stays. It is written only if the transaction fails, so the caller throws after calling it (as
   * a denial does). Outside a transaction it throws; record it with withPlatform and record() instead.
   */
  recordDenied(event: Omit<NewEvent, "tenantId">): void;
  /**
   * Registers a listener for appends, e.g. a dispatcher that wakes per tenant; returns its removal.
   *
   * The database offers no commit hook, so the listener is called right after the append, inside the
   * appending transaction, which may still roll back or not have committed yet. A call is therefore a hint,
   * never a delivery: the dispatcher reads the chain by cursor (seq greater than the last it handled) in a
   * transaction of its own, where only committed events are visible, and also polls on a timer, since a
   * wake-up can arrive before the commit it announces is visible. A listener must not throw and must not
   * use the database synchronously; an error it throws is ignored, so it can never break an append.
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
   * Takes the chain's head row lock (creating the head on first use) and advances it: returns the new
   * sequence and the previous hash. The row stays locked until the transaction ends, so a concurrent append
   * to the same chain waits and then continues from this one's committed head: no gaps, commit order.
   * For a tenant chain the statement writes only in a transaction of that tenant.
   */
  async function advance(tx: Tx, chainId: string, tenantId: string | null, stream: Stream, now: Date) {
    const { rows } = await sql<{ sequence: number | string; hash: string }>`
      INSERT INTO audit_chain_heads AS h (chain_id, chain_tenant_id, stream, sequence, hash, updated_at)
      SELECT ${chainId}, ${tenantId}::uuid, ${stream}, 1, ${GENESIS_HASH}, ${now}
       WHERE ${tenantId}::uuid IS NULL
          OR ${tenantId}::uuid = nullif(current_setting('app.tenant_id', true), '')::uuid
      ON CONFLICT (chain_id) DO UPDATE SET sequence = h.sequence + 1, updated_at = excluded.updated_at
      RETURNING h.sequence, h.hash`.execute(tx);
    const row = rows[0];
    if (!row) throw new TypeError("a tenant's audit events are recorded in a transaction of that tenant (withTenant)");
    return { seq: Number(row.sequence), prev: row.hash };
  }

  async function record(tx: Tx, input: NewEvent): Promise<StoredEvent> {
    const event = checkNewEvent(input);
    const { tenantId, stream } = event;
    const id = uuidv7(clock.now().getTime());
    const chainId = tenantId === null ? platformChainId(stream, event.actor) : tenantChainId(tenantId, stream);
    // Encrypted before the chain is locked, so the lock is held for two statements only.
    const personal: Record<string, string> = {};
    for (const [subjectId, value] of Object.entries(event.personal)) {
      personal[subjectId] = await keyRing.encrypt(
        tx,
        keyOwner(tenantId, subjectId),
        canonicalize(value),
        personalBinding({ id, tenant: tenantId }, subjectId),
      );
    }
    const now = clock.now();
    const { seq, prev } = await advance(tx, chainId, tenantId, stream, now);
    const unhashed: AuditEvent = {
      v: EVENT_VERSION,
      id,
      chain: chainId,
      tenant: tenantId,
      stream,
      seq,
      at: now.toISOString(),
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
    const stored: StoredEvent = { ...unhashed, hash: eventHash(unhashed) };
    const columns = {
      id,
      chain_id: chainId,
      seq,
      v: EVENT_VERSION,
      stream,
      at: now,
      actor_kind: stored.actor.kind,
      actor_id: stored.actor.id,
      action: stored.action,
      target_type: stored.target.type,
      target_id: stored.target.id,
      subject_ids: stored.subjects,
      details: JSON.stringify(stored.details),
      personal: JSON.stringify(personal),
      request_id: stored.request,
      cause_kind: stored.cause?.kind ?? null,
      cause_id: stored.cause?.id ?? null,
      prev_hash: prev,
      hash: stored.hash,
    };
    // One statement: the event row and the head's new hash.
    if (tenantId === null) {
      await tx
        .with("e", (q) => q.insertInto("platform_audit_events").values(columns).returning("id"))
        .updateTable("audit_chain_heads")
        .set({ hash: stored.hash })
        .where("chain_id", "=", chainId)
        .execute();
    } else {
      await tx
        .with("e", (q) =>
          q
            .insertInto("audit_events")
            .values({ tenant_id: tenantId, ...columns })
            .returning("id"),
        )
        .updateTable("audit_chain_heads")
        .set({ hash: stored.hash })
        .where("chain_id", "=", chainId)
        .execute();
    }
    for (const listener of listeners) {
      try {
        listener({ tenantId, chainId, stream, seq });
      } catch {
        // A wake-up is a hint (see onAppend): the dispatcher's poll covers one that was lost.
      }
    }
    return stored;
  }

  return {
    record,
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
