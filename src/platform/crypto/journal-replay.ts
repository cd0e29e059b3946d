import type { Clock } from "../clock.ts";
import type { Database, Tx } from "../db/index.ts";
import { type DestructionRecord, type DestructionType, type JournalEntry, JournalError } from "./journal.ts";
import { applyDestruction } from "./key-ring.ts";
import "./schema.ts";

/**
 * Replay of the destruction journal (promise P4): start-up runs it before serving, and a restore runs it
 * on the restored database before serving, so that a destruction journalled but never committed, or
 * committed after the backup was taken, happens anyway. The journal always wins: replay does not ask
 * legal holds again, as the hold check ran before the entry was written.
 *
 * The database remembers per journal (named by the hash of its first line) the last entry it applied,
 * so start-up replays only newer entries; a restored backup remembers less and so replays more. A
 * journal that ends before that entry, or differs at it, is refused: entries were removed from its end
 * or it was replaced, and replaying it would silently skip destructions.
 */

type EntryOf<T extends DestructionType> = JournalEntry<Extract<DestructionRecord, { type: T }>>;

/**
 * What a journal entry must re-run beyond the keys: e.g. the privacy module registers, for
 * "subject-erased", the deletion and anonymisation of the subject's plaintext (names), which a restored
 * backup would otherwise bring back. A handler runs in the entry's transaction (a tenant transaction for
 * tenant-scope entries), after applyDestruction, and must be idempotent: an entry may be replayed more
 * than once (after each restore of an older backup).
 */
export type ReplayHandler<T extends DestructionType = DestructionType> = (tx: Tx, entry: EntryOf<T>) => Promise<void>;

export interface ReplayHandlers {
  /** Adds a handler for one entry type; handlers of a type run in the order they were added. */
  on<T extends DestructionType>(type: T, handler: ReplayHandler<T>): ReplayHandlers;
  /** Runs the handlers of the entry's type. */
  run(tx: Tx, entry: JournalEntry): Promise<void>;
}

type AnyHandler = (tx: Tx, entry: JournalEntry) => Promise<void>;

export function replayHandlers(): ReplayHandlers {
  const byType = new Map<DestructionType, AnyHandler[]>();
  const registry: ReplayHandlers = {
    on(type, handler) {
      const list = byType.get(type) ?? [];
      // Only entries of `type` reach it (run looks them up by their type).
      list.push((tx, entry) => handler(tx, entry as EntryOf<typeof type>));
      byType.set(type, list);
      return registry;
    },
    async run(tx, entry) {
      for (const handler of byType.get(entry.record.type) ?? []) await handler(tx, entry);
    },
  };
  return registry;
}

export interface ReplayReport {
  /** Entries in the journal. */
  entries: number;
  /** Entries replayed now (those after the last one this database had applied). */
  replayed: number;
  /** Keys that were still live and are now destroyed. */
  destroyedKeys: number;
}

function tenantOf(record: DestructionRecord): string | undefined {
  if (record.type === "person-erased" || (record.type === "key-destroyed" && record.scope === "person")) {
    return undefined;
  }
  return record.tenantId;
}

async function replayEntry(db: Database, entry: JournalEntry, handlers: ReplayHandlers): Promise<number> {
  const apply = async (tx: Tx) => {
    const destroyed = await applyDestruction(tx, entry);
    await handlers.run(tx, entry);
    return destroyed;
  };
  const tenantId = tenantOf(entry.record);
  if (tenantId === undefined) return db.withPlatform(apply);
  return db.withTenant({ tenantId }, async (tx) => {
    // A backup older than the tenant has nothing of it to destroy (and no row its records could refer to).
    const tenant = await tx.selectFrom("tenants").select("id").where("id", "=", tenantId).executeTakeFirst();
    return tenant ? apply(tx) : 0;
  });
}

/**
 * The entries of a verified journal that this database has not applied yet. Throws JournalError when the
 * journal is shorter than what the database applied, or is not the journal it applied.
 */
export async function unappliedEntries(db: Database, entries: readonly JournalEntry[]): Promise<JournalEntry[]> {
  const first = entries[0];
  if (!first) return [];
  const mark = await db.withPlatform((tx) =>
    tx
      .selectFrom("journal_replays")
      .select(["applied_seq", "applied_hash"])
      .where("journal_id", "=", first.hash)
      .executeTakeFirst(),
  );
  if (mark) {
    const applied = entries[mark.applied_seq - 1];
    if (!applied) {
      throw new JournalError(
        `the destruction journal has ${entries.length} entries, but this database already applied ${mark.applied_seq}: ` +
          "entries were removed from its end; restore the journal directory from its backup",
      );
    }
    if (applied.hash !== mark.applied_hash) {
      throw new JournalError(
        `entry ${mark.applied_seq} of the destruction journal is not the one this database applied: the journal was replaced`,
      );
    }
  }
  return entries.slice(mark?.applied_seq ?? 0);
}

/**
 * Completes every journalled destruction the database has not applied yet, one transaction per entry,
 * in journal order. `entries` must come verified (openJournal or readJournal, which refuse a tampered journal).
 */
export async function replayJournal(options: {
  db: Database;
  /** The verified entries, oldest first. */
  entries: readonly JournalEntry[];
  clock: Clock;
  handlers?: ReplayHandlers;
}): Promise<ReplayReport> {
  const { db, entries, clock } = options;
  const handlers = options.handlers ?? replayHandlers();
  const first = entries[0];
  const last = entries.at(-1);
  if (!first || !last) return { entries: 0, replayed: 0, destroyedKeys: 0 };
  const pending = await unappliedEntries(db, entries);
  let destroyedKeys = 0;
  for (const entry of pending) destroyedKeys += await replayEntry(db, entry, handlers);
  if (pending.length > 0) {
    await db.withPlatform((tx) =>
      tx
        .insertInto("journal_replays")
        .values({ journal_id: first.hash, applied_seq: last.seq, applied_hash: last.hash, replayed_at: clock.now() })
        .onConflict((oc) =>
          oc.column("journal_id").doUpdateSet((eb) => ({
            applied_seq: eb.ref("excluded.applied_seq"),
            applied_hash: eb.ref("excluded.applied_hash"),
            replayed_at: eb.ref("excluded.replayed_at"),
          })),
        )
        .execute(),
    );
  }
  return { entries: entries.length, replayed: pending.length, destroyedKeys };
}
