import { sql } from "kysely";
import type { Clock } from "../clock.ts";
import type { Database, Tx } from "../db/index.ts";
import { isUuid, uuidv7 } from "../ids.ts";
import { isHeld } from "../inventory/legal-holds.ts";
import { type BlindIndexScope, blindIndexKey as deriveBlindIndexKey } from "./blind-index.ts";
import { type Binding, type DataKey, envelopeKey, type KeyResolver, open, openBytes, seal } from "./envelope.ts";
import {
  DESTRUCTION_REASONS,
  type DestructionJournal,
  type DestructionReason,
  type DestructionRecord,
  type JournalEntry,
} from "./journal.ts";
import type { MasterKey } from "./master-key.ts";
import "./schema.ts";
import { newDataKey, unwrapKey, type WrapLabel, wrapKey } from "./wrap.ts";

/**
 * The key ring (ARCHITECTURE.md "Keys", promises E2, E4, P4): master key → platform key → person keys,
 * and master key → tenant key → subject keys, each stored wrapped by its parent (migration 0003).
 *
 * Versions count per owner from 1; the newest live key of an owner encrypts, older live keys still
 * decrypt (rotation). A destroyed key keeps its row with the wrapped key NULL, so envelopes naming it
 * fail as DecryptionError("unknown-key") and its version number is never reused.
 *
 * Destruction is written ahead: the legal-hold check, then the signed journal entry, flushed
 * (journal.ts), then the rows, in the caller's transaction. If that transaction never commits, start-up
 * completes the destruction from the journal (journal-replay.ts), using applyDestruction below, the one
 * place that turns an entry into row changes.
 */

export type KeyOwner =
  | { scope: "platform" }
  /** A user of Charter or another person the platform holds data about (e.g. a trust-center subscriber). */
  | { scope: "person"; personId: string }
  | { scope: "tenant"; tenantId: string }
  | { scope: "subject"; tenantId: string; subjectId: string };

/** A new key is refused for an erased subject or person: nothing new may be encrypted for them. */
export class SubjectErasedError extends Error {
  override name = "SubjectErasedError";
  constructor(what: "subject" | "person") {
    super(`this ${what} has been erased: no new key can be made for them`);
  }
}

/** A legal hold covers what a destruction would destroy; nothing was journalled or changed. */
export class LegalHoldError extends Error {
  override name = "LegalHoldError";
}

/** The tenant's keys were destroyed (the tenant was deleted): nothing can be encrypted for it any more. */
export class TenantDeletedError extends Error {
  override name = "TenantDeletedError";
  constructor() {
    super("this tenant's keys are destroyed (the tenant was deleted): nothing can be encrypted for it");
  }
}

/** A key in the database was wrapped by another master key than the one loaded: a configuration mistake. */
export class MasterKeyMismatchError extends Error {
  override name = "MasterKeyMismatchError";
}

/** A key to destroy on its own, e.g. the old version once a rotation has re-encrypted its values. */
export type KeyTarget =
  | { scope: "subject"; tenantId: string; subjectId: string; keyId: string }
  | { scope: "person"; personId: string; keyId: string };

export interface KeyInfo {
  id: string;
  version: number;
}

export interface KeyRing {
  /** Seals a value under the owner's current key, creating a subject/person key on first use (in tx). */
  encrypt(tx: Tx, owner: KeyOwner, value: string | Buffer, binding: Binding): Promise<string>;
  decrypt(tx: Tx, envelope: string, binding: Binding): Promise<string>;
  decryptBytes(tx: Tx, envelope: string, binding: Binding): Promise<Buffer>;
  /**
   * Loads every key the envelopes name in one pass (for lists), for use with envelope.ts open/openBytes.
   * Tenant and subject keys are found only for `tenantId`, in a transaction of that tenant.
   */
  resolver(tx: Tx, envelopes: Iterable<string>, tenantId: string | null): Promise<KeyResolver>;
  /** The tenant's current key, created when it has none: createTenant calls it in its transaction. */
  createTenantKey(tx: Tx, tenantId: string): Promise<KeyInfo>;
  /** Creates the platform key if there is none yet (start-up). */
  ensurePlatformKey(): Promise<KeyInfo>;
  /** A new version for the owner: it encrypts from now on, older live versions still decrypt. */
  rotateKey(tx: Tx, owner: KeyOwner): Promise<KeyInfo>;
  /** Whether the subject or person was erased (a new key for them is refused). */
  isErased(tx: Tx, owner: Extract<KeyOwner, { scope: "subject" | "person" }>): Promise<boolean>;
  /** Destroys one key (journalled); a legal hold on its subject or tenant refuses it. */
  destroyKey(tx: Tx, target: KeyTarget, reason: DestructionReason): Promise<JournalEntry>;
  /** Destroys every key of the subject and refuses it new ones (journalled); a legal hold refuses it. */
  eraseSubject(
    tx: Tx,
    target: { tenantId: string; subjectId: string; reason: DestructionReason },
  ): Promise<JournalEntry>;
  /** Destroys every key of the person and refuses them new ones (journalled). */
  erasePerson(tx: Tx, target: { personId: string; reason: DestructionReason }): Promise<JournalEntry>;
  /** Destroys the tenant's keys, which shreds all it encrypted (journalled); any legal hold in force refuses it. */
  deleteTenantKey(tx: Tx, target: { tenantId: string; reason: DestructionReason }): Promise<JournalEntry>;
  /** The blind index key of a scope (blind-index.ts), derived from the master key. */
  blindIndexKey(scope: BlindIndexScope): Buffer;
}

