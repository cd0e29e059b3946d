import { randomBytes } from "node:crypto";
import { sql } from "kysely";
import type { Audit } from "../audit/audit.ts";
import { SYSTEM_ACTOR } from "../audit/event.ts";
import type { Clock } from "../clock.ts";
import type { Database, Tx } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import { type Inventory, inventoryTables } from "../inventory/index.ts";
import { DecryptionError } from "./aead.ts";
import { type BlindIndexKind, type BlindIndexScope, blindIndex, blindIndexKey } from "./blind-index.ts";
import { open } from "./envelope.ts";
import { createKeyRing, type KeyRing, MasterKeyMismatchError, wrapLabels } from "./key-ring.ts";
import type { MasterKey } from "./master-key.ts";
import { unwrapKey, type WrapLabel, wrapKey } from "./wrap.ts";
import "./schema.ts";

/**
 * Master key rotation (promise E4): every key the master key wraps (the platform's in platform_keys, each
 * tenant's in tenant_keys) is unwrapped with the old master key and wrapped again with the new one, and every
 * blind index derived from the master key (the inventory's `blindIndexOf` columns) is computed again from the
 * value it indexes. Nothing below those keys changes: person and subject keys, and every value they seal,
 * stay as they are.
 *
 * One scope per transaction: the platform's keys with the platform tables' indexes, then each tenant's keys
 * with its tables' indexes, so every scope is either wholly on the old key or wholly on the new. A key row's
 * fingerprint says which, so running the rotation again after a crash skips the scopes already moved. The
 * rotation's row in master_key_rotations stays open until every scope has moved, and start-up refuses to
 * serve while it is open. A server still running on the old key fails closed: the key ring refuses to open a
 * key whose fingerprint is not its own master key's.
 */

/** The rotation cannot start or go on; a one-line message saying what to do. */
export class MasterKeyRotationError extends Error {
  override name = "MasterKeyRotationError";
}

export const MASTER_KEY_ROTATED = "keys.master-key-rotated";

export interface MasterKeyRotationDeps {
  db: Database;
  clock: Clock;
  /** Which columns are blind indexes, and of what (the application's inventory). */
  inventory: Inventory;
  audit: Pick<Audit, "record">;
}

export interface MasterKeyRotationReport {
  /** An unfinished rotation between the same two keys was taken up. */
  resumed: boolean;
  /** Key rows wrapped again (platform and tenant). */
  keys: number;
  /** Blind index values computed again. */
  indexes: number;
  /** Tenants whose keys were moved by this run. */
  tenants: number;
}

/** Serialises rotations, and a rotation's scopes against its start and end. */
const ROTATION_LOCK = "charter/keys/master-rotation";

async function lock(tx: Tx, name: string): Promise<void> {
  await sql`SELECT pg_advisory_xact_lock(hashtextextended(${name}, 0))`.execute(tx);
}

/** The blind index columns of the inventory's tables of one owner. */
function blindIndexColumns(inventory: Inventory, owner: "platform" | "tenant") {
  return inventoryTables(inventory)
    .filter((t) => t.owner === owner)
    .flatMap((t) =>
      Object.entries(t.columns).flatMap(([column, entry]) =>
        entry.blindIndexOf
          ? [{ table: t.table, column, source: entry.blindIndexOf.column, kind: entry.blindIndexOf.kind }]
          : [],
      ),
    );
}

/** The unfinished rotation, if any. */
export function unfinishedRotation(tx: Tx) {
  return tx
    .selectFrom("master_key_rotations")
    .select(["id", "from_fingerprint", "to_fingerprint", "started_at"])
    .where("completed_at", "is", null)
    .executeTakeFirst();
}

type OpenRotation = NonNullable<Awaited<ReturnType<typeof unfinishedRotation>>>;

/** An unfinished rotation, and how to finish it: run it again with its two keys. */
const unfinishedText = (open: OpenRotation) =>
  `a master key rotation from ${open.from_fingerprint} to ${open.to_fingerprint} is unfinished: stop every ` +
  `server and run charter keys rotate-master again with master key ${open.from_fingerprint} configured and ` +
  `--new-key-file holding ${open.to_fingerprint}`;

