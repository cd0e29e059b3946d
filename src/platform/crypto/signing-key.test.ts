import { generateKeyPairSync } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type DataDirPaths, prepareDataDir } from "../data-dir.ts";
import {
  completeRotation,
  createSuccessorKey,
  existingSigningKey,
  loadSigningKey,
  readRetiredKeys,
  retiredKeysPath,
  SigningKey,
  SigningKeyError,
  signingKeyPath,
  successorKeyPath,
} from "./signing-key.ts";

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

describe("rotation of the signing key (files)", () => {
  it("keeps the retired public key, replaces the private one, and refuses to load while a rotation is half done", () => {
    const first = loadSigningKey(paths, quiet);
    const successor = createSuccessorKey(paths);
    expect(statSync(successorKeyPath(paths)).mode & 0o777).toBe(0o600);
    expect(() => loadSigningKey(paths, quiet)).toThrow(
      /rotation of the signing key was interrupted.*rotate-signing-key/,
    );
    // Checks that change nothing still read the key in use.
    expect(existingSigningKey(paths)?.keyId).toBe(first.keyId);
    const at = "2026-06-01T00:00:00.000Z";
    const rotated = completeRotation(paths, first, { seq: 4, at, successor: successor.keyId });
    expect(rotated.keyId).toBe(successor.keyId);
    expect(rotated.retired).toEqual([
      { keyId: first.keyId, publicKeyPem: first.publicKeyPem, retiredAt: at, rotation: 4, successor: successor.keyId },
    ]);
    expect(existsSync(successorKeyPath(paths))).toBe(false);
    const loaded = loadSigningKey(paths, quiet);
    expect([loaded.keyId, loaded.retired]).toEqual([rotated.keyId, rotated.retired]);
    // Only public halves are kept.
    expect(readFileSync(retiredKeysPath(paths), "utf8")).not.toContain("PRIVATE KEY");
    expect(readRetiredKeys(paths)).toEqual(rotated.retired);
  });

  it("refuses retired keys that were tampered with", () => {
    const first = loadSigningKey(paths, quiet);
    const successor = createSuccessorKey(paths);
    completeRotation(paths, first, { seq: 2, at: "2026-06-01T00:00:00.000Z", successor: successor.keyId });
    const text = readFileSync(retiredKeysPath(paths), "utf8");
    const other = new SigningKey(generateKeyPairSync("ed25519").privateKey);
    writeFileSync(retiredKeysPath(paths), text.replace(first.keyId, other.keyId));
    expect(() => loadSigningKey(paths, quiet)).toThrow(/the public key is not key/);
    writeFileSync(retiredKeysPath(paths), "{}\n");
    expect(() => loadSigningKey(paths, quiet)).toThrow(/is not a retired signing key/);
  });
});