function checkUuid(name: string, value: string): void {
  if (typeof value !== "string" || !isUuid(value)) throw new TypeError(`${name} must be a UUID`);
}

function checkOwner(owner: KeyOwner): void {
  const scope = owner?.scope;
  if (scope === "person") checkUuid("personId", owner.personId);
  else if (scope === "tenant" || scope === "subject") checkUuid("tenantId", owner.tenantId);
  else if (scope !== "platform") throw new TypeError("a key owner must have scope platform, person, tenant or subject");
  if (scope === "subject") checkUuid("subjectId", owner.subjectId);
}

/**
 * The owner is part of each wrap label, so a wrapped key moved onto another owner's row (another tenant,
 * another subject) does not unwrap there, even though its key id is unchanged.
 */
export const wrapLabels = {
  platform: (keyId: string): WrapLabel => ({ keyId, purpose: "platform" }),
  person: (keyId: string, personId: string): WrapLabel => ({ keyId, purpose: `person/${personId}` }),
  tenant: (keyId: string, tenantId: string): WrapLabel => ({ keyId, purpose: `tenant/${tenantId}` }),
  subject: (keyId: string, tenantId: string, subjectId: string): WrapLabel => ({
    keyId,
    purpose: `subject/${tenantId}/${subjectId}`,
  }),
};

/**
 * Serialises key creation per owner, and erasure against it, for the rest of the transaction: without it
 * two transactions could both give a subject its first key (the unique version would fail one of them
 * with a raw error), or a key could be created while the subject is being erased and outlive the erasure.
 * The same statement reads the transaction's tenant, so a tenant-scope call in the wrong transaction is
 * refused before anything is written.
 */
async function lockOwner(tx: Tx, name: string, tenantId?: string): Promise<void> {
  const { rows } = await sql<{ tenant: string | null }>`
    SELECT current_setting('app.tenant_id', true) AS tenant, pg_advisory_xact_lock(hashtextextended(${name}, 0))`.execute(
    tx,
  );
  if (tenantId !== undefined && rows[0]?.tenant !== tenantId) {
    throw new TypeError("tenant keys are used in a transaction of their tenant only (db.withTenant)");
  }
}

const destroyedNow = (at: Date) => ({ wrapped_key: null, destroyed_at: at });

/**
 * Turns a journal entry into row changes, idempotently: keys still live are destroyed (at the entry's
 * time), the erased are recorded. Tenant-scope entries need a transaction of their tenant. Returns how
 * many keys it destroyed. The live path and the replay both call this, so they cannot drift apart.
 */
