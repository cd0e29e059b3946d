import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { APPLICATION_INVENTORY } from "../src/modules/inventory.ts";
import { PLATFORM_TABLES } from "../src/platform/db/index.ts";
import {
  type ColumnEntry,
  type Inventory,
  inventoryCatalogProblems,
  inventoryTables,
  kernelInventory,
  type TableInventory,
  validateInventory,
} from "../src/platform/inventory/index.ts";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "./support/databases.ts";

const features = kernelInventory.tables.find((t) => t.table === "tenant_features") as TableInventory;
const featureId = features.columns.id as ColumnEntry;

/** The application inventory with `tenant_features` replaced by `table`. */
function withFeatures(table: TableInventory): Inventory {
  return APPLICATION_INVENTORY.map((m) => ({
    ...m,
    tables: m.tables.map((t) => (t.table === "tenant_features" ? table : t)),
  }));
}

describe("the application inventory (P1)", () => {
  it("is consistent", () => {
    expect(validateInventory(APPLICATION_INVENTORY)).toEqual([]);
  });

  it("agrees with the tenancy catalog on which tables are platform tables", () => {
    const platform = inventoryTables(APPLICATION_INVENTORY)
      .filter((t) => t.owner === "platform")
      .map((t) => t.table)
      .sort();
    expect(platform).toEqual(Object.keys(PLATFORM_TABLES).sort());
  });
});

describe.each(DATABASE_KINDS)("inventory against the live catalog on %s (P1)", (kind) => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
  });
  afterAll(() => t?.close());

  const problems = (inventory: Inventory = APPLICATION_INVENTORY) =>
    t.db.withPlatform((tx) => inventoryCatalogProblems(tx, inventory));

  it("classifies every column of every table, and nothing that does not exist", async () => {
    expect(await problems()).toEqual([]);
    const declared = inventoryTables(APPLICATION_INVENTORY).map((table) => table.table);
    expect(declared).toEqual(
      expect.arrayContaining(["tenants", "tenant_features", "legal_holds", "schema_migrations"]),
    );
  });

  it("marks every blind index column (bytea named *_index) with the column it indexes (E4: rotation re-keys it)", async () => {
    const { rows } = await t.db.withPlatform((tx) =>
      sql<{ name: string }>`
        SELECT table_name || '.' || column_name AS name FROM information_schema.columns
        WHERE table_schema = 'public' AND data_type = 'bytea' AND column_name LIKE '%\_index'`.execute(tx),
    );
    const marked = inventoryTables(APPLICATION_INVENTORY).flatMap((table) =>
      Object.entries(table.columns).flatMap(([column, entry]) =>
        entry.blindIndexOf ? [`${table.table}.${column}`] : [],
      ),
    );
    expect(rows.map((r) => r.name).sort()).toEqual(marked.sort());
    expect(marked.length).toBeGreaterThan(0);
  });

  it("catches an unclassified column and an unclassified table", async () => {
    await t.owner(
      "ALTER TABLE tenant_features ADD COLUMN probe text; CREATE TABLE probe_unlisted (id uuid PRIMARY KEY)",
    );
    try {
      expect(await problems()).toEqual([
        "column tenant_features.probe has no inventory entry",
        "table probe_unlisted has no inventory entry",
      ]);
    } finally {
      await t.owner("ALTER TABLE tenant_features DROP COLUMN probe; DROP TABLE probe_unlisted");
    }
    expect(await problems()).toEqual([]);
  });

  it("catches entries for columns and tables that do not exist", async () => {
    const stale = withFeatures({ ...features, columns: { ...features.columns, retired: featureId } });
    const gone: Inventory = [
      ...APPLICATION_INVENTORY,
      { module: "probe", tables: [{ ...features, table: "probe_gone" }] },
    ];
    expect(await problems(stale)).toEqual([
      "the inventory declares column tenant_features.retired, which does not exist",
    ]);
    expect(await problems(gone)).toEqual(["the inventory declares table probe_gone, which does not exist"]);
  });

  it("catches a subject path step declared a foreign key that the schema does not have", async () => {
    const path = (column: string, link: "foreign-key" | "declared") =>
      withFeatures({
        ...features,
        subject: {
          kind: "path",
          via: [{ column, references: { table: "tenants", column: "id" }, link }],
          of: "tenant",
        },
      });
    expect(await problems(path("tenant_id", "foreign-key"))).toEqual([]);
    expect(await problems(path("changed_by", "declared"))).toEqual([]);
    expect(await problems(path("changed_by", "foreign-key"))).toEqual([
      "subject path of tenant_features: tenant_features.changed_by → tenants.id is declared a foreign key but none exists",
    ]);
  });
});
