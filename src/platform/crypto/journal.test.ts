import { createPrivateKey, generateKeyPairSync } from "node:crypto";
import { appendFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { manualClock } from "../clock.ts";
import { prepareDataDir } from "../data-dir.ts";
import { uuidv7 } from "../ids.ts";
import { type DestructionRecord, JOURNAL_FILE, JournalError, openJournal, readJournal } from "./journal.ts";
import { completeRotation, createSuccessorKey, loadSigningKey, SigningKey, signingKeyPath } from "./signing-key.ts";

const newKey = () => new SigningKey(generateKeyPairSync("ed25519").privateKey);

describe("the destruction journal", () => {
  let dir: string;
  let path: string;
  const key = newKey();
  const clock = manualClock("2026-03-01T10:00:00Z");
  const tenantId = uuidv7();
  const records: DestructionRecord[] = [
    { type: "subject-erased", tenantId, subjectId: uuidv7(), reason: "erasure-request" },
    { type: "key-destroyed", scope: "subject", tenantId, subjectId: uuidv7(), keyId: uuidv7(), reason: "rotation" },
    { type: "person-erased", personId: uuidv7(), reason: "erasure-request" },
    { type: "key-destroyed", scope: "person", personId: uuidv7(), keyId: uuidv7(), reason: "retention" },
    { type: "tenant-deleted", tenantId, reason: "offboarding" },
  ];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "charter-journal-test-"));
    path = join(dir, JOURNAL_FILE);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  async function writeAll(): Promise<string[]> {
    const journal = openJournal({ dir, signingKey: key, clock });
    for (const record of records) {
      await journal.append(record);
      clock.advance(1000);
    }
    return readFileSync(path, "utf8").trimEnd().split("\n");
  }

  it("appends signed, chained entries of every type and reads them back from a new instance", async () => {
    const journal = openJournal({ dir, signingKey: key, clock });
    expect(journal.read()).toEqual([]);
    const first = await journal.append(records[0] as DestructionRecord);
    expect(first).toMatchObject({ seq: 1, prev: "0".repeat(64), at: clock.now(), signer: key.keyId });
    clock.advance(1000);
    for (const record of records.slice(1)) await journal.append(record);

    const read = readJournal(dir, key);
    expect(read.map((e) => e.record)).toEqual(records);
    expect(read.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5]);
    for (const [i, entry] of read.entries()) {
      if (i > 0) expect(entry.prev).toBe(read[i - 1]?.hash);
    }
    expect(read[0]?.at).toEqual(new Date("2026-03-01T10:00:00Z"));
    expect(statSync(path).mode & 0o777).toBe(0o600);

    // A new instance (as after a restart) continues the chain where the file ends.
    const reopened = openJournal({ dir, signingKey: key, clock });
    // What start-up replays: the entries verified on opening, as the disk has them.
    expect(reopened.entriesAtOpen).toEqual(read);
    const sixth = await reopened.append(records[0] as DestructionRecord);
    expect(sixth).toMatchObject({ seq: 6, prev: read[4]?.hash });
    expect(reopened.read()).toHaveLength(6);
  });

  it("holds ids and reason codes only, and refuses anything else before writing", async () => {
    const journal = openJournal({ dir, signingKey: key, clock });
    const bad = [
      { type: "subject-erased", tenantId, subjectId: "not-a-uuid", reason: "erasure-request" },
      { type: "subject-erased", tenantId, subjectId: uuidv7(), reason: "asked nicely by Jane Doe" },
      { type: "subject-erased", tenantId, subjectId: uuidv7(), reason: "erasure-request", name: "Jane Doe" },
      { type: "subject-forgotten", tenantId, subjectId: uuidv7(), reason: "erasure-request" },
    ];
    for (const record of bad) {
      await expect(journal.append(record as DestructionRecord)).rejects.toThrow(TypeError);
    }
    expect(() => statSync(path)).toThrow();
    await journal.append(records[0] as DestructionRecord);
    expect(journal.read()).toHaveLength(1);
  });

  it("serialises concurrent appends into one unbroken chain", async () => {
    const journal = openJournal({ dir, signingKey: key, clock });
    const entries = await Promise.all(
      Array.from({ length: 20 }, (_, i) => journal.append(records[i % 5] as DestructionRecord)),
    );
    expect(entries.map((e) => e.seq).sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect(readJournal(dir, key)).toHaveLength(20);
  });

  it("detects an edited byte anywhere in an entry", async () => {
    const lines = await writeAll();
    const original = readFileSync(path, "utf8");
    const target = lines[2] as string;
    const offset = original.indexOf(target);
    // Every position of one line: values, keys, punctuation, signature.
    for (let i = 0; i < target.length; i++) {
      const bytes = Buffer.from(original, "utf8");
      const at = offset + i;
      bytes[at] = (bytes[at] as number) === 0x30 ? 0x31 : 0x30;
      writeFileSync(path, bytes);
      expect(() => readJournal(dir, key), `edit at ${i}`).toThrow(JournalError);
    }
  });

  it("detects a removed, a reordered and a duplicated line", async () => {
    const lines = await writeAll();
    const write = (ls: string[]) => writeFileSync(path, `${ls.join("\n")}\n`);

    write([lines[0], lines[2], lines[3], lines[4]] as string[]);
    expect(() => readJournal(dir, key)).toThrow(/line 2 has sequence number 3, expected 2/);
    write([lines[1], lines[0], lines[2], lines[3], lines[4]] as string[]);
    expect(() => readJournal(dir, key)).toThrow(/line 1 has sequence number 2/);
    write([lines[0], lines[1], lines[1], lines[2]] as string[]);
    expect(() => readJournal(dir, key)).toThrow(JournalError);
    write([lines[0], ` ${lines[1]}`] as string[]);
    expect(() => readJournal(dir, key)).toThrow(/not written as the journal writes entries/);
    // Opening for appends refuses as reading does: nothing is appended to a tampered journal.
    expect(() => openJournal({ dir, signingKey: key, clock })).toThrow(JournalError);
  });

  it("refuses entries signed by another key, and a chain re-signed by another key", async () => {
    await writeAll();
    const other = newKey();
    expect(() => readJournal(dir, other)).toThrow(
      `is signed by key ${key.keyId}, not by this platform's signing key ${other.keyId} nor by one it retired`,
    );
    // Another key claiming this key's id: the signature does not verify.
    expect(() => readJournal(dir, { keyId: key.keyId, publicKeyPem: other.publicKeyPem, retired: [] })).toThrow(
      /invalid signature/,
    );
  });

  it("drops a torn last line (an append that never returned) and goes on from the entry before it", async () => {
    const lines = await writeAll();
    appendFileSync(path, (lines[0] as string).slice(0, 40));
    expect(readJournal(dir, key)).toHaveLength(5);
    const journal = openJournal({ dir, signingKey: key, clock });
    const next = await journal.append(records[0] as DestructionRecord);
    expect(next.seq).toBe(6);
    expect(readJournal(dir, key)).toHaveLength(6);
  });

  it("after a rotation of the signing key, start-up opens it: old entries under the retired key, new under the new", async () => {
    const paths = prepareDataDir(join(dir, "data"));
    const quiet = () => {};
    const first = loadSigningKey(paths, quiet);
    const firstPrivate = createPrivateKey(readFileSync(signingKeyPath(paths)));
    const before = openJournal({ dir: paths.journal, signingKey: first, clock });
    for (const record of records.slice(0, 2)) await before.append(record);

    const successor = createSuccessorKey(paths);
    completeRotation(paths, first, { seq: 9, at: clock.now().toISOString(), successor: successor.keyId });
    // What start-up does: load the key (with the keys it retired), open the journal, which verifies it.
    const rotated = loadSigningKey(paths, quiet);
    expect(rotated.keyId).toBe(successor.keyId);
    expect(rotated.retired.map((k) => k.keyId)).toEqual([first.keyId]);
    const after = openJournal({ dir: paths.journal, signingKey: rotated, clock });
    expect(after.entriesAtOpen.map((e) => e.signer)).toEqual([first.keyId, first.keyId]);
    await after.append(records[2] as DestructionRecord);
    expect(readJournal(paths.journal, rotated).map((e) => e.signer)).toEqual([first.keyId, first.keyId, rotated.keyId]);

    // The retired key alone does not know the new one; and a key the history retired earlier never signs after
    // a later one (here the history reversed, as a forger holding the retired key would need it).
    expect(() => readJournal(paths.journal, first)).toThrow(`line 3 is signed by key ${rotated.keyId}`);
    const reversed = new SigningKey(firstPrivate, [
      { ...rotated.toJSON(), retiredAt: clock.now().toISOString(), rotation: 1, successor: first.keyId },
    ]);
    expect(() => readJournal(paths.journal, reversed)).toThrow(/line 3 is signed by key .*, retired before key/);
  });
});
