import { AsyncLocalStorage } from "node:async_hooks";
import { sql } from "kysely";
import { isUuid } from "../ids.ts";
import { type Engine, SWITCH_TENANT_SQL, type TransactionRunner, type TransactionSetup } from "./engines.ts";
import { bindTransaction, type Tx } from "./kysely.ts";
import { type MigrationFile, migrate, pendingMigrations, readMigrations } from "./migrate.ts";
import { assertRuntimeRoleSafe } from "./runtime-role.ts";
import { compileSelect, type SelectQuery } from "./select-query.ts";

/** Who a transaction acts for. The tenant is set on the transaction; row-level security does the rest. */
export interface TenantContext {
  tenantId: string;
  /** A pseudonymous actor id (a membership, API key or system actor); empty when anonymous. */
  actorId?: string;
  requestId?: string;
}

export interface PlatformContext {
  actorId?: string;
  requestId?: string;
}

/**
 * Streams the rows of one SELECT, in the transaction it belongs to, to `onLine` as they arrive, never
 * holding them all: for reads too long for pages of objects (audit verification). Each row is the line
 * COPY's text format gives it (copy-text.ts), valid only until `onLine` returns. The statement takes no
 * parameters and is sent as it is: it must not contain outside text (tenant-scoped reads filter by
 * row-level security, or by current_setting('app.tenant_id')). Returns the number of rows.
 */
export type CopyRows = (sql: string, onLine: (line: Buffer) => void) => Promise<number>;

/** One read-only REPEATABLE READ view over every tenant and the platform tables. */
export interface Snapshot {
  /** The platform view: tenant tables show no rows here. */
  tx: Tx;
  /** CopyRows in the platform view. */
  copyRows: CopyRows;
  tenantIds(): Promise<string[]>;
  /**
   * Visits each tenant inside the same snapshot, with that tenant set, and `copyRows` reading in that
   * tenant's view. With `concurrency` above one, up to that many tenants are visited at once on PostgreSQL,
   * each in a transaction of its own that imports this one's snapshot (so every visit still sees the same
   * state), while the database reads one tenant and Node works on another; PGlite visits one at a time.
   * The first error stops the visits not yet started and is thrown once the running ones end.
   */
  forEachTenant(
    fn: (tenantId: string, tx: Tx, copyRows: CopyRows) => Promise<void>,
    options?: { concurrency?: number },
  ): Promise<void>;
}

/** Written after a transaction rolled back, in its own short platform transaction. */
export type FailureRecord = (tx: Tx) => Promise<void>;

interface Frame {
  kind: "tenant" | "platform" | "snapshot";
  tx: Tx;
  failureRecords: FailureRecord[];
  /** Run once the transaction has committed (see Database.afterCommit). */
  afterCommit: (() => void)[];
  /** False once the transaction ended: work it left behind (a timer, a pending promise) is no longer inside it. */
  open: boolean;
}

export class NestedTransactionError extends Error {
  override name = "NestedTransactionError";
}

export interface Database {
  readonly kind: Engine["kind"];
  withTenant<T>(ctx: TenantContext, fn: (tx: Tx) => Promise<T>): Promise<T>;
  /**
   * One SELECT in the tenant's context, as charter_app under row-level security, in a transaction of its
   * own: the same rows as `withTenant(ctx, (tx) => build(tx).execute())`, in one round trip instead of two
   * on PostgreSQL. `build` only builds the query (running one on its `q` fails); anything but a plain
   * SELECT (another statement, a data-modifying WITH, FOR UPDATE/SHARE) is refused with a TypeError before
   * anything is sent. For several statements, or one that must see another's result, use withTenant.
   */
  selectAsTenant<R>(ctx: TenantContext, build: (q: Tx) => SelectQuery<R>): Promise<R[]>;
  withPlatform<T>(fn: (tx: Tx) => Promise<T>, ctx?: PlatformContext): Promise<T>;
  /** `indexOrderReads`: see TransactionSetup (for reads that stream tables in an index's order). */
  withSnapshot<T>(fn: (snapshot: Snapshot) => Promise<T>, options?: { indexOrderReads?: boolean }): Promise<T>;
  /**
   * Registers something to write even though the current transaction fails (a denial, a failed sign-in):
   * it runs in its own short platform transaction after the rollback. Outside a transaction it throws.
   */
  recordOnFailure(record: FailureRecord): void;
  /**
   * Registers a callback to run once the current transaction has committed, and never if it rolls back: for
   * wake-ups (an audit append's listeners) that must not announce what may still be undone. Callbacks run
   * in order, right after COMMIT returns and before the transaction's caller resumes, outside any
   * transaction. They must not throw: the data is committed by then, so an error a callback throws is
   * dropped rather than reported as the transaction's failure. Outside a transaction it throws.
   */
  afterCommit(callback: () => void): void;
  /**
   * For the job queue (pg-boss's `db` adapter) and nothing else: runs one statement with parameters, or a
   * parameterless script of several (pg-boss's maintenance wraps its own BEGIN … COMMIT), as charter_app with
   * no tenant set, in a transaction of its own. Returns the rows of every statement. Refused inside an open
   * transaction (on PGlite it would wait forever): enqueue through the caller's Tx instead.
   */
  queueSql(sql: string, params?: readonly unknown[]): Promise<Record<string, unknown>[]>;
  /** Applies pending migrations as charter_owner; returns how many ran. */
  migrate(): Promise<number>;
  /** Migrations that the code has and the database does not (empty when current). */
  pendingMigrations(): Promise<MigrationFile[]>;
  close(): Promise<void>;
}

