import pg from "pg";

/**
 * One statement preceded by another in a single round trip on PostgreSQL: Parse/Bind/Execute of the
 * prefix, then of the statement, then one Sync. Without a BEGIN everything before a Sync runs in one
 * implicit transaction, so what the prefix sets with `set_config(…, true)` holds for the statement and ends
 * with it, committed or rolled back at the Sync. The prefix's own result is dropped.
 */

/**
 * pg's connection, as handed to a query: the messages sent here for the prefix, and pg's own record of the
 * named statements this connection has parsed or sent to be parsed.
 */
interface Wire {
  parse(message: { text: string; name: string; types: [] }): void;
  bind(message: { statement: string; values: readonly unknown[] }): void;
  execute(message: Record<string, never>): void;
  parsedStatements: Record<string, string>;
  submittedNamedStatements: Record<string, string>;
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
  readonly #prefix: NamedStatement & { values: readonly unknown[] };
  #prefixDone = false;

  constructor(
    prefix: NamedStatement & { values: readonly unknown[] },
    text: string,
    values: unknown[],
    callback: Callback,
  ) {
    super({ text, values }, callback);
    this.#prefix = prefix;
  }

  // Always the extended protocol, even without parameters: the simple one cannot share a Sync.
  requiresPreparation(): boolean {
    return true;
  }

  override prepare(connection: Wire): void {
    const { name, text, values } = this.#prefix;
    // Parsed once per connection, as pg does for its own named queries (and with the same records, so that a
    // plain pg query of the same name and text finds it parsed too). A named statement outlives the implicit
    // transaction even when the statement after it fails, and this text always parses.
    if (connection.parsedStatements[name] === undefined && connection.submittedNamedStatements[name] === undefined) {
      connection.parse({ text, name, types: [] });
      connection.submittedNamedStatements[name] = text;
    }
    connection.bind({ statement: name, values });
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

/** A statement prepared once per connection under its name (the server then skips parsing and planning it). */
export interface NamedStatement {
  name: string;
  text: string;
}

/**
 * Runs `prefix` and then `text` on `client` in one round trip and one implicit transaction; the rows of `text`.
 * The prefix is a named statement, parsed on the connection's first use of it.
 */
export function queryWithPrefix<Row>(
  client: pg.ClientBase,
  prefix: NamedStatement & { values: readonly unknown[] },
  text: string,
  values: readonly unknown[],
): Promise<Row[]> {
  return new Promise((resolve, reject) => {
    client.query(
      new PrefixedQuery(prefix, text, [...values], (error, result) =>
        error ? reject(error) : resolve(result.rows as Row[]),
      ),
    );
  });
}
