import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, createServer, type SecureVersion, type Server } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.ts";
import { startServer } from "../src/server.ts";
import { createTestCertificate, type TestCertificate } from "./support/certs.ts";

/**
 * Promise E1: TLS 1.2 or higher. The clients below allow every cipher and signature OpenSSL still has
 * (security level 0), so a refused handshake is the server's refusal and not the client's inability;
 * a positive control shows the same clients complete TLS 1.0 and 1.1 handshakes with a server that allows them.
 */
const LEGACY_CIPHERS = "DEFAULT@SECLEVEL=0";

type Handshake = { ok: true; protocol: string | null } | { ok: false; code: string | undefined; message: string };

function handshake(port: number, version: SecureVersion): Promise<Handshake> {
  return new Promise((done) => {
    const socket = connect({
      host: "127.0.0.1",
      port,
      servername: "localhost",
      rejectUnauthorized: false,
      ciphers: LEGACY_CIPHERS,
      minVersion: version,
      maxVersion: version,
    });
    socket.setTimeout(10_000, () => socket.destroy(new Error("handshake timed out")));
    socket.once("secureConnect", () => {
      done({ ok: true, protocol: socket.getProtocol() });
      socket.destroy();
    });
    socket.once("error", (error: NodeJS.ErrnoException) =>
      done({ ok: false, code: error.code, message: error.message }),
    );
  });
}

/** The client saw the server's protocol_version alert: the server refused the version, nothing else failed. */
const REFUSED_VERSION = { ok: false, code: "ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION" };

function httpsGet(
  url: string,
  ca: Buffer,
): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((done, fail) => {
    const req = request(url, { ca, servername: "localhost" }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (chunk: string) => {
        body += chunk;
      });
      res.on("end", () => done({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on("error", fail);
    req.end();
  });
}

async function startTlsServer(cert: TestCertificate, minVersion: "1.2" | "1.3") {
  const dataDir = mkdtempSync(join(tmpdir(), "charter-tls-"));
  const config = loadConfig({
    CHARTER_DATA_DIR: dataDir,
    PORT: "0",
    CHARTER_TLS_CERT: cert.certPath,
    CHARTER_TLS_KEY: cert.keyPath,
    CHARTER_TLS_MIN_VERSION: minVersion,
  });
  const server = await startServer(config, { log: false, warn: () => {} });
  return { dataDir, server, port: Number(new URL(server.url).port) };
}

describe("TLS (E1)", () => {
  let cert: TestCertificate;
  let min12: Awaited<ReturnType<typeof startTlsServer>>;
  let min13: Awaited<ReturnType<typeof startTlsServer>>;
  let control: Server;
  let controlPort: number;

  beforeAll(async () => {
    cert = createTestCertificate();
    [min12, min13] = await Promise.all([startTlsServer(cert, "1.2"), startTlsServer(cert, "1.3")]);
    control = createServer(
      {
        key: readFileSync(cert.keyPath),
        cert: readFileSync(cert.certPath),
        minVersion: "TLSv1",
        ciphers: LEGACY_CIPHERS,
      },
      (socket) => socket.end(),
    );
    await new Promise<void>((done) => control.listen(0, "127.0.0.1", done));
    controlPort = (control.address() as { port: number }).port;
  }, 120_000);

  afterAll(async () => {
    await Promise.all([min12?.server.shutdown(), min13?.server.shutdown()]);
    await new Promise((done) => control?.close(done));
    for (const started of [min12, min13]) if (started) rmSync(started.dataDir, { recursive: true, force: true });
    cert?.remove();
  });

  it("the server listens on https", () => {
    expect(min12.server.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
  });

  it("positive control: the test client completes TLS 1.0 and 1.1 handshakes with a server that allows them", async () => {
    expect(await handshake(controlPort, "TLSv1")).toEqual({ ok: true, protocol: "TLSv1" });
    expect(await handshake(controlPort, "TLSv1.1")).toEqual({ ok: true, protocol: "TLSv1.1" });
  });

  it("refuses TLS 1.0 and 1.1 handshakes", async () => {
    expect(await handshake(min12.port, "TLSv1")).toMatchObject(REFUSED_VERSION);
    expect(await handshake(min12.port, "TLSv1.1")).toMatchObject(REFUSED_VERSION);
  });

  it("accepts TLS 1.2 and 1.3, and a client that offers both gets 1.3", async () => {
    expect(await handshake(min12.port, "TLSv1.2")).toEqual({ ok: true, protocol: "TLSv1.2" });
    expect(await handshake(min12.port, "TLSv1.3")).toEqual({ ok: true, protocol: "TLSv1.3" });
    const preferred = await new Promise<string | null>((done, fail) => {
      const socket = connect({ host: "127.0.0.1", port: min12.port, ca: readFileSync(cert.certPath) }, () => {
        done(socket.getProtocol());
        socket.destroy();
      });
      socket.once("error", fail);
    });
    expect(preferred).toBe("TLSv1.3");
  });

  it("with CHARTER_TLS_MIN_VERSION=1.3 refuses a TLS 1.2 client and accepts 1.3", async () => {
    expect(await handshake(min13.port, "TLSv1.2")).toMatchObject(REFUSED_VERSION);
    expect(await handshake(min13.port, "TLSv1.3")).toEqual({ ok: true, protocol: "TLSv1.3" });
  });

  it("answers over HTTPS, with the configured certificate, and sends HSTS", async () => {
    const response = await httpsGet(`https://127.0.0.1:${min12.port}/health`, readFileSync(cert.certPath));
    expect(response.status).toBe(200);
    expect(JSON.parse(response.body)).toEqual({ status: "ok" });
    expect(response.headers["strict-transport-security"]).toBe("max-age=63072000; includeSubDomains");
  });

  it("shutdown closes the TLS port, the database and its lock", async () => {
    const { server, port, dataDir } = await startTlsServer(cert, "1.2");
    try {
      expect(await handshake(port, "TLSv1.3")).toEqual({ ok: true, protocol: "TLSv1.3" });
      expect(existsSync(join(dataDir, "db.lock"))).toBe(true);
      await server.shutdown();
      expect(await handshake(port, "TLSv1.3")).toMatchObject({ ok: false, code: "ECONNREFUSED" });
      expect(existsSync(join(dataDir, "db.lock"))).toBe(false);
    } finally {
      await server.shutdown();
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});
