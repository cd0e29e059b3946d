import type { FastifyReply, FastifyRequest } from "fastify";
import { z } from "zod";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem, type ProblemSlug, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute, type Principal, type RouteRequest } from "../../platform/http/routes.ts";
import type { RateKey, RateRule } from "../../platform/ratelimit/limiter.ts";
import type { IdentityAccessControl } from "./access.ts";
import { passwordResetAccount } from "./accounts.ts";
import { secondFactorAttempt, throttleSecondFactor } from "./code-factors.ts";
import { readCookie, sessionCookieName, setSessionCookie } from "./cookies.ts";
import { assertSameOrigin } from "./csrf.ts";
import type { IdentityDeps } from "./deps.ts";
import { presentedDeviceToken, setDeviceCookie } from "./devices.ts";
import { assertionResponse, requestOptions, toAssertionJSON } from "./passkey-schemas.ts";
import {
  type AssertionPurpose,
  assertionOptions,
  CHALLENGE_LIFETIME_MS,
  type ChallengeBinding,
  PasskeyFailure,
  type ProvenPasskey,
  recordPasskeyFailure,
  recordPasskeyUse,
  resetLinkBinding,
  verifyAssertion,
} from "./passkeys.ts";
import { endReplacedSession, factorProvenEvent } from "./session-events.ts";
import { SIGN_IN_PER_ADDRESS } from "./session-routes.ts";
import {
  completeSecondFactor,
  createSession,
  isSessionPrincipal,
  type ProvenFactor,
  RECENT_AUTHENTICATION_MS,
  reauthenticate,
  type SessionPrincipal,
} from "./sessions.ts";
import { countSuccessfulSignIn, rememberSignInDevice } from "./sign-in-alerts.ts";
import { type BackoffTarget, recordSuccess } from "./throttle.ts";
import { hashToken, isTokenShaped, newToken } from "./tokens.ts";

/**
 * The ceremonies that use a passkey (promise A2): signing in with it as the first factor (a discoverable
 * credential, before anyone is known), finishing a half-session with it as the second factor, stepping up
 * with it, and proving it for a password reset. Each is two requests: options (a challenge of ours, bound to
 * the session, or to a pre-authentication cookie for a sign-in, or to the reset link), then the
 * authenticator's assertion, which must answer that very challenge (the reset's is checked by
 * POST /api/v1/accounts/password-reset/complete, accounts.ts).
 * Every refusal is audited (auth.passkey-failed) and answered without its reason.
 */

const TAGS = ["sessions"];

/**
 * The pre-authentication cookie that binds a sign-in's challenge to the browser that asked for it (only its
 * SHA-256 is stored), so that an assertion for a challenge issued to another browser is refused. HttpOnly,
 * SameSite=Lax, 5 minutes; on https `__Host-` prefixed and Secure, like the session cookie (cookies.ts).
 */
export function preauthCookieName(publicUrl: URL): string {
  return publicUrl.protocol === "https:" ? "__Host-charter_preauth" : "charter_preauth";
}

function setPreauthCookie(reply: FastifyReply, publicUrl: URL, value: string, maxAgeSeconds: number): void {
  const secure = publicUrl.protocol === "https:" ? "; Secure" : "";
  reply.header(
    "set-cookie",
    `${preauthCookieName(publicUrl)}=${value}; Path=/; HttpOnly; SameSite=Lax${secure}; Max-Age=${maxAgeSeconds}`,
  );
}

/** Option requests per source address: each stores a challenge, so they are counted like sign-ins. */
export const PASSKEY_OPTIONS_PER_ADDRESS: RateRule = { name: "passkey-options", limit: 60, windowSeconds: 15 * 60 };

const sessionCreated = z.object({
  session: z.object({ id: z.uuid(), state: z.literal("active"), expiresAt: z.iso.datetime() }),
});
const reauthenticated = z.object({ recentAuthenticationUntil: z.iso.datetime() });
const assertionBody = z.object({ response: assertionResponse });

/** The factor a passkey proved, as the session records it: multi-factor only when user-verified with our handle. */
const passkeyFactor = (proven: ProvenPasskey): ProvenFactor => ({
  method: "passkey",
  userVerified: proven.userVerified,
});

/** The ceremonies that prove a passkey on the caller's own session: what each records, and how it refuses. */
const SESSION_CEREMONIES = {
  "second-factor": { action: "auth.second-factor", refusal: "second-factor-required" },
  reauthenticate: { action: "auth.reauthenticated", refusal: "reauthentication-required" },
} as const satisfies Record<string, { action: string; refusal: ProblemSlug }>;

function sessionOf(principal: Principal | null): SessionPrincipal {
  if (!isSessionPrincipal(principal)) throw new TypeError("a session route ran without a session principal");
  return principal;
}

