import type { Actor } from "../../platform/audit/event.ts";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import type { Grant, Principal } from "../../platform/http/routes.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { type AlertDeps, raiseAlert } from "./alerts.ts";
import { memberAvatarUrl } from "./avatars.ts";
import type { IdentityDeps } from "./deps.ts";
import { lowerRole, type MembershipRole, outranks } from "./roles.ts";
import { bumpPrivilegeEpoch, revokeUserSessions } from "./sessions.ts";

/** The roles whose grant raises an alert: they administer the tenant and its people. */
const PRIVILEGED_ROLES: readonly MembershipRole[] = ["owner", "admin"];

export interface ActiveMembership {
  id: string;
  userId: string;
  role: MembershipRole;
}

/** The user's live membership of the tenant of `tx`, if any (the access check of every tenant request). */
export async function activeMembership(
  tx: Tx,
  tenantId: string,
  userId: string,
): Promise<ActiveMembership | undefined> {
  const row = await tx
    .selectFrom("memberships")
    .select(["id", "user_id", "role"])
    .where("tenant_id", "=", tenantId)
    .where("user_id", "=", userId)
    .where("status", "=", "active")
    .executeTakeFirst();
  return row && { id: row.id, userId: row.user_id, role: row.role };
}

export interface NewMembership {
  tenantId: string;
  /** Chosen by the caller when the id must be known first (the creator of a tenant acts as it). */
  id?: string;
  userId: string;
  role: MembershipRole;
  invitedBy: string | null;
}

/**
 * Adds a live membership and its row in the platform's index of (user, tenant), in the transaction of
 * the tenant: the two never disagree. Returns the membership's id.
 */
export async function addMembership(tx: Tx, now: Date, membership: NewMembership): Promise<string> {
  const id = membership.id ?? uuidv7(now.getTime());
  await tx
    .insertInto("memberships")
    .values({
      tenant_id: membership.tenantId,
      id,
      user_id: membership.userId,
      role: membership.role,
      status: "active",
      created_at: now,
      invited_by: membership.invitedBy,
    })
    .execute();
  await tx
    .insertInto("user_tenants")
    .values({ user_id: membership.userId, member_of: membership.tenantId, membership_id: id })
    .execute();
  return id;
}

/** Who acts on a tenant route: the principal (for the platform chain) and its grant (for the tenant's). */
export interface TenantActor {
  principal: Principal;
  grant: Grant;
  requestId: string;
}

/** The actor of the tenant's chain: the membership or API key that acts there. */
export function tenantAuditActor(actor: TenantActor): Actor {
  return { kind: actor.principal.kind === "api-key" ? "api-key" : "user", id: actor.grant.actorId };
}

/** The actor of the platform chain, where denials go: the user or API key itself. */
function platformAuditActor(actor: TenantActor): Actor {
  return { kind: actor.principal.kind === "api-key" ? "api-key" : "user", id: actor.principal.actorId };
}

export type MemberOperation = "role-change" | "removal" | "end-sessions" | "invitation" | "invitation-revocation";

/**
 * Refuses a change of the tenant's people: the refusal is recorded on the actor's platform chain after the
 * transaction rolls back (never on the tenant's chain), then the request fails.
 */
export function refuse(
  deps: Pick<IdentityDeps, "audit">,
  actor: TenantActor,
  tenantId: string,
  operation: MemberOperation,
  target: { type: "membership" | "invitation"; id: string | null },
  reason: "rank" | "last-owner",
): never {
  deps.audit.recordDenied({
    stream: "security",
    actor: platformAuditActor(actor),
    action: "membership.change-refused",
    target,
    details: { tenant: tenantId, operation, reason },
    requestId: actor.requestId,
  });
  if (reason === "last-owner") throw new HttpProblem("conflict", "an organization keeps at least one owner");
  throw new HttpProblem("forbidden", "nobody manages a role above their own; only owners manage owners");
}

/**
 * Whether a role may act on a member holding `current` and give them `next`: nobody manages or grants a role
 * above their own (so only owners grant, demote or remove owners).
 */
export function mayManage(actorRole: MembershipRole, current: MembershipRole, next: MembershipRole = current): boolean {
  return !outranks(current, actorRole) && !outranks(next, actorRole);
}

interface LockedMember {
  id: string;
  user_id: string;
  role: MembershipRole;
}

/**
 * Locks, in one statement and in id order (so two changes never deadlock), the tenant's live owners and
 * the live rows of the actor and the target. Every change of the tenant's people takes this lock first, so
 * two owners demoting each other at once run one after the other and the second sees one owner left.
 * Rows changed by a transaction this one waited for are read as committed (READ COMMITTED re-checks them).
 */
