import pg from "pg";

/**
 * One statement preceded by another in a single round trip on PostgreSQL: Parse/Bind/Execute of the
 * prefix, then of the statement, then one Sync. Without a BEGIN everything before a Sync runs in one
 * implicit transaction, so what the prefix sets with `set_config(…, true)` holds for the statement and ends
 * with it, committed or rolled back at the Sync. The prefix's own result is dropped.
 */

/** pg's protocol writer, as handed to a query: only the messages sent here for the prefix. */
interface Wire {
  parse(message: { text: string; types: [] }): void;
  bind(message: { values: readonly unknown[] }): void;
  execute(message: Record<string, never>): void;
}

/** The protocol hooks pg calls on a query; @types/pg leaves them out. */
interface QueryHooks {
  prepare(connection: Wire): void;
  handleDataRow(message: unknown): void;
  handleCommandComplete(message: unknown, connection: unknown): void;
}

type Callback = (error: Error | undefined, result: pg.QueryResult) => void;

// A subclass, not a custom Submittable: pg refuses other query objects on a pipelined client.
const BaseQuery = pg.Query as unknown as new (config: pg.QueryConfig, callback: Callback) => pg.Query & QueryHooks;

class PrefixedQuery extends BaseQuery {
  readonly #prefix: string;
  readonly #prefixValues: readonly unknown[];
  #prefixDone = false;

  constructor(prefix: string, prefixValues: readonly unknown[], text: string, values: unknown[], callback: Callback) {
    super({ text, values }, callback);
    this.#prefix = prefix;
    this.#prefixValues = prefixValues;
  }

  // Always the extended protocol, even without parameters: the simple one cannot share a Sync.
  requiresPreparation(): boolean {
    return true;
  }

  override prepare(connection: Wire): void {
    connection.parse({ text: this.#prefix, types: [] });
    connection.bind({ values: this.#prefixValues });
    connection.execute({});
    super.prepare(connection);
  }

  // The prefix is executed without Describe: its rows arrive without a RowDescription, then its
  // CommandComplete, all before anything of the statement.
  override handleDataRow(message: unknown): void {
    if (this.#prefixDone) super.handleDataRow(message);
  }

  override handleCommandComplete(message: unknown, connection: unknown): void {
    if (this.#prefixDone) super.handleCommandComplete(message, connection);
    else this.#prefixDone = true;
  }
}

/** Runs `prefix` and then `text` on `client` in one round trip and one implicit transaction; the rows of `text`. */
export function queryWithPrefix<Row>(
  client: pg.ClientBase,
  prefix: { text: string; values: readonly unknown[] },
  text: string,
  values: readonly unknown[],
): Promise<Row[]> {
  return new Promise((resolve, reject) => {
    client.query(
      new PrefixedQuery(prefix.text, prefix.values, text, [...values], (error, result) =>
        error ? reject(error) : resolve(result.rows as Row[]),
      ),
    );
  });
}
