-- Issue 6 (promise A2): second factors of a user — a TOTP authenticator with its single-use backup codes, and
-- passkeys (WebAuthn), which serve as a first factor or a second. All platform tables: factors belong to the
-- global user, whatever tenants they are in.

-- The user handle passkeys carry (WebAuthn user.id): random, so an authenticator never holds the user's id.
ALTER TABLE users ADD COLUMN webauthn_handle bytea UNIQUE
  CHECK (webauthn_handle IS NULL OR octet_length(webauthn_handle) BETWEEN 16 AND 64);

-- At most one authenticator app per user. A row with confirmed_at NULL is an enrolment still awaiting its first
-- code; it never counts as a factor.
CREATE TABLE totp_factors (
  user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
  -- The base32 shared secret, sealed under the user's person key.
  secret text NOT NULL,
  created_at timestamptz NOT NULL,
  confirmed_at timestamptz,
  -- The last time step (unix time / 30 s) a code was accepted for: a code of that step or an earlier one is a
  -- replay. Updated conditionally (WHERE last_used_step < step), so two racing requests cannot both win.
  last_used_step bigint CHECK (last_used_step >= 0)
);

-- Ten single-use codes, issued with the TOTP enrolment (and reissued on demand), each an Argon2id hash found by
-- a short prefix of the code so that a guess costs one hash.
CREATE TABLE backup_codes (
  id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  prefix text NOT NULL CHECK (prefix ~ '^[a-z0-9]{4}$'),
  code_hash text NOT NULL CHECK (code_hash LIKE '$argon2id$%'),
  created_at timestamptz NOT NULL,
  used_at timestamptz
);
CREATE UNIQUE INDEX backup_codes_user_prefix ON backup_codes (user_id, prefix);

CREATE TABLE passkeys (
  id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  -- The credential id the authenticator chose: unique across all users (a known one is refused).
  credential_id bytea NOT NULL UNIQUE CHECK (octet_length(credential_id) BETWEEN 16 AND 1023),
  -- COSE public key.
  public_key bytea NOT NULL,
  sign_count bigint NOT NULL CHECK (sign_count >= 0),
  transports text[] NOT NULL DEFAULT '{}',
  aaguid uuid,
  device_type text NOT NULL CHECK (device_type IN ('singleDevice', 'multiDevice')),
  backed_up boolean NOT NULL,
  name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 64),
  created_at timestamptz NOT NULL,
  last_used_at timestamptz
);
CREATE INDEX passkeys_user ON passkeys (user_id);

-- A WebAuthn challenge, single use and short-lived, bound to what asked for it: a session (registration,
-- second factor, step-up), or a secret whose SHA-256 is kept here: a pre-authentication cookie for a passkey
-- sign-in before anyone is known, the reset link's token for a password reset's second factor.
CREATE TABLE webauthn_challenges (
  id uuid PRIMARY KEY,
  purpose text NOT NULL
    CHECK (purpose IN ('register', 'sign-in', 'second-factor', 'reauthenticate', 'password-reset')),
  challenge text NOT NULL CHECK (challenge ~ '^[A-Za-z0-9_-]{43,128}$'),
  user_id uuid REFERENCES users (id) ON DELETE CASCADE,
  session_id uuid REFERENCES sessions (id) ON DELETE CASCADE,
  binding_hash bytea CHECK (octet_length(binding_hash) = 32),
  created_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL CHECK (expires_at > created_at),
  used_at timestamptz,
  CHECK ((session_id IS NULL) <> (binding_hash IS NULL))
);
CREATE INDEX webauthn_challenges_user ON webauthn_challenges (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX webauthn_challenges_session ON webauthn_challenges (session_id) WHERE session_id IS NOT NULL;
CREATE INDEX webauthn_challenges_expires_at ON webauthn_challenges (expires_at);
