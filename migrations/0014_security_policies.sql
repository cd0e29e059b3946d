-- Issue 6 (promise A4): each tenant's security policy — require MFA, require SSO, a session lifetime, the sign-in
-- methods it accepts, whether API keys may be used — enforced on every request to the tenant from the factors the
-- session recorded; and break-glass access for one designated owner when the tenant's SSO provider is down.

CREATE TABLE security_policies (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  require_mfa boolean NOT NULL DEFAULT false,
  require_sso boolean NOT NULL DEFAULT false,
  -- Sessions older than this (from sign-in) no longer open the tenant; NULL: the platform's 7 days.
  session_lifetime_minutes integer CHECK (session_lifetime_minutes BETWEEN 15 AND 10080),
  -- The sign-in methods whose factor opens the tenant.
  allowed_methods text[] NOT NULL DEFAULT '{password,passkey,sso}'
    CHECK (cardinality(allowed_methods) >= 1 AND allowed_methods <@ '{password,passkey,sso}'::text[]),
  allow_personal_keys boolean NOT NULL DEFAULT true,
  allow_service_keys boolean NOT NULL DEFAULT true,
  -- The owner who may open the tenant's security settings with a passkey while its SSO provider is down.
  break_glass_membership_id uuid,
  updated_at timestamptz NOT NULL,
  updated_by uuid,
  PRIMARY KEY (tenant_id, id),
  FOREIGN KEY (tenant_id, break_glass_membership_id) REFERENCES memberships (tenant_id, id),
  FOREIGN KEY (tenant_id, updated_by) REFERENCES memberships (tenant_id, id)
);
-- One policy per tenant (no row: the defaults).
CREATE UNIQUE INDEX security_policies_tenant ON security_policies (tenant_id);
CREATE INDEX security_policies_break_glass ON security_policies (tenant_id, break_glass_membership_id)
  WHERE break_glass_membership_id IS NOT NULL;
CREATE INDEX security_policies_updated_by ON security_policies (tenant_id, updated_by) WHERE updated_by IS NOT NULL;
ALTER TABLE security_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE security_policies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON security_policies
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

-- One break-glass opening: the designated owner's session may reach the security settings until expires_at.
CREATE TABLE break_glass_openings (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  membership_id uuid NOT NULL,
  -- The platform session that opened it (no foreign key: a tenant table refers only within its tenant).
  session_id uuid NOT NULL,
  opened_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL CHECK (expires_at > opened_at AND expires_at <= opened_at + interval '1 hour'),
  PRIMARY KEY (tenant_id, id),
  FOREIGN KEY (tenant_id, membership_id) REFERENCES memberships (tenant_id, id)
);
CREATE INDEX break_glass_openings_session ON break_glass_openings (tenant_id, session_id, expires_at);
CREATE INDEX break_glass_openings_membership ON break_glass_openings (tenant_id, membership_id);
ALTER TABLE break_glass_openings ENABLE ROW LEVEL SECURITY;
ALTER TABLE break_glass_openings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON break_glass_openings
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);