export async function applyDestruction(tx: Tx, entry: JournalEntry): Promise<number> {
  const { record, at } = entry;
  const count = (result: { numUpdatedRows: bigint }[]) => result.reduce((sum, r) => sum + Number(r.numUpdatedRows), 0);
  switch (record.type) {
    case "key-destroyed":
      if (record.scope === "subject") {
        return count(
          await tx
            .updateTable("subject_keys")
            .set(destroyedNow(at))
            .where("tenant_id", "=", record.tenantId)
            .where("id", "=", record.keyId)
            .where("destroyed_at", "is", null)
            .execute(),
        );
      }
      return count(
        await tx
          .updateTable("person_keys")
          .set(destroyedNow(at))
          .where("id", "=", record.keyId)
          .where("destroyed_at", "is", null)
          .execute(),
      );
    case "subject-erased": {
      await tx
        .insertInto("erased_subjects")
        .values({ tenant_id: record.tenantId, id: uuidv7(at.getTime()), subject_id: record.subjectId, erased_at: at })
        .onConflict((oc) => oc.columns(["tenant_id", "subject_id"]).doNothing())
        .execute();
      const live = count(
        await tx
          .updateTable("subject_keys")
          .set(destroyedNow(at))
          .where("tenant_id", "=", record.tenantId)
          .where("subject_id", "=", record.subjectId)
          .where("destroyed_at", "is", null)
          .execute(),
      );
      // The tombstones stop naming the subject: erased_subjects alone remembers the id (inventory.ts).
      await tx
        .updateTable("subject_keys")
        .set({ subject_id: null })
        .where("tenant_id", "=", record.tenantId)
        .where("subject_id", "=", record.subjectId)
        .execute();
      return live;
    }
    case "person-erased": {
      await tx
        .insertInto("erased_people")
        .values({ person_id: record.personId, erased_at: at })
        .onConflict((oc) => oc.column("person_id").doNothing())
        .execute();
      const live = count(
        await tx
          .updateTable("person_keys")
          .set(destroyedNow(at))
          .where("person_id", "=", record.personId)
          .where("destroyed_at", "is", null)
          .execute(),
      );
      await tx.updateTable("person_keys").set({ person_id: null }).where("person_id", "=", record.personId).execute();
      return live;
    }
    case "tenant-deleted":
      // Subject keys are wrapped by the tenant key: destroying it shreds them too, without touching
      // each of (possibly) millions of rows.
      return count(
        await tx
          .updateTable("tenant_keys")
          .set(destroyedNow(at))
          .where("tenant_id", "=", record.tenantId)
          .where("destroyed_at", "is", null)
          .execute(),
      );
  }
}

interface WrappedRow {
  id: string;
  version: number;
  wrapped_key: string | null;
}

