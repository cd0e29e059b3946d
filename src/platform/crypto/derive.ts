import { hkdfSync } from "node:crypto";

/**
 * A purpose-bound 32-byte key derived from a parent key with HKDF-SHA256. Different labels give
 * independent keys, so one purpose's key reveals nothing of another's.
 */
export function deriveKey(parent: Buffer, label: string): Buffer {
  return Buffer.from(hkdfSync("sha256", parent, Buffer.alloc(0), `charter/${label}`, 32));
}