async function lockMembers(tx: Tx, tenantId: string, ids: readonly string[]) {
  const rows: LockedMember[] = await tx
    .selectFrom("memberships")
    .select(["id", "user_id", "role"])
    .where("tenant_id", "=", tenantId)
    .where("status", "=", "active")
    .where((eb) => eb.or([eb("role", "=", "owner"), eb("id", "in", ids)]))
    .orderBy("id")
    .forUpdate()
    .execute();
  return {
    find: (id: string | null) => rows.find((row) => row.id === id),
    owners: rows.filter((row) => row.role === "owner").length,
  };
}

/**
 * The role the actor acts with now: its grant's, lowered to its membership's current role (which may have
 * changed since the grant was checked). A service key has no membership: its grant is all there is.
 */
function currentRole(actor: TenantActor, locked: Awaited<ReturnType<typeof lockMembers>>): MembershipRole {
  const role = actor.grant.role as MembershipRole;
  if (actor.grant.membershipId === null) return role;
  const own = locked.find(actor.grant.membershipId);
  // The actor's membership ended since its request was let in.
  if (!own) throw new HttpProblem("not-found", "no such tenant");
  return lowerRole(role, own.role);
}

const noSuchMember = () => new HttpProblem("not-found", "no such member");

async function lockedTarget(tx: Tx, tenantId: string, actor: TenantActor, membershipId: string) {
  const ids = [membershipId, ...(actor.grant.membershipId ? [actor.grant.membershipId] : [])];
  const locked = await lockMembers(tx, tenantId, ids);
  const target = locked.find(membershipId);
  if (!target) throw noSuchMember();
  return { locked, target, role: currentRole(actor, locked) };
}

export interface MemberView {
  id: string;
  displayName: string;
  /** The URL of the member's picture (GET …/members/:membershipId/avatar), or null when there is none. */
  avatar: string | null;
  role: MembershipRole;
  joinedAt: string;
}

/**
 * What members see of each other (promise T7): the display name and avatar, with the membership's role and
 * date. Never the address, the user id or anything else of the account.
 */
async function memberViews(
  tx: Tx,
  tenantId: string,
  rows: readonly { id: string; user_id: string; role: MembershipRole; created_at: Date }[],
): Promise<MemberView[]> {
  if (rows.length === 0) return [];
  const users = await tx
    .selectFrom("users")
    .select(["id", "display_name", "avatar_file_id"])
    .where(
      "id",
      "in",
      rows.map((row) => row.user_id),
    )
    .execute();
  const profiles = new Map(users.map((user) => [user.id, user]));
  return rows.map((row) => ({
    id: row.id,
    displayName: profiles.get(row.user_id)?.display_name ?? "",
    avatar: memberAvatarUrl(tenantId, row.id, profiles.get(row.user_id)?.avatar_file_id ?? null),
    role: row.role,
    joinedAt: row.created_at.toISOString(),
  }));
}

export interface Page<T> {
  items: T[];
  /** Pass as `cursor` for the next page; null on the last one. */
  nextCursor: string | null;
}

/** The tenant's live members in the order they joined (ids are UUIDv7), `limit` at a time after `cursor`. */
export async function listMembers(
  tx: Tx,
  tenantId: string,
  page: { limit: number; cursor?: string | undefined },
): Promise<Page<MemberView>> {
  const rows = await tx
    .selectFrom("memberships")
    .select(["id", "user_id", "role", "created_at"])
    .where("tenant_id", "=", tenantId)
    .where("status", "=", "active")
    .$if(page.cursor !== undefined, (q) => q.where("id", ">", page.cursor as string))
    .orderBy("id")
    .limit(page.limit + 1)
    .execute();
  const items = await memberViews(tx, tenantId, rows.slice(0, page.limit));
  return { items, nextCursor: rows.length > page.limit ? (items.at(-1)?.id ?? null) : null };
}

/**
 * Changes a member's role under the rank rules and the last-owner rule. The member's sessions rotate on
 * their next request (privilege epoch). Changing a role to the one it is changes nothing.
 */
export async function changeRole(
  tx: Tx,
  deps: AlertDeps,
  change: { tenantId: string; actor: TenantActor; membershipId: string; role: MembershipRole },
): Promise<MemberView> {
  const { tenantId, actor, membershipId, role: next } = change;
  const { locked, target, role } = await lockedTarget(tx, tenantId, actor, membershipId);
  const denied = (reason: "rank" | "last-owner") =>
    refuse(deps, actor, tenantId, "role-change", { type: "membership", id: membershipId }, reason);
  if (!mayManage(role, target.role, next)) denied("rank");
  const now = deps.clock.now();
  if (target.role !== next) {
    if (target.role === "owner" && locked.owners <= 1) denied("last-owner");
    await tx
      .updateTable("memberships")
      .set({ role: next, role_changed_at: now })
      .where("tenant_id", "=", tenantId)
      .where("id", "=", membershipId)
      .execute();
    await bumpPrivilegeEpoch(tx, target.user_id);
    await deps.audit.record(tx, {
      tenantId,
      stream: "changes",
      actor: tenantAuditActor(actor),
      action: "membership.role-changed",
      target: { type: "membership", id: membershipId },
      details: { from: target.role, to: next },
      requestId: actor.requestId,
    });
    // Power over the tenant changed hands: the member and the tenant's owners and admins are told (A6).
    if (PRIVILEGED_ROLES.includes(next) && outranks(next, target.role)) {
      await raiseAlert(deps, tx, {
        kind: "privileged-role-granted",
        userId: target.user_id,
        tenantId,
        details: { membership: membershipId, role: next, from: target.role },
        requestId: actor.requestId,
      });
    }
  }
  const row = await tx
    .selectFrom("memberships")
    .select(["id", "user_id", "role", "created_at"])
    .where("tenant_id", "=", tenantId)
    .where("id", "=", membershipId)
    .executeTakeFirstOrThrow();
  const [view] = await memberViews(tx, tenantId, [row]);
  return view as MemberView;
}

