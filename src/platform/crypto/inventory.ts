import "./schema.ts";
import {
  type ColumnEntry,
  defineTable,
  type ModuleInventory,
  notPersonal,
  type Retention,
  WITH_TENANT_DATA,
} from "../inventory/types.ts";

/**
 * The key ring's tables (migration 0003). Wrapped keys are key material, not personal data: each is
 * ciphertext under its parent key and says nothing about anyone; what they protect is classified where
 * it is stored. Their erasure is the key ring's own work (key-ring.ts applyDestruction): it destroys the
 * wrapped key and unlinks the tombstone from the person.
 *
 * The ids of subjects and people are pseudonymous personal data while they name someone Charter holds
 * data about. The records of erasure (erased_subjects, erased_people) keep the id after erasure, on
 * purpose: it is how a new key is refused. By then nothing in Charter links the id to a person (their
 * rows, values and keys are gone), so it is classified as not personal; the destruction journal holds
 * the same ids for the same reason.
 */

const system = (purpose: string, retention: Retention | null = null) => notPersonal("system", purpose, retention);

/** Which subject or person a live key belongs to: set to NULL when they are erased. */
function owner(purpose: string, retention: Retention | null): ColumnEntry {
  return {
    category: "system",
    personal: true,
    purpose,
    // Art. 32 GDPR: encryption of personal data is a security measure the controller must take.
    legalBasis: "legal-obligation",
    keyScope: null,
    erasure: { action: "anonymise", strategy: "set-null" },
    retention,
  };
}

const platformKeys = defineTable("platform_keys", {
  owner: "platform",
  row: "a version of the platform key, which wraps the keys of people the platform holds data about",
  subject: { kind: "none" },
  columns: {
    id: system("identifies the key; wrapped person keys and field envelopes name it"),
    version: system("orders the platform key's versions: the newest wraps new person keys"),
    wrapped_key: system("the key, encrypted under the master key (AES-256-GCM bound to its id)"),
    master_key_fingerprint: system("which master key wrapped it, so a master key rotation can re-wrap it"),
    created_at: system("when the key was made"),
  },
});

const personKeys = defineTable("person_keys", {
  owner: "platform",
  row: "a key of one person the platform holds data about (a user of Charter, a trust-center subscriber)",
  subject: { kind: "column", column: "person_id", of: "user" },
  columns: {
    id: system("identifies the key; field envelopes name it"),
    person_id: owner("which person the key encrypts data of (a pseudonymous id)", null),
    version: system("orders the person's keys: the newest encrypts, older live ones still decrypt"),
    platform_key_id: system("which platform key wraps it"),
    wrapped_key: system("the key, encrypted under the platform key; NULL once destroyed (crypto-shredding)"),
    created_at: system("when the key was made"),
    destroyed_at: system("when the key was destroyed; the row stays so its id is never reused"),
  },
});

const erasedPeople = defineTable("erased_people", {
  owner: "platform",
  row: "a person who was erased: no new key may be made for them",
  subject: { kind: "none" },
  columns: {
    person_id: system("the erased person's former id, which no longer links to anyone; refuses new keys"),
    erased_at: system("when the person was erased"),
  },
});

const journalReplays = defineTable("journal_replays", {
  owner: "platform",
  row: "how far this database has applied one destruction journal",
  subject: { kind: "none" },
  columns: {
    journal_id: system("names the journal: the SHA-256 of its first entry"),
    applied_seq: system("the last journal entry applied to this database; start-up replays the ones after it"),
    applied_hash: system("the hash of that entry: a journal replaced or cut short is refused"),
    replayed_at: system("when the journal was last replayed"),
  },
});

const tenantKeys = defineTable("tenant_keys", {
  owner: "tenant",
  row: "a version of a tenant's key, which wraps its subjects' keys and encrypts data of no one person",
  subject: { kind: "column", column: "tenant_id", of: "tenant" },
  columns: {
    // Kept after the tenant's deletion as a destroyed tombstone: the key's absence is the deletion.
    tenant_id: system("the tenant the key belongs to"),
    id: system("identifies the key; wrapped subject keys and field envelopes name it"),
    version: system("orders the tenant's keys: the newest wraps and encrypts, older live ones still decrypt"),
    wrapped_key: system("the key, encrypted under the master key; NULL once the tenant is deleted"),
    master_key_fingerprint: system("which master key wrapped it, so a master key rotation can re-wrap it"),
    created_at: system("when the key was made"),
    destroyed_at: system("when the key was destroyed (the tenant deleted)"),
  },
});

const subjectKeys = defineTable("subject_keys", {
  owner: "tenant",
  row: "a key of one data subject of a tenant (a person in its CRM)",
  subject: { kind: "column", column: "subject_id", of: "crm-subject" },
  columns: {
    tenant_id: system("the tenant whose subject the key belongs to", WITH_TENANT_DATA),
    id: system("identifies the key; field envelopes name it", WITH_TENANT_DATA),
    subject_id: owner("which CRM subject the key encrypts data of (a pseudonymous id)", WITH_TENANT_DATA),
    version: system("orders the subject's keys: the newest encrypts, older live ones still decrypt", WITH_TENANT_DATA),
    tenant_key_id: system("which tenant key wraps it", WITH_TENANT_DATA),
    wrapped_key: system(
      "the key, encrypted under the tenant key; NULL once destroyed (crypto-shredding)",
      WITH_TENANT_DATA,
    ),
    created_at: system("when the key was made", WITH_TENANT_DATA),
    destroyed_at: system("when the key was destroyed; the row stays so its id is never reused", WITH_TENANT_DATA),
  },
});

const erasedSubjects = defineTable("erased_subjects", {
  owner: "tenant",
  row: "a CRM subject of a tenant who was erased: no new key may be made for them",
  subject: { kind: "none" },
  columns: {
    tenant_id: system("the tenant the subject was erased from", WITH_TENANT_DATA),
    id: system("identifies the record", WITH_TENANT_DATA),
    subject_id: system(
      "the erased subject's former id, which no longer links to anyone; refuses new keys",
      WITH_TENANT_DATA,
    ),
    erased_at: system("when the subject was erased", WITH_TENANT_DATA),
  },
});

const masterKeyRotations = defineTable("master_key_rotations", {
  owner: "platform",
  row: "one rotation of the master key (master-rotation.ts): start-up refuses to serve while one is unfinished",
  subject: { kind: "none" },
  columns: {
    id: system("identifies the rotation"),
    from_fingerprint: system("the master key rotated from (a fingerprint, which does not reveal the key)"),
    to_fingerprint: system("the master key rotated to (its fingerprint)"),
    started_at: system("when the rotation started"),
    completed_at: system("when every key and blind index was moved to the new master key; NULL until then"),
  },
});

/** The key ring's tables: migrations 0003 and 0017. */
export const cryptoInventory: ModuleInventory = {
  module: "crypto",
  tables: [
    platformKeys,
    personKeys,
    erasedPeople,
    journalReplays,
    tenantKeys,
    subjectKeys,
    erasedSubjects,
    masterKeyRotations,
  ],
};
