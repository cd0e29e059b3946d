import type { ColumnType } from "kysely";
import type { JsonObject } from "./canonical.ts";
import type { ActorKind, Stream } from "./event.ts";

declare module "../db/schema.ts" {
  interface Tables {
    audit_chain_heads: AuditChainHeadsTable;
    audit_events: AuditEventsTable;
    platform_audit_events: PlatformAuditEventsTable;
  }
}

/** Migration 0007: one row per chain, updated by every append (the lock that serialises the chain). */
export interface AuditChainHeadsTable {
  chain_id: string;
  /** The tenant of a tenant chain; NULL for platform chains. */
  chain_tenant_id: string | null;
  stream: Stream;
  sequence: number;
  hash: string;
  updated_at: ColumnType<Date, Date | string, Date | string>;
}

/** The columns of an event (event.ts, version 1), INSERT-only for the runtime role. */
interface EventColumns {
  id: string;
  chain_id: string;
  seq: number;
  v: number;
  stream: Stream;
  at: ColumnType<Date, Date | string, never>;
  actor_kind: ActorKind;
  actor_id: string | null;
  action: string;
  target_type: string;
  target_id: string | null;
  subject_ids: string[];
  details: ColumnType<JsonObject, string, never>;
  /** Subject id → envelope (crypto/envelope.ts), one per subject. */
  personal: ColumnType<Record<string, string>, string, never>;
  request_id: string | null;
  cause_kind: string | null;
  cause_id: string | null;
  prev_hash: string;
  hash: string;
}

export interface AuditEventsTable extends EventColumns {
  tenant_id: string;
}

export type PlatformAuditEventsTable = EventColumns;
