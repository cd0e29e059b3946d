import type { Actor } from "../../platform/audit/event.ts";
import type { TenantStatus } from "../../platform/db/schema.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { createTenant, findTenant, type NewTenant, type Tenant } from "../../platform/tenancy/tenants.ts";
import type { IdentityDeps } from "./deps.ts";
import { createInvitation } from "./invitations.ts";
import { addMembership, type Page } from "./memberships.ts";
import type { MembershipRole } from "./roles.ts";
import { bumpPrivilegeEpoch } from "./sessions.ts";
import { findUserById } from "./users.ts";

/**
 * The identity module's tenant flows: a user creates a tenant and becomes its owner; the operator creates
 * one for an owner it invites, suspends and reinstates tenants; a user lists the tenants they are in.
 */

/** Whether `error` is PostgreSQL's unique violation of `constraint` (PGlite and pg both carry the fields). */
function isUniqueViolation(error: unknown, constraint: string): boolean {
  const fields = error as { code?: unknown; constraint?: unknown };
  return fields?.code === "23505" && fields.constraint === constraint;
}

/** createTenant, answering 409 for a slug already taken (found by the unique index, so no race). */
async function createTenantOrConflict(...args: Parameters<typeof createTenant>): Promise<Tenant> {
  try {
    return await createTenant(...args);
  } catch (error) {
    if (isUniqueViolation(error, "tenants_slug_key")) throw new HttpProblem("conflict", "this slug is taken");
    throw error;
  }
}

/**
 * A user creates a tenant and becomes its owner, in one transaction: the tenant, its key, its first owner
 * (with the platform's (user, tenant) row) and their events. Only an account with a verified address may.
 * The owner's membership is the actor of the tenant's first events.
 */
export async function createTenantWithOwner(
  deps: Pick<IdentityDeps, "db" | "clock" | "keyRing" | "audit">,
  request: { userId: string; tenant: NewTenant; requestId: string },
): Promise<Tenant & { membershipId: string }> {
  const now = deps.clock.now();
  const membershipId = uuidv7(now.getTime());
  const actor: Actor = { kind: "user", id: membershipId };
  const tenant = await createTenantOrConflict(
    deps.db,
    deps.clock,
    request.tenant,
    deps.keyRing,
    deps.audit,
    actor,
    async (tx, created) => {
      const user = await findUserById(tx, request.userId);
      if (!user || user.email_verified_at === null) {
        throw new HttpProblem("forbidden", "verify your email address before creating an organization");
      }
      await addMembership(tx, now, {
        tenantId: created.id,
        id: membershipId,
        userId: request.userId,
        role: "owner",
        invitedBy: null,
      });
      await deps.audit.record(tx, {
        tenantId: created.id,
        stream: "changes",
        actor,
        action: "membership.joined",
        target: { type: "membership", id: membershipId },
        details: { role: "owner", created: true },
        requestId: request.requestId,
      });
    },
  );
  return { ...tenant, membershipId };
}

export interface MyTenant {
  id: string;
  slug: string;
  name: string;
  status: TenantStatus;
  role: MembershipRole;
}

/**
 * The tenants a user is in: the platform's (user, tenant) index names them, and each role is read in its
 * own tenant's context, under that tenant's row-level security (never across tenants in one query).
 */
export async function listMyTenants(deps: Pick<IdentityDeps, "db">, userId: string): Promise<MyTenant[]> {
  const rows = await deps.db.withPlatform((tx) =>
    tx
      .selectFrom("user_tenants as u")
      .innerJoin("tenants as t", "t.id", "u.member_of")
      .select(["t.id", "t.slug", "t.name", "t.status", "u.membership_id"])
      .where("u.user_id", "=", userId)
      .where("t.status", "!=", "deleted")
      .orderBy("t.name")
      .orderBy("t.id")
      .execute(),
  );
  const tenants: MyTenant[] = [];
  for (const row of rows) {
    const [membership] = await deps.db.selectAsTenant({ tenantId: row.id }, (q) =>
      q
        .selectFrom("memberships")
        .select("role")
        .where("tenant_id", "=", row.id)
        .where("id", "=", row.membership_id)
        .where("status", "=", "active"),
    );
    if (membership)
      tenants.push({ id: row.id, slug: row.slug, name: row.name, status: row.status, role: membership.role });
  }
  return tenants;
}

