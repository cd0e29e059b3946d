import { z } from "zod";
import { HttpProblem, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute, type RouteRequest } from "../../platform/http/routes.ts";
import {
  type Caller,
  changePassword,
  completePasswordReset,
  confirmEmailChange,
  getProfile,
  type RequestContext,
  requestEmailChange,
  requestPasswordReset,
  resendVerification,
  revertEmailChange,
  signUp,
  updateProfile,
  verifyEmail,
} from "./accounts.ts";
import {
  AVATAR_MAX_BYTES,
  AVATAR_MEDIA_TYPES,
  avatarQuery,
  ownAvatar,
  removeAvatar,
  sendAvatar,
  setAvatar,
} from "./avatars.ts";
import { codeAnswer } from "./code-factors.ts";
import { assertNotForged } from "./csrf.ts";
import type { IdentityDeps } from "./deps.ts";
import { passkeyAnswer } from "./passkey-schemas.ts";
import { isSessionPrincipal, requireRecentAuthentication } from "./sessions.ts";

/** The account routes (issue 5, item 1): sign-up and its verification, passwords, the own profile and address. */

const PUBLIC = { kind: "public" } as const;
const AUTHENTICATED = { kind: "authenticated" } as const;
const TAGS = ["accounts"];

/** The mailer's own rule for an address, so an address accepted here can always be written to. */
const email = z.email().max(254);
/** One line of printable text: it is shown to other members and greets the reader of mail. */
const displayName = z
  .string()
  .trim()
  .min(1)
  .max(100)
  .regex(/^[^\p{Cc}\p{Cf}\p{Zl}\p{Zp}]+$/u, "a display name is one line of printable text");
/** Bounded so no one makes Argon2id hash megabytes; the strength check has the stricter limit. */
const password = z.string().min(1).max(1024);
/** Any text: its shape is checked with the token, so every bad link gets the same answer. */
const token = z.string().max(512);

/** The one answer to requests that must not reveal whether an account holds an address. */
const accepted = z.object({ status: z.literal("accepted") }).meta({ id: "Accepted" });
const ACCEPTED = { status: "accepted" } as const;

const profile = z
  .object({
    id: z.uuid(),
    email: z.string(),
    emailVerified: z.boolean(),
    displayName: z.string(),
    avatar: z.string().nullable().describe("The URL of the own picture, or null"),
    passwordChangedAt: z.iso.datetime().nullable(),
  })
  .meta({ id: "Profile" });

/**
 * Room for the largest picture in base64 (4 characters per 3 bytes) and the rest of the JSON: a larger
 * body is refused before it is read; the decoded size is checked exactly after.
 */
const AVATAR_BODY_LIMIT = Math.ceil(AVATAR_MAX_BYTES / 3) * 4 + 1024;

const context = (request: RouteRequest<unknown, unknown, unknown>): RequestContext => ({
  requestId: request.requestId,
  address: request.raw.ip,
});

/**
 * The least time sign-up and reset requests take to answer. Both run Argon2id whether or not the address
 * has an account, but creating an account still does more database work than mailing an existing one
 * (measured 10-25 ms): answering no sooner than this hides that difference behind a floor well above it.
 */
export const UNIFORM_ANSWER_MS = { signUp: 600, passwordReset: 300 } as const;

/** Runs `work` and answers (or fails) no sooner than `ms` after it started. */
async function noSoonerThan<T>(ms: number, work: () => Promise<T>): Promise<T> {
  const started = performance.now();
  try {
    return await work();
  } finally {
    const left = ms - (performance.now() - started);
    if (left > 0) await new Promise((resolve) => setTimeout(resolve, left));
  }
}

/** The signed-in person acting on their own account; an API key has no account to act on. */
function caller(request: RouteRequest<unknown, unknown, unknown>): Caller {
  const principal = request.principal;
  if (!isSessionPrincipal(principal)) throw new HttpProblem("forbidden", "only a signed-in person has an account");
  return { userId: principal.userId, sessionId: principal.sessionId };
}

