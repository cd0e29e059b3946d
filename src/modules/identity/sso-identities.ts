import type { Tx } from "../../platform/db/index.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { IdentityDeps } from "./deps.ts";
import { activeMembership, addMembership } from "./memberships.ts";
import type { MembershipRole } from "./roles.ts";
import { SsoRefused } from "./sso-refusals.ts";

/**
 * Federated identities (promise A3): a provider's person is (configuration, issuer, subject), linked to a
 * membership of the configuration's tenant. A sign-in finds the identity by those three only — never by email,
 * which a provider may reassign — and signs in the user of that membership while it is live.
 */

/** What joining just in time makes of a person: an ordinary member, whom an admin may promote. */
export const JIT_ROLE: MembershipRole = "member";

/** A person as a tenant's provider proved them, in the tenant of the configuration. */
export interface SsoAssertion {
  tenantId: string;
  configurationId: string;
  issuer: string;
  subject: string;
  /** The provider's `amr` included a value the tenant accepts as multi-factor. */
  mfa: boolean;
}

/**
 * The user a linked identity signs in, in the tenant's transaction; undefined when the identity is not linked.
 * The user must still be a member (a removed member is not let back in by the provider; a member invited again
 * is, and the identity follows the new membership). Refuses "not-a-member" otherwise.
 */
export async function linkedUser(tx: Tx, now: Date, assertion: SsoAssertion): Promise<string | undefined> {
  const { tenantId } = assertion;
  const row = await tx
    .selectFrom("sso_identities as i")
    .innerJoin("memberships as m", (join) =>
      join.onRef("m.tenant_id", "=", "i.tenant_id").onRef("m.id", "=", "i.membership_id"),
    )
    .select(["i.id", "m.user_id"])
    .where("i.tenant_id", "=", tenantId)
    .where("i.configuration_id", "=", assertion.configurationId)
    .where("i.issuer", "=", assertion.issuer)
    .where("i.subject", "=", assertion.subject)
    .executeTakeFirst();
  if (!row) return undefined;
  const live = await activeMembership(tx, tenantId, row.user_id);
  if (!live) throw new SsoRefused("not-a-member");
  await tx
    .updateTable("sso_identities")
    .set({ membership_id: live.id, last_signed_in_at: now })
    .where("tenant_id", "=", tenantId)
    .where("id", "=", row.id)
    .execute();
  return row.user_id;
}

/**
 * Links the identity to the user, making them a member first when they are not one (just in time; the caller
 * checked that the provider verified the address and that the tenant verified its domain). Audited on the
 * tenant's chains: sso.jit-membership ("changes"), sso.identity-linked ("security"). Refuses "identity-taken"
 * when a concurrent sign-in linked the identity to someone else.
 */
export async function linkIdentity(
  tx: Tx,
  deps: Pick<IdentityDeps, "audit">,
  link: { assertion: SsoAssertion; userId: string; now: Date; requestId: string },
): Promise<{ membershipId: string }> {
  const { assertion, userId, now, requestId } = link;
  const { tenantId, configurationId } = assertion;
  let membershipId = (await activeMembership(tx, tenantId, userId))?.id;
  if (membershipId === undefined) {
    membershipId = await addMembership(tx, now, { tenantId, userId, role: JIT_ROLE, invitedBy: null });
    await deps.audit.record(tx, {
      tenantId,
      stream: "changes",
      actor: { kind: "user", id: membershipId },
      action: "sso.jit-membership",
      target: { type: "membership", id: membershipId },
      details: { role: JIT_ROLE, configuration: configurationId },
      requestId,
    });
  }
  const identityId = uuidv7(now.getTime());
  const inserted = await tx
    .insertInto("sso_identities")
    .values({
      tenant_id: tenantId,
      id: identityId,
      configuration_id: configurationId,
      issuer: assertion.issuer,
      subject: assertion.subject,
      membership_id: membershipId,
      created_at: now,
      last_signed_in_at: now,
    })
    .onConflict((conflict) => conflict.columns(["tenant_id", "configuration_id", "issuer", "subject"]).doNothing())
    .returning("id")
    .executeTakeFirst();
  if (!inserted) {
    const linked = await linkedUser(tx, now, assertion);
    if (linked !== userId) throw new SsoRefused("identity-taken");
    return { membershipId };
  }
  await deps.audit.record(tx, {
    tenantId,
    stream: "security",
    actor: { kind: "user", id: membershipId },
    action: "sso.identity-linked",
    target: { type: "sso-identity", id: identityId },
    details: { configuration: configurationId, membership: membershipId },
    requestId,
  });
  return { membershipId };
}