export function passkeySessionRoutes(deps: IdentityDeps, access: IdentityAccessControl): AnyRoute[] {
  const { db, clock, audit, rateLimiter } = deps;
  const { publicUrl } = deps.config;
  const cookieName = sessionCookieName(publicUrl);
  const preauthName = preauthCookieName(publicUrl);
  const presentedToken = (request: FastifyRequest) => readCookie(request, cookieName);

  async function throttle(key: RateKey, rule: RateRule): Promise<void> {
    const decision = await rateLimiter.consume(key, rule, { exact: true });
    if (!decision.allowed) {
      throw new HttpProblem("rate-limited", "too many attempts; try again later", {
        headers: { "retry-after": String(decision.retryAfter) },
      });
    }
  }

  /**
   * Runs a ceremony's verification and what acts on it; a refusal is audited and answered with `problem`.
   * The challenge is already spent by then: the client starts over with new options.
   */
  async function attempt<T>(
    who: {
      purpose: AssertionPurpose;
      requestId: string;
      principal?: SessionPrincipal;
      /** A second factor's backoff counters: a refused passkey counts against them like a wrong code. */
      backoff?: readonly BackoffTarget[];
    },
    problem: () => HttpProblem,
    work: () => Promise<T>,
  ): Promise<T> {
    try {
      return await work();
    } catch (error) {
      if (!(error instanceof PasskeyFailure)) throw error;
      await recordPasskeyFailure(deps, {
        purpose: who.purpose,
        failure: error,
        requestId: who.requestId,
        ...(who.principal ? { userId: who.principal.userId, sessionId: who.principal.sessionId } : {}),
        ...(who.backoff ? { backoff: who.backoff } : {}),
      });
      throw problem();
    }
  }

  /**
   * Options for the user's own passkeys, bound to `binding`; 409 when they have none. `signedIn`: the user is
   * the caller (a session's ceremony), not just the account a reset link is for.
   */
  async function ownOptions(
    who: { userId: string; purpose: AssertionPurpose; binding: ChallengeBinding; signedIn: boolean },
    requestId: string,
  ) {
    const { userId, purpose, binding } = who;
    const options = await db.withPlatform(
      (tx) => assertionOptions(tx, deps, { userId, purpose, binding, now: clock.now() }),
      who.signedIn ? { actorId: userId, requestId } : { requestId },
    );
    if (!options) throw new HttpProblem("conflict", "this account has no passkey");
    return options;
  }
  const sessionBound = (principal: SessionPrincipal, purpose: AssertionPurpose) => ({
    userId: principal.userId,
    purpose,
    binding: { sessionId: principal.sessionId },
    signedIn: true,
  });

  const signInOptionsRoute = defineRoute({
    method: "POST",
    url: "/api/v1/sessions/passkey/options",
    operationId: "startPasskeySignIn",
    summary: "Start signing in with a passkey: options for navigator.credentials.get(), bound to this browser",
    tags: TAGS,
    permission: { kind: "public" },
    response: { 200: requestOptions, 403: problemSchema, 429: problemSchema },
    handler: async (request, reply) => {
      assertSameOrigin(request.raw, publicUrl, presentedToken(request.raw) !== undefined);
      await throttle({ kind: "address", address: request.raw.ip }, PASSKEY_OPTIONS_PER_ADDRESS);
      const preauth = newToken();
      const options = await db.withPlatform(
        (tx) =>
          assertionOptions(tx, deps, {
            purpose: "sign-in",
            userId: null,
            binding: { bindingHash: hashToken(preauth) },
            now: clock.now(),
          }),
        { requestId: request.requestId },
      );
      setPreauthCookie(reply, publicUrl, preauth, CHALLENGE_LIFETIME_MS / 1000);
      return options;
    },
  });

  const signInRoute = defineRoute({
    method: "POST",
    url: "/api/v1/sessions/passkey",
    operationId: "signInWithPasskey",
    summary: "Sign in with a passkey (starts a new session and sets its cookie)",
    tags: TAGS,
    permission: { kind: "public" },
    body: assertionBody,
    response: { 200: sessionCreated, 400: problemSchema, 401: problemSchema, 403: problemSchema, 429: problemSchema },
    handler: async (request, reply) => {
      const raw = request.raw;
      const previous = presentedToken(raw);
      // Login CSRF: another site must not sign the browser into an account of its choosing.
      assertSameOrigin(raw, publicUrl, previous !== undefined);
      await throttle({ kind: "address", address: raw.ip }, SIGN_IN_PER_ADDRESS);
      const preauth = readCookie(raw, preauthName);
      // The challenge is spent either way; so is the cookie that held it.
      setPreauthCookie(reply, publicUrl, "", 0);
      const refused = () => new HttpProblem("unauthenticated", "the passkey was not accepted; try again");
      const now = clock.now();
      const session = await attempt({ purpose: "sign-in", requestId: request.requestId }, refused, async () => {
        if (!isTokenShaped(preauth)) throw new PasskeyFailure("challenge");
        const proven = await verifyAssertion(deps, {
          purpose: "sign-in",
          binding: { bindingHash: hashToken(preauth) },
          userId: null,
          response: toAssertionJSON(request.body.response),
          now,
        });
        const userId = proven.userId;
        return db.withPlatform(
          async (tx) => {
            await recordPasskeyUse(tx, proven, now);
            // A new session on every sign-in: whatever session the browser held before ends now.
            await endReplacedSession(tx, audit, {
              previousToken: previous,
              userId,
              now,
              requestId: request.requestId,
            });
            const created = await createSession(tx, {
              userId,
              factor: passkeyFactor(proven),
              now,
              userAgent: raw.headers["user-agent"],
            });
            await audit.record(tx, {
              tenantId: null,
              stream: "security",
              actor: { kind: "user", id: userId },
              action: "auth.signed-in",
              target: { type: "session", id: created.id },
              subjects: [userId],
              details: { method: "passkey", userVerified: proven.userVerified },
              requestId: request.requestId,
            });
            await countSuccessfulSignIn(deps, tx, userId, request.requestId);
            const device = await rememberSignInDevice(deps, tx, presentedDeviceToken(raw, publicUrl), {
              userId,
              method: "passkey",
              requestId: request.requestId,
            });
            return { ...created, device };
          },
          { actorId: userId, requestId: request.requestId },
        );
      });
      setSessionCookie(reply, publicUrl, session.token, session.expiresAt, now);
      setDeviceCookie(reply, publicUrl, session.device.token);
      return { session: { id: session.id, state: "active", expiresAt: session.expiresAt.toISOString() } } as const;
    },
  });

  /** The half-session of the request, whose second factor is due; 401 without one. */
  async function halfSession(request: FastifyRequest, reply: FastifyReply) {
    const principal = await access.sessionPrincipal(request, reply, ["pending-second-factor"]);
    const token = presentedToken(request);
    if (!principal || token === undefined) throw new HttpProblem("unauthenticated", "sign in with your password first");
    return { principal, token };
  }

  /**
   * A passkey proven on the caller's own session, as the second factor of a half-session or a step-up: counted
   * like a typed code, checked against the session's challenge, then in one transaction the passkey's use and
   * the proven factor are recorded and `operate` acts on the session with that factor. Whatever `operate`
   * throws (the session no longer allows it) rolls the passkey's counter back with the rest.
   */
  async function proveOnSession<T>(
    request: Pick<RouteRequest<undefined, undefined, typeof assertionBody>, "raw" | "requestId" | "body">,
    principal: SessionPrincipal,
    now: Date,
    purpose: keyof typeof SESSION_CEREMONIES,
    operate: (tx: Tx, factor: ProvenFactor) => Promise<T>,
  ): Promise<T> {
    const { action, refusal } = SESSION_CEREMONIES[purpose];
    const { requestId } = request;
    const backoff = await throttleSecondFactor(deps, await secondFactorAttempt(deps, request.raw, principal.userId));
    const refused = () => new HttpProblem(refusal, "the passkey was not accepted; try again");
    return attempt({ purpose, requestId, principal, backoff }, refused, async () => {
      const proven = await verifyAssertion(deps, {
        purpose,
        binding: { sessionId: principal.sessionId },
        userId: principal.userId,
        response: toAssertionJSON(request.body.response),
        now,
      });
      return db.withPlatform(
        async (tx) => {
          await recordPasskeyUse(tx, proven, now);
          await recordSuccess(tx, deps, backoff);
          const details = { method: "passkey", userVerified: proven.userVerified };
          await audit.record(tx, factorProvenEvent(action, principal, details, requestId));
          return operate(tx, passkeyFactor(proven));
        },
        { actorId: principal.userId, requestId },
      );
    });
  }

  const secondFactorOptionsRoute = defineRoute({
    method: "POST",
    url: "/api/v1/sessions/current/second-factor/passkey/options",
    operationId: "startPasskeySecondFactor",
    summary: "Start finishing a sign-in with a passkey: options for navigator.credentials.get()",
    tags: TAGS,
    // A half-session is no principal of any other route: this one finds it itself.
    permission: { kind: "public" },
    response: { 200: requestOptions, 401: problemSchema, 403: problemSchema, 409: problemSchema },
    handler: async (request, reply) => {
      const { principal } = await halfSession(request.raw, reply);
      return ownOptions(sessionBound(principal, "second-factor"), request.requestId);
    },
  });

  const secondFactorRoute = defineRoute({
    method: "POST",
    url: "/api/v1/sessions/current/second-factor/passkey",
    operationId: "completeSecondFactorWithPasskey",
    summary: "Finish signing in with a passkey as the second factor",
    tags: TAGS,
    permission: { kind: "public" },
    body: assertionBody,
    response: { 200: sessionCreated, 400: problemSchema, 401: problemSchema, 403: problemSchema, 429: problemSchema },
    handler: async (request, reply) => {
      const { principal, token } = await halfSession(request.raw, reply);
      const now = clock.now();
      const completed = await proveOnSession(request, principal, now, "second-factor", async (tx, factor) => {
        const done = await completeSecondFactor(tx, principal.sessionId, token, factor, now);
        // Rolls the counter back: the half-session ended, or a concurrent completion won.
        if (!done) throw new HttpProblem("unauthenticated", "this sign-in is no longer pending; sign in again");
        const device = await rememberSignInDevice(deps, tx, presentedDeviceToken(request.raw, publicUrl), {
          userId: principal.userId,
          method: "passkey",
          requestId: request.requestId,
        });
        return { ...done, device };
      });
      setSessionCookie(reply, publicUrl, completed.token, completed.expiresAt, now);
      setDeviceCookie(reply, publicUrl, completed.device.token);
      return {
        session: { id: principal.sessionId, state: "active", expiresAt: completed.expiresAt.toISOString() },
      } as const;
    },
  });

  const stepUpOptionsRoute = defineRoute({
    method: "POST",
    url: "/api/v1/sessions/current/reauthenticate/passkey/options",
    operationId: "startPasskeyReauthentication",
    summary: "Start confirming it is you with a passkey: options for navigator.credentials.get()",
    tags: TAGS,
    permission: { kind: "authenticated" },
    response: { 200: requestOptions, 401: problemSchema, 403: problemSchema, 409: problemSchema },
    handler: async (request) =>
      ownOptions(sessionBound(sessionOf(request.principal), "reauthenticate"), request.requestId),
  });

  const stepUpRoute = defineRoute({
    method: "POST",
    url: "/api/v1/sessions/current/reauthenticate/passkey",
    operationId: "reauthenticateWithPasskey",
    summary: "Confirm it is you with a passkey (step-up): issues a new session token",
    tags: TAGS,
    permission: { kind: "authenticated" },
    body: assertionBody,
    response: { 200: reauthenticated, 400: problemSchema, 401: problemSchema, 403: problemSchema, 429: problemSchema },
    handler: async (request, reply) => {
      const principal = sessionOf(request.principal);
      const token = presentedToken(request.raw);
      const replaced = () =>
        new HttpProblem("reauthentication-required", "this session token was replaced; use the current one");
      if (principal.viaReplacedToken || token === undefined) throw replaced();
      const now = clock.now();
      const rotated = await proveOnSession(request, principal, now, "reauthenticate", async (tx, factor) => {
        const next = await reauthenticate(tx, principal.sessionId, token, factor, now);
        if (!next) throw replaced();
        return next;
      });
      setSessionCookie(reply, publicUrl, rotated.token, rotated.expiresAt, now);
      return { recentAuthenticationUntil: new Date(now.getTime() + RECENT_AUTHENTICATION_MS).toISOString() };
    },
  });

  const resetOptionsRoute = defineRoute({
    method: "POST",
    url: "/api/v1/accounts/password-reset/passkey-options",
    operationId: "startPasskeyPasswordReset",
    summary: "Options for proving a passkey while resetting the password, bound to the reset link",
    tags: ["accounts"],
    permission: { kind: "public" },
    body: z.object({ token: z.string().max(512) }),
    response: { 200: requestOptions, 400: problemSchema, 403: problemSchema, 409: problemSchema, 429: problemSchema },
    handler: async (request) => {
      assertSameOrigin(request.raw, publicUrl, presentedToken(request.raw) !== undefined);
      await throttle({ kind: "address", address: request.raw.ip }, PASSKEY_OPTIONS_PER_ADDRESS);
      const { token } = request.body;
      // Only the holder of a live link gets options (and with them the account's credential ids).
      const userId = await passwordResetAccount(deps, token);
      const binding = resetLinkBinding(token);
      return ownOptions({ userId, purpose: "password-reset", binding, signedIn: false }, request.requestId);
    },
  });

  return [
    signInOptionsRoute,
    signInRoute,
    secondFactorOptionsRoute,
    secondFactorRoute,
    stepUpOptionsRoute,
    stepUpRoute,
    resetOptionsRoute,
  ];
}
