import type { FastifyReply, FastifyRequest } from "fastify";
import type { Tx } from "../../platform/db/index.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { readCookie } from "./cookies.ts";
import type { IdentityDeps } from "./deps.ts";
import { hashToken, isTokenShaped, newToken } from "./tokens.ts";

/**
 * Known devices (promise A6): a browser that signed in to an account gets a long-lived random cookie, and the
 * account keeps the cookie's SHA-256. Presenting it again marks the browser as one the account has used: its
 * failed sign-ins count on a counter of its own rather than the account's (so an attacker cannot lock the owner
 * out), and a sign-in from a browser without it raises a new-device alert. A browser used with several accounts
 * holds one cookie, known to each of them.
 *
 * Like the session cookie: HttpOnly, SameSite=Lax, and behind https Secure with the `__Host-` prefix, which no
 * subdomain or plain-http page can plant.
 */

const SECURE_NAME = "__Host-charter_device";
const PLAIN_NAME = "charter_device";
/** Browsers keep a cookie at most 400 days; each sign-in renews it. */
export const DEVICE_COOKIE_MAX_AGE_SECONDS = 400 * 24 * 60 * 60;

export function deviceCookieName(publicUrl: URL): string {
  return publicUrl.protocol === "https:" ? SECURE_NAME : PLAIN_NAME;
}

/** The device token the request presents, when it has the shape of one. */
export function presentedDeviceToken(request: FastifyRequest, publicUrl: URL): string | undefined {
  const token = readCookie(request, deviceCookieName(publicUrl));
  return isTokenShaped(token) ? token : undefined;
}

export function setDeviceCookie(reply: FastifyReply, publicUrl: URL, token: string): void {
  const secure = publicUrl.protocol === "https:" ? "; Secure" : "";
  reply.header(
    "set-cookie",
    `${deviceCookieName(publicUrl)}=${token}; Path=/; HttpOnly; SameSite=Lax${secure}; Max-Age=${DEVICE_COOKIE_MAX_AGE_SECONDS}`,
  );
}

export interface KnownDevice {
  id: string;
  userId: string;
}

/** The device `token` is for one of `userIds`, if it is a known one of theirs. */
export async function findKnownDevice(
  tx: Tx,
  token: string | undefined,
  userIds: readonly string[],
): Promise<KnownDevice | undefined> {
  if (token === undefined || userIds.length === 0) return undefined;
  const row = await tx
    .selectFrom("known_devices")
    .select(["id", "user_id"])
    .where("token_hash", "=", hashToken(token))
    .where("user_id", "in", userIds)
    .orderBy("id")
    .executeTakeFirst();
  return row && { id: row.id, userId: row.user_id };
}

/** The known device of one of `userIds` the request presents, read in a short transaction of its own. */
export function presentedKnownDevice(
  deps: Pick<IdentityDeps, "db" | "config">,
  request: FastifyRequest,
  userIds: readonly string[],
): Promise<KnownDevice | undefined> {
  const token = presentedDeviceToken(request, deps.config.publicUrl);
  if (token === undefined || userIds.length === 0) return Promise.resolve(undefined);
  return deps.db.withPlatform((tx) => findKnownDevice(tx, token, userIds));
}

export interface RememberedDevice {
  id: string;
  /** The cookie to set (renewed on every sign-in). */
  token: string;
  /** The browser had not signed in to the account before. */
  isNew: boolean;
  /** The account had no known device at all: its very first sign-in (which no alert is raised for). */
  firstForAccount: boolean;
}

/**
 * After a complete sign-in, in its transaction: the browser becomes (or stays) a known device of the user. A
 * presented token is kept, so one browser holds one cookie whatever accounts it signs in to; a browser without
 * one gets a new token. Set the cookie with setDeviceCookie once the transaction committed.
 */
export async function rememberDevice(
  tx: Tx,
  userId: string,
  presented: string | undefined,
  now: Date,
): Promise<RememberedDevice> {
  const token = presented ?? newToken();
  const known = await findKnownDevice(tx, token, [userId]);
  if (known) {
    await tx.updateTable("known_devices").set({ last_seen_at: now }).where("id", "=", known.id).execute();
    return { id: known.id, token, isNew: false, firstForAccount: false };
  }
  const other = await tx.selectFrom("known_devices").select("id").where("user_id", "=", userId).executeTakeFirst();
  const id = uuidv7(now.getTime());
  await tx
    .insertInto("known_devices")
    .values({ id, user_id: userId, token_hash: hashToken(token), first_seen_at: now, last_seen_at: now })
    .onConflict((oc) => oc.columns(["user_id", "token_hash"]).doUpdateSet({ last_seen_at: now }))
    .execute();
  return { id, token, isNew: true, firstForAccount: other === undefined };
}
