import type { FastifyRequest } from "fastify";
import { z } from "zod";
import type { NewEvent } from "../../platform/audit/index.ts";
import { HttpProblem, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute, type Principal } from "../../platform/http/routes.ts";
import type { IdentityAccessControl } from "./access.ts";
import { raiseAlert } from "./alerts.ts";
import { deleteBackupCodes, newBackupCodes, remainingBackupCodes, storeBackupCodes } from "./backup-codes.ts";
import {
  backupCodeUsed,
  type CodeMethod,
  type CodePurpose,
  type CodeRefusal,
  checkCodeAnswer,
  codeAnswer,
  recordCodeRefused,
  secondFactorAttempt,
  spendCodeProof,
  throttleSecondFactor,
  totpCode,
} from "./code-factors.ts";
import { readCookie, sessionCookieName, setSessionCookie } from "./cookies.ts";
import type { IdentityDeps } from "./deps.ts";
import { presentedDeviceToken, setDeviceCookie } from "./devices.ts";
import { removeSecondFactor } from "./factor-removal.ts";
import { factorProvenEvent } from "./session-events.ts";
import {
  completeSecondFactor,
  isSessionPrincipal,
  RECENT_AUTHENTICATION_MS,
  reauthenticate,
  requireRecentAuthentication,
  type SessionPrincipal,
} from "./sessions.ts";
import { rememberSignInDevice } from "./sign-in-alerts.ts";
import { type BackoffTarget, recordSuccess } from "./throttle.ts";
import {
  beginTotpEnrolment,
  claimTotpStep,
  deleteTotpFactor,
  findTotpFactor,
  matchTotpCode,
  TOTP_ENROLMENT_LIFETIME_MS,
  totpQrCode,
  totpUri,
} from "./totp.ts";
import { findUserById, userEmail } from "./users.ts";

/**
 * The authenticator app and its backup codes (promise A2): status, enrolment (start, then confirm with a
 * first code, which issues the backup codes), new backup codes, removal; and the two ways a code proves the
 * user: finishing a sign-in whose password was right (a half-session), and confirming it is them (step-up).
 * Changing a factor needs recent authentication; every code is throttled per user, and every refused code
 * is audited.
 */

const AUTHENTICATED = { kind: "authenticated" } as const;

const totpStatus = z
  .object({
    status: z.enum(["none", "pending", "enabled"]),
    enabledAt: z.iso.datetime().nullable(),
    backupCodesRemaining: z.number().int(),
  })
  .meta({ id: "TotpStatus" });

const totpEnrolment = z
  .object({
    secret: z.string().describe("The base32 secret, for typing into an app that cannot scan"),
    uri: z.string().describe("The otpauth:// URI the QR code holds"),
    qrCode: z.string().describe("The QR code of the URI: an SVG image as a data: URL"),
    expiresAt: z.iso.datetime().describe("Confirm with a first code before this"),
  })
  .meta({ id: "TotpEnrolment" });

const backupCodeList = z
  .object({ backupCodes: z.array(z.string()).describe("Shown once: only their hashes are kept") })
  .meta({ id: "BackupCodes" });

const secondFactorCompleted = z
  .object({
    session: z.object({ id: z.uuid(), state: z.literal("active"), expiresAt: z.iso.datetime() }),
  })
  .meta({ id: "SecondFactorCompleted" });

const reauthenticated = z.object({ recentAuthenticationUntil: z.iso.datetime() });

function sessionOf(principal: Principal | null): SessionPrincipal {
  if (!isSessionPrincipal(principal)) throw new HttpProblem("forbidden", "only a signed-in person has an account");
  return principal;
}

/** An event about the user's own factors, on their platform chain (security stream). */
function factorEvent(
  principal: SessionPrincipal,
  action: `auth.${string}`,
  requestId: string,
  details: NewEvent["details"] = {},
): NewEvent {
  return {
    tenantId: null,
    stream: "security",
    actor: { kind: "user", id: principal.userId },
    action,
    target: { type: "user", id: principal.userId },
    subjects: [principal.userId],
    details,
    requestId,
  };
}

