import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import type { Grant } from "../../platform/http/routes.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { IdentityDeps } from "./deps.ts";
import type { TenantPermission } from "./roles.ts";
import type { SessionFactor } from "./schema.ts";
import { loadPolicy } from "./security-policies.ts";
import { RECENT_AUTHENTICATION_MS, type SessionPrincipal } from "./sessions.ts";

/**
 * Break-glass (promise A4): when a tenant requires SSO and its identity provider is down, the one owner the
 * policy names may open the tenant's security settings — and nothing else — with a user-verified passkey, for
 * at most an hour. Every opening and every request under it is audited, and the other owners are alerted.
 */

/** The permission of the route that opens break-glass (owners only; judged by the route, not the policy). */
export const BREAK_GLASS_PERMISSION: TenantPermission = "security.break-glass";

/** What an open break-glass reaches: the security settings only. */
export const BREAK_GLASS_REACHES: ReadonlySet<TenantPermission> = new Set<TenantPermission>([
  "security.read",
  "security.manage",
]);

/** How long one opening lasts. */
export const BREAK_GLASS_MS = 60 * 60_000;

/** Whether the session holds an opening of the tenant that has not expired, as the membership that opened it. */
export async function openBreakGlass(
  tx: Tx,
  tenantId: string,
  sessionId: string,
  membershipId: string | null,
  now: Date,
): Promise<boolean> {
  if (membershipId === null) return false;
  const row = await tx
    .selectFrom("break_glass_openings")
    .select("id")
    .where("tenant_id", "=", tenantId)
    .where("session_id", "=", sessionId)
    .where("membership_id", "=", membershipId)
    .where("expires_at", ">", now)
    .executeTakeFirst();
  return row !== undefined;
}

/** How long the provider's discovery document gets to answer before it counts as down. */
const PROVIDER_PROBE_MS = 5_000;

/**
 * Whether any of the tenant's enabled identity providers answers its discovery document: if one does, the
 * owner can sign in through it and break-glass is refused. Fetched through the platform's outbound client (its
 * address rules hold), outside any transaction.
 */
export async function anyProviderAnswers(
  deps: Pick<IdentityDeps, "outbound">,
  tenantId: string,
  issuers: readonly string[],
): Promise<boolean> {
  for (const issuer of issuers) {
    const url = `${issuer.replace(/\/$/, "")}/.well-known/openid-configuration`;
    try {
      const response = await deps.outbound.request({
        url,
        tenantId,
        purpose: "oidc",
        timeoutMs: PROVIDER_PROBE_MS,
        maxBytes: 64 * 1024,
      });
      if (response.status >= 200 && response.status < 300) return true;
    } catch {
      // Unreachable, refused or timed out: this provider is down.
    }
  }
  return false;
}

/** The passkey factor that may open break-glass: user-verified, proven within the recent-authentication window. */
export function freshVerifiedPasskey(factors: readonly SessionFactor[], now: Date): boolean {
  return factors.some(
    (factor) =>
      factor.method === "passkey" &&
      factor.userVerified === true &&
      now.getTime() - Date.parse(factor.at) <= RECENT_AUTHENTICATION_MS,
  );
}

export interface BreakGlassOpening {
  id: string;
  openedAt: Date;
  expiresAt: Date;
}

/**
 * Opens break-glass for the designated owner's session: refused unless the tenant requires SSO, the caller is
 * the owner its policy names, their session proved a user-verified passkey within the last 10 minutes, and no
 * identity provider of the tenant answers. Audited on the tenant's security chain; the other owners are alerted.
 */
export async function openBreakGlassFor(
  deps: Pick<IdentityDeps, "db" | "clock" | "audit" | "outbound">,
  tenantId: string,
  principal: SessionPrincipal,
  grant: Grant,
  requestId: string,
  onOpened: (tx: Tx, opening: BreakGlassOpening) => Promise<void>,
): Promise<BreakGlassOpening> {
  const { db, clock } = deps;
  const now = clock.now();
  const { policy, issuers } = await db.withTenant({ tenantId }, async (tx) => ({
    policy: await loadPolicy(tx, tenantId),
    issuers: (
      await tx
        .selectFrom("sso_configurations")
        .select("issuer")
        .where("tenant_id", "=", tenantId)
        .where("enabled", "=", true)
        .execute()
    ).map((row) => row.issuer),
  }));
  if (!policy.requireSso) {
    throw new HttpProblem("conflict", "this organization does not require single sign-on: sign in as usual");
  }
  if (grant.membershipId === null || grant.membershipId !== policy.breakGlassMembershipId) {
    throw new HttpProblem("forbidden", "only the owner named in the security policy can break the glass");
  }
  if (principal.viaReplacedToken || !freshVerifiedPasskey(principal.factors, now)) {
    throw new HttpProblem("reauthentication-required", "confirm it is you with a passkey (with its PIN or biometrics)");
  }
  if (await anyProviderAnswers(deps, tenantId, issuers)) {
    throw new HttpProblem("conflict", "your identity provider answers: sign in through it");
  }
  const membershipId = grant.membershipId;
  return db.withTenant({ tenantId, actorId: grant.actorId, requestId }, async (tx) => {
    const opening: BreakGlassOpening = {
      id: uuidv7(now.getTime()),
      openedAt: now,
      expiresAt: new Date(now.getTime() + BREAK_GLASS_MS),
    };
    await tx
      .insertInto("break_glass_openings")
      .values({
        tenant_id: tenantId,
        id: opening.id,
        membership_id: membershipId,
        session_id: principal.sessionId,
        opened_at: opening.openedAt,
        expires_at: opening.expiresAt,
      })
      .execute();
    await deps.audit.record(tx, {
      tenantId,
      stream: "security",
      actor: { kind: "user", id: membershipId },
      action: "auth.break-glass-opened",
      target: { type: "tenant", id: tenantId },
      details: { openingId: opening.id, expiresAt: opening.expiresAt.toISOString(), providers: issuers.length },
      requestId,
    });
    await onOpened(tx, opening);
    return opening;
  });
}
