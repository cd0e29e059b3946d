import type { FastifyRequest } from "fastify";
import { z } from "zod";
import { blindIndex, NormalisationError, normaliseEmail } from "../../platform/crypto/blind-index.ts";
import { HttpProblem, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute, type Principal } from "../../platform/http/routes.ts";
import type { RateKey, RateRule } from "../../platform/ratelimit/limiter.ts";
import { clearSessionCookie, readCookie, sessionCookieName, setSessionCookie } from "./cookies.ts";
import { assertSameOrigin } from "./csrf.ts";
import type { IdentityDeps } from "./deps.ts";
import { presentedDeviceToken, presentedKnownDevice, setDeviceCookie } from "./devices.ts";
import { MAX_PASSWORD_LENGTH } from "./passwords.ts";
import { hasSecondFactor } from "./second-factors.ts";
import { endReplacedSession, factorProvenEvent } from "./session-events.ts";
import {
  createSession,
  isSessionPrincipal,
  listSessions,
  RECENT_AUTHENTICATION_MS,
  reauthenticate,
  recentAuthenticationUntil,
  revokeSession,
  revokeUserSessions,
  type SessionPrincipal,
} from "./sessions.ts";
import { countFailedSignIn, countSuccessfulSignIn, rememberSignInDevice } from "./sign-in-alerts.ts";
import { backoffTargets, checkBackoff, recordFailure, recordSuccess } from "./throttle.ts";

/**
 * Sign-in, sign-out and the user's own sessions (promise A5). Sign-in answers alike for a wrong password and
 * an unknown address (same status, body, Argon2id work and throttling), and always starts a new session.
 */

/** Attempts per source address: enough for a shared office, far too few for guessing. */
export const SIGN_IN_PER_ADDRESS: RateRule = { name: "sign-in", limit: 30, windowSeconds: 15 * 60 };
/** Attempts per account (existing or not: the key is the address's blind index). */
export const SIGN_IN_PER_ACCOUNT: RateRule = { name: "sign-in", limit: 10, windowSeconds: 15 * 60 };
/** Attempts per known device of the account (a browser that signed in to it before), in place of the above. */
export const SIGN_IN_PER_DEVICE: RateRule = { name: "sign-in-device", limit: 10, windowSeconds: 15 * 60 };
/** Password confirmations per user (step-up). */
export const REAUTHENTICATE_PER_ACCOUNT: RateRule = { name: "reauthenticate", limit: 10, windowSeconds: 15 * 60 };
/** Unverified sign-ups may share an address; a password is tried against at most this many of them. */
const MAX_UNVERIFIED_CANDIDATES = 3;

const WRONG_CREDENTIALS = "the email address or the password is wrong";

const signInBody = z.object({
  email: z.string().min(3).max(254),
  password: z
    .string()
    .min(1)
    .max(MAX_PASSWORD_LENGTH * 4),
});

const sessionCreated = z
  .object({
    session: z.object({
      id: z.uuid(),
      state: z.enum(["active", "pending-second-factor"]),
      expiresAt: z.iso.datetime(),
    }),
  })
  .meta({ id: "SessionCreated" });

const factorSchema = z.object({ method: z.string(), at: z.iso.datetime() });

const currentSession = z
  .object({
    user: z.object({ id: z.uuid(), displayName: z.string() }),
    operator: z.boolean(),
    session: z.object({
      id: z.uuid(),
      state: z.enum(["active", "pending-second-factor"]),
      createdAt: z.iso.datetime(),
      expiresAt: z.iso.datetime(),
      factors: z.array(factorSchema),
      recentAuthenticationUntil: z.iso.datetime().nullable(),
    }),
  })
  .meta({ id: "CurrentSession" });

const sessionList = z
  .object({
    items: z.array(
      z.object({
        id: z.uuid(),
        device: z.string().nullable(),
        createdAt: z.iso.datetime(),
        lastSeenAt: z.iso.datetime(),
        expiresAt: z.iso.datetime(),
        current: z.boolean(),
      }),
    ),
  })
  .meta({ id: "SessionList" });

const reauthenticated = z.object({ recentAuthenticationUntil: z.iso.datetime() }).meta({ id: "Reauthenticated" });

function sessionOf(principal: Principal | null): SessionPrincipal {
  if (!isSessionPrincipal(principal)) throw new TypeError("a session route ran without a session principal");
  return principal;
}

