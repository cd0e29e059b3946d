import { randomBytes } from "node:crypto";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { createTestAudit } from "../audit/testing.ts";
import { systemClock } from "../clock.ts";
import { createTestKeyRing } from "../crypto/testing.ts";
import { uuidv7 } from "../ids.ts";
import { createTenant, type Tenant } from "../tenancy/tenants.ts";
import { createTestTenant } from "../tenancy/testing.ts";
import { createDatabase, type Database, NestedTransactionError } from "./database.ts";
import type { Engine } from "./engines.ts";
import type { Tx } from "./kysely.ts";

const slug = () => `t-${uuidv7().slice(-12)}`;

interface Context {
  tenant: string;
  actor: string;
  request: string;
  role: string;
  txid: string;
}

/** What the open transaction was set up with, read back from the database. */
async function context(tx: Tx): Promise<Context> {
  const { rows } = await sql<Context>`
    SELECT current_setting('app.tenant_id', true) AS tenant, current_setting('app.actor_id', true) AS actor,
      current_setting('app.request_id', true) AS request, current_user AS role, txid_current()::text AS txid`.execute(
    tx,
  );
  const row = rows[0];
  if (!row) throw new Error("no row");
  return row;
}

const newKey = () => randomBytes(16);

function insertBucket(tx: Tx, key: Buffer) {
  const now = new Date();
  return tx
    .insertInto("rate_limit_buckets")
    .values({ key_hash: key, window_start: now, hits: 1, expires_at: now })
    .execute();
}

async function bucketExists(db: Database, key: Buffer): Promise<boolean> {
  const row = await db.withPlatform((tx) =>
    tx.selectFrom("rate_limit_buckets").select("hits").where("key_hash", "=", key).executeTakeFirst(),
  );
  return row !== undefined;
}

async function localeOf(db: Database, tenantId: string): Promise<string | undefined> {
  const row = await db.withTenant({ tenantId }, (tx) =>
    tx.selectFrom("tenant_settings").select("locale").where("tenant_id", "=", tenantId).executeTakeFirst(),
  );
  return row?.locale;
}

const setLocale = (tx: Tx, tenantId: string, locale: string) =>
  tx.updateTable("tenant_settings").set({ locale }).where("tenant_id", "=", tenantId).execute();

const reuse = (tx: Tx) => tx.selectFrom("tenants").select("id").execute();

