import { createHash } from "node:crypto";
import type { FastifyReply } from "fastify";
import { z } from "zod";
import type { Tx } from "../../platform/db/index.ts";
import type { FileOwner } from "../../platform/files/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import type { Caller, RequestContext } from "./accounts.ts";
import type { IdentityDeps } from "./deps.ts";

/**
 * Avatars (issue 5, promise T7): one picture per user, stored through the platform file store under the
 * user's person key (erasing the person shreds it) and shown to the members of a tenant the user is in, and
 * to the user. There is deliberately no route by user id: a picture is reached through a membership of a
 * tenant the caller can list, so it shows nobody outside the tenants they share and enumerates no one.
 */

/** Enough for a sharp picture at the sizes an avatar is shown; bounded so no one stores files through it. */
export const AVATAR_MAX_BYTES = 256 * 1024;

export const AVATAR_MEDIA_TYPES = ["image/png", "image/jpeg", "image/webp"] as const;
export type AvatarMediaType = (typeof AVATAR_MEDIA_TYPES)[number];

/** What each accepted type's content must begin with: the declared type alone is never trusted. */
const SIGNATURES: Readonly<Record<AvatarMediaType, (bytes: Buffer) => boolean>> = {
  "image/png": (bytes) => bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])),
  "image/jpeg": (bytes) => bytes.subarray(0, 3).equals(Buffer.from([0xff, 0xd8, 0xff])),
  "image/webp": (bytes) =>
    bytes.subarray(0, 4).toString("latin1") === "RIFF" && bytes.subarray(8, 12).toString("latin1") === "WEBP",
};

const personOf = (userId: string): FileOwner => ({ scope: "person", personId: userId });

/**
 * A short opaque tag of the stored picture: it goes in the picture's URL so that a new picture gets a new
 * URL despite caching, without showing the file id (a UUIDv7, which would tell when it was uploaded).
 */
function versionOf(fileId: string): string {
  return createHash("sha256").update(fileId).digest("base64url").slice(0, 16);
}

/** The query of a picture's URL: its version, which only makes a new picture a new URL for caches. */
export const avatarQuery = z.object({ v: z.string().max(32).optional().describe("The picture's version tag") });

/** The URL of the caller's own picture, or null when there is none. */
export function ownAvatarUrl(fileId: string | null): string | null {
  return fileId === null ? null : `/api/v1/me/avatar?v=${versionOf(fileId)}`;
}

/** The URL of a member's picture, reachable by whoever may list the tenant's members; null when none. */
export function memberAvatarUrl(tenantId: string, membershipId: string, fileId: string | null): string | null {
  return fileId === null ? null : `/api/v1/tenants/${tenantId}/members/${membershipId}/avatar?v=${versionOf(fileId)}`;
}

/** Locks the user's row for the rest of the transaction, so two changes of the picture cannot lose a file. */
async function lockUser(tx: Tx, userId: string) {
  const user = await tx
    .selectFrom("users")
    .select(["id", "avatar_file_id", "email_verified_at"])
    .where("id", "=", userId)
    .forUpdate()
    .executeTakeFirst();
  if (!user) throw new HttpProblem("unauthenticated", "this account no longer exists");
  return user;
}

function recordChange(deps: IdentityDeps, tx: Tx, userId: string, change: "set" | "removed", context: RequestContext) {
  return deps.audit.record(tx, {
    tenantId: null,
    stream: "changes",
    actor: { kind: "user", id: userId },
    action: "account.avatar-changed",
    target: { type: "user", id: userId },
    details: { change },
    requestId: context.requestId,
  });
}

/**
 * Sets the caller's picture, replacing (and deleting) the previous one in the same transaction. Refused
 * with 413 past AVATAR_MAX_BYTES and with 400 unless the content begins as its declared type's does, in
 * both cases before anything is written. An unverified account has no picture: nobody could see it (it
 * holds no membership), and it may be wiped with its sign-up.
 */
