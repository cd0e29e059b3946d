import { createHash, randomBytes } from "node:crypto";
import { crc32 } from "node:zlib";
import type { Actor } from "../../platform/audit/event.ts";
import type { Clock } from "../../platform/clock.ts";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { AuditRecorder } from "../../platform/tenancy/tenants.ts";
import type { Page } from "./memberships.ts";
import { type ApiKeyRole, lowerRole, type MembershipRole, outranks } from "./roles.ts";
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

/** The longest a key may live: a forgotten key stops working on its own within a year. */
const MAX_LIFETIME_YEARS = 1;

/** What a key looks like to the people who administer it: never its secret, nor the secret's hash. */
export interface ApiKeySummary {
  id: string;
  kind: ApiKeyKind;
  name: string;
  role: ApiKeyRole;
  /** The membership a personal key belongs to; null for a service key. */
  membershipId: string | null;
  createdAt: Date;
  expiresAt: Date;
  lastUsedAt: Date | null;
  revokedAt: Date | null;
}

export interface ApiKeyServices {
  clock: Clock;
  audit: AuditRecorder;
}

export interface NewKeyRequest {
  tenantId: string;
  kind: ApiKeyKind;
  /** The member creating it: a personal key is theirs; a service key names them as its creator. */
  creator: { membershipId: string; role: MembershipRole };
  name: string;
  /** Defaults to the creator's role, and may not exceed it. */
  role?: ApiKeyRole | undefined;
  expiresAt: Date;
  requestId: string;
}

const invalidExpiry = (message: string) =>
  new HttpProblem("validation", message, { errors: [{ path: "body/expiresAt", message }] });

/**
 * Creates a key in the tenant of `tx` and records api-key.created (security stream, the tenant's chain,
 * nothing secret) in the same transaction. Returns the key text, which is never available again.
 */
export async function createApiKey(
  tx: Tx,
  services: ApiKeyServices,
  request: NewKeyRequest,
): Promise<{ summary: ApiKeySummary; key: string }> {
  const { creator } = request;
  if (creator.role === "guest") throw new HttpProblem("forbidden", "guests cannot hold API keys");
  const role = request.role ?? creator.role;
  if (outranks(role, creator.role)) throw new HttpProblem("forbidden", "a key cannot hold a role above your own");
  const now = services.clock.now();
  const latest = new Date(now);
  latest.setUTCFullYear(latest.getUTCFullYear() + MAX_LIFETIME_YEARS);
  if (request.expiresAt.getTime() <= now.getTime()) throw invalidExpiry("the expiry must be in the future");
  if (request.expiresAt.getTime() > latest.getTime()) throw invalidExpiry("a key may live at most one year");

  const id = uuidv7(now.getTime());
  const { key, secretHash } = newApiKey(id);
  const membershipId = request.kind === "personal" ? creator.membershipId : null;
  await tx
    .insertInto("api_keys")
    .values({
      tenant_id: request.tenantId,
      id,
      kind: request.kind,
      membership_id: membershipId,
      role,
      name: request.name,
      secret_hash: secretHash,
      created_by: creator.membershipId,
      created_at: now,
      expires_at: request.expiresAt,
    })
    .execute();
  await services.audit.record(tx, {
    tenantId: request.tenantId,
    stream: "security",
    actor: { kind: "user", id: creator.membershipId },
    action: "api-key.created",
    target: { type: "api-key", id },
    details: { kind: request.kind, role, expiresAt: request.expiresAt.toISOString() },
    requestId: request.requestId,
  });
  const summary: ApiKeySummary = {
    id,
    kind: request.kind,
    name: request.name,
    role,
    membershipId,
    createdAt: now,
    expiresAt: request.expiresAt,
    lastUsedAt: null,
    revokedAt: null,
  };
  return { summary, key };
}

/**
 * The keys of the tenant of `tx`, oldest first (ids are UUIDv7), `limit` at a time after `cursor`: one
 * member's personal keys, or every key of the tenant when `ownedBy` is undefined.
 */
export async function listApiKeys(
  tx: Tx,
  tenantId: string,
  options: { ownedBy?: string | undefined; cursor?: string | undefined; limit: number },
): Promise<Page<ApiKeySummary>> {
  const rows = await tx
    .selectFrom("api_keys")
    .select(["id", "kind", "name", "role", "membership_id", "created_at", "expires_at", "last_used_at", "revoked_at"])
    .where("tenant_id", "=", tenantId)
    .$if(options.ownedBy !== undefined, (q) =>
      q.where("kind", "=", "personal").where("membership_id", "=", options.ownedBy as string),
    )
    .$if(options.cursor !== undefined, (q) => q.where("id", ">", options.cursor as string))
    .orderBy("id")
    .limit(options.limit + 1)
    .execute();
  const items = rows.slice(0, options.limit).map((row) => ({
    id: row.id,
    kind: row.kind,
    name: row.name,
    role: row.role,
    membershipId: row.membership_id,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    lastUsedAt: row.last_used_at,
    revokedAt: row.revoked_at,
  }));
  return { items, nextCursor: rows.length > options.limit ? (items.at(-1)?.id ?? null) : null };
}

export interface RevokeKeyRequest {
  tenantId: string;
  keyId: string;
  /** Only this member's personal key may be revoked; undefined: any key of the tenant. */
  ownedBy?: string | undefined;
  actor: Actor;
  /** The membership revoking it (null when a service key does). */
  revokedBy: string | null;
  requestId: string;
}

/**
 * Revokes a key of the tenant of `tx` and records api-key.revoked in the same transaction. False when there
 * is no such key (or it is not `ownedBy`'s). Revoking a revoked key changes and records nothing.
 */
export async function revokeApiKey(tx: Tx, services: ApiKeyServices, request: RevokeKeyRequest): Promise<boolean> {
  const row = await tx
    .selectFrom("api_keys")
    .select(["id", "kind", "revoked_at"])
    .where("tenant_id", "=", request.tenantId)
    .where("id", "=", request.keyId)
    .$if(request.ownedBy !== undefined, (q) =>
      q.where("kind", "=", "personal").where("membership_id", "=", request.ownedBy as string),
    )
    .forUpdate()
    .executeTakeFirst();
  if (!row) return false;
  if (row.revoked_at !== null) return true;
  await tx
    .updateTable("api_keys")
    .set({ revoked_at: services.clock.now(), revoked_by: request.revokedBy })
    .where("tenant_id", "=", request.tenantId)
    .where("id", "=", request.keyId)
    .execute();
  await services.audit.record(tx, {
    tenantId: request.tenantId,
    stream: "security",
    actor: request.actor,
    action: "api-key.revoked",
    target: { type: "api-key", id: request.keyId },
    details: { kind: row.kind },
    requestId: request.requestId,
  });
  return true;
}