export function totpRoutes(deps: IdentityDeps, access: IdentityAccessControl): AnyRoute[] {
  const { db, clock, audit, keyRing, passwords } = deps;
  const { publicUrl } = deps.config;
  const cookieName = sessionCookieName(publicUrl);
  const presentedToken = (request: FastifyRequest) => readCookie(request, cookieName);

  /** A refused code, audited on the user's chain: the caller throws the answer (`throw await refused(…)`). */
  async function refused(
    principal: SessionPrincipal,
    requestId: string,
    code: { method: CodeMethod; purpose: CodePurpose; reason: CodeRefusal },
    problem: HttpProblem,
    backoff: readonly BackoffTarget[],
  ): Promise<HttpProblem> {
    await recordCodeRefused(deps, {
      actor: { kind: "user", id: principal.userId },
      userId: principal.userId,
      sessionId: principal.sessionId,
      requestId,
      backoff,
      ...code,
    });
    return problem;
  }

  const wrongCode = (reason: CodeRefusal) =>
    reason === "replayed" ? "this code was already used; wait for the next one" : "the code is not right";

  const statusRoute = defineRoute({
    method: "GET",
    url: "/api/v1/me/totp",
    operationId: "getTotp",
    summary: "Whether the own authenticator app is enabled, and how many backup codes are left",
    tags: ["accounts"],
    permission: AUTHENTICATED,
    response: { 200: totpStatus, 401: problemSchema, 403: problemSchema },
    handler: async (request) => {
      const principal = sessionOf(request.principal);
      const now = clock.now();
      return db.withPlatform(async (tx) => {
        const row = await tx
          .selectFrom("totp_factors")
          .select(["created_at", "confirmed_at"])
          .where("user_id", "=", principal.userId)
          .executeTakeFirst();
        const pending =
          row !== undefined &&
          row.confirmed_at === null &&
          now.getTime() - row.created_at.getTime() < TOTP_ENROLMENT_LIFETIME_MS;
        return {
          status: row?.confirmed_at ? "enabled" : pending ? "pending" : "none",
          enabledAt: row?.confirmed_at?.toISOString() ?? null,
          backupCodesRemaining: await remainingBackupCodes(tx, principal.userId),
        } as const;
      });
    },
  });

  const startRoute = defineRoute({
    method: "POST",
    url: "/api/v1/me/totp",
    operationId: "startTotpEnrolment",
    summary: "Start enrolling an authenticator app: its secret, as a QR code (confirm it with a first code)",
    tags: ["accounts"],
    permission: AUTHENTICATED,
    response: { 201: totpEnrolment, 401: problemSchema, 403: problemSchema, 409: problemSchema },
    handler: async (request, reply) => {
      const principal = sessionOf(request.principal);
      await requireRecentAuthentication(deps, principal);
      const now = clock.now();
      const started = await db.withPlatform(
        async (tx) => {
          const user = await findUserById(tx, principal.userId);
          if (!user) throw new HttpProblem("unauthenticated", "this account no longer exists");
          const secret = await beginTotpEnrolment(tx, keyRing, user.id, now);
          if (secret === undefined) {
            throw new HttpProblem("conflict", "an authenticator app is already enabled; remove it first");
          }
          await audit.record(tx, factorEvent(principal, "auth.totp-enrolment-started", request.requestId));
          return { secret, label: await userEmail(tx, keyRing, user) };
        },
        { actorId: principal.userId, requestId: request.requestId },
      );
      const uri = totpUri(publicUrl, started.label, started.secret);
      return reply.code(201).send({
        secret: started.secret,
        uri,
        qrCode: await totpQrCode(uri),
        expiresAt: new Date(now.getTime() + TOTP_ENROLMENT_LIFETIME_MS).toISOString(),
      });
    },
  });

  const confirmRoute = defineRoute({
    method: "POST",
    url: "/api/v1/me/totp/confirm",
    operationId: "confirmTotpEnrolment",
    summary: "Confirm the enrolment with a first code: the app is enabled and ten backup codes are issued, once",
    tags: ["accounts"],
    permission: AUTHENTICATED,
    body: z.object({ code: totpCode }),
    response: {
      200: backupCodeList,
      400: problemSchema,
      401: problemSchema,
      403: problemSchema,
      409: problemSchema,
      429: problemSchema,
    },
    handler: async (request, reply) => {
      const principal = sessionOf(request.principal);
      await requireRecentAuthentication(deps, principal);
      const backoff = await throttleSecondFactor(deps, await secondFactorAttempt(deps, request.raw, principal.userId));
      const now = clock.now();
      const factor = await db.withPlatform((tx) => findTotpFactor(tx, keyRing, principal.userId));
      if (!factor || factor.confirmedAt !== null) {
        throw new HttpProblem("conflict", "no enrolment awaits a code; start one");
      }
      if (now.getTime() - factor.createdAt.getTime() >= TOTP_ENROLMENT_LIFETIME_MS) {
        throw new HttpProblem("conflict", "this enrolment expired; start again");
      }
      const step = await matchTotpCode(factor.secret, request.body.code, now, null);
      if (step === null) {
        throw await refused(
          principal,
          request.requestId,
          { method: "totp", purpose: "enrolment", reason: "wrong-code" },
          new HttpProblem("bad-request", "the code is not right; check the app's clock and try the next one"),
          backoff,
        );
      }
      const backup = await newBackupCodes(passwords);
      const token = presentedToken(request.raw);
      const rotated = await db.withPlatform(
        async (tx) => {
          const confirmed = await claimTotpStep(tx, principal.userId, step, now, {
            enrolment: factor.createdAt,
          });
          if (!confirmed) throw new HttpProblem("conflict", "this enrolment was confirmed or replaced meanwhile");
          await recordSuccess(tx, deps, backoff);
          await storeBackupCodes(tx, principal.userId, backup.hashed, now);
          await audit.record(
            tx,
            factorEvent(principal, "auth.totp-enrolled", request.requestId, { backupCodes: backup.codes.length }),
          );
          await raiseAlert(deps, tx, {
            kind: "factor-added",
            userId: principal.userId,
            details: { factor: "totp" },
            requestId: request.requestId,
          });
          // The code just proved the app: the session records it (a tenant requiring MFA opens at once).
          return token === undefined
            ? undefined
            : reauthenticate(tx, principal.sessionId, token, { method: "totp" }, now);
        },
        { actorId: principal.userId, requestId: request.requestId },
      );
      if (rotated) setSessionCookie(reply, publicUrl, rotated.token, rotated.expiresAt, now);
      return { backupCodes: backup.codes };
    },
  });

  const regenerateRoute = defineRoute({
    method: "POST",
    url: "/api/v1/me/totp/backup-codes",
    operationId: "regenerateBackupCodes",
    summary: "Issue ten new backup codes, shown once; the previous ones stop working",
    tags: ["accounts"],
    permission: AUTHENTICATED,
    response: { 200: backupCodeList, 401: problemSchema, 403: problemSchema, 409: problemSchema },
    handler: async (request) => {
      const principal = sessionOf(request.principal);
      await requireRecentAuthentication(deps, principal);
      const backup = await newBackupCodes(passwords);
      await db.withPlatform(
        async (tx) => {
          const enabled = await tx
            .selectFrom("totp_factors")
            .select("user_id")
            .where("user_id", "=", principal.userId)
            .where("confirmed_at", "is not", null)
            .forUpdate()
            .executeTakeFirst();
          if (!enabled) throw new HttpProblem("conflict", "backup codes come with an authenticator app; enrol one");
          await storeBackupCodes(tx, principal.userId, backup.hashed, clock.now());
          await audit.record(
            tx,
            factorEvent(principal, "auth.backup-codes-regenerated", request.requestId, {
              backupCodes: backup.codes.length,
            }),
          );
        },
        { actorId: principal.userId, requestId: request.requestId },
      );
      return { backupCodes: backup.codes };
    },
  });

  const removeRoute = defineRoute({
    method: "DELETE",
    url: "/api/v1/me/totp",
    operationId: "removeTotp",
    summary: "Remove the authenticator app (or an unconfirmed enrolment) and its backup codes",
    tags: ["accounts"],
    permission: AUTHENTICATED,
    response: { 204: z.null(), 401: problemSchema, 403: problemSchema, 404: problemSchema, 409: problemSchema },
    handler: async (request, reply) => {
      const principal = sessionOf(request.principal);
      await requireRecentAuthentication(deps, principal);
      await db.withPlatform(
        async (tx) => {
          const removed = await removeSecondFactor(
            tx,
            principal.userId,
            () => deleteTotpFactor(tx, principal.userId),
            (totp) => totp?.confirmed === true,
          );
          if (!removed) throw new HttpProblem("not-found", "no authenticator app is enrolled");
          const backupCodes = await deleteBackupCodes(tx, principal.userId);
          await audit.record(
            tx,
            factorEvent(principal, "auth.totp-removed", request.requestId, {
              confirmed: removed.confirmed,
              backupCodesDeleted: backupCodes,
            }),
          );
          // An enrolment never confirmed was never a factor: nothing to warn about.
          if (removed.confirmed) {
            await raiseAlert(deps, tx, {
              kind: "factor-removed",
              userId: principal.userId,
              details: { factor: "totp" },
              requestId: request.requestId,
            });
          }
        },
        { actorId: principal.userId, requestId: request.requestId },
      );
      return reply.code(204).send();
    },
  });

  const secondFactorRoute = defineRoute({
    method: "POST",
    url: "/api/v1/sessions/current/second-factor",
    operationId: "completeSecondFactor",
    summary: "Finish signing in with a code from the authenticator app or a backup code",
    tags: ["sessions"],
    // A half-session is no principal of any other route: this one finds it itself.
    permission: { kind: "public" },
    body: codeAnswer,
    response: {
      200: secondFactorCompleted,
      400: problemSchema,
      401: problemSchema,
      403: problemSchema,
      429: problemSchema,
    },
    handler: async (request, reply) => {
      const principal = await access.sessionPrincipal(request.raw, reply, ["pending-second-factor"]);
      const token = presentedToken(request.raw);
      if (!principal || token === undefined) {
        throw new HttpProblem("unauthenticated", "sign in with your password first");
      }
      const backoff = await throttleSecondFactor(deps, await secondFactorAttempt(deps, request.raw, principal.userId));
      const now = clock.now();
      const check = await checkCodeAnswer(deps, principal.userId, request.body, now);
      if (!check.ok) {
        throw await refused(
          principal,
          request.requestId,
          { method: check.method, purpose: "sign-in", reason: check.reason },
          new HttpProblem("second-factor-required", wrongCode(check.reason)),
          backoff,
        );
      }
      const { proof } = check;
      const outcome = await db.withPlatform(
        async (tx) => {
          if (!(await spendCodeProof(tx, principal.userId, proof, now))) return { spent: false } as const;
          const completed = await completeSecondFactor(tx, principal.sessionId, token, { method: proof.method }, now);
          // Rolls the spent code back: the half-session ended, or a concurrent completion won.
          if (!completed) throw new HttpProblem("unauthenticated", "this sign-in is no longer pending; sign in again");
          await recordSuccess(tx, deps, backoff);
          await audit.record(
            tx,
            factorProvenEvent("auth.second-factor", principal, { method: proof.method }, request.requestId),
          );
          if (proof.method === "backup-code") await backupCodeUsed(deps, tx, principal.userId, request.requestId);
          // The sign-in is complete only now: this browser becomes a known device (or raises a new-device alert).
          const device = await rememberSignInDevice(deps, tx, presentedDeviceToken(request.raw, publicUrl), {
            userId: principal.userId,
            method: proof.method,
            requestId: request.requestId,
          });
          return { spent: true, completed, device } as const;
        },
        { actorId: principal.userId, requestId: request.requestId },
      );
      if (!outcome.spent) {
        throw await refused(
          principal,
          request.requestId,
          { method: proof.method, purpose: "sign-in", reason: "replayed" },
          new HttpProblem("second-factor-required", wrongCode("replayed")),
          backoff,
        );
      }
      setSessionCookie(reply, publicUrl, outcome.completed.token, outcome.completed.expiresAt, now);
      setDeviceCookie(reply, publicUrl, outcome.device.token);
      return {
        session: { id: principal.sessionId, state: "active", expiresAt: outcome.completed.expiresAt.toISOString() },
      } as const;
    },
  });

  const stepUpRoute = defineRoute({
    method: "POST",
    url: "/api/v1/sessions/current/reauthenticate/totp",
    operationId: "reauthenticateWithTotp",
    summary: "Confirm it is you with a code from the authenticator app (step-up): issues a new session token",
    tags: ["sessions"],
    permission: AUTHENTICATED,
    body: z.object({ code: totpCode }),
    response: { 200: reauthenticated, 401: problemSchema, 403: problemSchema, 409: problemSchema, 429: problemSchema },
    handler: async (request, reply) => {
      const principal = sessionOf(request.principal);
      const token = presentedToken(request.raw);
      if (principal.viaReplacedToken || token === undefined) {
        throw new HttpProblem("reauthentication-required", "this session token was replaced; use the current one");
      }
      const backoff = await throttleSecondFactor(deps, await secondFactorAttempt(deps, request.raw, principal.userId));
      const now = clock.now();
      const check = await checkCodeAnswer(deps, principal.userId, { totpCode: request.body.code }, now);
      if (!check.ok) {
        const enabled = await db.withPlatform((tx) =>
          tx
            .selectFrom("totp_factors")
            .select("user_id")
            .where("user_id", "=", principal.userId)
            .where("confirmed_at", "is not", null)
            .executeTakeFirst(),
        );
        if (!enabled) throw new HttpProblem("conflict", "no authenticator app is enabled");
        throw await refused(
          principal,
          request.requestId,
          { method: "totp", purpose: "step-up", reason: check.reason },
          new HttpProblem("reauthentication-required", wrongCode(check.reason)),
          backoff,
        );
      }
      const { proof } = check;
      const rotated = await db.withPlatform(
        async (tx) => {
          if (!(await spendCodeProof(tx, principal.userId, proof, now))) return null;
          const next = await reauthenticate(tx, principal.sessionId, token, { method: "totp" }, now);
          if (!next) {
            throw new HttpProblem("reauthentication-required", "this session token was replaced; use the current one");
          }
          await recordSuccess(tx, deps, backoff);
          await audit.record(
            tx,
            factorProvenEvent("auth.reauthenticated", principal, { method: "totp" }, request.requestId),
          );
          return next;
        },
        { actorId: principal.userId, requestId: request.requestId },
      );
      if (rotated === null) {
        throw await refused(
          principal,
          request.requestId,
          { method: "totp", purpose: "step-up", reason: "replayed" },
          new HttpProblem("reauthentication-required", wrongCode("replayed")),
          backoff,
        );
      }
      setSessionCookie(reply, publicUrl, rotated.token, rotated.expiresAt, now);
      return { recentAuthenticationUntil: new Date(now.getTime() + RECENT_AUTHENTICATION_MS).toISOString() };
    },
  });

  return [statusRoute, startRoute, confirmRoute, regenerateRoute, removeRoute, secondFactorRoute, stepUpRoute];
}
