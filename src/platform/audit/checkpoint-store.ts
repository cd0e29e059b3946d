import { closeSync, existsSync, fstatSync, openSync, readdirSync, readFileSync, readSync, truncateSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { fsyncDirectory } from "../crypto/journal.ts";
import type { Tx } from "../db/index.ts";
import {
  type CheckpointHead,
  type CheckpointRecord,
  headSchema,
  recordHash,
  recordSchema,
  type SignedCheckpoint,
  signatureSchema,
} from "./checkpoint-record.ts";
import "./checkpoint-schema.ts";
import { canonicalize } from "./canonical.ts";

/**
 * The two places every checkpoint is kept, so that rolling back one of them shows against the other:
 * daily files in the data directory's `checkpoints/` (outside the database, with the heads themselves, so
 * inclusion proofs can be rebuilt) and the INSERT-only table audit_checkpoints (migration 0008).
 *
 * A file is `YYYY-MM-DD.jsonl` (the UTC day of the records in it), one canonical JSON line per checkpoint:
 * `{"heads":[{"chain":…,"hash":…,"seq":…},…],"record":{…},"sig":"<base64url>"}`. Each line is written in
 * one call ending in its newline and flushed before the row commits; an unterminated last line is an append
 * whose transaction never committed, so readers leave it out and the next append cuts it off.
 */

const FILE = /^\d{4}-\d{2}-\d{2}\.jsonl$/;

/** A checkpoint read from a file, with the heads its tree was built over. */
export interface FileCheckpoint extends SignedCheckpoint {
  heads: CheckpointHead[];
  /** `file:line`, for reports. */
  where: string;
}

/** A checkpoint read from the table. */
export type RowCheckpoint = SignedCheckpoint;

/** A line or row that is not a checkpoint as this code writes them: altered or damaged. */
export interface Unreadable {
  where: string;
  /** The sequence number it claims, when that much could be read. */
  seq: number | undefined;
}

const lineSchema = z.strictObject({
  heads: z.array(headSchema),
  record: z.unknown(),
  sig: signatureSchema,
});

function lineText(checkpoint: SignedCheckpoint, heads: readonly CheckpointHead[]): string {
  return canonicalize({ heads, record: checkpoint.record, sig: checkpoint.sig });
}

function claimedSeq(value: unknown): number | undefined {
  const seq = (value as { record?: { seq?: unknown } } | null)?.record?.seq;
  return typeof seq === "number" && Number.isSafeInteger(seq) ? seq : undefined;
}

/** Parses one line; it must be exactly the canonical text of what it parses to. */
function parseLine(text: string, where: string): FileCheckpoint | Unreadable {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return { where, seq: undefined };
  }
  const line = lineSchema.safeParse(json);
  const record = recordSchema.safeParse(line.success ? line.data.record : undefined);
  if (!line.success || !record.success) return { where, seq: claimedSeq(json) };
  const checkpoint = { record: record.data as CheckpointRecord, sig: line.data.sig, hash: recordHash(record.data) };
  if (lineText(checkpoint, line.data.heads) !== text) return { where, seq: record.data.seq };
  return { ...checkpoint, heads: line.data.heads, where };
}

export const isUnreadable = <T extends SignedCheckpoint>(entry: T | Unreadable): entry is Unreadable =>
  !("record" in entry);

/** The daily files in order of their days. */
function checkpointFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((name) => FILE.test(name))
    .sort();
}

/** Every complete line of every daily file, in order; modifies nothing. */
export function readCheckpointFiles(dir: string): (FileCheckpoint | Unreadable)[] {
  const entries: (FileCheckpoint | Unreadable)[] = [];
  for (const name of checkpointFiles(dir)) {
    const content = readFileSync(join(dir, name), "utf8");
    const lines = content
      .slice(0, content.lastIndexOf("\n") + 1)
      .split("\n")
      .slice(0, -1);
    for (const [index, text] of lines.entries()) entries.push(parseLine(text, `${name}:${index + 1}`));
  }
  return entries;
}

const TAIL_CHUNK = 64 * 1024;

