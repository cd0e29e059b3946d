import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

/**
 * Secrets handed to people (session cookies, emailed links, invitations, setup links, API key secrets):
 * 32 random bytes in base64url, stored only as their SHA-256. A token has 256 bits of entropy, so its hash
 * can be looked up directly: there is nothing to brute-force and no timing to learn from.
 */

const TOKEN_BYTES = 32;
const TOKEN = /^[A-Za-z0-9_-]{43}$/;

export function newToken(): string {
  return randomBytes(TOKEN_BYTES).toString("base64url");
}

/** Whether a presented value has the shape of a token (checked before any lookup). */
export function isTokenShaped(value: unknown): value is string {
  return typeof value === "string" && TOKEN.test(value);
}

export function hashToken(token: string): Buffer {
  return createHash("sha256").update(token, "utf8").digest();
}

/** Compares two hashes in constant time (for secrets looked up by another id, such as API keys). */
export function sameHash(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