/** The completed rotation away from the master key of `fingerprint`, if there was one. */
function rotationAwayFrom(tx: Tx, fingerprint: string) {
  return tx
    .selectFrom("master_key_rotations")
    .select(["to_fingerprint", "completed_at"])
    .where("from_fingerprint", "=", fingerprint)
    .where("completed_at", "is not", null)
    .executeTakeFirst();
}

/**
 * Start-up's check, before the key ring opens a key: no rotation is unfinished, and the loaded master key was
 * not rotated away from (then the message names the key to configure instead). That every key is wrapped by
 * the loaded key is the key ring's own check, on each key it opens.
 */
export async function checkMasterKeyRotations(db: Database, loaded: MasterKey): Promise<void> {
  // Both reads in one flight: start-up waits for them.
  const [open, replaced] = await db.withPlatform((tx) =>
    Promise.all([unfinishedRotation(tx), rotationAwayFrom(tx, loaded.fingerprint)]),
  );
  if (open) throw new MasterKeyRotationError(unfinishedText(open));
  if (replaced) {
    throw new MasterKeyRotationError(
      `master key ${loaded.fingerprint} was rotated to ${replaced.to_fingerprint} on ` +
        `${replaced.completed_at?.toISOString()}: configure master key ${replaced.to_fingerprint} (the rotation's --new-key-file)`,
    );
  }
}

/**
 * Doctor's evidence that the master key `key` wraps every key it should: no rotation unfinished, the
 * platform's keys and every tenant's (read in one snapshot, tenant by tenant) wrapped by it, and when it last
 * replaced another key.
 */
export async function masterKeyWrapsEverything(
  db: Database,
  key: MasterKey,
): Promise<{ ok: boolean; evidence: string }> {
  return db.withSnapshot(async (snapshot) => {
    const open = await unfinishedRotation(snapshot.tx);
    if (open) {
      return { ok: false, evidence: unfinishedText(open) };
    }
    const fingerprints = new Map<string, number>();
    const count = (rows: { master_key_fingerprint: string }[]) => {
      for (const { master_key_fingerprint: f } of rows) fingerprints.set(f, (fingerprints.get(f) ?? 0) + 1);
    };
    count(await snapshot.tx.selectFrom("platform_keys").select("master_key_fingerprint").execute());
    await snapshot.forEachTenant(async (tenantId, tx) =>
      count(
        await tx.selectFrom("tenant_keys").select("master_key_fingerprint").where("tenant_id", "=", tenantId).execute(),
      ),
    );
    const wrapped = fingerprints.get(key.fingerprint) ?? 0;
    fingerprints.delete(key.fingerprint);
    if (fingerprints.size > 0) {
      const others = [...fingerprints].map(([f, n]) => `${n} by ${f}`).join(", ");
      return { ok: false, evidence: `keys wrapped by another master key than ${key.fingerprint}: ${others}` };
    }
    const last = await snapshot.tx
      .selectFrom("master_key_rotations")
      .select(["from_fingerprint", "completed_at"])
      .where("to_fingerprint", "=", key.fingerprint)
      .executeTakeFirst();
    const since = last
      ? `it replaced master key ${last.from_fingerprint} on ${last.completed_at?.toISOString()}`
      : "it has not been rotated";
    return {
      ok: true,
      evidence: `${wrapped} platform and tenant keys, all wrapped by master key ${key.fingerprint}; ${since}`,
    };
  });
}

const BATCH = 500;

/**
 * Computes the blind index `column` of `table` again from its sealed `source`, under `indexKey`, for the
 * rows of the transaction's scope (a tenant's rows on a tenant table). A value whose key was destroyed
 * (its person or subject erased) indexes no address any more: it gets random bytes, which nothing finds.
 */