describe.each(DATABASE_KINDS)("database on %s", (kind) => {
  let t: TestDatabase;
  let a: Tenant;
  let b: Tenant;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
    a = await createTestTenant(t.db, { slug: slug(), name: "A" });
    b = await createTestTenant(t.db, { slug: slug(), name: "B" });
  });
  afterAll(() => t?.close());

  describe("transaction context", () => {
    it("withTenant sets tenant, actor and request as charter_app; a following withPlatform sees none of them", async () => {
      const actorId = uuidv7();
      const inside = await t.db.withTenant({ tenantId: a.id, actorId, requestId: "req-ctx" }, async (tx) => ({
        ...(await context(tx)),
        settings: await tx.selectFrom("tenant_settings").select("tenant_id").execute(),
      }));
      expect(inside).toMatchObject({ tenant: a.id, actor: actorId, request: "req-ctx", role: "charter_app" });
      expect(inside.settings).toEqual([{ tenant_id: a.id }]);

      const after = await t.db.withPlatform(async (tx) => ({
        ...(await context(tx)),
        settings: await tx.selectFrom("tenant_settings").select("tenant_id").execute(),
      }));
      expect(after).toMatchObject({ tenant: "", actor: "", request: "", role: "charter_app" });
      expect(after.settings).toEqual([]);
    });

    it("withPlatform takes its actor and request from its context", async () => {
      const actorId = uuidv7();
      const inside = await t.db.withPlatform(context, { actorId, requestId: "req-platform" });
      expect(inside).toMatchObject({ tenant: "", actor: actorId, request: "req-platform", role: "charter_app" });
    });

    it("two transactions started side by side are not nested", async () => {
      const [seenA, seenB] = await Promise.all([
        t.db.withTenant({ tenantId: a.id }, context),
        t.db.withTenant({ tenantId: b.id }, context),
      ]);
      expect(seenA?.tenant).toBe(a.id);
      expect(seenB?.tenant).toBe(b.id);
      expect(seenA?.txid).not.toBe(seenB?.txid);
    });
  });

  describe("nesting", () => {
    it("withTenant inside withTenant throws NestedTransactionError, and the outer transaction goes on", async () => {
      const outer = await t.db.withTenant({ tenantId: a.id }, async (tx) => {
        await expect(t.db.withTenant({ tenantId: b.id }, context)).rejects.toBeInstanceOf(NestedTransactionError);
        await expect(t.db.withTenant({ tenantId: a.id }, context)).rejects.toBeInstanceOf(NestedTransactionError);
        return context(tx);
      });
      expect(outer.tenant).toBe(a.id);
    });

    it("withPlatform or withTenant inside withPlatform throws NestedTransactionError", async () => {
      await t.db.withPlatform(async () => {
        await expect(t.db.withPlatform(context)).rejects.toBeInstanceOf(NestedTransactionError);
        await expect(t.db.withTenant({ tenantId: a.id }, context)).rejects.toBeInstanceOf(NestedTransactionError);
      });
    });

    it("withSnapshot inside any transaction throws, and nothing opens inside a snapshot", async () => {
      const snapshot = () => t.db.withSnapshot(async (s) => s.tenantIds());
      await t.db.withTenant({ tenantId: a.id }, async () => {
        await expect(snapshot()).rejects.toBeInstanceOf(NestedTransactionError);
        await t.db.withPlatform(async () => {
          await expect(snapshot()).rejects.toBeInstanceOf(NestedTransactionError);
          await expect(t.db.withTenant({ tenantId: b.id }, context)).rejects.toBeInstanceOf(NestedTransactionError);
        });
      });
      await t.db.withPlatform(async () => {
        await expect(snapshot()).rejects.toBeInstanceOf(NestedTransactionError);
      });
      await t.db.withSnapshot(async (s) => {
        await expect(snapshot()).rejects.toBeInstanceOf(NestedTransactionError);
        await expect(t.db.withPlatform(context)).rejects.toBeInstanceOf(NestedTransactionError);
        await expect(t.db.withTenant({ tenantId: a.id }, context)).rejects.toBeInstanceOf(NestedTransactionError);
        await s.forEachTenant(async () => {
          await expect(t.db.withTenant({ tenantId: a.id }, context)).rejects.toBeInstanceOf(NestedTransactionError);
        });
      });
    });

    it("migrate inside a transaction throws NestedTransactionError instead of waiting on a second session", async () => {
      await t.db.withTenant({ tenantId: a.id }, async () => {
        await expect(t.db.migrate()).rejects.toBeInstanceOf(NestedTransactionError);
      });
    });

    it("withPlatform inside withTenant joins the same transaction: it rolls back with it", async () => {
      const key = newKey();
      const failure = new Error("the outer call fails");
      await expect(
        t.db.withTenant({ tenantId: a.id }, async (tx) => {
          const outer = await context(tx);
          const inner = await t.db.withPlatform(async (ptx) => {
            await insertBucket(ptx, key);
            return context(ptx);
          });
          expect(inner.txid).toBe(outer.txid);
          expect(inner.tenant).toBe(a.id);
          throw failure;
        }),
      ).rejects.toBe(failure);
      expect(await bucketExists(t.db, key)).toBe(false);
    });

    it("withPlatform inside withTenant commits with it", async () => {
      const key = newKey();
      await t.db.withTenant({ tenantId: a.id }, () => t.db.withPlatform((ptx) => insertBucket(ptx, key)));
      expect(await bucketExists(t.db, key)).toBe(true);
    });
  });

  describe("failure", () => {
    it("a failure inside withTenant rolls back every write", async () => {
      const key = newKey();
      const failure = new Error("boom");
      await expect(
        t.db.withTenant({ tenantId: a.id }, async (tx) => {
          await setLocale(tx, a.id, "de");
          await t.db.withPlatform((ptx) => insertBucket(ptx, key));
          throw failure;
        }),
      ).rejects.toBe(failure);
      expect(await localeOf(t.db, a.id)).toBe("en");
      expect(await bucketExists(t.db, key)).toBe(false);
    });

    it("recordOnFailure runs after the rollback in its own platform transaction, then the error is rethrown", async () => {
      const failedWrite = newKey();
      const recorded = newKey();
      const failure = new Error("denied");
      let failedTxid = "";
      let seenByRecord: (Context & { failedWriteVisible: boolean }) | undefined;
      await expect(
        t.db.withTenant({ tenantId: a.id, actorId: uuidv7(), requestId: "req-fail" }, async (tx) => {
          failedTxid = (await context(tx)).txid;
          await setLocale(tx, a.id, "de");
          await t.db.withPlatform((ptx) => insertBucket(ptx, failedWrite));
          t.db.recordOnFailure(async (rtx) => {
            const failedRow = await rtx
              .selectFrom("rate_limit_buckets")
              .select("hits")
              .where("key_hash", "=", failedWrite)
              .executeTakeFirst();
            seenByRecord = { ...(await context(rtx)), failedWriteVisible: failedRow !== undefined };
            await insertBucket(rtx, recorded);
          });
          throw failure;
        }),
      ).rejects.toBe(failure);
      expect(seenByRecord).toMatchObject({ tenant: "", role: "charter_app", failedWriteVisible: false });
      expect(seenByRecord?.txid).not.toBe(failedTxid);
      expect(await bucketExists(t.db, recorded)).toBe(true);
      expect(await bucketExists(t.db, failedWrite)).toBe(false);
      expect(await localeOf(t.db, a.id)).toBe("en");
    });

    it("a failure record that cannot be written is reported together with the original error", async () => {
      const failure = new Error("denied");
      const recordFailure = new Error("the record failed too");
      const rejection = t.db.withTenant({ tenantId: a.id }, async () => {
        t.db.recordOnFailure(async () => {
          throw recordFailure;
        });
        throw failure;
      });
      await expect(rejection).rejects.toBeInstanceOf(AggregateError);
      await expect(rejection).rejects.toMatchObject({ errors: [failure, recordFailure] });
    });

    it("a failure record does not run when the transaction commits", async () => {
      const key = newKey();
      let ran = false;
      await t.db.withTenant({ tenantId: a.id }, async () => {
        t.db.recordOnFailure(async (rtx) => {
          ran = true;
          await insertBucket(rtx, key);
        });
      });
      expect(ran).toBe(false);
      expect(await bucketExists(t.db, key)).toBe(false);
    });

    it("recordOnFailure outside a transaction throws", () => {
      expect(() => t.db.recordOnFailure(async () => {})).toThrow(/open transaction/);
    });

    it("afterCommit runs once the transaction committed, in order, never after a rollback", async () => {
      const key = newKey();
      const calls: string[] = [];
      const result = await t.db.withTenant({ tenantId: a.id }, async () => {
        await t.db.withPlatform(async (ptx) => {
          await insertBucket(ptx, key);
          // Joined to the tenant's transaction: runs when that one commits.
          t.db.afterCommit(() => calls.push("joined platform work"));
        });
        t.db.afterCommit(() => {
          calls.push("tenant work");
          throw new Error("a callback bug cannot fail a committed transaction");
        });
        t.db.afterCommit(() => calls.push("after the throwing one"));
        expect(calls).toEqual([]);
        return "done";
      });
      expect(result).toBe("done");
      expect(calls).toEqual(["joined platform work", "tenant work", "after the throwing one"]);
      expect(await bucketExists(t.db, key)).toBe(true);

      const failure = new Error("rolled back");
      await expect(
        t.db.withTenant({ tenantId: a.id }, async () => {
          t.db.afterCommit(() => calls.push("rolled back work"));
          throw failure;
        }),
      ).rejects.toBe(failure);
      expect(calls).not.toContain("rolled back work");
      expect(() => t.db.afterCommit(() => {})).toThrow(/open transaction/);
    });

    it("a statement error swallowed inside fn does not commit the rest of the work", async () => {
      const key = newKey();
      await expect(
        t.db.withTenant({ tenantId: a.id }, async (tx) => {
          await setLocale(tx, a.id, "de");
          await t.db.withPlatform((ptx) => insertBucket(ptx, key));
          await sql`SELECT 1 / 0`.execute(tx).catch(() => undefined);
          return "looks fine";
        }),
      ).rejects.toThrow(/rolled back/);
      expect(await localeOf(t.db, a.id)).toBe("en");
      expect(await bucketExists(t.db, key)).toBe(false);
    });
  });

  describe("transaction handles", () => {
    it("a Tx used after its transaction ended throws, whether it committed or failed", async () => {
      const kept: Tx[] = [];
      await t.db.withTenant({ tenantId: a.id }, async (tx) => {
        kept.push(tx);
        await t.db.withPlatform(async (ptx) => {
          kept.push(ptx);
        });
      });
      await t.db.withPlatform(async (tx) => {
        kept.push(tx);
      });
      await t.db.withSnapshot(async (s) => {
        kept.push(s.tx);
      });
      await expect(
        t.db.withTenant({ tenantId: a.id }, async (tx) => {
          kept.push(tx);
          throw new Error("failed");
        }),
      ).rejects.toThrow("failed");
      await expect(
        t.db.withTenant({ tenantId: a.id }, (tx) => {
          kept.push(tx);
          throw new Error("failed before returning a promise");
        }),
      ).rejects.toThrow("failed before returning a promise");
      expect(kept).toHaveLength(6);
      for (const tx of kept) await expect(reuse(tx)).rejects.toThrow(/transaction has ended/);
    });

    it("work left behind by a transaction that ended is no longer inside it", async () => {
      let release = () => {};
      let later: Promise<string> | undefined;
      let lateRecord: Promise<string> | undefined;
      await t.db.withTenant({ tenantId: a.id }, async () => {
        const gate = new Promise<void>((resolve) => {
          release = resolve;
        });
        later = gate.then(() => t.db.withPlatform(async (tx) => (await context(tx)).tenant));
        lateRecord = gate
          .then(() => {
            t.db.recordOnFailure(async () => {});
            return "registered";
          })
          .catch((error: Error) => error.message);
      });
      release();
      expect(await later).toBe("");
      expect(await lateRecord).toMatch(/open transaction/);
    });
  });

  describe("snapshot", () => {
    it("is read-only", async () => {
      const key = newKey();
      await expect(t.db.withSnapshot((s) => insertBucket(s.tx, key))).rejects.toThrow(/read-only transaction/);
      await expect(
        t.db.withSnapshot((s) => s.forEachTenant((id, tx) => setLocale(tx, id, "de").then(() => undefined))),
      ).rejects.toThrow(/read-only transaction/);
      expect(await bucketExists(t.db, key)).toBe(false);
      expect(await localeOf(t.db, a.id)).toBe("en");
    });

    it("visits every tenant in turn, each seeing only its own rows", async () => {
      const visits = new Map<string, { settings: string[]; tenant: string }>();
      const { ids, platformBefore, platformAfter } = await t.db.withSnapshot(async (s) => {
        const platformView = async () =>
          (await s.tx.selectFrom("tenant_settings").select("tenant_id").execute()).length;
        const platformBefore = await platformView();
        await s.forEachTenant(async (id, tx) => {
          const settings = await tx.selectFrom("tenant_settings").select("tenant_id").execute();
          const { rows } = await sql<{
            tenant: string;
          }>`SELECT current_setting('app.tenant_id', true) AS tenant`.execute(tx);
          visits.set(id, { settings: settings.map((r) => r.tenant_id), tenant: rows[0]?.tenant ?? "?" });
        });
        return { ids: await s.tenantIds(), platformBefore, platformAfter: await platformView() };
      });
      expect(ids).toEqual(expect.arrayContaining([a.id, b.id]));
      expect([...visits.keys()]).toEqual(ids);
      for (const id of ids) expect(visits.get(id)).toEqual({ settings: [id], tenant: id });
      expect(platformBefore).toBe(0);
      expect(platformAfter).toBe(0);
    });

    it("a visit that fails hands its own error back and leaves the platform view without a tenant", async () => {
      const failure = new Error("visit failed");
      const after = await t.db.withSnapshot(async (s) => {
        const caught = await s
          .forEachTenant(async () => {
            throw failure;
          })
          .catch((error: unknown) => error);
        const { rows } = await sql<{ tenant: string }>`SELECT current_setting('app.tenant_id', true) AS tenant`.execute(
          s.tx,
        );
        return {
          caught,
          tenant: rows[0]?.tenant,
          settings: await s.tx.selectFrom("tenant_settings").selectAll().execute(),
        };
      });
      expect(after).toEqual({ caught: failure, tenant: "", settings: [] });
    });

    if (kind === "postgres") {
      it("is stable: a tenant committed by another connection after it started is not seen", async () => {
        const other = await t.open({ migrate: false });
        try {
          let late: Tenant | undefined;
          const { before, after, visited } = await t.db.withSnapshot(async (s) => {
            const before = await s.tenantIds();
            late = await createTenant(
              other,
              systemClock,
              { slug: slug(), name: "Late" },
              createTestKeyRing(other),
              createTestAudit(other),
            );
            const visited: string[] = [];
            await s.forEachTenant(async (id) => {
              visited.push(id);
            });
            return { before, after: await s.tenantIds(), visited };
          });
          expect(late).toBeDefined();
          expect(after).toEqual(before);
          expect(visited).toEqual(before);
          expect(before).not.toContain(late?.id);
          const fresh = await t.db.withSnapshot((s) => s.tenantIds());
          expect(fresh).toContain(late?.id);
        } finally {
          await other.close();
        }
      });
    }
  });
});

