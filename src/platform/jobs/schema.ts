import type { ColumnType } from "kysely";

declare module "../db/schema.ts" {
  interface Tables {
    schedule_runs: ScheduleRunsTable;
    job_timers: JobTimersTable;
    job_progress: JobProgressTable;
  }
}

/** Migration 0004: one enqueued slot of a schedule. */
export interface ScheduleRunsTable {
  name: string;
  slot: ColumnType<Date, Date | string, never>;
  enqueued_at: ColumnType<Date, Date | string, never>;
}

/** Migration 0004: a one-off timer, deleted when its job is enqueued. */
export interface JobTimersTable {
  id: string;
  name: string;
  /** The job's ids (jsonb): a JSON text on insert, an object when read. */
  ids: ColumnType<Record<string, string>, string, never>;
  due_at: ColumnType<Date, Date | string, never>;
  created_at: ColumnType<Date, Date | string, never>;
}

/** Migration 0004: how far one cursor of a long job has got. */
export interface JobProgressTable {
  job_id: string;
  key: string;
  name: string;
  cursor: string | null;
  done: boolean;
  updated_at: ColumnType<Date, Date | string, Date | string>;
}
