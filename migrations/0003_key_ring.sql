-- Key ring (promises E2, E4, P4): master key → platform key → person keys; master key → tenant key →
-- subject keys (ARCHITECTURE.md "Keys"). Every key is stored wrapped (AES-256-GCM, crypto/wrap.ts) by its
-- parent; a destroyed key keeps its row as a tombstone with wrapped_key NULL and destroyed_at set, so an
-- envelope naming it fails as "unknown key" and the version sequence never reuses a number.
-- Ids (UUIDv7) and timestamps come from the application and its clock.

-- Wrapped by the master key; the fingerprint names which one, so a master key rotation can find and
-- re-wrap what the old key wrapped.
CREATE TABLE platform_keys (
  id uuid PRIMARY KEY,
  version integer NOT NULL UNIQUE CHECK (version >= 1),
  wrapped_key text NOT NULL,
  master_key_fingerprint text NOT NULL CHECK (master_key_fingerprint ~ '^[0-9a-f]{16}$'),
  created_at timestamptz NOT NULL
);

-- Keys of people the platform itself holds data about (users of Charter, trust-center subscribers),
-- wrapped by a platform key.
CREATE TABLE person_keys (
  id uuid PRIMARY KEY,
  -- NULL once the person is erased: the tombstone then links to no one.
  person_id uuid,
  version integer NOT NULL CHECK (version >= 1),
  platform_key_id uuid NOT NULL REFERENCES platform_keys (id),
  wrapped_key text,
  created_at timestamptz NOT NULL,
  destroyed_at timestamptz,
  UNIQUE (person_id, version),
  CHECK ((wrapped_key IS NULL) = (destroyed_at IS NOT NULL))
);
CREATE INDEX person_keys_platform_key ON person_keys (platform_key_id);

-- People erased: a new key for them is refused, so nothing new can be encrypted for them.
CREATE TABLE erased_people (
  person_id uuid PRIMARY KEY,
  erased_at timestamptz NOT NULL
);

-- Which journal entries this database has applied (crypto/journal-replay.ts): start-up replays only
-- what comes after, and a journal shorter than what was applied is refused as truncated.
CREATE TABLE journal_replays (
  journal_id text PRIMARY KEY CHECK (journal_id ~ '^[0-9a-f]{64}$'),
  applied_seq bigint NOT NULL CHECK (applied_seq >= 1),
  applied_hash text NOT NULL CHECK (applied_hash ~ '^[0-9a-f]{64}$'),
  replayed_at timestamptz NOT NULL
);

-- One key per tenant (more after a rotation), wrapped by the master key.
CREATE TABLE tenant_keys (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  version integer NOT NULL CHECK (version >= 1),
  wrapped_key text,
  master_key_fingerprint text NOT NULL CHECK (master_key_fingerprint ~ '^[0-9a-f]{16}$'),
  created_at timestamptz NOT NULL,
  destroyed_at timestamptz,
  PRIMARY KEY (tenant_id, id),
  UNIQUE (tenant_id, version),
  CHECK ((wrapped_key IS NULL) = (destroyed_at IS NOT NULL))
);
ALTER TABLE tenant_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_keys
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

-- Keys of a tenant's data subjects (people in its CRM), wrapped by a tenant key. A subject may have
-- several: rotation, merged subjects.
CREATE TABLE subject_keys (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  -- NULL once the subject is erased: the tombstone then links to no one.
  subject_id uuid,
  version integer NOT NULL CHECK (version >= 1),
  tenant_key_id uuid NOT NULL,
  wrapped_key text,
  created_at timestamptz NOT NULL,
  destroyed_at timestamptz,
  PRIMARY KEY (tenant_id, id),
  UNIQUE (tenant_id, subject_id, version),
  FOREIGN KEY (tenant_id, tenant_key_id) REFERENCES tenant_keys (tenant_id, id),
  CHECK ((wrapped_key IS NULL) = (destroyed_at IS NOT NULL))
);
CREATE INDEX subject_keys_tenant_key ON subject_keys (tenant_id, tenant_key_id);
ALTER TABLE subject_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE subject_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON subject_keys
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

-- Subjects erased in a tenant: a new key for them is refused.
CREATE TABLE erased_subjects (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  subject_id uuid NOT NULL,
  erased_at timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, id),
  UNIQUE (tenant_id, subject_id)
);
ALTER TABLE erased_subjects ENABLE ROW LEVEL SECURITY;
ALTER TABLE erased_subjects FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON erased_subjects
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);
