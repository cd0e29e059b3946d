import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { cliEnv, runCharter, STACK_FRAME } from "../test/support/cli.ts";
import { ConfigError, loadConfig } from "./config.ts";

describe("loadConfig", () => {
  it("has embedded defaults: PGlite in ./.charter, port 3000, no TLS, no trusted proxies", () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      databaseUrl: undefined,
      runtimeDatabaseUrl: undefined,
      dataDir: resolve(".charter"),
      masterKey: { kind: "generated", path: resolve(".charter", "keys", "master.key") },
      host: "127.0.0.1",
      port: 3000,
      tls: undefined,
      logLevel: "info",
      trustedProxies: [],
      rateLimit: { perAddress: 1200, windowSeconds: 60 },
      mail: { smtp: undefined, from: "Charter <charter@localhost>" },
    });
    expect(config.publicUrl.href).toBe("http://localhost:3000/");
  });

  it("treats empty and blank values as unset", () => {
    expect(loadConfig({ PORT: "", DATABASE_URL: "  ", CHARTER_TRUSTED_PROXIES: " , " })).toMatchObject({
      port: 3000,
      databaseUrl: undefined,
      trustedProxies: [],
    });
  });

  it("reads every variable", () => {
    const config = loadConfig({
      DATABASE_URL: "postgres://charter_owner@db.internal:5432/charter",
      DATABASE_RUNTIME_URL: "postgresql://charter_app@db.internal:5432/charter",
      CHARTER_DATA_DIR: "/srv/charter",
      CHARTER_MASTER_KEY_FILE: "/run/secrets/charter.key",
      HOST: "0.0.0.0",
      PORT: "8443",
      PUBLIC_URL: "https://crm.example.com",
      CHARTER_TLS_CERT: "/etc/charter/cert.pem",
      CHARTER_TLS_KEY: "/etc/charter/key.pem",
      LOG_LEVEL: "warn",
      CHARTER_TRUSTED_PROXIES: "10.0.0.0/8, 192.168.1.7,fd00::/8",
      CHARTER_RATE_LIMIT: "50",
      CHARTER_RATE_LIMIT_WINDOW: "10",
    });
    expect(config).toMatchObject({
      databaseUrl: "postgres://charter_owner@db.internal:5432/charter",
      runtimeDatabaseUrl: "postgresql://charter_app@db.internal:5432/charter",
      dataDir: "/srv/charter",
      masterKey: { kind: "file", path: "/run/secrets/charter.key" },
      host: "0.0.0.0",
      port: 8443,
      tls: { certPath: "/etc/charter/cert.pem", keyPath: "/etc/charter/key.pem", minVersion: "TLSv1.2" },
      logLevel: "warn",
      trustedProxies: ["10.0.0.0/8", "192.168.1.7", "fd00::/8"],
      rateLimit: { perAddress: 50, windowSeconds: 10 },
    });
    expect(config.publicUrl.origin).toBe("https://crm.example.com");
  });

  it("defaults TLS to a minimum of 1.2, takes 1.3, and makes the default public URL https", () => {
    const tls = { CHARTER_TLS_CERT: "cert.pem", CHARTER_TLS_KEY: "key.pem", PORT: "8443" };
    const config = loadConfig(tls);
    expect(config.tls).toEqual({ certPath: resolve("cert.pem"), keyPath: resolve("key.pem"), minVersion: "TLSv1.2" });
    expect(config.publicUrl.href).toBe("https://localhost:8443/");
    expect(loadConfig({ ...tls, CHARTER_TLS_MIN_VERSION: "1.3" }).tls?.minVersion).toBe("TLSv1.3");
  });

  it("takes the master key from the environment, and puts the generated key in the data directory", () => {
    expect(loadConfig({ CHARTER_MASTER_KEY: "k".repeat(44) }).masterKey).toEqual({
      kind: "env",
      value: "k".repeat(44),
    });
    expect(loadConfig({ CHARTER_DATA_DIR: "/srv/c" }).masterKey).toEqual({
      kind: "generated",
      path: "/srv/c/keys/master.key",
    });
  });

  it("reads SMTP from a URL: smtps is TLS from the start, smtp needs STARTTLS unless the host is loopback", () => {
    const from = { CHARTER_MAIL_FROM: "Charter <no-reply@crm.example.com>" };
    expect(loadConfig({ ...from, CHARTER_SMTP_URL: "smtp://mailer:p%40ss@smtp.example.com:2525" }).mail).toEqual({
      smtp: { host: "smtp.example.com", port: 2525, secure: false, requireTls: true, user: "mailer", password: "p@ss" },
      from: "Charter <no-reply@crm.example.com>",
    });
    expect(loadConfig({ ...from, CHARTER_SMTP_URL: "smtps://smtp.example.com" }).mail.smtp).toEqual({
      host: "smtp.example.com",
      port: 465,
      secure: true,
      requireTls: false,
      user: undefined,
      password: undefined,
    });
    for (const host of ["127.0.0.1", "localhost", "[::1]"]) {
      expect(loadConfig({ ...from, CHARTER_SMTP_URL: `smtp://${host}` }).mail.smtp).toMatchObject({
        port: 587,
        requireTls: false,
      });
    }
    expect(loadConfig({ CHARTER_MAIL_FROM: "ops@example.com" }).mail).toEqual({
      smtp: undefined,
      from: "ops@example.com",
    });
  });

  const bad: [string, Record<string, string>][] = [
    ["PORT", { PORT: "abc" }],
    ["PORT", { PORT: "70000" }],
    ["PORT", { PORT: "-1" }],
    ["DATABASE_URL", { DATABASE_URL: "mysql://x" }],
    ["DATABASE_URL", { DATABASE_URL: "not a url" }],
    ["DATABASE_URL", { DATABASE_URL: "postgres://host:5432" }],
    ["DATABASE_RUNTIME_URL", { DATABASE_RUNTIME_URL: "postgres://charter_app@h/charter" }],
    ["CHARTER_MASTER_KEY_FILE", { CHARTER_MASTER_KEY_FILE: "/k", CHARTER_MASTER_KEY: "k".repeat(44) }],
    ["CHARTER_TLS_KEY", { CHARTER_TLS_CERT: "cert.pem" }],
    ["CHARTER_TLS_CERT", { CHARTER_TLS_KEY: "key.pem" }],
    ["CHARTER_TLS_MIN_VERSION", { CHARTER_TLS_MIN_VERSION: "1.1" }],
    ["CHARTER_TLS_MIN_VERSION", { CHARTER_TLS_CERT: "c", CHARTER_TLS_KEY: "k", CHARTER_TLS_MIN_VERSION: "1.1" }],
    ["LOG_LEVEL", { LOG_LEVEL: "loud" }],
    ["CHARTER_TRUSTED_PROXIES", { CHARTER_TRUSTED_PROXIES: "10.0.0.0/99" }],
    ["CHARTER_TRUSTED_PROXIES", { CHARTER_TRUSTED_PROXIES: "foo" }],
    ["CHARTER_TRUSTED_PROXIES", { CHARTER_TRUSTED_PROXIES: "10.0.0.0/8, 10.0.0.0/8/8" }],
    ["PUBLIC_URL", { PUBLIC_URL: "ftp://x" }],
    ["PUBLIC_URL", { PUBLIC_URL: "not a url" }],
    ["CHARTER_RATE_LIMIT", { CHARTER_RATE_LIMIT: "0" }],
    ["CHARTER_SMTP_URL", { CHARTER_SMTP_URL: "http://mail.example.com", CHARTER_MAIL_FROM: "a@b.c" }],
    ["CHARTER_SMTP_URL", { CHARTER_SMTP_URL: "not a url", CHARTER_MAIL_FROM: "a@b.c" }],
    ["CHARTER_SMTP_URL", { CHARTER_SMTP_URL: "smtp://mail.example.com/?pool=true", CHARTER_MAIL_FROM: "a@b.c" }],
    ["CHARTER_MAIL_FROM", { CHARTER_SMTP_URL: "smtp://mail.example.com" }],
    ["CHARTER_MAIL_FROM", { CHARTER_MAIL_FROM: "not an address" }],
    ["CHARTER_MAIL_FROM", { CHARTER_MAIL_FROM: "a@b.c\r\nBcc: x@y.z" }],
  ];
  it.each(bad)("refuses a bad %s with a ConfigError naming it (%o)", (variable, env) => {
    let error: unknown;
    try {
      loadConfig(env);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain(variable);
    expect((error as Error).message).not.toContain("\n");
  });

  it("never echoes a database URL, which may carry a password", () => {
    expect(() => loadConfig({ DATABASE_URL: "mysql://admin:hunter2@db/x" })).toThrow(
      expect.objectContaining({ message: expect.not.stringContaining("hunter2") }),
    );
    expect(() => loadConfig({ DATABASE_URL: "postgres://admin:hunter2@db" })).toThrow(
      expect.objectContaining({ message: expect.not.stringContaining("hunter2") }),
    );
  });

  it("never echoes an SMTP URL, which may carry a password", () => {
    for (const url of ["http://admin:hunter2@mail", "smtp://admin:hunter2@mail/path", "smtp://admin:hunter2@mail"]) {
      expect(() => loadConfig({ CHARTER_SMTP_URL: url })).toThrow(
        expect.objectContaining({ message: expect.not.stringContaining("hunter2") }),
      );
    }
  });
});

describe("a bad variable on the command line", () => {
  it("prints one line naming the variable, no stack trace, and exits non-zero", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "charter-config-"));
    try {
      const result = await runCharter(["doctor"], cliEnv({ PORT: "abc", CHARTER_DATA_DIR: dataDir }));
      expect(result.code).not.toBe(0);
      expect(result.code).not.toBeNull();
      expect(result.stderr.trimEnd().split("\n")).toEqual([expect.stringContaining("PORT")]);
      expect(result.stderr).not.toMatch(STACK_FRAME);
      expect(result.stdout).toBe("");
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
