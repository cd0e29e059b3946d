import { z } from "zod";
import { HttpProblem, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute, type Grant } from "../../platform/http/routes.ts";
import { raiseAlert } from "./alerts.ts";
import { type ApiKeySummary, createApiKey, listApiKeys, revokeApiKey } from "./api-keys.ts";
import type { IdentityDeps } from "./deps.ts";
import { tenantAuditActor } from "./memberships.ts";
import { API_KEY_ROLES, type MembershipRole } from "./roles.ts";
import type { ApiKeyKind } from "./schema.ts";
import { requireRecentAuthentication } from "./sessions.ts";

/**
 * API keys (promise A7). Members create, list and revoke their own personal keys; admins create service
 * keys and see and revoke every key of the tenant. The key text is answered once, at creation.
 */

const tenantParams = z.object({ tenantId: z.uuid() });
const keyParams = z.object({ tenantId: z.uuid(), keyId: z.uuid() });

const newKeyBody = z.object({
  name: z.string().trim().min(1).max(100),
  role: z.enum(API_KEY_ROLES).optional(),
  expiresAt: z.iso.datetime({ offset: true }),
});

const keySummary = z
  .object({
    id: z.uuid(),
    kind: z.enum(["personal", "service"]),
    name: z.string(),
    role: z.enum(API_KEY_ROLES),
    ownerMembershipId: z.uuid().nullable(),
    createdAt: z.iso.datetime(),
    expiresAt: z.iso.datetime(),
    lastUsedAt: z.iso.datetime().nullable(),
    revokedAt: z.iso.datetime().nullable(),
  })
  .meta({ id: "ApiKey" });

const createdKey = z
  .object({
    id: z.uuid(),
    key: z.string().describe("The key, shown this once: only a hash of it is kept"),
    name: z.string(),
    role: z.enum(API_KEY_ROLES),
    expiresAt: z.iso.datetime(),
  })
  .meta({ id: "CreatedApiKey" });

const pageQuery = z.object({
  cursor: z.uuid().optional().describe("The nextCursor of the previous page"),
  limit: z.coerce.number().int().min(1).max(100).default(50),
});

const keyPage = z.object({ items: z.array(keySummary), nextCursor: z.uuid().nullable() });

const toSummary = (key: ApiKeySummary): z.infer<typeof keySummary> => ({
  id: key.id,
  kind: key.kind,
  name: key.name,
  role: key.role,
  ownerMembershipId: key.membershipId,
  createdAt: key.createdAt.toISOString(),
  expiresAt: key.expiresAt.toISOString(),
  lastUsedAt: key.lastUsedAt?.toISOString() ?? null,
  revokedAt: key.revokedAt?.toISOString() ?? null,
});

/** The grant and tenant the kernel hands every tenant route. */
function tenantOf(request: { grant: Grant | undefined; tenantId: string | undefined }): {
  grant: Grant;
  tenantId: string;
} {
  const { grant, tenantId } = request;
  if (!grant || !tenantId) throw new TypeError("a tenant route ran without a grant");
  return { grant, tenantId };
}

