import { createHash, randomBytes } from "node:crypto";
import { crc32 } from "node:zlib";
import type { Tx } from "../../platform/db/index.ts";
import { type ApiKeyRole, lowerRole, type MembershipRole } from "./roles.ts";
import type { ApiKeyKind } from "./schema.ts";
import { sameHash } from "./tokens.ts";

/**
 * API keys (promise A7): `chk_<id>_<secret><checksum>`. The prefix and the checksum let secret scanners
 * recognise a leaked key (and reject a mistyped one without a lookup); the id finds the row; only the
 * SHA-256 of the secret is stored, compared in constant time.
 */

const PREFIX = "chk_";
const ID_HEX = 32;
const SECRET_HEX = 64;
const CHECKSUM_LENGTH = 6;
const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const KEY = new RegExp(`^${PREFIX}([0-9a-f]{${ID_HEX}})_([0-9a-f]{${SECRET_HEX}})([0-9A-Za-z]{${CHECKSUM_LENGTH}})$`);

/** CRC32 of everything before the checksum, in six base62 digits (as GitHub's tokens do). */
function checksum(body: string): string {
  let value = crc32(body);
  let text = "";
  for (let i = 0; i < CHECKSUM_LENGTH; i++) {
    text = BASE62[value % 62] + text;
    value = Math.floor(value / 62);
  }
  return text;
}

const idToHex = (id: string) => id.replaceAll("-", "");
const hexToId = (hex: string) =>
  `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;

export const hashSecret = (secret: string) => createHash("sha256").update(secret, "utf8").digest();

/** A new key for the row `id`: the text shown once, and the hash to store. */
export function newApiKey(id: string): { key: string; secretHash: Buffer } {
  const secret = randomBytes(SECRET_HEX / 2).toString("hex");
  const body = `${PREFIX}${idToHex(id)}_${secret}`;
  return { key: body + checksum(body), secretHash: hashSecret(secret) };
}

/** The id and secret of a well-formed key with a valid checksum; undefined for anything else. */
export function parseApiKey(presented: string): { id: string; secret: string } | undefined {
  const match = KEY.exec(presented);
  if (!match) return undefined;
  const [, idHex = "", secret = "", sum = ""] = match;
  if (checksum(`${PREFIX}${idHex}_${secret}`) !== sum) return undefined;
  return { id: hexToId(idHex), secret };
}

export interface VerifiedApiKey {
  id: string;
  kind: ApiKeyKind;
  /** The membership a personal key belongs to; null for a service key. */
  membershipId: string | null;
  /** The lower of the key's role and its owner's current role (a service key's owner is the tenant). */
  role: MembershipRole;
}

/**
 * Checks a presented key in the tenant of `tx` (the tenant of the request's path: a key of another tenant
 * is simply not found). Refuses a malformed key, a wrong secret, a revoked or expired key, and a personal
 * key whose membership was removed. Notes the use at most once a minute.
 */
export async function verifyApiKey(
  tx: Tx,
  tenantId: string,
  presented: string,
  now: Date,
): Promise<VerifiedApiKey | undefined> {
  const parsed = parseApiKey(presented);
  if (!parsed) return undefined;
  const row = await tx
    .selectFrom("api_keys as k")
    .leftJoin("memberships as m", (join) =>
      join.onRef("m.tenant_id", "=", "k.tenant_id").onRef("m.id", "=", "k.membership_id"),
    )
    .select([
      "k.id",
      "k.kind",
      "k.membership_id",
      "k.role",
      "k.secret_hash",
      "k.expires_at",
      "k.revoked_at",
      "k.last_used_at",
      "m.role as owner_role",
      "m.status as owner_status",
    ])
    .where("k.tenant_id", "=", tenantId)
    .where("k.id", "=", parsed.id)
    .executeTakeFirst();
  if (!row || !sameHash(row.secret_hash, hashSecret(parsed.secret))) return undefined;
  if (row.revoked_at !== null || row.expires_at.getTime() <= now.getTime()) return undefined;
  let role: MembershipRole = row.role as ApiKeyRole;
  if (row.kind === "personal") {
    if (row.owner_status !== "active" || !row.owner_role) return undefined;
    role = lowerRole<MembershipRole>(role, row.owner_role);
  }
  if (row.last_used_at === null || now.getTime() - row.last_used_at.getTime() >= 60_000) {
    await tx
      .updateTable("api_keys")
      .set({ last_used_at: now })
      .where("tenant_id", "=", tenantId)
      .where("id", "=", row.id)
      .execute();
  }
  return { id: row.id, kind: row.kind, membershipId: row.membership_id, role };
}
