import type { Actor } from "../../platform/audit/event.ts";
import { blindIndex, NormalisationError, normaliseEmail } from "../../platform/crypto/blind-index.ts";
import type { Binding } from "../../platform/crypto/envelope.ts";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import type { Principal } from "../../platform/http/routes.ts";
import { isUuid, uuidv7 } from "../../platform/ids.ts";
import { findTenant } from "../../platform/tenancy/tenants.ts";
import type { IdentityDeps } from "./deps.ts";
import { pageLink } from "./links.ts";
import { invitationMail } from "./member-mail.ts";
import {
  activeMembership,
  addMembership,
  mayManage,
  type Page,
  refuse,
  type TenantActor,
  tenantAuditActor,
} from "./memberships.ts";
import type { MembershipRole } from "./roles.ts";
import { hashToken, isTokenShaped, newToken, sameHash } from "./tokens.ts";
import { findUserById, userEmail } from "./users.ts";

/**
 * Invitations by email (promise T6). The token is `<tenant id>.<secret>`: invitations are tenant rows under
 * row-level security, so the tenant must be known before the lookup; only the SHA-256 of the secret is
 * stored. The invited address is sealed under the tenant's key with a tenant-scope blind index, and only an
 * account whose verified address has that index may accept, once, before the invitation expires.
 */

export const INVITATION_DAYS = 7;
const DAY_MS = 24 * 60 * 60 * 1000;

const emailBinding = (tenantId: string, id: string): Binding => ({
  tenantId,
  table: "invitations",
  column: "email",
  rowId: id,
});

const emailIndex = (deps: Pick<IdentityDeps, "keyRing">, tenantId: string, normalised: string) =>
  blindIndex(deps.keyRing.blindIndexKey({ tenantId }), "email", normalised);

export interface NewInvitation {
  tenantId: string;
  email: string;
  role: MembershipRole;
  /** The inviting membership; null when the operator invites the first owner of a tenant it created. */
  invitedBy: string | null;
  actor: Actor;
  requestId: string;
}

/**
 * Records an invitation and mails its link, in the tenant's transaction. The audit event names the role and
 * the expiry, never the address.
 */
export async function createInvitation(
  tx: Tx,
  deps: Pick<IdentityDeps, "keyRing" | "audit" | "clock" | "mailer" | "config">,
  invitation: NewInvitation,
): Promise<{ id: string; expiresAt: Date }> {
  const { tenantId, role } = invitation;
  let email: string;
  try {
    email = normaliseEmail(invitation.email);
  } catch (error) {
    if (error instanceof NormalisationError) throw new HttpProblem("validation", "not a valid email address");
    throw error;
  }
  const tenant = await findTenant(tx, tenantId);
  if (!tenant) throw new TypeError("no such tenant in this transaction");
  const now = deps.clock.now();
  const id = uuidv7(now.getTime());
  const expiresAt = new Date(now.getTime() + INVITATION_DAYS * DAY_MS);
  const token = `${tenantId}.${newToken()}`;
  await tx
    .insertInto("invitations")
    .values({
      tenant_id: tenantId,
      id,
      email: await deps.keyRing.encrypt(tx, { scope: "tenant", tenantId }, email, emailBinding(tenantId, id)),
      email_index: emailIndex(deps, tenantId, email),
      role,
      token_hash: hashToken(token),
      invited_by: invitation.invitedBy,
      created_at: now,
      expires_at: expiresAt,
    })
    .execute();
  await deps.mailer.send(tx, {
    tenantId,
    subjectId: id,
    purpose: "transactional",
    channel: "email",
    to: email,
    template: invitationMail.name,
    data: {
      organization: tenant.name,
      role,
      link: pageLink(deps.config.publicUrl, "invitation", token),
      days: INVITATION_DAYS,
    },
  });
  await deps.audit.record(tx, {
    tenantId,
    stream: "changes",
    actor: invitation.actor,
    action: "membership.invited",
    target: { type: "invitation", id },
    details: { role, expiresAt: expiresAt.toISOString() },
    requestId: invitation.requestId,
  });
  return { id, expiresAt };
}

