import {
  type ColumnEntry,
  defineTable,
  type ModuleInventory,
  notPersonal,
  type Retention,
  WITH_TENANT_DATA,
} from "./types.ts";

/** Legal holds are the evidence for data kept past its retention: kept 12 months after the hold ends (as P9's audit records). */
const AFTER_HOLD: Retention = { anchor: "hold-ended", duration: "P1Y", action: "delete" };
/** The limiter sweeps expired buckets every minute while it runs; the hour leaves room for restarts. */
const AFTER_WINDOW: Retention = { anchor: "window-ended", duration: "PT1H", action: "delete" };

const tenants = defineTable("tenants", {
  owner: "platform",
  row: "a tenant (a customer organisation) in the platform registry",
  subject: { kind: "column", column: "id", of: "tenant" },
  columns: {
    // Kept after deletion, with slug and name anonymised, so the journal, audit chains and the deletion
    // certificate still name the tenant they concern.
    id: notPersonal("account", "identifies the tenant in every tenant row, the destruction journal and audit chains"),
    slug: {
      category: "account",
      personal: true,
      purpose: "names the tenant in URLs and sign-in; an organisation's name can name a person (a sole trader)",
      legalBasis: "contract",
      keyScope: null,
      erasure: { action: "anonymise", strategy: "random-pseudonym" },
      retention: { anchor: "subscription-ended", duration: "P90D", action: "anonymise" },
    },
    name: {
      category: "account",
      personal: true,
      purpose: "the tenant's display name; an organisation's name can name a person (a sole trader)",
      legalBasis: "contract",
      keyScope: null,
      erasure: { action: "anonymise", strategy: "placeholder" },
      retention: { anchor: "subscription-ended", duration: "P90D", action: "anonymise" },
    },
    status: notPersonal(
      "account",
      "the tenant's lifecycle: active, suspended, cancelled or pending deletion (read-only with export), deleted",
    ),
    created_at: notPersonal("account", "when the tenant was created"),
  },
});

const tenantSettings = defineTable("tenant_settings", {
  owner: "tenant",
  row: "the settings of one tenant",
  subject: { kind: "column", column: "tenant_id", of: "tenant" },
  columns: {
    tenant_id: notPersonal("account", "the tenant the settings belong to", WITH_TENANT_DATA),
    time_zone: notPersonal("account", "the tenant's default time zone for dates and schedules", WITH_TENANT_DATA),
    locale: notPersonal("account", "the tenant's default language and formats", WITH_TENANT_DATA),
    guest_sharing: notPersonal("account", "whether guests may see records shared with them", WITH_TENANT_DATA),
    updated_at: notPersonal("account", "when the settings last changed", WITH_TENANT_DATA),
  },
});

const tenantFeatures = defineTable("tenant_features", {
  owner: "tenant",
  row: "one feature switch of a tenant (features are off until an admin enables them)",
  subject: { kind: "column", column: "tenant_id", of: "tenant" },
  columns: {
    tenant_id: notPersonal("account", "the tenant the switch belongs to", WITH_TENANT_DATA),
    id: notPersonal("account", "identifies the switch", WITH_TENANT_DATA),
    feature: notPersonal("account", "which feature the switch controls", WITH_TENANT_DATA),
    enabled: notPersonal("account", "whether the feature is on", WITH_TENANT_DATA),
    // Not personal once changed_by is erased; while it is set, the pair is the member's activity.
    changed_at: notPersonal("account", "when the switch last changed", WITH_TENANT_DATA),
    changed_by: {
      category: "account",
      personal: true,
      purpose: "accountability: which member (a pseudonymous membership id) last changed the switch",
      legalBasis: "legitimate-interest",
      keyScope: null,
      erasure: { action: "anonymise", strategy: "set-null" },
      retention: WITH_TENANT_DATA,
      subject: { kind: "column", column: "changed_by", of: "user" },
    },
  },
});

// A keyed HMAC of an address, account or token (keyed per rule): pseudonymous personal data, since the
// platform holds the key and can link a person's traffic to it. Erasure cannot find a row from a person
// (the hash does not reverse), so the rows go when their window ends.
function bucket(purpose: string): ColumnEntry {
  return {
    category: "telemetry",
    personal: true,
    purpose,
    legalBasis: "legitimate-interest",
    keyScope: null,
    erasure: { action: "delete" },
    retention: AFTER_WINDOW,
  };
}

const rateLimitBuckets = defineTable("rate_limit_buckets", {
  owner: "platform",
  row: "the hit counter of one rate-limited address, account, tenant or token in its current window",
  subject: { kind: "none" },
  columns: {
    key_hash: bucket("protects the service from abuse: a keyed hash of the address, account or token counted"),
    window_start: bucket("the start of the window the hits are counted in"),
    hits: bucket("how many requests the key made in the window"),
    expires_at: bucket("when the window ends and the row may be swept"),
  },
});

const schemaMigrations = defineTable("schema_migrations", {
  owner: "platform",
  row: "one applied migration of the shared schema",
  subject: { kind: "none" },
  columns: {
    version: notPersonal("system", "the migration's number"),
    name: notPersonal("system", "the migration's file name"),
    checksum: notPersonal("system", "detects a migration edited after it was applied"),
    applied_at: notPersonal("system", "when the migration was applied"),
  },
});

// The reason is free text and may name a person or a matter, so it is personal. It is stored in plain
// text for now; it moves under the tenant key (a key erasure of a person never destroys, so holding it
// stays consistent) once field encryption has its services.
function held(purpose: string, extra: Partial<ColumnEntry> = {}): ColumnEntry {
  return {
    category: "audit",
    personal: true,
    purpose,
    legalBasis: "legal-obligation",
    keyScope: null,
    erasure: { action: "keep-under-legal-hold" },
    retention: AFTER_HOLD,
    ...extra,
  };
}

const legalHolds = defineTable("legal_holds", {
  owner: "tenant",
  row: "a legal hold on a tenant's data: all of it, one CRM subject's, or one record type's",
  subject: { kind: "column", column: "subject_id", of: "crm-subject" },
  columns: {
    tenant_id: notPersonal("audit", "the tenant whose data is held", AFTER_HOLD),
    id: notPersonal("audit", "identifies the hold", AFTER_HOLD),
    scope: notPersonal("audit", "what the hold covers: the tenant, one subject or one record type", AFTER_HOLD),
    subject_id: held("the CRM subject whose data erasure and retention must keep (scope subject)"),
    record_type: notPersonal("audit", "the inventory table whose rows are kept (scope record-type)", AFTER_HOLD),
    reason: held("why the data is held (litigation, investigation, a regulator's request); free text"),
    placed_by_kind: notPersonal("audit", "what kind of actor placed the hold", AFTER_HOLD),
    placed_by_id: held("accountability: which member, API key or operator placed the hold (a pseudonymous id)", {
      subject: { kind: "column", column: "placed_by_id", of: "user" },
    }),
    placed_at: notPersonal("audit", "when the hold began", AFTER_HOLD),
    expires_at: notPersonal("audit", "when the hold lapses on its own, if it does", AFTER_HOLD),
    released_at: notPersonal("audit", "when the hold was released", AFTER_HOLD),
  },
});

/** The kernel's tables: migrations 0001 and 0002. */
export const kernelInventory: ModuleInventory = {
  module: "kernel",
  tables: [tenants, tenantSettings, tenantFeatures, rateLimitBuckets, schemaMigrations, legalHolds],
};
