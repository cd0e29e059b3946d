import { createHash } from "node:crypto";
import { z } from "zod";
import { type PublicKeyHistory, type PublicSigningKey, publicKeyId, SigningKey } from "../crypto/signing-key.ts";
import { canonicalize } from "./canonical.ts";
import { leafHash } from "./merkle.ts";

/**
 * The records of the checkpoint chain: what is signed, hashed and stored, byte for byte, so that a verifier
 * with nothing but SHA-256, Ed25519 and a public key can check them.
 *
 * - A record is typed and versioned: `{"v":1,"type":"checkpoint",…}` signs every chain head at one time;
 *   `{"v":1,"type":"key-rotation",…}` hands signing on to a new key. Later kinds (segment retention,
 *   tombstones) are new types in the same chain of records.
 * - Every text here is canonical JSON (canonical.ts: RFC 8785 with integers only), as audit events are.
 * - A record is signed (Ed25519) over `charter/audit-checkpoint/v1`, a NUL byte and canonical(record), by the
 *   key current at its place in the chain: the platform's first key (the oldest it retired, or its current key
 *   if it never rotated), until a key-rotation record hands signing to the next one. A record signed by any
 *   other key, even one of the platform's own, does not verify: a key signs only where the chain handed it
 *   signing. The prefix keeps the signing key's other uses (the destruction journal) from ever producing a
 *   valid record.
 * - A record's hash is SHA-256(canonical(record)) in hex; the next record's `prev` is that hash (64 zeros
 *   for the first), so a removed or reordered record breaks the links.
 * - Each leaf of the tree is canonical({chain, hash, seq}) of one chain head, the heads sorted by chain id
 *   (UTF-16 code units, which is byte order for the ASCII chain ids).
 * - A key-rotation record is signed, as every record, by the retiring key (`keyId`), and carries `possession`:
 *   the new key's signature over `charter/audit-key-rotation/v1`, a NUL byte and canonical(the record without
 *   `possession`), which shows the new key's holder made the rotation. `newKeyId` is the new key's id (the
 *   first 16 hex characters of SHA-256 of its raw 32-byte public key), `newPublicKey` its SPKI PEM.
 */

export const CHECKPOINT_DOMAIN = "charter/audit-checkpoint/v1";
export const KEY_ROTATION_DOMAIN = "charter/audit-key-rotation/v1";
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
  /** Counts from 1 without gaps, over the records of every type. */
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

/** Signing handed on from the key `keyId` to a new key, from the next record on. */
export interface KeyRotationRecord {
  v: 1;
  type: "key-rotation";
  seq: number;
  at: string;
  prev: string;
  /** The retiring key, which signs this record. */
  keyId: string;
  newKeyId: string;
  /** The new key's public half, SPKI PEM. */
  newPublicKey: string;
  /** The new key's signature (base64url) over KEY_ROTATION_DOMAIN, NUL, canonical(record without this). */
  possession: string;
}

export type ChainRecord = CheckpointRecord | KeyRotationRecord;

/** A record with its signature (base64url) and its hash. */
export interface SignedRecord<R extends ChainRecord = ChainRecord> {
  record: R;
  sig: string;
  hash: string;
}

export type SignedCheckpoint = SignedRecord<CheckpointRecord>;
export type SignedKeyRotation = SignedRecord<KeyRotationRecord>;

/** The platform's public keys, current and retired: all a verifier of the chain needs. */
export type CheckpointVerifier = PublicKeyHistory;

/** How reports name a record: "checkpoint 12", "key rotation 13". */
export function recordName(entry: SignedRecord): string {
  return `${entry.record.type === "checkpoint" ? "checkpoint" : "key rotation"} ${entry.record.seq}`;
}