/** A member invites someone: never to a role above the inviter's own (so owners only by owners). */
export async function inviteMember(
  tx: Tx,
  deps: Pick<IdentityDeps, "keyRing" | "audit" | "clock" | "mailer" | "config">,
  request: { tenantId: string; actor: TenantActor; email: string; role: MembershipRole },
): Promise<{ id: string; expiresAt: Date }> {
  const { tenantId, actor, role } = request;
  if (!mayManage(actor.grant.role as MembershipRole, role)) {
    refuse(deps, actor, tenantId, "invitation", { type: "invitation", id: null }, "rank");
  }
  return createInvitation(tx, deps, {
    tenantId,
    email: request.email,
    role,
    invitedBy: actor.grant.membershipId,
    actor: tenantAuditActor(actor),
    requestId: actor.requestId,
  });
}

export interface PendingInvitation {
  id: string;
  email: string;
  role: MembershipRole;
  createdAt: string;
  expiresAt: string;
}

/** The tenant's invitations still open (neither accepted, revoked nor expired), oldest first. */
export async function listInvitations(
  tx: Tx,
  deps: Pick<IdentityDeps, "keyRing" | "clock">,
  tenantId: string,
  page: { limit: number; cursor?: string | undefined },
): Promise<Page<PendingInvitation>> {
  const rows = await tx
    .selectFrom("invitations")
    .select(["id", "email", "role", "created_at", "expires_at"])
    .where("tenant_id", "=", tenantId)
    .where("accepted_at", "is", null)
    .where("revoked_at", "is", null)
    .where("expires_at", ">", deps.clock.now())
    .$if(page.cursor !== undefined, (q) => q.where("id", ">", page.cursor as string))
    .orderBy("id")
    .limit(page.limit + 1)
    .execute();
  const items: PendingInvitation[] = [];
  for (const row of rows.slice(0, page.limit)) {
    items.push({
      id: row.id,
      email: await deps.keyRing.decrypt(tx, row.email, emailBinding(tenantId, row.id)),
      role: row.role,
      createdAt: row.created_at.toISOString(),
      expiresAt: row.expires_at.toISOString(),
    });
  }
  return { items, nextCursor: rows.length > page.limit ? (items.at(-1)?.id ?? null) : null };
}

/** Revokes an open invitation; its link stops working. Rank rules apply as for inviting. */
export async function revokeInvitation(
  tx: Tx,
  deps: Pick<IdentityDeps, "audit" | "clock">,
  request: { tenantId: string; actor: TenantActor; invitationId: string },
): Promise<void> {
  const { tenantId, actor, invitationId } = request;
  const now = deps.clock.now();
  const row = await tx
    .selectFrom("invitations")
    .select(["id", "role"])
    .where("tenant_id", "=", tenantId)
    .where("id", "=", invitationId)
    .where("accepted_at", "is", null)
    .where("revoked_at", "is", null)
    .where("expires_at", ">", now)
    .forUpdate()
    .executeTakeFirst();
  if (!row) throw new HttpProblem("not-found", "no such invitation");
  if (!mayManage(actor.grant.role as MembershipRole, row.role)) {
    refuse(deps, actor, tenantId, "invitation-revocation", { type: "invitation", id: invitationId }, "rank");
  }
  await tx
    .updateTable("invitations")
    .set({ revoked_at: now })
    .where("tenant_id", "=", tenantId)
    .where("id", "=", invitationId)
    .execute();
  await deps.audit.record(tx, {
    tenantId,
    stream: "changes",
    actor: tenantAuditActor(actor),
    action: "membership.invitation-revoked",
    target: { type: "invitation", id: invitationId },
    details: { role: row.role },
    requestId: actor.requestId,
  });
}

