import { sql } from "kysely";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { createTestAudit } from "../audit/testing.ts";
import { manualClock, systemClock } from "../clock.ts";
import { uuidv7 } from "../ids.ts";
import { setFeature } from "../tenancy/features.ts";
import { createTestTenant } from "../tenancy/testing.ts";
import { deadLetterQueue, type JobContext, type Jobs, SYSTEM_ACTOR_ID } from "./jobs.ts";
import { JobPayloadError } from "./payload.ts";
import { eventually, memoryLog, queueRows, testJobs } from "./testing.ts";

const slug = () => `t-${uuidv7().slice(-12)}`;

describe.each(DATABASE_KINDS)("jobs on %s", (kind) => {
  let t: TestDatabase;
  let jobs: Jobs | undefined;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
  });
  afterEach(async () => {
    await jobs?.stop();
    jobs = undefined;
  });
  afterAll(() => t?.close());

  it("enqueues through the caller's transaction: a rollback leaves no job, a commit runs it once", async () => {
    const seen: string[] = [];
    jobs = testJobs(t.db, systemClock);
    jobs.define("probe.enqueue", async (job) => {
      seen.push(job.ids.recordId as string);
    });
    await jobs.start();
    const started = jobs;
    const rolledBack = uuidv7();
    await expect(
      t.db.withPlatform(async (tx) => {
        await started.send(tx, "probe.enqueue", { recordId: rolledBack });
        throw new Error("the business transaction fails");
      }),
    ).rejects.toThrow("the business transaction fails");
    const committed = uuidv7();
    const id = await t.db.withPlatform((tx) => started.send(tx, "probe.enqueue", { recordId: committed }));
    await eventually(async () => (await queueRows(t.db, "probe.enqueue")).every((r) => r.state === "completed"));
    const rows = await queueRows(t.db, "probe.enqueue");
    expect(rows.map((r) => [r.id, r.state, r.data])).toEqual([[id, "completed", { recordId: committed }]]);
    expect(seen).toEqual([committed]);
  });

  it("refuses a payload that is not ids only, before anything is written", async () => {
    jobs = testJobs(t.db, systemClock);
    jobs.define("probe.payload", async () => {});
    await jobs.start();
    const started = jobs;
    const bad: unknown[] = [
      { email: "ada@example.com" },
      { subjectId: "Ada Lovelace" },
      { subjectId: 42 },
      { subjectId: { nested: uuidv7() } },
      [uuidv7()],
      "00000000-0000-7000-8000-000000000001",
      new Map([["subjectId", uuidv7()]]),
    ];
    for (const ids of bad) {
      await expect(
        t.db.withPlatform((tx) => started.send(tx, "probe.payload", ids as Record<string, string>)),
      ).rejects.toThrow(JobPayloadError);
      await expect(
        t.db.withPlatform((tx) =>
          started.at(tx, new Date("2030-01-01T00:00:00Z"), "probe.payload", ids as Record<string, string>),
        ),
      ).rejects.toThrow(JobPayloadError);
    }
    await expect(t.db.withPlatform((tx) => started.send(tx, "probe.unknown", {}))).rejects.toThrow(/unknown job kind/);
    expect(await queueRows(t.db, "probe.payload")).toEqual([]);
    const timers = await t.db.withPlatform((tx) => tx.selectFrom("job_timers").selectAll().execute());
    expect(timers).toEqual([]);
  });

  it("retries a failed job with backoff, then succeeds", async () => {
    const attempts: { attempt: number; at: number }[] = [];
    jobs = testJobs(t.db, systemClock);
    jobs.define(
      "probe.retry",
      async (job) => {
        attempts.push({ attempt: job.attempt, at: performance.now() });
        if (job.attempt === 0) throw new Error("a passing failure");
      },
      { retryLimit: 3, retryDelaySeconds: 1 },
    );
    await jobs.start();
    const started = jobs;
    await t.db.withPlatform((tx) => started.send(tx, "probe.retry", { recordId: uuidv7() }));
    await eventually(async () => (await queueRows(t.db, "probe.retry"))[0]?.state === "completed");
    expect(attempts.map((a) => a.attempt)).toEqual([0, 1]);
    // Backoff from a one-second delay waits between one and two seconds before the first retry.
    const [first, second] = attempts;
    expect((second?.at ?? 0) - (first?.at ?? 0)).toBeGreaterThanOrEqual(900);
    const [row] = await t.db.queueSql(
      "SELECT retry_backoff, retry_delay, retry_limit, retry_count FROM pgboss.job WHERE name = $1",
      ["probe.retry"],
    );
    expect(row).toEqual({ retry_backoff: true, retry_delay: 1, retry_limit: 3, retry_count: 1 });
  });

  it("moves a job that exhausted its retries to its dead-letter queue, with ids only and the failure logged", async () => {
    const log = memoryLog();
    const recordId = uuidv7();
    jobs = testJobs(t.db, systemClock, { log });
    jobs.define(
      "probe.dead",
      async () => {
        throw new Error("cannot reach ada@example.com for Ada Lovelace");
      },
      { retryLimit: 1, retryDelaySeconds: 1 },
    );
    await jobs.start();
    const started = jobs;
    await t.db.withPlatform((tx) => started.send(tx, "probe.dead", { recordId }));
    const [dead] = await eventually(async () => {
      const rows = await queueRows(t.db, deadLetterQueue("probe.dead"));
      return rows.length > 0 && rows;
    });
    expect(dead?.data).toEqual({ recordId });
    expect((await queueRows(t.db, "probe.dead")).map((r) => [r.state, r.retry_count])).toEqual([["failed", 1]]);
    // pg-boss keeps the error it was given: only its kind, never the message that quoted a person.
    const everything = JSON.stringify(await t.db.queueSql("SELECT * FROM pgboss.job", []));
    // The quoted address and name, not "ada" alone: that can be a run of any hex id.
    expect(everything).not.toMatch(/ada@example\.com|lovelace/i);
    expect(everything).toContain("the handler threw Error");
    expect(log.entries.map((e) => [e.level, e.message])).toEqual([
      ["warn", "job failed: it will be retried"],
      ["error", "job failed for the last time: moved to its dead-letter queue"],
    ]);
    // Not under pino's `err`, whose serializer would flatten the already reduced error to "[object Object]".
    expect(log.entries[0]?.fields).toMatchObject({ error: { type: "Error", frames: expect.stringContaining("at ") } });
    expect(JSON.stringify(log.entries)).not.toMatch(new RegExp(`${recordId}|ada@example\\.com|lovelace`, "i"));
  });

  it("runs tenant work as the system actor, seeing only its tenant's rows", async () => {
    const a = await createTestTenant(t.db, { slug: slug(), name: "A" });
    const b = await createTestTenant(t.db, { slug: slug(), name: "B" });
    for (const tenant of [a, b]) {
      await t.db.withTenant({ tenantId: tenant.id }, (tx) =>
        setFeature(
          tx,
          systemClock,
          { tenantId: tenant.id, feature: "probe", enabled: true, changedBy: null },
          createTestAudit(t.db),
        ),
      );
    }
    let seen: { tenants: string[]; actor: string | undefined; user: string | undefined } | undefined;
    jobs = testJobs(t.db, systemClock);
    jobs.define("probe.tenant", async (job: JobContext) => {
      seen = await job.withTenant(job.ids.tenantId as string, async (tx) => {
        const rows = await tx.selectFrom("tenant_features").select("tenant_id").execute();
        const { rows: who } = await sql<{ actor: string; user: string }>`
          SELECT current_setting('app.actor_id') AS actor, current_user AS user`.execute(tx);
        return { tenants: rows.map((r) => r.tenant_id), actor: who[0]?.actor, user: who[0]?.user };
      });
    });
    await jobs.start();
    const started = jobs;
    await t.db.withTenant({ tenantId: a.id }, (tx) => started.send(tx, "probe.tenant", { tenantId: a.id }));
    await eventually(async () => seen);
    expect(seen).toEqual({ tenants: [a.id], actor: SYSTEM_ACTOR_ID, user: "charter_app" });
  });

  it("commits no batch once the attempt lost its claim", async () => {
    let firstDone = false;
    let open: () => void = () => {};
    const gate = new Promise<void>((done) => {
      open = done;
    });
    let outcome: unknown;
    jobs = testJobs(t.db, systemClock);
    jobs.define(
      "probe.fence",
      async (job) => {
        await job.batches("first", async () => null);
        firstDone = true;
        await gate;
        outcome = await job.batches("second", async () => null).catch((error: unknown) => error);
      },
      { retryLimit: 0 },
    );
    await jobs.start();
    const started = jobs;
    const id = await t.db.withPlatform((tx) => started.send(tx, "probe.fence", {}));
    await eventually(async () => firstDone);
    // What an operator's cancel, or the supervisor failing an expired attempt, does to the row.
    await t.db.queueSql("UPDATE pgboss.job SET state = 'cancelled' WHERE name = $1 AND id = $2", ["probe.fence", id]);
    open();
    await eventually(async () => outcome);
    expect((outcome as Error).name).toBe("JobClaimLost");
    const cursors = await t.db.withPlatform((tx) =>
      tx.selectFrom("job_progress").select(["key", "done"]).where("job_id", "=", id).execute(),
    );
    expect(cursors).toEqual([{ key: "first", done: true }]);
  });

  it("refuses to enqueue before start, and pg-boss's statements run as the runtime role", async () => {
    jobs = testJobs(t.db, manualClock());
    jobs.define("probe.idle", async () => {});
    const idle = jobs;
    await expect(t.db.withPlatform((tx) => idle.send(tx, "probe.idle", {}))).rejects.toThrow(/not started/);
    const [row] = await t.db.queueSql("SELECT current_user AS u, current_setting('app.tenant_id', true) AS t", []);
    expect(row).toEqual({ u: "charter_app", t: "" });
    const script = await t.db.queueSql("BEGIN; SELECT current_user AS u; COMMIT;", []);
    expect(script).toEqual([{ u: "charter_app" }]);
    await expect(t.db.withPlatform(() => t.db.queueSql("SELECT 1", []))).rejects.toThrow(/inside an open/);
  });
});