export function sessionRoutes(deps: IdentityDeps): AnyRoute[] {
  const { db, clock, audit, passwords, rateLimiter, keyRing } = deps;
  const { publicUrl } = deps.config;
  const cookieName = sessionCookieName(publicUrl);
  const presentedToken = (request: FastifyRequest) => readCookie(request, cookieName);

  async function throttle(key: RateKey, rule: RateRule): Promise<void> {
    const decision = await rateLimiter.consume(key, rule, { exact: true });
    if (!decision.allowed) {
      throw new HttpProblem("rate-limited", "too many attempts; try again later", {
        headers: { "retry-after": String(decision.retryAfter) },
      });
    }
  }

  /** The accounts a sign-in tries: the verified one, else the newest unverified sign-ups for the address. */
  async function candidates(emailIndex: Buffer) {
    const rows = await db.withPlatform((tx) =>
      tx
        .selectFrom("users")
        .select(["id", "password_hash", "email_verified_at"])
        .where("email_index", "=", emailIndex)
        .orderBy("created_at", "desc")
        .orderBy("id", "desc")
        .execute(),
    );
    const verified = rows.find((row) => row.email_verified_at !== null);
    return verified ? [verified] : rows.slice(0, MAX_UNVERIFIED_CANDIDATES);
  }

  const signInRoute = defineRoute({
    method: "POST",
    url: "/api/v1/sessions",
    operationId: "signIn",
    summary: "Sign in with email and password (starts a new session and sets its cookie)",
    tags: ["sessions"],
    permission: { kind: "public" },
    body: signInBody,
    response: { 200: sessionCreated, 400: problemSchema, 401: problemSchema, 403: problemSchema, 429: problemSchema },
    handler: async (request, reply) => {
      const raw = request.raw;
      const previous = presentedToken(raw);
      // Login CSRF: another site must not sign the browser into an account of its choosing.
      assertSameOrigin(raw, publicUrl, previous !== undefined);
      let email: string;
      try {
        email = normaliseEmail(request.body.email);
      } catch (error) {
        if (error instanceof NormalisationError) throw new HttpProblem("validation", error.message);
        throw error;
      }
      const emailIndex = blindIndex(keyRing.blindIndexKey("platform"), "email", email);
      const accountKey = emailIndex.toString("hex");
      await throttle({ kind: "address", address: raw.ip }, SIGN_IN_PER_ADDRESS);
      const accounts = await candidates(emailIndex);
      // A browser that signed in to the account before counts on limits of its own, so that failures of
      // others at the account (an attacker's) never lock its owner out (A6).
      const device = await presentedKnownDevice(
        deps,
        raw,
        accounts.map((account) => account.id),
      );
      const backoff = backoffTargets("sign-in", raw.ip, { key: accountKey, deviceId: device?.id });
      await checkBackoff(deps, backoff);
      if (device) await throttle({ kind: "token", id: device.id }, SIGN_IN_PER_DEVICE);
      else await throttle({ kind: "account", id: accountKey }, SIGN_IN_PER_ACCOUNT);

      const { password } = request.body;
      let userId: string | undefined;
      const withPassword = accounts.filter((account) => account.password_hash !== null);
      if (withPassword.length === 0) await passwords.verifyNothing(password);
      for (const account of withPassword) {
        if (await passwords.verify(account.password_hash as string, password)) {
          userId = account.id;
          break;
        }
      }
      if (userId === undefined) {
        const target = accounts[0]?.id ?? null;
        const actor = { kind: "anonymous", id: null } as const;
        await db.withPlatform(async (tx) => {
          await audit.record(tx, {
            tenantId: null,
            stream: "security",
            actor,
            action: "auth.sign-in-failed",
            target: { type: "user", id: target },
            subjects: target ? [target] : [],
            details: { reason: target ? "wrong-password" : "unknown-account" },
            requestId: request.requestId,
          });
          await recordFailure(tx, deps, backoff, { requestId: request.requestId, actor, userId: target });
          if (target) await countFailedSignIn(deps, tx, target, request.requestId);
        });
        throw new HttpProblem("unauthenticated", WRONG_CREDENTIALS);
      }

      const signedIn = userId;
      const now = clock.now();
      const { session, knownDevice } = await db.withPlatform(
        async (tx) => {
          await recordSuccess(tx, deps, backoff);
          await countSuccessfulSignIn(deps, tx, signedIn, request.requestId);
          // A new session on every sign-in: whatever session the browser held before ends now.
          await endReplacedSession(tx, audit, {
            previousToken: previous,
            userId: signedIn,
            now,
            requestId: request.requestId,
          });
          // An enrolled second factor leaves the password's session half-open until it is proven (A2).
          const created = await createSession(tx, {
            userId: signedIn,
            factor: { method: "password" },
            now,
            userAgent: raw.headers["user-agent"],
            state: (await hasSecondFactor(tx, signedIn)) ? "pending-second-factor" : "active",
          });
          await audit.record(tx, {
            tenantId: null,
            stream: "security",
            actor: { kind: "user", id: signedIn },
            action: "auth.signed-in",
            target: { type: "session", id: created.id },
            subjects: [signedIn],
            details: { method: "password" },
            requestId: request.requestId,
          });
          // The browser becomes a known device once the sign-in is complete, not on a half-session.
          const remembered =
            created.state === "active"
              ? await rememberSignInDevice(deps, tx, presentedDeviceToken(raw, publicUrl), {
                  userId: signedIn,
                  method: "password",
                  requestId: request.requestId,
                })
              : undefined;
          return { session: created, knownDevice: remembered };
        },
        { actorId: signedIn, requestId: request.requestId },
      );
      setSessionCookie(reply, publicUrl, session.token, session.expiresAt, now);
      if (knownDevice) setDeviceCookie(reply, publicUrl, knownDevice.token);
      return { session: { id: session.id, state: session.state, expiresAt: session.expiresAt.toISOString() } };
    },
  });

  const currentRoute = defineRoute({
    method: "GET",
    url: "/api/v1/sessions/current",
    operationId: "getCurrentSession",
    summary: "Who am I: the signed-in user, the session's state and how and when they authenticated",
    tags: ["sessions"],
    permission: { kind: "authenticated" },
    response: { 200: currentSession, 401: problemSchema },
    handler: async (request) => {
      const principal = sessionOf(request.principal);
      const row = await db.withPlatform((tx) =>
        tx
          .selectFrom("sessions as s")
          .innerJoin("users as u", "u.id", "s.user_id")
          .select(["s.id", "s.state", "s.factors", "s.created_at", "s.expires_at", "u.id as user_id", "u.display_name"])
          .where("s.id", "=", principal.sessionId)
          .executeTakeFirstOrThrow(),
      );
      const until = principal.viaReplacedToken ? null : recentAuthenticationUntil(row.factors, clock.now());
      return {
        user: { id: row.user_id, displayName: row.display_name },
        operator: principal.kind === "operator",
        session: {
          id: row.id,
          state: row.state,
          createdAt: row.created_at.toISOString(),
          expiresAt: row.expires_at.toISOString(),
          factors: row.factors.map((factor) => ({ method: factor.method, at: new Date(factor.at).toISOString() })),
          recentAuthenticationUntil: until?.toISOString() ?? null,
        },
      };
    },
  });

  const signOutRoute = defineRoute({
    method: "DELETE",
    url: "/api/v1/sessions/current",
    operationId: "signOut",
    summary: "Sign out: end the current session",
    tags: ["sessions"],
    permission: { kind: "authenticated" },
    response: { 204: z.null(), 401: problemSchema, 403: problemSchema },
    handler: async (request, reply) => {
      const principal = sessionOf(request.principal);
      const now = clock.now();
      await db.withPlatform(
        async (tx) => {
          await revokeSession(tx, principal.sessionId, "signed-out", now);
          await audit.record(tx, {
            tenantId: null,
            stream: "security",
            actor: { kind: "user", id: principal.userId },
            action: "auth.signed-out",
            target: { type: "session", id: principal.sessionId },
            subjects: [principal.userId],
            requestId: request.requestId,
          });
        },
        { actorId: principal.userId, requestId: request.requestId },
      );
      clearSessionCookie(reply, publicUrl);
      return reply.code(204).send();
    },
  });

  const listRoute = defineRoute({
    method: "GET",
    url: "/api/v1/sessions",
    operationId: "listSessions",
    summary: "List your own sessions that are still open",
    tags: ["sessions"],
    permission: { kind: "authenticated" },
    response: { 200: sessionList, 401: problemSchema },
    handler: async (request) => {
      const principal = sessionOf(request.principal);
      const sessions = await db.withPlatform((tx) => listSessions(tx, principal.userId, clock.now()));
      return {
        items: sessions.map((session) => ({
          id: session.id,
          device: session.device,
          createdAt: session.createdAt.toISOString(),
          lastSeenAt: session.lastSeenAt.toISOString(),
          expiresAt: session.expiresAt.toISOString(),
          current: session.id === principal.sessionId,
        })),
      };
    },
  });

  const revokeRoute = defineRoute({
    method: "DELETE",
    url: "/api/v1/sessions/:sessionId",
    operationId: "revokeSession",
    summary: "End one of your own sessions",
    tags: ["sessions"],
    permission: { kind: "authenticated" },
    params: z.object({ sessionId: z.uuid() }),
    response: { 204: z.null(), 401: problemSchema, 403: problemSchema, 404: problemSchema },
    handler: async (request, reply) => {
      const principal = sessionOf(request.principal);
      const { sessionId } = request.params;
      const now = clock.now();
      // Another user's session is answered exactly as one that does not exist.
      const revoked = await db.withPlatform(
        async (tx) => {
          if (!(await revokeSession(tx, sessionId, "revoked-by-user", now, { userId: principal.userId }))) return false;
          await audit.record(tx, {
            tenantId: null,
            stream: "security",
            actor: { kind: "user", id: principal.userId },
            action: "auth.session-revoked",
            target: { type: "session", id: sessionId },
            subjects: [principal.userId],
            details: { reason: "revoked-by-user" },
            requestId: request.requestId,
          });
          return true;
        },
        { actorId: principal.userId, requestId: request.requestId },
      );
      if (!revoked) throw new HttpProblem("not-found", "no such session");
      if (sessionId === principal.sessionId) clearSessionCookie(reply, publicUrl);
      return reply.code(204).send();
    },
  });

  const revokeAllRoute = defineRoute({
    method: "POST",
    url: "/api/v1/sessions/revoke-all",
    operationId: "revokeAllSessions",
    summary: "Sign out everywhere: end every session of yours, this one included",
    tags: ["sessions"],
    permission: { kind: "authenticated" },
    response: { 200: z.object({ revoked: z.number().int() }), 401: problemSchema, 403: problemSchema },
    handler: async (request, reply) => {
      const principal = sessionOf(request.principal);
      const now = clock.now();
      const revoked = await db.withPlatform(
        async (tx) => {
          const count = await revokeUserSessions(tx, principal.userId, "signed-out-everywhere", now);
          await audit.record(tx, {
            tenantId: null,
            stream: "security",
            actor: { kind: "user", id: principal.userId },
            action: "auth.sessions-revoked",
            target: { type: "user", id: principal.userId },
            subjects: [principal.userId],
            details: { reason: "signed-out-everywhere", count },
            requestId: request.requestId,
          });
          return count;
        },
        { actorId: principal.userId, requestId: request.requestId },
      );
      clearSessionCookie(reply, publicUrl);
      return { revoked };
    },
  });

  const reauthenticateRoute = defineRoute({
    method: "POST",
    url: "/api/v1/sessions/current/reauthenticate",
    operationId: "reauthenticate",
    summary: "Confirm your password (step-up): counts as recent authentication and issues a new session token",
    tags: ["sessions"],
    permission: { kind: "authenticated" },
    body: z.object({
      password: z
        .string()
        .min(1)
        .max(MAX_PASSWORD_LENGTH * 4),
    }),
    response: { 200: reauthenticated, 401: problemSchema, 403: problemSchema, 429: problemSchema },
    handler: async (request, reply) => {
      const principal = sessionOf(request.principal);
      const token = presentedToken(request.raw);
      if (principal.viaReplacedToken || token === undefined) {
        throw new HttpProblem("reauthentication-required", "this session token was replaced; use the current one");
      }
      await throttle({ kind: "account", id: principal.userId }, REAUTHENTICATE_PER_ACCOUNT);
      const user = await db.withPlatform((tx) =>
        tx.selectFrom("users").select("password_hash").where("id", "=", principal.userId).executeTakeFirstOrThrow(),
      );
      let ok = false;
      if (user.password_hash === null) await passwords.verifyNothing(request.body.password);
      else ok = await passwords.verify(user.password_hash, request.body.password);
      const now = clock.now();
      if (!ok) {
        await db.withPlatform((tx) =>
          audit.record(tx, {
            tenantId: null,
            stream: "security",
            actor: { kind: "user", id: principal.userId },
            action: "auth.reauthentication-failed",
            target: { type: "session", id: principal.sessionId },
            subjects: [principal.userId],
            requestId: request.requestId,
          }),
        );
        throw new HttpProblem("reauthentication-required", "the password is wrong");
      }
      const rotated = await db.withPlatform(
        async (tx) => {
          const next = await reauthenticate(tx, principal.sessionId, token, { method: "password" }, now);
          if (next === undefined) return undefined;
          await audit.record(
            tx,
            factorProvenEvent("auth.reauthenticated", principal, { method: "password" }, request.requestId),
          );
          return next;
        },
        { actorId: principal.userId, requestId: request.requestId },
      );
      if (rotated === undefined) {
        throw new HttpProblem("reauthentication-required", "this session token was replaced; use the current one");
      }
      setSessionCookie(reply, publicUrl, rotated.token, rotated.expiresAt, now);
      return { recentAuthenticationUntil: new Date(now.getTime() + RECENT_AUTHENTICATION_MS).toISOString() };
    },
  });

  return [signInRoute, currentRoute, signOutRoute, listRoute, revokeRoute, revokeAllRoute, reauthenticateRoute];
}
