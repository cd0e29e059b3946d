-- Issue 6 (promise A6): growing backoff on failed authentication, the browsers that signed in to an account
-- before (a device cookie), and the alerts raised on anomalous authentication and access.

-- Growing backoff after failed sign-ins, second factors, resets and verifications, per account, per source
-- address and per known device. Keyed by an HMAC of the key (flow, kind and value), so no address or account
-- id is stored in clear. A row is forgotten (expires_at) after a quiet spell without failures.
CREATE TABLE auth_backoff (
  key_hash bytea PRIMARY KEY CHECK (octet_length(key_hash) = 32),
  -- Failures since the counter last started (a success or a quiet spell starts it again).
  failures integer NOT NULL CHECK (failures >= 1),
  last_failure_at timestamptz NOT NULL,
  -- Until when every attempt is refused (429) without being checked; NULL while failures are still free.
  blocked_until timestamptz,
  expires_at timestamptz NOT NULL CHECK (expires_at > last_failure_at)
);
CREATE INDEX auth_backoff_expires_at ON auth_backoff (expires_at);

-- A browser that signed in to an account: the cookie `charter_device` holds a random token, of which only the
-- SHA-256 is kept. One browser signed in to several accounts holds one token with a row per account.
CREATE TABLE known_devices (
  id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  token_hash bytea NOT NULL CHECK (octet_length(token_hash) = 32),
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL CHECK (last_seen_at >= first_seen_at),
  UNIQUE (user_id, token_hash)
);
CREATE INDEX known_devices_token ON known_devices (token_hash);
CREATE INDEX known_devices_last_seen_at ON known_devices (last_seen_at);

-- What the failed sign-ins of an existing account add up to, for its alerts: failures since the last success
-- (a success after several is an alert), and the failures of the current 15-minute window (a burst is one
-- alert per window, burst_alerted_at says whether it was raised).
CREATE TABLE sign_in_failures (
  user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
  since_success integer NOT NULL CHECK (since_success >= 1),
  window_started_at timestamptz NOT NULL,
  in_window integer NOT NULL CHECK (in_window >= 1),
  burst_alerted_at timestamptz,
  last_failure_at timestamptz NOT NULL
);
CREATE INDEX sign_in_failures_last_failure_at ON sign_in_failures (last_failure_at);

-- An alert about a user's account, shown to the user. A tenant's alert (an API key, a role granted) names
-- the tenant it happened in (a platform table: not named tenant_id).
CREATE TABLE user_alerts (
  id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  kind text NOT NULL CHECK (kind IN ('failed-sign-in-burst', 'sign-in-after-failures', 'new-device', 'factor-added',
    'factor-removed', 'backup-code-used', 'api-key-created', 'privileged-role-granted', 'break-glass-used')),
  severity text NOT NULL CHECK (severity IN ('info', 'warning')),
  in_tenant uuid REFERENCES tenants (id),
  -- Ids and methods only, never personal data or secrets.
  details jsonb NOT NULL CHECK (jsonb_typeof(details) = 'object'),
  created_at timestamptz NOT NULL,
  read_at timestamptz
);
CREATE INDEX user_alerts_user ON user_alerts (user_id, id);
CREATE INDEX user_alerts_in_tenant ON user_alerts (in_tenant) WHERE in_tenant IS NOT NULL;

-- An alert shown to a tenant's owners and admins: one raised in the tenant, or a copy of an alert about the
-- account of one of its members (named by membership, never by user).
CREATE TABLE tenant_alerts (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  membership_id uuid,
  kind text NOT NULL CHECK (kind IN ('failed-sign-in-burst', 'sign-in-after-failures', 'new-device', 'factor-added',
    'factor-removed', 'backup-code-used', 'api-key-created', 'privileged-role-granted', 'break-glass-used')),
  severity text NOT NULL CHECK (severity IN ('info', 'warning')),
  details jsonb NOT NULL CHECK (jsonb_typeof(details) = 'object'),
  created_at timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, id),
  FOREIGN KEY (tenant_id, membership_id) REFERENCES memberships (tenant_id, id)
);
CREATE INDEX tenant_alerts_membership ON tenant_alerts (tenant_id, membership_id) WHERE membership_id IS NOT NULL;
ALTER TABLE tenant_alerts ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_alerts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_alerts
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);
