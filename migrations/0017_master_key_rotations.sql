-- Master key rotation (promise E4): `charter keys rotate-master` re-wraps every key the master key wraps
-- (platform_keys, tenant_keys) and re-keys the blind indexes derived from it, one scope per transaction, so
-- a crash can leave some scopes done and others not. The open row of a rotation says so: start-up refuses to
-- serve until the same command, run again, has finished it.
CREATE TABLE master_key_rotations (
  id uuid PRIMARY KEY,
  from_fingerprint text NOT NULL CHECK (from_fingerprint ~ '^[0-9a-f]{16}$'),
  to_fingerprint text NOT NULL CHECK (to_fingerprint ~ '^[0-9a-f]{16}$' AND to_fingerprint <> from_fingerprint),
  started_at timestamptz NOT NULL,
  completed_at timestamptz CHECK (completed_at >= started_at)
);

-- At most one rotation is unfinished at a time.
CREATE UNIQUE INDEX master_key_rotations_one_open ON master_key_rotations ((true)) WHERE completed_at IS NULL;

-- A rotation's record is never removed, and only its completion is ever written after it starts.
REVOKE DELETE, UPDATE ON master_key_rotations FROM charter_app;
GRANT UPDATE (completed_at) ON master_key_rotations TO charter_app;
