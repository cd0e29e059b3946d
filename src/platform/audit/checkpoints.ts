import { sql } from "kysely";
import type { CommandResult } from "../cli/control-socket.ts";
import type { Clock } from "../clock.ts";
import type { KeyRing } from "../crypto/key-ring.ts";
import type { SigningKey } from "../crypto/signing-key.ts";
import type { Database, Tx } from "../db/index.ts";
import type { Cadence, Jobs } from "../jobs/index.ts";
import { createAudit } from "./audit.ts";
import { chainHeads } from "./chains.ts";
import { type HeadChange, HeadSet } from "./checkpoint-heads.ts";
import {
  type CheckpointHead,
  type CheckpointRecord,
  compareChains,
  GENESIS,
  headLeafHash,
  keyAfter,
  recordName,
  rotatedKey,
  type SignedCheckpoint,
  type SignedKeyRotation,
  type SignedRecord,
  signatureValid,
  signKeyRotation,
  signRecord,
} from "./checkpoint-record.ts";
import {
  appendCheckpointLine,
  type FileRecord,
  insertCheckpointRow,
  isUnreadable,
  lastCheckpointRow,
  lastFileRecords,
  type Unreadable,
} from "./checkpoint-store.ts";
import { SYSTEM_ACTOR } from "./event.ts";
import { merkleRoot } from "./merkle.ts";
import "./schema.ts";

/**
 * Signed checkpoints over every audit chain head (issue 4, promise L3). A checkpoint reads all heads in one
 * query, builds the Merkle tree over them (merkle.ts, leaves as checkpoint-record.ts describes) and signs the
 * root with the platform's Ed25519 key, chained to the record before. It is kept twice, in the table
 * audit_checkpoints and in the daily files of `checkpoints/` (checkpoint-store.ts), which must agree; a file
 * line lists only the heads that changed since the line before, except the first of each day and the first a
 * process writes, which list every head. Verification and exports are checkpoint-verify.ts.
 *
 * What this catches: any rewrite of a chain below a checkpointed head, even with every hash recomputed and
 * the head updated, because the chain's hash at that sequence no longer matches what was signed; a record
 * removed from the table or the files; a record not signed by the key current at its place in the chain.
 * What it cannot catch: events removed after the last checkpoint, together with their head rolled back (at
 * most one interval of events, a minute by default), and the files and the table rolled back together to the
 * same record.
 *
 * A crash between a line's flush and its row's commit leaves the newest line without a row. The next append
 * recovers it when that is the only disagreement (the line follows the table's last row, and is signed by the
 * key current there): it inserts the row, and records `audit.checkpoint-recovered` on the system's platform
 * security chain. Any other disagreement refuses every append until an operator resolves it.
 *
 * Limits, stated plainly: appends are serialised within a process and by the table's unique seq between
 * processes, but each process writes the files of its own data directory, so a deployment of several
 * processes on one PostgreSQL needs `checkpoints/` on storage they share.
 */

export const CHECKPOINT_JOB = "audit.checkpoint";
export const CHECKPOINT_CADENCE = { kind: "every", minutes: 1 } as const satisfies Cadence;
export const CHECKPOINT_RECOVERED = "audit.checkpoint-recovered";

export interface CheckpointWriter {
  db: Database;
  clock: Clock;
  /** The data directory's `checkpoints/`. */
  dir: string;
  /** The key current at the end of the chain, with the keys it retired. */
  signingKey: SigningKey;
}

/** A checkpoint with the heads it covers. */
export interface Checkpoint extends SignedCheckpoint {
  heads: CheckpointHead[];
}

/** A record cannot be appended: the store disagrees with itself. The message names what and the next step. */
export class CheckpointError extends Error {
  override name = "CheckpointError";
}

/** Every chain head, read in one query (chains.ts), in tree order. */
export async function readHeads(tx: Tx): Promise<CheckpointHead[]> {
  return (await chainHeads(tx))
    .map((h) => ({ chain: h.chainId, seq: h.sequence, hash: h.hash }))
    .sort((a, b) => compareChains(a.chain, b.chain));
}

const describe = (entry: SignedRecord | Unreadable | undefined) =>
  entry === undefined
    ? "no checkpoint"
    : isUnreadable(entry)
      ? `an unreadable entry (${entry.where})`
      : recordName(entry);

/** The recovery event names no one, so this audit log needs no key ring. */
const noPersonalDetails: Pick<KeyRing, "encrypt" | "decrypt"> = {
  encrypt: () => Promise.reject(new TypeError("a checkpoint event carries no personal details")),
  decrypt: () => Promise.reject(new TypeError("a checkpoint event carries no personal details")),
};

