import {
  closeSync,
  createReadStream,
  existsSync,
  fstatSync,
  openSync,
  readdirSync,
  readSync,
  truncateSync,
} from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { fsyncDirectory } from "../crypto/key-file.ts";
import type { Tx } from "../db/index.ts";
import { canonicalize } from "./canonical.ts";
import type { HeadChange } from "./checkpoint-heads.ts";
import {
  type ChainRecord,
  chainSchema,
  headSchema,
  recordHash,
  recordSchema,
  type SignedRecord,
  signatureSchema,
} from "./checkpoint-record.ts";
import "./checkpoint-schema.ts";

/**
 * The two places every record of the checkpoint chain is kept, so that rolling back one of them shows against
 * the other: daily files in the data directory's `checkpoints/` (outside the database, with the heads
 * themselves, so inclusion proofs can be rebuilt) and the INSERT-only table audit_checkpoints (migration 0008).
 *
 * A file is `YYYY-MM-DD.jsonl` (the UTC day of the records in it), one canonical JSON line per record, in one
 * of these shapes:
 *
 * - version 1 (written before changed-heads lines; still read): `{"heads":[…every head…],"record":{…},"sig":…}`
 * - version 2, a checkpoint: `{"base":…,"changed":[…],"record":{…},"removed":[…],"sig":…,"v":2}` — with base
 *   "empty", `changed` lists every head (the first line of each daily file, and the first a process writes);
 *   with base "previous", only the heads that changed since the checkpoint line before it, and `removed` the
 *   chains that are gone (checkpoint-heads.ts)
 * - version 2, a key rotation: `{"record":{…},"sig":…,"v":2}` (it changes no head)
 *
 * Each line is written in one call ending in its newline and flushed before the row commits; an unterminated
 * last line is an append whose transaction never committed, so readers leave it out and the next append cuts
 * it off. Readers go through the files line by line, never holding a file whole.
 */

const FILE = /^\d{4}-\d{2}-\d{2}\.jsonl$/;

/** A record read from a file, with the change of heads its line carries (checkpoints only). */
export interface FileRecord extends SignedRecord {
  change: HeadChange | undefined;
  /** `file:line`, for reports. */
  where: string;
}

/** A line or row that is not a record as this code writes them: altered or damaged. */
export interface Unreadable {
  where: string;
  /** The sequence number it claims, when that much could be read. */
  seq: number | undefined;
}

const signedLine = { record: z.unknown(), sig: signatureSchema };
const lineV1 = z.strictObject({ heads: z.array(headSchema), ...signedLine });
const checkpointLineV2 = z.strictObject({
  v: z.literal(2),
  base: z.enum(["empty", "previous"]),
  changed: z.array(headSchema),
  removed: z.array(chainSchema),
  ...signedLine,
});
const rotationLineV2 = z.strictObject({ v: z.literal(2), ...signedLine });

/** The line of a record: canonical JSON, in the version 2 shapes. */
function lineText(entry: SignedRecord, change: HeadChange | undefined): string {
  const signed = { record: entry.record, sig: entry.sig, v: 2 };
  return canonicalize(change ? { ...signed, ...change } : signed);
}

function claimedSeq(value: unknown): number | undefined {
  const seq = (value as { record?: { seq?: unknown } } | null)?.record?.seq;
  return typeof seq === "number" && Number.isSafeInteger(seq) ? seq : undefined;
}

/** The line's shape, told by its version and its record's type, and what it carries. */
function readLine(json: unknown): { record: unknown; sig: string; change: HeadChange | undefined } | undefined {
  const { v, record } = (json ?? {}) as { v?: unknown; record?: { type?: unknown } };
  if (v === undefined) {
    const line = lineV1.safeParse(json);
    if (!line.success || record?.type !== "checkpoint") return undefined;
    return { ...line.data, change: { base: "empty", changed: line.data.heads, removed: [] } };
  }
  if (record?.type === "key-rotation") {
    const line = rotationLineV2.safeParse(json);
    return line.success ? { ...line.data, change: undefined } : undefined;
  }
  const line = checkpointLineV2.safeParse(json);
  if (!line.success) return undefined;
  const { base, changed, removed } = line.data;
  return { record: line.data.record, sig: line.data.sig, change: { base, changed, removed } };
}

function isCanonical(json: unknown, text: string): boolean {
  try {
    return canonicalize(json as object) === text;
  } catch {
    return false;
  }
}

/** Parses one line; it must be exactly the canonical text of what it parses to. */
function parseLine(text: string, where: string): FileRecord | Unreadable {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return { where, seq: undefined };
  }
  const line = readLine(json);
  const record = recordSchema.safeParse(line?.record);
  if (!line || !record.success) return { where, seq: claimedSeq(json) };
  if (!isCanonical(json, text)) return { where, seq: record.data.seq };
  return {
    record: record.data as ChainRecord,
    sig: line.sig,
    hash: recordHash(record.data),
    change: line.change,
    where,
  };
}

