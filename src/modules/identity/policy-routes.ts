import { z } from "zod";
import { HttpProblem, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute } from "../../platform/http/routes.ts";
import { raiseAlert } from "./alerts.ts";
import { BREAK_GLASS_PERMISSION, openBreakGlassFor } from "./break-glass.ts";
import type { IdentityDeps } from "./deps.ts";
import { tenantActorOf } from "./member-routes.ts";
import { policyJson } from "./policy.ts";
import { SIGN_IN_METHODS } from "./policy-schema.ts";
import { loadPolicy, updatePolicy } from "./security-policies.ts";
import { isSessionPrincipal } from "./sessions.ts";

/** A tenant's security policy (promise A4): read by its admins, changed by them after recent authentication. */

const TAGS = ["security"];

const breakGlassSchema = z
  .object({ openedAt: z.iso.datetime(), expiresAt: z.iso.datetime() })
  .meta({ id: "BreakGlassOpening" });
const tenantParams = z.object({ tenantId: z.uuid() });

const policySchema = z
  .object({
    requireMfa: z.boolean().describe("Every session must be multi-factor to open the organization"),
    requireSso: z.boolean().describe("Every session must hold a factor from the organization's identity provider"),
    sessionLifetimeMinutes: z
      .number()
      .int()
      .min(15)
      .max(10_080)
      .nullable()
      .describe("Sessions signed in longer ago no longer open the organization; null: 7 days"),
    allowedMethods: z
      .array(z.enum(SIGN_IN_METHODS))
      .min(1)
      .max(SIGN_IN_METHODS.length)
      .describe("The sign-in methods that open the organization"),
    allowPersonalKeys: z.boolean(),
    allowServiceKeys: z.boolean(),
    breakGlassMembershipId: z
      .uuid()
      .nullable()
      .describe("The owner who may open the security settings with a passkey while the identity provider is down"),
  })
  .strict()
  .meta({ id: "SecurityPolicy" });

export function policyRoutes(deps: IdentityDeps): AnyRoute[] {
  const { db } = deps;
  return [
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/security/policy",
      operationId: "getSecurityPolicy",
      summary: "The organization's security policy",
      tags: TAGS,
      permission: { kind: "tenant", permission: "security.read" },
      params: tenantParams,
      response: { 200: policySchema },
      handler: async (request) => {
        const { tenantId } = tenantActorOf(request);
        return policyJson(await db.withTenant({ tenantId }, (tx) => loadPolicy(tx, tenantId)));
      },
    }),
    defineRoute({
      method: "PUT",
      url: "/api/v1/tenants/:tenantId/security/policy",
      operationId: "updateSecurityPolicy",
      summary: "Replace the organization's security policy (after recent authentication; never locks you out)",
      tags: TAGS,
      permission: { kind: "tenant", permission: "security.manage" },
      params: tenantParams,
      body: policySchema,
      response: { 200: policySchema, 400: problemSchema, 403: problemSchema, 409: problemSchema },
      handler: async (request) => {
        const { tenantId, actor } = tenantActorOf(request);
        const updated = await db.withTenant(
          { tenantId, actorId: actor.grant.actorId, requestId: request.requestId },
          (tx) => updatePolicy(deps, tx, tenantId, actor, request.body),
        );
        return policyJson(updated);
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/tenants/:tenantId/security/break-glass",
      operationId: "openBreakGlass",
      summary:
        "The designated owner opens the security settings for one hour with a passkey, while the identity provider is down",
      tags: TAGS,
      permission: { kind: "tenant", permission: BREAK_GLASS_PERMISSION },
      params: tenantParams,
      response: { 201: breakGlassSchema, 403: problemSchema, 409: problemSchema },
      handler: async (request, reply) => {
        const { tenantId, actor } = tenantActorOf(request);
        const { principal, grant } = actor;
        if (!isSessionPrincipal(principal)) {
          throw new HttpProblem("forbidden", "only a signed-in person can break the glass");
        }
        const opening = await openBreakGlassFor(deps, tenantId, principal, grant, request.requestId, (tx, opened) =>
          raiseAlert(deps, tx, {
            kind: "break-glass-used",
            userId: principal.userId,
            tenantId,
            details: { opening: opened.id },
            requestId: request.requestId,
          }).then(() => undefined),
        );
        return reply
          .code(201)
          .send({ openedAt: opening.openedAt.toISOString(), expiresAt: opening.expiresAt.toISOString() });
      },
    }),
  ];
}