export function accountRoutes(deps: IdentityDeps): AnyRoute[] {
  return [
    defineRoute({
      method: "POST",
      url: "/api/v1/accounts",
      operationId: "signUp",
      summary: "Sign up: a verification link goes to the address (the answer is the same if it has an account)",
      tags: TAGS,
      permission: PUBLIC,
      body: z.object({ email, displayName, password }),
      response: { 202: accepted, 400: problemSchema, 429: problemSchema },
      handler: async (request, reply) => {
        assertNotForged(request.raw, deps.config.publicUrl);
        await noSoonerThan(UNIFORM_ANSWER_MS.signUp, () => signUp(deps, request.body, context(request)));
        return reply.code(202).send(ACCEPTED);
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/accounts/verify-email",
      operationId: "verifyEmail",
      summary: "Redeem an email verification link",
      tags: TAGS,
      permission: PUBLIC,
      body: z.object({ token }),
      response: { 204: z.null(), 400: problemSchema, 429: problemSchema },
      handler: async (request, reply) => {
        await verifyEmail(deps, request.body.token, context(request));
        return reply.code(204).send();
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/accounts/verification-email",
      operationId: "resendVerificationEmail",
      summary: "Send the signed-in, unverified account a new verification link",
      tags: TAGS,
      permission: AUTHENTICATED,
      response: { 202: accepted, 409: problemSchema, 429: problemSchema },
      handler: async (request, reply) => {
        await resendVerification(deps, caller(request));
        return reply.code(202).send(ACCEPTED);
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/accounts/password-reset",
      operationId: "requestPasswordReset",
      summary: "Ask for a password reset link (the answer is the same whether the address has an account or not)",
      tags: TAGS,
      permission: PUBLIC,
      body: z.object({ email }),
      response: { 202: accepted, 400: problemSchema, 429: problemSchema },
      handler: async (request, reply) => {
        await noSoonerThan(UNIFORM_ANSWER_MS.passwordReset, () =>
          requestPasswordReset(deps, request.body.email, context(request)),
        );
        return reply.code(202).send(ACCEPTED);
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/accounts/password-reset/complete",
      operationId: "completePasswordReset",
      summary: "Set a new password with a reset link; every session of the account ends",
      tags: TAGS,
      permission: PUBLIC,
      body: z.object({
        token,
        password,
        secondFactor: z
          .union([codeAnswer, passkeyAnswer])
          .optional()
          .describe("Required when the account has a second factor: a code, or a passkey's assertion"),
      }),
      response: { 204: z.null(), 400: problemSchema, 401: problemSchema, 429: problemSchema },
      handler: async (request, reply) => {
        await completePasswordReset(deps, request.body, context(request));
        return reply.code(204).send();
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/me",
      operationId: "getProfile",
      summary: "The signed-in person's own profile",
      tags: TAGS,
      permission: AUTHENTICATED,
      response: { 200: profile, 403: problemSchema },
      handler: async (request) => getProfile(deps, caller(request)),
    }),
    defineRoute({
      method: "PATCH",
      url: "/api/v1/me",
      operationId: "updateProfile",
      summary: "Change the own display name",
      tags: TAGS,
      permission: AUTHENTICATED,
      body: z.object({ displayName }),
      response: { 200: profile, 400: problemSchema, 403: problemSchema },
      handler: async (request) => updateProfile(deps, caller(request), request.body, context(request)),
    }),
    defineRoute({
      method: "PUT",
      url: "/api/v1/me/avatar",
      operationId: "setAvatar",
      summary: `Set the own picture (PNG, JPEG or WebP, at most ${AVATAR_MAX_BYTES / 1024} KiB), shown to fellow members`,
      tags: TAGS,
      permission: AUTHENTICATED,
      bodyLimit: AVATAR_BODY_LIMIT,
      body: z.object({
        mediaType: z.enum(AVATAR_MEDIA_TYPES),
        data: z.base64().describe("The image, base64-encoded"),
      }),
      response: { 200: profile, 400: problemSchema, 403: problemSchema, 413: problemSchema },
      handler: async (request) => {
        const who = caller(request);
        const { mediaType, data } = request.body;
        await setAvatar(deps, who, { mediaType, content: Buffer.from(data, "base64") }, context(request));
        return getProfile(deps, who);
      },
    }),
    defineRoute({
      method: "DELETE",
      url: "/api/v1/me/avatar",
      operationId: "removeAvatar",
      summary: "Remove the own picture",
      tags: TAGS,
      permission: AUTHENTICATED,
      response: { 204: z.null(), 403: problemSchema },
      handler: async (request, reply) => {
        await removeAvatar(deps, caller(request), context(request));
        return reply.code(204).send();
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/me/avatar",
      operationId: "getOwnAvatar",
      summary: "The own picture, as an image",
      tags: TAGS,
      permission: AUTHENTICATED,
      query: avatarQuery,
      response: { 403: problemSchema, 404: problemSchema },
      handler: async (request, reply) => sendAvatar(reply, await ownAvatar(deps, caller(request))),
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/me/password",
      operationId: "changePassword",
      summary: "Change the own password (the current one is required); other sessions end",
      tags: TAGS,
      permission: AUTHENTICATED,
      body: z.object({ currentPassword: password, newPassword: password }),
      response: { 204: z.null(), 400: problemSchema, 403: problemSchema, 409: problemSchema, 429: problemSchema },
      handler: async (request, reply) => {
        await changePassword(deps, caller(request), request.body, context(request));
        return reply.code(204).send();
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/me/email",
      operationId: "requestEmailChange",
      summary: "Ask to move the account to a new address (requires recent authentication); it applies once confirmed",
      tags: TAGS,
      permission: AUTHENTICATED,
      body: z.object({ newEmail: email }),
      response: { 202: accepted, 400: problemSchema, 403: problemSchema, 429: problemSchema },
      handler: async (request, reply) => {
        const who = caller(request);
        await requireRecentAuthentication(deps, request.principal);
        await requestEmailChange(deps, who, request.body, context(request));
        return reply.code(202).send(ACCEPTED);
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/accounts/email-change/confirm",
      operationId: "confirmEmailChange",
      summary: "Redeem the link sent to the new address: the account moves to it",
      tags: TAGS,
      permission: PUBLIC,
      body: z.object({ token }),
      response: { 204: z.null(), 400: problemSchema },
      handler: async (request, reply) => {
        await confirmEmailChange(deps, request.body.token, context(request));
        return reply.code(204).send();
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/accounts/email-change/revert",
      operationId: "revertEmailChange",
      summary: "Redeem the link sent to the previous address: the account returns to it and every session ends",
      tags: TAGS,
      permission: PUBLIC,
      body: z.object({ token }),
      response: { 204: z.null(), 400: problemSchema },
      handler: async (request, reply) => {
        await revertEmailChange(deps, request.body.token, context(request));
        return reply.code(204).send();
      },
    }),
  ];
}
