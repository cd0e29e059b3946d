import { z } from "zod";
import { problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute, type Principal } from "../../platform/http/routes.ts";
import type { Tenant } from "../../platform/tenancy/tenants.ts";
import { assertNotForged } from "./csrf.ts";
import type { IdentityDeps } from "./deps.ts";
import { pageQuery, tenantName, tenantSlug } from "./member-routes.ts";
import { setupOperator } from "./operator.ts";
import { createTenantForOwner, listAllTenants, setTenantSuspended } from "./tenants.ts";

/**
 * The operator's routes: the one-time setup, and the tenants' registry (create, suspend, reinstate). The
 * operator has no route to a tenant's records, nor to users' addresses, factors or memberships: a tenant
 * here is its registry row.
 */

const TAGS = ["operator"];
const OPERATOR = { kind: "operator" } as const;

const operatorTenant = z
  .object({
    id: z.uuid(),
    slug: z.string(),
    name: z.string(),
    status: z.enum(["active", "suspended", "cancelled", "pending-deletion", "deleted"]),
    createdAt: z.iso.datetime(),
  })
  .meta({ id: "OperatorTenant" });

const toOperatorTenant = (tenant: Tenant): z.infer<typeof operatorTenant> => ({
  id: tenant.id,
  slug: tenant.slug,
  name: tenant.name,
  status: tenant.status,
  createdAt: tenant.createdAt.toISOString(),
});

function operatorId(principal: Principal | null): string {
  if (principal?.kind !== "operator") throw new TypeError("an operator route ran without an operator");
  return principal.actorId;
}

export function operatorRoutes(deps: IdentityDeps): AnyRoute[] {
  const move = (name: "suspend" | "reinstate", summary: string) =>
    defineRoute({
      method: "POST",
      url: `/api/v1/operator/tenants/:tenantId/${name}`,
      operationId: `${name}Tenant`,
      summary,
      tags: TAGS,
      permission: OPERATOR,
      params: z.object({ tenantId: z.uuid() }),
      response: { 200: operatorTenant, 404: problemSchema, 409: problemSchema },
      handler: async (request) =>
        toOperatorTenant(
          await setTenantSuspended(deps, {
            operatorId: operatorId(request.principal),
            tenantId: request.params.tenantId,
            move: name,
            requestId: request.requestId,
          }),
        ),
    });

  return [
    defineRoute({
      method: "POST",
      url: "/api/v1/operator/setup",
      operationId: "setupOperator",
      summary: "Create the first operator with the one-time link shown on the server's terminal",
      tags: TAGS,
      permission: { kind: "public" },
      body: z.object({
        token: z.string().max(100),
        email: z.email().max(254),
        displayName: z.string().trim().min(1).max(100),
        password: z.string().max(1024),
      }),
      response: { 201: z.object({ userId: z.uuid() }), 400: problemSchema, 404: problemSchema, 409: problemSchema },
      handler: async (request, reply) => {
        assertNotForged(request.raw, deps.config.publicUrl);
        const created = await setupOperator(deps, { ...request.body, requestId: request.requestId });
        reply.code(201);
        return created;
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/operator/tenants",
      operationId: "listAllTenants",
      summary: "Every organization's registry entry (no members, no addresses)",
      tags: TAGS,
      permission: OPERATOR,
      query: pageQuery,
      response: { 200: z.object({ items: z.array(operatorTenant), nextCursor: z.uuid().nullable() }) },
      handler: async (request) => {
        const page = await listAllTenants(deps, request.query);
        return { items: page.items.map(toOperatorTenant), nextCursor: page.nextCursor };
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/operator/tenants",
      operationId: "createTenantForOwner",
      summary: "Create an organization with no member and invite its first owner by email",
      tags: TAGS,
      permission: OPERATOR,
      body: z.object({ slug: tenantSlug, name: tenantName, ownerEmail: z.string().max(254) }),
      response: { 201: operatorTenant.extend({ invitationId: z.uuid() }), 400: problemSchema, 409: problemSchema },
      handler: async (request, reply) => {
        const { slug, name, ownerEmail } = request.body;
        const created = await createTenantForOwner(deps, {
          operatorId: operatorId(request.principal),
          tenant: { slug, name },
          ownerEmail,
          requestId: request.requestId,
        });
        reply.code(201);
        return { ...toOperatorTenant(created), invitationId: created.invitationId };
      },
    }),
    move("suspend", "Suspend an organization: its members are refused until it is reinstated"),
    move("reinstate", "Reinstate a suspended organization"),
  ];
}
