-- Identity (issue 5; promises T2, T3, T5, T6, T7, A1, A5, A7): global user accounts, their sessions and
-- emailed tokens, the operator, and per tenant the memberships with their roles, invitations and API keys.
-- Users are global (platform tables); everything a tenant administers is a tenant table that names people
-- by membership (tenant_id, id), never by user.

-- A tenant's lifecycle: the identity module enforces it on every request; later issues drive the moves.
ALTER TABLE tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_status_check
  CHECK (status IN ('active', 'suspended', 'cancelled', 'pending-deletion', 'deleted'));

-- Guests see only records shared with them; a tenant may switch guest sharing off altogether.
ALTER TABLE tenant_settings ADD COLUMN guest_sharing boolean NOT NULL DEFAULT true;

CREATE TABLE users (
  id uuid PRIMARY KEY,
  -- The address, sealed under the user's person key (erasing the person shreds it).
  email text NOT NULL,
  -- Keyed blind index of the normalised address (platform scope): finds the account at sign-in.
  email_index bytea NOT NULL CHECK (octet_length(email_index) = 32),
  email_verified_at timestamptz,
  display_name text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 100),
  avatar_file_id uuid REFERENCES platform_files (id),
  -- Argon2id in PHC string form; NULL for an account without a password (passkey or SSO only, later).
  password_hash text CHECK (password_hash LIKE '$argon2id$%'),
  password_changed_at timestamptz,
  -- Bumped by role changes and suspensions: sessions behind it rotate on their next request.
  privilege_epoch bigint NOT NULL DEFAULT 0 CHECK (privilege_epoch >= 0),
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);
-- One verified account per address; unverified sign-ups for the same address may coexist until the real
-- owner of the mailbox verifies, which wipes the others.
CREATE UNIQUE INDEX users_verified_email ON users (email_index) WHERE email_verified_at IS NOT NULL;
CREATE INDEX users_email_index ON users (email_index);
CREATE INDEX users_avatar_file ON users (avatar_file_id) WHERE avatar_file_id IS NOT NULL;

-- Single-use tokens sent by email. Only the SHA-256 of the token is stored.
CREATE TABLE account_tokens (
  id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  purpose text NOT NULL CHECK (purpose IN ('verify-email', 'reset-password', 'change-email', 'revert-email')),
  token_hash bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
  -- change-email: the new address; revert-email: the address to return to (sealed under the person key).
  email text,
  email_index bytea CHECK (octet_length(email_index) = 32),
  created_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL CHECK (expires_at > created_at),
  used_at timestamptz,
  CHECK ((email IS NULL) = (email_index IS NULL)),
  CHECK ((purpose IN ('change-email', 'revert-email')) = (email IS NOT NULL))
);
CREATE INDEX account_tokens_user ON account_tokens (user_id, purpose);

CREATE TABLE sessions (
  id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  -- pending-second-factor: a password was right but a second factor is enrolled; it can only complete it.
  state text NOT NULL CHECK (state IN ('active', 'pending-second-factor')),
  -- How the user authenticated: [{ method, at, tenantId? }], appended on each sign-in factor and step-up.
  factors jsonb NOT NULL CHECK (jsonb_typeof(factors) = 'array'),
  privilege_epoch bigint NOT NULL CHECK (privilege_epoch >= 0),
  -- A short description of the browser ("Firefox on Linux"), so the user can recognise their sessions.
  device text CHECK (char_length(device) <= 100),
  created_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL CHECK (expires_at > created_at),
  revoked_at timestamptz,
  revoke_reason text CHECK (revoke_reason ~ '^[a-z][a-z0-9-]{0,63}$'),
  CHECK ((revoked_at IS NULL) = (revoke_reason IS NULL))
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- Every token a session was issued, by hash. The current one has replaced_at NULL; a replaced one is
-- accepted until grace_until (requests already in flight) and its later use revokes the session.
CREATE TABLE session_tokens (
  token_hash bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
  session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
  issued_at timestamptz NOT NULL,
  replaced_at timestamptz,
  grace_until timestamptz,
  CHECK (grace_until IS NULL OR replaced_at IS NOT NULL)
);
CREATE INDEX session_tokens_session ON session_tokens (session_id);
CREATE UNIQUE INDEX session_tokens_current ON session_tokens (session_id) WHERE replaced_at IS NULL;

-- Operators run the platform: they create, suspend and reinstate tenants and hold no membership.
CREATE TABLE operators (
  user_id uuid PRIMARY KEY REFERENCES users (id),
  created_at timestamptz NOT NULL
);

-- The one-time link shown on the terminal at first start, to create the first operator.
CREATE TABLE operator_setup_tokens (
  id uuid PRIMARY KEY,
  token_hash bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
  created_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL CHECK (expires_at > created_at),
  used_at timestamptz,
  used_by uuid REFERENCES users (id)
);
CREATE INDEX operator_setup_tokens_used_by ON operator_setup_tokens (used_by) WHERE used_by IS NOT NULL;

CREATE TABLE memberships (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  -- The one link from a tenant to the global user; everything else in the tenant names the membership.
  -- No foreign key: a tenant table's keys all include tenant_id (T8; a sharded tenant table cannot refer
  -- to a row elsewhere). The identity service checks the user in the membership's transaction, and users
  -- with memberships are never deleted (only unverified accounts, which cannot hold one, are wiped).
  user_id uuid NOT NULL,
  role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer', 'guest')),
  status text NOT NULL CHECK (status IN ('active', 'removed')),
  created_at timestamptz NOT NULL,
  invited_by uuid,
  role_changed_at timestamptz,
  removed_at timestamptz,
  removed_by uuid,
  PRIMARY KEY (tenant_id, id),
  FOREIGN KEY (tenant_id, invited_by) REFERENCES memberships (tenant_id, id),
  FOREIGN KEY (tenant_id, removed_by) REFERENCES memberships (tenant_id, id),
  CHECK ((status = 'removed') = (removed_at IS NOT NULL))
);
-- A removed membership is kept (history and audit references stay valid); a user has one live one.
CREATE UNIQUE INDEX memberships_live_user ON memberships (tenant_id, user_id) WHERE status = 'active';
CREATE INDEX memberships_user ON memberships (user_id);
CREATE INDEX memberships_role ON memberships (tenant_id, role) WHERE status = 'active';
CREATE INDEX memberships_invited_by ON memberships (tenant_id, invited_by) WHERE invited_by IS NOT NULL;
CREATE INDEX memberships_removed_by ON memberships (tenant_id, removed_by) WHERE removed_by IS NOT NULL;
ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memberships
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

