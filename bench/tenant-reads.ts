import { createHash } from "node:crypto";
import type { Kysely } from "kysely";
import { z } from "zod";
import type { BenchServing } from "../src/platform/db/bench-support.ts";
import { APP_ROLE } from "../src/platform/db/index.ts";
import { HttpProblem, problemSchema } from "../src/platform/http/problem.ts";
import { type AnyRoute, defineRoute } from "../src/platform/http/routes.ts";

/**
 * Tenant reads: the cost of Charter's tenant context (as charter_app under row-level security), through a
 * withTenant transaction and through a one-statement selectAsTenant, against the same query run bare as a
 * superuser. The table exists only in the benchmark's
 * database; no migration creates it.
 */

export interface Dataset {
  tenants: number;
  rowsPerTenant: number;
}

/** Tenant `t` (1-based): a fixed UUID, so every variant and every run queries the same tenants. */
export function tenantId(t: number): string {
  return `00000000-0000-4000-8000-${t.toString(16).padStart(12, "0")}`;
}

/** Row `i` of tenant `t`: a UUID from an md5, shaped as a version 4 UUID; the seed SQL computes the same. */
export function itemId(t: number, i: number): string {
  const h = createHash("md5").update(`bench-item:${t}:${i}`).digest("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

const POLICY = "tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid";

/** Runs as charter_owner on a migrated database: table, bulk seed, then keys, indexes and row-level security. */
export function datasetStatements({ tenants, rowsPerTenant }: Dataset): string[] {
  return [
    "CREATE TABLE bench_items (tenant_id uuid NOT NULL, id uuid NOT NULL, name text NOT NULL, body text)",
    `INSERT INTO bench_items (tenant_id, id, name, body)
     SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(t), 12, '0'))::uuid,
            (substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-8' || substr(h, 18, 3)
              || '-' || substr(h, 21, 12))::uuid,
            'item ' || substr(md5('bench-name:' || t || ':' || i), 1, 12),
            'body of item ' || i || ' of tenant ' || t || ': ' || h || h
       FROM generate_series(1, ${tenants}) AS t, generate_series(1, ${rowsPerTenant}) AS i,
            LATERAL (SELECT md5('bench-item:' || t || ':' || i) AS h) AS x`,
    "ALTER TABLE bench_items ADD PRIMARY KEY (tenant_id, id)",
    "CREATE INDEX bench_items_tenant_name ON bench_items (tenant_id, name)",
    "ALTER TABLE bench_items ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE bench_items FORCE ROW LEVEL SECURITY",
    `CREATE POLICY tenant_isolation ON bench_items USING (${POLICY}) WITH CHECK (${POLICY})`,
    `REVOKE ALL ON bench_items FROM ${APP_ROLE}`,
    `GRANT SELECT ON bench_items TO ${APP_ROLE}`,
    "VACUUM ANALYZE bench_items",
  ];
}

/** Index of the bulk INSERT in datasetStatements, to report the seeding time. */
export const SEED_STATEMENT = 1;

interface BenchTables {
  bench_items: { tenant_id: string; id: string; name: string; body: string | null };
}

const item = z.object({ id: z.string(), name: z.string(), body: z.string().nullable() });
const tenantParams = z.object({ tenantId: z.uuid() });
const itemParams = z.object({ tenantId: z.uuid(), id: z.uuid() });
const PUBLIC = { kind: "public" } as const;

// The exact text Kysely compiles the (b) and (c) queries to, so every variant sends PostgreSQL the same statement.
const LIST_SQL = 'select "id", "name", "body" from "bench_items" where "tenant_id" = $1 order by "name" limit $2';
const GET_SQL = 'select "id", "name", "body" from "bench_items" where "tenant_id" = $1 and "id" = $2';
const PAGE = 50;

export type VariantKey = "a" | "b" | "c";
export type Operation = "list" | "get";

/**
 * The benchmark's routes: /bench/a/… bare as a superuser, /bench/b/… through withTenant and /bench/c/…
 * through selectAsTenant, both under RLS.
 */
export function tenantReadRoutes(serving: BenchServing): AnyRoute[] {
  const { db, superuserQuery } = serving;
  const items = (tx: unknown) => (tx as Kysely<BenchTables>).selectFrom("bench_items").select(["id", "name", "body"]);
  const page = (tx: unknown, tenantId: string) =>
    items(tx).where("tenant_id", "=", tenantId).orderBy("name").limit(PAGE);
  const one = (tx: unknown, tenantId: string, id: string) =>
    items(tx).where("tenant_id", "=", tenantId).where("id", "=", id);
  const found = <T>(row: T | undefined): T => {
    if (!row) throw new HttpProblem("not-found", "no such item");
    return row;
  };
  return [
    defineRoute({
      method: "GET",
      url: "/bench/a/tenants/:tenantId/items",
      operationId: "benchListSuperuser",
      summary: "A page of items, bare as a superuser",
      hidden: true,
      permission: PUBLIC,
      params: tenantParams,
      response: { 200: z.object({ items: z.array(item) }) },
      handler: async ({ params }) => ({ items: await superuserQuery(LIST_SQL, [params.tenantId, PAGE]) }),
    }),
    defineRoute({
      method: "GET",
      url: "/bench/a/tenants/:tenantId/items/:id",
      operationId: "benchGetSuperuser",
      summary: "One item, bare as a superuser",
      hidden: true,
      permission: PUBLIC,
      params: itemParams,
      response: { 200: item, 404: problemSchema },
      handler: async ({ params }) => found((await superuserQuery(GET_SQL, [params.tenantId, params.id]))[0]),
    }),
    defineRoute({
      method: "GET",
      url: "/bench/b/tenants/:tenantId/items",
      operationId: "benchListTenant",
      summary: "A page of items, through withTenant under row-level security",
      hidden: true,
      permission: PUBLIC,
      params: tenantParams,
      response: { 200: z.object({ items: z.array(item) }) },
      handler: async ({ params, requestId }) => ({
        items: await db.withTenant({ tenantId: params.tenantId, requestId }, (tx) =>
          page(tx, params.tenantId).execute(),
        ),
      }),
    }),
    defineRoute({
      method: "GET",
      url: "/bench/b/tenants/:tenantId/items/:id",
      operationId: "benchGetTenant",
      summary: "One item, through withTenant under row-level security",
      hidden: true,
      permission: PUBLIC,
      params: itemParams,
      response: { 200: item, 404: problemSchema },
      handler: async ({ params, requestId }) =>
        found(
          await db.withTenant({ tenantId: params.tenantId, requestId }, (tx) =>
            one(tx, params.tenantId, params.id).executeTakeFirst(),
          ),
        ),
    }),
    defineRoute({
      method: "GET",
      url: "/bench/c/tenants/:tenantId/items",
      operationId: "benchListOneStatement",
      summary: "A page of items, through selectAsTenant under row-level security",
      hidden: true,
      permission: PUBLIC,
      params: tenantParams,
      response: { 200: z.object({ items: z.array(item) }) },
      handler: async ({ params, requestId }) => ({
        items: await db.selectAsTenant({ tenantId: params.tenantId, requestId }, (q) => page(q, params.tenantId)),
      }),
    }),
    defineRoute({
      method: "GET",
      url: "/bench/c/tenants/:tenantId/items/:id",
      operationId: "benchGetOneStatement",
      summary: "One item, through selectAsTenant under row-level security",
      hidden: true,
      permission: PUBLIC,
      params: itemParams,
      response: { 200: item, 404: problemSchema },
      handler: async ({ params, requestId }) =>
        found(
          (
            await db.selectAsTenant({ tenantId: params.tenantId, requestId }, (q) => one(q, params.tenantId, params.id))
          )[0],
        ),
    }),
  ];
}

/** mulberry32: a small deterministic PRNG, so every variant draws the same sequence of requests. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** A generator of request paths for one operation and variant, drawing tenants and rows from `random`. */
export function pathsFor(dataset: Dataset, op: Operation, variant: VariantKey, random: () => number): () => string {
  const pick = (n: number) => 1 + Math.floor(random() * n);
  return () => {
    const t = pick(dataset.tenants);
    const base = `/bench/${variant}/tenants/${tenantId(t)}/items`;
    return op === "list" ? base : `${base}/${itemId(t, pick(dataset.rowsPerTenant))}`;
  };
}

/**
 * Sample requests whose answers must be identical in every variant: pages and rows of random tenants,
 * the first and last tenant, and a row that does not exist (404 in all).
 */
export function samplePaths(dataset: Dataset): { op: Operation; path: (v: VariantKey) => string; expect: string }[] {
  const random = prng(0x5eed);
  const samples: { op: Operation; path: (v: VariantKey) => string; expect: string }[] = [];
  const tenants = [1, dataset.tenants, ...Array.from({ length: 20 }, () => 1 + Math.floor(random() * dataset.tenants))];
  const page = Math.min(PAGE, dataset.rowsPerTenant);
  for (const t of tenants) {
    const i = 1 + Math.floor(random() * dataset.rowsPerTenant);
    samples.push({
      op: "list",
      path: (v) => `/bench/${v}/tenants/${tenantId(t)}/items`,
      expect: `${page} rows`,
    });
    samples.push({
      op: "get",
      path: (v) => `/bench/${v}/tenants/${tenantId(t)}/items/${itemId(t, i)}`,
      expect: `row ${itemId(t, i)}`,
    });
  }
  // A row of tenant 1 asked for under tenant 2: absent in every variant.
  samples.push({
    op: "get",
    path: (v) => `/bench/${v}/tenants/${tenantId(2)}/items/${itemId(1, 1)}`,
    expect: "404",
  });
  return samples;
}

/** Checks one sample's answer from variant (a); the others' answers must then be byte-for-byte the same JSON. */
export function sampleLooksRight(expect: string, status: number, body: unknown): boolean {
  if (expect === "404") return status === 404;
  if (status !== 200) return false;
  if (expect.startsWith("row ")) return (body as { id?: string }).id === expect.slice(4);
  const rows = (body as { items?: { name: string }[] }).items ?? [];
  const sorted = rows.every((r, k) => k === 0 || (rows[k - 1] as { name: string }).name <= r.name);
  return rows.length === Number.parseInt(expect, 10) && sorted;
}
