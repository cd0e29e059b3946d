-- Legal holds (promises P4, P9): while a hold covers a tenant, a subject or a record type, erasure, key
-- destruction, retention sweeps and file expiry keep what it covers. Tenant table per ARCHITECTURE.md:
-- tenant_id leads every key, row-level security enabled and forced with the one canonical policy;
-- ids (UUIDv7) and timestamps come from the application and its clock.

CREATE TABLE legal_holds (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  scope text NOT NULL CHECK (scope IN ('tenant', 'subject', 'record-type')),
  subject_id uuid,
  record_type text CHECK (record_type ~ '^[a-z][a-z0-9_]{0,62}$'),
  reason text NOT NULL CHECK (char_length(reason) BETWEEN 1 AND 2000),
  placed_by_kind text NOT NULL CHECK (placed_by_kind IN ('user', 'api-key', 'operator', 'system')),
  placed_by_id uuid,
  placed_at timestamptz NOT NULL,
  expires_at timestamptz,
  released_at timestamptz,
  PRIMARY KEY (tenant_id, id),
  CHECK ((scope = 'subject') = (subject_id IS NOT NULL)),
  CHECK ((scope = 'record-type') = (record_type IS NOT NULL)),
  CHECK (placed_by_kind = 'system' OR placed_by_id IS NOT NULL),
  CHECK (expires_at IS NULL OR expires_at > placed_at),
  CHECK (released_at IS NULL OR released_at >= placed_at)
);
CREATE INDEX legal_holds_subject ON legal_holds (tenant_id, subject_id) WHERE subject_id IS NOT NULL;
ALTER TABLE legal_holds ENABLE ROW LEVEL SECURITY;
ALTER TABLE legal_holds FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON legal_holds
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);
