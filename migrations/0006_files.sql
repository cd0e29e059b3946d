-- The file store (src/platform/files/): the metadata of encrypted files whose content lives in the blob
-- store. A file's content is encrypted under its own random content key, and that key is stored here
-- encrypted under its owner's key (key ring envelope): destroying the owner's key shreds the file.
-- Files of a tenant or of one of its CRM subjects are tenant rows; files of the platform or of a person the
-- platform holds data about (a user of Charter) are platform rows. Ids (UUIDv7) and timestamps come from
-- the application and its clock. deleted_at marks a file deleted: it can no longer be opened, and the
-- expiry sweep removes its row and blob unless a legal hold covers it.

CREATE TABLE tenant_files (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  -- NULL: the tenant's own file (under the tenant key); else the CRM subject's (under the subject's key).
  subject_id uuid,
  kind text NOT NULL CHECK (kind IN ('export', 'import', 'avatar', 'document', 'attachment')),
  media_type text NOT NULL CHECK (media_type ~ '^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$'),
  name text,
  size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
  content_key text NOT NULL,
  blob_key text NOT NULL CHECK (blob_key ~ '^[0-9a-f]{32}$'),
  ciphertext_sha256 bytea NOT NULL CHECK (octet_length(ciphertext_sha256) = 32),
  created_at timestamptz NOT NULL,
  expires_at timestamptz CHECK (expires_at > created_at),
  deleted_at timestamptz CHECK (deleted_at >= created_at),
  PRIMARY KEY (tenant_id, id),
  UNIQUE (tenant_id, blob_key)
);
CREATE INDEX tenant_files_subject ON tenant_files (tenant_id, subject_id) WHERE subject_id IS NOT NULL;
-- What the expiry sweep visits: files that expire or were deleted.
CREATE INDEX tenant_files_due ON tenant_files (tenant_id, id) WHERE expires_at IS NOT NULL OR deleted_at IS NOT NULL;
ALTER TABLE tenant_files ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_files FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_files
  USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)
  WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);

CREATE TABLE platform_files (
  id uuid PRIMARY KEY,
  -- NULL: the platform's own file (under the platform key); else the person's (under the person's key).
  person_id uuid,
  kind text NOT NULL CHECK (kind IN ('export', 'import', 'avatar', 'document', 'attachment')),
  media_type text NOT NULL CHECK (media_type ~ '^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$'),
  name text,
  size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
  content_key text NOT NULL,
  blob_key text NOT NULL UNIQUE CHECK (blob_key ~ '^[0-9a-f]{32}$'),
  ciphertext_sha256 bytea NOT NULL CHECK (octet_length(ciphertext_sha256) = 32),
  created_at timestamptz NOT NULL,
  expires_at timestamptz CHECK (expires_at > created_at),
  deleted_at timestamptz CHECK (deleted_at >= created_at)
);
CREATE INDEX platform_files_person ON platform_files (person_id) WHERE person_id IS NOT NULL;
CREATE INDEX platform_files_due ON platform_files (id) WHERE expires_at IS NOT NULL OR deleted_at IS NOT NULL;
