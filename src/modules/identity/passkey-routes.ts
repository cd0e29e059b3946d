import { z } from "zod";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute, type Principal } from "../../platform/http/routes.ts";
import type { RateRule } from "../../platform/ratelimit/limiter.ts";
import type { IdentityAccessControl } from "./access.ts";
import { raiseAlert } from "./alerts.ts";
import type { IdentityDeps } from "./deps.ts";
import { removeSecondFactor } from "./factor-removal.ts";
import {
  creationOptions,
  passkeyName,
  passkeySummary,
  registrationResponse,
  toRegistrationJSON,
} from "./passkey-schemas.ts";
import { passkeySessionRoutes } from "./passkey-session-routes.ts";
import {
  findPasskey,
  listPasskeys,
  PasskeyFailure,
  type PasskeySummary,
  recordPasskeyFailure,
  registrationOptions,
  removePasskey,
  renamePasskey,
  savePasskey,
  verifyRegistration,
} from "./passkeys.ts";
import { isSessionPrincipal, requireRecentAuthentication, type SessionPrincipal } from "./sessions.ts";

/**
 * The user's own passkeys (promise A2): registration (options, then the authenticator's response), list,
 * rename, remove. Registering and removing change how the account can be entered, so both need recent
 * authentication with a factor the user already has; registration refuses a credential id already known.
 * The ceremonies that use a passkey (sign-in, second factor, step-up) are in passkey-session-routes.ts.
 */

const AUTHENTICATED = { kind: "authenticated" } as const;
const TAGS = ["passkeys"];

/** Registration ceremonies per user: enough for a few devices and retries, not for filling the table. */
export const PASSKEY_REGISTRATION_PER_ACCOUNT: RateRule = {
  name: "passkey-registration",
  limit: 20,
  windowSeconds: 60 * 60,
};

const passkeyParams = z.object({ passkeyId: z.uuid() });
const passkeyList = z.object({ items: z.array(passkeySummary) }).meta({ id: "PasskeyList" });

function sessionOf(principal: Principal | null): SessionPrincipal {
  if (!isSessionPrincipal(principal)) throw new HttpProblem("forbidden", "only a signed-in person has passkeys");
  return principal;
}

/** Every passkey route: the own passkeys here, and the ceremonies that use one. */
export function passkeyRoutes(deps: IdentityDeps, access: IdentityAccessControl): AnyRoute[] {
  return [...ownPasskeyRoutes(deps), ...passkeySessionRoutes(deps, access)];
}

/**
 * Refuses to remove the passkey an account without a password signs in with: the user would lock themselves
 * out (a factor reset from the command line would be their only way back).
 */
async function assertNotLastWayIn(tx: Tx, userId: string, passkeyId: string): Promise<void> {
  const user = await tx.selectFrom("users").select("password_hash").where("id", "=", userId).executeTakeFirstOrThrow();
  if (user.password_hash !== null) return;
  const others = await tx
    .selectFrom("passkeys")
    .select("id")
    .where("user_id", "=", userId)
    .where("id", "!=", passkeyId)
    .limit(1)
    .execute();
  if (others.length === 0) {
    throw new HttpProblem("conflict", "this passkey is your only way to sign in: set a password or add another first");
  }
}

