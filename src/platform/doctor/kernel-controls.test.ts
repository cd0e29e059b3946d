import { chmodSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestCertificate, type TestCertificate } from "../../../test/support/certs.ts";
import { loadConfig } from "../../config.ts";
import type { Database } from "../db/index.ts";
import { KERNEL_CONTROLS } from "./kernel-controls.ts";

describe("control tls.settings (E1)", () => {
  const control = KERNEL_CONTROLS.find((c) => c.id === "tls.settings");
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
