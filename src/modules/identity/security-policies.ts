import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { IdentityDeps } from "./deps.ts";
import { type TenantActor, tenantAuditActor } from "./memberships.ts";
import { DEFAULT_POLICY, factorsIn, isMultiFactor, policyJson, type SecurityPolicy } from "./policy.ts";
import type { SignInMethod } from "./policy-schema.ts";
import { isSessionPrincipal, requireRecentAuthentication } from "./sessions.ts";

/**
 * Reading and changing a tenant's security policy (promise A4). A change never locks out the person making it:
 * requiring MFA needs their own session to be multi-factor, requiring SSO needs it to hold this tenant's SSO
 * factor, and the allowed methods must include one they signed in with. Only owners name the break-glass owner,
 * and only an owner can be named.
 */

/** The tenant's policy (the defaults when it never set one), in the tenant's transaction. */
export async function loadPolicy(tx: Tx, tenantId: string): Promise<SecurityPolicy> {
  const row = await tx.selectFrom("security_policies").selectAll().where("tenant_id", "=", tenantId).executeTakeFirst();
  if (!row) return DEFAULT_POLICY;
  return {
    requireMfa: row.require_mfa,
    requireSso: row.require_sso,
    sessionLifetimeMinutes: row.session_lifetime_minutes,
    allowedMethods: row.allowed_methods,
    allowPersonalKeys: row.allow_personal_keys,
    allowServiceKeys: row.allow_service_keys,
    breakGlassMembershipId: row.break_glass_membership_id,
  };
}

/** Refuses a policy that would shut out the person setting it, with what they must do first. */
function assertNotLockingOut(actor: TenantActor, tenantId: string, policy: SecurityPolicy): void {
  const { principal } = actor;
  if (!isSessionPrincipal(principal)) throw new HttpProblem("forbidden", "only a signed-in person can change this");
  const counting = factorsIn(principal.factors, tenantId);
  if (policy.requireMfa && !isMultiFactor(counting)) {
    throw new HttpProblem("conflict", "sign in with a second factor before requiring one: you would lock yourself out");
  }
  if (policy.requireSso && !counting.some((factor) => factor.method === "sso")) {
    throw new HttpProblem(
      "conflict",
      "sign in through this organization's identity provider before requiring it: you would lock yourself out",
    );
  }
  const methods = new Set<string>(policy.allowedMethods);
  if (!counting.some((factor) => methods.has(factor.method))) {
    throw new HttpProblem("conflict", "the allowed methods must include one you signed in with");
  }
}

async function assertBreakGlassOwner(tx: Tx, tenantId: string, actor: TenantActor, membershipId: string) {
  if (actor.grant.role !== "owner") {
    throw new HttpProblem("forbidden", "only an owner can name the break-glass owner");
  }
  const designee = await tx
    .selectFrom("memberships")
    .select("role")
    .where("tenant_id", "=", tenantId)
    .where("id", "=", membershipId)
    .where("status", "=", "active")
    .executeTakeFirst();
  if (designee?.role !== "owner") {
    throw new HttpProblem("validation", "the break-glass owner must be an owner of this organization");
  }
}

/** Replaces the tenant's policy, audited on its changes chain with the values before and after. */
export async function updatePolicy(
  deps: Pick<IdentityDeps, "db" | "clock" | "audit">,
  tx: Tx,
  tenantId: string,
  actor: TenantActor,
  policy: SecurityPolicy,
): Promise<SecurityPolicy> {
  await requireRecentAuthentication(deps, actor.principal, tx);
  const before = await loadPolicy(tx, tenantId);
  assertNotLockingOut(actor, tenantId, policy);
  if (policy.breakGlassMembershipId !== before.breakGlassMembershipId) {
    if (actor.grant.role !== "owner") {
      throw new HttpProblem("forbidden", "only an owner can name the break-glass owner");
    }
    if (policy.breakGlassMembershipId !== null) {
      await assertBreakGlassOwner(tx, tenantId, actor, policy.breakGlassMembershipId);
    }
  }
  const now = deps.clock.now();
  const values = {
    require_mfa: policy.requireMfa,
    require_sso: policy.requireSso,
    session_lifetime_minutes: policy.sessionLifetimeMinutes,
    allowed_methods: [...new Set(policy.allowedMethods)] as SignInMethod[],
    allow_personal_keys: policy.allowPersonalKeys,
    allow_service_keys: policy.allowServiceKeys,
    break_glass_membership_id: policy.breakGlassMembershipId,
    updated_at: now,
    updated_by: actor.grant.membershipId,
  };
  await tx
    .insertInto("security_policies")
    .values({ tenant_id: tenantId, id: uuidv7(now.getTime()), ...values })
    .onConflict((conflict) => conflict.column("tenant_id").doUpdateSet(values))
    .execute();
  const after = await loadPolicy(tx, tenantId);
  await deps.audit.record(tx, {
    tenantId,
    stream: "changes",
    actor: tenantAuditActor(actor),
    action: "tenant.security-policy-updated",
    target: { type: "tenant", id: tenantId },
    details: { before: policyJson(before), after: policyJson(after) },
    requestId: actor.requestId,
  });
  return after;
}
