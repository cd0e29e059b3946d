import { createHash, createPublicKey, generateKeyPairSync, sign, verify } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createAudit } from "../src/platform/audit/audit.ts";
import { exportChainCheckpoints } from "../src/platform/audit/checkpoint-verify.ts";
import { appendKeyRotation, createCheckpoint } from "../src/platform/audit/checkpoints.ts";
import { exportChain } from "../src/platform/audit/export.ts";
import { manualClock } from "../src/platform/clock.ts";
import { SigningKey } from "../src/platform/crypto/signing-key.ts";
import { createTestKeyRing } from "../src/platform/crypto/testing.ts";
import { uuidv7 } from "../src/platform/ids.ts";
import { createTenant } from "../src/platform/tenancy/tenants.ts";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "./support/databases.ts";

// ---------------------------------------------------------------------------------------------------------
// The verifier: what a tenant or an auditor could write from the README alone. It uses node:crypto and
// nothing of Charter's code; the canonical form is written here a second time, on purpose.
// ---------------------------------------------------------------------------------------------------------

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** RFC 8785 for JSON without fractions: keys sorted by UTF-16 code units, no white space. */
function canonical(value: Json): string {
  if (value === null || typeof value === "boolean") return String(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new Error("not an integer");
    return String(value);
  }
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  const keys = Object.keys(value).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(value[k] as Json)}`).join(",")}}`;
}

const sha256 = (...parts: Buffer[]) => createHash("sha256").update(Buffer.concat(parts)).digest();

