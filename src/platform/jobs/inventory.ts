import {
  type ColumnEntry,
  defineTable,
  type ModuleInventory,
  notPersonal,
  type Retention,
  type TableInventory,
} from "../inventory/types.ts";
import "./schema.ts";

/**
 * The longest a job's row lives: pg-boss deletes a job 14 days after it was created if it never ran, and 7 days
 * after it finished (jobs.ts sets both on every queue); 30 days bounds a job that waited, ran and was kept.
 */
const JOB_LIFETIME: Retention = { anchor: "row-created", duration: "P30D", action: "delete" };
/** Timers are deleted in the transaction that enqueues their job, at the first tick after they are due. */
const UNTIL_DUE: Retention = { anchor: "event-time", duration: "PT1H", action: "delete" };
/** The tick deletes schedule slots after 7 days (only the latest slot of each schedule guards anything). */
const SLOT_KEPT: Retention = { anchor: "event-time", duration: "P7D", action: "delete" };
/** The tick deletes a cursor once its job can no longer run, at the latest when pg-boss deletes the job. */
const WHILE_JOB_LIVES: Retention = { anchor: "row-created", duration: "P30D", action: "delete" };

const plain = (purpose: string, retention: Retention | null = null) => notPersonal("system", purpose, retention);

/**
 * Ids only (payloads are checked): a tenant's, a member's or a CRM subject's id is pseudonymous personal data,
 * so it goes when its job goes.
 */
function ids(purpose: string, retention: Retention): ColumnEntry {
  return {
    category: "system",
    personal: true,
    purpose,
    legalBasis: "legitimate-interest",
    keyScope: null,
    erasure: { action: "delete" },
    retention,
  };
}

const scheduleRuns = defineTable("schedule_runs", {
  owner: "platform",
  row: "one slot of a schedule that the tick enqueued",
  subject: { kind: "none" },
  columns: {
    name: plain("which schedule (a job kind) the slot belongs to", SLOT_KEPT),
    slot: plain("the slot's time on the injected clock: a slot fires once", SLOT_KEPT),
    enqueued_at: plain("when the tick enqueued the slot's job", SLOT_KEPT),
  },
});

const jobTimers = defineTable("job_timers", {
  owner: "platform",
  row: "a one-off timer: a job to enqueue once the clock passes its time (approval timeouts, notice periods)",
  subject: { kind: "none" },
  columns: {
    id: plain("identifies the timer, so it can be cancelled", UNTIL_DUE),
    name: plain("the job kind to enqueue", UNTIL_DUE),
    ids: ids("the ids the job will work on (its tenant among them): ids only, never data", UNTIL_DUE),
    due_at: plain("when the job is due, on the injected clock", UNTIL_DUE),
    created_at: plain("when the timer was set", UNTIL_DUE),
  },
});

const jobProgress = defineTable("job_progress", {
  owner: "platform",
  row: "how far one cursor of a long job has got, committed with each batch",
  subject: { kind: "none" },
  columns: {
    job_id: plain("the pg-boss job the cursor belongs to (a retry keeps the id)", WHILE_JOB_LIVES),
    key: plain("names the cursor within its job", WHILE_JOB_LIVES),
    name: plain("the job's kind", WHILE_JOB_LIVES),
    cursor: ids("where the next batch starts: a position or an id, never data", WHILE_JOB_LIVES),
    done: plain("whether the loop finished, so a retry does not start it again", WHILE_JOB_LIVES),
    updated_at: plain("when the last batch committed", WHILE_JOB_LIVES),
  },
});

/** A table of pg-boss's schema (migration 0004): no Kysely type, since Charter only reaches it through pg-boss. */
function pgboss(
  table: string,
  row: string,
  columns: string,
  purpose: string,
  special: Record<string, ColumnEntry> = {},
  retention: Retention | null = null,
): TableInventory {
  return {
    table: `pgboss.${table}`,
    owner: "platform",
    row,
    subject: { kind: "none" },
    columns: Object.fromEntries(
      columns
        .trim()
        .split(/\s+/)
        .map((column) => [column, special[column] ?? plain(`${purpose} (${column})`, retention)]),
    ),
  };
}

