import { z } from "zod";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute, type Principal, type RouteRequest } from "../../platform/http/routes.ts";
import { changeTenantSettings, findTenant, tenantSettings } from "../../platform/tenancy/tenants.ts";
import { avatarQuery, memberAvatar, sendAvatar } from "./avatars.ts";
import type { IdentityDeps } from "./deps.ts";
import { acceptInvitation, inviteMember, listInvitations, revokeInvitation } from "./invitations.ts";
import {
  changeRole,
  endMemberSessions,
  leaveTenant,
  listMembers,
  removeMember,
  type TenantActor,
  tenantAuditActor,
} from "./memberships.ts";
import { MEMBERSHIP_ROLES } from "./roles.ts";
import { createTenantWithOwner, listMyTenants } from "./tenants.ts";

/**
 * Tenants as their members see them (promises T5, T6, T7): creating one (the creator becomes its owner),
 * the tenants one is in, a tenant's settings, its members (display name, avatar and role only), role
 * changes, removal and leaving, ending a member's sessions, and invitations.
 */

const TAGS = ["members"];

/** The registry's rule for slugs (migration 0001). */
export const tenantSlug = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, "lower-case letters, digits and inner hyphens, at most 63");
export const tenantName = z.string().trim().min(1).max(200);
const TIME_ZONES = new Set([...Intl.supportedValuesOf("timeZone"), "UTC"]);
const timeZone = z
  .string()
  .max(64)
  .refine((zone) => TIME_ZONES.has(zone), "an IANA time zone");
const locale = z
  .string()
  .max(35)
  .refine((tag) => {
    try {
      return Intl.getCanonicalLocales(tag).length === 1;
    } catch {
      return false;
    }
  }, "a BCP 47 language tag");

const tenantParams = z.object({ tenantId: z.uuid() });
const memberParams = z.object({ tenantId: z.uuid(), membershipId: z.uuid() });
const invitationParams = z.object({ tenantId: z.uuid(), invitationId: z.uuid() });
export const pageQuery = z.object({
  cursor: z.uuid().optional().describe("The nextCursor of the previous page"),
  limit: z.coerce.number().int().min(1).max(100).default(50),
});

const role = z.enum(MEMBERSHIP_ROLES);
const tenantStatus = z.enum(["active", "suspended", "cancelled", "pending-deletion", "deleted"]);

const settingsSchema = z.object({ timeZone: z.string(), locale: z.string(), guestSharing: z.boolean() });
const tenantSchema = z
  .object({
    id: z.uuid(),
    slug: z.string(),
    name: z.string(),
    status: tenantStatus,
    createdAt: z.iso.datetime(),
    settings: settingsSchema,
  })
  .meta({ id: "Tenant" });
const myTenant = z
  .object({ id: z.uuid(), slug: z.string(), name: z.string(), status: tenantStatus, role })
  .meta({ id: "MyTenant" });
/** What members see of each other (T7): nothing of the account but its display name and avatar. */
const member = z
  .object({
    id: z.uuid().describe("The membership's id"),
    displayName: z.string(),
    avatar: z.string().nullable().describe("The URL of the member's picture, or null"),
    role,
    joinedAt: z.iso.datetime(),
  })
  .strict()
  .meta({ id: "Member" });
const invitation = z
  .object({
    id: z.uuid(),
    email: z.string(),
    role,
    createdAt: z.iso.datetime(),
    expiresAt: z.iso.datetime(),
  })
  .meta({ id: "Invitation" });

const page = <T extends z.ZodType>(item: T) => z.object({ items: z.array(item), nextCursor: z.uuid().nullable() });

/** The principal of an authenticated route, which must be a user (operators hold no memberships). */
function userOf(principal: Principal | null, what: string): Principal & { userId: string } {
  if (principal?.kind !== "user" || !principal.userId) {
    throw new HttpProblem("forbidden", `only users can ${what}; operators hold no memberships`);
  }
  return principal as Principal & { userId: string };
}

/** What the kernel hands a tenant route: the tenant, and who acts in it. */
export function tenantActorOf(request: RouteRequest<unknown, unknown, unknown>): {
  tenantId: string;
  actor: TenantActor;
} {
  const { principal, grant, tenantId } = request;
  if (!principal || !grant || !tenantId) throw new TypeError("a tenant route ran without a grant");
  return { tenantId, actor: { principal, grant, requestId: request.requestId } };
}