/** RFC 9162 section 2.1.3.2. */
function inclusionHolds(leaf: Buffer, index: number, size: number, proof: string[], root: string): boolean {
  if (index >= size) return false;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const hex of proof) {
    if (sn === 0) return false;
    const p = Buffer.from(hex, "hex");
    if (fn % 2 === 1 || fn === sn) {
      r = sha256(Buffer.from([1]), p, r);
      while (fn % 2 === 0 && fn !== 0) {
        fn = Math.floor(fn / 2);
        sn = Math.floor(sn / 2);
      }
    } else {
      r = sha256(Buffer.from([1]), r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && r.toString("hex") === root;
}

/** The id of an Ed25519 public key: the first 16 hex characters of SHA-256 of its raw 32 bytes. */
function keyIdOf(publicKeyPem: string): string {
  const { x } = createPublicKey(publicKeyPem).export({ format: "jwk" });
  return sha256(Buffer.from(x as string, "base64url"))
    .toString("hex")
    .slice(0, 16);
}

const signedBy = (domain: string, record: Json, sig: string, publicKeyPem: string) =>
  verify(null, Buffer.from(`${domain}\0${canonical(record)}`, "utf8"), publicKeyPem, Buffer.from(sig, "base64url"));

/**
 * Verifies an exported chain (JSON Lines: events, then its checkpoints and the key rotations, in the order of
 * the chain of records), starting from the platform's first public key, obtained separately; returns the first
 * problem, or "ok".
 */
function verifyExport(text: string, firstKeyPem: string): string {
  const lines = text.trimEnd().split("\n");
  const hashes = new Map<number, string>();
  let chain: string | undefined;
  let prev = "0".repeat(64);
  let checkpoints = 0;
  let key = { id: keyIdOf(firstKeyPem), pem: firstKeyPem };
  let lastRecord = 0;
  for (const [n, line] of lines.entries()) {
    const parsed = JSON.parse(line) as { [key: string]: Json };
    if (canonical(parsed) !== line) return `line ${n + 1}: not canonical`;
    if ("keyRotation" in parsed) {
      const { record, sig } = parsed.keyRotation as { record: { [key: string]: Json }; sig: string };
      if (record.v !== 1 || record.type !== "key-rotation") return `record ${record.seq}: unknown record`;
      if ((record.seq as number) <= lastRecord) return `record ${record.seq}: out of order`;
      lastRecord = record.seq as number;
      if (record.keyId !== key.id || !signedBy("charter/audit-checkpoint/v1", record, sig, key.pem)) {
        return `key rotation ${record.seq}: not signed by the key current there`;
      }
      const { possession, ...proven } = record;
      const newKey = record.newPublicKey as string;
      if (
        !signedBy("charter/audit-key-rotation/v1", proven, possession as string, newKey) ||
        keyIdOf(newKey) !== record.newKeyId
      ) {
        return `key rotation ${record.seq}: the new key did not sign it`;
      }
      key = { id: record.newKeyId as string, pem: newKey };
      continue;
    }
    if ("checkpoint" in parsed) {
      const { record, sig, head, index, proof } = parsed.checkpoint as {
        record: { [key: string]: Json };
        sig: string;
        head: { chain: string; seq: number; hash: string };
        index: number;
        proof: string[];
      };
      if (record.keyId !== key.id || !signedBy("charter/audit-checkpoint/v1", record, sig, key.pem)) {
        return `checkpoint ${record.seq}: bad signature`;
      }
      if (record.v !== 1 || record.type !== "checkpoint") return `checkpoint ${record.seq}: unknown record`;
      if ((record.seq as number) <= lastRecord) return `record ${record.seq}: out of order`;
      lastRecord = record.seq as number;
      if (head.chain !== chain) return `checkpoint ${record.seq}: another chain`;
      if (hashes.get(head.seq) !== head.hash) return `checkpoint ${record.seq}: the chain differs at ${head.seq}`;
      const leaf = sha256(Buffer.from([0]), Buffer.from(canonical(head), "utf8"));
      if (!inclusionHolds(leaf, index, record.leaves as number, proof, record.root as string)) {
        return `checkpoint ${record.seq}: the head is not in the signed tree`;
      }
      checkpoints += 1;
      continue;
    }
    if (checkpoints > 0) return `line ${n + 1}: an event after the checkpoints`;
    const { hash, ...event } = parsed;
    chain ??= event.chain as string;
    if (event.chain !== chain || event.seq !== hashes.size + 1 || event.prev !== prev) {
      return `event ${event.seq}: out of its chain`;
    }
    const computed = sha256(Buffer.from(prev, "hex"), Buffer.from(canonical(event), "utf8")).toString("hex");
    if (computed !== hash) return `event ${event.seq}: its hash does not match`;
    hashes.set(event.seq as number, hash);
    prev = hash;
  }
  if (checkpoints === 0) return "no checkpoint covers the chain";
  return "ok";
}

// ---------------------------------------------------------------------------------------------------------

describe.each(DATABASE_KINDS)("an exported chain, verified independently on %s (L3)", (kind) => {
  let t: TestDatabase;
  let dir: string;
  let exported: string;
  const signingKey = new SigningKey(generateKeyPairSync("ed25519").privateKey);
  // The platform's first key, supplied separately from the export, as an operator would publish it.
  const publicKeyPem = signingKey.publicKeyPem;
  const successorPair = generateKeyPairSync("ed25519");

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    dir = mkdtempSync(join(tmpdir(), "charter-independent-"));
    const clock = manualClock("2026-07-01T09:00:00Z");
    const keyRing = createTestKeyRing(t.db, clock);
    const audit = createAudit({ db: t.db, keyRing, clock });
    const slug = () => `v-${uuidv7().slice(-12)}`;
    const tenant = await createTenant(t.db, clock, { slug: slug(), name: "Verified" }, keyRing, audit);
    // Another tenant's chain in the same trees: the export must verify without it.
    const other = await createTenant(t.db, clock, { slug: slug(), name: "Other" }, keyRing, audit);
    let writer = { db: t.db, clock, dir, signingKey };
    const rounds = async (from: number, to: number) => {
      for (let round = from; round < to; round++) {
        for (const id of [tenant.id, other.id]) {
          await t.db.withTenant({ tenantId: id }, (tx) =>
            audit.record(tx, {
              tenantId: id,
              stream: "changes",
              actor: { kind: "user", id: uuidv7() },
              action: "record.updated",
              target: { type: "contact", id: uuidv7() },
              subjects: [uuidv7()],
              details: { fields: ["name"], round, note: 'é ü \u2028 "quoted"' },
            }),
          );
        }
        await createCheckpoint(writer);
        clock.advance(60_000);
      }
    };
    await rounds(0, 3);
    // The signing key is rotated (record 4); the next checkpoints are signed by the new key.
    const successor = new SigningKey(successorPair.privateKey);
    const rotation = await appendKeyRotation(writer, successor);
    const retired = { ...signingKey.toJSON(), retiredAt: rotation.record.at, rotation: 4, successor: successor.keyId };
    writer = { ...writer, signingKey: new SigningKey(successorPair.privateKey, [retired]) };
    await rounds(3, 5);
    let text = "";
    const write = (line: string) => {
      text += line;
    };
    const { chainId } = await exportChain(t.db, { tenantId: tenant.id, stream: "changes" }, write);
    await exportChainCheckpoints({ db: t.db, dir, verifier: writer.signingKey, chainId }, write);
    exported = text;
    expect(exported).not.toContain(other.id);
  });
  afterAll(async () => {
    await t?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("verifies the events' hash chain, every checkpoint's signature and inclusion proof, across a key rotation", () => {
    const lines = exported.trimEnd().split("\n");
    // Six events; checkpoints 1, 2, 3, 5 and 6, with the rotation (record 4) between them.
    expect(lines).toHaveLength(6 + 6);
    expect(lines.map((line) => Object.keys(JSON.parse(line))[0]).slice(6)).toEqual([
      "checkpoint",
      "checkpoint",
      "checkpoint",
      "keyRotation",
      "checkpoint",
      "checkpoint",
    ]);
    expect(verifyExport(exported, publicKeyPem)).toBe("ok");
  });

  it("follows signing only through the rotations in the chain", () => {
    const lines = exported.trimEnd().split("\n");
    // Without the rotation, the checkpoints after it are signed by a key never introduced.
    const withoutRotation = lines.filter((line) => !line.startsWith('{"keyRotation"')).join("\n");
    expect(verifyExport(withoutRotation, publicKeyPem)).toBe("checkpoint 5: bad signature");
    // Started from the new key, the checkpoints before the rotation are not its.
    const newKeyPem = createPublicKey(successorPair.privateKey).export({ format: "pem", type: "spki" }).toString();
    expect(verifyExport(exported, newKeyPem)).toBe("checkpoint 1: bad signature");
    // A rotation the new key did not sign (its proof replaced, the record signed again by the retiring key).
    const unproven = lines
      .map((line) => {
        const parsed = JSON.parse(line);
        if (!("keyRotation" in parsed)) return line;
        const { record } = parsed.keyRotation;
        record.possession = signingKey.sign(Buffer.from("anything")).toString("base64url");
        const signed = Buffer.from(`charter/audit-checkpoint/v1\0${canonical(record)}`, "utf8");
        parsed.keyRotation.sig = signingKey.sign(signed).toString("base64url");
        return canonical(parsed);
      })
      .join("\n");
    expect(verifyExport(unproven, publicKeyPem)).toBe("key rotation 4: the new key did not sign it");
  });

  it("rejects checkpoints signed by another key, and the right export checked against another key", () => {
    const forger = generateKeyPairSync("ed25519");
    const resigned = exported
      .trimEnd()
      .split("\n")
      .map((line) => {
        const parsed = JSON.parse(line);
        if (!("checkpoint" in parsed)) return line;
        const signed = Buffer.from(`charter/audit-checkpoint/v1\0${canonical(parsed.checkpoint.record)}`, "utf8");
        parsed.checkpoint.sig = sign(null, signed, forger.privateKey).toString("base64url");
        return canonical(parsed);
      })
      .join("\n");
    expect(verifyExport(resigned, publicKeyPem)).toBe("checkpoint 1: bad signature");
    const forgerPem = forger.publicKey.export({ format: "pem", type: "spki" }).toString();
    expect(verifyExport(exported, forgerPem)).toBe("checkpoint 1: bad signature");
  });

  it("rejects an edited event, and a chain rewritten with every hash recomputed", () => {
    const lines = exported.trimEnd().split("\n");
    const edited = lines.map((line, i) => (i === 2 ? line.replace('"round":1', '"round":7') : line)).join("\n");
    expect(edited).not.toBe(exported.trimEnd());
    expect(verifyExport(edited, publicKeyPem)).toBe("event 3: its hash does not match");

    // Every hash recomputed from event 3 on: the chain is consistent, but not what was checkpointed.
    let prev = "";
    const rewritten = lines
      .map((line) => {
        const parsed = JSON.parse(line);
        if ("checkpoint" in parsed || "keyRotation" in parsed) return line;
        const { hash, ...event } = parsed;
        if (event.seq < 3) {
          prev = hash;
          return line;
        }
        if (event.seq === 3) event.details.round = 7;
        event.prev = prev;
        prev = sha256(Buffer.from(prev, "hex"), Buffer.from(canonical(event), "utf8")).toString("hex");
        return canonical({ ...event, hash: prev });
      })
      .join("\n");
    expect(verifyExport(rewritten, publicKeyPem)).toBe("checkpoint 2: the chain differs at 3");
  });
});
