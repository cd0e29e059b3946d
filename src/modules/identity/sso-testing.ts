import type { LightMyRequestResponse } from "fastify";
import type { TestApp } from "../../platform/http/test-app.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { createTenant, type Tenant } from "../../platform/tenancy/tenants.ts";
import { sessionCookieName } from "./cookies.ts";
import type { IdentityDeps } from "./deps.ts";
import { addMembership } from "./memberships.ts";
import type { MembershipRole } from "./roles.ts";
import { createSession } from "./sessions.ts";
import {
  createSsoConfiguration,
  type SsoConfiguration,
  type SsoConfigurationFields,
  ssoRedirectUri,
} from "./sso-configurations.ts";
import { normaliseDomain } from "./sso-domains.ts";
import { createTestUser, randomAddress, TEST_PUBLIC_URL, type TestUser } from "./testing.ts";
import { hashToken, newToken } from "./tokens.ts";
import { emailIndexOf } from "./users.ts";

/**
 * Test support for single sign-on: tenants with members, configurations and verified domains written directly,
 * and a browser (a cookie jar over the app's inject) that carries the session and SSO cookies across requests.
 */

let counter = 0;
const unique = () => `${Date.now().toString(36)}-${(++counter).toString(36)}`;

export interface TenantWithOwner {
  tenant: Tenant;
  owner: TestUser & { membershipId: string };
}

export async function createTenantWithOwner(deps: IdentityDeps, label: string): Promise<TenantWithOwner> {
  const tenant = await createTenant(
    deps.db,
    deps.clock,
    { slug: `sso-${label.toLowerCase()}-${unique()}`, name: `SSO ${label}` },
    deps.keyRing,
    deps.audit,
  );
  const user = await createTestUser(deps, { email: `owner-${unique()}@owners.example` });
  const membershipId = await joinTenant(deps, tenant.id, user.id, "owner");
  return { tenant, owner: { ...user, membershipId } };
}

export function joinTenant(deps: IdentityDeps, tenantId: string, userId: string, role: MembershipRole) {
  return deps.db.withTenant({ tenantId }, (tx) =>
    addMembership(tx, deps.clock.now(), { tenantId, userId, role, invitedBy: null }),
  );
}

/** A session of `userId` signed in with a password now: the cookie pair `name=token`. */
export async function passwordSession(deps: IdentityDeps, cookieName: string, userId: string): Promise<string> {
  const session = await deps.db.withPlatform((tx) =>
    createSession(tx, { userId, factor: { method: "password" }, now: deps.clock.now() }),
  );
  return `${cookieName}=${session.token}`;
}

export async function addConfiguration(
  deps: IdentityDeps,
  tenantId: string,
  fields: Partial<SsoConfigurationFields> & Pick<SsoConfigurationFields, "issuer">,
): Promise<SsoConfiguration & { clientSecret: string }> {
  const clientSecret = fields.clientSecret ?? newToken();
  const configuration = await deps.db.withTenant({ tenantId }, (tx) =>
    createSsoConfiguration(
      tx,
      deps,
      { tenantId, actor: { kind: "system", id: null }, requestId: uuidv7() },
      {
        name: "Test provider",
        clientId: `client-${unique()}`,
        emailClaim: "email",
        nameClaim: "name",
        mfaAmrValues: [],
        enabled: true,
        ...fields,
        clientSecret,
      },
    ),
  );
  return { ...configuration, clientSecret };
}

/** A domain the tenant claimed and verified (written directly, as a verification leaves it). */
export async function addVerifiedDomain(deps: IdentityDeps, tenantId: string, domain: string): Promise<void> {
  const normalised = normaliseDomain(domain);
  if (!normalised) throw new Error(`not a domain: ${domain}`);
  const now = deps.clock.now();
  await deps.db.withTenant({ tenantId }, (tx) =>
    tx
      .insertInto("sso_domains")
      .values({
        tenant_id: tenantId,
        id: uuidv7(),
        domain: normalised,
        verification_token: newToken(),
        created_at: now,
        verified_at: now,
      })
      .execute(),
  );
}

/** A domain the tenant claimed and did not verify (written directly, as a claim leaves it); its id. */
export async function claimDomain(deps: IdentityDeps, tenantId: string, domain: string): Promise<string> {
  const id = uuidv7();
  await deps.db.withTenant({ tenantId }, (tx) =>
    tx
      .insertInto("sso_domains")
      .values({ tenant_id: tenantId, id, domain, verification_token: newToken(), created_at: deps.clock.now() })
      .execute(),
  );
  return id;
}

/**
 * An issuer the outbound client refuses at once (a documentation address): a configuration for it is complete,
 * and a sign-in through it fails before any network traffic (the permission matrix's SSO fixtures).
 */
export const UNREACHABLE_ISSUER = "https://192.0.2.10/matrix";

/** The permission matrix's SSO fixtures of a tenant: a configuration and a domain claim. */
export async function ssoFixtures(deps: IdentityDeps, tenantId: string) {
  const configuration = await addConfiguration(deps, tenantId, { issuer: UNREACHABLE_ISSUER });
  const ssoDomainId = await claimDomain(deps, tenantId, `claimed-${unique()}.matrix.test`);
  return { ssoConfigurationId: configuration.id, ssoDomainId };
}

