import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import pg from "pg";
import { isUuid } from "../ids.ts";
import { encodeCopyLine, type TextRow } from "./copy-text.ts";
import { acquireDataDirLock } from "./lock.ts";
import type { OwnerSession } from "./migrate.ts";
import { type NamedStatement, queryWithPrefix } from "./one-shot.ts";
import { APP_ROLE } from "./roles.ts";
import type { QueryRunner } from "./runner.ts";

/** What every transaction is opened with: its tenant (or none), actor and request, and its kind. */
export interface TransactionSetup {
  /** Empty for platform transactions: tenant tables then show no rows. */
  tenantId: string;
  actorId: string;
  requestId: string;
  /** A read-only REPEATABLE READ transaction (backups, full exports). */
  snapshot: boolean;
  /**
   * With `snapshot`: plan without bitmap scans, so that a read ordered as an index is (a tenant's audit events
   * by chain and sequence) streams through that index instead of a bitmap scan and a sort, which the
   * planner's estimate of a tenant's share often picks and which costs the database a third more per row.
   */
  indexOrderReads?: boolean;
  /** With `snapshot`: see exactly the snapshot another open transaction exported (PostgreSQL only). */
  importSnapshot?: string;
}

/** What a transaction's callback is handed: statements, and a stream of rows for long reads. */
export interface TransactionRunner extends QueryRunner {
  /**
   * Streams the rows of one SELECT, in its order, to `onLine` as they arrive, without holding them: each row
   * as the line COPY's text format gives it, its newline included (copy-text.ts), every column as its
   * type's text output. COPY … TO STDOUT on PostgreSQL (one message per row, no objects or type parsing:
   * several times cheaper than a result set), a cursor read in pages on PGlite, its rows written as the same
   * lines. A line is the
   * driver's buffer: it is valid only until `onLine` returns (copy what must outlive the call). The
   * statement takes no parameters and is sent as it is, so it must not contain outside text. An error thrown
   * by `onLine` ends the read with that error once the statement has finished. Returns the number of rows.
   * With `switchTenant`, the transaction's `app.tenant_id` is set to that tenant first, in the same round
   * trip on PostgreSQL (one message, run in order: the statement never runs before the switch).
   */
  copyRows(sql: string, onLine: (line: Buffer) => void, switchTenant?: string): Promise<number>;
}