export function createKeyRing(options: {
  db: Database;
  masterKey: MasterKey;
  clock: Clock;
  /**
   * Where destructions are written ahead. A key ring without one (a CLI command that only reads) refuses to
   * destroy keys: opening the journal repairs a torn last line, which must never race the server's appends.
   */
  journal?: DestructionJournal;
}): KeyRing {
  const { db, masterKey, clock, journal } = options;

  function withMaster<T>(fn: (bytes: Buffer) => T): T {
    const bytes = masterKey.bytes();
    try {
      return fn(bytes);
    } finally {
      bytes.fill(0);
    }
  }

  function checkFingerprint(what: string, fingerprint: string): void {
    if (fingerprint !== masterKey.fingerprint) {
      throw new MasterKeyMismatchError(
        `the ${what} key was wrapped by master key ${fingerprint}, but master key ${masterKey.fingerprint} is loaded: ` +
          "configure the master key this database was created with",
      );
    }
  }

  function unwrapped(parent: Buffer, row: WrappedRow, label: WrapLabel): DataKey | undefined {
    if (row.wrapped_key === null) return undefined;
    return { id: row.id, version: row.version, bytes: unwrapKey(parent, row.wrapped_key, label) };
  }

  const newId = () => uuidv7(clock.now().getTime());

  // Platform key: wrapped by the master key.

  const platformColumns = ["id", "version", "wrapped_key", "master_key_fingerprint"] as const;

  function openPlatformKey(row: WrappedRow & { master_key_fingerprint: string }): DataKey {
    checkFingerprint("platform", row.master_key_fingerprint);
    return withMaster((m) => unwrapped(m, row, wrapLabels.platform(row.id))) as DataKey;
  }

  async function insertPlatformKey(tx: Tx): Promise<DataKey> {
    await lockOwner(tx, "key-ring/platform");
    const last = await tx
      .selectFrom("platform_keys")
      .select("version")
      .orderBy("version", "desc")
      .limit(1)
      .executeTakeFirst();
    const key: DataKey = { id: newId(), version: (last?.version ?? 0) + 1, bytes: newDataKey() };
    await tx
      .insertInto("platform_keys")
      .values({
        id: key.id,
        version: key.version,
        wrapped_key: withMaster((m) => wrapKey(m, key.bytes, wrapLabels.platform(key.id))),
        master_key_fingerprint: masterKey.fingerprint,
        created_at: clock.now(),
      })
      .execute();
    return key;
  }

  async function currentPlatformKey(tx: Tx): Promise<DataKey> {
    const newest = () =>
      tx.selectFrom("platform_keys").select(platformColumns).orderBy("version", "desc").limit(1).executeTakeFirst();
    const row = await newest();
    if (row) return openPlatformKey(row);
    await lockOwner(tx, "key-ring/platform");
    const created = await newest();
    return created ? openPlatformKey(created) : insertPlatformKey(tx);
  }

  // Tenant keys: wrapped by the master key, one current per tenant.

  const tenantColumns = ["id", "version", "wrapped_key", "master_key_fingerprint"] as const;

  function openTenantKey(tenantId: string, row: WrappedRow & { master_key_fingerprint: string }): DataKey | undefined {
    if (row.wrapped_key === null) return undefined;
    checkFingerprint("tenant", row.master_key_fingerprint);
    return withMaster((m) => unwrapped(m, row, wrapLabels.tenant(row.id, tenantId)));
  }

  const newestLiveTenantKey = (tx: Tx, tenantId: string) =>
    tx
      .selectFrom("tenant_keys")
      .select(tenantColumns)
      .where("tenant_id", "=", tenantId)
      .where("destroyed_at", "is", null)
      .orderBy("version", "desc")
      .limit(1)
      .executeTakeFirst();

  /** Under the tenant's lock: a new version, unless the tenant's keys were destroyed (deleted tenant). */
  async function insertTenantKey(tx: Tx, tenantId: string, rotating: boolean): Promise<DataKey> {
    const last = await tx
      .selectFrom("tenant_keys")
      .select(["version", "destroyed_at"])
      .where("tenant_id", "=", tenantId)
      .orderBy("version", "desc")
      .limit(1)
      .executeTakeFirst();
    // Only deletion destroys tenant keys, and it destroys all of them: a newest key destroyed means deleted.
    if (last?.destroyed_at) throw new TenantDeletedError();
    if (last && !rotating) throw new Error("the tenant already has a key");
    const key: DataKey = { id: newId(), version: (last?.version ?? 0) + 1, bytes: newDataKey() };
    await tx
      .insertInto("tenant_keys")
      .values({
        tenant_id: tenantId,
        id: key.id,
        version: key.version,
        wrapped_key: withMaster((m) => wrapKey(m, key.bytes, wrapLabels.tenant(key.id, tenantId))),
        master_key_fingerprint: masterKey.fingerprint,
        created_at: clock.now(),
        destroyed_at: null,
      })
      .execute();
    return key;
  }

  async function currentTenantKey(tx: Tx, tenantId: string): Promise<DataKey> {
    const row = await newestLiveTenantKey(tx, tenantId);
    if (row) return openTenantKey(tenantId, row) as DataKey;
    // A tenant created before the key ring, or a tenant of this transaction without a key: create it.
    await lockOwner(tx, `key-ring/tenant/${tenantId}`, tenantId);
    const created = await newestLiveTenantKey(tx, tenantId);
    return created ? (openTenantKey(tenantId, created) as DataKey) : insertTenantKey(tx, tenantId, false);
  }

  // Subject keys: wrapped by a tenant key.

  const liveSubjectKey = (tx: Tx, tenantId: string, subjectId: string) =>
    tx
      .selectFrom("subject_keys as s")
      .innerJoin("tenant_keys as t", (j) =>
        j.onRef("t.tenant_id", "=", "s.tenant_id").onRef("t.id", "=", "s.tenant_key_id"),
      )
      .select([
        "s.id",
        "s.version",
        "s.wrapped_key",
        "t.id as tenant_key_id",
        "t.version as tenant_key_version",
        "t.wrapped_key as tenant_wrapped_key",
        "t.master_key_fingerprint",
      ])
      .where("s.tenant_id", "=", tenantId)
      .where("s.subject_id", "=", subjectId)
      .where("s.destroyed_at", "is", null)
      .orderBy("s.version", "desc")
      .limit(1)
      .executeTakeFirst();

  type SubjectRow = NonNullable<Awaited<ReturnType<typeof liveSubjectKey>>>;

  function openSubjectKey(tenantId: string, subjectId: string, row: SubjectRow): DataKey {
    const parent = openTenantKey(tenantId, {
      id: row.tenant_key_id,
      version: row.tenant_key_version,
      wrapped_key: row.tenant_wrapped_key,
      master_key_fingerprint: row.master_key_fingerprint,
    });
    if (!parent) throw new TenantDeletedError();
    try {
      return unwrapped(parent.bytes, row, wrapLabels.subject(row.id, tenantId, subjectId)) as DataKey;
    } finally {
      parent.bytes.fill(0);
    }
  }

  async function erasedSubject(tx: Tx, tenantId: string, subjectId: string): Promise<boolean> {
    const row = await tx
      .selectFrom("erased_subjects")
      .select("id")
      .where("tenant_id", "=", tenantId)
      .where("subject_id", "=", subjectId)
      .executeTakeFirst();
    return row !== undefined;
  }

  /** Under the subject's lock; refused for an erased subject before anything is written. */
  async function insertSubjectKey(tx: Tx, tenantId: string, subjectId: string): Promise<DataKey> {
    if (await erasedSubject(tx, tenantId, subjectId)) throw new SubjectErasedError("subject");
    const parent = await currentTenantKey(tx, tenantId);
    try {
      const last = await tx
        .selectFrom("subject_keys")
        .select("version")
        .where("tenant_id", "=", tenantId)
        .where("subject_id", "=", subjectId)
        .orderBy("version", "desc")
        .limit(1)
        .executeTakeFirst();
      const key: DataKey = { id: newId(), version: (last?.version ?? 0) + 1, bytes: newDataKey() };
      await tx
        .insertInto("subject_keys")
        .values({
          tenant_id: tenantId,
          id: key.id,
          subject_id: subjectId,
          version: key.version,
          tenant_key_id: parent.id,
          wrapped_key: wrapKey(parent.bytes, key.bytes, wrapLabels.subject(key.id, tenantId, subjectId)),
          created_at: clock.now(),
          destroyed_at: null,
        })
        .execute();
      return key;
    } finally {
      parent.bytes.fill(0);
    }
  }

  async function currentSubjectKey(tx: Tx, tenantId: string, subjectId: string): Promise<DataKey> {
    const row = await liveSubjectKey(tx, tenantId, subjectId);
    if (row) return openSubjectKey(tenantId, subjectId, row);
    await lockOwner(tx, `key-ring/subject/${tenantId}/${subjectId}`, tenantId);
    const created = await liveSubjectKey(tx, tenantId, subjectId);
    return created ? openSubjectKey(tenantId, subjectId, created) : insertSubjectKey(tx, tenantId, subjectId);
  }

  // Person keys: wrapped by a platform key.

  const livePersonKey = (tx: Tx, personId: string) =>
    tx
      .selectFrom("person_keys as k")
      .innerJoin("platform_keys as p", "p.id", "k.platform_key_id")
      .select([
        "k.id",
        "k.version",
        "k.wrapped_key",
        "p.id as platform_key_id",
        "p.version as platform_key_version",
        "p.wrapped_key as platform_wrapped_key",
        "p.master_key_fingerprint",
      ])
      .where("k.person_id", "=", personId)
      .where("k.destroyed_at", "is", null)
      .orderBy("k.version", "desc")
      .limit(1)
      .executeTakeFirst();

  type PersonRow = NonNullable<Awaited<ReturnType<typeof livePersonKey>>>;

  function openPersonKey(personId: string, row: PersonRow): DataKey {
    const parent = openPlatformKey({
      id: row.platform_key_id,
      version: row.platform_key_version,
      wrapped_key: row.platform_wrapped_key,
      master_key_fingerprint: row.master_key_fingerprint,
    });
    try {
      return unwrapped(parent.bytes, row, wrapLabels.person(row.id, personId)) as DataKey;
    } finally {
      parent.bytes.fill(0);
    }
  }

  async function erasedPerson(tx: Tx, personId: string): Promise<boolean> {
    const row = await tx
      .selectFrom("erased_people")
      .select("person_id")
      .where("person_id", "=", personId)
      .executeTakeFirst();
    return row !== undefined;
  }

  async function insertPersonKey(tx: Tx, personId: string): Promise<DataKey> {
    if (await erasedPerson(tx, personId)) throw new SubjectErasedError("person");
    const parent = await currentPlatformKey(tx);
    try {
      const last = await tx
        .selectFrom("person_keys")
        .select("version")
        .where("person_id", "=", personId)
        .orderBy("version", "desc")
        .limit(1)
        .executeTakeFirst();
      const key: DataKey = { id: newId(), version: (last?.version ?? 0) + 1, bytes: newDataKey() };
      await tx
        .insertInto("person_keys")
        .values({
          id: key.id,
          person_id: personId,
          version: key.version,
          platform_key_id: parent.id,
          wrapped_key: wrapKey(parent.bytes, key.bytes, wrapLabels.person(key.id, personId)),
          created_at: clock.now(),
          destroyed_at: null,
        })
        .execute();
      return key;
    } finally {
      parent.bytes.fill(0);
    }
  }

  async function currentPersonKey(tx: Tx, personId: string): Promise<DataKey> {
    const row = await livePersonKey(tx, personId);
    if (row) return openPersonKey(personId, row);
    await lockOwner(tx, `key-ring/person/${personId}`);
    const created = await livePersonKey(tx, personId);
    return created ? openPersonKey(personId, created) : insertPersonKey(tx, personId);
  }

  function currentKey(tx: Tx, owner: KeyOwner): Promise<DataKey> {
    switch (owner.scope) {
      case "platform":
        return currentPlatformKey(tx);
      case "person":
        return currentPersonKey(tx, owner.personId);
      case "tenant":
        return currentTenantKey(tx, owner.tenantId);
      case "subject":
        return currentSubjectKey(tx, owner.tenantId, owner.subjectId);
    }
  }

  // Decryption: find each named key in whichever table holds it.

  async function loadKeys(tx: Tx, envelopes: Iterable<string>, tenantId: string | null): Promise<Map<string, DataKey>> {
    if (tenantId !== null) checkUuid("binding tenantId", tenantId);
    const wanted = new Set<string>();
    for (const envelope of envelopes) {
      const { keyId } = envelopeKey(envelope);
      // Key ids are UUIDs; any other id cannot be ours, and would be a type error in the query.
      if (isUuid(keyId)) wanted.add(keyId);
    }
    const keys = new Map<string, DataKey>();
    const missing = () => [...wanted].filter((id) => !keys.has(id));
    const parents = new Map<string, DataKey | undefined>();
    const parent = (id: string, open: () => DataKey | undefined) => {
      if (!parents.has(id)) parents.set(id, open());
      return parents.get(id);
    };
    try {
      if (tenantId !== null && wanted.size > 0) {
        const subjectRows = await tx
          .selectFrom("subject_keys as s")
          .innerJoin("tenant_keys as t", (j) =>
            j.onRef("t.tenant_id", "=", "s.tenant_id").onRef("t.id", "=", "s.tenant_key_id"),
          )
          .select([
            "s.id",
            "s.version",
            "s.wrapped_key",
            "s.subject_id",
            "t.id as tenant_key_id",
            "t.version as tenant_key_version",
            "t.wrapped_key as tenant_wrapped_key",
            "t.master_key_fingerprint",
          ])
          .where("s.tenant_id", "=", tenantId)
          .where("s.id", "in", [...wanted])
          .where("s.destroyed_at", "is", null)
          .where("t.destroyed_at", "is", null)
          .execute();
        for (const row of subjectRows) {
          if (row.subject_id === null) continue;
          const tenantKey = parent(row.tenant_key_id, () =>
            openTenantKey(tenantId, {
              id: row.tenant_key_id,
              version: row.tenant_key_version,
              wrapped_key: row.tenant_wrapped_key,
              master_key_fingerprint: row.master_key_fingerprint,
            }),
          );
          const key =
            tenantKey && unwrapped(tenantKey.bytes, row, wrapLabels.subject(row.id, tenantId, row.subject_id));
          if (key) keys.set(row.id, key);
        }
        if (missing().length > 0) {
          const tenantRows = await tx
            .selectFrom("tenant_keys")
            .select(tenantColumns)
            .where("tenant_id", "=", tenantId)
            .where("id", "in", missing())
            .where("destroyed_at", "is", null)
            .execute();
          for (const row of tenantRows) {
            const key = openTenantKey(tenantId, row);
            if (key) keys.set(row.id, key);
          }
        }
      }
      if (missing().length > 0) {
        const personRows = await tx
          .selectFrom("person_keys as k")
          .innerJoin("platform_keys as p", "p.id", "k.platform_key_id")
          .select([
            "k.id",
            "k.version",
            "k.wrapped_key",
            "k.person_id",
            "p.id as platform_key_id",
            "p.version as platform_key_version",
            "p.wrapped_key as platform_wrapped_key",
            "p.master_key_fingerprint",
          ])
          .where("k.id", "in", missing())
          .where("k.destroyed_at", "is", null)
          .execute();
        for (const row of personRows) {
          if (row.person_id === null) continue;
          const platformKey = parent(row.platform_key_id, () =>
            openPlatformKey({
              id: row.platform_key_id,
              version: row.platform_key_version,
              wrapped_key: row.platform_wrapped_key,
              master_key_fingerprint: row.master_key_fingerprint,
            }),
          );
          const key = platformKey && unwrapped(platformKey.bytes, row, wrapLabels.person(row.id, row.person_id));
          if (key) keys.set(row.id, key);
        }
      }
      if (missing().length > 0) {
        const platformRows = await tx
          .selectFrom("platform_keys")
          .select(platformColumns)
          .where("id", "in", missing())
          .execute();
        for (const row of platformRows) keys.set(row.id, openPlatformKey(row));
      }
    } finally {
      for (const key of parents.values()) key?.bytes.fill(0);
    }
    return keys;
  }

  function asResolver(keys: Map<string, DataKey>): KeyResolver {
    // A key of another version under a known id is an altered envelope: unknown, not a resolver bug.
    return (keyId, version) => {
      const key = keys.get(keyId);
      return key?.version === version ? key : undefined;
    };
  }

  async function withKeys<T>(tx: Tx, envelope: string, binding: Binding, fn: (r: KeyResolver) => T): Promise<T> {
    const keys = await loadKeys(tx, [envelope], binding?.tenantId ?? null);
    try {
      return fn(asResolver(keys));
    } finally {
      for (const key of keys.values()) key.bytes.fill(0);
    }
  }

  // Destruction: hold check, journal (flushed), rows.

  async function append(tx: Tx, record: DestructionRecord): Promise<JournalEntry> {
    if (!journal) throw new TypeError("this key ring has no destruction journal: it cannot destroy keys");
    const entry = await journal.append(record);
    await applyDestruction(tx, entry);
    return entry;
  }

  async function refuseIfHeld(tx: Tx, query: { tenantId: string; subjectId?: string }, what: string): Promise<void> {
    if (await isHeld(tx, query, clock.now())) {
      throw new LegalHoldError(`a legal hold covers ${what}: it cannot be destroyed while the hold is in force`);
    }
  }

  function checkReason(reason: DestructionReason): void {
    if (!(DESTRUCTION_REASONS as readonly string[]).includes(reason)) {
      throw new TypeError(`the reason must be one of ${DESTRUCTION_REASONS.join(", ")}`);
    }
  }

  return {
    async encrypt(tx, owner, value, binding) {
      checkOwner(owner);
      if ((owner.scope === "tenant" || owner.scope === "subject") && binding?.tenantId !== owner.tenantId) {
        throw new TypeError("a value under a tenant or subject key must be bound to that tenant");
      }
      const key = await currentKey(tx, owner);
      try {
        return seal(key, value, binding);
      } finally {
        key.bytes.fill(0);
      }
    },

    decrypt: (tx, envelope, binding) => withKeys(tx, envelope, binding, (r) => open(r, envelope, binding)),

    decryptBytes: (tx, envelope, binding) => withKeys(tx, envelope, binding, (r) => openBytes(r, envelope, binding)),

    async resolver(tx, envelopes, tenantId) {
      return asResolver(await loadKeys(tx, envelopes, tenantId));
    },

    async createTenantKey(tx, tenantId) {
      checkUuid("tenantId", tenantId);
      const key = await currentTenantKey(tx, tenantId);
      key.bytes.fill(0);
      return { id: key.id, version: key.version };
    },

    async ensurePlatformKey() {
      const key = await db.withPlatform((tx) => currentPlatformKey(tx));
      key.bytes.fill(0);
      return { id: key.id, version: key.version };
    },

    async rotateKey(tx, owner) {
      checkOwner(owner);
      let key: DataKey;
      switch (owner.scope) {
        case "platform":
          key = await insertPlatformKey(tx);
          break;
        case "person":
          await lockOwner(tx, `key-ring/person/${owner.personId}`);
          key = await insertPersonKey(tx, owner.personId);
          break;
        case "tenant":
          await lockOwner(tx, `key-ring/tenant/${owner.tenantId}`, owner.tenantId);
          key = await insertTenantKey(tx, owner.tenantId, true);
          break;
        case "subject":
          await lockOwner(tx, `key-ring/subject/${owner.tenantId}/${owner.subjectId}`, owner.tenantId);
          key = await insertSubjectKey(tx, owner.tenantId, owner.subjectId);
          break;
      }
      key.bytes.fill(0);
      return { id: key.id, version: key.version };
    },

    async isErased(tx, owner) {
      checkOwner(owner);
      return owner.scope === "subject"
        ? erasedSubject(tx, owner.tenantId, owner.subjectId)
        : erasedPerson(tx, owner.personId);
    },

    async destroyKey(tx, target, reason) {
      checkReason(reason);
      checkUuid("keyId", target?.keyId);
      if (target.scope === "subject") {
        checkOwner({ scope: "subject", tenantId: target.tenantId, subjectId: target.subjectId });
        await lockOwner(tx, `key-ring/subject/${target.tenantId}/${target.subjectId}`, target.tenantId);
        const live = await tx
          .selectFrom("subject_keys")
          .select("id")
          .where("tenant_id", "=", target.tenantId)
          .where("subject_id", "=", target.subjectId)
          .where("id", "=", target.keyId)
          .where("destroyed_at", "is", null)
          .executeTakeFirst();
        if (!live) throw new TypeError("no live key of this subject has that id");
        await refuseIfHeld(tx, { tenantId: target.tenantId, subjectId: target.subjectId }, "this subject's data");
        return append(tx, { type: "key-destroyed", ...target, reason });
      }
      if (target?.scope !== "person") throw new TypeError("only subject and person keys are destroyed one by one");
      checkOwner({ scope: "person", personId: target.personId });
      await lockOwner(tx, `key-ring/person/${target.personId}`);
      const live = await tx
        .selectFrom("person_keys")
        .select("id")
        .where("person_id", "=", target.personId)
        .where("id", "=", target.keyId)
        .where("destroyed_at", "is", null)
        .executeTakeFirst();
      if (!live) throw new TypeError("no live key of this person has that id");
      return append(tx, { type: "key-destroyed", ...target, reason });
    },

    // Holds on the tenant or the subject refuse it. A record-type hold keeps rows, which the erasure
    // service weighs table by table; values kept under a hold are never under a subject key (the
    // inventory's validation refuses that), so destroying the key cannot take them.
    async eraseSubject(tx, { tenantId, subjectId, reason }) {
      checkOwner({ scope: "subject", tenantId, subjectId });
      checkReason(reason);
      await lockOwner(tx, `key-ring/subject/${tenantId}/${subjectId}`, tenantId);
      await refuseIfHeld(tx, { tenantId, subjectId }, "this subject's data");
      return append(tx, { type: "subject-erased", tenantId, subjectId, reason });
    },

    // Legal holds are placed within a tenant; a person's platform-held data falls under none of them.
    async erasePerson(tx, { personId, reason }) {
      checkOwner({ scope: "person", personId });
      checkReason(reason);
      await lockOwner(tx, `key-ring/person/${personId}`);
      return append(tx, { type: "person-erased", personId, reason });
    },

    async deleteTenantKey(tx, { tenantId, reason }) {
      checkOwner({ scope: "tenant", tenantId });
      checkReason(reason);
      await lockOwner(tx, `key-ring/tenant/${tenantId}`, tenantId);
      // Every subject key hangs under the tenant key, so a hold on any subject or record type of the
      // tenant refuses deletion too: each hold placed is asked, through isHeld, whether it is in force.
      const holds = await tx
        .selectFrom("legal_holds")
        .select(["subject_id", "record_type"])
        .distinct()
        .where("tenant_id", "=", tenantId)
        .where("released_at", "is", null)
        .execute();
      const now = clock.now();
      const queries = [
        { tenantId },
        ...holds.map((h) => ({
          tenantId,
          subjectId: h.subject_id ?? undefined,
          recordType: h.record_type ?? undefined,
        })),
      ];
      for (const query of queries) {
        if (await isHeld(tx, query, now)) {
          throw new LegalHoldError("a legal hold is in force in this tenant: its keys cannot be destroyed");
        }
      }
      return append(tx, { type: "tenant-deleted", tenantId, reason });
    },

    blindIndexKey: (scope) => deriveBlindIndexKey(masterKey, scope),
  };
}