const hex64 = z.string().regex(/^[0-9a-f]{64}$/);
const keyId = z.string().regex(/^[0-9a-f]{16}$/);
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
export const signatureSchema = z.string().regex(/^[A-Za-z0-9_-]+$/);
const checkpointSchema = z.strictObject({
  v: z.literal(1),
  type: z.literal("checkpoint"),
  seq: count.min(1),
  at: z.iso.datetime(),
  root: hex64,
  leaves: count,
  prev: hex64,
  keyId,
});
const keyRotationSchema = z.strictObject({
  v: z.literal(1),
  type: z.literal("key-rotation"),
  seq: count.min(1),
  at: z.iso.datetime(),
  prev: hex64,
  keyId,
  newKeyId: keyId,
  newPublicKey: z.string().regex(/^-----BEGIN PUBLIC KEY-----\n[A-Za-z0-9+/=\n]{1,400}-----END PUBLIC KEY-----\n$/),
  possession: signatureSchema,
});
export const recordSchema = z.discriminatedUnion("type", [checkpointSchema, keyRotationSchema]);
export const chainSchema = z.string().min(1).max(200);
export const headSchema = z.strictObject({ chain: chainSchema, seq: count, hash: hex64 });

const sha256Hex = (text: string) => createHash("sha256").update(text, "utf8").digest("hex");

export function recordHash(record: ChainRecord): string {
  return sha256Hex(canonicalize(record));
}

export function signedBytes(record: ChainRecord): Buffer {
  return Buffer.from(`${CHECKPOINT_DOMAIN}\0${canonicalize(record)}`, "utf8");
}

function possessionBytes(record: Omit<KeyRotationRecord, "possession">): Buffer {
  const { possession: _, ...proven } = record as KeyRotationRecord;
  return Buffer.from(`${KEY_ROTATION_DOMAIN}\0${canonicalize(proven)}`, "utf8");
}

export function headLeafHash(head: CheckpointHead): string {
  return leafHash(canonicalize({ chain: head.chain, seq: head.seq, hash: head.hash }));
}

/** Chain ids in the order the tree takes them. */
export function compareChains(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function signRecord<R extends ChainRecord>(record: R, key: SigningKey): SignedRecord<R> {
  return { record, sig: key.sign(signedBytes(record)).toString("base64url"), hash: recordHash(record) };
}

/** The key-rotation record handing signing on from `retiring` to `successor`, signed by both. */
export function signKeyRotation(
  place: Pick<KeyRotationRecord, "seq" | "at" | "prev">,
  retiring: SigningKey,
  successor: SigningKey,
): SignedKeyRotation {
  const unproven: Omit<KeyRotationRecord, "possession"> = {
    v: 1,
    type: "key-rotation",
    ...place,
    keyId: retiring.keyId,
    newKeyId: successor.keyId,
    newPublicKey: successor.publicKeyPem,
  };
  const possession = successor.sign(possessionBytes(unproven)).toString("base64url");
  return signRecord({ ...unproven, possession }, retiring);
}

/** Whether the record names `key` and its signature is that key's. */
export function signatureValid(entry: Omit<SignedRecord, "hash">, key: PublicSigningKey): boolean {
  return (
    entry.record.keyId === key.keyId &&
    SigningKey.verify(key.publicKeyPem, signedBytes(entry.record), Buffer.from(entry.sig, "base64url"))
  );
}

/**
 * The key a valid rotation hands signing on to; undefined when the new key's id is not its public key's or its
 * proof of possession does not verify. (Whether the retiring key signed the record is signatureValid's part.)
 */
export function rotatedKey(record: KeyRotationRecord): PublicSigningKey | undefined {
  if (publicKeyId(record.newPublicKey) !== record.newKeyId) return undefined;
  const proven = SigningKey.verify(
    record.newPublicKey,
    possessionBytes(record),
    Buffer.from(record.possession, "base64url"),
  );
  return proven ? { keyId: record.newKeyId, publicKeyPem: record.newPublicKey } : undefined;
}

/** The key that signs the first record of the chain: the oldest the platform retired, or its current key. */
export function firstKey(keys: PublicKeyHistory): PublicSigningKey {
  return keys.retired[0] ?? keys;
}

/** One of the platform's keys, current or retired, by its id. */
function keyNamed(keys: PublicKeyHistory, keyId: string): PublicSigningKey | undefined {
  return [...keys.retired, keys].find((key) => key.keyId === keyId);
}

/**
 * The key current after a record of the chain (or at its start): the one a rotation hands signing to, else the
 * record's own. Undefined for a rotation that does not prove the new key, or a key the platform does not know.
 */
export function keyAfter(entry: SignedRecord | undefined, keys: PublicKeyHistory): PublicSigningKey | undefined {
  if (!entry) return firstKey(keys);
  return entry.record.type === "key-rotation" ? rotatedKey(entry.record) : keyNamed(keys, entry.record.keyId);
}
