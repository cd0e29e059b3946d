import { CompiledQuery, sql } from "kysely";
import { type Job, PgBoss } from "pg-boss";
import type { Clock } from "../clock.ts";
import type { Database, Tx } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import { serializeError } from "../log.ts";
import { type Cadence, checkCadence, latestSlot } from "./cadence.ts";
import { checkJobIds, type JobIds } from "./payload.ts";
import "./schema.ts";

/**
 * The actor of work the system does on its own (jobs, schedules, timers): a fixed UUID that no membership,
 * API key or operator has (theirs are UUIDv7 made after 1970). Audit events of job work name it.
 */
export const SYSTEM_ACTOR_ID = "00000000-0000-7000-8000-000000000001";

/** The schema migration 0004 installs pg-boss into. */
const SCHEMA = "pgboss";

/** Job kinds and schedule names: also pg-boss queue names, and the keys of schedule_runs and job_timers. */
const NAME = /^[a-z][a-z0-9_.-]{0,56}$/;
const CURSOR_KEY = /^[a-z][a-z0-9_.-]{0,62}$/;
const MAX_CURSOR = 500;
/** Labels such as `name@2026-01-01T00:00:00.000Z` or `timer:<uuid>`: no room for free text. */
const SINGLETON_KEY = /^[A-Za-z0-9_.:@-]{1,120}$/;
/** Timers the tick enqueues per transaction. */
const TIMER_BATCH = 100;
/** How long schedule_runs keeps a slot after it fired: only the latest slot of each schedule guards anything. */
const SCHEDULE_RUNS_KEPT_MS = 7 * 24 * 60 * 60 * 1000;