/**
 * Whether `newest` is a record a crash left in the files without its row, and nothing else disagrees: it is
 * the table's next record, follows the table's last row (which the line before it in the files is too), and is
 * signed by the key current there.
 */
function crashedAppend(
  lastRow: SignedRecord | Unreadable | undefined,
  before: FileRecord | Unreadable | undefined,
  newest: FileRecord,
  writer: CheckpointWriter,
): boolean {
  if (lastRow !== undefined && isUnreadable(lastRow)) return false;
  // The files end with the table's last row and then this line, or hold this line alone when the table is empty.
  const beforeIsLastRow =
    lastRow === undefined
      ? before === undefined
      : before !== undefined && !isUnreadable(before) && before.hash === lastRow.hash;
  if (!beforeIsLastRow) return false;
  const { record } = newest;
  if (record.seq !== (lastRow?.record.seq ?? 0) + 1 || record.prev !== (lastRow?.hash ?? GENESIS)) return false;
  const key = keyAfter(lastRow, writer.signingKey);
  if (!key || !signatureValid(newest, key)) return false;
  return record.type === "checkpoint" || rotatedKey(record) !== undefined;
}

/**
 * The last record of the chain, once the table and the files agree on it: recovers a line a crash left
 * without its row; refuses (CheckpointError) any other disagreement, since going on would chain new records to
 * one of two histories and bury the evidence of the other.
 */
async function lastRecord(tx: Tx, writer: CheckpointWriter): Promise<SignedRecord | undefined> {
  const { db, clock, dir } = writer;
  const lastRow = await lastCheckpointRow(tx);
  const tail = lastFileRecords(dir, 2);
  const newest = tail.at(-1);
  const before = tail.length === 2 ? tail[0] : undefined;
  if (lastRow === undefined && newest === undefined) return undefined;
  if (lastRow && newest && !isUnreadable(lastRow) && !isUnreadable(newest) && lastRow.hash === newest.hash) {
    return lastRow;
  }
  if (newest && !isUnreadable(newest) && crashedAppend(lastRow, before, newest, writer)) {
    await insertCheckpointRow(tx, newest);
    await createAudit({ db, clock, keyRing: noPersonalDetails }).record(tx, {
      tenantId: null,
      stream: "security",
      actor: SYSTEM_ACTOR,
      action: CHECKPOINT_RECOVERED,
      target: { type: "audit-checkpoint", id: null },
      details: { seq: newest.record.seq, type: newest.record.type, file: newest.where },
    });
    return newest;
  }
  throw new CheckpointError(
    `the checkpoint table ends at ${describe(lastRow)} but the files in ${dir} end at ${describe(newest)}: ` +
      "no checkpoint is made until this is resolved; run charter audit verify",
  );
}

/** The key id that signs after a record: the new one after a rotation. */
const signerAfter = (entry: SignedRecord) =>
  entry.record.type === "key-rotation" ? entry.record.newKeyId : entry.record.keyId;

/**
 * What each directory's last committed append left: the record's hash, the day of its last checkpoint line,
 * and the heads that line's checkpoint signed. The next checkpoint of the same day lists only what changed.
 */
const lastWritten = new Map<string, { hash: string; day: string; heads: HeadSet }>();

interface Appended<R> {
  entry: R;
  heads: CheckpointHead[] | undefined;
  change: HeadChange | undefined;
  continues: boolean;
}

