import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestCertificate, type TestCertificate } from "../../../test/support/certs.ts";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { loadConfig } from "../../config.ts";
import { manualClock } from "../clock.ts";
import { JOURNAL_FILE, JournalError, openJournal } from "../crypto/journal.ts";
import { loadSigningKey, signingKeyPath } from "../crypto/signing-key.ts";
import { prepareDataDir } from "../data-dir.ts";
import type { Database } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import type { Control } from "./controls.ts";
import { kernelControls } from "./kernel-controls.ts";

describe("control tls.settings (E1)", () => {
  const control = kernelControls().find((c) => c.id === "tls.settings");
  // This control reads the configuration and the TLS files only.
  const check = (env: Record<string, string>) =>
    control?.check({ db: undefined as unknown as Database, config: loadConfig(env) });
  let cert: TestCertificate;
  beforeAll(() => {
    cert = createTestCertificate();
  });
  afterAll(() => cert?.remove());

  it("passes plain HTTP only while both the listening address and the public URL are loopback", async () => {
    expect(await check({})).toMatchObject({ ok: true, evidence: expect.stringContaining("development only") });
    expect(await check({ HOST: "::1", PUBLIC_URL: "http://[::1]:3000" })).toMatchObject({ ok: true });
    expect(await check({ HOST: "0.0.0.0" })).toMatchObject({
      ok: false,
      evidence: expect.stringContaining("served without TLS on 0.0.0.0"),
    });
    expect(await check({ PUBLIC_URL: "http://crm.example.com" })).toMatchObject({ ok: false });
  });

  it("passes TLS terminated by a trusted proxy in front of an https public URL", async () => {
    const proxied = { HOST: "0.0.0.0", PUBLIC_URL: "https://crm.example.com", CHARTER_TRUSTED_PROXIES: "10.0.0.2" };
    expect(await check(proxied)).toMatchObject({ ok: true, evidence: expect.stringContaining("10.0.0.2") });
    expect(await check({ ...proxied, CHARTER_TRUSTED_PROXIES: "" })).toMatchObject({ ok: false });
  });

  it("passes direct TLS with a valid certificate and a private key, and fails a key others can read", async () => {
    const tls = { HOST: "0.0.0.0", CHARTER_TLS_CERT: cert.certPath, CHARTER_TLS_KEY: cert.keyPath };
    expect(await check(tls)).toMatchObject({ ok: true, evidence: expect.stringContaining("minimum TLSv1.2") });
    chmodSync(cert.keyPath, 0o644);
    try {
      expect(await check(tls)).toMatchObject({ ok: false, evidence: expect.stringContaining("chmod 600") });
    } finally {
      chmodSync(cert.keyPath, 0o600);
    }
  });
});

describe.each(DATABASE_KINDS)("control keys.destruction-journal on %s (P4)", (kind) => {
  const control = kernelControls().find((c) => c.id === "keys.destruction-journal") as Control;
  const clock = manualClock("2026-06-01T12:00:00Z");
  let t: TestDatabase;
  let dataDir: string;
  const check = () => control.check({ db: t.db, config: loadConfig({ CHARTER_DATA_DIR: dataDir }) });
  beforeAll(async () => {
    t = await openTestDatabase(kind);
    dataDir = mkdtempSync(join(tmpdir(), "charter-journal-control-"));
  });
  afterAll(async () => {
    await t?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("passes with nothing journalled, verifies a journal it can read, and fails one tampered with or unverifiable", async () => {
    expect(await check()).toEqual({ ok: true, evidence: "no destruction journalled yet" });

    const paths = prepareDataDir(dataDir);
    const journal = openJournal({ dir: paths.journal, signingKey: loadSigningKey(paths, () => {}), clock });
    const tenantId = uuidv7();
    await journal.append({ type: "tenant-deleted", tenantId, reason: "offboarding" });
    await journal.append({ type: "subject-erased", tenantId, subjectId: uuidv7(), reason: "erasure-request" });
    expect(await check()).toMatchObject({
      ok: true,
      evidence: expect.stringMatching(/^2 journal entries, each signed/),
    });

    const file = join(paths.journal, JOURNAL_FILE);
    const original = readFileSync(file, "utf8");
    writeFileSync(file, original.replace("offboarding", "retention"));
    await expect(check()).rejects.toThrow(JournalError);
    writeFileSync(file, original);

    rmSync(signingKeyPath(paths));
    expect(await check()).toMatchObject({ ok: false, evidence: expect.stringContaining("cannot be verified") });
  });
});
