import type { BlindIndexKind } from "../crypto/blind-index.ts";
import type { Tables } from "../db/schema.ts";

/**
 * The data inventory (promise P1): what every column of every table holds, why, on what legal basis,
 * for how long, and what erasure does to it. Retention sweeps, subject export, erasure, the "data we
 * collect" table and the record of processing are generated from these declarations, so they are plain
 * data: no behaviour hides in them.
 */

export const CATEGORIES = [
  "account",
  "authentication",
  "crm",
  "communication",
  "integration",
  "telemetry",
  "billing",
  "audit",
  "system",
] as const;
export type Category = (typeof CATEGORIES)[number];

/** GDPR art. 6(1) bases; "none" only for columns that hold no personal data. */
export const LEGAL_BASES = [
  "contract",
  "legal-obligation",
  "legitimate-interest",
  "consent",
  "vital-interest",
  "public-task",
] as const;
export type LegalBasis = (typeof LEGAL_BASES)[number] | "none";

/**
 * Which key of the hierarchy (ARCHITECTURE "Keys") a column is encrypted under; the words of the key ring
 * (crypto/key-ring.ts KeyOwner). "person": a user of Charter or another person the platform holds data about.
 */
export const KEY_SCOPES = ["platform", "person", "tenant", "subject"] as const;
export type KeyScope = (typeof KEY_SCOPES)[number];

/**
 * Whose data a row is. "user": a user of Charter (a global identity); "crm-subject": a person in a
 * tenant's CRM; "tenant": the organisation itself. Tenant tables never refer to the global users table
 * (ARCHITECTURE "Tenancy rules"), so a user located in a tenant table is always located by a membership id.
 */
export const SUBJECT_KINDS = ["user", "crm-subject", "tenant"] as const;
export type SubjectKind = (typeof SUBJECT_KINDS)[number];

/** One step from a column to the row it names: a foreign key, or a reference declared here only. */
export interface SubjectHop<C extends string = string> {
  column: C;
  references: { table: string; column: string };
  link: "foreign-key" | "declared";
}

/** How to find the subject a row belongs to. */
export type SubjectLocator<C extends string = string> =
  | { kind: "none" }
  | { kind: "column"; column: C; of: SubjectKind }
  | { kind: "path"; via: readonly [SubjectHop<C>, ...SubjectHop[]]; of: SubjectKind };

/**
 * Named anonymisation strategies, each a fixed rewrite that the erasure generator applies.
 * set-null: the value becomes NULL. placeholder: a fixed text such as "erased". random-pseudonym: a random
 * value of the column's type that links to nothing (for unique or NOT NULL columns). truncate-to-month: a
 * timestamp or date keeps only its year and month.
 */
export const ANONYMISE_STRATEGIES = ["set-null", "placeholder", "random-pseudonym", "truncate-to-month"] as const;
export type AnonymiseStrategy = (typeof ANONYMISE_STRATEGIES)[number];

/**
 * What erasure of the row's subject does to the column. "delete" deletes the row (so every column of it);
 * "crypto-shred" destroys the key the value is encrypted under; "keep-under-legal-hold" keeps the value
 * while a legal hold covers it and otherwise deletes the row as "delete" does; "none" is for columns that
 * hold nothing personal (they go when their row goes).
 */
export type Erasure =
  | { action: "delete" }
  | { action: "anonymise"; strategy: AnonymiseStrategy }
  | { action: "keep-under-legal-hold" }
  | { action: "crypto-shred" }
  | { action: "none" };
export const ERASURE_ACTIONS = ["delete", "anonymise", "keep-under-legal-hold", "crypto-shred", "none"] as const;

/** The events a retention period runs from. */
export const RETENTION_ANCHORS = {
  "row-created": "the row was created",
  "event-time": "the event the row records happened (its own timestamp column)",
  "window-ended": "the rate-limit or aggregation window the row counts ended (its expires_at)",
  "account-closed": "the user's account was closed",
  "subscription-ended": "the tenant's subscription ended (P10: 30-day export window, then deletion)",
  "tenant-deleted": "the tenant was deleted",
  "hold-ended": "the legal hold was released or expired",
} as const;
export type RetentionAnchor = keyof typeof RETENTION_ANCHORS;

export const RETENTION_ACTIONS = ["delete", "anonymise", "aggregate"] as const;

/** A retention rule: `duration` (ISO 8601, e.g. "P90D") after `anchor`, `action` happens. */
export interface Retention {
  anchor: RetentionAnchor;
  duration: string;
  action: (typeof RETENTION_ACTIONS)[number];
}

export interface ColumnEntry {
  category: Category;
  personal: boolean;
  purpose: string;
  legalBasis: LegalBasis;
  /** The key the column is encrypted under; null when stored in plain text. */
  keyScope: KeyScope | null;
  erasure: Erasure;
  /** null: kept as long as the row (or its owner) lives, on purpose. */
  retention: Retention | null;
  /** Whose data this column is, when not the row's subject (e.g. the member who last changed a row). */
  subject?: SubjectLocator;
  /**
   * The column is the keyed blind index (crypto/blind-index.ts) of the normalised value sealed in the
   * encrypted column `of` of the same row, under the row's scope (the platform's index key on a platform
   * table, the tenant's on a tenant table). A master key rotation recomputes it from that column.
   */
  blindIndexOf?: { column: string; kind: BlindIndexKind };
}

export interface TableInventory {
  table: string;
  /** Platform tables have no tenant_id; tenant tables do (ARCHITECTURE "Tenancy rules"). */
  owner: "platform" | "tenant";
  /** What one row is. */
  row: string;
  subject: SubjectLocator;
  columns: Readonly<Record<string, ColumnEntry>>;
}

export interface ModuleInventory {
  module: string;
  tables: readonly TableInventory[];
}

export type Inventory = readonly ModuleInventory[];

/** P10: a tenant's data is deleted at the latest 90 days after its subscription ends (export window included). */
export const WITH_TENANT_DATA: Retention = { anchor: "subscription-ended", duration: "P90D", action: "delete" };

/** A column that holds nothing personal: no legal basis needed, nothing for erasure to do but let its row go. */
export function notPersonal(category: Category, purpose: string, retention: Retention | null = null): ColumnEntry {
  return {
    category,
    personal: false,
    purpose,
    legalBasis: "none",
    keyScope: null,
    erasure: { action: "none" },
    retention,
  };
}

type ColumnOf<N extends keyof Tables> = keyof Tables[N] & string;

/**
 * Declares a table's inventory against its Kysely type: a column of the type without an entry, or an
 * entry for a column the type lacks, fails `tsc`. The catalog test checks the same against the database.
 */
export function defineTable<N extends keyof Tables & string>(
  table: N,
  entry: {
    owner: "platform" | "tenant";
    row: string;
    subject: SubjectLocator<ColumnOf<N>>;
    columns: { readonly [K in ColumnOf<N>]: ColumnEntry };
  },
): TableInventory {
  return { table, ...entry };
}
