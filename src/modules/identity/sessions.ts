import { sql } from "kysely";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import type { Principal } from "../../platform/http/routes.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { IdentityDeps } from "./deps.ts";
import type { SessionFactor, SessionState } from "./schema.ts";
import { hashToken, isTokenShaped, newToken } from "./tokens.ts";

/**
 * Sessions (promise A5). A session is global (tenant access is checked on every request, apart from it) and
 * is known to the browser only by an opaque random token, stored here as its SHA-256. A session is issued a
 * new token on every sign-in (a new session), step-up, and privilege change; the token it replaces stays
 * usable for REPLACED_TOKEN_GRACE_MS, for requests that were already in flight, and is never rotated again;
 * presented after that, it can only be a copy, so the whole session is revoked.
 *
 * Step-up gives the replaced token the same grace as an epoch rotation (a page's other requests in flight
 * must not end the session), but a replaced token never counts as recently authenticated, so a token taken
 * before the step-up cannot ride it: see requireRecentAuthentication.
 */

/** A session unused this long ends (measured from last_seen_at, which moves at most once a minute). */
export const SESSION_IDLE_TIMEOUT_MS = 8 * 60 * 60_000;
/** A session ends this long after sign-in, however active. */
export const SESSION_ABSOLUTE_TIMEOUT_MS = 7 * 24 * 60 * 60_000;
/** "Recent authentication" for sensitive actions: a factor proven within this window. */
export const RECENT_AUTHENTICATION_MS = 10 * 60_000;
/** A half-session (password right, second factor still due) lives this long. */
export const PENDING_SECOND_FACTOR_TIMEOUT_MS = 5 * 60_000;
/** A replaced token is still accepted this long, for requests already in flight. */
export const REPLACED_TOKEN_GRACE_MS = 10_000;
/** last_seen_at is written at most this often, so reads do not turn into a write per request. */
const LAST_SEEN_RESOLUTION_MS = 60_000;

/** A principal that signed in with a session (a user or an operator). */
export interface SessionPrincipal extends Principal {
  kind: "user" | "operator";
  userId: string;
  sessionId: string;
  /** Presented a replaced token still in its grace period: it works, but is never recent authentication. */
  viaReplacedToken: boolean;
  /** How the user authenticated in this session, in order (tenant policies are judged from these). */
  factors: readonly SessionFactor[];
  /** When the user signed in (tenant session lifetimes count from it). */
  signedInAt: Date;
}

export function isSessionPrincipal(principal: Principal | null | undefined): principal is SessionPrincipal {
  return (
    principal != null &&
    (principal.kind === "user" || principal.kind === "operator") &&
    typeof principal.sessionId === "string" &&
    typeof principal.userId === "string"
  );
}

