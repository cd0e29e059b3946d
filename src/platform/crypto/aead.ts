import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

/**
 * AES-256-GCM and the encodings shared by field envelopes (envelope.ts) and wrapped keys (wrap.ts).
 * Internal to src/platform/crypto: callers use those two modules.
 */

export const KEY_BYTES = 32;
/** 96 bits, the size GCM is specified for; random per message, so at most ~2^32 messages per key. */
export const IV_BYTES = 12;
export const TAG_BYTES = 16;

export type DecryptionFailure = "unknown-key" | "malformed" | "authentication";

const MESSAGES: Record<DecryptionFailure, string> = {
  "unknown-key": "the key that encrypted this value is unknown or destroyed",
  malformed: "the encrypted value is malformed",
  authentication: "the encrypted value does not authenticate under this key and binding",
};

/**
 * Decrypting failed. The message is fixed per reason and never carries the input: a "malformed"
 * envelope may be plaintext stored by mistake, and a failed one must not hint at what it holds.
 */
export class DecryptionError extends Error {
  override name = "DecryptionError";
  readonly reason: DecryptionFailure;

  constructor(reason: DecryptionFailure) {
    super(MESSAGES[reason]);
    this.reason = reason;
  }
}

export function assertKey(bytes: Buffer, what: string): void {
  if (!Buffer.isBuffer(bytes) || bytes.length !== KEY_BYTES) {
    throw new TypeError(`${what} must be a ${KEY_BYTES}-byte Buffer`);
  }
}

/** Lone surrogates would be replaced by U+FFFD in UTF-8, so two different strings would encode alike. */
export function assertWellFormed(value: string, what: string): void {
  if (!value.isWellFormed()) throw new TypeError(`${what} is not well-formed Unicode`);
}

/**
 * An unambiguous encoding of a list of fields: each is a presence byte, then for a present field a
 * 32-bit big-endian byte length and its UTF-8 bytes. No two different lists encode to the same bytes,
 * so no field's content can pass for a boundary or for another field, and null differs from "".
 */
export function encodeFields(fields: readonly (string | null)[]): Buffer {
  const parts: Buffer[] = [];
  for (const field of fields) {
    if (field === null) {
      parts.push(Buffer.of(0));
      continue;
    }
    assertWellFormed(field, "an associated-data field");
    const bytes = Buffer.from(field, "utf8");
    const header = Buffer.alloc(5);
    header.writeUInt8(1, 0);
    header.writeUInt32BE(bytes.length, 1);
    parts.push(header, bytes);
  }
  return Buffer.concat(parts);
}

export function toBase64Url(bytes: Buffer): string {
  return bytes.toString("base64url");
}

/**
 * Strict base64url: Buffer.from skips invalid characters and ignores stray trailing bits, which would
 * let several texts decode to the same bytes. Only the canonical unpadded text is accepted.
 */
export function fromBase64Url(text: string): Buffer | undefined {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) return undefined;
  const bytes = Buffer.from(text, "base64url");
  return bytes.toString("base64url") === text ? bytes : undefined;
}

/** Encrypts under a fresh random IV; returns the IV and ciphertext with the tag appended. */
export function gcmSeal(key: Buffer, plaintext: Buffer, aad: Buffer): { iv: Buffer; sealed: Buffer } {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv("aes-256-gcm", key, iv, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad);
  const sealed = Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
  return { iv, sealed };
}

/** Decrypts ciphertext-and-tag; throws DecryptionError("authentication") if anything was altered. */
export function gcmOpen(key: Buffer, iv: Buffer, sealed: Buffer, aad: Buffer): Buffer {
  if (iv.length !== IV_BYTES || sealed.length < TAG_BYTES) throw new DecryptionError("malformed");
  // authTagLength pins the tag size: without it Node would accept a truncated tag.
  const decipher = createDecipheriv("aes-256-gcm", key, iv, { authTagLength: TAG_BYTES });
  decipher.setAAD(aad);
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  const body = decipher.update(sealed.subarray(0, sealed.length - TAG_BYTES));
  try {
    return Buffer.concat([body, decipher.final()]);
  } catch {
    body.fill(0);
    throw new DecryptionError("authentication");
  }
}
