import { sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { uuidv7 } from "../ids.ts";
import type { Tenant } from "../tenancy/tenants.ts";
import { createTestTenant } from "../tenancy/testing.ts";
import { type Database, NestedTransactionError } from "./database.ts";
import { SETUP, SETUP_SQL } from "./engines.ts";
import type { Tx } from "./kysely.ts";
import { queryWithPrefix } from "./one-shot.ts";

const slug = () => `t-${uuidv7().slice(-12)}`;

/** Gives `tenant` `count` feature rows named f0, f1, … */
async function addFeatures(db: Database, tenant: Tenant, count: number): Promise<void> {
  await db.withTenant({ tenantId: tenant.id }, (tx) =>
    tx
      .insertInto("tenant_features")
      .values(
        Array.from({ length: count }, (_, i) => ({
          tenant_id: tenant.id,
          id: uuidv7(),
          feature: `f${i}`,
          enabled: true,
          changed_at: new Date(),
          changed_by: null,
        })),
      )
      .execute(),
  );
}

// No tenant filter: only row-level security keeps other tenants' rows out.
const allFeatures = (q: Tx) => q.selectFrom("tenant_features").select(["tenant_id", "feature"]).orderBy("feature");

const context = (q: Tx) =>
  q.selectNoFrom([
    sql<string>`current_user`.as("role"),
    sql<string>`current_setting('app.tenant_id', true)`.as("tenant"),
    sql<string>`current_setting('app.actor_id', true)`.as("actor"),
    sql<string>`current_setting('app.request_id', true)`.as("request"),
  ]);

describe.each(DATABASE_KINDS)("selectAsTenant on %s", (kind) => {
  let t: TestDatabase;
  let a: Tenant;
  let b: Tenant;
  let c: Tenant;
  const counts = new Map<string, number>();
  beforeAll(async () => {
    t = await openTestDatabase(kind);
    a = await createTestTenant(t.db, { slug: slug(), name: "A" });
    b = await createTestTenant(t.db, { slug: slug(), name: "B" });
    c = await createTestTenant(t.db, { slug: slug(), name: "C" });
    for (const [tenant, count] of [
      [a, 3],
      [b, 5],
      [c, 0],
    ] as const) {
      if (count > 0) await addFeatures(t.db, tenant, count);
      counts.set(tenant.id, count);
    }
  });
  afterAll(() => t?.close());

  it("returns only the tenant's rows, the same as withTenant", async () => {
    const rows = await t.db.selectAsTenant({ tenantId: a.id }, allFeatures);
    expect(rows).toEqual(["f0", "f1", "f2"].map((feature) => ({ tenant_id: a.id, feature })));
    expect(rows).toEqual(await t.db.withTenant({ tenantId: a.id }, (tx) => allFeatures(tx).execute()));
    expect(await t.db.selectAsTenant({ tenantId: c.id }, allFeatures)).toEqual([]);
    // Another tenant's row asked for by its key: absent.
    const ofB = await t.db.selectAsTenant({ tenantId: b.id }, (q) => q.selectFrom("tenant_features").select("id"));
    const byId = (tenantId: string) =>
      t.db.selectAsTenant({ tenantId }, (q) =>
        q
          .selectFrom("tenant_features")
          .select("feature")
          .where("id", "=", ofB[0]?.id ?? ""),
      );
    expect(await byId(a.id)).toEqual([]);
    expect(await byId(b.id)).toHaveLength(1);
  });

  it("runs as charter_app with the tenant, actor and request set", async () => {
    const actorId = uuidv7();
    const rows = await t.db.selectAsTenant({ tenantId: a.id, actorId, requestId: "req-one-shot" }, context);
    expect(rows).toEqual([{ role: "charter_app", tenant: a.id, actor: actorId, request: "req-one-shot" }]);
  });

  it("accepts a WITH … SELECT", async () => {
    const rows = await t.db.selectAsTenant({ tenantId: b.id }, (q) =>
      q
        .with("f", (w) => w.selectFrom("tenant_features").select("feature"))
        .selectFrom("f")
        .select((e) => e.fn.countAll<number>().as("n")),
    );
    expect(rows).toEqual([{ n: 5 }]);
  });

  it("leaves nothing behind: later transactions and the session see no tenant", async () => {
    await t.db.selectAsTenant({ tenantId: a.id, requestId: "leak?" }, allFeatures);
    const platform = await t.db.withPlatform((tx) => context(tx).executeTakeFirstOrThrow());
    expect(platform).toMatchObject({ tenant: "", request: "" });
    expect(await t.db.withTenant({ tenantId: b.id }, (tx) => allFeatures(tx).execute())).toHaveLength(5);
    if (kind === "pglite") {
      // One session for everything: what the statement set must be gone from it.
      expect(await t.superuser("SELECT current_setting('app.tenant_id', true) AS tenant")).toEqual([{ tenant: "" }]);
    }
  });

  it("rejects with the statement's error and leaves the connection usable", async () => {
    const ctx = { tenantId: a.id };
    await expect(t.db.selectAsTenant(ctx, (q) => q.selectNoFrom(sql<number>`1 / 0`.as("x")))).rejects.toThrow(
      /division by zero/,
    );
    await expect(t.db.selectAsTenant(ctx, (q) => q.selectFrom("no_such_table" as never).selectAll())).rejects.toThrow(
      /no_such_table/,
    );
    // A row the driver cannot convert fails after the database answered.
    await expect(
      t.db.selectAsTenant(ctx, (q) => q.selectNoFrom(sql<number>`9007199254740993::bigint`.as("n"))),
    ).rejects.toThrow(RangeError);
    expect(await t.db.selectAsTenant(ctx, allFeatures)).toHaveLength(3);
  });

  it("is refused inside an open transaction", async () => {
    const inner = () => t.db.selectAsTenant({ tenantId: a.id }, allFeatures);
    await expect(t.db.withTenant({ tenantId: a.id }, inner)).rejects.toThrow(NestedTransactionError);
    await expect(t.db.withPlatform(inner)).rejects.toThrow(NestedTransactionError);
    await expect(t.db.withSnapshot(inner)).rejects.toThrow(NestedTransactionError);
  });

  it("keeps 50 concurrent reads of mixed tenants apart on a pool of 2", async () => {
    const small = await t.open({ migrate: false });
    try {
      const tenants = Array.from({ length: 50 }, (_, i) => [a, b, c][i % 3] as Tenant);
      const results = await Promise.all(
        tenants.map((tenant, i) =>
          i % 7 === 0
            ? small
                .selectAsTenant({ tenantId: tenant.id }, (q) => q.selectNoFrom(sql<number>`1 / 0`.as("x")))
                .then(
                  () => "no error",
                  () => "error",
                )
            : small.selectAsTenant({ tenantId: tenant.id, requestId: `r${i}` }, (q) =>
                allFeatures(q).select(sql<string>`current_setting('app.request_id', true)`.as("request")),
              ),
        ),
      );
      for (const [i, rows] of results.entries()) {
        const tenant = tenants[i] as Tenant;
        if (i % 7 === 0) {
          expect(rows).toBe("error");
          continue;
        }
        expect(rows).toHaveLength(counts.get(tenant.id) ?? -1);
        for (const row of rows as { tenant_id: string; request: string }[]) {
          expect(row).toMatchObject({ tenant_id: tenant.id, request: `r${i}` });
        }
      }
    } finally {
      await small.close();
    }
  });
});

// PostgreSQL only: PGlite has no pipelined client. Generated only when PostgreSQL is configured, never skipped.
describe.each(DATABASE_KINDS.filter((kind) => kind === "postgres"))(
  "queryWithPrefix on a pipelined %s client",
  (kind) => {
    let t: TestDatabase;
    let client: pg.Client;
    let a: Tenant;
    let b: Tenant;
    beforeAll(async () => {
      t = await openTestDatabase(kind);
      a = await createTestTenant(t.db, { slug: slug(), name: "A" });
      b = await createTestTenant(t.db, { slug: slug(), name: "B" });
      client = new pg.Client({ connectionString: t.url, pipeline: true } as pg.ClientConfig);
      await client.connect();
    });
    afterAll(async () => {
      await client?.end();
      await t?.close();
    });

    const settings = "SELECT tenant_id::text AS tenant, current_user AS role FROM tenant_settings";
    const asTenant = (tenantId: string) => ({ ...SETUP, values: [tenantId, "", ""] });
    // Outside a transaction, as the login superuser: no role, no tenant, and row-level security bypassed.
    const session = "SELECT current_user AS role, current_setting('app.tenant_id', true) AS tenant";

    it("drops the prefix's result and ends its settings with the statement", async () => {
      expect(await queryWithPrefix(client, asTenant(a.id), settings, [])).toEqual([
        { tenant: a.id, role: "charter_app" },
      ]);
      expect((await client.query(session)).rows).toEqual([{ role: "postgres", tenant: "" }]);
    });

    it("survives failures in the prefix and in the statement", async () => {
      await expect(queryWithPrefix(client, asTenant("not a uuid"), settings, [])).rejects.toThrow(/uuid/);
      await expect(queryWithPrefix(client, asTenant(a.id), "SELECT 1 / $1::int", [0])).rejects.toThrow(/division/);
      await expect(queryWithPrefix(client, asTenant(a.id), "SELEC 1", [])).rejects.toThrow(/syntax/);
      expect((await client.query(session)).rows).toEqual([{ role: "postgres", tenant: "" }]);
    });

    it("prepares the prefix once per connection, under the name pg's own queries of it use", async () => {
      const fresh = new pg.Client({ connectionString: t.url, pipeline: true } as pg.ClientConfig);
      await fresh.connect();
      try {
        // The first use sends the prefix's Parse with a statement that fails to parse: the prefix stays prepared.
        await expect(queryWithPrefix(fresh, asTenant(a.id), "SELEC 1", [])).rejects.toThrow(/syntax/);
        for (const tenant of [a, b, a]) {
          expect(await queryWithPrefix(fresh, asTenant(tenant.id), settings, [])).toEqual([
            { tenant: tenant.id, role: "charter_app" },
          ]);
        }
        const prepared = "SELECT name, statement FROM pg_prepared_statements";
        expect((await fresh.query(prepared)).rows).toEqual([{ name: SETUP.name, statement: SETUP_SQL }]);
        // pg's own query of that name binds the statement already there instead of preparing it again.
        await fresh.query("BEGIN");
        await fresh.query({ ...asTenant(b.id) });
        expect((await fresh.query(settings)).rows).toEqual([{ tenant: b.id, role: "charter_app" }]);
        await fresh.query("ROLLBACK");
      } finally {
        await fresh.end();
      }
    });

    it("keeps results apart when many are in flight with plain queries between them", async () => {
      const sent = Array.from({ length: 60 }, (_, i) => {
        if (i % 4 === 3) return client.query(session).then((r) => ({ kind: "session", rows: r.rows }));
        if (i % 10 === 5) return queryWithPrefix(client, asTenant(a.id), "SELECT 1 / 0", []).catch(() => "error");
        const tenant = i % 2 === 0 ? a : b;
        return queryWithPrefix(client, asTenant(tenant.id), settings, []).then((rows) => ({ tenant, rows }));
      });
      const results = await Promise.all(sent);
      for (const [i, result] of results.entries()) {
        if (i % 4 === 3) expect(result).toEqual({ kind: "session", rows: [{ role: "postgres", tenant: "" }] });
        else if (i % 10 === 5) expect(result).toBe("error");
        else {
          const { tenant, rows } = result as { tenant: Tenant; rows: unknown[] };
          expect(rows).toEqual([{ tenant: tenant.id, role: "charter_app" }]);
        }
      }
    });
  },
);