-- "Which tenants am I in", without reading memberships across tenants (row-level security forbids it):
-- one row per live membership, written in the membership's transaction. Not named tenant_id: a platform
-- table, read by user.
CREATE TABLE user_tenants (
  user_id uuid NOT NULL REFERENCES users (id),
  member_of uuid NOT NULL REFERENCES tenants (id),
  membership_id uuid NOT NULL,
  PRIMARY KEY (user_id, member_of)
);
CREATE INDEX user_tenants_member_of ON user_tenants (member_of);

CREATE TABLE invitations (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  -- The invited address, sealed under the tenant key, and its blind index (tenant scope).
  email text NOT NULL,
  email_index bytea NOT NULL CHECK (octet_length(email_index) = 32),
  role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer', 'guest')),
  token_hash bytea NOT NULL CHECK (octet_length(token_hash) = 32),
  -- NULL when the operator invited the first owner of a tenant it created.
  invited_by uuid,
  created_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL CHECK (expires_at > created_at),
  accepted_at timestamptz,
  accepted_by uuid,
  revoked_at timestamptz,
  PRIMARY KEY (tenant_id, id),
  UNIQUE (tenant_id, token_hash),
  FOREIGN KEY (tenant_id, invited_by) REFERENCES memberships (tenant_id, id),
  FOREIGN KEY (tenant_id, accepted_by) REFERENCES memberships (tenant_id, id),
  CHECK ((accepted_at IS NULL) = (accepted_by IS NULL))
);
CREATE INDEX invitations_invited_by ON invitations (tenant_id, invited_by) WHERE invited_by IS NOT NULL;
CREATE INDEX invitations_accepted_by ON invitations (tenant_id, accepted_by) WHERE accepted_by IS NOT NULL;
CREATE INDEX invitations_email ON invitations (tenant_id, email_index);
ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE invitations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invitations
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

-- API keys: chk_<id>_<secret><checksum>, stored as the SHA-256 of the secret, looked up by id.
CREATE TABLE api_keys (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  -- personal: belongs to a membership and dies with it; service: belongs to the tenant.
  kind text NOT NULL CHECK (kind IN ('personal', 'service')),
  membership_id uuid,
  role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
  name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
  secret_hash bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
  created_by uuid NOT NULL,
  created_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL CHECK (expires_at > created_at),
  last_used_at timestamptz,
  revoked_at timestamptz,
  revoked_by uuid,
  PRIMARY KEY (tenant_id, id),
  FOREIGN KEY (tenant_id, membership_id) REFERENCES memberships (tenant_id, id),
  FOREIGN KEY (tenant_id, created_by) REFERENCES memberships (tenant_id, id),
  FOREIGN KEY (tenant_id, revoked_by) REFERENCES memberships (tenant_id, id),
  CHECK ((kind = 'personal') = (membership_id IS NOT NULL))
);
CREATE INDEX api_keys_membership ON api_keys (tenant_id, membership_id) WHERE membership_id IS NOT NULL;
CREATE INDEX api_keys_created_by ON api_keys (tenant_id, created_by);
CREATE INDEX api_keys_revoked_by ON api_keys (tenant_id, revoked_by) WHERE revoked_by IS NOT NULL;
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);