const JOB_COLUMNS = `id name priority data state retry_limit retry_count retry_delay retry_backoff retry_delay_max
  expire_seconds deletion_seconds singleton_key singleton_on group_id group_tier start_after created_on started_on
  completed_on keep_until output dead_letter policy heartbeat_on heartbeat_seconds blocked blocking
  pending_dependencies source_name source_id source_created_on source_retry_count source_output source_root_id
  trace_context upsert_by_key`;

const jobData = {
  data: ids("the ids the job works on (its tenant among them): ids only, checked when it is sent", JOB_LIFETIME),
  output: plain(
    "the outcome of the last attempt: only the kind of error a handler threw, never its message",
    JOB_LIFETIME,
  ),
  source_output: plain("a dead-lettered job's last failure: only the kind of error, never its message", JOB_LIFETIME),
  singleton_key: plain("a label: a schedule's name and slot, or a timer's id", JOB_LIFETIME),
};

const JOB_PURPOSE = "pg-boss's bookkeeping of a job: its state, timing, retries and dead letter";

/** Jobs: migration 0004 (pg-boss's schema and Charter's schedule, timer and progress tables). */
export const jobsInventory: ModuleInventory = {
  module: "jobs",
  tables: [
    scheduleRuns,
    jobTimers,
    jobProgress,
    pgboss(
      "version",
      "pg-boss's schema version and maintenance claims",
      "version cron_on bam_on flow_on reindex_on monitor_backoff_on",
      "pg-boss's schema version and when its maintenance passes last ran",
    ),
    pgboss(
      "queue",
      "a job kind or its dead-letter queue, with its retry settings and counters",
      "name policy retry_limit retry_delay retry_backoff retry_delay_max expire_seconds retention_seconds deletion_seconds dead_letter partition table_name deferred_count blocked_count queued_count ready_count warning_queued active_count failed_count total_count retained_count retained_on created_delta completed_delta failed_delta delta_on delta_seconds wait_bins run_bins ready_oldest_seconds ready_history heartbeat_seconds notify singletons_active monitor_claim_on monitor_on maintain_on created_on updated_on",
      "pg-boss's settings and counters of a queue",
    ),
    pgboss("job", "a job (the partitioned parent of job_common)", JOB_COLUMNS, JOB_PURPOSE, jobData, JOB_LIFETIME),
    pgboss("job_common", "a job of any Charter queue", JOB_COLUMNS, JOB_PURPOSE, jobData, JOB_LIFETIME),
    pgboss(
      "job_dependency",
      "a dependency between jobs of a flow (unused)",
      "child_name child_id parent_name parent_id",
      "pg-boss's job flows, unused by Charter",
    ),
    pgboss(
      "schedule",
      "a cron schedule (unused: schedules run on Charter's clock)",
      "name key kind cron timezone data options created_on updated_on last_job_id",
      "pg-boss's cron schedules, unused by Charter",
    ),
    pgboss(
      "subscription",
      "a pub/sub subscription (unused)",
      "event name created_on updated_on",
      "pg-boss's pub/sub, unused by Charter",
    ),
    pgboss(
      "bam",
      "a background schema migration step (unused)",
      "id name version status queue table_name command error created_on started_on completed_on",
      "pg-boss's background migrations, unused by Charter",
    ),
    pgboss(
      "warning",
      "a persisted warning (unused: persistWarnings is off)",
      "id type message data created_on",
      "pg-boss's persisted warnings, unused by Charter",
    ),
    pgboss(
      "queue_stats",
      "a snapshot of queue statistics (unused: persistQueueStats is off)",
      "id name deferred_count queued_count ready_count active_count failed_count total_count created_delta completed_delta failed_delta delta_seconds delta_on wait_bins run_bins ready_oldest_seconds captured_on",
      "pg-boss's queue statistics history, unused by Charter",
    ),
    pgboss(
      "instance",
      "a registered pg-boss instance (unused: registerInstance is off)",
      "id name host pid version node_version application_name heartbeat_seconds supervise schedule migrate persist_queue_stats persist_warnings pool_max pool_total pool_idle pool_waiting workers metrics config crash_restarts crash_restarts_since started_on heartbeat_on stopped_on",
      "pg-boss's instance registry, unused by Charter",
    ),
  ],
};
