import {
  type ColumnEntry,
  defineTable,
  type ModuleInventory,
  notPersonal,
  type Retention,
  WITH_TENANT_DATA,
} from "../inventory/types.ts";
import "./schema.ts";

// Files expire earlier than these bounds when their row says so (expires_at: exports and imports, see
// kinds.ts); the expiry sweep removes the row and the blob, unless a legal hold covers the file.

/** P9: account data until account closure + 90 days. */
const WITH_ACCOUNT: Retention = { anchor: "account-closed", duration: "P90D", action: "delete" };

// On a subject's row, the metadata (kind, size, times) says something about that subject: personal.
// Erasure deletes the row, and keeps it while a legal hold covers the subject, the tenant or the table.
function tenantMetadata(purpose: string): ColumnEntry {
  return {
    category: "crm",
    personal: true,
    purpose,
    legalBasis: "contract",
    keyScope: null,
    erasure: { action: "keep-under-legal-hold" },
    retention: WITH_TENANT_DATA,
  };
}

// A tenant's own rows are under the tenant key, which deleting the tenant destroys; a subject's rows are
// under the subject's key, which erasing the subject destroys (subject keys are wrapped by the tenant key).
function tenantSealed(purpose: string): ColumnEntry {
  return {
    category: "crm",
    personal: true,
    purpose,
    legalBasis: "contract",
    keyScope: "subject",
    erasure: { action: "crypto-shred" },
    retention: WITH_TENANT_DATA,
  };
}

const tenantFiles = defineTable("tenant_files", {
  owner: "tenant",
  row: "one encrypted file of a tenant or of one of its CRM subjects; the content is a blob in the blob store",
  subject: { kind: "column", column: "subject_id", of: "crm-subject" },
  columns: {
    tenant_id: notPersonal("crm", "the tenant the file belongs to", WITH_TENANT_DATA),
    id: notPersonal("crm", "identifies the file; bound into its encryption", WITH_TENANT_DATA),
    subject_id: tenantMetadata("the CRM subject who owns the file (none for the tenant's own files)"),
    kind: tenantMetadata("what the file is for (export, import, avatar, document, attachment): decides its expiry"),
    media_type: tenantMetadata("how to present the file when it is downloaded"),
    name: tenantSealed("the file's name as uploaded, shown when it is listed or downloaded; encrypted"),
    size_bytes: tenantMetadata("the file's size, shown and checked against the size limit"),
    content_key: tenantSealed("the file's own content key, encrypted under its owner's key (crypto-shredding)"),
    blob_key: notPersonal("crm", "finds the encrypted content in the blob store: a random id", WITH_TENANT_DATA),
    ciphertext_sha256: notPersonal(
      "crm",
      "checks the stored blob's integrity without any key; a hash of ciphertext, so it reveals nothing",
      WITH_TENANT_DATA,
    ),
    created_at: tenantMetadata("when the file was stored"),
    expires_at: tenantMetadata("when the expiry sweep removes the file (exports and imports); none for the others"),
    deleted_at: tenantMetadata("when the file was deleted; the expiry sweep then removes it"),
  },
});

function personMetadata(purpose: string): ColumnEntry {
  return {
    category: "account",
    personal: true,
    purpose,
    legalBasis: "contract",
    keyScope: null,
    erasure: { action: "delete" },
    retention: WITH_ACCOUNT,
  };
}

// The platform's own rows are under the platform key and hold nothing of a person; a person's rows are
// under the person's key, which erasing the person destroys.
function personSealed(purpose: string): ColumnEntry {
  return {
    category: "account",
    personal: true,
    purpose,
    legalBasis: "contract",
    keyScope: "person",
    erasure: { action: "crypto-shred" },
    retention: WITH_ACCOUNT,
  };
}

const platformFiles = defineTable("platform_files", {
  owner: "platform",
  row: "one encrypted file of the platform or of a person it holds data about (a user of Charter); the content is a blob",
  subject: { kind: "column", column: "person_id", of: "user" },
  columns: {
    id: notPersonal("account", "identifies the file; bound into its encryption", WITH_ACCOUNT),
    person_id: personMetadata("the person who owns the file (none for the platform's own files)"),
    kind: personMetadata("what the file is for (export, import, avatar, document, attachment): decides its expiry"),
    media_type: personMetadata("how to present the file when it is downloaded"),
    name: personSealed("the file's name as uploaded, shown when it is listed or downloaded; encrypted"),
    size_bytes: personMetadata("the file's size, shown and checked against the size limit"),
    content_key: personSealed("the file's own content key, encrypted under its owner's key (crypto-shredding)"),
    blob_key: notPersonal("account", "finds the encrypted content in the blob store: a random id", WITH_ACCOUNT),
    ciphertext_sha256: notPersonal(
      "account",
      "checks the stored blob's integrity without any key; a hash of ciphertext, so it reveals nothing",
      WITH_ACCOUNT,
    ),
    created_at: personMetadata("when the file was stored"),
    expires_at: personMetadata("when the expiry sweep removes the file (exports and imports); none for the others"),
    deleted_at: personMetadata("when the file was deleted; the expiry sweep then removes it"),
  },
});

/** The file store's tables: migration 0006. */
export const filesInventory: ModuleInventory = {
  module: "files",
  tables: [tenantFiles, platformFiles],
};
