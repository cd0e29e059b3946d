-- Audit log (promises L1, L3, L5): hash chains per (tenant, stream) and, for events with no tenant, per
-- (stream, actor shard) on the platform. The event shape, the canonical form and the hash are in
-- src/platform/audit/event.ts. Events are INSERT-only for the runtime role; the chain heads are the lock
-- that serialises a chain, so sequence order is commit order.

-- One row per chain; every append updates its chain's row (the row lock serialises a chain, so sequence
-- order = commit order). Tenant chains: 'tenant/<tenant uuid>/<stream>'; platform chains:
-- 'platform/<stream>/<shard 00..15>'.
CREATE TABLE audit_chain_heads (
  chain_id text PRIMARY KEY
    CHECK (chain_id ~ '^(tenant/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/[a-z]+|platform/[a-z]+/(0[0-9]|1[0-5]))$'),
  -- The tenant of a tenant chain; NULL for platform chains. Not named tenant_id: this is a platform table
  -- (one query reads every head for a checkpoint), and tenant_id marks a tenant table under row-level security.
  chain_tenant_id uuid REFERENCES tenants (id),
  stream text NOT NULL CHECK (stream IN ('changes', 'security', 'access')),
  sequence bigint NOT NULL CHECK (sequence >= 0),
  -- The hash of the last event; 64 zeros when sequence = 0.
  hash text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
  updated_at timestamptz NOT NULL
);
CREATE INDEX audit_chain_heads_tenant ON audit_chain_heads (chain_tenant_id) WHERE chain_tenant_id IS NOT NULL;
REVOKE DELETE, TRUNCATE ON audit_chain_heads FROM charter_app;

CREATE TABLE audit_events (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  chain_id text NOT NULL,
  seq bigint NOT NULL CHECK (seq >= 1),
  v smallint NOT NULL CHECK (v = 1),
  stream text NOT NULL CHECK (stream IN ('changes', 'security', 'access')),
  at timestamptz NOT NULL,
  actor_kind text NOT NULL CHECK (actor_kind IN ('user', 'api-key', 'operator', 'system', 'workflow', 'anonymous')),
  actor_id uuid,
  action text NOT NULL,
  target_type text NOT NULL,
  target_id uuid,
  subject_ids uuid[] NOT NULL,
  details jsonb NOT NULL,
  personal jsonb NOT NULL,
  request_id text,
  cause_kind text,
  cause_id uuid,
  prev_hash text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
  hash text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
  PRIMARY KEY (tenant_id, id),
  UNIQUE (tenant_id, chain_id, seq),
  CHECK ((cause_kind IS NULL) = (cause_id IS NULL))
);
-- Erasure and subject requests find the events that concern a subject.
CREATE INDEX audit_events_subjects ON audit_events USING gin (subject_ids);
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_events
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);
-- The default privileges of 0001 grant UPDATE and DELETE: an audit event, once written, is never changed.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM charter_app;

-- Events with no tenant (sign-ins, denials, operator actions), in chains sharded by actor.
CREATE TABLE platform_audit_events (
  id uuid PRIMARY KEY,
  chain_id text NOT NULL,
  seq bigint NOT NULL CHECK (seq >= 1),
  v smallint NOT NULL CHECK (v = 1),
  stream text NOT NULL CHECK (stream IN ('changes', 'security', 'access')),
  at timestamptz NOT NULL,
  actor_kind text NOT NULL CHECK (actor_kind IN ('user', 'api-key', 'operator', 'system', 'workflow', 'anonymous')),
  actor_id uuid,
  action text NOT NULL,
  target_type text NOT NULL,
  target_id uuid,
  subject_ids uuid[] NOT NULL,
  details jsonb NOT NULL,
  personal jsonb NOT NULL,
  request_id text,
  cause_kind text,
  cause_id uuid,
  prev_hash text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
  hash text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
  UNIQUE (chain_id, seq),
  CHECK ((cause_kind IS NULL) = (cause_id IS NULL))
);
CREATE INDEX platform_audit_events_subjects ON platform_audit_events USING gin (subject_ids);
REVOKE UPDATE, DELETE, TRUNCATE ON platform_audit_events FROM charter_app;