export const isUnreadable = <T extends SignedRecord>(entry: T | Unreadable): entry is Unreadable =>
  !("record" in entry);

/** The daily files in order of their days. */
function checkpointFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((name) => FILE.test(name))
    .sort();
}

/** The complete lines of a file, read a chunk at a time; an unterminated last line is left out. */
async function* completeLines(path: string): AsyncGenerator<string> {
  let pending: Buffer[] = [];
  for await (const chunk of createReadStream(path) as AsyncIterable<Buffer>) {
    let start = 0;
    for (let end = chunk.indexOf(0x0a); end >= 0; end = chunk.indexOf(0x0a, start)) {
      pending.push(chunk.subarray(start, end));
      yield Buffer.concat(pending).toString("utf8");
      pending = [];
      start = end + 1;
    }
    if (start < chunk.length) pending.push(chunk.subarray(start));
  }
}

/** Every complete line of every daily file, in order, one at a time; modifies nothing. */
export async function* readCheckpointLines(dir: string): AsyncGenerator<FileRecord | Unreadable> {
  for (const name of checkpointFiles(dir)) {
    let number = 0;
    for await (const text of completeLines(join(dir, name))) {
      number += 1;
      yield parseLine(text, `${name}:${number}`);
    }
  }
}

const TAIL_CHUNK = 64 * 1024;

/** A file's last `count` complete lines (fewer if it has fewer), where complete lines end, and its size. */
function lastCompleteLines(path: string, count: number): { lines: string[]; completeBytes: number; size: number } {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    let tail = Buffer.alloc(0);
    let position = size;
    for (;;) {
      const end = tail.lastIndexOf(0x0a);
      if (end >= 0 || position === 0) {
        const parts = end >= 0 ? tail.subarray(0, end).toString("utf8").split("\n") : [];
        // Unless the file is read from its start, the first part is the end of a line that begins before.
        const whole = position === 0 ? parts : parts.slice(1);
        if (whole.length >= count || position === 0) {
          return { lines: whole.slice(-count), completeBytes: end >= 0 ? position + end + 1 : 0, size };
        }
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

/**
 * The last `count` records written to the files, oldest first, without reading the files whole: fewer when
 * the files hold fewer.
 */
export function lastFileRecords(dir: string, count: number): (FileRecord | Unreadable)[] {
  const found: (FileRecord | Unreadable)[] = [];
  for (const name of checkpointFiles(dir).reverse()) {
    const { lines } = lastCompleteLines(join(dir, name), count - found.length);
    const first = lines.length;
    // Numbered from the end of the file: only the position among its last lines is known without reading it.
    found.unshift(...lines.map((text, i) => parseLine(text, `${name} (line ${first - i} from the end)`)));
    if (found.length >= count) break;
  }
  return found;
}

/** Appends one record to its day's file and flushes it (and the directory, for a new file). */
export async function appendCheckpointLine(
  dir: string,
  entry: SignedRecord,
  change: HeadChange | undefined,
): Promise<void> {
  const path = join(dir, `${entry.record.at.slice(0, 10)}.jsonl`);
  const isNew = !existsSync(path);
  if (!isNew) {
    // A torn line of an append that never committed: cut off, or the new line would be glued to it.
    const { completeBytes, size } = lastCompleteLines(path, 1);
    if (size > completeBytes) truncateSync(path, completeBytes);
  }
  const handle = await open(path, "a", 0o600);
  try {
    await handle.writeFile(`${lineText(entry, change)}\n`, "utf8");
    await handle.sync();
  } finally {
    await handle.close();
  }
  if (isNew) fsyncDirectory(dir);
}

export async function insertCheckpointRow(tx: Tx, entry: SignedRecord): Promise<void> {
  await tx
    .insertInto("audit_checkpoints")
    .values({
      seq: entry.record.seq,
      type: entry.record.type,
      record: canonicalize(entry.record),
      signature: entry.sig,
    })
    .execute();
}

function parseRow(row: { seq: number; type: string; record: string; signature: string }): SignedRecord | Unreadable {
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
  const parsed = record.data as ChainRecord;
  if (canonicalize(parsed) !== row.record || parsed.seq !== row.seq || parsed.type !== row.type) {
    return { where, seq: row.seq };
  }
  return { record: parsed, sig: sig.data, hash: recordHash(parsed) };
}

/** Every row of audit_checkpoints, in order of seq. */
export async function readCheckpointRows(tx: Tx): Promise<(SignedRecord | Unreadable)[]> {
  const rows = await tx
    .selectFrom("audit_checkpoints")
    .select(["seq", "type", "record", "signature"])
    .orderBy("seq")
    .execute();
  return rows.map(parseRow);
}

/** The row with the highest seq, if any. */
export async function lastCheckpointRow(tx: Tx): Promise<SignedRecord | Unreadable | undefined> {
  const row = await tx
    .selectFrom("audit_checkpoints")
    .select(["seq", "type", "record", "signature"])
    .orderBy("seq", "desc")
    .limit(1)
    .executeTakeFirst();
  return row && parseRow(row);
}
