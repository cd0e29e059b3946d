import type { FastifyReply, FastifyRequest } from "fastify";
import type { Tx } from "../../platform/db/index.ts";
import type { AccessControl, TenantAccess } from "../../platform/http/app.ts";
import type { Grant, Principal } from "../../platform/http/routes.ts";
import type { Tenant } from "../../platform/tenancy/tenants.ts";
import { parseApiKey, type VerifiedApiKey, verifyApiKey } from "./api-keys.ts";
import { BREAK_GLASS_PERMISSION, BREAK_GLASS_REACHES, openBreakGlass } from "./break-glass.ts";
import { readCookie, sessionCookieName, setSessionCookie } from "./cookies.ts";
import { assertSameOrigin } from "./csrf.ts";
import type { IdentityDeps } from "./deps.ts";
import { activeMembership } from "./memberships.ts";
import { hasAccountFactor, judgeApiKey, judgeSession, type PolicyDecision, type SecurityPolicy } from "./policy.ts";
import { isTenantPermission, type MembershipRole, roleAllows, statusAllows, type TenantPermission } from "./roles.ts";
import type { SessionState } from "./schema.ts";
import { loadPolicy } from "./security-policies.ts";
import { isSessionPrincipal, resolveSession, type SessionPrincipal } from "./sessions.ts";

/**
 * The permission middleware (promise T2): who is calling (a session cookie, or an API key on a tenant route)
 * and, on every tenant request, what they hold there: the live membership and its role, or the key's
 * effective role, against the route's permission and the tenant's status. Nothing is cached between
 * requests, so a removed member's next request to that tenant is refused at once.
 */

/** A caller holding an API key of the path's tenant; `key` is undefined for a valid-looking key of another. */
export interface ApiKeyPrincipal extends Principal {
  kind: "api-key";
  tenantId: string;
  key: VerifiedApiKey | undefined;
}

function isApiKeyPrincipal(principal: Principal): principal is ApiKeyPrincipal {
  return principal.kind === "api-key" && typeof (principal as Partial<ApiKeyPrincipal>).tenantId === "string";
}

const BEARER = /^Bearer\s+(\S+)$/i;

/** What a session holding only SSO factors may do outside its tenant: see and end itself, list its tenants. */
const SSO_SESSION_OPERATIONS: ReadonlySet<string> = new Set([
  "getCurrentSession",
  "signOut",
  "listSessions",
  "revokeSession",
  "revokeAllSessions",
  "listMyTenants",
]);

/**
 * The session states a route accepts. Every route of this issue takes only full sessions; issue 6 adds a
 * route kind that completes the second factor and passes ["pending-second-factor"] through sessionPrincipal.
 */
export type AcceptedStates = readonly SessionState[];

export interface IdentityAccessControl extends AccessControl {
  /** The session principal of the request if its session is in one of `states` (and CSRF-checked). */
  sessionPrincipal(
    request: FastifyRequest,
    reply: FastifyReply,
    states: AcceptedStates,
  ): Promise<SessionPrincipal | null>;
}

