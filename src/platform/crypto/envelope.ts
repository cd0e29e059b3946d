import {
  assertKey,
  assertWellFormed,
  DecryptionError,
  encodeFields,
  fromBase64Url,
  gcmOpen,
  gcmSeal,
  IV_BYTES,
  TAG_BYTES,
  toBase64Url,
} from "./aead.ts";

export { DecryptionError, type DecryptionFailure } from "./aead.ts";

/**
 * Field encryption for sensitive columns (promise E2).
 *
 * Envelope text, version 1, five fields joined by ".":
 *
 *     v1.<key id>.<key version>.<iv>.<ciphertext and tag>
 *
 * - key id: the data key's id (a uuid), 1–64 characters of [A-Za-z0-9_-];
 * - key version: decimal, no leading zeros, a non-negative safe integer;
 * - iv: the 12-byte random GCM nonce, unpadded base64url;
 * - ciphertext and tag: AES-256-GCM ciphertext followed by its 16-byte tag, unpadded base64url.
 *
 * The associated data is the length-prefixed encoding (aead.ts `encodeFields`) of
 * ("charter/field", "v1", key id, key version, tenant id or null, table, column, row id). A ciphertext
 * copied to another row, column, table or tenant, or relabelled with another key id or version, fails
 * to authenticate. The envelope names its key but not its place, which the caller always knows.
 */

export interface DataKey {
  /** A uuid; stored with the key's wrapped bytes and named by every envelope sealed under it. */
  id: string;
  version: number;
  /** 32 bytes, AES-256. */
  bytes: Buffer;
}

/** Where a value lives; a ciphertext only opens at the place it was sealed for. */
export interface Binding {
  /** null for platform-scope data, which belongs to no tenant. */
  tenantId: string | null;
  table: string;
  column: string;
  rowId: string;
}

/** Finds a key by id and version; undefined when it is unknown or has been destroyed. */
export type KeyResolver = (keyId: string, version: number) => DataKey | undefined;

const VERSION = "v1";
const DOMAIN = "charter/field";
/** No "." so the id can never shift the envelope's fields. */
const KEY_ID = /^[A-Za-z0-9_-]{1,64}$/;
/** One text per number, so an envelope has a single spelling. */
const KEY_VERSION = /^(0|[1-9][0-9]{0,15})$/;

function assertKeyLabel(keyId: string, version: number): void {
  if (typeof keyId !== "string" || !KEY_ID.test(keyId)) {
    throw new TypeError("a data key id must be 1-64 characters of A-Z, a-z, 0-9, _ and -");
  }
  if (!Number.isSafeInteger(version) || version < 0) {
    throw new TypeError("a data key version must be a non-negative safe integer");
  }
}

function assertDataKey(key: DataKey): void {
  assertKeyLabel(key.id, key.version);
  assertKey(key.bytes, "a data key");
}

function assertBinding(binding: Binding): void {
  const { tenantId, table, column, rowId } = binding;
  if (tenantId !== null && (typeof tenantId !== "string" || tenantId === "")) {
    throw new TypeError("binding tenantId must be a non-empty string, or null for platform scope");
  }
  for (const [name, value] of [
    ["table", table],
    ["column", column],
    ["rowId", rowId],
  ] as const) {
    if (typeof value !== "string" || value === "") throw new TypeError(`binding ${name} must be a non-empty string`);
  }
}

function associatedData(keyId: string, version: number, binding: Binding): Buffer {
  return encodeFields([
    DOMAIN,
    VERSION,
    keyId,
    String(version),
    binding.tenantId,
    binding.table,
    binding.column,
    binding.rowId,
  ]);
}

interface Parsed {
  keyId: string;
  version: number;
  iv: Buffer;
  sealed: Buffer;
}

function parse(envelope: string): Parsed {
  if (typeof envelope !== "string") throw new DecryptionError("malformed");
  const parts = envelope.split(".");
  if (parts.length !== 5) throw new DecryptionError("malformed");
  const [version, keyId, keyVersion, ivText, sealedText] = parts as [string, string, string, string, string];
  if (version !== VERSION || !KEY_ID.test(keyId) || !KEY_VERSION.test(keyVersion)) {
    throw new DecryptionError("malformed");
  }
  const numericVersion = Number(keyVersion);
  const iv = fromBase64Url(ivText);
  const sealed = fromBase64Url(sealedText);
  if (!Number.isSafeInteger(numericVersion) || iv?.length !== IV_BYTES || !sealed || sealed.length < TAG_BYTES) {
    throw new DecryptionError("malformed");
  }
  return { keyId, version: numericVersion, iv, sealed };
}

/** Encrypts a field value (a string as UTF-8) for one place; each call uses a fresh random IV. */
export function seal(key: DataKey, plaintext: string | Buffer, binding: Binding): string {
  assertDataKey(key);
  assertBinding(binding);
  let bytes: Buffer;
  if (typeof plaintext === "string") {
    assertWellFormed(plaintext, "the plaintext");
    bytes = Buffer.from(plaintext, "utf8");
  } else if (Buffer.isBuffer(plaintext)) {
    bytes = plaintext;
  } else {
    throw new TypeError("the plaintext must be a string or a Buffer");
  }
  const { iv, sealed } = gcmSeal(key.bytes, bytes, associatedData(key.id, key.version, binding));
  return [VERSION, key.id, String(key.version), toBase64Url(iv), toBase64Url(sealed)].join(".");
}

/** Which key an envelope needs, without decrypting it: for rotation and for loading keys in bulk. */
export function envelopeKey(envelope: string): { keyId: string; version: number } {
  const { keyId, version } = parse(envelope);
  return { keyId, version };
}

/**
 * Decrypts an envelope sealed for `binding` to its bytes. Throws DecryptionError when the envelope is
 * malformed, its key is unknown or destroyed, or it fails to authenticate (altered, wrong key, or
 * sealed for another place).
 */
export function openBytes(resolve: KeyResolver, envelope: string, binding: Binding): Buffer {
  assertBinding(binding);
  const { keyId, version, iv, sealed } = parse(envelope);
  const key = resolve(keyId, version);
  if (!key) throw new DecryptionError("unknown-key");
  assertDataKey(key);
  // A resolver handing back another key is a key ring bug, not a bad envelope.
  if (key.id !== keyId || key.version !== version) throw new TypeError("the key resolver returned a different key");
  return gcmOpen(key.bytes, iv, sealed, associatedData(keyId, version, binding));
}

/** Decrypts an envelope sealed from a string; as openBytes, and the value must be UTF-8 text. */
export function open(resolve: KeyResolver, envelope: string, binding: Binding): string {
  const bytes = openBytes(resolve, envelope, binding);
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new TypeError("the decrypted value is not UTF-8 text; open binary values with openBytes");
  } finally {
    bytes.fill(0);
  }
}