/** A browser on the app: keeps the cookies it is given, sends them back, sends same-origin requests. */
export class TestBrowser {
  readonly cookies = new Map<string, string>();
  readonly address = randomAddress();
  readonly app: TestApp;
  constructor(app: TestApp) {
    this.app = app;
  }

  cookie(name: string): string | undefined {
    return this.cookies.get(name);
  }

  async request(
    method: "GET" | "POST" | "DELETE",
    url: string,
    payload?: Record<string, unknown>,
  ): Promise<LightMyRequestResponse> {
    const cookie = [...this.cookies].map(([name, value]) => `${name}=${value}`).join("; ");
    const response = await this.app.app.inject({
      method,
      url,
      remoteAddress: this.address,
      headers: { "sec-fetch-site": "same-origin", ...(cookie ? { cookie } : {}) },
      ...(payload ? { payload } : {}),
    });
    for (const set of response.cookies) {
      const maxAge = (set as { maxAge?: number }).maxAge;
      if (set.value === "" || maxAge === 0) this.cookies.delete(set.name);
      else this.cookies.set(set.name, set.value);
    }
    return response;
  }
}

/** Whom a test provider signs in, and how it says it authenticated them (the ID token's `amr`). */
export interface ProviderLogin {
  sub: string;
  amr?: string[];
}

/** What the harness needs of an OpenID provider started by a test (test/support/oidc-provider.ts has one). */
export interface TestProvider {
  issuer: string;
  addClient(client: { clientId: string; clientSecret: string; redirectUri: string }): void;
  setAccount(account: { sub: string; claims: Record<string, unknown> }): void;
  authorize(url: string | URL, login: ProviderLogin): Promise<URL>;
}

/** The flow of a browser through Charter and a test provider, and what it left in the database. */
export function ssoHarness(deps: IdentityDeps, providers: readonly [TestProvider, ...TestProvider[]]) {
  const main = providers[0] as TestProvider;
  const sessionCookie = sessionCookieName(TEST_PUBLIC_URL);

  /** A configuration of `tenantId` for `provider`, registered there as a client with its redirect URI. */
  async function configure(tenantId: string, provider: TestProvider = main, fields: { mfaAmrValues?: string[] } = {}) {
    const configuration = await addConfiguration(deps, tenantId, { issuer: provider.issuer, ...fields });
    provider.addClient({
      clientId: configuration.clientId,
      clientSecret: configuration.clientSecret,
      redirectUri: ssoRedirectUri(TEST_PUBLIC_URL, configuration.id),
    });
    return configuration;
  }

  /** A person every provider knows, with these claims. */
  function person(claims: Record<string, unknown>): ProviderLogin {
    const sub = `sub-${unique()}`;
    for (const provider of providers) provider.setAccount({ sub, claims });
    return { sub };
  }

  const start = (browser: TestBrowser, tenantId: string, configurationId: string, query = "") =>
    browser.request("GET", `/api/v1/tenants/${tenantId}/sso/${configurationId}/start${query}`);

  /** Start, sign in at the provider, come back: the provider's redirect and Charter's answer to it. */
  async function signInThrough(
    browser: TestBrowser,
    tenantId: string,
    configurationId: string,
    login: ProviderLogin,
    tamper: { request?: (url: URL) => URL; answer?: (url: URL) => URL } = {},
  ): Promise<{ answer: URL; response: LightMyRequestResponse }> {
    const started = await start(browser, tenantId, configurationId);
    if (started.statusCode !== 302) throw new Error(`the start answered ${started.statusCode}: ${started.body}`);
    const request = new URL(started.headers.location as string);
    let answer = await main.authorize(tamper.request ? tamper.request(request) : request, login);
    if (tamper.answer) answer = tamper.answer(answer);
    return { answer, response: await browser.request("GET", `${answer.pathname}${answer.search}`) };
  }

  /** The live session the browser's cookie is the current token of. */
  const sessionOf = (browser: TestBrowser) =>
    deps.db.withPlatform((tx) =>
      tx
        .selectFrom("sessions as s")
        .innerJoin("session_tokens as k", "k.session_id", "s.id")
        .select(["s.id", "s.user_id", "s.factors", "s.state"])
        .where("k.token_hash", "=", hashToken(browser.cookie(sessionCookie) ?? ""))
        .where("k.replaced_at", "is", null)
        .where("s.revoked_at", "is", null)
        .executeTakeFirst(),
    );

  const usersByEmail = (email: string) => {
    const index = emailIndexOf(deps.keyRing, email).index;
    return deps.db.withPlatform((tx) => tx.selectFrom("users").selectAll().where("email_index", "=", index).execute());
  };

  /** The reasons audited (auth.sso-failed) for one request. */
  const failuresOf = (requestId: string) =>
    deps.db.withPlatform(async (tx) => {
      const rows = await tx
        .selectFrom("platform_audit_events")
        .select("details")
        .where("action", "=", "auth.sso-failed")
        .where("request_id", "=", requestId)
        .execute();
      return rows.map((row) => (row.details as { reason: string }).reason);
    });

  return { configure, person, start, signInThrough, sessionOf, usersByEmail, failuresOf, sessionCookie };
}
