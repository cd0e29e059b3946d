import {
  type Compilable,
  type CompiledQuery,
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  SelectQueryNode,
} from "kysely";
import type { Tx } from "./kysely.ts";
import type { Tables } from "./schema.ts";

/** A SELECT built with Kysely; an insert, update or delete builder does not type-check. */
export type SelectQuery<R> = Compilable<R> & { toOperationNode(): SelectQueryNode };

const buildOnly = () => Promise.reject(new Error("this builder only builds a query: return it instead of running it"));

// Builds queries and never runs them, so a query run inside the build callback fails instead of escaping
// the tenant context.
const builder: Tx = new Kysely<Tables>({
  dialect: {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => ({
      init: async () => {},
      acquireConnection: buildOnly,
      releaseConnection: async () => {},
      beginTransaction: buildOnly,
      commitTransaction: buildOnly,
      rollbackTransaction: buildOnly,
      destroy: async () => {},
    }),
    createIntrospector: (db) => new PostgresIntrospector(db),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  },
});

const STARTS_AS_SELECT = /^\s*(?:select|with)\b/i;
const ROW_LOCK = /\bfor\s+(?:update|no\s+key\s+update|share|key\s+share)\b/i;

/**
 * Compiles the SELECT that `build` returns, refusing (TypeError) anything that is not a plain read:
 * another kind of statement, a data-modifying WITH, or a row lock, which would be released as soon as the
 * statement ends and so only promises something it cannot keep.
 */
export function compileSelect<R>(build: (q: Tx) => SelectQuery<R>): CompiledQuery<R> {
  const compiled = build(builder).compile();
  const node = compiled.query;
  if (!SelectQueryNode.is(node) || !STARTS_AS_SELECT.test(compiled.sql)) {
    throw new TypeError(`a single SELECT is required, got ${node.kind}: ${compiled.sql.slice(0, 80)}`);
  }
  if (node.with?.expressions.some((cte) => !SelectQueryNode.is(cte.expression))) {
    throw new TypeError("a WITH that modifies data is not a read: use withTenant");
  }
  if (ROW_LOCK.test(compiled.sql))
    throw new TypeError("row locks need a transaction that outlives the statement: use withTenant");
  return compiled;
}
