-- Issue 6 (promise A3): OpenID Connect single sign-on per tenant. A tenant configures its identity providers and
-- verifies the email domains it vouches for; a person signed in by a provider is known to the tenant by a
-- federated identity keyed by (configuration, issuer, subject), never by email. The sign-in itself runs through two
-- short-lived platform records: the authorization request (state, nonce and PKCE, bound to the browser) and, when
-- the provider names an address that already has an account, the link waiting for that account's own factor.

CREATE TABLE sso_configurations (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  -- What the sign-in button says ("Sign in with <name>").
  name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
  -- The provider's issuer identifier: an https URL without query, fragment or credentials.
  issuer text NOT NULL CHECK (issuer ~ '^https://[^/?#@]+(/[^?#]*)?$' AND char_length(issuer) <= 500),
  client_id text NOT NULL CHECK (char_length(client_id) BETWEEN 1 AND 255),
  -- The client secret, sealed under the tenant key; never answered by the API.
  client_secret text NOT NULL,
  -- Claim mapping: which claims of the provider carry the address and the display name.
  email_claim text NOT NULL CHECK (email_claim ~ '^[A-Za-z0-9_.:-]{1,64}$'),
  name_claim text NOT NULL CHECK (name_claim ~ '^[A-Za-z0-9_.:-]{1,64}$'),
  -- The provider's `amr` values that the tenant accepts as multi-factor authentication.
  mfa_amr_values text[] NOT NULL DEFAULT '{}' CHECK (cardinality(mfa_amr_values) <= 20),
  enabled boolean NOT NULL,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, id)
);
ALTER TABLE sso_configurations ENABLE ROW LEVEL SECURITY;
ALTER TABLE sso_configurations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sso_configurations
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

-- An email domain the tenant claims; verified once a DNS TXT record `charter-verification=<token>` is found at
-- `_charter.<domain>`. Only addresses of verified domains get just-in-time membership.
CREATE TABLE sso_domains (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  -- Lower case, ASCII (an internationalised name in its punycode form).
  domain text NOT NULL CHECK (domain ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$'
    AND char_length(domain) <= 253),
  -- The value to publish; not a secret (it is meant for public DNS), only a proof of control.
  verification_token text NOT NULL CHECK (verification_token ~ '^[A-Za-z0-9_-]{43}$'),
  created_at timestamptz NOT NULL,
  verified_at timestamptz,
  PRIMARY KEY (tenant_id, id),
  UNIQUE (tenant_id, domain)
);
ALTER TABLE sso_domains ENABLE ROW LEVEL SECURITY;
ALTER TABLE sso_domains FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sso_domains
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

-- A person as a provider knows them: (configuration, issuer, subject) → the membership it signs in. Deleting a
-- configuration deletes its identities.
CREATE TABLE sso_identities (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  configuration_id uuid NOT NULL,
  issuer text NOT NULL CHECK (char_length(issuer) <= 500),
  subject text NOT NULL CHECK (char_length(subject) BETWEEN 1 AND 255),
  membership_id uuid NOT NULL,
  created_at timestamptz NOT NULL,
  last_signed_in_at timestamptz,
  PRIMARY KEY (tenant_id, id),
  UNIQUE (tenant_id, configuration_id, issuer, subject),
  FOREIGN KEY (tenant_id, configuration_id) REFERENCES sso_configurations (tenant_id, id) ON DELETE CASCADE,
  FOREIGN KEY (tenant_id, membership_id) REFERENCES memberships (tenant_id, id)
);
CREATE INDEX sso_identities_membership ON sso_identities (tenant_id, membership_id);
ALTER TABLE sso_identities ENABLE ROW LEVEL SECURITY;
ALTER TABLE sso_identities FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sso_identities
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

-- One sign-in sent to a provider, before anyone is known: found by the SHA-256 of its `state`, bound to the
-- browser by the SHA-256 of a pre-authentication cookie, single use, 10 minutes. A platform table: the callback
-- learns its tenant from here (the redirect URI names only the configuration). Not named tenant_id.
CREATE TABLE sso_authorization_requests (
  id uuid PRIMARY KEY,
  for_tenant uuid NOT NULL REFERENCES tenants (id),
  -- The tenant's configuration (no foreign key: a platform table does not refer into a tenant table).
  configuration_id uuid NOT NULL,
  state_hash bytea NOT NULL UNIQUE CHECK (octet_length(state_hash) = 32),
  binding_hash bytea NOT NULL CHECK (octet_length(binding_hash) = 32),
  -- The PKCE code verifier and the nonce, sealed under the platform key.
  checks text NOT NULL,
  -- Where the browser goes once signed in: a path of this deployment.
  return_to text NOT NULL CHECK (return_to ~ '^/([^/\\]|$)' AND char_length(return_to) <= 500),
  created_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL CHECK (expires_at > created_at),
  used_at timestamptz
);
CREATE INDEX sso_authorization_requests_for_tenant ON sso_authorization_requests (for_tenant);
CREATE INDEX sso_authorization_requests_expires_at ON sso_authorization_requests (expires_at);

-- A provider vouched for an address that already has an account: the account is linked only once its owner
-- proves one of their own factors in the same browser within 10 minutes, then confirms.
CREATE TABLE sso_pending_links (
  id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  for_tenant uuid NOT NULL REFERENCES tenants (id),
  configuration_id uuid NOT NULL,
  issuer text NOT NULL CHECK (char_length(issuer) <= 500),
  subject text NOT NULL CHECK (char_length(subject) BETWEEN 1 AND 255),
  -- The provider's `amr` included a value the tenant accepts as multi-factor.
  mfa boolean NOT NULL,
  binding_hash bytea NOT NULL CHECK (octet_length(binding_hash) = 32),
  created_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL CHECK (expires_at > created_at),
  used_at timestamptz
);
CREATE INDEX sso_pending_links_user ON sso_pending_links (user_id);
CREATE INDEX sso_pending_links_for_tenant ON sso_pending_links (for_tenant);
CREATE INDEX sso_pending_links_binding ON sso_pending_links (binding_hash);
CREATE INDEX sso_pending_links_expires_at ON sso_pending_links (expires_at);
