import type { ColumnType } from "kysely";
import type { FileKind } from "./kinds.ts";

declare module "../db/schema.ts" {
  interface Tables {
    tenant_files: TenantFilesTable;
    platform_files: PlatformFilesTable;
  }
}

type CreatedAt = ColumnType<Date, Date | string, never>;
type NullableTime = ColumnType<Date | null, Date | string | null, Date | string | null>;

/** Migration 0006: what tenant and platform files have in common. */
interface FileColumns {
  id: string;
  kind: FileKind;
  /** A lowercase type/subtype, without parameters. */
  media_type: string;
  /** The file's name as uploaded, as a key ring envelope under the owner's key; null when it has none. */
  name: string | null;
  /** Plaintext bytes. */
  size_bytes: number;
  /** The file's random content key, as a key ring envelope under the owner's key. */
  content_key: string;
  /** The blob store key: random, naming nothing. */
  blob_key: string;
  /** Of the blob as stored: lets a backup check blobs without any key, and reveals nothing of the content. */
  ciphertext_sha256: Buffer;
  created_at: CreatedAt;
  expires_at: NullableTime;
  /** Set when the file is deleted; the expiry sweep then removes the row and the blob. */
  deleted_at: NullableTime;
}

export interface TenantFilesTable extends FileColumns {
  tenant_id: string;
  /** The CRM subject who owns the file; null for the tenant's own files. */
  subject_id: string | null;
}

export interface PlatformFilesTable extends FileColumns {
  /** The person (a user of Charter) who owns the file; null for the platform's own files. */
  person_id: string | null;
}
