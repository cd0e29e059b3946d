import type { Clock } from "../clock.ts";
import type { Database } from "../db/index.ts";
import { createJobs, type JobLog, type Jobs, type JobsOptions } from "./jobs.ts";

/** A log that keeps its entries, for tests that check what a failure logs. */
export function memoryLog(): JobLog & { entries: { level: string; fields: object; message: string }[] } {
  const entries: { level: string; fields: object; message: string }[] = [];
  return {
    entries,
    warn: (fields, message) => entries.push({ level: "warn", fields, message }),
    error: (fields, message) => entries.push({ level: "error", fields, message }),
  };
}

/** Jobs tuned for tests: fast polling and supervision, and no ticking of its own (tests call tick()). */
export function testJobs(db: Database, clock: Clock, options: Partial<JobsOptions> = {}): Jobs {
  return createJobs({
    db,
    clock,
    log: memoryLog(),
    pollingIntervalSeconds: 0.5,
    superviseIntervalSeconds: 1,
    tickIntervalMs: 0,
    ...options,
  });
}

/** Polls `check` until it returns something other than undefined or false; fails after `timeoutMs`. */
export async function eventually<T>(check: () => Promise<T | undefined | false>, timeoutMs = 20_000): Promise<T> {
  const started = performance.now();
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (performance.now() - started > timeoutMs) throw new Error(`not so after ${timeoutMs} ms`);
    await new Promise((done) => setTimeout(done, 100));
  }
}

/** The rows pg-boss holds for a queue, read as the runtime role. */
export async function queueRows(
  db: Database,
  name: string,
): Promise<{ id: string; state: string; retry_count: number; data: unknown; output: unknown }[]> {
  return (await db.queueSql(
    "SELECT id, state, retry_count, data, output FROM pgboss.job WHERE name = $1 ORDER BY created_on, id",
    [name],
  )) as never;
}
