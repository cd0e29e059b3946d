import { NormalisationError } from "../../platform/crypto/blind-index.ts";
import type { Binding } from "../../platform/crypto/envelope.ts";
import type { Tx } from "../../platform/db/index.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { findTenant } from "../../platform/tenancy/tenants.ts";
import type { IdentityDeps } from "./deps.ts";
import type { RememberedDevice } from "./devices.ts";
import { countSuccessfulSignIn, rememberSignInDevice } from "./sign-in-alerts.ts";
import { ssoBindingHash } from "./sso-binding.ts";
import { openSsoClient, type SsoClient, ssoRedirectUri } from "./sso-configurations.ts";
import { domainOfEmail, isVerifiedDomain } from "./sso-domains.ts";
import { linkedUser, linkIdentity, type SsoAssertion } from "./sso-identities.ts";
import { createPendingLink } from "./sso-links.ts";
import {
  beginAuthorization,
  completeAuthorization,
  type ProviderIdentity,
  type ProviderSettings,
  SsoProviderError,
} from "./sso-provider.ts";
import { SsoRefused } from "./sso-refusals.ts";
import { type OpenedSession, openSsoSession, type PresentedSession } from "./sso-session.ts";
import { hashToken, isTokenShaped } from "./tokens.ts";
import { createUser, emailIndexOf, findVerifiedUserByEmail, lockEmail } from "./users.ts";

/**
 * Signing in through a tenant's OpenID provider (promise A3): the start sends the browser to the provider with
 * PKCE, state and nonce kept in a single-use record bound to the browser; the callback (one redirect URI per
 * configuration) finds that record by its state, checks the browser, the configuration and the RFC 9207 `iss`,
 * redeems the code, and signs in the person the federated identity names. A person the tenant does not know yet
 * joins just in time only when the provider verified their address and the tenant verified its domain; an
 * address that already has an account waits for its owner's own factor (sso-links.ts).
 */

/** How long the browser has to come back from the provider. */
export const SSO_REQUEST_MS = 10 * 60_000;

interface StoredChecks {
  codeVerifier: string;
  nonce: string;
}

const checksBinding = (id: string): Binding => ({
  tenantId: null,
  table: "sso_authorization_requests",
  column: "checks",
  rowId: id,
});

function providerSettings(deps: Pick<IdentityDeps, "config">, client: SsoClient): ProviderSettings {
  return {
    tenantId: client.tenantId,
    issuer: client.issuer,
    clientId: client.clientId,
    clientSecret: client.clientSecret,
    redirectUri: ssoRedirectUri(deps.config.publicUrl, client.id),
    wantedClaims: [client.emailClaim, client.nameClaim, "email_verified"],
  };
}

/**
 * Runs a call to the provider; its refusal becomes the flow's. `discovery`: the call only reads the provider's
 * metadata, so whatever is wrong with its answer is the provider's configuration, not the person's sign-in.
 */
async function withProvider<T>(call: () => Promise<T>, options: { discovery?: boolean } = {}): Promise<T> {
  try {
    return await call();
  } catch (error) {
    if (!(error instanceof SsoProviderError)) throw error;
    const misconfigured = options.discovery && error.reason !== "provider-unreachable";
    throw new SsoRefused(misconfigured ? "discovery-failed" : error.reason);
  }
}

/** The configuration, enabled, of a tenant that exists; refuses "configuration-unavailable" otherwise. */
async function enabledClient(
  deps: Pick<IdentityDeps, "db" | "keyRing">,
  tenantId: string,
  configurationId: string,
  requestId: string,
): Promise<SsoClient> {
  const client = await deps.db.withTenant({ tenantId, requestId }, async (tx) => {
    const tenant = await findTenant(tx, tenantId);
    if (!tenant || tenant.status === "deleted") return undefined;
    return openSsoClient(tx, deps, tenantId, configurationId);
  });
  if (!client?.enabled) throw new SsoRefused("configuration-unavailable");
  return client;
}

/**
 * Starts a sign-in: discovers the provider (outside any transaction), keeps the request, and answers where to
 * send the browser. `binding`: the browser's SSO cookie value.
 */
