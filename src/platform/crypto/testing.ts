import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Clock, systemClock } from "../clock.ts";
import type { Database } from "../db/index.ts";
import { type DestructionJournal, openJournal } from "./journal.ts";
import { createKeyRing, type KeyRing } from "./key-ring.ts";
import { MasterKey } from "./master-key.ts";
import { SigningKey } from "./signing-key.ts";

/**
 * Test support: a key ring over `db` with a fresh random master key, an in-memory signing key and a
 * journal in a new temporary directory, for tests that create tenants or encrypt without a data directory.
 */
export interface TestKeyRing extends KeyRing {
  masterKey: MasterKey;
  signingKey: SigningKey;
  journal: DestructionJournal;
}

export function createTestKeyRing(db: Database, clock: Clock = systemClock): TestKeyRing {
  const masterKey = new MasterKey(randomBytes(32));
  const signingKey = new SigningKey(generateKeyPairSync("ed25519").privateKey);
  const journal = openJournal({ dir: mkdtempSync(join(tmpdir(), "charter-journal-")), signingKey, clock });
  return { ...createKeyRing({ db, masterKey, clock, journal }), masterKey, signingKey, journal };
}
