import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface TestCertificate {
  /** PEM certificate for CN=localhost, valid for localhost and 127.0.0.1, for two days. */
  certPath: string;
  /** PEM private key (RSA 2048, unencrypted), mode 0600. */
  keyPath: string;
  /** Removes the directory holding both files. */
  remove(): void;
}

/**
 * A throwaway self-signed certificate made with the openssl command. RSA, so that the same certificate
 * can serve the TLS 1.0 and 1.1 handshakes the TLS tests need as positive controls.
 */
export function createTestCertificate(): TestCertificate {
  const dir = mkdtempSync(join(tmpdir(), "charter-cert-"));
  const certPath = join(dir, "cert.pem");
  const keyPath = join(dir, "key.pem");
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-sha256",
      "-days",
      "2",
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-keyout",
      keyPath,
      "-out",
      certPath,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  chmodSync(keyPath, 0o600);
  return { certPath, keyPath, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
