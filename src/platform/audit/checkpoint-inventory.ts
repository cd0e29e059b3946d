import { defineTable, type ModuleInventory, notPersonal } from "../inventory/types.ts";
import "./checkpoint-schema.ts";

/**
 * A checkpoint names no one: a root hash, a count of chains, a time and a key id (the heads, which name
 * tenants, are only in the files); a key rotation names two keys. Kept for good until segment retention (a later issue) gives records an end.
 */
const plain = (purpose: string) => notPersonal("audit", purpose);

const auditCheckpoints = defineTable("audit_checkpoints", {
  owner: "platform",
  row:
    "a signed record of the checkpoint chain, chained to the one before: the Merkle root over every audit chain " +
    "head at one time, or a rotation of the signing key",
  subject: { kind: "none" },
  columns: {
    seq: plain("numbers checkpoints without gaps, so a removed one shows"),
    type: plain("the kind of record, so later kinds can join the same chain"),
    record: plain(
      "the signed record (time, root, count, previous hash, key id; or the new key), compared with the checkpoint files",
    ),
    signature: plain("the Ed25519 signature of the record by the platform key current at its place in the chain"),
  },
});

/** Audit checkpoints: migrations 0008 and 0015. */
export const checkpointInventory: ModuleInventory = { module: "audit-checkpoints", tables: [auditCheckpoints] };