async function reindex(
  tx: Tx,
  ring: KeyRing,
  target: { table: string; column: string; source: string; kind: BlindIndexKind },
  tenantId: string | null,
  indexKey: Buffer,
): Promise<number> {
  const { table, column, source, kind } = target;
  const inScope = tenantId === null ? sql`true` : sql`tenant_id = ${tenantId}`;
  let after = "00000000-0000-0000-0000-000000000000";
  let count = 0;
  for (;;) {
    const { rows } = await sql<{ id: string; sealed: string }>`
      SELECT id, ${sql.ref(source)} AS sealed FROM ${sql.table(table)}
      WHERE ${inScope} AND ${sql.ref(source)} IS NOT NULL AND id > ${after}::uuid ORDER BY id LIMIT ${BATCH}`.execute(
      tx,
    );
    if (rows.length === 0) return count;
    const resolve = await ring.resolver(
      tx,
      rows.map((r) => r.sealed),
      tenantId,
    );
    const indexes = rows.map(({ id, sealed }) => {
      let value: string;
      try {
        value = open(resolve, sealed, { tenantId, table, column: source, rowId: id });
      } catch (error) {
        if (error instanceof DecryptionError && error.reason === "unknown-key") return randomBytes(32).toString("hex");
        throw new MasterKeyRotationError(`${table}.${source} of row ${id} cannot be read: ${(error as Error).message}`);
      }
      return blindIndex(indexKey, kind, value).toString("hex");
    });
    await sql`
      UPDATE ${sql.table(table)} AS t SET ${sql.ref(column)} = decode(v.index, 'hex')
      FROM unnest(${rows.map((r) => r.id)}::uuid[], ${indexes}::text[]) AS v(id, index)
      WHERE t.id = v.id AND ${tenantId === null ? sql`true` : sql`t.tenant_id = ${tenantId}`}`.execute(tx);
    count += rows.length;
    after = rows[rows.length - 1]?.id as string;
  }
}

interface KeyRow {
  id: string;
  wrapped_key: string | null;
  master_key_fingerprint: string;
}

/**
 * Which of the two keys the scope's key rows are under: "to" when all are (already moved), "from" when none
 * is; anything else is refused (a third master key, or a scope half moved, which one transaction per scope
 * rules out).
 */
function scopeState(rows: KeyRow[], from: MasterKey, to: MasterKey, what: string): "from" | "to" | "empty" {
  if (rows.length === 0) return "empty";
  const fingerprints = new Set(rows.map((r) => r.master_key_fingerprint));
  if (fingerprints.size === 1 && fingerprints.has(to.fingerprint)) return "to";
  if (fingerprints.size === 1 && fingerprints.has(from.fingerprint)) return "from";
  throw new MasterKeyMismatchError(
    `the ${what} keys are wrapped by master keys ${[...fingerprints].join(", ")}, not all by ${from.fingerprint}: ` +
      "configure the master key this database was created with",
  );
}

/** A key wrapped by `from` wrapped by `to` instead, for the same id and purpose. */
function rewrap(from: MasterKey, to: MasterKey, wrapped: string, label: WrapLabel): string {
  const [old, next] = [from.bytes(), to.bytes()];
  const key = unwrapKey(old, wrapped, label);
  try {
    return wrapKey(next, key, label);
  } finally {
    for (const bytes of [old, next, key]) bytes.fill(0);
  }
}

/**
 * Moves every key wrapped by the master key `from` to the master key `to`, and the blind indexes with them
 * (see the top of this file). Run it with no server running. It takes up an unfinished rotation between the
 * same two keys, and refuses any other while one is unfinished, a key that is the one in use, and a key the
 * database was rotated away from before.
 */