export function createAccessControl(deps: IdentityDeps): IdentityAccessControl {
  const { db, clock, config } = deps;
  const cookieName = sessionCookieName(config.publicUrl);

  async function sessionPrincipal(
    request: FastifyRequest,
    reply: FastifyReply,
    states: AcceptedStates,
  ): Promise<SessionPrincipal | null> {
    const token = readCookie(request, cookieName);
    if (token === undefined) return null;
    // The cookie is ambient authority: any unsafe request it authenticates must come from our own pages.
    assertSameOrigin(request, config.publicUrl, true);
    const resolution = await resolveSession(deps, token, request.id);
    if (resolution.outcome !== "valid") return null;
    const { session, rotatedToken } = resolution;
    if (rotatedToken !== undefined)
      setSessionCookie(reply, config.publicUrl, rotatedToken, session.expiresAt, clock.now());
    if (!states.includes(session.state)) return null;
    return {
      kind: session.operator ? "operator" : "user",
      actorId: session.userId,
      userId: session.userId,
      sessionId: session.id,
      viaReplacedToken: session.viaReplacedToken,
      factors: session.factors,
      signedInAt: session.createdAt,
    };
  }

  async function apiKeyPrincipal(presented: string, tenantId: string): Promise<ApiKeyPrincipal | null> {
    const parsed = parseApiKey(presented);
    if (!parsed) return null;
    const now = clock.now();
    const { key, known } = await db.withTenant({ tenantId }, async (tx) => {
      const verified = await verifyApiKey(tx, tenantId, presented, now);
      if (verified) return { key: verified, known: true };
      const row = await tx
        .selectFrom("api_keys")
        .select("id")
        .where("tenant_id", "=", tenantId)
        .where("id", "=", parsed.id)
        .executeTakeFirst();
      return { key: undefined, known: row !== undefined };
    });
    // A dead key of this tenant (revoked, expired, wrong secret, owner removed) is told so (401); a key of
    // another tenant is a non-member there (404), like an unknown tenant: nothing about it is revealed.
    if (!key && known) return null;
    return { kind: "api-key", actorId: key?.id ?? parsed.id, tenantId, key };
  }

  /**
   * The tenant check of every request, in the kernel's transaction of the tenant (`tx`, with the tenant's
   * registry row): its status, the caller's grant, and its security policy judged by `judge` (A4).
   */
  async function check(
    tx: Tx,
    tenant: Tenant,
    permission: TenantPermission,
    member: (tx: Tx) => Promise<Grant | undefined>,
    judge: (tx: Tx, policy: SecurityPolicy, grant: Grant) => Promise<PolicyDecision>,
  ): Promise<TenantAccess> {
    // Two independent reads, sent together (one round trip on PostgreSQL, which pipelines them).
    const [grant, policy] = await Promise.all([member(tx), loadPolicy(tx, tenant.id)]);
    if (tenant.status === "deleted" || !grant || grant.role === "guest") return { outcome: "not-member" };
    if (!statusAllows(tenant.status, permission)) {
      return tenant.status === "suspended"
        ? { outcome: "forbidden", slug: "tenant-suspended", detail: "this organization is suspended" }
        : { outcome: "forbidden", slug: "tenant-read-only", detail: "this organization is read-only" };
    }
    const decision = await judge(tx, policy, grant);
    if (decision.outcome === "refused") return { outcome: "forbidden", slug: decision.slug, detail: decision.detail };
    if (!roleAllows(grant.role as MembershipRole, permission)) {
      return { outcome: "forbidden", detail: `your role (${grant.role}) does not allow this` };
    }
    return { outcome: "granted", grant };
  }

  /**
   * The policy's verdict on a session in the tenant. The designated owner's open break-glass lets their session
   * reach the security settings, whatever the policy says, and every such request is audited; opening it is
   * judged by its route (break-glass.ts), not by the policy it exists to get past.
   */
  async function judgeSessionIn(
    tx: Tx,
    policy: SecurityPolicy,
    principal: SessionPrincipal,
    tenantId: string,
    permission: TenantPermission,
    grant: Grant,
    requestId: string,
  ): Promise<PolicyDecision> {
    if (permission === BREAK_GLASS_PERMISSION) return { outcome: "allowed" };
    const now = clock.now();
    const decision = judgeSession(policy, principal, tenantId, now);
    if (decision.outcome === "allowed" || !BREAK_GLASS_REACHES.has(permission)) return decision;
    if (!(await openBreakGlass(tx, tenantId, principal.sessionId, grant.membershipId, now))) return decision;
    await deps.audit.record(tx, {
      tenantId,
      stream: "security",
      actor: { kind: "user", id: grant.actorId },
      action: "auth.break-glass-access",
      target: { type: "tenant", id: tenantId },
      details: { permission },
      requestId,
    });
    return { outcome: "allowed" };
  }

  return {
    sessionPrincipal,

    async principal(request, reply, tenantId) {
      const authorization = request.headers.authorization;
      if (authorization !== undefined) {
        // A request that names its credential gets that one or none: no falling back to a cookie.
        const bearer = BEARER.exec(authorization)?.[1];
        if (bearer === undefined || tenantId === undefined) return null;
        return apiKeyPrincipal(bearer, tenantId);
      }
      const principal = await sessionPrincipal(request, reply, ["active"]);
      // A session opened by SSO alone opens only the tenant whose provider proved it (judged per tenant by the
      // policy): of the routes outside tenants it reaches only its own session and the list of its tenants.
      if (principal && tenantId === undefined && !hasAccountFactor(principal.factors)) {
        const operation = request.routeOptions.config.charterRoute?.operationId;
        if (operation === undefined || !SSO_SESSION_OPERATIONS.has(operation)) return null;
      }
      return principal;
    },

    async authorize(principal, tenant, permission, { requestId, tx }) {
      const tenantId = tenant.id;
      if (!isTenantPermission(permission)) {
        return { outcome: "forbidden", detail: "this operation declares a permission that does not exist" };
      }
      if (principal.kind === "operator") return { outcome: "not-member" };
      if (isApiKeyPrincipal(principal)) {
        const key = principal.key;
        if (!key || principal.tenantId !== tenantId) return { outcome: "not-member" };
        return check(
          tx,
          tenant,
          permission,
          async () => ({ actorId: key.id, membershipId: key.membershipId, role: key.role }),
          async (_tx, policy) => judgeApiKey(policy, key.kind),
        );
      }
      if (!isSessionPrincipal(principal)) return { outcome: "not-member" };
      const userId = principal.userId;
      return check(
        tx,
        tenant,
        permission,
        async (tx) => {
          const membership = await activeMembership(tx, tenantId, userId);
          return membership && { actorId: membership.id, membershipId: membership.id, role: membership.role };
        },
        (tx, policy, grant) => judgeSessionIn(tx, policy, principal, tenantId, permission, grant, requestId),
      );
    },
  };
}
