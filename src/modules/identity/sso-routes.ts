import { z } from "zod";
import { HttpProblem, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute } from "../../platform/http/routes.ts";
import type { RateRule } from "../../platform/ratelimit/limiter.ts";
import { readCookie, sessionCookieName, setSessionCookie } from "./cookies.ts";
import type { IdentityDeps } from "./deps.ts";
import { presentedDeviceToken, setDeviceCookie } from "./devices.ts";
import { pageLink } from "./links.ts";
import { isSessionPrincipal, RECENT_AUTHENTICATION_MS } from "./sessions.ts";
import { ensureSsoBinding, readSsoBinding } from "./sso-binding.ts";
import { confirmPendingLink } from "./sso-links.ts";
import { auditedSso, type SsoFailureRecord } from "./sso-refusals.ts";
import { presentedSession } from "./sso-session.ts";
import { type CallbackContext, completeSsoSignIn, startSsoSignIn } from "./sso-sign-in.ts";

/**
 * Signing in through a tenant's OpenID provider (promise A3): the start (public: it sends the browser to the
 * provider), the callback (public: one redirect URI per configuration), and confirming the link of an existing
 * account once its owner signed in with their own factor. Refusals are audited (auth.sso-failed {reason}).
 */

const TAGS = ["sso"];

/** Starts per source address: each one calls the provider and keeps a record, so they are not free. */
export const SSO_START_PER_ADDRESS: RateRule = { name: "sso-start", limit: 30, windowSeconds: 15 * 60 };

/** The web app's page that asks an existing account's owner to sign in and confirm the link. */
export const LINK_PAGE = "/sso/link";

/**
 * A path of this deployment to come back to, never another origin: printable ASCII only (the URL parser drops
 * tabs and newlines, so "/\t//host" would become "//host"), one leading slash, no backslash after it.
 */
const returnTo = z
  .string()
  .max(500)
  .regex(/^\/(?![/\\])[\x21-\x7e]*$/, "a path of this site, starting with a single /")
  .default("/");

const startParams = z.object({ tenantId: z.uuid(), configurationId: z.uuid() });
const callbackQuery = z
  .object({
    code: z.string().max(2048).optional(),
    state: z.string().max(512).optional(),
    iss: z.string().max(500).optional(),
    error: z.string().max(256).optional(),
    error_description: z.string().max(1024).optional(),
  })
  .loose();

const linkConfirmed = z
  .object({
    tenantId: z.uuid(),
    configurationId: z.uuid(),
    membershipId: z.uuid(),
    recentAuthenticationUntil: z.iso.datetime(),
  })
  .meta({ id: "SsoLinkConfirmed" });

export function ssoRoutes(deps: IdentityDeps): AnyRoute[] {
  const { clock, rateLimiter } = deps;
  const { publicUrl } = deps.config;
  const sessionCookie = sessionCookieName(publicUrl);

  return [
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/sso/:configurationId/start",
      operationId: "startSsoSignIn",
      summary: "Sign in through the organization's identity provider: redirects the browser to it",
      tags: TAGS,
      permission: { kind: "public" },
      params: startParams,
      query: z.object({ returnTo }),
      response: { 302: z.null(), 400: problemSchema, 404: problemSchema, 429: problemSchema, 503: problemSchema },
      handler: async (request, reply) => {
        const raw = request.raw;
        const decision = await rateLimiter.consume({ kind: "address", address: raw.ip }, SSO_START_PER_ADDRESS, {
          exact: true,
        });
        if (!decision.allowed) {
          throw new HttpProblem("rate-limited", "too many sign-ins started; try again later", {
            headers: { "retry-after": String(decision.retryAfter) },
          });
        }
        const { tenantId, configurationId } = request.params;
        const failure: Omit<SsoFailureRecord, "reason"> = { configurationId, tenantId, requestId: request.requestId };
        const binding = ensureSsoBinding(raw, reply, publicUrl);
        const target = await auditedSso(
          deps,
          () => failure,
          () =>
            startSsoSignIn(deps, {
              tenantId,
              configurationId,
              binding,
              returnTo: request.query.returnTo,
              requestId: request.requestId,
            }),
        );
        return reply.code(302).header("cache-control", "no-store").header("location", target.href).send();
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/sso/callback/:configurationId",
      operationId: "completeSsoSignIn",
      summary: "The redirect URI of a single sign-on configuration: the provider sends the browser back here",
      tags: TAGS,
      permission: { kind: "public" },
      params: z.object({ configurationId: z.uuid() }),
      query: callbackQuery,
      response: {
        303: z.null(),
        400: problemSchema,
        401: problemSchema,
        403: problemSchema,
        404: problemSchema,
        409: problemSchema,
        503: problemSchema,
      },
      handler: async (request, reply) => {
        const raw = request.raw;
        const { configurationId } = request.params;
        const context: CallbackContext = {};
        // The query exactly as the browser brought it: every parameter the provider sent is checked.
        const query = new URL(raw.url, "http://callback.invalid").searchParams;
        const sessionToken = readCookie(raw, sessionCookie);
        const outcome = await auditedSso(
          deps,
          () => ({ configurationId, tenantId: context.tenantId, requestId: request.requestId }),
          async () =>
            completeSsoSignIn(
              deps,
              {
                configurationId,
                query,
                binding: readSsoBinding(raw, publicUrl),
                sessionToken,
                presented: await presentedSession(deps, sessionToken, request.requestId),
                deviceToken: presentedDeviceToken(raw, publicUrl),
                userAgent: raw.headers["user-agent"],
                requestId: request.requestId,
              },
              context,
            ),
        );
        reply.code(303).header("cache-control", "no-store");
        if (outcome.kind === "link-pending") {
          // The link waits in this browser: the SSO cookie lives on for the owner to sign in and confirm.
          ensureSsoBinding(raw, reply, publicUrl);
          return reply.header("location", pageLink(publicUrl, LINK_PAGE)).send();
        }
        setSessionCookie(reply, publicUrl, outcome.session.token, outcome.session.expiresAt, clock.now());
        setDeviceCookie(reply, publicUrl, outcome.device.token);
        return reply.header("location", pageLink(publicUrl, outcome.returnTo)).send();
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/sso/links/current/confirm",
      operationId: "confirmSsoLink",
      summary:
        "Link your account to the organization's identity provider that just signed you in in this browser " +
        "(after signing in with your own password or passkey)",
      tags: TAGS,
      permission: { kind: "authenticated" },
      response: { 200: linkConfirmed, 401: problemSchema, 403: problemSchema, 404: problemSchema, 409: problemSchema },
      handler: async (request, reply) => {
        const principal = request.principal;
        if (!isSessionPrincipal(principal)) throw new HttpProblem("forbidden", "only a signed-in person can do this");
        const raw = request.raw;
        const confirmed = await auditedSso(
          deps,
          () => ({ userId: principal.userId, requestId: request.requestId }),
          () =>
            confirmPendingLink(deps, {
              principal,
              token: readCookie(raw, sessionCookie),
              binding: readSsoBinding(raw, publicUrl),
              requestId: request.requestId,
            }),
        );
        const now = clock.now();
        setSessionCookie(reply, publicUrl, confirmed.session.token, confirmed.session.expiresAt, now);
        return {
          tenantId: confirmed.tenantId,
          configurationId: confirmed.configurationId,
          membershipId: confirmed.membershipId,
          recentAuthenticationUntil: new Date(now.getTime() + RECENT_AUTHENTICATION_MS).toISOString(),
        };
      },
    }),
  ];
}