/** An engine that counts what reaches it and runs no SQL: for checks that must happen before any SQL. */
function countingEngine(): { engine: Engine; transactions: () => number } {
  let transactions = 0;
  const engine: Engine = {
    kind: "pglite",
    connections: 1,
    async transaction(_setup, fn) {
      transactions += 1;
      return fn({
        query: async () => {
          throw new Error("no SQL expected");
        },
        copyRows: async () => {
          throw new Error("no SQL expected");
        },
      });
    },
    async readOnce() {
      transactions += 1;
      return [];
    },
    withOwnerSession: async () => {
      throw new Error("no owner session expected");
    },
    queueSql: async () => {
      throw new Error("no SQL expected");
    },
    afterMigrate: async () => {},
    close: async () => {},
  };
  return { engine, transactions: () => transactions };
}

describe("identifiers", () => {
  it("rejects a tenantId, actorId or requestId that is not acceptable before any SQL runs", async () => {
    const { engine, transactions } = countingEngine();
    const db = createDatabase(engine, { migrations: [] });
    let called = false;
    const fn = async () => {
      called = true;
    };
    for (const tenantId of ["", "tenant-a", "x'; DROP TABLE tenants; --", `${uuidv7()} `, `${uuidv7()}0`]) {
      await expect(db.withTenant({ tenantId }, fn)).rejects.toThrow(/tenantId must be a UUID/);
    }
    await expect(db.withTenant({ tenantId: uuidv7(), actorId: "someone" }, fn)).rejects.toThrow(
      /actorId must be a UUID/,
    );
    await expect(db.withPlatform(fn, { actorId: "' OR 1=1 --" })).rejects.toThrow(/actorId must be a UUID/);
    await expect(db.withTenant({ tenantId: uuidv7(), requestId: "r".repeat(201) }, fn)).rejects.toThrow(
      /requestId is longer/,
    );
    const select = (q: Tx) => q.selectFrom("tenant_settings").select("locale");
    await expect(db.selectAsTenant({ tenantId: "tenant-a" }, select)).rejects.toThrow(/tenantId must be a UUID/);
    await expect(db.selectAsTenant({ tenantId: uuidv7(), actorId: "someone" }, select)).rejects.toThrow(
      /actorId must be a UUID/,
    );
    expect(called).toBe(false);
    expect(transactions()).toBe(0);

    await db.withTenant({ tenantId: uuidv7(), actorId: uuidv7(), requestId: "r".repeat(200) }, fn);
    expect(called).toBe(true);
    expect(transactions()).toBe(1);
  });

  it("selectAsTenant refuses anything but a plain SELECT before any SQL runs", async () => {
    const { engine, transactions } = countingEngine();
    const db = createDatabase(engine, { migrations: [] });
    const ctx = { tenantId: uuidv7() };
    const refused = [
      // Not a SELECT builder: the type says so too.
      (q: Tx) => q.deleteFrom("tenant_settings") as never,
      (q: Tx) => q.updateTable("tenant_settings").set({ locale: "de" }) as never,
      (q: Tx) =>
        q
          .with("gone", (w) => w.deleteFrom("tenant_settings").returning("tenant_id"))
          .selectFrom("gone")
          .select("tenant_id"),
      (q: Tx) => q.selectFrom("tenant_settings").select("locale").forUpdate(),
      (q: Tx) => q.selectFrom("tenant_settings").select("locale").forShare(),
      (q: Tx) => q.selectFrom("tenant_settings").select("locale").forNoKeyUpdate().skipLocked(),
      (q: Tx) =>
        q
          .selectFrom("tenant_settings")
          .select("locale")
          .where("tenant_id", "in", q.selectFrom("tenants").select("id").forKeyShare()),
      (q: Tx) => q.selectFrom("tenant_settings").select("locale").modifyEnd(sql`for update`),
    ];
    for (const build of refused) await expect(db.selectAsTenant(ctx, build)).rejects.toThrow(TypeError);
    expect(transactions()).toBe(0);

    // Running a query on the builder fails instead of running outside the tenant's transaction.
    let ran: Promise<unknown> | undefined;
    await db.selectAsTenant(ctx, (q) => {
      ran = q.selectFrom("tenants").selectAll().execute();
      return q.selectFrom("tenants").select("id");
    });
    await expect(ran).rejects.toThrow(/only builds a query/);
    expect(transactions()).toBe(1);

    await db.selectAsTenant(ctx, (q) =>
      q
        .with("s", (w) => w.selectFrom("tenant_settings").select("locale"))
        .selectFrom("s")
        .select("locale"),
    );
    expect(transactions()).toBe(2);
  });
});
