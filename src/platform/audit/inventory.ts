import "./schema.ts";
import {
  type ColumnEntry,
  defineTable,
  type ModuleInventory,
  notPersonal,
  type Retention,
  WITH_TENANT_DATA,
} from "../inventory/types.ts";

/**
 * The audit log's tables (migration 0007). An event is hashed whole, so no column of it can be changed
 * after it is written (the runtime role may only insert): erasure cannot rewrite events. Instead:
 * - personal details are ciphertext under the subject's key (person key on the platform): erasing the
 *   subject destroys the key, which shreds them, and the chain still verifies (crypto-shred);
 * - actors and subjects are named by pseudonymous ids only (L5), which link to no one once the membership,
 *   user or CRM subject they name is erased. Audit records are kept against erasure requests as evidence
 *   (GDPR art. 17(3)(b) and (e)) and go when their retention ends, so erasure finds these tables only for
 *   the encrypted blocks; the rows themselves are deleted by retention (a segment at a time, with
 *   tombstones, in the retention issue), which is what "delete" means for the id columns here.
 *
 * Retention (P9): a tenant's chains go with its data (subscription end + 90 days, P10); its security and
 * access streams are kept as long, which is at least P9's 12 months for authentication records while the
 * tenant exists. Platform chains (sign-ins, denials, operator actions) are kept 12 months after the event.
 */

/** P9: authentication audit records + 12 months. */
const TWELVE_MONTHS: Retention = { anchor: "event-time", duration: "P1Y", action: "delete" };

const plain = (purpose: string, retention: Retention | null) => notPersonal("audit", purpose, retention);

/** A pseudonymous id of a person: personal, kept as evidence until retention deletes the row. */
function pseudonym(purpose: string, retention: Retention): ColumnEntry {
  return {
    category: "audit",
    personal: true,
    purpose,
    legalBasis: "legal-obligation",
    keyScope: null,
    erasure: { action: "delete" },
    retention,
  };
}

function eventColumns(retention: Retention) {
  return {
    id: plain("identifies the event (UUIDv7); covered by its hash", retention),
    chain_id: plain("the chain the event belongs to: tenant and stream, or platform stream and actor shard", retention),
    seq: plain("the event's place in its chain: gapless, in commit order; the cursor of change feeds", retention),
    v: plain("the version of the event shape and canonical form the hash was computed over", retention),
    stream: plain("changes, security or access", retention),
    at: plain("when the event happened (UTC, milliseconds, from the clock)", retention),
    actor_kind: plain("what kind of actor acted: user, API key, operator, system, workflow or anonymous", retention),
    actor_id: pseudonym(
      "accountability (L1): who acted, as a pseudonymous membership, key, operator or user id",
      retention,
    ),
    action: plain("what happened, a typed action such as record.updated", retention),
    target_type: plain("the kind of thing acted on", retention),
    target_id: plain("the id of the thing acted on (a record, a tenant, a switch)", retention),
    subject_ids: pseudonym(
      "the data subjects the event concerns, so subject requests and erasure find their events",
      retention,
    ),
    details: plain("non-personal details of the event (changed field names, switch values)", retention),
    request_id: plain("the request that caused the event, to correlate events and logs", retention),
    cause_kind: plain(
      "what kind of thing caused the event (e.g. an automation run), so triggers cannot loop",
      retention,
    ),
    cause_id: plain("the id of the thing that caused the event", retention),
    prev_hash: plain("the previous event's hash: the link that makes the chain tamper-evident", retention),
    hash: plain("SHA-256 over the previous hash and the canonical event (tamper evidence, L3)", retention),
  } as const;
}

const auditChainHeads = defineTable("audit_chain_heads", {
  owner: "platform",
  row: "the head of one audit chain: its last sequence number and hash",
  subject: { kind: "none" },
  columns: {
    chain_id: plain("names the chain: tenant and stream, or platform stream and actor shard", null),
    chain_tenant_id: plain("the tenant whose chain this is; null for platform chains", null),
    stream: plain("changes, security or access", null),
    sequence: plain("the chain's last sequence number; its row lock serialises appends", null),
    hash: plain("the chain's last hash, which checkpoints sign", null),
    updated_at: plain("when the chain last grew", null),
  },
});

const auditEvents = defineTable("audit_events", {
  owner: "tenant",
  row: "one event of a tenant's audit chain (changes, security or access)",
  subject: { kind: "none" },
  columns: {
    tenant_id: plain("the tenant whose chain the event is in", WITH_TENANT_DATA),
    ...eventColumns(WITH_TENANT_DATA),
    personal: {
      category: "audit",
      personal: true,
      purpose: "personal details of the event (e.g. old and new values), one ciphertext per subject",
      legalBasis: "legal-obligation",
      keyScope: "subject",
      erasure: { action: "crypto-shred" },
      retention: WITH_TENANT_DATA,
      subject: { kind: "column", column: "subject_ids", of: "crm-subject" },
    },
  },
});

const platformAuditEvents = defineTable("platform_audit_events", {
  owner: "platform",
  row: "one event with no tenant (a sign-in, a denial, an operator action), on its actor's platform chain",
  subject: { kind: "none" },
  columns: {
    ...eventColumns(TWELVE_MONTHS),
    personal: {
      category: "audit",
      personal: true,
      purpose: "personal details of the event, one ciphertext per person concerned",
      legalBasis: "legal-obligation",
      keyScope: "person",
      erasure: { action: "crypto-shred" },
      retention: TWELVE_MONTHS,
      subject: { kind: "column", column: "subject_ids", of: "user" },
    },
  },
});

export const auditInventory: ModuleInventory = {
  module: "audit",
  tables: [auditChainHeads, auditEvents, platformAuditEvents],
};
