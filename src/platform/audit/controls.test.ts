import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { loadConfig } from "../../config.ts";
import { manualClock, systemClock } from "../clock.ts";
import { createSuccessorKey, discardSuccessorKey, loadSigningKey, signingKeyPath } from "../crypto/signing-key.ts";
import { createTestKeyRing } from "../crypto/testing.ts";
import { prepareDataDir } from "../data-dir.ts";
import type { Control } from "../doctor/controls.ts";
import { uuidv7 } from "../ids.ts";
import { createTenant } from "../tenancy/tenants.ts";
import { createAudit } from "./audit.ts";
import { createCheckpoint } from "./checkpoints.ts";
import { AUDIT_CONTROLS } from "./controls.ts";

const control = (id: string) => AUDIT_CONTROLS.find((c) => c.id === id) as Control;

describe.each(DATABASE_KINDS)("audit controls of charter doctor on %s (L3)", (kind) => {
  let t: TestDatabase;
  let dataDir: string;
  const check = (id: string) =>
    control(id).check({
      db: t.db,
      config: loadConfig({ CHARTER_DATA_DIR: dataDir, ...(t.url ? { DATABASE_URL: t.url } : {}) }),
    });
  beforeAll(async () => {
    t = await openTestDatabase(kind);
    dataDir = mkdtempSync(join(tmpdir(), "charter-audit-controls-"));
  });
  afterAll(async () => {
    await t?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("pass on a fresh data directory, fail when chains exist but nothing checkpoints them, pass once it does", async () => {
    expect(await check("audit.signing-key")).toMatchObject({
      ok: true,
      evidence: expect.stringContaining("no signing key yet"),
    });
    expect(await check("audit.checkpoint-fresh")).toEqual({
      ok: true,
      evidence: "no audit chain yet, so nothing to checkpoint",
    });
    expect(await check("audit.chains")).toMatchObject({ ok: true, evidence: "0 chains, 0 events verified" });
    expect(await check("audit.checkpoint-store")).toMatchObject({ ok: true });

    const keyRing = createTestKeyRing(t.db);
    await createTenant(
      t.db,
      systemClock,
      { slug: `d-${uuidv7().slice(-12)}`, name: "D" },
      keyRing,
      createAudit({ db: t.db, keyRing, clock: systemClock }),
    );
    expect(await check("audit.checkpoint-fresh")).toMatchObject({
      ok: false,
      evidence: expect.stringContaining("no checkpoint"),
    });

    const paths = prepareDataDir(dataDir);
    const signingKey = loadSigningKey(paths, () => {});
    // A checkpoint three minutes old is stale; a new one is fresh.
    const stale = manualClock(new Date(Date.now() - 3 * 60_000));
    await createCheckpoint({ db: t.db, clock: stale, dir: paths.checkpoints, signingKey });
    expect(await check("audit.checkpoint-fresh")).toMatchObject({
      ok: false,
      evidence: expect.stringContaining("older than 120 s"),
    });
    await createCheckpoint({ db: t.db, clock: systemClock, dir: paths.checkpoints, signingKey });
    expect(await check("audit.checkpoint-fresh")).toMatchObject({
      ok: true,
      evidence: expect.stringMatching(/^checkpoint 2 was made/),
    });
    expect(await check("audit.chains")).toMatchObject({
      ok: true,
      evidence: "1 chains, 1 events, 2 checkpoints verified",
    });
    expect(await check("audit.signing-key")).toMatchObject({
      ok: true,
      evidence: expect.stringContaining("mode 0600"),
    });
  });

  it("fail on a signing key others can read, a missing one, a checkpoint row deleted, a store inside the database directory", async () => {
    const paths = prepareDataDir(dataDir);
    const keyPath = signingKeyPath(paths);
    chmodSync(keyPath, 0o644);
    expect(await check("audit.signing-key")).toMatchObject({
      ok: false,
      evidence: expect.stringContaining("chmod 600"),
    });
    chmodSync(keyPath, 0o600);

    await t.superuser("DELETE FROM audit_checkpoints WHERE seq = 1");
    expect(await check("audit.chains")).toMatchObject({
      ok: false,
      evidence: expect.stringContaining("first: checkpoint-row-missing at checkpoints sequence 1"),
    });

    // A rotation left half done.
    createSuccessorKey(paths);
    expect(await check("audit.signing-key")).toMatchObject({
      ok: false,
      evidence: expect.stringContaining("run charter audit rotate-signing-key to finish it"),
    });
    discardSuccessorKey(paths);

    rmSync(keyPath);
    expect(await check("audit.signing-key")).toMatchObject({
      ok: false,
      evidence: expect.stringContaining("is missing"),
    });

    if (kind === "pglite") {
      // The embedded database's directory holding the checkpoints: one copy would carry both.
      rmSync(paths.checkpoints, { recursive: true });
      mkdirSync(join(paths.db, "checkpoints"), { recursive: true });
      symlinkSync(join(paths.db, "checkpoints"), paths.checkpoints);
      expect(await check("audit.checkpoint-store")).toMatchObject({
        ok: false,
        evidence: expect.stringContaining("share a directory"),
      });
    }
  });
});
