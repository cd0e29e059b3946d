-- Kernel: the tenant registry, per-tenant settings and feature switches, and rate-limit state.
-- Runs as charter_owner. Tenant tables follow ARCHITECTURE.md: tenant_id leads every key,
-- row-level security is enabled and forced with the one canonical policy.

ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO charter_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO charter_app;

CREATE TABLE tenants (
  id uuid PRIMARY KEY,
  slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
  name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
  status text NOT NULL CHECK (status IN ('active', 'suspended')),
  created_at timestamptz NOT NULL
);

CREATE TABLE tenant_settings (
  tenant_id uuid PRIMARY KEY REFERENCES tenants (id),
  time_zone text NOT NULL CHECK (char_length(time_zone) BETWEEN 1 AND 64),
  locale text NOT NULL CHECK (locale ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$'),
  updated_at timestamptz NOT NULL
);
ALTER TABLE tenant_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_settings
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

CREATE TABLE tenant_features (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  feature text NOT NULL CHECK (feature ~ '^[a-z][a-z0-9_.-]{0,63}$'),
  enabled boolean NOT NULL,
  changed_at timestamptz NOT NULL,
  changed_by uuid,
  PRIMARY KEY (tenant_id, id),
  UNIQUE (tenant_id, feature)
);
ALTER TABLE tenant_features ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_features FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_features
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

-- Counters of the platform rate limiter. The key is an HMAC of the address, account or token,
-- so the table holds no addresses in clear.
CREATE TABLE rate_limit_buckets (
  key_hash bytea PRIMARY KEY,
  window_start timestamptz NOT NULL,
  hits bigint NOT NULL CHECK (hits >= 0),
  expires_at timestamptz NOT NULL
);
CREATE INDEX rate_limit_buckets_expires_at ON rate_limit_buckets (expires_at);
