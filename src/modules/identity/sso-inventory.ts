import { defineTable, notPersonal, type TableInventory, WITH_TENANT_DATA } from "../../platform/inventory/types.ts";
import { ONE_DAY, personal, throughMembership } from "./inventory-entries.ts";
import "./sso-schema.ts";

/**
 * The SSO tables (migration 0012). A tenant's provider settings and domains are the tenant's, kept with its data;
 * a federated identity is personal data of the member it signs in; the sign-in records in flight live minutes,
 * and are swept a day after they end.
 */

const tenantSetting = (purpose: string) => notPersonal("authentication", purpose, WITH_TENANT_DATA);
/** Sign-ins in flight end within 10 minutes; what is left of them goes a day later. */
const inFlight = (purpose: string) => notPersonal("authentication", purpose, ONE_DAY);
/** A federated identity signs its member in: kept with the tenant's data. */
const ofMember = (purpose: string) => personal("authentication", purpose, WITH_TENANT_DATA);
/** A pending link of an account, gone a day after the sign-in that left it. */
const ofUser = (purpose: string) => personal("authentication", purpose, ONE_DAY);

const configurations = defineTable("sso_configurations", {
  owner: "tenant",
  row: "one OpenID Connect provider a tenant signs its members in with (A3)",
  subject: { kind: "none" },
  columns: {
    tenant_id: tenantSetting("the tenant the provider signs in to"),
    id: tenantSetting("identifies the configuration; its redirect URI names it"),
    name: tenantSetting("what the sign-in button names the provider"),
    issuer: tenantSetting("the provider's issuer identifier: where it is discovered and what its tokens must name"),
    client_id: tenantSetting("the client id Charter is registered under at the provider"),
    client_secret: {
      ...tenantSetting("authenticates Charter to the provider's token endpoint; encrypted, never answered"),
      keyScope: "tenant",
    },
    email_claim: tenantSetting("which claim carries the member's address"),
    name_claim: tenantSetting("which claim carries the member's display name"),
    mfa_amr_values: tenantSetting("the provider's `amr` values the tenant accepts as multi-factor"),
    enabled: tenantSetting("whether members may sign in with the provider"),
    created_at: tenantSetting("when the configuration was created"),
    updated_at: tenantSetting("when the configuration last changed"),
  },
});

const domains = defineTable("sso_domains", {
  owner: "tenant",
  row: "one email domain a tenant claims for just-in-time membership, verified by a DNS TXT record",
  subject: { kind: "none" },
  columns: {
    tenant_id: tenantSetting("the tenant claiming the domain"),
    id: tenantSetting("identifies the claim"),
    domain: tenantSetting("the domain: addresses there may join the tenant through its provider once verified"),
    verification_token: tenantSetting("the value the tenant publishes in DNS to prove it controls the domain"),
    created_at: tenantSetting("when the domain was claimed"),
    verified_at: tenantSetting("when the TXT record was found; only then does the domain count"),
  },
});

const identities = defineTable("sso_identities", {
  owner: "tenant",
  row: "one person as a tenant's provider knows them: (configuration, issuer, subject) → membership",
  subject: throughMembership("membership_id"),
  columns: {
    tenant_id: notPersonal("authentication", "the tenant", WITH_TENANT_DATA),
    id: ofMember("identifies the federated identity"),
    configuration_id: ofMember("the provider that vouches for the person"),
    issuer: ofMember("the provider's issuer when the identity was linked: a token of another issuer never matches"),
    subject: ofMember("the provider's identifier of the person (its `sub`), what sign-in matches, never the email"),
    membership_id: ofMember("the membership the provider signs in"),
    created_at: ofMember("when the identity was linked"),
    last_signed_in_at: ofMember("when the provider last signed the person in"),
  },
});

const authorizationRequests = defineTable("sso_authorization_requests", {
  owner: "platform",
  row: "one sign-in sent to a tenant's provider: state, nonce and PKCE, bound to the browser, single use",
  subject: { kind: "none" },
  columns: {
    id: inFlight("identifies the request"),
    for_tenant: inFlight("the tenant whose provider was asked"),
    configuration_id: inFlight("the configuration whose redirect URI must receive the answer"),
    state_hash: inFlight("finds the request from the provider's answer (SHA-256 of the random state)"),
    binding_hash: inFlight("binds the answer to the browser that started it (SHA-256 of a cookie)"),
    checks: {
      ...inFlight("the PKCE verifier and nonce the answer is checked with; encrypted"),
      keyScope: "platform",
    },
    return_to: inFlight("the page of Charter the browser returns to"),
    created_at: inFlight("when the sign-in started"),
    expires_at: inFlight("when the request stops working (10 minutes)"),
    used_at: inFlight("when the answer came: a request is answered once"),
  },
});

const pendingLinks = defineTable("sso_pending_links", {
  owner: "platform",
  row: "a provider's sign-in for an address that has an account, waiting for the account's own factor",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    id: ofUser("identifies the pending link"),
    user_id: ofUser("the account the provider named by its address"),
    for_tenant: ofUser("the tenant whose provider signed the person in"),
    configuration_id: ofUser("the provider that signed the person in"),
    issuer: ofUser("the provider's issuer"),
    subject: ofUser("the provider's identifier of the person, linked once the account's owner confirms"),
    mfa: ofUser("whether the provider's sign-in counts as multi-factor in the tenant"),
    binding_hash: ofUser("binds the link to the browser that signed in (SHA-256 of a cookie)"),
    created_at: ofUser("when the provider signed the person in"),
    expires_at: ofUser("when the link stops working (10 minutes)"),
    used_at: ofUser("when the owner confirmed: a link is used once"),
  },
});

/** The SSO tables, for the identity module's inventory. */
export const ssoInventory: readonly TableInventory[] = [
  configurations,
  domains,
  identities,
  authorizationRequests,
  pendingLinks,
];
