/**
 * Tables without `tenant_id`: each one is here on purpose, with the reason it is not tenant-owned.
 * The tenancy catalog test fails on any table that has no `tenant_id` and is not on this list.
 */
export const PLATFORM_TABLES: Readonly<Record<string, string>> = {
  tenants: "the registry of tenants itself; each row is a tenant, keyed by its id",
  rate_limit_buckets: "rate-limit counters keyed by a keyed hash of address, account or token, across tenants",
  schema_migrations: "the migration history of the one shared schema",
  platform_keys: "the platform key's versions, wrapped by the master key; the platform is in no tenant",
  person_keys: "keys of people the platform itself holds data about (users are global, in no one tenant)",
  erased_people: "people erased from the platform's own data, global like the people themselves",
  journal_replays: "how far this database applied the destruction journal, which spans all tenants",
  platform_files: "files of the platform itself or of a person it serves (a user's avatar or export), in no tenant",
  platform_mail_messages: "mail from the platform to people it serves (sign-in codes, invitations), in no tenant",
  schedule_runs: "the job queue's record of which schedule slots were enqueued; schedules are the platform's",
  job_timers: "one-off timers of the job queue, across tenants, so one tick finds all due ones; ids only",
  job_progress: "cursors of long jobs, keyed by pg-boss's job id; a job visits tenants through withTenant",
  audit_checkpoints: "signed checkpoints over the audit chain heads of every tenant and the platform at once",
  audit_chain_heads:
    "one head per audit chain, tenant and platform chains alike, so one query reads them all for checkpoints",
  platform_audit_events:
    "audit events with no tenant (sign-ins, denials, operator actions), on chains sharded by actor",
  users: "users of Charter: one global identity each, with memberships in any number of tenants",
  account_tokens: "single-use tokens emailed to a user (verification, reset, email change), global like the user",
  sessions: "sessions are global: one sign-in serves every tenant the user is a member of, checked per request",
  session_tokens: "the tokens of those global sessions, by hash",
  operators: "the platform's operators, who belong to no tenant",
  operator_setup_tokens: "the one-time link that creates the first operator, before any tenant exists",
  factor_resets: "delayed resets of a user's lost sign-in factors, asked for on the command line; global like the user",
  user_tenants: "which tenants a user is in, by user: read without crossing tenants' row-level security",
  "pgboss.version": "pg-boss: its schema version and maintenance claims",
  "pgboss.queue": "pg-boss: one row per job kind and its dead-letter queue, shared by all tenants",
  "pgboss.job": "pg-boss: the jobs of every tenant (a job names its tenant among its ids, never holds data)",
  "pgboss.job_common": "pg-boss: the one partition of pgboss.job that every Charter queue uses",
  "pgboss.job_dependency": "pg-boss: job flows (unused by Charter; part of pg-boss's schema)",
  "pgboss.schedule": "pg-boss: cron schedules (unused: schedules run on Charter's clock, schedule_runs)",
  "pgboss.subscription": "pg-boss: pub/sub subscriptions (unused by Charter)",
  "pgboss.bam": "pg-boss: its background schema migrations (unused: Charter's migrations install pg-boss)",
  "pgboss.warning": "pg-boss: persisted warnings (unused: Charter keeps persistWarnings off)",
  "pgboss.queue_stats": "pg-boss: queue statistics history (unused: Charter keeps persistQueueStats off)",
  "pgboss.instance": "pg-boss: its instance registry (unused: Charter keeps registerInstance off)",
};
