declare module "../db/schema.ts" {
  interface Tables {
    audit_checkpoints: AuditCheckpointsTable;
  }
}

/**
 * Migration 0008 (0015 adds the key-rotation type): one signed record of the checkpoint chain
 * (checkpoint-record.ts); INSERT-only for the runtime role.
 */
export interface AuditCheckpointsTable {
  seq: number;
  type: "checkpoint" | "key-rotation";
  /** The record in canonical JSON, exactly as signed. */
  record: string;
  /** Ed25519 signature, base64url. */
  signature: string;
}