/**
 * Ends a membership: the row stays, marked removed (history and audit references keep pointing at it); the
 * platform's (user, tenant) row goes, so the tenant leaves the user's list at once; the member's personal API
 * keys are revoked (verification already refuses them once the membership is removed: this keeps the record
 * straight). The tenant's last owner can neither be removed nor leave. A member leaving acts on itself.
 */
export async function removeMember(
  tx: Tx,
  deps: Pick<IdentityDeps, "audit" | "clock">,
  removal: { tenantId: string; actor: TenantActor; membershipId: string },
): Promise<void> {
  const { tenantId, actor, membershipId } = removal;
  const { locked, target, role } = await lockedTarget(tx, tenantId, actor, membershipId);
  const denied = (reason: "rank" | "last-owner") =>
    refuse(deps, actor, tenantId, "removal", { type: "membership", id: membershipId }, reason);
  if (!mayManage(role, target.role)) denied("rank");
  if (target.role === "owner" && locked.owners <= 1) denied("last-owner");
  const now = deps.clock.now();
  const by = actor.grant.membershipId;
  await tx
    .updateTable("memberships")
    .set({ status: "removed", removed_at: now, removed_by: by })
    .where("tenant_id", "=", tenantId)
    .where("id", "=", membershipId)
    .execute();
  await tx.deleteFrom("user_tenants").where("user_id", "=", target.user_id).where("member_of", "=", tenantId).execute();
  const keys = await tx
    .updateTable("api_keys")
    .set({ revoked_at: now, revoked_by: by })
    .where("tenant_id", "=", tenantId)
    .where("membership_id", "=", membershipId)
    .where("revoked_at", "is", null)
    .executeTakeFirst();
  await bumpPrivilegeEpoch(tx, target.user_id);
  await deps.audit.record(tx, {
    tenantId,
    stream: "changes",
    actor: tenantAuditActor(actor),
    action: "membership.removed",
    target: { type: "membership", id: membershipId },
    details: { role: target.role, left: by === membershipId, apiKeysRevoked: Number(keys.numUpdatedRows) },
    requestId: actor.requestId,
  });
}

/**
 * Signs a member out of every session at once, with no grace (sessions are global: this ends them in
 * every tenant, which is what an admin who fears a stolen session needs). Rank rules apply: an admin cannot
 * end an owner's sessions.
 */
export async function endMemberSessions(
  tx: Tx,
  deps: Pick<IdentityDeps, "audit" | "clock">,
  request: { tenantId: string; actor: TenantActor; membershipId: string },
): Promise<number> {
  const { tenantId, actor, membershipId } = request;
  const { target, role } = await lockedTarget(tx, tenantId, actor, membershipId);
  if (!mayManage(role, target.role)) {
    refuse(deps, actor, tenantId, "end-sessions", { type: "membership", id: membershipId }, "rank");
  }
  const count = await revokeUserSessions(tx, target.user_id, "ended-by-admin", deps.clock.now());
  await deps.audit.record(tx, {
    tenantId,
    stream: "changes",
    actor: tenantAuditActor(actor),
    action: "membership.sessions-ended",
    target: { type: "membership", id: membershipId },
    details: { sessions: count },
    requestId: actor.requestId,
  });
  return count;
}

/** A member leaves a tenant of their own accord (any role, guests included), unless they are its last owner. */
export async function leaveTenant(
  deps: Pick<IdentityDeps, "db" | "audit" | "clock">,
  leave: { principal: Principal; tenantId: string; requestId: string },
): Promise<void> {
  const { principal, tenantId, requestId } = leave;
  await deps.db.withTenant({ tenantId, requestId }, async (tx) => {
    const own = principal.userId ? await activeMembership(tx, tenantId, principal.userId) : undefined;
    if (!own) throw new HttpProblem("not-found", "no such tenant");
    const grant = { actorId: own.id, membershipId: own.id, role: own.role };
    await removeMember(tx, deps, { tenantId, actor: { principal, grant, requestId }, membershipId: own.id });
  });
}
