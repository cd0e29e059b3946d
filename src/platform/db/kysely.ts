import {
  type CompiledQuery,
  type DatabaseConnection,
  type Dialect,
  type Driver,
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type QueryResult,
} from "kysely";
import type { QueryRunner } from "./runner.ts";
import type { Tables } from "./schema.ts";

/** A transaction handed to services: a Kysely bound to one open transaction, usable only while it lasts. */
export type Tx = Kysely<Tables>;

class TransactionOver extends Error {
  override name = "TransactionOver";
}

class BoundConnection implements DatabaseConnection {
  #runner: QueryRunner | undefined;
  constructor(runner: QueryRunner) {
    this.#runner = runner;
  }
  end(): void {
    this.#runner = undefined;
  }
  async executeQuery<R>(compiled: CompiledQuery): Promise<QueryResult<R>> {
    // A handle kept past its transaction must never run on a connection that now serves someone else.
    if (!this.#runner) throw new TransactionOver("this transaction has ended; its handle cannot be reused");
    const { rows, affectedRows } = await this.#runner.query<R>(compiled.sql, compiled.parameters);
    return { rows, numAffectedRows: affectedRows === undefined ? undefined : BigInt(affectedRows) };
  }
  // biome-ignore lint/correctness/useYield: streaming is refused, not implemented
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new Error("streaming queries are not supported inside Charter transactions");
  }
}

const nestedTransaction = () =>
  Promise.reject(new Error("nested transactions are not allowed: the caller already holds one"));

function boundDriver(connection: BoundConnection): Driver {
  return {
    init: async () => {},
    acquireConnection: async () => connection,
    releaseConnection: async () => {},
    beginTransaction: nestedTransaction,
    commitTransaction: nestedTransaction,
    rollbackTransaction: nestedTransaction,
    destroy: async () => {},
  };
}

/** Binds a Kysely to one open transaction; `end()` makes every later use of it throw. */
export function bindTransaction(runner: QueryRunner): { tx: Tx; end: () => void } {
  const connection = new BoundConnection(runner);
  const dialect: Dialect = {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => boundDriver(connection),
    createIntrospector: (db) => new PostgresIntrospector(db),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  };
  return { tx: new Kysely<Tables>({ dialect }), end: () => connection.end() };
}