/** The file's last complete line, where complete lines end, and its size; read from the end. */
function lastCompleteLine(path: string): { text: string | undefined; completeBytes: number; size: number } {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    let tail = Buffer.alloc(0);
    let position = size;
    for (;;) {
      const end = tail.lastIndexOf(0x0a);
      if (end >= 0) {
        const start = end === 0 ? -1 : tail.lastIndexOf(0x0a, end - 1);
        if (start >= 0 || position === 0) {
          return { text: tail.subarray(start + 1, end).toString("utf8"), completeBytes: position + end + 1, size };
        }
      } else if (position === 0) {
        return { text: undefined, completeBytes: 0, size };
      }
      const length = Math.min(TAIL_CHUNK, position);
      position -= length;
      const chunk = Buffer.alloc(length);
      readSync(fd, chunk, 0, length, position);
      tail = Buffer.concat([chunk, tail]);
    }
  } finally {
    closeSync(fd);
  }
}

/** The last checkpoint written to the files, without reading them whole; undefined when there is none. */
export function lastFileCheckpoint(dir: string): FileCheckpoint | Unreadable | undefined {
  for (const name of checkpointFiles(dir).reverse()) {
    const { text } = lastCompleteLine(join(dir, name));
    if (text !== undefined) return parseLine(text, name);
  }
  return undefined;
}

/** Appends one checkpoint to its day's file and flushes it (and the directory, for a new file). */
export async function appendCheckpointLine(
  dir: string,
  checkpoint: SignedCheckpoint,
  heads: readonly CheckpointHead[],
): Promise<void> {
  const path = join(dir, `${checkpoint.record.at.slice(0, 10)}.jsonl`);
  const isNew = !existsSync(path);
  if (!isNew) {
    // A torn line of an append that never committed: cut off, or the new line would be glued to it.
    const { completeBytes, size } = lastCompleteLine(path);
    if (size > completeBytes) truncateSync(path, completeBytes);
  }
  const handle = await open(path, "a", 0o600);
  try {
    await handle.writeFile(`${lineText(checkpoint, heads)}\n`, "utf8");
    await handle.sync();
  } finally {
    await handle.close();
  }
  if (isNew) fsyncDirectory(dir);
}

export async function insertCheckpointRow(tx: Tx, checkpoint: SignedCheckpoint): Promise<void> {
  await tx
    .insertInto("audit_checkpoints")
    .values({
      seq: checkpoint.record.seq,
      type: checkpoint.record.type,
      record: canonicalize(checkpoint.record),
      signature: checkpoint.sig,
    })
    .execute();
}

function parseRow(row: { seq: number; type: string; record: string; signature: string }): RowCheckpoint | Unreadable {
  const where = `audit_checkpoints seq ${row.seq}`;
  let json: unknown;
  try {
    json = JSON.parse(row.record);
  } catch {
    return { where, seq: row.seq };
  }
  const record = recordSchema.safeParse(json);
  const sig = signatureSchema.safeParse(row.signature);
  if (!record.success || !sig.success) return { where, seq: row.seq };
  const parsed = record.data as CheckpointRecord;
  if (canonicalize(parsed) !== row.record || parsed.seq !== row.seq || parsed.type !== row.type) {
    return { where, seq: row.seq };
  }
  return { record: parsed, sig: sig.data, hash: recordHash(parsed) };
}

/** Every row of audit_checkpoints, in order of seq. */
export async function readCheckpointRows(tx: Tx): Promise<(RowCheckpoint | Unreadable)[]> {
  const rows = await tx
    .selectFrom("audit_checkpoints")
    .select(["seq", "type", "record", "signature"])
    .orderBy("seq")
    .execute();
  return rows.map(parseRow);
}

/** The row with the highest seq, if any. */
export async function lastCheckpointRow(tx: Tx): Promise<RowCheckpoint | Unreadable | undefined> {
  const row = await tx
    .selectFrom("audit_checkpoints")
    .select(["seq", "type", "record", "signature"])
    .orderBy("seq", "desc")
    .limit(1)
    .executeTakeFirst();
  return row && parseRow(row);
}
