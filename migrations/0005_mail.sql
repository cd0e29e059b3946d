-- Mail (promises E2, L5, P1): one row per outbound message, which is also the outbox in embedded mode.
-- Messages to a person in a tenant's CRM are tenant rows (row-level security, the canonical policy);
-- messages to a person the platform itself serves (sign-in codes, invitations) have no tenant, and the
-- tenancy rules forbid a nullable tenant_id, so they live in a platform table of the same shape.
-- The recipient address and the template data are envelopes (crypto/envelope.ts) under the recipient's
-- own key, so erasing the person shreds them; both are NULL on a suppressed message, which is never sent.
-- Nothing rendered is stored: the subject and body are rendered from the data at delivery.
-- No foreign key on subject_id / person_id yet: the tables of CRM subjects and persons come later.

CREATE TABLE mail_messages (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  subject_id uuid NOT NULL,
  purpose text NOT NULL CHECK (purpose IN ('transactional', 'security', 'marketing')),
  channel text NOT NULL CHECK (channel IN ('email')),
  recipient text,
  template text NOT NULL CHECK (template ~ '^[a-z][a-z0-9-]{0,62}$'),
  data text,
  status text NOT NULL CHECK (status IN ('queued', 'suppressed', 'outbox', 'sending', 'sent', 'failed')),
  status_reason text CHECK (char_length(status_reason) BETWEEN 1 AND 200),
  attempts integer NOT NULL CHECK (attempts >= 0),
  created_at timestamptz NOT NULL,
  last_attempt_at timestamptz,
  sent_at timestamptz,
  provider_response text CHECK (char_length(provider_response) <= 200),
  PRIMARY KEY (tenant_id, id),
  CHECK ((status = 'suppressed') = (recipient IS NULL)),
  CHECK ((recipient IS NULL) = (data IS NULL)),
  CHECK ((status IN ('suppressed', 'failed')) = (status_reason IS NOT NULL)),
  CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);
CREATE INDEX mail_messages_status ON mail_messages (tenant_id, status, created_at);
CREATE INDEX mail_messages_subject ON mail_messages (tenant_id, subject_id);
ALTER TABLE mail_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE mail_messages FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON mail_messages
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

CREATE TABLE platform_mail_messages (
  id uuid PRIMARY KEY,
  person_id uuid NOT NULL,
  purpose text NOT NULL CHECK (purpose IN ('transactional', 'security', 'marketing')),
  channel text NOT NULL CHECK (channel IN ('email')),
  recipient text,
  template text NOT NULL CHECK (template ~ '^[a-z][a-z0-9-]{0,62}$'),
  data text,
  status text NOT NULL CHECK (status IN ('queued', 'suppressed', 'outbox', 'sending', 'sent', 'failed')),
  status_reason text CHECK (char_length(status_reason) BETWEEN 1 AND 200),
  attempts integer NOT NULL CHECK (attempts >= 0),
  created_at timestamptz NOT NULL,
  last_attempt_at timestamptz,
  sent_at timestamptz,
  provider_response text CHECK (char_length(provider_response) <= 200),
  CHECK ((status = 'suppressed') = (recipient IS NULL)),
  CHECK ((recipient IS NULL) = (data IS NULL)),
  CHECK ((status IN ('suppressed', 'failed')) = (status_reason IS NOT NULL)),
  CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);
CREATE INDEX platform_mail_messages_status ON platform_mail_messages (status, created_at);
CREATE INDEX platform_mail_messages_person ON platform_mail_messages (person_id);