export function memberRoutes(deps: IdentityDeps): AnyRoute[] {
  const { db } = deps;
  const inTenant = <T>(request: RouteRequest<unknown, unknown, unknown>, fn: (tx: Tx) => Promise<T>) => {
    const { tenantId, actor } = tenantActorOf(request);
    return db.withTenant({ tenantId, actorId: actor.grant.actorId, requestId: request.requestId }, fn);
  };

  async function readTenant(tenantId: string): Promise<z.infer<typeof tenantSchema>> {
    return db.withTenant({ tenantId }, async (tx) => {
      const tenant = await findTenant(tx, tenantId);
      const settings = await tenantSettings(tx, tenantId);
      if (!tenant || !settings) throw new HttpProblem("not-found", "no such tenant");
      return { ...tenant, createdAt: tenant.createdAt.toISOString(), settings };
    });
  }

  return [
    defineRoute({
      method: "POST",
      url: "/api/v1/tenants",
      operationId: "createTenant",
      summary: "Create an organization; you become its owner (your address must be verified)",
      tags: TAGS,
      permission: { kind: "authenticated" },
      body: z.object({ slug: tenantSlug, name: tenantName, timeZone: timeZone.optional(), locale: locale.optional() }),
      response: { 201: tenantSchema, 403: problemSchema, 409: problemSchema },
      handler: async (request, reply) => {
        const user = userOf(request.principal, "create organizations");
        const created = await createTenantWithOwner(deps, {
          userId: user.userId,
          tenant: request.body,
          requestId: request.requestId,
        });
        reply.code(201);
        return readTenant(created.id);
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/me/tenants",
      operationId: "listMyTenants",
      summary: "The organizations you are a member of, with your role in each",
      tags: TAGS,
      permission: { kind: "authenticated" },
      response: { 200: z.object({ items: z.array(myTenant) }) },
      handler: async (request) => {
        const principal = request.principal;
        return { items: principal?.userId ? await listMyTenants(deps, principal.userId) : [] };
      },
    }),
    defineRoute({
      method: "DELETE",
      url: "/api/v1/me/tenants/:tenantId",
      operationId: "leaveTenant",
      summary: "Leave an organization (its last owner cannot)",
      tags: TAGS,
      permission: { kind: "authenticated" },
      params: tenantParams,
      response: { 204: z.null(), 404: problemSchema, 409: problemSchema },
      handler: async (request, reply) => {
        const principal = userOf(request.principal, "leave organizations");
        await leaveTenant(deps, { principal, tenantId: request.params.tenantId, requestId: request.requestId });
        return reply.code(204).send();
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId",
      operationId: "getTenant",
      summary: "The organization: name, status and settings",
      tags: TAGS,
      permission: { kind: "tenant", permission: "tenant.read" },
      params: tenantParams,
      response: { 200: tenantSchema },
      handler: async (request) => readTenant(tenantActorOf(request).tenantId),
    }),
    defineRoute({
      method: "PATCH",
      url: "/api/v1/tenants/:tenantId/settings",
      operationId: "updateTenantSettings",
      summary: "Change the organization's time zone, locale or guest sharing",
      tags: TAGS,
      permission: { kind: "tenant", permission: "tenant.settings.update" },
      params: tenantParams,
      body: z.object({
        timeZone: timeZone.optional(),
        locale: locale.optional(),
        guestSharing: z.boolean().optional(),
      }),
      response: { 200: tenantSchema },
      handler: async (request) => {
        const { tenantId, actor } = tenantActorOf(request);
        await inTenant(request, (tx) =>
          changeTenantSettings(tx, deps.clock, deps.audit, {
            tenantId,
            ...request.body,
            actor: tenantAuditActor(actor),
            requestId: request.requestId,
          }),
        );
        return readTenant(tenantId);
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/members",
      operationId: "listMembers",
      summary: "The organization's members: display name, avatar and role only",
      tags: TAGS,
      permission: { kind: "tenant", permission: "members.list" },
      params: tenantParams,
      query: pageQuery,
      response: { 200: page(member) },
      handler: async (request) => {
        const { tenantId } = tenantActorOf(request);
        return inTenant(request, (tx) => listMembers(tx, tenantId, request.query));
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/members/:membershipId/avatar",
      operationId: "getMemberAvatar",
      summary: "A member's picture, as an image (the URL in the members list)",
      tags: TAGS,
      permission: { kind: "tenant", permission: "members.list" },
      params: memberParams,
      query: avatarQuery,
      response: { 404: problemSchema },
      handler: async (request, reply) => {
        const { tenantId } = tenantActorOf(request);
        const { membershipId } = request.params;
        return sendAvatar(reply, await inTenant(request, (tx) => memberAvatar(tx, deps, tenantId, membershipId)));
      },
    }),
    defineRoute({
      method: "PATCH",
      url: "/api/v1/tenants/:tenantId/members/:membershipId",
      operationId: "changeMemberRole",
      summary: "Change a member's role (never above your own; owners only by owners; one owner always stays)",
      tags: TAGS,
      permission: { kind: "tenant", permission: "members.manage" },
      params: memberParams,
      body: z.object({ role }),
      response: { 200: member, 403: problemSchema, 404: problemSchema, 409: problemSchema },
      handler: async (request) => {
        const { tenantId, actor } = tenantActorOf(request);
        const { membershipId } = request.params;
        return inTenant(request, (tx) =>
          changeRole(tx, deps, { tenantId, actor, membershipId, role: request.body.role }),
        );
      },
    }),
    defineRoute({
      method: "DELETE",
      url: "/api/v1/tenants/:tenantId/members/:membershipId",
      operationId: "removeMember",
      summary: "Remove a member: their access, sessions' access and personal API keys end at once",
      tags: TAGS,
      permission: { kind: "tenant", permission: "members.manage" },
      params: memberParams,
      response: { 204: z.null(), 403: problemSchema, 404: problemSchema, 409: problemSchema },
      handler: async (request, reply) => {
        const { tenantId, actor } = tenantActorOf(request);
        const { membershipId } = request.params;
        await inTenant(request, (tx) => removeMember(tx, deps, { tenantId, actor, membershipId }));
        return reply.code(204).send();
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/tenants/:tenantId/members/:membershipId/end-sessions",
      operationId: "endMemberSessions",
      summary: "Sign a member out of every session at once",
      tags: TAGS,
      permission: { kind: "tenant", permission: "members.manage" },
      params: memberParams,
      response: { 200: z.object({ sessionsEnded: z.number().int() }), 403: problemSchema, 404: problemSchema },
      handler: async (request) => {
        const { tenantId, actor } = tenantActorOf(request);
        const { membershipId } = request.params;
        const sessionsEnded = await inTenant(request, (tx) =>
          endMemberSessions(tx, deps, { tenantId, actor, membershipId }),
        );
        return { sessionsEnded };
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/tenants/:tenantId/invitations",
      operationId: "inviteMember",
      summary: "Invite someone by email (never to a role above your own); the link is valid 7 days, once",
      tags: TAGS,
      permission: { kind: "tenant", permission: "invitations.manage" },
      params: tenantParams,
      body: z.object({ email: z.string().max(254), role }),
      response: {
        201: z.object({ id: z.uuid(), role, expiresAt: z.iso.datetime() }),
        400: problemSchema,
        403: problemSchema,
      },
      handler: async (request, reply) => {
        const { tenantId, actor } = tenantActorOf(request);
        const { email, role } = request.body;
        const created = await inTenant(request, (tx) => inviteMember(tx, deps, { tenantId, actor, email, role }));
        reply.code(201);
        return { id: created.id, role, expiresAt: created.expiresAt.toISOString() };
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/invitations",
      operationId: "listInvitations",
      summary: "The organization's open invitations, with the invited addresses",
      tags: TAGS,
      permission: { kind: "tenant", permission: "invitations.manage" },
      params: tenantParams,
      query: pageQuery,
      response: { 200: page(invitation) },
      handler: async (request) => {
        const { tenantId } = tenantActorOf(request);
        return inTenant(request, (tx) => listInvitations(tx, deps, tenantId, request.query));
      },
    }),
    defineRoute({
      method: "DELETE",
      url: "/api/v1/tenants/:tenantId/invitations/:invitationId",
      operationId: "revokeInvitation",
      summary: "Revoke an open invitation: its link stops working",
      tags: TAGS,
      permission: { kind: "tenant", permission: "invitations.manage" },
      params: invitationParams,
      response: { 204: z.null(), 403: problemSchema, 404: problemSchema },
      handler: async (request, reply) => {
        const { tenantId, actor } = tenantActorOf(request);
        const { invitationId } = request.params;
        await inTenant(request, (tx) => revokeInvitation(tx, deps, { tenantId, actor, invitationId }));
        return reply.code(204).send();
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/invitations/accept",
      operationId: "acceptInvitation",
      summary: "Accept an invitation sent to your verified address",
      tags: TAGS,
      permission: { kind: "authenticated" },
      body: z.object({ token: z.string().max(200) }),
      response: {
        200: z.object({ tenantId: z.uuid(), membershipId: z.uuid(), role }),
        403: problemSchema,
        404: problemSchema,
        409: problemSchema,
      },
      handler: async (request) => {
        const principal = request.principal;
        if (!principal) throw new TypeError("an authenticated route ran without a principal");
        return acceptInvitation(deps, { principal, token: request.body.token, requestId: request.requestId });
      },
    }),
  ];
}
