import { appendFileSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../clock.ts";
import {
  createSuccessorKey,
  existingSigningKey,
  loadSigningKey,
  type SigningKey,
  SigningKeyError,
  successorKeyPath,
} from "../crypto/signing-key.ts";
import { type DataDirPaths, prepareDataDir } from "../data-dir.ts";
import { KeyRotationError, rotateSigningKey } from "./checkpoint-rotation.ts";
import { verifyCheckpoints } from "./checkpoint-verify.ts";
import { appendKeyRotation, CheckpointError, createCheckpoint } from "./checkpoints.ts";
import { auditSocketHandlers } from "./cli.ts";
import { SYSTEM_ACTOR } from "./event.ts";
import { createTestAudit } from "./testing.ts";

/** The key in keys/signing.key, with the keys it retired. */
function currentKey(paths: DataDirPaths): SigningKey {
  const key = existingSigningKey(paths);
  if (!key) throw new Error("no signing key");
  return key;
}

describe.each(DATABASE_KINDS)("rotation of the signing key on %s (L3)", (kind) => {
  let t: TestDatabase | undefined;
  let root: string | undefined;
  afterEach(async () => {
    await t?.close();
    if (root) rmSync(root, { recursive: true, force: true });
    t = undefined;
    root = undefined;
  });

  async function setup() {
    t = await openTestDatabase(kind);
    root = mkdtempSync(join(tmpdir(), "charter-rotation-"));
    const paths = prepareDataDir(join(root, "data"));
    const clock = manualClock("2026-06-01T10:00:00Z");
    const db = t.db;
    const audit = createTestAudit(db, undefined, clock);
    const event = () =>
      db.withPlatform((tx) =>
        audit.record(tx, {
          tenantId: null,
          stream: "changes",
          actor: SYSTEM_ACTOR,
          action: "platform.noted",
          target: { type: "platform", id: null },
        }),
      );
    const checkpoint = async () => {
      await event();
      clock.advance(60_000);
      return createCheckpoint({ db, clock, dir: paths.checkpoints, signingKey: loadSigningKey(paths, () => {}) });
    };
    const verify = () => verifyCheckpoints({ db, dir: paths.checkpoints, verifier: currentKey(paths) });
    return { db, clock, paths, checkpoint, verify };
  }

  it("hands signing to a new key: the chain verifies across it, and the old private key is gone", async () => {
    const { db, clock, paths, checkpoint, verify } = await setup();
    await expect(rotateSigningKey({ db, clock, paths })).rejects.toThrow(KeyRotationError);
    // A running server holds the key it loaded: asked to rotate, it refuses.
    const access = { dir: paths.checkpoints, clock, existingKey: () => undefined, key: () => currentKey(paths) };
    expect(await auditSocketHandlers(db, access)["audit-rotate-signing-key"]?.({})).toMatchObject({
      exitCode: 1,
      output: expect.stringContaining("cannot be rotated while the server runs"),
    });
    await checkpoint();
    await checkpoint();
    const first = existingSigningKey(paths);
    const rotation = await rotateSigningKey({ db, clock, paths });
    expect(rotation).toMatchObject({ retired: { keyId: first?.keyId }, seq: 3, resumed: false });
    expect(rotation.current.keyId).not.toBe(first?.keyId);
    // The retired key's public half only: its private half left with the old keys/signing.key.
    expect(readdirSync(paths.keys).sort()).toEqual(["signing-retired.jsonl", "signing.key"]);
    const made = await checkpoint();
    expect(made.record).toMatchObject({ seq: 4, keyId: rotation.current.keyId });
    expect((await verify()).problems).toEqual([]);
    // Twice: the chain hands signing on from key to key.
    const again = await rotateSigningKey({ db, clock, paths });
    expect(again.retired.keyId).toBe(rotation.current.keyId);
    await checkpoint();
    expect((await verify()).problems).toEqual([]);
    expect(existingSigningKey(paths)?.retired.map((k) => [k.keyId, k.rotation])).toEqual([
      [first?.keyId, 3],
      [rotation.current.keyId, 5],
    ]);
  });

  it("completes a rotation the chain recorded before a crash, and discards one it never recorded", async () => {
    const { db, clock, paths, checkpoint, verify } = await setup();
    await checkpoint();
    const first = currentKey(paths);
    // A crash after the successor was written, before the chain recorded it.
    const unannounced = createSuccessorKey(paths);
    expect(() => loadSigningKey(paths, () => {})).toThrow(SigningKeyError);
    const fresh = await rotateSigningKey({ db, clock, paths });
    expect(fresh.resumed).toBe(false);
    expect(fresh.current.keyId).not.toBe(unannounced.keyId);
    expect((await verify()).problems).toEqual([]);

    // A crash after the chain recorded the rotation, before the key files were switched.
    const retiring = currentKey(paths);
    const successor = createSuccessorKey(paths);
    await appendKeyRotation({ db, clock, dir: paths.checkpoints, signingKey: retiring }, successor);
    // Until it completes, the key in keys/signing.key is not the one the chain hands signing to.
    expect((await verify()).problems.map((p) => p.kind)).toEqual(["checkpoint-signature"]);
    const resumed = await rotateSigningKey({ db, clock, paths });
    expect(resumed).toMatchObject({ resumed: true, seq: 3, current: { keyId: successor.keyId } });
    expect(existsSync(successorKeyPath(paths))).toBe(false);
    await checkpoint();
    expect((await verify()).problems).toEqual([]);
    expect(existingSigningKey(paths)?.retired.map((k) => k.keyId)).toEqual([first.keyId, retiring.keyId]);
  });

  it("refuses while the stores disagree, and leaves no successor behind", async () => {
    const { db, clock, paths, checkpoint } = await setup();
    await checkpoint();
    const [file] = readdirSync(paths.checkpoints);
    appendFileSync(join(paths.checkpoints, file as string), "not a record\n");
    await expect(rotateSigningKey({ db, clock, paths })).rejects.toThrow(CheckpointError);
    expect(existsSync(successorKeyPath(paths))).toBe(false);
  });
});
