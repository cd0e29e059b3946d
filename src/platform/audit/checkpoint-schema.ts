declare module "../db/schema.ts" {
  interface Tables {
    audit_checkpoints: AuditCheckpointsTable;
  }
}

/** Migration 0008: one signed checkpoint record (checkpoint-record.ts); INSERT-only for the runtime role. */
export interface AuditCheckpointsTable {
  seq: number;
  type: "checkpoint";
  /** The record in canonical JSON, exactly as signed. */
  record: string;
  /** Ed25519 signature, base64url. */
  signature: string;
}
