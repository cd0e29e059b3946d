import type { Clock } from "../clock.ts";
import {
  completeRotation,
  createSuccessorKey,
  discardSuccessorKey,
  existingSigningKey,
  type PublicSigningKey,
  type SigningKey,
  successorKey,
} from "../crypto/signing-key.ts";
import type { DataDirPaths } from "../data-dir.ts";
import type { Database } from "../db/index.ts";
import type { SignedKeyRotation } from "./checkpoint-record.ts";
import { isUnreadable, lastCheckpointRow, lastFileRecords } from "./checkpoint-store.ts";
import { appendKeyRotation, CheckpointError } from "./checkpoints.ts";

/**
 * Rotation of the platform's signing key (promise L3). The checkpoint chain records it (checkpoint-record.ts:
 * a key-rotation record signed by the retiring key and by the new one), and from the next record on only the
 * new key signs.
 *
 * A rotation is crash-safe in this order: the new key is written to keys/signing.key.next; the rotation record
 * is appended to the chain (table and files); the retiring key's public half is added to the retired keys;
 * keys/signing.key is replaced by the new key, which removes the retiring private key. Start-up refuses while
 * keys/signing.key.next exists; running the rotation again completes a rotation the chain recorded, or
 * discards a successor it never did.
 */

/** A rotation cannot be made: the message names what and the next step. */
export class KeyRotationError extends Error {
  override name = "KeyRotationError";
}

export interface KeyRotation {
  /** The key that signed until the rotation, now retired. */
  retired: PublicSigningKey;
  /** The key that signs from now on, with its history. */
  current: SigningKey;
  /** The key-rotation record's place in the checkpoint chain. */
  seq: number;
  /** Whether this completed a rotation that was interrupted after the chain recorded it. */
  resumed: boolean;
}

/** The newest record, in the table or the files, if it is the rotation from `retiring` to `successor`. */
async function recordedRotation(
  db: Database,
  dir: string,
  retiring: SigningKey,
  successor: SigningKey,
): Promise<SignedKeyRotation | undefined> {
  const row = await db.withPlatform((tx) => lastCheckpointRow(tx));
  const line = lastFileRecords(dir, 1)[0];
  for (const entry of [row, line]) {
    if (entry && !isUnreadable(entry) && entry.record.type === "key-rotation") {
      const { keyId, newKeyId } = entry.record;
      if (keyId === retiring.keyId && newKeyId === successor.keyId) return entry as SignedKeyRotation;
    }
  }
  return undefined;
}

/**
 * Rotates the platform's signing key: a new Ed25519 key takes over the checkpoint chain and the destruction
 * journal; the old key's public half is kept among the retired keys, its private half removed. Must not run
 * while a process signs with the old key (the caller makes sure no server runs).
 */
export async function rotateSigningKey(options: {
  db: Database;
  clock: Clock;
  paths: DataDirPaths;
}): Promise<KeyRotation> {
  const { db, clock, paths } = options;
  const retiring = existingSigningKey(paths);
  if (!retiring) {
    throw new KeyRotationError(
      "there is no signing key to rotate yet: the first charter start or charter audit checkpoint creates it",
    );
  }
  const finish = (rotation: SignedKeyRotation, resumed: boolean): KeyRotation => ({
    retired: { keyId: retiring.keyId, publicKeyPem: retiring.publicKeyPem },
    current: completeRotation(paths, retiring, {
      seq: rotation.record.seq,
      at: rotation.record.at,
      successor: rotation.record.newKeyId,
    }),
    seq: rotation.record.seq,
    resumed,
  });
  const interrupted = successorKey(paths);
  if (interrupted) {
    const recorded = await recordedRotation(db, paths.checkpoints, retiring, interrupted);
    if (recorded) return finish(recorded, true);
    discardSuccessorKey(paths);
  }
  const successor = createSuccessorKey(paths);
  let rotation: SignedKeyRotation;
  try {
    rotation = await appendKeyRotation({ db, clock, dir: paths.checkpoints, signingKey: retiring }, successor);
  } catch (error) {
    // Refused before anything was written: the successor was never announced. After any other failure the
    // record may have reached the files, so the successor stays for the next run to complete or discard.
    if (error instanceof CheckpointError) discardSuccessorKey(paths);
    throw error;
  }
  return finish(rotation, false);
}
