import {
  createHash,
  createPrivateKey,
  createPublicKey,
  sign as cryptoSign,
  verify as cryptoVerify,
  generateKeyPairSync,
  type KeyObject,
} from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { inspect } from "node:util";
import type { DataDirPaths } from "../data-dir.ts";
import { createPrivateKeyFile, readPrivateKeyFile } from "./key-file.ts";

/** A PKCS#8 PEM Ed25519 key is about 120 bytes; a bigger file is refused before it is read. */
const MAX_FILE_BYTES = 4096;

/** The signing key cannot be loaded; a one-line message naming the file and the fix. */
export class SigningKeyError extends Error {
  override name = "SigningKeyError";
}

/** Where the platform's signing key lives: `keys/` of the data directory, outside the database. */
export function signingKeyPath(paths: DataDirPaths): string {
  return join(paths.keys, "signing.key");
}

function rawPublicKey(publicKey: KeyObject): Buffer {
  const { x } = publicKey.export({ format: "jwk" });
  if (typeof x !== "string") throw new SigningKeyError("the signing key has no Ed25519 public part");
  return Buffer.from(x, "base64url");
}

/**
 * The platform's Ed25519 signing key. The private key stays in a private field: logging, serialising or
 * interpolating the object shows only the key id.
 */
export class SigningKey {
  readonly #privateKey: KeyObject;
  readonly publicKeyPem: string;
  /** First 16 hex characters of SHA-256 of the raw 32-byte public key. */
  readonly keyId: string;

  constructor(privateKey: KeyObject) {
    if (privateKey.type !== "private" || privateKey.asymmetricKeyType !== "ed25519") {
      throw new SigningKeyError("a signing key must be an Ed25519 private key");
    }
    this.#privateKey = privateKey;
    const publicKey = createPublicKey(privateKey);
    this.publicKeyPem = publicKey.export({ format: "pem", type: "spki" }).toString();
    this.keyId = createHash("sha256").update(rawPublicKey(publicKey)).digest("hex").slice(0, 16);
  }

  sign(data: Buffer): Buffer {
    return cryptoSign(null, data, this.#privateKey);
  }

  /** Whether `signature` is a valid Ed25519 signature of `data` by the key with this public PEM. */
  static verify(publicKeyPem: string, data: Buffer, signature: Buffer): boolean {
    const publicKey = createPublicKey(publicKeyPem);
    if (publicKey.asymmetricKeyType !== "ed25519") throw new SigningKeyError("not an Ed25519 public key");
    try {
      return cryptoVerify(null, data, publicKey, signature);
    } catch {
      return false;
    }
  }

  toJSON(): { keyId: string; publicKeyPem: string } {
    return { keyId: this.keyId, publicKeyPem: this.publicKeyPem };
  }

  toString(): string {
    return `[SigningKey ${this.keyId}]`;
  }

  [inspect.custom](): string {
    return `[SigningKey ${this.keyId}]`;
  }
}

function readKeyFile(path: string): SigningKey {
  const label = `signing key file ${path}`;
  const pem = readPrivateKeyFile(path, label, MAX_FILE_BYTES, (m) => new SigningKeyError(m));
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: "pem" });
  } catch {
    // The parser's message is not echoed: it could quote the file.
    throw new SigningKeyError(`${label} does not hold a PKCS#8 PEM private key`);
  }
  if (key.asymmetricKeyType !== "ed25519") {
    throw new SigningKeyError(`${label} holds a ${key.asymmetricKeyType ?? "unknown"} key, not Ed25519`);
  }
  return new SigningKey(key);
}

/** Writes a new key with an exclusive create; undefined if another start created the file first. */
function generateKeyFile(path: string): SigningKey | undefined {
  const { privateKey } = generateKeyPairSync("ed25519");
  const created = createPrivateKeyFile(
    path,
    `signing key file ${path}`,
    privateKey.export({ format: "pem", type: "pkcs8" }).toString(),
    (m) => new SigningKeyError(m),
  );
  return created ? new SigningKey(privateKey) : undefined;
}

/**
 * Loads the platform's Ed25519 signing key from `keys/signing.key`, generating it once (mode 0600) when
 * the file does not exist; `log` hears of a generation. A file open to group or others is refused.
 */
export function loadSigningKey(paths: DataDirPaths, log: (message: string) => void = console.warn): SigningKey {
  const path = signingKeyPath(paths);
  const generated = generateKeyFile(path);
  if (!generated) return readKeyFile(path);
  log(`generated a new Ed25519 signing key (key id ${generated.keyId}) at ${path}`);
  return generated;
}

/** The platform's signing key if it has been created, without creating it: for checks that must change nothing. */
export function existingSigningKey(paths: DataDirPaths): SigningKey | undefined {
  const path = signingKeyPath(paths);
  return existsSync(path) ? readKeyFile(path) : undefined;
}
