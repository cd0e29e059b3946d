import { createHash } from "node:crypto";
import { z } from "zod";
import { SigningKey } from "../crypto/signing-key.ts";
import { canonicalize } from "./canonical.ts";
import { leafHash } from "./merkle.ts";

/**
 * Checkpoint records: what is signed, hashed and stored, byte for byte, so that a verifier with nothing but
 * SHA-256, Ed25519 and the public key can check them.
 *
 * - A record is typed and versioned: `{"v":1,"type":"checkpoint",…}`; later kinds (segment retention,
 *   tombstones) are new types in the same chain of records.
 * - Every text here is canonical JSON (canonical.ts: RFC 8785 with integers only), as audit events are.
 * - A record is signed (Ed25519) over `charter/audit-checkpoint/v1`, a NUL byte and canonical(record); the
 *   prefix keeps the signing key's other uses (the destruction journal) from ever producing a valid checkpoint.
 * - A record's hash is SHA-256(canonical(record)) in hex; the next record's `prev` is that hash (64 zeros
 *   for the first), so a removed or reordered record breaks the links.
 * - Each leaf of the tree is canonical({chain, hash, seq}) of one chain head, the heads sorted by chain id
 *   (UTF-16 code units, which is byte order for the ASCII chain ids).
 */

export const CHECKPOINT_DOMAIN = "charter/audit-checkpoint/v1";
export const GENESIS = "0".repeat(64);

/** One chain's head as a checkpoint saw it. */
export interface CheckpointHead {
  chain: string;
  seq: number;
  hash: string;
}

/** A signed statement of every chain head at one time, as the Merkle root over them. */
export interface CheckpointRecord {
  v: 1;
  type: "checkpoint";
  /** Counts from 1 without gaps. */
  seq: number;
  /** When it was made, from the clock: ISO 8601 UTC. */
  at: string;
  /** The RFC 6962 root over the heads, sorted by chain id. */
  root: string;
  /** How many heads (leaves) the tree has. */
  leaves: number;
  /** The hash of the record before, or 64 zeros. */
  prev: string;
  /** The id of the signing key (signing-key.ts keyId). */
  keyId: string;
}

/** A record with its signature (base64url) and its hash. */
export interface SignedCheckpoint {
  record: CheckpointRecord;
  sig: string;
  hash: string;
}

/** The public half of the signing key: all a verifier needs. */
export type CheckpointVerifier = Pick<SigningKey, "keyId" | "publicKeyPem">;

const hex64 = z.string().regex(/^[0-9a-f]{64}$/);
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
export const recordSchema = z.strictObject({
  v: z.literal(1),
  type: z.literal("checkpoint"),
  seq: count.min(1),
  at: z.iso.datetime(),
  root: hex64,
  leaves: count,
  prev: hex64,
  keyId: z.string().regex(/^[0-9a-f]{16}$/),
});
export const headSchema = z.strictObject({ chain: z.string().min(1).max(200), seq: count, hash: hex64 });
export const signatureSchema = z.string().regex(/^[A-Za-z0-9_-]+$/);

const sha256Hex = (text: string) => createHash("sha256").update(text, "utf8").digest("hex");

export function recordHash(record: CheckpointRecord): string {
  return sha256Hex(canonicalize(record));
}

export function signedBytes(record: CheckpointRecord): Buffer {
  return Buffer.from(`${CHECKPOINT_DOMAIN}\0${canonicalize(record)}`, "utf8");
}

export function headLeafHash(head: CheckpointHead): string {
  return leafHash(canonicalize({ chain: head.chain, seq: head.seq, hash: head.hash }));
}

/** Chain ids in the order the tree takes them. */
export function compareChains(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function signCheckpoint(record: CheckpointRecord, key: SigningKey): SignedCheckpoint {
  return { record, sig: key.sign(signedBytes(record)).toString("base64url"), hash: recordHash(record) };
}

/** Whether the record names `verifier`'s key and its signature is that key's. */
export function signatureValid(checkpoint: Omit<SignedCheckpoint, "hash">, verifier: CheckpointVerifier): boolean {
  return (
    checkpoint.record.keyId === verifier.keyId &&
    SigningKey.verify(verifier.publicKeyPem, signedBytes(checkpoint.record), Buffer.from(checkpoint.sig, "base64url"))
  );
}