/**
 * The operator creates a tenant with no member and invites its first owner by email (the invitation has no
 * inviting membership). Recorded on the tenant's chain (tenant.created, membership.invited) and on the
 * operator's platform chain (operator.tenant-created), all in the one transaction.
 */
export async function createTenantForOwner(
  deps: Pick<IdentityDeps, "db" | "clock" | "keyRing" | "audit" | "mailer" | "config">,
  request: { operatorId: string; tenant: NewTenant; ownerEmail: string; requestId: string },
): Promise<Tenant & { invitationId: string }> {
  const actor: Actor = { kind: "operator", id: request.operatorId };
  let invitationId = "";
  const tenant = await createTenantOrConflict(
    deps.db,
    deps.clock,
    request.tenant,
    deps.keyRing,
    deps.audit,
    actor,
    async (tx, created) => {
      ({ id: invitationId } = await createInvitation(tx, deps, {
        tenantId: created.id,
        email: request.ownerEmail,
        role: "owner",
        invitedBy: null,
        actor,
        requestId: request.requestId,
      }));
      await deps.audit.record(tx, {
        tenantId: null,
        stream: "changes",
        actor,
        action: "operator.tenant-created",
        target: { type: "tenant", id: created.id },
        details: {},
        requestId: request.requestId,
      });
    },
  );
  return { ...tenant, invitationId };
}

/** Every tenant, for the operator: the registry row only (no members, no addresses), in creation order. */
export async function listAllTenants(
  deps: Pick<IdentityDeps, "db">,
  page: { limit: number; cursor?: string | undefined },
): Promise<Page<Tenant>> {
  const rows = await deps.db.withPlatform((tx) =>
    tx
      .selectFrom("tenants")
      .selectAll()
      .$if(page.cursor !== undefined, (q) => q.where("id", ">", page.cursor as string))
      .orderBy("id")
      .limit(page.limit + 1)
      .execute(),
  );
  const items = rows
    .slice(0, page.limit)
    .map((row) => ({ id: row.id, slug: row.slug, name: row.name, status: row.status, createdAt: row.created_at }));
  return { items, nextCursor: rows.length > page.limit ? (items.at(-1)?.id ?? null) : null };
}

const TRANSITIONS = {
  suspend: { from: "active", to: "suspended", action: "tenant.suspended" },
  reinstate: { from: "suspended", to: "active", action: "tenant.reinstated" },
} as const;

/**
 * The operator suspends a tenant (its members are refused until it is reinstated) or reinstates it. Every
 * member's sessions rotate on their next request (privilege epoch). Recorded on the operator's platform chain.
 */
export async function setTenantSuspended(
  deps: Pick<IdentityDeps, "db" | "audit">,
  request: { operatorId: string; tenantId: string; move: keyof typeof TRANSITIONS; requestId: string },
): Promise<Tenant> {
  const { from, to, action } = TRANSITIONS[request.move];
  const { tenantId } = request;
  return deps.db.withTenant({ tenantId, actorId: request.operatorId, requestId: request.requestId }, async (tx) => {
    const row = await tx
      .updateTable("tenants")
      .set({ status: to })
      .where("id", "=", tenantId)
      .where("status", "=", from)
      .returningAll()
      .executeTakeFirst();
    if (!row) {
      const tenant = await findTenant(tx, tenantId);
      if (!tenant) throw new HttpProblem("not-found", "no such tenant");
      throw new HttpProblem("conflict", `the organization is ${tenant.status}, not ${from}`);
    }
    const members = await tx.selectFrom("user_tenants").select("user_id").where("member_of", "=", tenantId).execute();
    for (const member of members) await bumpPrivilegeEpoch(tx, member.user_id);
    await deps.audit.record(tx, {
      tenantId: null,
      stream: "changes",
      actor: { kind: "operator", id: request.operatorId },
      action,
      target: { type: "tenant", id: tenantId },
      details: { from, to, members: members.length },
      requestId: request.requestId,
    });
    return { id: row.id, slug: row.slug, name: row.name, status: row.status, createdAt: row.created_at };
  });
}
