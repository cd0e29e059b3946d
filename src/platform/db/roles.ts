/** The two database roles Charter runs as (ARCHITECTURE.md, promise T1). */
export const OWNER_ROLE = "charter_owner";
export const APP_ROLE = "charter_app";

/** Runs one statement on the owner connection. */
export type OwnerQuery = <Row = Record<string, unknown>>(sql: string, params?: unknown[]) => Promise<Row[]>;

/**
 * Creates both roles if missing. Roles are cluster-wide, so several databases on one server may run this
 * at once: a concurrent creation surfaces as duplicate_object or unique_violation and is taken as done.
 */
function createRoleSql(role: string): string {
  return `DO $$ BEGIN
  CREATE ROLE ${role} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$`;
}

/**
 * Makes sure the roles exist and the owner owns the schema. A superuser (development, CI) sets this up
 * itself; any other login must already be charter_owner or a member of it, as the README's server set-up
 * creates, or migrations stop with a message saying so.
 */
export async function bootstrapRoles(query: OwnerQuery): Promise<void> {
  const [me] = await query<{ rolname: string; rolsuper: boolean }>(
    "SELECT rolname, rolsuper FROM pg_roles WHERE rolname = current_user",
  );
  if (me?.rolsuper) {
    await query(createRoleSql(OWNER_ROLE));
    await query(createRoleSql(APP_ROLE));
    await query(`ALTER SCHEMA public OWNER TO ${OWNER_ROLE}`);
    await query(`GRANT USAGE ON SCHEMA public TO ${APP_ROLE}`);
    // The job queue's tables live in a schema of their own (migration 0004), which the owner creates. The
    // README's server set-up makes charter_owner the database's owner, which holds this already.
    await query(
      `DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO ${OWNER_ROLE}', current_database()); END $$`,
    );
    return;
  }
  const [check] = await query<{ owner: boolean; app: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${OWNER_ROLE}')
              AND pg_has_role(current_user, '${OWNER_ROLE}', 'MEMBER') AS owner,
            EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${APP_ROLE}') AS app`,
  );
  if (!check?.owner || !check.app) {
    throw new Error(
      `DATABASE_URL logs in as "${me?.rolname}", which is neither a superuser nor a member of ${OWNER_ROLE}, ` +
        `or ${APP_ROLE} does not exist: create the roles as the README's server set-up shows`,
    );
  }
}
