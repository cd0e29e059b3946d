import { createHash } from "node:crypto";
import { closeSync, fsyncSync, openSync, readFileSync, truncateSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import type { Clock } from "../clock.ts";
import { isUuid } from "../ids.ts";
import { fsyncDirectory } from "./key-file.ts";
import { type PublicKeyHistory, type PublicSigningKey, SigningKey } from "./signing-key.ts";

/**
 * The destruction journal (promises P4, P10): every key destruction, subject erasure and tenant deletion
 * is appended here, signed and flushed, before the database transaction that performs it commits. The
 * journal lives in `journal/` of the data directory, outside the database, so a restored (older) backup
 * and a commit that failed after the append are both completed by replaying it (journal-replay.ts): the
 * journal always wins.
 *
 * One file, one JSON entry per line:
 *
 *     {"seq":1,"prev":"<64 hex>","at":"<ISO time>","record":{…},"signer":"<key id>","sig":"<base64url>"}
 *
 * - seq counts from 1 without gaps; prev is the SHA-256 (hex) of the previous line (64 zeros for the
 *   first), so a removed, reordered or inserted line breaks the chain;
 * - record holds the type and ids only, never personal data (the journal is kept beyond any erasure);
 * - sig is the platform's Ed25519 signature (signing-key.ts) over DOMAIN, a NUL and the line without
 *   its sig; signer is the key id that made it. After a rotation of the signing key, entries before it stay
 *   signed by the retired key: a reader accepts the current key and the keys it retired, in their order (an
 *   entry is never signed by a key older than the one of the entry before it).
 *
 * A line must be exactly the canonical serialisation of what it parses to, so an edited byte is caught
 * even where JSON would tolerate it (white space, key order, escapes).
 *
 * Limits, stated plainly: appends are serialised within one process; two processes appending to one
 * journal directory would interleave sequence numbers, and are refused only by PGlite's data-directory
 * lock. A deployment of several processes on PostgreSQL needs one journal each, which start-up replays
 * independently (journal_replays is keyed by journal). Removing lines at the end of the file cannot be
 * seen from the file alone; journal-replay.ts refuses a journal shorter than what the database applied.
 */

export const JOURNAL_FILE = "destructions.jsonl";
const DOMAIN = "charter/destruction-journal/v1";
const GENESIS = "0".repeat(64);

/** Why a key is destroyed: a code, never free text, so nothing personal enters the journal. */
export const DESTRUCTION_REASONS = ["erasure-request", "retention", "offboarding", "rotation"] as const;
export type DestructionReason = (typeof DESTRUCTION_REASONS)[number];

/** What the journal records; a tagged union, ids only. */
export type DestructionRecord =
  | {
      type: "key-destroyed";
      scope: "subject";
      tenantId: string;
      subjectId: string;
      keyId: string;
      reason: DestructionReason;
    }
  | { type: "key-destroyed"; scope: "person"; personId: string; keyId: string; reason: DestructionReason }
  | { type: "subject-erased"; tenantId: string; subjectId: string; reason: DestructionReason }
  | { type: "person-erased"; personId: string; reason: DestructionReason }
  | { type: "tenant-deleted"; tenantId: string; reason: DestructionReason };

export type DestructionType = DestructionRecord["type"];

export interface JournalEntry<R extends DestructionRecord = DestructionRecord> {
  seq: number;
  /** SHA-256 (hex) of the previous line. */
  prev: string;
  at: Date;
  record: R;
  /** The id of the signing key that signed the entry. */
  signer: string;
  /** SHA-256 (hex) of this entry's line: the next entry's prev. */
  hash: string;
}

/** The journal cannot be read as written by this platform: tampered, truncated or signed by another key. */
export class JournalError extends Error {
  override name = "JournalError";
}

const uuid = z.string().refine(isUuid);
const reason = z.enum(DESTRUCTION_REASONS);
// A plain union: two record shapes share the type "key-destroyed" (told apart by scope).
const recordSchema = z.union([
  z.strictObject({
    type: z.literal("key-destroyed"),
    scope: z.literal("subject"),
    tenantId: uuid,
    subjectId: uuid,
    keyId: uuid,
    reason,
  }),
  z.strictObject({ type: z.literal("key-destroyed"), scope: z.literal("person"), personId: uuid, keyId: uuid, reason }),
  z.strictObject({ type: z.literal("subject-erased"), tenantId: uuid, subjectId: uuid, reason }),
  z.strictObject({ type: z.literal("person-erased"), personId: uuid, reason }),
  z.strictObject({ type: z.literal("tenant-deleted"), tenantId: uuid, reason }),
]);
const hex64 = z.string().regex(/^[0-9a-f]{64}$/);
const lineSchema = z.strictObject({
  seq: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  prev: hex64,
  at: z.iso.datetime(),
  record: z.unknown(),
  signer: z.string().regex(/^[0-9a-f]{16}$/),
  sig: z.string().regex(/^[A-Za-z0-9_-]+$/),
});

/** The record with its keys in one fixed order: the signed text must have a single spelling. */
function canonicalRecord(r: DestructionRecord): DestructionRecord {
  switch (r.type) {
    case "key-destroyed":
      return r.scope === "subject"
        ? {
            type: r.type,
            scope: r.scope,
            tenantId: r.tenantId,
            subjectId: r.subjectId,
            keyId: r.keyId,
            reason: r.reason,
          }
        : { type: r.type, scope: r.scope, personId: r.personId, keyId: r.keyId, reason: r.reason };
    case "subject-erased":
      return { type: r.type, tenantId: r.tenantId, subjectId: r.subjectId, reason: r.reason };
    case "person-erased":
      return { type: r.type, personId: r.personId, reason: r.reason };
    case "tenant-deleted":
      return { type: r.type, tenantId: r.tenantId, reason: r.reason };
  }
}

interface Unsigned {
  seq: number;
  prev: string;
  at: string;
  record: DestructionRecord;
  signer: string;
}

function ordered(u: Unsigned): Unsigned {
  return { seq: u.seq, prev: u.prev, at: u.at, record: canonicalRecord(u.record), signer: u.signer };
}

function signedBytes(u: Unsigned): Buffer {
  return Buffer.from(`${DOMAIN}\0${JSON.stringify(ordered(u))}`, "utf8");
}

function line(u: Unsigned, sig: string): string {
  return JSON.stringify({ ...ordered(u), sig });
}

const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("hex");

/** The platform's public keys, current and retired: what a reader needs. */
export type JournalVerifier = PublicKeyHistory;

export interface ParsedJournal {
  entries: JournalEntry[];
  /** Bytes up to the end of the last complete line; a longer file ends in a torn (never acknowledged) write. */
  completeBytes: number;
}

/**
 * Parses and verifies journal text: every line canonical, signed by the current key of `verifier` or one it
 * retired (never by a key older than the entry before it used), numbered from 1 and chained to the one before.
 * An unterminated last line is an append that never returned (it is written in one call ending in the
 * newline), so it is left out rather than refused.
 */
export function parseJournal(content: string, verifier: JournalVerifier, where: string): ParsedJournal {
  const end = content.lastIndexOf("\n") + 1;
  const lines = content.slice(0, end).split("\n").slice(0, -1);
  const entries: JournalEntry[] = [];
  const keys = [...verifier.retired, verifier];
  let oldestAllowed = 0;
  let prev = GENESIS;
  for (const [index, text] of lines.entries()) {
    const at = `${where} line ${index + 1}`;
    let parsed: z.infer<typeof lineSchema>;
    let record: DestructionRecord;
    try {
      parsed = lineSchema.parse(JSON.parse(text));
      record = recordSchema.parse(parsed.record);
    } catch {
      throw new JournalError(`${at} is not a valid journal entry: the journal was altered or damaged`);
    }
    const unsigned: Unsigned = { seq: parsed.seq, prev: parsed.prev, at: parsed.at, record, signer: parsed.signer };
    if (line(unsigned, parsed.sig) !== text) {
      throw new JournalError(`${at} is not written as the journal writes entries: the journal was altered`);
    }
    const keyIndex = keys.findIndex((key) => key.keyId === parsed.signer);
    if (keyIndex < 0) {
      throw new JournalError(
        `${at} is signed by key ${parsed.signer}, not by this platform's signing key ${verifier.keyId} ` +
          "nor by one it retired",
      );
    }
    if (keyIndex < oldestAllowed) {
      throw new JournalError(
        `${at} is signed by key ${parsed.signer}, retired before key ${keys[oldestAllowed]?.keyId} signed an earlier entry`,
      );
    }
    oldestAllowed = keyIndex;
    const signer = keys[keyIndex] as PublicSigningKey;
    if (!SigningKey.verify(signer.publicKeyPem, signedBytes(unsigned), Buffer.from(parsed.sig, "base64url"))) {
      throw new JournalError(`${at} has an invalid signature: the journal was altered`);
    }
    if (parsed.seq !== index + 1) {
      throw new JournalError(
        `${at} has sequence number ${parsed.seq}, expected ${index + 1}: entries were removed, inserted or reordered`,
      );
    }
    if (parsed.prev !== prev) {
      throw new JournalError(`${at} does not follow the entry before it: the hash chain is broken`);
    }
    prev = sha256(text);
    entries.push({
      seq: parsed.seq,
      prev: parsed.prev,
      at: new Date(parsed.at),
      record,
      signer: parsed.signer,
      hash: prev,
    });
  }
  return { entries, completeBytes: Buffer.byteLength(content.slice(0, end), "utf8") };
}

function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return "";
    throw new JournalError(`${path} cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
}

/** Reads and verifies the journal in `dir` (an absent journal has no entries). Modifies nothing. */
export function readJournal(dir: string, verifier: JournalVerifier): JournalEntry[] {
  const path = join(dir, JOURNAL_FILE);
  return parseJournal(readText(path), verifier, path).entries;
}

function checkRecord(record: DestructionRecord): DestructionRecord {
  const result = recordSchema.safeParse(record);
  if (!result.success) {
    throw new TypeError("a journal record must be one of the destruction types, with UUID ids and a reason code");
  }
  return canonicalRecord(result.data);
}

export interface DestructionJournal {
  /** The journal file. */
  readonly path: string;
  readonly dir: string;
  readonly verifier: JournalVerifier;
  /**
   * The entries as opening verified them: start-up replays these rather than reading and verifying every
   * signature a second time. Later readers (doctor, a restore) use read(), which goes back to the disk.
   */
  readonly entriesAtOpen: readonly JournalEntry[];
  /**
   * Appends a signed entry and flushes it (file, and the directory when the file is new) before
   * resolving: once this returns, the destruction happens, whatever becomes of the caller's transaction.
   */
  append(record: DestructionRecord): Promise<JournalEntry>;
  /** Reads and verifies every entry from disk. */
  read(): JournalEntry[];
}

/**
 * Opens the journal in `dir` for appending: verifies what is there (refusing a tampered journal) and
 * cuts off a torn last line left by a crash mid-append.
 */
export function openJournal(options: { dir: string; signingKey: SigningKey; clock: Clock }): DestructionJournal {
  const { dir, signingKey, clock } = options;
  const path = join(dir, JOURNAL_FILE);
  const verifier: JournalVerifier = {
    keyId: signingKey.keyId,
    publicKeyPem: signingKey.publicKeyPem,
    retired: signingKey.retired,
  };
  const content = readText(path);
  const parsed = parseJournal(content, verifier, path);
  if (parsed.completeBytes < Buffer.byteLength(content, "utf8")) {
    truncateSync(path, parsed.completeBytes);
    const fd = openSync(path, "r+");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }
  const last = parsed.entries.at(-1);
  let seq = last?.seq ?? 0;
  let prev = last?.hash ?? GENESIS;
  /** Set when a write or flush failed: what reached the disk is unknown, so only a restart may go on. */
  let broken: Error | undefined;
  let queue: Promise<unknown> = Promise.resolve();

  async function write(record: DestructionRecord): Promise<JournalEntry> {
    if (broken)
      throw new JournalError(`the journal ${path} failed to write earlier; restart Charter (${broken.message})`);
    const unsigned: Unsigned = {
      seq: seq + 1,
      prev,
      at: clock.now().toISOString(),
      record,
      signer: signingKey.keyId,
    };
    const text = line(unsigned, signingKey.sign(signedBytes(unsigned)).toString("base64url"));
    try {
      const handle = await open(path, "a", 0o600);
      try {
        // One write ending in the newline: a crash leaves either the whole line or an unterminated tail.
        await handle.writeFile(`${text}\n`, "utf8");
        await handle.sync();
      } finally {
        await handle.close();
      }
      if (unsigned.seq === 1) fsyncDirectory(dir);
    } catch (error) {
      broken = error as Error;
      throw new JournalError(
        `the journal ${path} cannot be written (${(error as NodeJS.ErrnoException).code ?? error})`,
      );
    }
    seq = unsigned.seq;
    prev = sha256(text);
    return { ...unsigned, at: new Date(unsigned.at), hash: prev };
  }

  return {
    path,
    dir,
    verifier,
    entriesAtOpen: parsed.entries,
    append(record) {
      // Validated before queueing: bad input changes nothing and never waits behind other appends.
      let checked: DestructionRecord;
      try {
        checked = checkRecord(record);
      } catch (error) {
        return Promise.reject(error);
      }
      const result = queue.then(() => write(checked));
      queue = result.catch(() => {});
      return result;
    },
    read: () => readJournal(dir, verifier),
  };
}