export async function startSsoSignIn(
  deps: Pick<IdentityDeps, "db" | "keyRing" | "clock" | "outbound" | "config">,
  input: { tenantId: string; configurationId: string; binding: string; returnTo: string; requestId: string },
): Promise<URL> {
  const { tenantId, requestId } = input;
  const client = await enabledClient(deps, tenantId, input.configurationId, requestId);
  const request = await withProvider(() => beginAuthorization(deps.outbound, providerSettings(deps, client)), {
    discovery: true,
  });
  const now = deps.clock.now();
  const id = uuidv7(now.getTime());
  const checks: StoredChecks = { codeVerifier: request.codeVerifier, nonce: request.nonce };
  await deps.db.withPlatform(
    async (tx) =>
      tx
        .insertInto("sso_authorization_requests")
        .values({
          id,
          for_tenant: tenantId,
          configuration_id: client.id,
          state_hash: hashToken(request.state),
          binding_hash: ssoBindingHash(input.binding),
          checks: await deps.keyRing.encrypt(tx, { scope: "platform" }, JSON.stringify(checks), checksBinding(id)),
          return_to: input.returnTo,
          created_at: now,
          expires_at: new Date(now.getTime() + SSO_REQUEST_MS),
        })
        .execute(),
    { requestId },
  );
  return request.url;
}

interface AnsweredRequest {
  tenantId: string;
  returnTo: string;
  checks: StoredChecks;
}

/**
 * Spends the authorization request the state names, once every check passed: same configuration, same
 * browser, not used, not expired. A request that fails a check is left as it was.
 */
async function spendRequest(
  tx: Tx,
  deps: Pick<IdentityDeps, "keyRing">,
  answer: { configurationId: string; state: string; binding: string; now: Date },
): Promise<AnsweredRequest> {
  const { now } = answer;
  const row = await tx
    .selectFrom("sso_authorization_requests")
    .selectAll()
    .where("state_hash", "=", hashToken(answer.state))
    .forUpdate()
    .executeTakeFirst();
  if (!row) throw new SsoRefused("unknown-state");
  if (row.configuration_id !== answer.configurationId) throw new SsoRefused("configuration-mismatch");
  if (!ssoBindingHash(answer.binding).equals(row.binding_hash)) throw new SsoRefused("binding-mismatch");
  if (row.used_at !== null) throw new SsoRefused("replayed");
  if (row.expires_at.getTime() <= now.getTime()) throw new SsoRefused("expired");
  await tx.updateTable("sso_authorization_requests").set({ used_at: now }).where("id", "=", row.id).execute();
  const checks = JSON.parse(await deps.keyRing.decrypt(tx, row.checks, checksBinding(row.id))) as StoredChecks;
  return { tenantId: row.for_tenant, returnTo: row.return_to, checks };
}

/** Issuer identifiers are URLs: compared in their normal form (a trailing slash on a bare host is the same). */
function sameIssuer(a: string, b: string): boolean {
  try {
    return new URL(a).href === new URL(b).href;
  } catch {
    return false;
  }
}

function claimString(claims: Readonly<Record<string, unknown>>, name: string, max: number): string | undefined {
  const value = claims[name];
  return typeof value === "string" && value.trim().length > 0 && value.length <= max ? value.trim() : undefined;
}

/** `email_verified` is a boolean by the spec; some providers send the string "true". Nothing else counts. */
const verifiedByProvider = (value: unknown): boolean => value === true || value === "true";

export type CallbackOutcome =
  | {
      kind: "signed-in";
      userId: string;
      tenantId: string;
      session: OpenedSession;
      /** The browser, now a known device of the user: its cookie to set. */
      device: RememberedDevice;
      returnTo: string;
    }
  | { kind: "link-pending"; userId: string; tenantId: string };

/** What the flow learned so far, for the audit record of a refusal. */
export interface CallbackContext {
  tenantId?: string;
}

/**
 * Completes a sign-in from the provider's answer (`query`: the callback's query string as the browser sent it).
 * Every refusal is an SsoRefused; `context` is filled in as the flow learns the tenant.
 */