const USER_AGENTS: readonly [RegExp, string][] = [
  [/Edg(e|A|iOS)?\//, "Edge"],
  [/OPR\/|Opera/, "Opera"],
  [/Firefox\/|FxiOS\//, "Firefox"],
  [/Chrome\/|CriOS\//, "Chrome"],
  [/Safari\//, "Safari"],
];
const SYSTEMS: readonly [RegExp, string][] = [
  [/iPhone|iPad|iPod/, "iOS"],
  [/Android/, "Android"],
  [/CrOS/, "ChromeOS"],
  [/Mac OS X|Macintosh/, "macOS"],
  [/Windows/, "Windows"],
  [/Linux/, "Linux"],
];

/**
 * "Firefox on Linux": enough for the user to recognise a session in their list, and no more (the full
 * User-Agent string is a fingerprint; it is not kept).
 */
export function describeDevice(userAgent: string | undefined): string | null {
  if (!userAgent) return null;
  const browser = USER_AGENTS.find(([pattern]) => pattern.test(userAgent))?.[1];
  const system = SYSTEMS.find(([pattern]) => pattern.test(userAgent))?.[1];
  if (browser && system) return `${browser} on ${system}`;
  return browser ?? system ?? "Unknown device";
}

export interface NewSession {
  id: string;
  token: string;
  state: SessionState;
  expiresAt: Date;
}

/** A factor just proven, as the session records it (the time is added when it is recorded). */
export type ProvenFactor = Omit<SessionFactor, "at">;

/**
 * Starts a session for a user who just proved `factor`: a fresh token, the user's current privilege epoch,
 * and an absolute expiry (5 minutes for a half-session awaiting its second factor).
 */
export async function createSession(
  tx: Tx,
  input: {
    userId: string;
    factor: ProvenFactor;
    now: Date;
    userAgent?: string | undefined;
    state?: SessionState;
  },
): Promise<NewSession> {
  const { userId, now } = input;
  const state = input.state ?? "active";
  const user = await tx
    .selectFrom("users")
    .select("privilege_epoch")
    .where("id", "=", userId)
    .executeTakeFirstOrThrow();
  const id = uuidv7();
  const lifetime = state === "active" ? SESSION_ABSOLUTE_TIMEOUT_MS : PENDING_SECOND_FACTOR_TIMEOUT_MS;
  const expiresAt = new Date(now.getTime() + lifetime);
  const factors: SessionFactor[] = [{ ...input.factor, at: now.toISOString() }];
  await tx
    .insertInto("sessions")
    .values({
      id,
      user_id: userId,
      state,
      factors: JSON.stringify(factors),
      privilege_epoch: Number(user.privilege_epoch),
      device: describeDevice(input.userAgent),
      created_at: now,
      last_seen_at: now,
      expires_at: expiresAt,
    })
    .execute();
  const token = newToken();
  await tx
    .insertInto("session_tokens")
    .values({ token_hash: hashToken(token), session_id: id, issued_at: now })
    .execute();
  return { id, token, state, expiresAt };
}

/**
 * Replaces the session's current token, which must be `presentedHash`: the old one keeps REPLACED_TOKEN_GRACE_MS.
 * Returns undefined when it was no longer current (a concurrent request rotated it first): the caller then
 * treats its token as a replaced one in its grace period.
 */
async function rotateToken(tx: Tx, sessionId: string, presentedHash: Buffer, now: Date): Promise<string | undefined> {
  const replaced = await tx
    .updateTable("session_tokens")
    .set({ replaced_at: now, grace_until: new Date(now.getTime() + REPLACED_TOKEN_GRACE_MS) })
    .where("token_hash", "=", presentedHash)
    .where("session_id", "=", sessionId)
    .where("replaced_at", "is", null)
    .executeTakeFirst();
  if (Number(replaced.numUpdatedRows) === 0) return undefined;
  const token = newToken();
  await tx
    .insertInto("session_tokens")
    .values({ token_hash: hashToken(token), session_id: sessionId, issued_at: now })
    .execute();
  return token;
}

export interface ResolvedSession {
  id: string;
  userId: string;
  state: SessionState;
  factors: SessionFactor[];
  operator: boolean;
  createdAt: Date;
  expiresAt: Date;
  /** The presented token was replaced and is in its grace period. */
  viaReplacedToken: boolean;
}

export type SessionResolution =
  | { outcome: "none" }
  | { outcome: "refused" }
  | { outcome: "valid"; session: ResolvedSession; rotatedToken: string | undefined };

/** Why a session ended, as stored in revoke_reason and audited. */
export type RevokeReason =
  | "signed-out"
  | "signed-in-again"
  | "revoked-by-user"
  | "signed-out-everywhere"
  | "replaced-token-reused";

/**
 * The session of a presented token, in its own transaction (a theft signal must revoke the session even
 * though the request is refused). Refuses revoked, expired and idle sessions; rotates the token when the
 * user's privilege epoch moved past the session's (the caller sets the cookie to `rotatedToken`); revokes the
 * session when a replaced token comes back after its grace period, and audits it.
 */
export async function resolveSession(
  deps: Pick<IdentityDeps, "db" | "audit" | "clock">,
  presented: string | undefined,
  requestId: string | undefined,
): Promise<SessionResolution> {
  if (!isTokenShaped(presented)) return { outcome: "none" };
  const tokenHash = hashToken(presented);
  const now = deps.clock.now();
  return deps.db.withPlatform(async (tx) => {
    const row = await tx
      .selectFrom("session_tokens as t")
      .innerJoin("sessions as s", "s.id", "t.session_id")
      .innerJoin("users as u", "u.id", "s.user_id")
      .leftJoin("operators as o", "o.user_id", "s.user_id")
      .select([
        "t.replaced_at",
        "t.grace_until",
        "s.id",
        "s.user_id",
        "s.state",
        "s.factors",
        "s.privilege_epoch",
        "s.last_seen_at",
        "s.created_at",
        "s.expires_at",
        "s.revoked_at",
        "u.privilege_epoch as user_epoch",
        "o.user_id as operator_id",
      ])
      .where("t.token_hash", "=", tokenHash)
      .executeTakeFirst();
    if (!row) return { outcome: "none" };
    if (row.revoked_at !== null || row.expires_at.getTime() <= now.getTime()) return { outcome: "refused" };
    if (now.getTime() - row.last_seen_at.getTime() >= SESSION_IDLE_TIMEOUT_MS) return { outcome: "refused" };

    let viaReplacedToken = row.replaced_at !== null;
    if (viaReplacedToken && (row.grace_until === null || row.grace_until.getTime() <= now.getTime())) {
      await revokeSession(tx, row.id, "replaced-token-reused", now);
      await deps.audit.record(tx, {
        tenantId: null,
        stream: "security",
        actor: { kind: "system", id: null },
        action: "auth.session-revoked",
        target: { type: "session", id: row.id },
        subjects: [row.user_id],
        details: { reason: "replaced-token-reused" },
        requestId: requestId ?? null,
      });
      return { outcome: "refused" };
    }

    let rotatedToken: string | undefined;
    const userEpoch = Number(row.user_epoch);
    const sessionUpdate: { privilege_epoch?: number; last_seen_at?: Date } = {};
    if (!viaReplacedToken && Number(row.privilege_epoch) < userEpoch) {
      rotatedToken = await rotateToken(tx, row.id, tokenHash, now);
      if (rotatedToken === undefined) viaReplacedToken = true;
      else sessionUpdate.privilege_epoch = userEpoch;
    }
    if (now.getTime() - row.last_seen_at.getTime() >= LAST_SEEN_RESOLUTION_MS) sessionUpdate.last_seen_at = now;
    if (Object.keys(sessionUpdate).length > 0) {
      await tx.updateTable("sessions").set(sessionUpdate).where("id", "=", row.id).execute();
    }
    return {
      outcome: "valid",
      rotatedToken,
      session: {
        id: row.id,
        userId: row.user_id,
        state: row.state,
        factors: row.factors,
        operator: row.operator_id !== null,
        createdAt: row.created_at,
        expiresAt: row.expires_at,
        viaReplacedToken,
      },
    };
  });
}

/** The live session a token belongs to, whatever the token's own state (for sign-in replacing it). */
export async function sessionOfToken(tx: Tx, presented: string | undefined): Promise<string | undefined> {
  if (!isTokenShaped(presented)) return undefined;
  const row = await tx
    .selectFrom("session_tokens")
    .select("session_id")
    .where("token_hash", "=", hashToken(presented))
    .executeTakeFirst();
  return row?.session_id;
}

/** Ends one session now, with no grace; false when it was already ended (or is not the user's, with `userId`). */
export async function revokeSession(
  tx: Tx,
  sessionId: string,
  reason: RevokeReason,
  now: Date,
  options: { userId?: string } = {},
): Promise<boolean> {
  let query = tx
    .updateTable("sessions")
    .set({ revoked_at: now, revoke_reason: reason })
    .where("id", "=", sessionId)
    .where("revoked_at", "is", null);
  if (options.userId) query = query.where("user_id", "=", options.userId);
  const result = await query.executeTakeFirst();
  return Number(result.numUpdatedRows) > 0;
}

/** Appends a proven factor to the session's list. */
async function appendFactor(tx: Tx, sessionId: string, factor: ProvenFactor, now: Date) {
  const recorded: SessionFactor = { ...factor, at: now.toISOString() };
  return tx
    .updateTable("sessions")
    .set({ factors: sql<string>`factors || ${JSON.stringify([recorded])}::jsonb` })
    .where("id", "=", sessionId)
    .returning(["expires_at", "created_at"])
    .executeTakeFirstOrThrow();
}

/**
 * Step-up: the user proved `factor` again. Appends the factor and issues a new token; the presented token
 * must be the current one (a token in its grace period cannot step up) and keeps the usual grace.
 */
export async function reauthenticate(
  tx: Tx,
  sessionId: string,
  presented: string,
  factor: ProvenFactor,
  now: Date,
): Promise<{ token: string; expiresAt: Date } | undefined> {
  const token = await rotateToken(tx, sessionId, hashToken(presented), now);
  if (token === undefined) return undefined;
  const session = await appendFactor(tx, sessionId, factor, now);
  return { token, expiresAt: session.expires_at };
}

/**
 * Completes a half-session: the user proved their second factor within PENDING_SECOND_FACTOR_TIMEOUT_MS. The
 * session becomes active with the factor appended, a new token (the half-session's token is replaced, with the
 * usual grace) and the absolute timeout counted from sign-in. Undefined when the session is not a live
 * half-session or the token is not its current one (a concurrent completion won).
 */
export async function completeSecondFactor(
  tx: Tx,
  sessionId: string,
  presented: string,
  factor: ProvenFactor,
  now: Date,
): Promise<{ token: string; expiresAt: Date } | undefined> {
  const pending = await tx
    .updateTable("sessions")
    .set({ state: "active" })
    .where("id", "=", sessionId)
    .where("state", "=", "pending-second-factor")
    .where("revoked_at", "is", null)
    .where("expires_at", ">", now)
    .returning("created_at")
    .executeTakeFirst();
  if (!pending) return undefined;
  const token = await rotateToken(tx, sessionId, hashToken(presented), now);
  if (token === undefined) return undefined;
  await appendFactor(tx, sessionId, factor, now);
  const expiresAt = new Date(pending.created_at.getTime() + SESSION_ABSOLUTE_TIMEOUT_MS);
  await tx.updateTable("sessions").set({ expires_at: expiresAt }).where("id", "=", sessionId).execute();
  return { token, expiresAt };
}

/** Until when the factors count as recent authentication; null when none does any more. */
export function recentAuthenticationUntil(factors: readonly SessionFactor[], now: Date): Date | null {
  const latest = Math.max(...factors.map((factor) => Date.parse(factor.at)), Number.NEGATIVE_INFINITY);
  const until = latest + RECENT_AUTHENTICATION_MS;
  return until > now.getTime() ? new Date(until) : null;
}

/**
 * Whether the live, fully signed-in session proved a factor within RECENT_AUTHENTICATION_MS. Issue 6 may
 * narrow which factors count (an SSO factor counts in its own tenant only).
 */
export async function isRecentlyAuthenticated(tx: Tx, sessionId: string, now: Date): Promise<boolean> {
  const row = await tx
    .selectFrom("sessions")
    .select("factors")
    .where("id", "=", sessionId)
    .where("state", "=", "active")
    .where("revoked_at", "is", null)
    .executeTakeFirst();
  return row !== undefined && recentAuthenticationUntil(row.factors, now) !== null;
}

/**
 * Refuses a sensitive action (password, email, API keys, data export) unless the caller is a person whose
 * session proved a factor within RECENT_AUTHENTICATION_MS, through its current token: HttpProblem
 * "reauthentication-required" (the client then calls POST /api/v1/sessions/current/reauthenticate). An API
 * key cannot confirm anything: "forbidden". Pass `tx` when a transaction is open (transactions do not nest).
 */
export async function requireRecentAuthentication(
  deps: Pick<IdentityDeps, "db" | "clock">,
  principal: Principal | null,
  tx?: Tx,
): Promise<void> {
  if (!isSessionPrincipal(principal)) {
    throw new HttpProblem("forbidden", "only a signed-in person can do this, after confirming their password");
  }
  const now = deps.clock.now();
  const sessionId = principal.sessionId;
  const recent =
    !principal.viaReplacedToken &&
    (tx
      ? await isRecentlyAuthenticated(tx, sessionId, now)
      : await deps.db.withPlatform((t) => isRecentlyAuthenticated(t, sessionId, now)));
  if (!recent) throw new HttpProblem("reauthentication-required", "confirm your password to do this");
}

export interface SessionSummary {
  id: string;
  device: string | null;
  createdAt: Date;
  lastSeenAt: Date;
  expiresAt: Date;
}

/** The user's sessions that still work (not revoked, expired or idle), newest first. */
export async function listSessions(tx: Tx, userId: string, now: Date): Promise<SessionSummary[]> {
  const rows = await tx
    .selectFrom("sessions")
    .select(["id", "device", "created_at", "last_seen_at", "expires_at"])
    .where("user_id", "=", userId)
    .where("revoked_at", "is", null)
    .where("state", "=", "active")
    .where("expires_at", ">", now)
    .where("last_seen_at", ">", new Date(now.getTime() - SESSION_IDLE_TIMEOUT_MS))
    .orderBy("created_at", "desc")
    .orderBy("id", "desc")
    .execute();
  return rows.map((row) => ({
    id: row.id,
    device: row.device,
    createdAt: row.created_at,
    lastSeenAt: row.last_seen_at,
    expiresAt: row.expires_at,
  }));
}

/**
 * Ends every live session of a user at once, with no grace for tokens in flight (password reset, an admin
 * ending a member's sessions, sign out everywhere). `except` keeps one session (the caller's own, when the
 * user changes their password). Returns how many sessions ended.
 */
export async function revokeUserSessions(
  tx: Tx,
  userId: string,
  reason: string,
  now: Date,
  options: { except?: string } = {},
): Promise<number> {
  let query = tx
    .updateTable("sessions")
    .set({ revoked_at: now, revoke_reason: reason })
    .where("user_id", "=", userId)
    .where("revoked_at", "is", null);
  if (options.except) query = query.where("id", "!=", options.except);
  const result = await query.executeTakeFirst();
  return Number(result.numUpdatedRows);
}

/**
 * A change of the user's privileges (a role changed, a tenant suspended or reinstated): each of their
 * sessions gets a new token on its next request, so a token captured before the change stops working soon.
 */
export async function bumpPrivilegeEpoch(tx: Tx, userId: string): Promise<void> {
  await tx
    .updateTable("users")
    .set({ privilege_epoch: sql<number>`privilege_epoch + 1` })
    .where("id", "=", userId)
    .execute();
}
