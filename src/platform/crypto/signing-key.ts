import {
  createHash,
  createPrivateKey,
  createPublicKey,
  sign as cryptoSign,
  verify as cryptoVerify,
  generateKeyPairSync,
  type KeyObject,
} from "node:crypto";
import { existsSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { inspect } from "node:util";
import { z } from "zod";
import type { DataDirPaths } from "../data-dir.ts";
import { appendPrivateLine, createPrivateKeyFile, fsyncDirectory, readPrivateKeyFile } from "./key-file.ts";

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

/** The key a rotation switches to, kept here from its creation until the rotation completes. */
export function successorKeyPath(paths: DataDirPaths): string {
  return join(paths.keys, "signing.key.next");
}

/** The public halves of the keys rotation retired, oldest first, one JSON line each. */
export function retiredKeysPath(paths: DataDirPaths): string {
  return join(paths.keys, "signing-retired.jsonl");
}

function rawPublicKey(publicKey: KeyObject): Buffer {
  const { x } = publicKey.export({ format: "jwk" });
  if (typeof x !== "string") throw new SigningKeyError("the signing key has no Ed25519 public part");
  return Buffer.from(x, "base64url");
}

function idOf(publicKey: KeyObject): string {
  return createHash("sha256").update(rawPublicKey(publicKey)).digest("hex").slice(0, 16);
}

/** The key id of an Ed25519 public key given as SPKI PEM; undefined for anything else. */
export function publicKeyId(publicKeyPem: string): string | undefined {
  try {
    const publicKey = createPublicKey(publicKeyPem);
    return publicKey.asymmetricKeyType === "ed25519" ? idOf(publicKey) : undefined;
  } catch {
    return undefined;
  }
}

/** The public half of a signing key: what checks its signatures. */
export interface PublicSigningKey {
  keyId: string;
  publicKeyPem: string;
}

/** A key a rotation replaced: its public half, kept so that what it signed still verifies. */
export interface RetiredSigningKey extends PublicSigningKey {
  /** When the rotation was recorded (the time of its record in the checkpoint chain). */
  retiredAt: string;
  /** The seq of the key-rotation record, in the checkpoint chain, that handed signing on. */
  rotation: number;
  /** The key id it handed signing on to. */
  successor: string;
}

/**
 * The platform's current public key and the keys it retired, oldest first: everything that checks what the
 * platform ever signed. The checkpoint chain says which of them was current where (checkpoint-record.ts).
 */
export interface PublicKeyHistory extends PublicSigningKey {
  readonly retired: readonly RetiredSigningKey[];
}

/**
 * The platform's Ed25519 signing key. The private key stays in a private field: logging, serialising or
 * interpolating the object shows only the key id.
 */
export class SigningKey implements PublicKeyHistory {
  readonly #privateKey: KeyObject;
  readonly publicKeyPem: string;
  /** First 16 hex characters of SHA-256 of the raw 32-byte public key. */
  readonly keyId: string;
  /** The keys this one succeeded, oldest first (keys/signing-retired.jsonl). */
  readonly retired: readonly RetiredSigningKey[];

  constructor(privateKey: KeyObject, retired: readonly RetiredSigningKey[] = []) {
    if (privateKey.type !== "private" || privateKey.asymmetricKeyType !== "ed25519") {
      throw new SigningKeyError("a signing key must be an Ed25519 private key");
    }
    this.#privateKey = privateKey;
    const publicKey = createPublicKey(privateKey);
    this.publicKeyPem = publicKey.export({ format: "pem", type: "spki" }).toString();
    this.keyId = idOf(publicKey);
    this.retired = retired;
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

function readKeyFile(path: string, retired: readonly RetiredSigningKey[]): SigningKey {
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
  return new SigningKey(key, retired);
}

/** Writes a new key with an exclusive create; undefined if another process created the file first. */
function generateKeyFile(path: string, retired: readonly RetiredSigningKey[]): SigningKey | undefined {
  const { privateKey } = generateKeyPairSync("ed25519");
  const created = createPrivateKeyFile(
    path,
    `signing key file ${path}`,
    privateKey.export({ format: "pem", type: "pkcs8" }).toString(),
    (m) => new SigningKeyError(m),
  );
  return created ? new SigningKey(privateKey, retired) : undefined;
}

const hex16 = z.string().regex(/^[0-9a-f]{16}$/);
const retiredSchema = z.strictObject({
  keyId: hex16,
  publicKeyPem: z.string().max(1024),
  retiredAt: z.iso.datetime(),
  rotation: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  successor: hex16,
});

/** One line of the retired keys, its members in one fixed order. */
function retiredLine(key: RetiredSigningKey): string {
  const { keyId, publicKeyPem, retiredAt, rotation, successor } = key;
  return JSON.stringify({ keyId, publicKeyPem, retiredAt, rotation, successor });
}

/**
 * The retired keys, oldest first: each public key must have the id it is listed under, and each must have
 * handed signing on to the next. An absent file is no rotation yet.
 */
export function readRetiredKeys(paths: DataDirPaths): RetiredSigningKey[] {
  const path = retiredKeysPath(paths);
  if (!existsSync(path)) return [];
  const lines = readFileSync(path, "utf8").split("\n");
  // A line without its newline is an append a crash cut short: the rotation writing it never completed.
  lines.pop();
  const keys: RetiredSigningKey[] = [];
  for (const [index, text] of lines.entries()) {
    const where = `${path} line ${index + 1}`;
    let key: RetiredSigningKey;
    try {
      key = retiredSchema.parse(JSON.parse(text));
    } catch {
      throw new SigningKeyError(`${where} is not a retired signing key`);
    }
    if (publicKeyId(key.publicKeyPem) !== key.keyId) {
      throw new SigningKeyError(`${where}: the public key is not key ${key.keyId}`);
    }
    const before = keys.at(-1);
    if (before && before.successor !== key.keyId) {
      throw new SigningKeyError(
        `${where}: key ${before.keyId} handed signing on to ${before.successor}, not to ${key.keyId}`,
      );
    }
    keys.push(key);
  }
  return keys;
}

/** What is wrong while a rotation is left half done (keys/signing.key.next exists); undefined otherwise. */
export function interruptedRotation(paths: DataDirPaths): string | undefined {
  const path = successorKeyPath(paths);
  return existsSync(path)
    ? `a rotation of the signing key was interrupted (${path} exists): run charter audit rotate-signing-key to finish it`
    : undefined;
}

/**
 * Loads the platform's Ed25519 signing key from `keys/signing.key` with the keys it retired, generating it
 * once (mode 0600) when the file does not exist; `log` hears of a generation. A file open to group or others is
 * refused, and so is a rotation left half done, which must be finished before anything is signed again.
 */
export function loadSigningKey(paths: DataDirPaths, log: (message: string) => void = console.warn): SigningKey {
  const path = signingKeyPath(paths);
  const interrupted = interruptedRotation(paths);
  if (interrupted) throw new SigningKeyError(interrupted);
  const retired = readRetiredKeys(paths);
  const generated = generateKeyFile(path, retired);
  if (!generated) return readKeyFile(path, retired);
  log(`generated a new Ed25519 signing key (key id ${generated.keyId}) at ${path}`);
  return generated;
}

/** The platform's signing key if it has been created, without creating it: for checks that must change nothing. */
export function existingSigningKey(paths: DataDirPaths): SigningKey | undefined {
  const path = signingKeyPath(paths);
  return existsSync(path) ? readKeyFile(path, readRetiredKeys(paths)) : undefined;
}

/** The key an interrupted rotation was switching to, if there is one. */
export function successorKey(paths: DataDirPaths): SigningKey | undefined {
  const path = successorKeyPath(paths);
  return existsSync(path) ? readKeyFile(path, []) : undefined;
}

/** Creates the key a rotation switches to (keys/signing.key.next, mode 0600, flushed) before it is announced. */
export function createSuccessorKey(paths: DataDirPaths): SigningKey {
  const created = generateKeyFile(successorKeyPath(paths), []);
  if (!created) throw new SigningKeyError(`${successorKeyPath(paths)} exists: another rotation is under way`);
  return created;
}

/** Removes the successor of a rotation that was never recorded: nothing has been signed with it. */
export function discardSuccessorKey(paths: DataDirPaths): void {
  rmSync(successorKeyPath(paths), { force: true });
  fsyncDirectory(paths.keys);
}

/**
 * Completes a rotation once the checkpoint chain records it: the retiring key's public half joins the retired
 * keys (unless a completion cut short already added it), then the successor replaces keys/signing.key, which
 * removes the retiring private key. Returns the new current key with its history.
 */
export function completeRotation(
  paths: DataDirPaths,
  retiring: SigningKey,
  rotation: { seq: number; at: string; successor: string },
): SigningKey {
  const successor = successorKey(paths);
  if (successor?.keyId !== rotation.successor) {
    throw new SigningKeyError(`${successorKeyPath(paths)} is not key ${rotation.successor}, which the rotation names`);
  }
  const retired = readRetiredKeys(paths);
  if (retired.at(-1)?.keyId !== retiring.keyId) {
    const entry: RetiredSigningKey = {
      keyId: retiring.keyId,
      publicKeyPem: retiring.publicKeyPem,
      retiredAt: rotation.at,
      rotation: rotation.seq,
      successor: successor.keyId,
    };
    appendPrivateLine(retiredKeysPath(paths), retiredLine(entry), (m) => new SigningKeyError(m));
    retired.push(entry);
  }
  renameSync(successorKeyPath(paths), signingKeyPath(paths));
  fsyncDirectory(paths.keys);
  return readKeyFile(signingKeyPath(paths), retired);
}