/** The tenant and secret of an invitation token, or undefined for anything that is not one. */
function parseInvitationToken(token: string): { tenantId: string; secret: string } | undefined {
  const [tenantId = "", secret, ...rest] = token.split(".");
  if (rest.length > 0 || !isUuid(tenantId) || !isTokenShaped(secret)) return undefined;
  return { tenantId: tenantId.toLowerCase(), secret };
}

type Refusal = "unknown" | "used" | "revoked" | "expired" | "inactive-tenant" | "unverified" | "other-address";

/**
 * Accepts an invitation for the signed-in user: the invitation must be open and its address must be the
 * user's verified one. Every refusal answers the same 404, so a token reveals nothing about the invitation
 * or the account it was meant for; the reason goes to the user's platform audit chain. A user who is already
 * a member gets 409 (only the invited account gets that far). Operators hold no memberships.
 */
export async function acceptInvitation(
  deps: Pick<IdentityDeps, "db" | "keyRing" | "audit" | "clock">,
  request: { principal: Principal; token: string; requestId: string },
): Promise<{ tenantId: string; membershipId: string; role: MembershipRole }> {
  const { principal, requestId } = request;
  if (principal.kind !== "user" || !principal.userId) {
    throw new HttpProblem("forbidden", "only users can accept invitations; operators hold no memberships");
  }
  const userId = principal.userId;
  const notFound = () => new HttpProblem("not-found", "this invitation does not exist, was used or has expired");
  const parsed = parseInvitationToken(request.token);
  if (!parsed) throw notFound();
  const { tenantId } = parsed;
  return deps.db.withTenant({ tenantId, requestId }, async (tx) => {
    const now = deps.clock.now();
    const refused = (reason: Refusal, invitationId: string | null): never => {
      deps.audit.recordDenied({
        stream: "security",
        actor: { kind: "user", id: userId },
        action: "membership.invitation-refused",
        target: { type: "invitation", id: invitationId },
        details: { tenant: tenantId, reason },
        requestId,
      });
      throw notFound();
    };
    const invitation = await tx
      .selectFrom("invitations")
      .select(["id", "role", "email_index", "invited_by", "expires_at", "accepted_at", "revoked_at"])
      .where("tenant_id", "=", tenantId)
      .where("token_hash", "=", hashToken(request.token))
      .forUpdate()
      .executeTakeFirst();
    if (!invitation) return refused("unknown", null);
    if (invitation.accepted_at !== null) return refused("used", invitation.id);
    if (invitation.revoked_at !== null) return refused("revoked", invitation.id);
    if (invitation.expires_at.getTime() <= now.getTime()) return refused("expired", invitation.id);
    if ((await findTenant(tx, tenantId))?.status !== "active") return refused("inactive-tenant", invitation.id);
    const user = await findUserById(tx, userId);
    if (!user || user.email_verified_at === null) return refused("unverified", invitation.id);
    const address = normaliseEmail(await userEmail(tx, deps.keyRing, user));
    if (!sameHash(emailIndex(deps, tenantId, address), invitation.email_index)) {
      return refused("other-address", invitation.id);
    }
    if (await activeMembership(tx, tenantId, userId)) {
      throw new HttpProblem("conflict", "you are already a member of this organization");
    }
    const membershipId = await addMembership(tx, now, {
      tenantId,
      userId,
      role: invitation.role,
      invitedBy: invitation.invited_by,
    });
    await tx
      .updateTable("invitations")
      .set({ accepted_at: now, accepted_by: membershipId })
      .where("tenant_id", "=", tenantId)
      .where("id", "=", invitation.id)
      .execute();
    await deps.audit.record(tx, {
      tenantId,
      stream: "changes",
      actor: { kind: "user", id: membershipId },
      action: "membership.joined",
      target: { type: "membership", id: membershipId },
      details: { role: invitation.role, invitation: invitation.id },
      requestId,
    });
    return { tenantId, membershipId, role: invitation.role };
  });
}