async function append<R extends SignedRecord>(
  writer: CheckpointWriter,
  make: (tx: Tx, place: { seq: number; at: string; prev: string }) => Promise<{ entry: R; heads?: CheckpointHead[] }>,
): Promise<Appended<R>> {
  const { db, clock, dir, signingKey } = writer;
  const appended = await db.withPlatform(async (tx): Promise<Appended<R>> => {
    // One append at a time across processes too (the server's schedule beside `charter audit checkpoint`):
    // the next one waits here, then reads the record this one made, instead of failing on its sequence.
    await sql`SELECT pg_advisory_xact_lock(hashtextextended('charter/audit/checkpoints', 0))`.execute(tx);
    const previous = await lastRecord(tx, writer);
    if (previous && signerAfter(previous) !== signingKey.keyId) {
      throw new CheckpointError(
        `the checkpoint chain is signed by key ${signerAfter(previous)} after ${describe(previous)}, but this ` +
          `process signs with key ${signingKey.keyId}, which no key rotation in the chain introduced: restore ` +
          "keys/signing.key, or finish an interrupted rotation with charter audit rotate-signing-key",
      );
    }
    // Time never runs backwards along the chain (nor across the daily files), whatever the clock does.
    const now = clock.now().toISOString();
    const at = previous && previous.record.at > now ? previous.record.at : now;
    const made = await make(tx, { seq: (previous?.record.seq ?? 0) + 1, at, prev: previous?.hash ?? GENESIS });
    const last = lastWritten.get(dir);
    const continues = last !== undefined && last.hash === previous?.hash && last.day === at.slice(0, 10);
    const change: HeadChange | undefined =
      made.heads && (continues ? last.heads.changeTo(made.heads) : { base: "empty", changed: made.heads, removed: [] });
    // The row first: should an append of the same seq slip past the lock, it fails here, before anything
    // reaches the file.
    await insertCheckpointRow(tx, made.entry);
    await appendCheckpointLine(dir, made.entry, change);
    return { entry: made.entry, heads: made.heads, change, continues };
  });
  remember(dir, appended);
  return appended;
}

/** Keeps what committed: a rollback leaves the cache behind, so the next line lists every head. */
function remember(dir: string, appended: Appended<SignedRecord>): void {
  const last = lastWritten.get(dir);
  const { entry, change, continues } = appended;
  if (change) {
    const heads = continues && last ? last.heads : new HeadSet();
    heads.apply(change);
    lastWritten.set(dir, { hash: entry.hash, day: entry.record.at.slice(0, 10), heads });
  } else if (continues && last) {
    lastWritten.set(dir, { ...last, hash: entry.hash });
  } else {
    lastWritten.delete(dir);
  }
}

const queues = new Map<string, Promise<unknown>>();

/** Runs appends to one checkpoint directory one after the other within the process. */
function serialised<T>(dir: string, run: () => Promise<T>): Promise<T> {
  const before = queues.get(dir) ?? Promise.resolve();
  const result = before.then(run);
  const settled = result.catch(() => {});
  queues.set(dir, settled);
  void settled.then(() => {
    if (queues.get(dir) === settled) queues.delete(dir);
  });
  return result;
}

/**
 * Makes, signs and stores one checkpoint over every chain head. Serialised per checkpoint directory within
 * the process; refuses (CheckpointError) while the table and the files disagree about the last record.
 */
export function createCheckpoint(writer: CheckpointWriter): Promise<Checkpoint> {
  const { signingKey } = writer;
  return serialised(writer.dir, async () => {
    const { entry, heads } = await append(writer, async (tx, place) => {
      const current = await readHeads(tx);
      const record: CheckpointRecord = {
        v: 1,
        type: "checkpoint",
        ...place,
        root: merkleRoot(current.map(headLeafHash)),
        leaves: current.length,
        keyId: signingKey.keyId,
      };
      return { entry: signRecord(record, signingKey), heads: current };
    });
    return { ...entry, heads: heads as CheckpointHead[] };
  });
}

/**
 * Appends the record that hands signing from the writer's key to `successor`, signed by both
 * (checkpoint-rotation.ts completes the rotation around it).
 */
export function appendKeyRotation(writer: CheckpointWriter, successor: SigningKey): Promise<SignedKeyRotation> {
  return serialised(writer.dir, async () => {
    const { entry } = await append(writer, async (_tx, place) => ({
      entry: signKeyRotation(place, writer.signingKey, successor),
    }));
    return entry;
  });
}

/** `charter audit checkpoint`: makes one checkpoint now; a store that disagrees with itself fails the command. */
export async function checkpointCommand(writer: CheckpointWriter): Promise<CommandResult> {
  try {
    const { record } = await createCheckpoint(writer);
    return {
      exitCode: 0,
      output: `checkpoint ${record.seq} at ${record.at}: ${record.leaves} chains, root ${record.root}, key ${record.keyId}`,
    };
  } catch (error) {
    if (error instanceof CheckpointError) return { exitCode: 1, output: `charter: ${error.message}` };
    throw error;
  }
}

/** Defines the checkpoint job and its schedule (every minute by default) on the queue, before it starts. */
export function scheduleCheckpoints(jobs: Jobs, writer: CheckpointWriter, cadence: Cadence = CHECKPOINT_CADENCE): void {
  jobs.define(CHECKPOINT_JOB, async () => {
    await createCheckpoint(writer);
  });
  jobs.schedule(CHECKPOINT_JOB, cadence);
}
