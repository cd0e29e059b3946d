-- Issue 5: resetting a user's lost sign-in factors, asked for on the command line by whoever runs the
-- platform. It takes effect only after a delay during which the user, told by email, can cancel it.
CREATE TABLE factor_resets (
  id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  requested_at timestamptz NOT NULL,
  due_at timestamptz NOT NULL CHECK (due_at > requested_at),
  cancelled_at timestamptz,
  completed_at timestamptz,
  CHECK (cancelled_at IS NULL OR completed_at IS NULL)
);
-- At most one pending reset per user; it also serves the foreign key.
CREATE UNIQUE INDEX factor_resets_pending_user ON factor_resets (user_id)
  WHERE cancelled_at IS NULL AND completed_at IS NULL;
CREATE INDEX factor_resets_user ON factor_resets (user_id);
-- The sweep finds the due ones.
CREATE INDEX factor_resets_due ON factor_resets (due_at) WHERE cancelled_at IS NULL AND completed_at IS NULL;
