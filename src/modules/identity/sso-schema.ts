import type { ColumnType } from "kysely";

declare module "../../platform/db/schema.ts" {
  interface Tables {
    sso_configurations: SsoConfigurationsTable;
    sso_domains: SsoDomainsTable;
    sso_identities: SsoIdentitiesTable;
    sso_authorization_requests: SsoAuthorizationRequestsTable;
    sso_pending_links: SsoPendingLinksTable;
  }
}

type CreatedAt = ColumnType<Date, Date | string, never>;
type Time = ColumnType<Date, Date | string, Date | string>;
type NullableTime = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;

/** Migration 0012. One OpenID provider a tenant signs its members in with. */
export interface SsoConfigurationsTable {
  tenant_id: string;
  id: string;
  name: string;
  issuer: string;
  client_id: string;
  /** Key ring envelope of the client secret, under the tenant key. */
  client_secret: string;
  email_claim: string;
  name_claim: string;
  mfa_amr_values: ColumnType<string[], string[] | undefined, string[]>;
  enabled: boolean;
  created_at: CreatedAt;
  updated_at: Time;
}

/** Migration 0012. An email domain the tenant claims, verified by a DNS TXT record. */
export interface SsoDomainsTable {
  tenant_id: string;
  id: string;
  domain: string;
  verification_token: string;
  created_at: CreatedAt;
  verified_at: NullableTime;
}

/** Migration 0012. (configuration, issuer, subject) → the membership the provider signs in. */
export interface SsoIdentitiesTable {
  tenant_id: string;
  id: string;
  configuration_id: string;
  issuer: string;
  subject: string;
  membership_id: string;
  created_at: CreatedAt;
  last_signed_in_at: NullableTime;
}

/** Migration 0012. One authorization request sent to a provider: single use, bound to the browser. */
export interface SsoAuthorizationRequestsTable {
  id: string;
  for_tenant: string;
  configuration_id: string;
  /** SHA-256 of the `state` parameter. */
  state_hash: Buffer;
  /** SHA-256 of the pre-authentication cookie. */
  binding_hash: Buffer;
  /** Key ring envelope (platform key) of the PKCE code verifier and the nonce, as JSON. */
  checks: string;
  return_to: string;
  created_at: CreatedAt;
  expires_at: ColumnType<Date, Date | string, never>;
  used_at: NullableTime;
}

/** Migration 0012. A provider's sign-in for an existing account, waiting for that account's own factor. */
export interface SsoPendingLinksTable {
  id: string;
  user_id: string;
  for_tenant: string;
  configuration_id: string;
  issuer: string;
  subject: string;
  mfa: boolean;
  binding_hash: Buffer;
  created_at: CreatedAt;
  expires_at: ColumnType<Date, Date | string, never>;
  used_at: NullableTime;
}
