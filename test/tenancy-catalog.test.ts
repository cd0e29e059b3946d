import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestAudit } from "../src/platform/audit/testing.ts";
import { systemClock } from "../src/platform/clock.ts";
import { catalogViolations, PLATFORM_TABLES } from "../src/platform/db/index.ts";
import { uuidv7 } from "../src/platform/ids.ts";
import { setFeature } from "../src/platform/tenancy/features.ts";
import type { Tenant } from "../src/platform/tenancy/tenants.ts";
import { createTestTenant } from "../src/platform/tenancy/testing.ts";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "./support/databases.ts";

const slug = () => `t-${uuidv7().slice(-12)}`;

describe.each(DATABASE_KINDS)("tenancy catalog on %s", (kind) => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
  });
  afterAll(() => t?.close());

  it("every table follows the tenancy rules (T1, T8)", async () => {
    const violations = await t.db.withPlatform((tx) => catalogViolations(tx, PLATFORM_TABLES));
    expect(violations).toEqual([]);
  });

  it("catches a tenant table with row-level security switched off, and other rule breaks", async () => {
    await t.owner(`
      CREATE TABLE probe_unsafe (tenant_id uuid NOT NULL, id uuid NOT NULL, code text, parent uuid,
        PRIMARY KEY (id, tenant_id), UNIQUE (code));
      CREATE TABLE probe_unlisted (id uuid PRIMARY KEY);
      CREATE TABLE probe_child (tenant_id uuid NOT NULL REFERENCES tenants (id), id uuid NOT NULL,
        PRIMARY KEY (tenant_id, id));
      CREATE UNIQUE INDEX probe_unsafe_parent ON probe_unsafe (parent);
      CREATE VIEW probe_view AS SELECT * FROM probe_unsafe;
      CREATE SEQUENCE probe_seq AS integer;
      ALTER TABLE probe_child ENABLE ROW LEVEL SECURITY;
      ALTER TABLE probe_child FORCE ROW LEVEL SECURITY;
      CREATE POLICY leaky ON probe_child USING (true)`);
    try {
      const violations = await t.db.withPlatform((tx) => catalogViolations(tx, PLATFORM_TABLES));
      expect(violations).toEqual(
        expect.arrayContaining([
          "table probe_unsafe does not enable row-level security",
          "table probe_unsafe does not force row-level security",
          "table probe_unsafe has no row-level security policy",
          "primary key probe_unsafe_pkey of probe_unsafe does not lead with tenant_id",
          "unique constraint probe_unsafe_code_key of probe_unsafe does not include tenant_id",
          "table probe_unlisted has no tenant_id and is not on the platform list",
          "policy leaky on probe_child is not the tenant policy for all commands",
          "unique index probe_unsafe_parent of probe_unsafe does not include tenant_id",
          "view probe_view is not security_invoker",
          "sequence probe_seq is integer, not bigint",
        ]),
      );
    } finally {
      await t.owner(
        "DROP VIEW probe_view; DROP TABLE probe_unsafe, probe_unlisted, probe_child; DROP SEQUENCE probe_seq",
      );
    }
  });

  describe("isolation as charter_app", () => {
    let a: Tenant;
    let b: Tenant;
    beforeAll(async () => {
      a = await createTestTenant(t.db, { slug: slug(), name: "A" });
      b = await createTestTenant(t.db, { slug: slug(), name: "B" });
      await t.db.withTenant({ tenantId: b.id }, (tx) =>
        setFeature(
          tx,
          systemClock,
          { tenantId: b.id, feature: "probe", enabled: true, changedBy: null },
          createTestAudit(t.db),
        ),
      );
    });

    it("runs requests as charter_app, not as a superuser", async () => {
      const role = await t.db.withTenant({ tenantId: a.id }, async (tx) => {
        const { rows } = await sql<{ u: string }>`SELECT current_user AS u`.execute(tx);
        return rows[0]?.u;
      });
      expect(role).toBe("charter_app");
    });

    it("inside tenant A, B's rows cannot be selected, updated, deleted or inserted", async () => {
      await t.db.withTenant({ tenantId: a.id }, async (tx) => {
        for (const table of ["tenant_settings", "tenant_features"] as const) {
          const seen = await tx.selectFrom(table).select("tenant_id").where("tenant_id", "=", b.id).execute();
          expect(seen).toEqual([]);
          const all = await tx.selectFrom(table).select("tenant_id").execute();
          expect(all.every((r) => r.tenant_id === a.id)).toBe(true);
        }
        const updated = await tx
          .updateTable("tenant_settings")
          .set({ locale: "fr" })
          .where("tenant_id", "=", b.id)
          .executeTakeFirst();
        expect(updated.numUpdatedRows).toBe(0n);
        const deleted = await tx.deleteFrom("tenant_features").where("tenant_id", "=", b.id).executeTakeFirst();
        expect(deleted.numDeletedRows).toBe(0n);
      });
      await expect(
        t.db.withTenant({ tenantId: a.id }, (tx) =>
          setFeature(
            tx,
            systemClock,
            { tenantId: b.id, feature: "other", enabled: true, changedBy: null },
            createTestAudit(t.db),
          ),
        ),
      ).rejects.toThrow(/row-level security/);
      const bFeatures = await t.db.withTenant({ tenantId: b.id }, (tx) =>
        tx.selectFrom("tenant_features").select(["feature", "enabled"]).execute(),
      );
      expect(bFeatures).toEqual([{ feature: "probe", enabled: true }]);
      const bSettings = await t.db.withTenant({ tenantId: b.id }, (tx) =>
        tx.selectFrom("tenant_settings").select("locale").executeTakeFirst(),
      );
      expect(bSettings?.locale).toBe("en");
    });

    it("with no tenant set, tenant tables show no rows", async () => {
      const rows = await t.db.withPlatform((tx) => tx.selectFrom("tenant_settings").selectAll().execute());
      expect(rows).toEqual([]);
    });

    it("would catch a tenant table whose row-level security is switched off", async () => {
      await t.superuser(
        "ALTER TABLE tenant_features NO FORCE ROW LEVEL SECURITY; ALTER TABLE tenant_features DISABLE ROW LEVEL SECURITY;",
      );
      try {
        const leaked = await t.db.withTenant({ tenantId: a.id }, (tx) =>
          tx.selectFrom("tenant_features").select("tenant_id").where("tenant_id", "=", b.id).execute(),
        );
        expect(leaked.length).toBe(1);
        const violations = await t.db.withPlatform((tx) => catalogViolations(tx, PLATFORM_TABLES));
        expect(violations).toContain("table tenant_features does not enable row-level security");
      } finally {
        await t.superuser(
          "ALTER TABLE tenant_features ENABLE ROW LEVEL SECURITY; ALTER TABLE tenant_features FORCE ROW LEVEL SECURITY;",
        );
      }
    });
  });
});