export async function completeSsoSignIn(
  deps: Pick<IdentityDeps, "db" | "keyRing" | "clock" | "outbound" | "config" | "audit" | "mailer">,
  input: {
    configurationId: string;
    query: URLSearchParams;
    binding: string | undefined;
    /** The session cookie the browser sent, if any, and what it resolved to. */
    sessionToken: string | undefined;
    presented: PresentedSession | undefined;
    /** The device token the browser sent (devices.ts presentedDeviceToken), if any. */
    deviceToken: string | undefined;
    userAgent: string | undefined;
    requestId: string;
  },
  context: CallbackContext,
): Promise<CallbackOutcome> {
  const { configurationId, query, binding, requestId } = input;
  const state = query.get("state");
  if (!isTokenShaped(state)) throw new SsoRefused(state === null ? "missing-state" : "unknown-state");
  if (binding === undefined) throw new SsoRefused("binding-mismatch");
  const answered = await deps.db.withPlatform(
    (tx) => spendRequest(tx, deps, { configurationId, state, binding, now: deps.clock.now() }),
    { requestId },
  );
  const { tenantId } = answered;
  context.tenantId = tenantId;
  const client = await enabledClient(deps, tenantId, configurationId, requestId);
  // RFC 9207: an answer naming another issuer is a mix-up, whatever else it carries (openid-client also
  // requires `iss` when the provider advertises it, against the discovered issuer).
  const iss = query.get("iss");
  if (iss !== null && !sameIssuer(iss, client.issuer)) throw new SsoRefused("issuer-mismatch");

  const settings = providerSettings(deps, client);
  const callback = new URL(settings.redirectUri);
  callback.search = query.toString();
  const identity = await withProvider(() =>
    completeAuthorization(deps.outbound, settings, callback, { state, ...answered.checks }),
  );
  const assertion: SsoAssertion = {
    tenantId,
    configurationId,
    issuer: identity.issuer,
    subject: identity.subject,
    mfa: identity.amr.some((value) => client.mfaAmrValues.includes(value)),
  };
  const now = deps.clock.now();
  return deps.db.withTenant({ tenantId, requestId }, async (tx): Promise<CallbackOutcome> => {
    let userId = await linkedUser(tx, now, assertion);
    if (userId === undefined) {
      const arrival = await admitNewcomer(tx, deps, { client, identity, assertion, binding, now, requestId });
      if (arrival.kind === "link-pending") return { kind: "link-pending", userId: arrival.userId, tenantId };
      userId = arrival.userId;
    }
    const session = await openSsoSession(tx, deps, {
      userId,
      assertion,
      presented: input.presented,
      previousToken: input.sessionToken,
      userAgent: input.userAgent,
      now,
      requestId,
    });
    // Like every complete sign-in: failures before it are counted off (or alerted), and the browser becomes a
    // known device (or raises the new-device alert).
    await countSuccessfulSignIn(deps, tx, userId, requestId);
    const device = await rememberSignInDevice(deps, tx, input.deviceToken, { userId, method: "sso", requestId });
    return { kind: "signed-in", userId, tenantId, session, device, returnTo: answered.returnTo };
  });
}

/**
 * A person the tenant's provider signs in for the first time: only with an address the provider verified, in a
 * domain the tenant verified. A new account joins at once (just in time); an address that already has an account
 * leaves a pending link for its owner to confirm with their own factor.
 */
async function admitNewcomer(
  tx: Tx,
  deps: Pick<IdentityDeps, "keyRing" | "audit">,
  input: {
    client: SsoClient;
    identity: ProviderIdentity;
    assertion: SsoAssertion;
    binding: string;
    now: Date;
    requestId: string;
  },
): Promise<{ kind: "joined" | "link-pending"; userId: string }> {
  const { client, identity, assertion, now, requestId } = input;
  const address = claimString(identity.claims, client.emailClaim, 320);
  if (address === undefined) throw new SsoRefused("email-missing");
  let email: ReturnType<typeof emailIndexOf>;
  try {
    email = emailIndexOf(deps.keyRing, address);
  } catch (error) {
    if (error instanceof NormalisationError) throw new SsoRefused("email-missing");
    throw error;
  }
  if (!verifiedByProvider(identity.claims.email_verified)) throw new SsoRefused("email-unverified");
  const domain = domainOfEmail(email.normalised);
  if (domain === undefined || !(await isVerifiedDomain(tx, assertion.tenantId, domain))) {
    throw new SsoRefused("domain-unverified");
  }
  await lockEmail(tx, email.index);
  const existing = await findVerifiedUserByEmail(tx, email.index);
  if (existing) {
    await createPendingLink(tx, deps, { userId: existing.id, assertion, binding: input.binding, now, requestId });
    return { kind: "link-pending", userId: existing.id };
  }
  const user = await createUser(tx, deps.keyRing, now, {
    email,
    displayName: displayNameOf(identity.claims, client.nameClaim, email.normalised),
    passwordHash: null,
    verifiedAt: now,
  });
  await deps.audit.record(tx, {
    tenantId: null,
    stream: "security",
    actor: { kind: "user", id: user.id },
    action: "auth.signed-up",
    target: { type: "user", id: user.id },
    subjects: [user.id],
    details: { method: "sso", tenant: assertion.tenantId, configuration: assertion.configurationId },
    requestId,
  });
  await linkIdentity(tx, deps, { assertion, userId: user.id, now, requestId });
  return { kind: "joined", userId: user.id };
}

/** The provider's name for the person (at most the 100 characters a display name holds), else the local part. */
function displayNameOf(claims: Readonly<Record<string, unknown>>, claim: string, email: string): string {
  const value = claims[claim];
  const name = typeof value === "string" ? value.trim().slice(0, 100) : "";
  return name || (email.split("@")[0] ?? "").slice(0, 100) || "New member";
}
