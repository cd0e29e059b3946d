import { z } from "zod";
import { HttpProblem, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute, type Principal } from "../../platform/http/routes.ts";
import type { IdentityDeps } from "./deps.ts";
import { ALERT_KINDS, ALERT_SEVERITIES } from "./devices-alerts-schema.ts";
import { isSessionPrincipal } from "./sessions.ts";

/**
 * Where alerts are read (promise A6): a user's own alerts, which they mark read, and a tenant's alerts, for its
 * owners and admins (security.read): those raised in the tenant and those about its members' accounts, each
 * naming the membership, never anything of another tenant.
 */

const TAGS = ["alerts"];

const pageQuery = z.object({
  cursor: z.uuid().optional().describe("The nextCursor of the previous page"),
  limit: z.coerce.number().int().min(1).max(100).default(50),
});

const common = {
  id: z.uuid(),
  kind: z.enum(ALERT_KINDS),
  severity: z.enum(ALERT_SEVERITIES),
  details: z
    .record(z.string(), z.union([z.string(), z.number(), z.boolean(), z.null()]))
    .describe("Ids, methods and counts of what happened"),
  createdAt: z.iso.datetime(),
};

const userAlert = z
  .object({
    ...common,
    organization: z
      .object({ id: z.uuid(), name: z.string() })
      .nullable()
      .describe("The organization an alert of an organization happened in"),
    readAt: z.iso.datetime().nullable(),
  })
  .meta({ id: "UserAlert" });

const tenantAlert = z
  .object({
    ...common,
    member: z
      .object({ id: z.uuid().describe("The membership's id"), displayName: z.string() })
      .nullable()
      .describe("The member the alert is about"),
  })
  .meta({ id: "TenantAlert" });

const page = <T extends z.ZodType>(item: T) => z.object({ items: z.array(item), nextCursor: z.uuid().nullable() });

function userIdOf(principal: Principal | null): string {
  if (!isSessionPrincipal(principal)) throw new HttpProblem("unauthenticated", "sign in to read your alerts");
  return principal.userId;
}

export function alertRoutes(deps: IdentityDeps): AnyRoute[] {
  const { db, clock, audit } = deps;

  return [
    defineRoute({
      method: "GET",
      url: "/api/v1/me/alerts",
      operationId: "listMyAlerts",
      summary: "Your account's security alerts, newest first",
      tags: TAGS,
      permission: { kind: "authenticated" },
      query: pageQuery,
      response: { 200: page(userAlert), 401: problemSchema },
      handler: async (request) => {
        const userId = userIdOf(request.principal);
        const { cursor, limit } = request.query;
        const rows = await db.withPlatform((tx) =>
          tx
            .selectFrom("user_alerts as a")
            .leftJoin("tenants as t", "t.id", "a.in_tenant")
            .select(["a.id", "a.kind", "a.severity", "a.details", "a.created_at", "a.read_at", "a.in_tenant", "t.name"])
            .where("a.user_id", "=", userId)
            .$if(cursor !== undefined, (q) => q.where("a.id", "<", cursor as string))
            .orderBy("a.id", "desc")
            .limit(limit + 1)
            .execute(),
        );
        const items = rows.slice(0, limit).map((row) => ({
          id: row.id,
          kind: row.kind,
          severity: row.severity,
          details: row.details,
          createdAt: row.created_at.toISOString(),
          organization: row.in_tenant === null ? null : { id: row.in_tenant, name: row.name ?? "" },
          readAt: row.read_at?.toISOString() ?? null,
        }));
        return { items, nextCursor: rows.length > limit ? (items.at(-1)?.id ?? null) : null };
      },
    }),

    defineRoute({
      method: "POST",
      url: "/api/v1/me/alerts/:alertId/read",
      operationId: "markAlertRead",
      summary: "Mark one of your alerts read",
      tags: TAGS,
      permission: { kind: "authenticated" },
      params: z.object({ alertId: z.uuid() }),
      response: { 204: z.null(), 401: problemSchema, 403: problemSchema, 404: problemSchema },
      handler: async (request, reply) => {
        const userId = userIdOf(request.principal);
        const { alertId } = request.params;
        // Another user's alert is answered exactly as one that does not exist.
        const found = await db.withPlatform(
          async (tx) => {
            const alert = await tx
              .selectFrom("user_alerts")
              .select("read_at")
              .where("id", "=", alertId)
              .where("user_id", "=", userId)
              .forUpdate()
              .executeTakeFirst();
            if (!alert) return false;
            if (alert.read_at !== null) return true;
            await tx.updateTable("user_alerts").set({ read_at: clock.now() }).where("id", "=", alertId).execute();
            await audit.record(tx, {
              tenantId: null,
              stream: "changes",
              actor: { kind: "user", id: userId },
              action: "alert.marked-read",
              target: { type: "user-alert", id: alertId },
              subjects: [userId],
              requestId: request.requestId,
            });
            return true;
          },
          { actorId: userId, requestId: request.requestId },
        );
        if (!found) throw new HttpProblem("not-found", "no such alert");
        return reply.code(204).send();
      },
    }),

    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/security/alerts",
      operationId: "listTenantAlerts",
      summary: "The organization's security alerts, newest first: its own and those about its members' accounts",
      tags: TAGS,
      permission: { kind: "tenant", permission: "security.read" },
      params: z.object({ tenantId: z.uuid() }),
      query: pageQuery,
      response: { 200: page(tenantAlert) },
      handler: async (request) => {
        const { tenantId, grant } = request;
        if (!tenantId || !grant) throw new TypeError("a tenant route ran without a grant");
        const { cursor, limit } = request.query;
        const rows = await db.withTenant({ tenantId, actorId: grant.actorId, requestId: request.requestId }, (tx) =>
          tx
            .selectFrom("tenant_alerts as a")
            .leftJoin("memberships as m", (join) =>
              join.onRef("m.tenant_id", "=", "a.tenant_id").onRef("m.id", "=", "a.membership_id"),
            )
            .leftJoin("users as u", "u.id", "m.user_id")
            .select(["a.id", "a.kind", "a.severity", "a.details", "a.created_at", "a.membership_id", "u.display_name"])
            .where("a.tenant_id", "=", tenantId)
            .$if(cursor !== undefined, (q) => q.where("a.id", "<", cursor as string))
            .orderBy("a.id", "desc")
            .limit(limit + 1)
            .execute(),
        );
        const items = rows.slice(0, limit).map((row) => ({
          id: row.id,
          kind: row.kind,
          severity: row.severity,
          details: row.details,
          createdAt: row.created_at.toISOString(),
          member: row.membership_id === null ? null : { id: row.membership_id, displayName: row.display_name ?? "" },
        }));
        return { items, nextCursor: rows.length > limit ? (items.at(-1)?.id ?? null) : null };
      },
    }),
  ];
}