function ownPasskeyRoutes(deps: IdentityDeps): AnyRoute[] {
  const { db, clock, audit, rateLimiter } = deps;

  /** An event about one of the user's passkeys, on their platform chain (security stream). */
  const passkeyEvent = (
    principal: SessionPrincipal,
    action: "auth.passkey-registered" | "auth.passkey-renamed" | "auth.passkey-removed",
    passkeyId: string,
    requestId: string,
  ) => ({
    tenantId: null,
    stream: "security" as const,
    actor: { kind: "user" as const, id: principal.userId },
    action,
    target: { type: "passkey", id: passkeyId },
    subjects: [principal.userId],
    requestId,
  });

  const listRoute = defineRoute({
    method: "GET",
    url: "/api/v1/me/passkeys",
    operationId: "listPasskeys",
    summary: "List your passkeys",
    tags: TAGS,
    permission: AUTHENTICATED,
    response: { 200: passkeyList, 401: problemSchema },
    handler: async (request) => {
      const principal = sessionOf(request.principal);
      return { items: await db.withPlatform((tx) => listPasskeys(tx, principal.userId)) };
    },
  });

  const optionsRoute = defineRoute({
    method: "POST",
    url: "/api/v1/me/passkeys/registration-options",
    operationId: "startPasskeyRegistration",
    summary: "Start registering a passkey: options for navigator.credentials.create() (needs recent authentication)",
    tags: TAGS,
    permission: AUTHENTICATED,
    response: { 200: creationOptions, 401: problemSchema, 403: problemSchema, 429: problemSchema },
    handler: async (request) => {
      const principal = sessionOf(request.principal);
      await requireRecentAuthentication(deps, principal);
      const decision = await rateLimiter.consume(
        { kind: "account", id: principal.userId },
        PASSKEY_REGISTRATION_PER_ACCOUNT,
        { exact: true },
      );
      if (!decision.allowed) {
        throw new HttpProblem("rate-limited", "too many passkey registrations; try again later", {
          headers: { "retry-after": String(decision.retryAfter) },
        });
      }
      // A ceremony's state, not a change of the account: its outcome (registered or refused) is what is audited.
      return db.withPlatform(
        (tx) =>
          registrationOptions(tx, deps, {
            userId: principal.userId,
            sessionId: principal.sessionId,
            now: clock.now(),
          }),
        { actorId: principal.userId, requestId: request.requestId },
      );
    },
  });

  const registerRoute = defineRoute({
    method: "POST",
    url: "/api/v1/me/passkeys",
    operationId: "registerPasskey",
    summary: "Finish registering a passkey with the authenticator's response (needs recent authentication)",
    tags: TAGS,
    permission: AUTHENTICATED,
    body: z.object({ name: passkeyName.default("Passkey"), response: registrationResponse }),
    response: { 201: passkeySummary, 400: problemSchema, 401: problemSchema, 403: problemSchema, 409: problemSchema },
    handler: async (request, reply) => {
      const principal = sessionOf(request.principal);
      await requireRecentAuthentication(deps, principal);
      const now = clock.now();
      let created: PasskeySummary;
      try {
        const credential = await verifyRegistration(deps, {
          userId: principal.userId,
          sessionId: principal.sessionId,
          response: toRegistrationJSON(request.body.response),
          now,
        });
        created = await db.withPlatform(
          async (tx) => {
            const passkeyId = await savePasskey(tx, {
              userId: principal.userId,
              name: request.body.name,
              credential,
              now,
            });
            await audit.record(tx, passkeyEvent(principal, "auth.passkey-registered", passkeyId, request.requestId));
            await raiseAlert(deps, tx, {
              kind: "factor-added",
              userId: principal.userId,
              details: { factor: "passkey" },
              requestId: request.requestId,
            });
            return (await findPasskey(tx, principal.userId, passkeyId)) as PasskeySummary;
          },
          { actorId: principal.userId, requestId: request.requestId },
        );
      } catch (error) {
        if (!(error instanceof PasskeyFailure)) throw error;
        await recordPasskeyFailure(deps, {
          purpose: "register",
          failure: error,
          userId: principal.userId,
          sessionId: principal.sessionId,
          requestId: request.requestId,
        });
        if (error.reason === "known-credential")
          throw new HttpProblem("conflict", "this passkey is already registered");
        throw new HttpProblem("bad-request", "the passkey could not be verified; start the registration again");
      }
      return reply.code(201).send(created);
    },
  });

  const renameRoute = defineRoute({
    method: "PATCH",
    url: "/api/v1/me/passkeys/:passkeyId",
    operationId: "renamePasskey",
    summary: "Rename one of your passkeys",
    tags: TAGS,
    permission: AUTHENTICATED,
    params: passkeyParams,
    body: z.object({ name: passkeyName }),
    response: { 200: passkeySummary, 400: problemSchema, 401: problemSchema, 404: problemSchema },
    handler: async (request) => {
      const principal = sessionOf(request.principal);
      const { passkeyId } = request.params;
      const renamed = await db.withPlatform(
        async (tx) => {
          const passkey = await renamePasskey(tx, { userId: principal.userId, passkeyId, name: request.body.name });
          if (passkey)
            await audit.record(tx, passkeyEvent(principal, "auth.passkey-renamed", passkeyId, request.requestId));
          return passkey;
        },
        { actorId: principal.userId, requestId: request.requestId },
      );
      // Another user's passkey is answered exactly as one that does not exist.
      if (!renamed) throw new HttpProblem("not-found", "no such passkey");
      return renamed;
    },
  });

  const removeRoute = defineRoute({
    method: "DELETE",
    url: "/api/v1/me/passkeys/:passkeyId",
    operationId: "removePasskey",
    summary: "Remove one of your passkeys (needs recent authentication)",
    tags: TAGS,
    permission: AUTHENTICATED,
    params: passkeyParams,
    response: { 204: z.null(), 401: problemSchema, 403: problemSchema, 404: problemSchema, 409: problemSchema },
    handler: async (request, reply) => {
      const principal = sessionOf(request.principal);
      const { passkeyId } = request.params;
      const removed = await db.withPlatform(
        async (tx) => {
          await requireRecentAuthentication(deps, principal, tx);
          await assertNotLastWayIn(tx, principal.userId, passkeyId);
          const removed = await removeSecondFactor(
            tx,
            principal.userId,
            () => removePasskey(tx, { userId: principal.userId, passkeyId }),
            (found) => found,
          );
          if (!removed) return false;
          await audit.record(tx, passkeyEvent(principal, "auth.passkey-removed", passkeyId, request.requestId));
          await raiseAlert(deps, tx, {
            kind: "factor-removed",
            userId: principal.userId,
            details: { factor: "passkey" },
            requestId: request.requestId,
          });
          return true;
        },
        { actorId: principal.userId, requestId: request.requestId },
      );
      if (!removed) throw new HttpProblem("not-found", "no such passkey");
      return reply.code(204).send();
    },
  });

  return [listRoute, optionsRoute, registerRoute, renameRoute, removeRoute];
}
