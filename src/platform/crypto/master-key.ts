import { createHash, randomBytes } from "node:crypto";
import { realpathSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve } from "node:path";
import { inspect } from "node:util";
import type { MasterKeySource } from "../../config.ts";
import type { DataDirPaths } from "../data-dir.ts";
import { createPrivateKeyFile, modeText, readPrivateKeyFile } from "./key-file.ts";

/** AES-256. */
const KEY_BYTES = 32;
/** Larger than any accepted encoding; a bigger file is refused before it is read. */
const MAX_FILE_BYTES = 1024;
const HEX = /^[0-9a-fA-F]{64}$/;
const BASE64 = /^[A-Za-z0-9+/]{43}=$/;

/** The master key cannot be loaded; a one-line message naming the source and the fix. */
export class MasterKeyError extends Error {
  override name = "MasterKeyError";
}

/** Small Buffer.from copies share Node's pool slab with unrelated data; a key gets memory of its own. */
function ownCopy(bytes: Uint8Array): Buffer {
  const copy = Buffer.alloc(bytes.length);
  copy.set(bytes);
  return copy;
}

/**
 * The root of the key hierarchy. The bytes stay in a private field so that logging, serialising or
 * interpolating the object never shows them; `bytes()` hands out a copy.
 */
export class MasterKey {
  readonly #bytes: Buffer;
  /** First 8 bytes of SHA-256 of the key, in hex: identifies the key without revealing it. */
  readonly fingerprint: string;

  constructor(bytes: Uint8Array) {
    if (bytes.length !== KEY_BYTES) throw new MasterKeyError(`a master key must be ${KEY_BYTES} bytes`);
    this.#bytes = ownCopy(bytes);
    this.fingerprint = createHash("sha256").update(this.#bytes).digest().subarray(0, 8).toString("hex");
  }

  bytes(): Buffer {
    return ownCopy(this.#bytes);
  }

  toJSON(): string {
    return "[MasterKey]";
  }

  toString(): string {
    return "[MasterKey]";
  }

  [inspect.custom](): string {
    return `[MasterKey ${this.fingerprint}]`;
  }
}

/** How errors name a key file: by the variable that configured it, or as the generated default. */
function fileLabel(source: Extract<MasterKeySource, { path: string }>): string {
  return source.kind === "file" ? `CHARTER_MASTER_KEY_FILE ${source.path}` : `master key file ${source.path}`;
}

/** Decodes base64 or hex text of exactly 32 bytes; never echoes the text, which may be the key. */
function decodeText(text: string): Buffer | undefined {
  const trimmed = text.trim();
  if (HEX.test(trimmed)) return Buffer.from(trimmed, "hex");
  if (BASE64.test(trimmed)) return Buffer.from(trimmed, "base64");
  return undefined;
}

function isInside(path: string, directory: string): boolean {
  const rel = relative(directory, path);
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
}

/** Where a path really is once symlinks are followed; for a file not created yet, where its directory is. */
function realLocation(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    try {
      return join(realpathSync(dirname(path)), basename(path));
    } catch {
      return resolve(path);
    }
  }
}

/** Whether the key file would travel with a copy of the database, by its path or through symlinks. */
function insideDatabase(path: string, paths: DataDirPaths): boolean {
  return isInside(resolve(path), resolve(paths.db)) || isInside(realLocation(path), realLocation(paths.db));
}

function refuseInsideDatabase(path: string, label: string, paths: DataDirPaths): void {
  if (insideDatabase(path, paths)) {
    throw new MasterKeyError(
      `${label} is inside the database directory ${paths.db}; keep the key outside it so the database can be copied without its key`,
    );
  }
}

function readKeyFile(path: string, label: string): MasterKey {
  const content = readPrivateKeyFile(path, label, MAX_FILE_BYTES, (m) => new MasterKeyError(m));
  const key = content.length === KEY_BYTES ? content : decodeText(content.toString("latin1"));
  if (!key) {
    throw new MasterKeyError(
      `${label} must hold exactly 32 raw bytes, 44 base64 or 64 hex characters (it holds ${content.length} bytes)`,
    );
  }
  return new MasterKey(key);
}

/** Writes a new key with an exclusive create; undefined if another start created the file first. */
function generateKeyFile(path: string): MasterKey | undefined {
  const key = new MasterKey(randomBytes(KEY_BYTES));
  const created = createPrivateKeyFile(
    path,
    `master key file ${path}`,
    `${key.bytes().toString("base64")}\n`,
    (m) => new MasterKeyError(m),
  );
  return created ? key : undefined;
}

/**
 * Loads the master key from its configured source. With no key configured, a key is generated once in
 * `keys/` of the data directory and `log` receives a warning that production keeps the key elsewhere.
 */
export function loadMasterKey(
  source: MasterKeySource,
  paths: DataDirPaths,
  log: (message: string) => void = console.warn,
): MasterKey {
  if (source.kind === "env") {
    const key = decodeText(source.value);
    if (!key) throw new MasterKeyError("CHARTER_MASTER_KEY must be 32 bytes in base64 (44 characters) or hex (64)");
    return new MasterKey(key);
  }
  const label = fileLabel(source);
  refuseInsideDatabase(source.path, label, paths);
  if (source.kind === "file") return readKeyFile(source.path, label);

  const generated = generateKeyFile(source.path);
  if (!generated) return readKeyFile(source.path, label);
  log(
    `WARNING: generated a new master key (fingerprint ${generated.fingerprint}) in the data directory at ${source.path}; ` +
      "production must keep the master key elsewhere: CHARTER_MASTER_KEY_FILE on a separate volume or secret store, or CHARTER_MASTER_KEY",
  );
  return generated;
}

/**
 * The key a master key rotation moves to, from the file at `path` (`--new-key-file`), under the same rules
 * as the master key's own file (private to its owner, outside the database directory). A file that does not
 * exist yet is created with a new random key (mode 0600), so running the rotation again uses the same key.
 */
export function newMasterKeyFile(path: string, paths: DataDirPaths): { key: MasterKey; created: boolean } {
  const label = `--new-key-file ${path}`;
  refuseInsideDatabase(path, label, paths);
  const generated = generateKeyFile(path);
  return generated ? { key: generated, created: true } : { key: readKeyFile(path, label), created: false };
}

/**
 * Doctor control "key file location and mode": where the master key comes from, that it is outside the
 * database directory, and that its file is private to its owner. Never includes the key.
 */
export function keyFileCheck(source: MasterKeySource, paths: DataDirPaths): { ok: boolean; evidence: string } {
  if (source.kind === "env") {
    return { ok: true, evidence: "master key from the CHARTER_MASTER_KEY environment variable; no key file" };
  }
  const origin =
    source.kind === "file"
      ? `master key file ${source.path} (CHARTER_MASTER_KEY_FILE)`
      : `generated master key file ${source.path} (embedded default; production keeps the key elsewhere)`;
  if (insideDatabase(source.path, paths)) {
    return { ok: false, evidence: `${origin} is inside the database directory ${paths.db}` };
  }
  let mode: number;
  try {
    const stats = statSync(source.path);
    if (!stats.isFile()) return { ok: false, evidence: `${origin} is not a regular file` };
    mode = stats.mode;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return {
      ok: false,
      evidence: `${origin} ${code === "ENOENT" ? "does not exist" : `cannot be examined (${code})`}`,
    };
  }
  const location = `${origin}, outside the database directory ${paths.db}, mode ${modeText(mode)}`;
  if ((mode & 0o077) !== 0) return { ok: false, evidence: `${location}: group or others can access it` };
  return { ok: true, evidence: location };
}
