import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../clock.ts";
import { uuidv7 } from "../ids.ts";
import { latestSlot } from "./cadence.ts";
import type { Jobs } from "./jobs.ts";
import { eventually, queueRows, testJobs } from "./testing.ts";

describe("cadences", () => {
  it("computes the latest slot at or before a time, in UTC", () => {
    const at = new Date("2026-03-10T10:07:30Z");
    expect(latestSlot({ kind: "every", minutes: 5 }, at).toISOString()).toBe("2026-03-10T10:05:00.000Z");
    expect(latestSlot({ kind: "every", minutes: 1 }, at).toISOString()).toBe("2026-03-10T10:07:00.000Z");
    expect(latestSlot({ kind: "hourly", minute: 15 }, at).toISOString()).toBe("2026-03-10T09:15:00.000Z");
    expect(latestSlot({ kind: "daily", at: "03:30" }, at).toISOString()).toBe("2026-03-10T03:30:00.000Z");
    expect(latestSlot({ kind: "daily", at: "23:00" }, at).toISOString()).toBe("2026-03-09T23:00:00.000Z");
    expect(latestSlot({ kind: "daily", at: "10:07" }, new Date("2026-03-10T10:07:00Z")).toISOString()).toBe(
      "2026-03-10T10:07:00.000Z",
    );
  });

  it("refuses cadences that are not ones", () => {
    const at = new Date();
    expect(() => latestSlot({ kind: "every", minutes: 7 }, at)).toThrow(/divides a day/);
    expect(() => latestSlot({ kind: "every", minutes: 0 }, at)).toThrow(/divides a day/);
    expect(() => latestSlot({ kind: "hourly", minute: 60 }, at)).toThrow(/not a minute/);
    expect(() => latestSlot({ kind: "daily", at: "24:00" }, at)).toThrow(/HH:MM/);
  });
});

describe.each(DATABASE_KINDS)("tick on %s", (kind) => {
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

  it("fires a schedule exactly once per slot, whatever the ticks", async () => {
    const clock = manualClock("2026-03-10T10:02:00Z");
    let runs = 0;
    jobs = testJobs(t.db, clock);
    jobs.define("probe.every5", async () => {
      runs += 1;
    });
    jobs.schedule("probe.every5", { kind: "every", minutes: 5 });
    await jobs.start();
    const started = jobs;
    const keys = async () => (await queueRows(t.db, "probe.every5")).length;

    expect(await started.tick()).toEqual({ slots: 1, timers: 0 });
    clock.set("2026-03-10T10:04:59Z");
    expect(await started.tick()).toEqual({ slots: 0, timers: 0 });
    expect(await keys()).toBe(1);
    clock.set("2026-03-10T10:05:00Z");
    expect(await started.tick()).toEqual({ slots: 1, timers: 0 });
    clock.set("2026-03-10T10:11:00Z");
    const concurrent = await Promise.all([started.tick(), started.tick(), started.tick(), started.tick()]);
    expect(concurrent.reduce((sum, r) => sum + r.slots, 0)).toBe(1);
    // After an hour down, only the latest missed slot fires, not each of the twelve.
    clock.set("2026-03-10T11:12:00Z");
    expect(await started.tick()).toEqual({ slots: 1, timers: 0 });
    expect(await started.tick()).toEqual({ slots: 0, timers: 0 });

    expect(await keys()).toBe(4);
    const slots = await t.db.withPlatform((tx) =>
      tx.selectFrom("schedule_runs").select("slot").where("name", "=", "probe.every5").orderBy("slot").execute(),
    );
    expect(slots.map((s) => s.slot.toISOString())).toEqual([
      "2026-03-10T10:00:00.000Z",
      "2026-03-10T10:05:00.000Z",
      "2026-03-10T10:10:00.000Z",
      "2026-03-10T11:10:00.000Z",
    ]);
    await eventually(async () => runs === 4);
    const [first] = await t.db.queueSql("SELECT singleton_key FROM pgboss.job WHERE name = $1 ORDER BY created_on", [
      "probe.every5",
    ]);
    expect(first).toEqual({ singleton_key: "probe.every5@2026-03-10T10:00:00.000Z" });
  });

  it("fires a timer when the clock passes its time, not before, exactly once", async () => {
    const clock = manualClock("2026-03-10T10:00:00Z");
    const seen: string[] = [];
    jobs = testJobs(t.db, clock);
    jobs.define("probe.timeout", async (job) => {
      seen.push(job.ids.approvalId as string);
    });
    await jobs.start();
    const started = jobs;
    const approvalId = uuidv7();
    const cancelled = uuidv7();
    const due = new Date("2026-03-10T10:30:00Z");
    const [, cancelledTimer] = await t.db.withPlatform(async (tx) => [
      await started.at(tx, due, "probe.timeout", { approvalId }),
      await started.at(tx, due, "probe.timeout", { approvalId: cancelled }),
    ]);
    expect(await t.db.withPlatform((tx) => started.cancelTimer(tx, cancelledTimer as string))).toBe(true);

    clock.set("2026-03-10T10:29:59.999Z");
    expect(await started.tick()).toEqual({ slots: 0, timers: 0 });
    expect(await queueRows(t.db, "probe.timeout")).toEqual([]);
    clock.set("2026-03-10T10:30:00Z");
    const [first, second] = await Promise.all([started.tick(), started.tick()]);
    expect((first?.timers ?? 0) + (second?.timers ?? 0)).toBe(1);
    clock.set("2026-03-10T12:00:00Z");
    expect(await started.tick()).toEqual({ slots: 0, timers: 0 });

    await eventually(async () => seen.length === 1);
    expect(seen).toEqual([approvalId]);
    expect((await queueRows(t.db, "probe.timeout")).map((r) => r.data)).toEqual([{ approvalId }]);
    expect(await t.db.withPlatform((tx) => tx.selectFrom("job_timers").selectAll().execute())).toEqual([]);
  });
});