export async function setAvatar(
  deps: IdentityDeps,
  caller: Caller,
  input: { mediaType: AvatarMediaType; content: Buffer },
  context: RequestContext,
): Promise<void> {
  const { mediaType, content } = input;
  if (content.length > AVATAR_MAX_BYTES) {
    throw new HttpProblem("payload-too-large", `a picture is at most ${AVATAR_MAX_BYTES / 1024} KiB`);
  }
  if (!SIGNATURES[mediaType](content)) {
    throw new HttpProblem("bad-request", `the content is not a ${mediaType} image`);
  }
  await deps.db.withPlatform(async (tx) => {
    const user = await lockUser(tx, caller.userId);
    if (user.email_verified_at === null) {
      throw new HttpProblem("forbidden", "verify your address before adding a picture");
    }
    const owner = personOf(user.id);
    const stored = await deps.files.put(tx, owner, { kind: "avatar", mediaType }, content);
    await tx
      .updateTable("users")
      .set({ avatar_file_id: stored.id, updated_at: deps.clock.now() })
      .where("id", "=", user.id)
      .execute();
    if (user.avatar_file_id !== null) await deps.files.delete(tx, { owner, id: user.avatar_file_id });
    await recordChange(deps, tx, user.id, "set", context);
  });
}

/** Removes the caller's picture and deletes its file; nothing happens, and nothing is recorded, when there is none. */
export async function removeAvatar(deps: IdentityDeps, caller: Caller, context: RequestContext): Promise<void> {
  await deps.db.withPlatform(async (tx) => {
    const user = await lockUser(tx, caller.userId);
    if (user.avatar_file_id === null) return;
    await tx
      .updateTable("users")
      .set({ avatar_file_id: null, updated_at: deps.clock.now() })
      .where("id", "=", user.id)
      .execute();
    await deps.files.delete(tx, { owner: personOf(user.id), id: user.avatar_file_id });
    await recordChange(deps, tx, user.id, "removed", context);
  });
}

export interface Avatar {
  mediaType: string;
  content: Buffer;
}

/** The user's picture, or undefined when they have none; in a platform or tenant transaction. */
async function readAvatar(deps: IdentityDeps, tx: Tx, userId: string): Promise<Avatar | undefined> {
  const user = await tx.selectFrom("users").select("avatar_file_id").where("id", "=", userId).executeTakeFirst();
  if (!user?.avatar_file_id) return undefined;
  const { file, content } = await deps.files.read(tx, { owner: personOf(userId), id: user.avatar_file_id });
  return { mediaType: file.mediaType, content };
}

export function ownAvatar(deps: IdentityDeps, caller: Caller): Promise<Avatar | undefined> {
  return deps.db.withPlatform((tx) => readAvatar(deps, tx, caller.userId));
}

/** The picture of an active member of the tenant, in the tenant's transaction (a removed member shows none). */
export async function memberAvatar(tx: Tx, deps: IdentityDeps, tenantId: string, membershipId: string) {
  const membership = await tx
    .selectFrom("memberships")
    .select("user_id")
    .where("tenant_id", "=", tenantId)
    .where("id", "=", membershipId)
    .where("status", "=", "active")
    .executeTakeFirst();
  return membership ? readAvatar(deps, tx, membership.user_id) : undefined;
}

/**
 * Sends a picture so that it can only ever be an image shown inline: its stored (checked) type, no sniffing,
 * a policy that lets nothing load or run should it be opened as a document, and a private cache (it is
 * shown to some people only) short enough that a removed picture soon goes.
 */
export function sendAvatar(reply: FastifyReply, avatar: Avatar | undefined): FastifyReply {
  if (!avatar) throw new HttpProblem("not-found", "no picture");
  return reply
    .header("cache-control", "private, max-age=300")
    .header("x-content-type-options", "nosniff")
    .header("content-disposition", "inline")
    .header("content-security-policy", "default-src 'none'")
    .type(avatar.mediaType)
    .send(avatar.content);
}