export function apiKeyRoutes(deps: IdentityDeps): AnyRoute[] {
  const { db, clock, audit } = deps;

  function createRoute(kind: ApiKeyKind, url: string, operationId: string, summary: string, permission: string) {
    return defineRoute({
      method: "POST",
      url,
      operationId,
      summary,
      tags: ["api-keys"],
      permission: { kind: "tenant", permission },
      params: tenantParams,
      body: newKeyBody,
      response: { 201: createdKey, 400: problemSchema, 403: problemSchema },
      handler: async (request, reply) => {
        const { grant, tenantId } = tenantOf(request);
        // Keys are made by people who just proved who they are: never by another key, nor by a stale session.
        await requireRecentAuthentication(deps, request.principal);
        if (grant.membershipId === null) throw new TypeError("a signed-in member acts without a membership");
        const creator = { membershipId: grant.membershipId, role: grant.role as MembershipRole };
        const userId = request.principal?.userId;
        if (userId === undefined) throw new TypeError("a signed-in member acts without a user");
        const { summary: created, key } = await db.withTenant({ tenantId, actorId: grant.actorId }, async (tx) => {
          const made = await createApiKey(
            tx,
            { clock, audit },
            {
              tenantId,
              kind,
              creator,
              name: request.body.name,
              role: request.body.role,
              expiresAt: new Date(request.body.expiresAt),
              requestId: request.requestId,
            },
          );
          // A new key is a new way in: its creator and the tenant's owners and admins are told (A6).
          await raiseAlert(deps, tx, {
            kind: "api-key-created",
            userId,
            tenantId,
            details: { apiKey: made.summary.id, keyKind: kind, role: made.summary.role },
            requestId: request.requestId,
          });
          return made;
        });
        // The only time the key is sent: no cache may keep a copy.
        reply.code(201).header("cache-control", "no-store");
        return {
          id: created.id,
          key,
          name: created.name,
          role: created.role,
          expiresAt: created.expiresAt.toISOString(),
        };
      },
    });
  }

  /** `ownKeysOnly`: the caller's personal keys (a service key holds none); otherwise every key of the tenant. */
  function listRoute(url: string, operationId: string, summary: string, permission: string, ownKeysOnly: boolean) {
    return defineRoute({
      method: "GET",
      url,
      operationId,
      summary,
      tags: ["api-keys"],
      permission: { kind: "tenant", permission },
      params: tenantParams,
      query: pageQuery,
      response: { 200: keyPage },
      handler: async (request) => {
        const { grant, tenantId } = tenantOf(request);
        if (ownKeysOnly && grant.membershipId === null) return { items: [], nextCursor: null };
        const page = await db.withTenant({ tenantId, actorId: grant.actorId }, (tx) =>
          listApiKeys(tx, tenantId, {
            ownedBy: ownKeysOnly ? (grant.membershipId ?? undefined) : undefined,
            cursor: request.query.cursor,
            limit: request.query.limit,
          }),
        );
        return { items: page.items.map(toSummary), nextCursor: page.nextCursor };
      },
    });
  }

  /** `ownKeysOnly`: one of the caller's personal keys (another's is not found); otherwise any key of the tenant. */
  function revokeRoute(url: string, operationId: string, summary: string, permission: string, ownKeysOnly: boolean) {
    return defineRoute({
      method: "DELETE",
      url,
      operationId,
      summary,
      tags: ["api-keys"],
      permission: { kind: "tenant", permission },
      params: keyParams,
      response: { 204: z.null(), 404: problemSchema },
      handler: async (request, reply) => {
        const { grant, tenantId } = tenantOf(request);
        const notFound = new HttpProblem("not-found", "no such API key");
        if (ownKeysOnly && grant.membershipId === null) throw notFound;
        const principal = request.principal;
        if (!principal) throw new TypeError("a tenant route ran without a principal");
        const revoked = await db.withTenant({ tenantId, actorId: grant.actorId }, (tx) =>
          revokeApiKey(
            tx,
            { clock, audit },
            {
              tenantId,
              keyId: request.params.keyId,
              ownedBy: ownKeysOnly ? (grant.membershipId ?? undefined) : undefined,
              actor: tenantAuditActor({ principal, grant, requestId: request.requestId }),
              revokedBy: grant.membershipId,
              requestId: request.requestId,
            },
          ),
        );
        if (!revoked) throw notFound;
        return reply.code(204).send();
      },
    });
  }

  const personal = "/api/v1/tenants/:tenantId/api-keys";
  const service = "/api/v1/tenants/:tenantId/service-keys";
  return [
    createRoute("personal", personal, "createApiKey", "Create a personal API key", "api-keys.personal"),
    listRoute(personal, "listApiKeys", "List your personal API keys", "api-keys.personal", true),
    revokeRoute(
      `${personal}/:keyId`,
      "revokeApiKey",
      "Revoke one of your personal API keys",
      "api-keys.personal",
      true,
    ),
    createRoute("service", service, "createServiceKey", "Create a service key of the tenant", "api-keys.service"),
    listRoute(service, "listServiceKeys", "List every API key of the tenant", "api-keys.service", false),
    revokeRoute(`${service}/:keyId`, "revokeServiceKey", "Revoke any API key of the tenant", "api-keys.service", false),
  ];
}
