import { randomBytes } from "node:crypto";
import {
  assertKey,
  DecryptionError,
  encodeFields,
  fromBase64Url,
  gcmOpen,
  gcmSeal,
  KEY_BYTES,
  TAG_BYTES,
  toBase64Url,
} from "./aead.ts";

export { DecryptionError, type DecryptionFailure } from "./aead.ts";

/**
 * Key wrapping for the key hierarchy (ARCHITECTURE.md "Keys"): each key is stored encrypted under its
 * parent with AES-256-GCM.
 *
 * Wrapped key text, version 1, three fields joined by ".":
 *
 *     w1.<iv>.<ciphertext and tag>
 *
 * with the 12-byte random IV and the 32-byte ciphertext followed by its 16-byte tag, both unpadded
 * base64url. The associated data is the length-prefixed encoding of ("charter/wrapped-key", "w1",
 * key id, purpose): a wrapped key copied onto another key's row, or presented for another purpose,
 * fails to unwrap.
 */

export interface WrapLabel {
  /** The wrapped (child) key's id. */
  keyId: string;
  /** What the child key is for, e.g. "tenant", "subject", "user". */
  purpose: string;
}

const VERSION = "w1";
const DOMAIN = "charter/wrapped-key";

/** A copy in memory of its own: small Buffer.concat results share Node's pool slab with unrelated data. */
function ownCopy(bytes: Buffer): Buffer {
  const copy = Buffer.alloc(bytes.length);
  bytes.copy(copy);
  return copy;
}

function associatedData(label: WrapLabel): Buffer {
  for (const [name, value] of [
    ["keyId", label.keyId],
    ["purpose", label.purpose],
  ] as const) {
    if (typeof value !== "string" || value === "") throw new TypeError(`wrap label ${name} must be a non-empty string`);
  }
  return encodeFields([DOMAIN, VERSION, label.keyId, label.purpose]);
}

/** 32 random bytes: a new AES-256 data key or parent key. */
export function newDataKey(): Buffer {
  return randomBytes(KEY_BYTES);
}

/** Encrypts `child` under `parentKey`, bound to the child's id and purpose. */
export function wrapKey(parentKey: Buffer, child: Buffer, label: WrapLabel): string {
  assertKey(parentKey, "a parent key");
  assertKey(child, "a wrapped key");
  const { iv, sealed } = gcmSeal(parentKey, child, associatedData(label));
  return [VERSION, toBase64Url(iv), toBase64Url(sealed)].join(".");
}

/**
 * Decrypts a wrapped key. Throws DecryptionError when the text is malformed or fails to authenticate
 * (wrong parent, another key's id or purpose, or altered).
 */
export function unwrapKey(parentKey: Buffer, wrapped: string, label: WrapLabel): Buffer {
  assertKey(parentKey, "a parent key");
  const aad = associatedData(label);
  if (typeof wrapped !== "string") throw new DecryptionError("malformed");
  const parts = wrapped.split(".");
  if (parts.length !== 3 || parts[0] !== VERSION) throw new DecryptionError("malformed");
  const iv = fromBase64Url(parts[1] ?? "");
  const sealed = fromBase64Url(parts[2] ?? "");
  if (!iv || sealed?.length !== KEY_BYTES + TAG_BYTES) throw new DecryptionError("malformed");
  const child = gcmOpen(parentKey, iv, sealed, aad);
  const own = ownCopy(child);
  child.fill(0);
  return own;
}