/** The driver-specific half of the database: transactions, the owner session and shutdown. */
export interface Engine {
  readonly kind: "pglite" | "postgres";
  /** Transactions that can be open at once (PGlite has one session). */
  readonly connections: number;
  transaction<T>(setup: TransactionSetup, fn: (runner: TransactionRunner) => Promise<T>): Promise<T>;
  /**
   * One read-only statement in its own transaction, set up like `transaction`'s: one round trip on
   * PostgreSQL, where the setup and the statement share one implicit transaction.
   */
  readOnce<Row>(setup: Omit<TransactionSetup, "snapshot">, sql: string, params: readonly unknown[]): Promise<Row[]>;
  withOwnerSession<T>(fn: (session: OwnerSession) => Promise<T>): Promise<T>;
  /** See `Database.queueSql`: one statement, or a parameterless script, as the runtime role with no tenant. */
  queueSql(sql: string, params: readonly unknown[]): Promise<Record<string, unknown>[]>;
  /** Called once migrations are done: PGlite drops its superuser session to the runtime role here. */
  afterMigrate(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Enters the runtime role and sets the tenant context in one statement, local to the transaction.
 * `set_config('role', …, true)` is `SET LOCAL ROLE`; this file is the only place allowed to write it.
 */
export const SETUP_SQL = `SELECT set_config('role', '${APP_ROLE}', true), set_config('app.tenant_id', $1, true), set_config('app.actor_id', $2, true), set_config('app.request_id', $3, true)`;

const setupParams = (s: Omit<TransactionSetup, "snapshot">) => [s.tenantId, s.actorId, s.requestId];

/**
 * SETUP_SQL as a statement each connection prepares once: every transaction and one-statement read starts
 * with it, and parsing and planning it each time cost the server about a tenth of a small read.
 */
export const SETUP: NamedStatement = { name: "charter_setup", text: SETUP_SQL };
const setupQuery = (s: Omit<TransactionSetup, "snapshot">) => ({ ...SETUP, values: setupParams(s) });

const NO_CONTEXT: Omit<TransactionSetup, "snapshot"> = { tenantId: "", actorId: "", requestId: "" };

/** TransactionSetup.indexOrderReads, for the transaction only. */
const INDEX_ORDER_READS_SQL = "SET LOCAL enable_bitmapscan = off";

/** Switches the open transaction to another tenant: `$1` is the tenant's id. */
export const SWITCH_TENANT_SQL = "SELECT set_config('app.tenant_id', $1, true)";

/** SWITCH_TENANT_SQL as a literal statement, for a message of several; the id must be a UUID (it is checked). */
function switchTenantLiteral(tenantId: string): string {
  if (!isUuid(tenantId)) throw new TypeError(`tenantId must be a UUID, got "${tenantId}"`);
  return SWITCH_TENANT_SQL.replace("$1", `'${tenantId}'`);
}

/**
 * SETUP_SQL with no tenant, actor or request, as a literal statement: the simple protocol that runs a script
 * of several statements takes no parameters.
 */
const NO_CONTEXT_SETUP_SQL = SETUP_SQL.replace(/\$[123]/g, "''");

/**
 * The rows of a script run behind NO_CONTEXT_SETUP_SQL in one simple-protocol message: the setup's own result
 * first, then one per statement (pg answers a single statement with one result, not a list).
 */
function scriptRows(results: { rows: unknown[] } | { rows: unknown[] }[]): Record<string, unknown>[] {
  const list = Array.isArray(results) ? results : [results];
  return list.slice(1).flatMap((r) => r.rows as Record<string, unknown>[]);
}

/** BIGINT as a JavaScript number, refusing values that a number cannot hold exactly. */
function parseBigint(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new RangeError(`bigint ${text} exceeds the safe integer range`);
  return n;
}

const WRITE_COMMANDS = new Set(["INSERT", "UPDATE", "DELETE", "MERGE"]);

const SNAPSHOT_ID = /^[0-9A-F]+-[0-9A-F]+-[0-9]+$/i;

/**
 * COPY … TO STDOUT as a pg query: the server sends one CopyData message per row, handed here one by one.
 * A subclass of pg's own Query, so that a pipelined client accepts it (it refuses other custom queries).
 */
class CopyOut extends pg.Query {
  // Not `rows`: pg.Query reads that as the portal's page size.
  #count = 0;
  readonly #onLine: (line: Buffer) => void;
  constructor(text: string, onLine: (line: Buffer) => void, callback: (error: Error | undefined) => void) {
    super({ text }, undefined, callback);
    this.#onLine = onLine;
  }
  get count(): number {
    return this.#count;
  }
  handleCopyData(message: { chunk: Buffer }): void {
    const self = this as unknown as { _canceledDueToError?: unknown };
    if (self._canceledDueToError) return;
    try {
      this.#count += 1;
      this.#onLine(message.chunk);
    } catch (error) {
      // pg reports it instead of the statement's result once the server is ready again.
      self._canceledDueToError = error;
    }
  }
}

export function postgresEngine(options: {
  ownerUrl: string;
  runtimeUrl: string | undefined;
  poolSize?: number;
}): Engine {
  const types = {
    getTypeParser: ((oid: number, format?: "text" | "binary") =>
      oid === 20 ? parseBigint : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
  };
  const pool = new pg.Pool({
    connectionString: options.runtimeUrl ?? options.ownerUrl,
    max: options.poolSize ?? 10,
    types,
    // Pipelining sends BEGIN, the context statement and the first query in one flight (no extra round trips).
    pipeline: true,
  } as pg.PoolConfig);
  // An idle client that loses its connection must not crash the process; the pool replaces it.
  pool.on("error", () => {});

  async function transaction<T>(setup: TransactionSetup, fn: (runner: TransactionRunner) => Promise<T>): Promise<T> {
    const { importSnapshot } = setup;
    if (importSnapshot !== undefined && !(setup.snapshot && SNAPSHOT_ID.test(importSnapshot))) {
      throw new TypeError("only a snapshot transaction imports a snapshot, by the id PostgreSQL gave it");
    }
    const client = await pool.connect();
    const begin = setup.snapshot ? "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" : "BEGIN";
    let setupError: unknown;
    const statements = [
      client.query(begin),
      // Before any other statement of the transaction, as PostgreSQL requires.
      ...(importSnapshot === undefined ? [] : [client.query(`SET TRANSACTION SNAPSHOT '${importSnapshot}'`)]),
      client.query(setupQuery(setup)),
      ...(setup.indexOrderReads ? [client.query(INDEX_ORDER_READS_SQL)] : []),
    ];
    const ready = Promise.all(statements).then(
      () => undefined,
      (error: unknown) => {
        setupError = error;
      },
    );
    const runner: TransactionRunner = {
      query: async (sql, params) => {
        const result = await client.query(sql, params as unknown[]);
        return {
          rows: result.rows,
          affectedRows: WRITE_COMMANDS.has(result.command) ? (result.rowCount ?? undefined) : undefined,
        };
      },
      copyRows: (sql, onLine, switchTenant) =>
        new Promise((resolve, reject) => {
          const copySql = `COPY (${sql}) TO STDOUT`;
          const text = switchTenant === undefined ? copySql : `${switchTenantLiteral(switchTenant)}; ${copySql}`;
          const copy = new CopyOut(text, onLine, (error) => (error ? reject(error) : resolve(copy.count)));
          client.query(copy);
        }),
    };
    try {
      const value = await fn(runner);
      await ready;
      if (setupError) throw setupError;
      const commit = await client.query("COMMIT");
      // COMMIT of a transaction in which a statement failed answers ROLLBACK instead of an error.
      if (commit.command !== "COMMIT") throw new Error("the transaction was rolled back: a statement in it failed");
      client.release();
      return value;
    } catch (error) {
      await ready;
      try {
        await client.query("ROLLBACK");
        client.release();
      } catch (rollbackError) {
        client.release(rollbackError as Error);
      }
      throw setupError ?? error;
    }
  }

  return {
    kind: "postgres",
    connections: options.poolSize ?? 10,
    transaction,
    async readOnce(setup, sql, params) {
      const client = await pool.connect();
      try {
        return await queryWithPrefix(client, setupQuery(setup), sql, params);
      } finally {
        // Also after an error: the Sync went out with the statement, so whatever the next user sends runs after
        // this implicit transaction ended; pg-pool retires the client itself if the error was the connection's.
        client.release();
      }
    },
    async withOwnerSession(fn) {
      const client = new pg.Client({ connectionString: options.ownerUrl, types });
      await client.connect();
      try {
        return await fn({
          query: async (sql, params) => (await client.query(sql, params)).rows,
          applyInTransaction: async (sql, record) => {
            await client.query("BEGIN");
            try {
              await client.query(sql);
              await client.query(record.sql, record.params);
              await client.query("COMMIT");
            } catch (error) {
              await client.query("ROLLBACK");
              throw error;
            }
          },
        });
      } finally {
        await client.end();
      }
    },
    async queueSql(sql, params) {
      const client = await pool.connect();
      let rows: Record<string, unknown>[];
      try {
        rows =
          params.length > 0
            ? await queryWithPrefix(client, setupQuery(NO_CONTEXT), sql, params)
            : // One simple-protocol message: its statements share one implicit transaction, which a BEGIN in the
              // script turns into an explicit one, so the role entered first holds up to the script's own COMMIT.
              scriptRows(await client.query(`${NO_CONTEXT_SETUP_SQL}; ${sql}`));
      } catch (error) {
        // A script that failed after its BEGIN leaves an aborted transaction open on the connection.
        await client.query("ROLLBACK").then(
          () => client.release(),
          (rollbackError: Error) => client.release(rollbackError),
        );
        throw error;
      }
      client.release();
      return rows;
    },
    afterMigrate: async () => {},
    close: () => pool.end(),
  };
}

const COPY_ROWS_PAGE = 1_000;

/** Parsers that leave every column as the text PostgreSQL sent: the type parsers PGlite has, each replaced. */
const asSentText = (pglite: PGlite) =>
  Object.fromEntries(Object.keys(pglite.parsers).map((oid) => [oid, (text: string) => text]));

export function pgliteEngineFrom(pglite: PGlite, onClose: () => void): Engine {
  // Set once afterMigrate dropped the session to the runtime role: a later owner session must climb back.
  let dropped = false;
  return {
    kind: "pglite",
    connections: 1,
    transaction(setup, fn) {
      // One session: there is never another open transaction to share a snapshot with.
      if (setup.importSnapshot !== undefined) throw new TypeError("PGlite has no snapshots to import");
      return pglite.transaction(async (tx) => {
        if (setup.snapshot) await tx.exec("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");
        await tx.query(SETUP_SQL, setupParams(setup));
        if (setup.indexOrderReads) await tx.exec(INDEX_ORDER_READS_SQL);
        let cursors = 0;
        return fn({
          query: async (sql, params) => {
            const result = await tx.query(sql, params as unknown[]);
            return { rows: result.rows as never[], affectedRows: result.affectedRows };
          },
          async copyRows(sql, onLine, switchTenant) {
            if (switchTenant !== undefined) await tx.query(SWITCH_TENANT_SQL, [switchTenant]);
            // In process there is no transfer to save: a cursor keeps memory bounded, a page at a time.
            const cursor = `charter_copy_rows_${++cursors}`;
            await tx.query(`DECLARE ${cursor} NO SCROLL CURSOR FOR ${sql}`);
            const parsers = asSentText(pglite);
            let rows = 0;
            try {
              for (;;) {
                const page = await tx.query<TextRow>(`FETCH ${COPY_ROWS_PAGE} FROM ${cursor}`, [], {
                  rowMode: "array",
                  parsers,
                });
                for (const row of page.rows) {
                  rows += 1;
                  onLine(encodeCopyLine(row));
                }
                if (page.rows.length < COPY_ROWS_PAGE) break;
              }
            } finally {
              await tx.query(`CLOSE ${cursor}`).catch(() => {});
            }
            return rows;
          },
        });
      });
    },
    // No round trips to save in-process: a plain transaction.
    readOnce(setup, sql, params) {
      return pglite.transaction(async (tx) => {
        await tx.query(SETUP_SQL, setupParams(setup));
        return (await tx.query(sql, params as unknown[])).rows as never[];
      });
    },
    // In a PGlite transaction, so that a script failing after its own BEGIN is rolled back before any other
    // caller reaches the one session. A script's COMMIT ends the transaction early; PGlite's COMMIT then only warns.
    queueSql(sql, params) {
      return pglite.transaction(async (tx) => {
        if (params.length > 0) {
          await tx.query(SETUP_SQL, setupParams(NO_CONTEXT));
          return (await tx.query(sql, params as unknown[])).rows as Record<string, unknown>[];
        }
        return scriptRows(await tx.exec(`${NO_CONTEXT_SETUP_SQL}; ${sql}`));
      });
    },
    async withOwnerSession(fn) {
      if (dropped) await pglite.exec("RESET ROLE");
      try {
        return await fn({
          query: async (sql, params) => (await pglite.query(sql, params)).rows as never[],
          applyInTransaction: async (sql, record) => {
            await pglite.transaction(async (tx) => {
              await tx.exec(sql);
              await tx.query(record.sql, record.params);
            });
          },
        });
      } finally {
        if (dropped) await pglite.exec(`SET ROLE ${APP_ROLE}`);
      }
    },
    // PGlite's session user is always a superuser: after migrating the whole session drops to the runtime role.
    afterMigrate: async () => {
      await pglite.exec(`SET ROLE ${APP_ROLE}`);
      dropped = true;
    },
    async close() {
      try {
        await pglite.close();
      } finally {
        onClose();
      }
    },
  };
}

export const pgliteParsers = { 20: parseBigint };

/** The embedded database in `dataDir/db`, held by this process alone through a lock file. */
export async function pgliteEngine(dataDir: string): Promise<Engine> {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const lock = acquireDataDirLock(join(dataDir, "db.lock"));
  try {
    // Created here, private to the service's user, before PGlite would create it world-readable.
    mkdirSync(join(dataDir, "db"), { recursive: true, mode: 0o700 });
    const pglite = new PGlite({ dataDir: join(dataDir, "db"), parsers: pgliteParsers });
    await pglite.waitReady;
    return pgliteEngineFrom(pglite, lock.release);
  } catch (error) {
    lock.release();
    throw error;
  }
}

/**
 * An in-memory PGlite loaded from a dump of a data directory (tests load a migrated template this way),
 * with a superuser door for tests that must break something on purpose.
 */
export async function pgliteEngineFromDump(
  dump: Blob,
): Promise<{ engine: Engine; superuser: (sql: string) => Promise<unknown[]> }> {
  const pglite = new PGlite({ loadDataDir: dump, parsers: pgliteParsers });
  await pglite.waitReady;
  const superuser = async (sql: string) => {
    await pglite.exec("RESET ROLE");
    try {
      const results = await pglite.exec(sql);
      return results.at(-1)?.rows ?? [];
    } finally {
      await pglite.exec(`SET ROLE ${APP_ROLE}`);
    }
  };
  return { engine: pgliteEngineFrom(pglite, () => {}), superuser };
}

/** Dumps a fresh in-memory PGlite after `prepare` ran on it (used to build the migrated test template). */
export async function dumpFreshPglite(prepare: (engine: Engine) => Promise<void>): Promise<Blob> {
  const pglite = new PGlite({ parsers: pgliteParsers });
  await pglite.waitReady;
  const engine = pgliteEngineFrom(pglite, () => {});
  await prepare(engine);
  await pglite.exec("RESET ROLE");
  const dump = await pglite.dumpDataDir("none");
  await pglite.close();
  return dump;
}
