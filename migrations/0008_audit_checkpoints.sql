-- Signed checkpoints over every audit chain head (issue 4, promise L3). Each checkpoint is also appended to a
-- daily file in the data directory's checkpoints/, outside the database: a table or file store rolled back
-- shows against the other. The runtime role may only insert: a checkpoint is never changed or removed.

CREATE TABLE audit_checkpoints (
  seq bigint PRIMARY KEY CHECK (seq >= 1),
  -- The record's type, so that later kinds (segment retention, tombstones) join the same numbered chain.
  type text NOT NULL CHECK (type IN ('checkpoint')),
  -- The signed record in canonical JSON (RFC 8785), byte for byte as signed and as written to the file.
  record text NOT NULL CHECK (char_length(record) <= 4096),
  signature text NOT NULL CHECK (signature ~ '^[A-Za-z0-9_-]+$')
);

REVOKE UPDATE, DELETE ON audit_checkpoints FROM charter_app;
