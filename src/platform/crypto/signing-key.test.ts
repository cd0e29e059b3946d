import { generateKeyPairSync } from "node:crypto";
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type DataDirPaths, prepareDataDir } from "../data-dir.ts";
import { loadSigningKey, SigningKey, SigningKeyError, signingKeyPath } from "./signing-key.ts";

let parent: string;
let paths: DataDirPaths;

beforeEach(() => {
  parent = mkdtempSync(join(tmpdir(), "charter-signing-"));
  paths = prepareDataDir(join(parent, "data"));
});

afterEach(() => {
  rmSync(parent, { recursive: true, force: true });
});

const quiet = () => {};

describe("loadSigningKey", () => {
  it("generates a PKCS#8 PEM key once with mode 0600 and reuses it", () => {
    const messages: string[] = [];
    const first = loadSigningKey(paths, (m) => messages.push(m));
    const path = signingKeyPath(paths);
    expect(path).toBe(join(paths.keys, "signing.key"));
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readFileSync(path, "utf8")).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(messages).toHaveLength(1);
    expect(messages[0]).toContain(first.keyId);

    const second = loadSigningKey(paths, (m) => messages.push(m));
    expect(messages).toHaveLength(1);
    expect(second.keyId).toBe(first.keyId);
    expect(second.publicKeyPem).toBe(first.publicKeyPem);
    expect(first.keyId).toMatch(/^[0-9a-f]{16}$/);
  });

  it("refuses a key file that group or others can read", () => {
    loadSigningKey(paths, quiet);
    chmodSync(signingKeyPath(paths), 0o644);
    expect(() => loadSigningKey(paths, quiet)).toThrow(SigningKeyError);
    expect(() => loadSigningKey(paths, quiet)).toThrow(/mode 0644.*chmod 600/);
  });

  it("refuses a key that is not Ed25519", () => {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    writeFileSync(signingKeyPath(paths), privateKey.export({ format: "pem", type: "pkcs8" }), { mode: 0o600 });
    expect(() => loadSigningKey(paths, quiet)).toThrow(/not Ed25519/);
  });
});

describe("SigningKey", () => {
  it("signs and verifies; a flipped bit in data or signature fails", () => {
    const key = loadSigningKey(paths, quiet);
    const data = Buffer.from("checkpoint 42");
    const signature = key.sign(data);
    expect(signature).toHaveLength(64);
    expect(SigningKey.verify(key.publicKeyPem, data, signature)).toBe(true);

    const flippedSignature = Buffer.from(signature);
    flippedSignature[10] = (flippedSignature[10] ?? 0) ^ 0x01;
    expect(SigningKey.verify(key.publicKeyPem, data, flippedSignature)).toBe(false);

    const flippedData = Buffer.from(data);
    flippedData[0] = (flippedData[0] ?? 0) ^ 0x01;
    expect(SigningKey.verify(key.publicKeyPem, flippedData, signature)).toBe(false);
    expect(SigningKey.verify(key.publicKeyPem, data, signature.subarray(0, 10))).toBe(false);
  });

  it("never shows private key material through inspect, JSON or String", () => {
    const key = loadSigningKey(paths, quiet);
    const pem = readFileSync(signingKeyPath(paths), "utf8");
    const body = pem.split("\n").slice(1, -2).join("");
    const shown = [inspect(key, { showHidden: true, depth: 10 }), JSON.stringify(key), String(key), `${key}`];
    for (const text of shown) {
      expect(text).not.toContain("PRIVATE KEY");
      expect(text).not.toContain(body);
      expect(text).toContain(key.keyId);
    }
    expect(JSON.parse(JSON.stringify(key))).toEqual({ keyId: key.keyId, publicKeyPem: key.publicKeyPem });
  });
});