/** What a log needs to have: pino's Logger has it. Entries carry names and job ids, never payloads. */
export interface JobLog {
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

export interface JobKindOptions {
  /** Retries after the first attempt before the job goes to its dead-letter queue. Default 5. */
  retryLimit?: number;
  /** The wait before the first retry, doubled (with jitter) for each later one. Default 30. */
  retryDelaySeconds?: number;
  /** The longest wait between retries. Default one hour. */
  retryDelayMaxSeconds?: number;
  /**
   * How long one attempt may stay active before pg-boss's supervisor fails it for a retry. Default 15 minutes;
   * a long job sets what its whole run may take. Its batches fence on the attempt, so an attempt failed while
   * still running cannot commit another batch.
   */
  expireInSeconds?: number;
}

/** One batch of a long job: works from `cursor` (null at the start) and returns the next one, or null when done. */
export type BatchStep = (tx: Tx, cursor: string | null) => Promise<string | null>;

/** What a handler gets: its job's ids and the ways to act on them as the system actor. */
export interface JobContext {
  /** pg-boss's id of the job; a retry keeps it. */
  readonly id: string;
  readonly name: string;
  readonly ids: JobIds;
  /** 0 for the first attempt, then one more for each retry. */
  readonly attempt: number;
  /** Aborted when pg-boss finds this attempt's claim gone (its heartbeat stopped being seen). */
  readonly signal: AbortSignal;
  /** A transaction in the tenant's context, as the system actor: row-level security holds as for requests. */
  withTenant<T>(tenantId: string, fn: (tx: Tx) => Promise<T>): Promise<T>;
  withPlatform<T>(fn: (tx: Tx) => Promise<T>): Promise<T>;
  /**
   * Runs `step` batch after batch, each in a transaction of its own (the tenant's when `tenantId` is given) that
   * also commits the cursor it returned, until it returns null. A retry of the job, after a crash too, starts
   * from the last committed cursor, so each batch's work is committed exactly once. `key` names the cursor
   * within the job, for a job that runs several loops.
   */
  batches(key: string, step: BatchStep, options?: { tenantId?: string }): Promise<void>;
}

export type JobHandler = (job: JobContext) => Promise<void>;

export interface SendOptions {
  /** A label pg-boss keeps with the job (the tick uses schedule name and slot); must not hold personal data. */
  singletonKey?: string;
}

export interface Jobs {
  /** Registers a job kind and its handler, before start(). */
  define(name: string, handler: JobHandler, options?: JobKindOptions): void;
  /** Enqueues the job kind `name` with no ids in each slot of `cadence`, on the injected clock; before start(). */
  schedule(name: string, cadence: Cadence): void;
  /**
   * Enqueues a job inside the caller's transaction, through it: the job exists if and only if the transaction
   * commits. Resolves to pg-boss's job id.
   */
  send(tx: Tx, name: string, ids: JobIds, options?: SendOptions): Promise<string>;
  /** Enqueues the job once the injected clock passes `when` (at the first tick after it); resolves to the timer's id. */
  at(tx: Tx, when: Date, name: string, ids: JobIds): Promise<string>;
  /** Cancels a timer that has not fired; true if it was still pending. */
  cancelTimer(tx: Tx, timerId: string): Promise<boolean>;
  /**
   * Reads the clock, enqueues each due schedule slot and each due timer once, and sweeps what the queue no
   * longer needs. start() runs it once a minute; tests call it at chosen clock times.
   */
  tick(): Promise<{ slots: number; timers: number }>;
  start(): Promise<void>;
  /** Stops the workers (in-flight attempts are failed for a retry after a grace period) and the tick. */
  stop(): Promise<void>;
}

export interface JobsOptions {
  db: Database;
  clock: Clock;
  log: JobLog;
  /** How often each worker looks for jobs. Default 2. */
  pollingIntervalSeconds?: number;
  /** How often pg-boss's supervisor fails expired attempts and attempts whose heartbeat stopped. Default 60. */
  superviseIntervalSeconds?: number;
  /**
   * PostgreSQL only: how often a running attempt proves its worker alive; a worker killed outright is detected
   * after this long without one. At least 10 (pg-boss's minimum). Default 30.
   */
  heartbeatSeconds?: number;
  /** How often start() runs tick(); 0 leaves ticking to the caller. Default one minute. */
  tickIntervalMs?: number;
}

interface Kind {
  handler: JobHandler;
  queue: {
    retryLimit: number;
    retryDelay: number;
    retryBackoff: true;
    retryDelayMax: number;
    expireInSeconds: number;
    retentionSeconds: number;
    deleteAfterSeconds: number;
    heartbeatSeconds?: number;
    deadLetter: string;
  };
}

export class JobsNotStarted extends Error {
  override name = "JobsNotStarted";
}

/** A batch found its attempt no longer claimed (expired, failed by the supervisor, or cancelled). */
export class JobClaimLost extends Error {
  override name = "JobClaimLost";
}

/** What pg-boss records of a failed attempt: the error's kind only, since a message may quote personal data. */
class JobFailed extends Error {
  override name = "JobFailed";
  constructor(kind: string) {
    super(`the handler threw ${kind}`);
    this.stack = `${this.name}: ${this.message}`;
  }
}

/**
 * A handler's error for the log: its kind and where it was thrown, without its message, which may quote the
 * personal data the job worked on (a name is not something scrubbing can recognise).
 */
function withoutMessage(error: unknown): { type: string; frames?: string } {
  if (!(error instanceof Error)) return { type: typeof error };
  const frames = error.stack?.split("\n").filter((line) => /^\s+at /.test(line));
  return { type: error.name, ...(frames?.length ? { frames: frames.join("\n") } : {}) };
}

const checkName = (what: string, name: string) => {
  if (!NAME.test(name)) throw new TypeError(`${what} "${name}" must match ${NAME}`);
  return name;
};

export const deadLetterQueue = (name: string) => `${name}.dead`;

/** Runs pg-boss's statements in the caller's transaction (Kysely), so what they write commits with it. */
function inTransaction(tx: Tx) {
  return {
    async executeSql(text: string, values: unknown[] = []) {
      const result = await tx.executeQuery(CompiledQuery.raw(text, values));
      return { rows: [...result.rows] };
    },
  };
}

export function createJobs(options: JobsOptions): Jobs {
  const { db, clock, log } = options;
  const kinds = new Map<string, Kind>();
  const schedules = new Map<string, Cadence>();
  let boss: PgBoss | undefined;
  let ticker: ReturnType<typeof setInterval> | undefined;

  function started(): PgBoss {
    if (!boss) throw new JobsNotStarted("the job queue is not started: call jobs.start() first");
    return boss;
  }

  function kindOf(name: string): Kind {
    const kind = kinds.get(name);
    if (!kind) throw new TypeError(`unknown job kind "${name}": define it first`);
    return kind;
  }

  const system = (job: Job<JobIds>) => ({ actorId: SYSTEM_ACTOR_ID, requestId: `job:${job.id}` });

  /** Locks the job's row and checks that it is still this attempt's: a lost claim must not commit a batch. */
  async function fence(tx: Tx, job: Job<JobIds>): Promise<void> {
    const { rows } = await sql<{ id: string }>`
      SELECT id FROM pgboss.job
       WHERE name = ${job.name} AND id = ${job.id} AND state = 'active' AND retry_count = ${job.retryCount}
         FOR UPDATE`.execute(tx);
    if (rows.length === 0) throw new JobClaimLost(`job ${job.id} (${job.name}) is no longer claimed by this attempt`);
  }

  function context(job: Job<JobIds>): JobContext {
    const withTenant = <T>(tenantId: string, fn: (tx: Tx) => Promise<T>) =>
      db.withTenant({ tenantId, ...system(job) }, fn);
    const withPlatform = <T>(fn: (tx: Tx) => Promise<T>) => db.withPlatform(fn, system(job));
    return {
      id: job.id,
      name: job.name,
      ids: job.data,
      attempt: job.retryCount,
      signal: job.signal,
      withTenant,
      withPlatform,
      async batches(key, step, batchOptions = {}) {
        if (!CURSOR_KEY.test(key)) throw new TypeError(`cursor key "${key}" must match ${CURSOR_KEY}`);
        const { tenantId } = batchOptions;
        const run = <T>(fn: (tx: Tx) => Promise<T>) => (tenantId ? withTenant(tenantId, fn) : withPlatform(fn));
        for (let done = false; !done; ) {
          done = await run(async (tx) => {
            await fence(tx, job);
            const saved = await tx
              .selectFrom("job_progress")
              .select(["cursor", "done"])
              .where("job_id", "=", job.id)
              .where("key", "=", key)
              .executeTakeFirst();
            if (saved?.done) return true;
            const next = await step(tx, saved?.cursor ?? null);
            if (next !== null && (typeof next !== "string" || next.length > MAX_CURSOR)) {
              throw new TypeError(`a batch cursor must be a string of at most ${MAX_CURSOR} characters, or null`);
            }
            const row = { cursor: next, done: next === null, updated_at: clock.now() };
            await tx
              .insertInto("job_progress")
              .values({ job_id: job.id, key, name: job.name, ...row })
              .onConflict((c) => c.columns(["job_id", "key"]).doUpdateSet(row))
              .execute();
            return next === null;
          });
        }
      },
    };
  }

  async function work(name: string, kind: Kind, [job]: Job<JobIds>[]): Promise<void> {
    if (!job) return;
    try {
      await kind.handler(context(job));
    } catch (error) {
      const exhausted = job.retryCount >= kind.queue.retryLimit;
      const fields = { job: name, jobId: job.id, attempt: job.retryCount, error: withoutMessage(error) };
      if (exhausted) log.error(fields, "job failed for the last time: moved to its dead-letter queue");
      else log.warn(fields, "job failed: it will be retried");
      throw new JobFailed(error instanceof Error ? error.name : typeof error);
    }
  }

  async function send(tx: Tx, name: string, ids: JobIds, sendOptions: SendOptions = {}): Promise<string> {
    const kind = kindOf(name);
    const data = checkJobIds(ids);
    if (sendOptions.singletonKey !== undefined && !SINGLETON_KEY.test(sendOptions.singletonKey)) {
      throw new TypeError(`a singleton key must match ${SINGLETON_KEY}`);
    }
    const id = await started().send(name, data, { ...kind.queue, ...sendOptions, db: inTransaction(tx) });
    if (!id) throw new Error(`pg-boss did not enqueue job ${name}`);
    return id;
  }

  /** On PGlite one process holds the database: whatever is active when it starts was left by a dead one. */
  async function failOverAbandoned(running: PgBoss): Promise<void> {
    const rows = await db.queueSql(
      `SELECT name, id FROM ${SCHEMA}.job WHERE state = 'active' AND name = ANY($1::text[]) ORDER BY name, id`,
      [[...kinds.keys()]],
    );
    const byName = Map.groupBy(rows as { name: string; id: string }[], (r) => r.name);
    for (const [name, abandoned] of byName) {
      log.warn({ job: name, count: abandoned.length }, "jobs left running by a stopped process: failed for a retry");
      await running.fail(
        name,
        abandoned.map((r) => r.id),
        { message: "the process running it stopped" },
      );
    }
  }

  async function tick(): Promise<{ slots: number; timers: number }> {
    started();
    const now = clock.now();
    let slots = 0;
    for (const [name, cadence] of schedules) {
      const slot = latestSlot(cadence, now);
      // Only the latest due slot: a schedule's job works on the state as of its run, so slots missed while
      // the service was down would each redo what one run does now.
      const fired = await db.withPlatform(
        async (tx) => {
          const claimed = await tx
            .insertInto("schedule_runs")
            .values({ name, slot, enqueued_at: now })
            .onConflict((c) => c.doNothing())
            .returning("name")
            .executeTakeFirst();
          if (claimed) await send(tx, name, {}, { singletonKey: `${name}@${slot.toISOString()}` });
          return claimed !== undefined;
        },
        { actorId: SYSTEM_ACTOR_ID },
      );
      if (fired) slots += 1;
    }
    let timers = 0;
    for (let batch = TIMER_BATCH; batch === TIMER_BATCH; ) {
      batch = await db.withPlatform(
        async (tx) => {
          const { rows } = await sql<{ id: string; name: string; ids: JobIds }>`
            DELETE FROM job_timers WHERE id IN (
              SELECT id FROM job_timers
               WHERE due_at <= ${now} AND name = ANY(${[...kinds.keys()]}::text[])
               ORDER BY due_at, id LIMIT ${TIMER_BATCH} FOR UPDATE SKIP LOCKED)
            RETURNING id, name, ids`.execute(tx);
          for (const timer of rows) await send(tx, timer.name, timer.ids, { singletonKey: `timer:${timer.id}` });
          return rows.length;
        },
        { actorId: SYSTEM_ACTOR_ID },
      );
      timers += batch;
    }
    await db.withPlatform(
      async (tx) => {
        await tx
          .deleteFrom("schedule_runs")
          .where("enqueued_at", "<", new Date(now.getTime() - SCHEDULE_RUNS_KEPT_MS))
          .execute();
        // A cursor is needed while its job may still run: created, waiting for a retry, or active.
        await sql`
          DELETE FROM job_progress p WHERE NOT EXISTS (
            SELECT 1 FROM pgboss.job j
             WHERE j.name = p.name AND j.id = p.job_id AND j.state IN ('created', 'retry', 'active'))`.execute(tx);
      },
      { actorId: SYSTEM_ACTOR_ID },
    );
    return { slots, timers };
  }

  return {
    define(name, handler, kindOptions = {}) {
      checkName("job kind", name);
      if (boss) throw new Error(`job kind "${name}" defined after start()`);
      if (kinds.has(name)) throw new Error(`job kind "${name}" is defined twice`);
      kinds.set(name, {
        handler,
        queue: {
          retryLimit: kindOptions.retryLimit ?? 5,
          retryDelay: kindOptions.retryDelaySeconds ?? 30,
          retryBackoff: true,
          retryDelayMax: kindOptions.retryDelayMaxSeconds ?? 3600,
          expireInSeconds: kindOptions.expireInSeconds ?? 900,
          // The job lifetime the inventory declares (jobs/inventory.ts): 14 days waiting, 7 kept once finished.
          retentionSeconds: 14 * 24 * 3600,
          deleteAfterSeconds: 7 * 24 * 3600,
          // On PGlite a crash is found at start-up, and a heartbeat would wait behind every open transaction
          // of the one session: a long batch could make a live attempt look dead.
          ...(db.kind === "postgres" ? { heartbeatSeconds: options.heartbeatSeconds ?? 30 } : {}),
          deadLetter: deadLetterQueue(name),
        },
      });
    },
    schedule(name, cadence) {
      kindOf(name);
      checkCadence(cadence);
      if (boss) throw new Error(`schedule "${name}" added after start()`);
      if (schedules.has(name)) throw new Error(`schedule "${name}" is added twice`);
      schedules.set(name, cadence);
    },
    send,
    async at(tx, when, name, ids) {
      kindOf(name);
      if (!(when instanceof Date) || Number.isNaN(when.getTime())) throw new TypeError("a timer needs a valid date");
      const data = checkJobIds(ids);
      const id = uuidv7(clock.now().getTime());
      await tx
        .insertInto("job_timers")
        .values({ id, name, ids: JSON.stringify(data), due_at: when, created_at: clock.now() })
        .execute();
      return id;
    },
    async cancelTimer(tx, timerId) {
      const deleted = await tx.deleteFrom("job_timers").where("id", "=", timerId).executeTakeFirst();
      return deleted.numDeletedRows > 0n;
    },
    tick,
    async start() {
      if (boss) return;
      const running = new PgBoss({
        db: { executeSql: async (text, values) => ({ rows: await db.queueSql(text, values ?? []) }) },
        backend: db.kind,
        schema: SCHEMA,
        // The schema is migration 0004's: pg-boss only checks its version.
        migrate: false,
        createSchema: false,
        // Schedules run on the injected clock (tick), not on pg-boss's cron and the database's time.
        schedule: false,
        supervise: true,
        // The monitor pass is the one that fails expired and silent attempts: it runs at this pace too.
        superviseIntervalSeconds: options.superviseIntervalSeconds ?? 60,
        monitorIntervalSeconds: options.superviseIntervalSeconds ?? 60,
        persistWarnings: false,
        persistQueueStats: false,
        registerInstance: false,
        monitorVacuum: false,
        // Rebuilding indexes needs their owner, which the runtime role is not.
        reindex: false,
        useListenNotify: false,
        openTelemetry: { enabled: false },
      });
      running.on("error", (error: unknown) => log.error({ err: serializeError(error) }, "job queue error"));
      running.on("warning", (warning: { message?: string }) =>
        log.warn({ warning: warning.message }, "job queue warning"),
      );
      await running.start();
      try {
        for (const [name, kind] of kinds) {
          await running.createQueue(kind.queue.deadLetter, {
            retentionSeconds: kind.queue.retentionSeconds,
            deleteAfterSeconds: kind.queue.deleteAfterSeconds,
          });
          await running.createQueue(name, kind.queue);
        }
        if (db.kind === "pglite") await failOverAbandoned(running);
        for (const [name, kind] of kinds) {
          await running.work<JobIds>(
            name,
            { batchSize: 1, pollingIntervalSeconds: options.pollingIntervalSeconds ?? 2 },
            (jobs) => work(name, kind, jobs),
          );
        }
      } catch (error) {
        await running.stop({ graceful: false });
        throw error;
      }
      boss = running;
      const every = options.tickIntervalMs ?? 60_000;
      if (every > 0) {
        ticker = setInterval(() => {
          tick().catch((error: unknown) => log.error({ err: serializeError(error) }, "job tick failed"));
        }, every);
        ticker.unref();
      }
    },
    async stop() {
      clearInterval(ticker);
      ticker = undefined;
      const running = boss;
      boss = undefined;
      await running?.stop({ graceful: true, timeout: 10_000 });
    },
  };
}