export async function rotateMasterKey(
  deps: MasterKeyRotationDeps,
  from: MasterKey,
  to: MasterKey,
): Promise<MasterKeyRotationReport> {
  const { db, clock, inventory, audit } = deps;
  const ring = createKeyRing({ db, masterKey: from, clock });
  const report: MasterKeyRotationReport = { resumed: false, keys: 0, indexes: 0, tenants: 0 };

  /** Every blind index of the scope's tables, under the scope's index key from the new master key. */
  async function reindexScope(tx: Tx, scope: BlindIndexScope): Promise<number> {
    const indexKey = blindIndexKey(to, scope);
    const [owner, tenantId] =
      scope === "platform" ? (["platform", null] as const) : (["tenant", scope.tenantId] as const);
    let count = 0;
    try {
      for (const target of blindIndexColumns(inventory, owner))
        count += await reindex(tx, ring, target, tenantId, indexKey);
    } finally {
      indexKey.fill(0);
    }
    return count;
  }

  const rotation = await db.withPlatform(async (tx) => {
    await lock(tx, ROTATION_LOCK);
    const open = await unfinishedRotation(tx);
    if (open) {
      if (open.from_fingerprint !== from.fingerprint || open.to_fingerprint !== to.fingerprint) {
        throw new MasterKeyRotationError(unfinishedText(open));
      }
      report.resumed = true;
      return open;
    }
    if (from.fingerprint === to.fingerprint) {
      throw new MasterKeyRotationError(`the new master key is the one in use (${to.fingerprint}): give a new key`);
    }
    const retired = await rotationAwayFrom(tx, to.fingerprint);
    if (retired) {
      throw new MasterKeyRotationError(
        `master key ${to.fingerprint} was rotated away from on ${retired.completed_at?.toISOString()}: give a new key`,
      );
    }
    const platformRows = await tx
      .selectFrom("platform_keys")
      .select(["id", "wrapped_key", "master_key_fingerprint"])
      .execute();
    if (scopeState(platformRows, from, to, "platform") === "to") {
      throw new MasterKeyMismatchError(
        `the platform key is wrapped by master key ${to.fingerprint}, but ${from.fingerprint} is loaded: configure it`,
      );
    }
    const started = {
      id: uuidv7(clock.now().getTime()),
      from_fingerprint: from.fingerprint,
      to_fingerprint: to.fingerprint,
    };
    await tx
      .insertInto("master_key_rotations")
      .values({ ...started, started_at: clock.now() })
      .execute();
    return started;
  });

  // The platform's keys, with the platform tables' blind indexes.
  await db.withPlatform(async (tx) => {
    await lock(tx, ROTATION_LOCK);
    await lock(tx, "key-ring/platform");
    const rows = await tx.selectFrom("platform_keys").select(["id", "wrapped_key", "master_key_fingerprint"]).execute();
    if (scopeState(rows, from, to, "platform") !== "from") return;
    report.indexes += await reindexScope(tx, "platform");
    for (const row of rows) {
      await tx
        .updateTable("platform_keys")
        .set({
          wrapped_key: rewrap(from, to, row.wrapped_key, wrapLabels.platform(row.id)),
          master_key_fingerprint: to.fingerprint,
        })
        .where("id", "=", row.id)
        .execute();
      report.keys += 1;
    }
  });

  // Each tenant's keys, with its tables' blind indexes; again for tenants created meanwhile.
  const visited = new Set<string>();
  for (;;) {
    const tenants = (await db.withPlatform((tx) => tx.selectFrom("tenants").select("id").orderBy("id").execute()))
      .map((t) => t.id)
      .filter((id) => !visited.has(id));
    if (tenants.length === 0) break;
    for (const tenantId of tenants) {
      visited.add(tenantId);
      await db.withTenant({ tenantId }, (tx) => rotateTenant(tx, tenantId));
    }
  }

  async function rotateTenant(tx: Tx, tenantId: string): Promise<void> {
    await lock(tx, `key-ring/tenant/${tenantId}`);
    const rows = await tx
      .selectFrom("tenant_keys")
      .select(["id", "wrapped_key", "master_key_fingerprint"])
      .where("tenant_id", "=", tenantId)
      .execute();
    if (scopeState(rows, from, to, `tenant ${tenantId}'s`) !== "from") return;
    report.indexes += await reindexScope(tx, { tenantId });
    for (const row of rows) {
      // A deleted tenant's keys are destroyed: nothing to wrap, but the row moves with the others.
      const wrapped = row.wrapped_key && rewrap(from, to, row.wrapped_key, wrapLabels.tenant(row.id, tenantId));
      await tx
        .updateTable("tenant_keys")
        .set({ wrapped_key: wrapped, master_key_fingerprint: to.fingerprint })
        .where("tenant_id", "=", tenantId)
        .where("id", "=", row.id)
        .execute();
      report.keys += 1;
    }
    report.tenants += 1;
  }

  await db.withPlatform(async (tx) => {
    await lock(tx, ROTATION_LOCK);
    await tx
      .updateTable("master_key_rotations")
      .set({ completed_at: clock.now() })
      .where("id", "=", rotation.id)
      .where("completed_at", "is", null)
      .execute();
    await audit.record(tx, {
      tenantId: null,
      stream: "security",
      actor: SYSTEM_ACTOR,
      action: MASTER_KEY_ROTATED,
      target: { type: "master-key", id: null },
      details: { from: from.fingerprint, to: to.fingerprint },
    });
  });
  return report;
}
