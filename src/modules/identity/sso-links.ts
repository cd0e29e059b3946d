import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { IdentityDeps } from "./deps.ts";
import type { FactorMethod } from "./schema.ts";
import { RECENT_AUTHENTICATION_MS, type SessionPrincipal } from "./sessions.ts";
import { ssoBindingHash } from "./sso-binding.ts";
import { findSsoConfiguration } from "./sso-configurations.ts";
import { linkIdentity, type SsoAssertion } from "./sso-identities.ts";
import { SsoRefused } from "./sso-refusals.ts";
import { type OpenedSession, stepUpWithSso } from "./sso-session.ts";

/**
 * Linking an existing account to a tenant's provider (promise A3). A provider vouching for an address proves
 * control of the mailbox at most, not of the account: so when its sign-in names an address that already has an
 * account, nothing is linked yet. The callback leaves a pending link bound to the browser; the account's owner
 * signs in there with one of their own factors (password, passkey, an authenticator app or backup code) within
 * PENDING_LINK_MS and confirms. Only then is the identity linked, the user made a member if needed, and the SSO
 * factor added to their session.
 */

export const PENDING_LINK_MS = 10 * 60_000;

/** The factors that prove the account itself: not an emailed link, not a provider's word. */
const ACCOUNT_FACTORS: ReadonlySet<FactorMethod> = new Set(["password", "passkey", "totp", "backup-code"]);

/** Leaves a pending link for `userId` (in the callback's transaction), audited on the user's platform chain. */
export async function createPendingLink(
  tx: Tx,
  deps: Pick<IdentityDeps, "audit">,
  link: { userId: string; assertion: SsoAssertion; binding: string; now: Date; requestId: string },
): Promise<void> {
  const { userId, assertion, now } = link;
  const id = uuidv7(now.getTime());
  await tx
    .insertInto("sso_pending_links")
    .values({
      id,
      user_id: userId,
      for_tenant: assertion.tenantId,
      configuration_id: assertion.configurationId,
      issuer: assertion.issuer,
      subject: assertion.subject,
      mfa: assertion.mfa,
      binding_hash: ssoBindingHash(link.binding),
      created_at: now,
      expires_at: new Date(now.getTime() + PENDING_LINK_MS),
    })
    .execute();
  await deps.audit.record(tx, {
    tenantId: null,
    stream: "security",
    actor: { kind: "anonymous", id: null },
    action: "sso.link-requested",
    target: { type: "user", id: userId },
    subjects: [userId],
    details: { tenant: assertion.tenantId, configuration: assertion.configurationId },
    requestId: link.requestId,
  });
}

/** Whether the session proved one of the account's own factors within RECENT_AUTHENTICATION_MS. */
function provedAccountRecently(principal: SessionPrincipal, now: Date): boolean {
  if (principal.viaReplacedToken) return false;
  return principal.factors.some(
    (factor) => ACCOUNT_FACTORS.has(factor.method) && now.getTime() - Date.parse(factor.at) < RECENT_AUTHENTICATION_MS,
  );
}

export interface ConfirmedLink {
  tenantId: string;
  configurationId: string;
  membershipId: string;
  session: OpenedSession;
}

/**
 * Confirms the newest pending link of the signed-in user in this browser (`binding`: its SSO cookie). Refuses
 * "reauthentication-required" unless the session recently proved an account factor through its current token,
 * and "no-pending-link" when there is none (another user's, another browser's, expired or used: all alike).
 */
export async function confirmPendingLink(
  deps: Pick<IdentityDeps, "db" | "audit" | "clock">,
  input: { principal: SessionPrincipal; token: string | undefined; binding: string | undefined; requestId: string },
): Promise<ConfirmedLink> {
  const { principal, token, requestId } = input;
  const now = deps.clock.now();
  if (token === undefined || !provedAccountRecently(principal, now)) {
    throw new HttpProblem(
      "reauthentication-required",
      "sign in with your password or a passkey in this browser to link your account",
    );
  }
  if (input.binding === undefined) throw new SsoRefused("no-pending-link");
  const bindingHash = ssoBindingHash(input.binding);
  const pending = await deps.db.withPlatform((tx) =>
    tx
      .selectFrom("sso_pending_links")
      .selectAll()
      .where("binding_hash", "=", bindingHash)
      .where("user_id", "=", principal.userId)
      .where("used_at", "is", null)
      .where("expires_at", ">", now)
      .orderBy("created_at", "desc")
      .orderBy("id", "desc")
      .executeTakeFirst(),
  );
  if (!pending) throw new SsoRefused("no-pending-link");
  const assertion: SsoAssertion = {
    tenantId: pending.for_tenant,
    configurationId: pending.configuration_id,
    issuer: pending.issuer,
    subject: pending.subject,
    mfa: pending.mfa,
  };
  return deps.db.withTenant({ tenantId: assertion.tenantId, actorId: principal.userId, requestId }, async (tx) => {
    const used = await tx
      .updateTable("sso_pending_links")
      .set({ used_at: now })
      .where("id", "=", pending.id)
      .where("used_at", "is", null)
      .executeTakeFirst();
    if (Number(used.numUpdatedRows) === 0) throw new SsoRefused("no-pending-link");
    const configuration = await findSsoConfiguration(tx, assertion.tenantId, assertion.configurationId);
    if (!configuration?.enabled) throw new SsoRefused("configuration-unavailable");
    const { membershipId } = await linkIdentity(tx, deps, { assertion, userId: principal.userId, now, requestId });
    const presented = { sessionId: principal.sessionId, userId: principal.userId, token };
    const session = await stepUpWithSso(tx, deps, { presented, assertion, now, requestId });
    if (!session) {
      throw new HttpProblem("reauthentication-required", "this session token was replaced; use the current one");
    }
    return { tenantId: assertion.tenantId, configurationId: assertion.configurationId, membershipId, session };
  });
}