function checkId(name: string, value: string): string {
  if (value !== "" && !isUuid(value)) throw new TypeError(`${name} must be a UUID, got "${value}"`);
  return value;
}

function checkRequestId(value: string): string {
  if (value.length > 200) throw new TypeError("requestId is longer than 200 characters");
  return value;
}

export interface DatabaseOptions {
  migrations?: MigrationFile[];
}

const copyRowsOf =
  (runner: TransactionRunner): CopyRows =>
  (sql, onLine) =>
    runner.copyRows(sql, onLine);

/** Wraps an engine with the tenancy rules: context per transaction, no nesting, failure records. */
export function createDatabase(engine: Engine, options: DatabaseOptions = {}): Database {
  const frames = new AsyncLocalStorage<Frame>();
  const migrations = options.migrations ?? readMigrations();

  async function run<T>(
    kind: Frame["kind"],
    setup: TransactionSetup,
    fn: (tx: Tx, runner: TransactionRunner) => Promise<T>,
  ): Promise<T> {
    const frame: Frame = { kind, tx: undefined as unknown as Tx, failureRecords: [], afterCommit: [], open: true };
    let value: T;
    try {
      value = await engine.transaction(setup, (runner) => {
        const bound = bindTransaction(runner);
        frame.tx = bound.tx;
        // async: a callback that throws before returning a promise must still end its handle.
        return frames
          .run(frame, async () => fn(bound.tx, runner))
          .finally(() => {
            frame.open = false;
            bound.end();
          });
      });
    } catch (error) {
      for (const record of frame.failureRecords) {
        try {
          await run("platform", { ...setup, tenantId: "", snapshot: false }, record);
        } catch (recordError) {
          throw new AggregateError([error, recordError], "a failure record could not be written");
        }
      }
      throw error;
    }
    for (const callback of frame.afterCommit) {
      try {
        callback();
      } catch {
        // Committed already: see afterCommit.
      }
    }
    return value;
  }

  function openFrame(): Frame | undefined {
    const frame = frames.getStore();
    return frame?.open ? frame : undefined;
  }

  function tenantSetup(ctx: TenantContext): TransactionSetup {
    if (!isUuid(ctx.tenantId)) throw new TypeError(`tenantId must be a UUID, got "${ctx.tenantId}"`);
    return {
      tenantId: ctx.tenantId,
      actorId: checkId("actorId", ctx.actorId ?? ""),
      requestId: checkRequestId(ctx.requestId ?? ""),
      snapshot: false,
    };
  }

  function refuseNesting(what: string): void {
    const open = openFrame();
    if (open) {
      throw new NestedTransactionError(
        `${what} called inside an open ${open.kind} transaction: pass the transaction down instead`,
      );
    }
  }

  return {
    kind: engine.kind,
    // async, so that a refusal below is a rejected promise like every other failure, never a synchronous throw.
    async withTenant(ctx, fn) {
      refuseNesting("withTenant");
      return run("tenant", tenantSetup(ctx), fn);
    },
    async selectAsTenant(ctx, build) {
      // A second connection inside an open transaction: on PGlite it would wait forever.
      refuseNesting("selectAsTenant");
      const setup = tenantSetup(ctx);
      const query = compileSelect(build);
      return engine.readOnce(setup, query.sql, query.parameters);
    },
    async withPlatform(fn, ctx = {}) {
      const open = openFrame();
      // The one allowed nesting: platform work inside a tenant request joins its transaction.
      if (open?.kind === "tenant") return fn(open.tx);
      refuseNesting("withPlatform");
      return run(
        "platform",
        {
          tenantId: "",
          actorId: checkId("actorId", ctx.actorId ?? ""),
          requestId: checkRequestId(ctx.requestId ?? ""),
          snapshot: false,
        },
        fn,
      );
    },
    async withSnapshot(fn, options = {}) {
      refuseNesting("withSnapshot");
      const view = {
        tenantId: "",
        actorId: "",
        requestId: "",
        snapshot: true,
        indexOrderReads: options.indexOrderReads,
      };
      return run("snapshot", view, async (tx, runner) => {
        const tenantIds = async () =>
          (await tx.selectFrom("tenants").select("id").orderBy("id").execute()).map((row) => row.id);

        /**
         * Visits tenants from `queue` one after another on one transaction, until the queue or `state` says
         * stop. Each tenant is switched to with the visit's first statement (in the same round trip when it
         * is a copyRows): every statement of a visit is queued after its tenant's switch, and the visit
         * before has ended by then.
         */
        async function lane(
          on: TransactionRunner,
          queue: string[],
          state: { error?: unknown },
          visit: (tenantId: string, tx: Tx, copyRows: CopyRows) => Promise<void>,
        ) {
          let pending: string | undefined;
          const take = () => {
            const id = pending;
            pending = undefined;
            return id;
          };
          const gated: TransactionRunner = {
            query: async <Row>(text: string, params?: readonly unknown[]) => {
              const id = take();
              if (id === undefined) return on.query<Row>(text, params);
              // Queued before the statement, on the same session: it runs first.
              const [, result] = await Promise.all([on.query(SWITCH_TENANT_SQL, [id]), on.query<Row>(text, params)]);
              return result;
            },
            copyRows: (text, onLine) => on.copyRows(text, onLine, take()),
          };
          const bound = bindTransaction(gated);
          const copyRows = copyRowsOf(gated);
          try {
            for (let id = queue.shift(); id !== undefined && !("error" in state); id = queue.shift()) {
              pending = id;
              try {
                await visit(id, bound.tx, copyRows);
              } catch (error) {
                if (!("error" in state)) state.error = error;
              }
            }
          } finally {
            bound.end();
          }
        }

        return fn({
          tx,
          copyRows: copyRowsOf(runner),
          tenantIds,
          async forEachTenant(visit, options = {}) {
            const queue = await tenantIds();
            const state: { error?: unknown } = {};
            const extra = Math.max(0, Math.min(options.concurrency ?? 1, engine.connections, queue.length) - 1);
            const lanes = [lane(runner, queue, state, visit)];
            if (extra > 0) {
              const exported = await sql<{ id: string }>`SELECT pg_export_snapshot() AS id`.execute(tx);
              const importSnapshot = exported.rows[0]?.id as string;
              for (let i = 0; i < extra; i++) {
                lanes.push(
                  run("snapshot", { ...view, importSnapshot }, (_laneTx, laneRunner) =>
                    lane(laneRunner, queue, state, visit),
                  ).catch((error: unknown) => {
                    if (!("error" in state)) state.error = error;
                  }),
                );
              }
            }
            await Promise.all(lanes);
            // Back to the platform view for the caller, without hiding a visit's error behind the reset's own
            // failure in an aborted transaction.
            const reset = runner.query(SWITCH_TENANT_SQL, [""]);
            if ("error" in state) {
              await reset.catch(() => {});
              throw state.error;
            }
            await reset;
          },
        });
      });
    },
    recordOnFailure(record) {
      const open = openFrame();
      if (!open) throw new Error("recordOnFailure needs an open transaction");
      open.failureRecords.push(record);
    },
    afterCommit(callback) {
      const open = openFrame();
      if (!open) throw new Error("afterCommit needs an open transaction");
      open.afterCommit.push(callback);
    },
    async queueSql(sql, params = []) {
      refuseNesting("queueSql");
      return engine.queueSql(sql, params);
    },
    async migrate() {
      // The owner session is a second session: on PGlite it would wait forever behind the open transaction.
      refuseNesting("migrate");
      const count = await engine.withOwnerSession((session) => migrate(session, migrations));
      await engine.afterMigrate();
      return count;
    },
    async pendingMigrations() {
      const applied = await this.withPlatform((tx) =>
        tx.selectFrom("schema_migrations").select(["version", "name", "checksum"]).orderBy("version").execute(),
      );
      return pendingMigrations(migrations, applied);
    },
    close: () => engine.close(),
  };
}

/**
 * Opens a database for serving: migrates (fail closed on any history mismatch), then refuses to go on if
 * the role that runs requests could bypass row-level security.
 */
export async function openDatabase(engine: Engine, options: DatabaseOptions & { migrate?: boolean } = {}) {
  const db = createDatabase(engine, options);
  try {
    if (options.migrate ?? true) await db.migrate();
    else await engine.afterMigrate();
    await assertRuntimeRoleSafe(db);
    return db;
  } catch (error) {
    await db.close();
    throw error;
  }
}
