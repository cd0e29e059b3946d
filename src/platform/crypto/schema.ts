import type { ColumnType } from "kysely";

declare module "../db/schema.ts" {
  interface Tables {
    platform_keys: PlatformKeysTable;
    person_keys: PersonKeysTable;
    erased_people: ErasedPeopleTable;
    journal_replays: JournalReplaysTable;
    tenant_keys: TenantKeysTable;
    subject_keys: SubjectKeysTable;
    erased_subjects: ErasedSubjectsTable;
    master_key_rotations: MasterKeyRotationsTable;
  }
}

type CreatedAt = ColumnType<Date, Date | string, never>;
type DestroyedAt = ColumnType<Date | null, Date | string | null, Date | string | null>;

/** Migration 0003. Wrapped keys are crypto/wrap.ts text; NULL once destroyed. */
export interface PlatformKeysTable {
  id: string;
  version: number;
  wrapped_key: string;
  /** MasterKey.fingerprint of the key that wrapped it. */
  master_key_fingerprint: string;
  created_at: CreatedAt;
}

export interface PersonKeysTable {
  id: string;
  /** NULL once the person is erased. */
  person_id: string | null;
  version: number;
  platform_key_id: string;
  wrapped_key: string | null;
  created_at: CreatedAt;
  destroyed_at: DestroyedAt;
}

export interface ErasedPeopleTable {
  person_id: string;
  erased_at: ColumnType<Date, Date | string, never>;
}

export interface JournalReplaysTable {
  /** SHA-256 (hex) of the journal's first line: names the journal. */
  journal_id: string;
  applied_seq: number;
  /** SHA-256 (hex) of the line at applied_seq. */
  applied_hash: string;
  replayed_at: ColumnType<Date, Date | string, Date | string>;
}

export interface TenantKeysTable {
  tenant_id: string;
  id: string;
  version: number;
  wrapped_key: string | null;
  master_key_fingerprint: string;
  created_at: CreatedAt;
  destroyed_at: DestroyedAt;
}

export interface SubjectKeysTable {
  tenant_id: string;
  id: string;
  /** NULL once the subject is erased. */
  subject_id: string | null;
  version: number;
  tenant_key_id: string;
  wrapped_key: string | null;
  created_at: CreatedAt;
  destroyed_at: DestroyedAt;
}

export interface ErasedSubjectsTable {
  tenant_id: string;
  id: string;
  subject_id: string;
  erased_at: ColumnType<Date, Date | string, never>;
}

/** Migration 0017: one master key rotation (master-rotation.ts); completed_at NULL while it is unfinished. */
export interface MasterKeyRotationsTable {
  id: string;
  from_fingerprint: string;
  to_fingerprint: string;
  started_at: ColumnType<Date, Date | string, never>;
  completed_at: ColumnType<Date | null, Date | string | null | undefined, Date | string>;
}
