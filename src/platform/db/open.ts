import type { Config } from "../../config.ts";
import { type Database, openDatabase } from "./database.ts";
import { type Engine, pgliteEngine, postgresEngine } from "./engines.ts";

/** The engine the configuration names: PostgreSQL when DATABASE_URL is set, else PGlite in the data directory. */
export function engineFor(config: Pick<Config, "databaseUrl" | "runtimeDatabaseUrl" | "dataDir">): Promise<Engine> {
  if (config.databaseUrl) {
    return Promise.resolve(postgresEngine({ ownerUrl: config.databaseUrl, runtimeUrl: config.runtimeDatabaseUrl }));
  }
  return pgliteEngine(config.dataDir);
}

/** Opens, migrates and checks the database the configuration names. */
export async function openConfiguredDatabase(
  config: Pick<Config, "databaseUrl" | "runtimeDatabaseUrl" | "dataDir">,
  options: { migrate?: boolean } = {},
): Promise<Database> {
  return openDatabase(await engineFor(config), options);
}
