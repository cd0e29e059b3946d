import fc from "fast-check";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { createTestAudit } from "../audit/testing.ts";
import { systemClock } from "../clock.ts";
import { createTestKeyRing } from "../crypto/testing.ts";
import { uuidv7 } from "../ids.ts";
import { createTenant } from "../tenancy/tenants.ts";
import { createTestTenant } from "../tenancy/testing.ts";
import { decodeCopyLine, encodeCopyLine, type TextRow } from "./copy-text.ts";
import type { CopyRows } from "./database.ts";
import type { Tx } from "./kysely.ts";

const slug = () => `r-${uuidv7().slice(-12)}`;

/** Every character COPY's text format escapes, a NULL beside an empty string, and text that only looks like NULL. */
const AWKWARD: [string, TextRow][] = [
  ["E'tab\\there'", ["tab\there"]],
  ["E'line\\nbreak\\r\\n'", ["line\nbreak\r\n"]],
  ["E'back\\\\slash \\\\N \\\\t'", ["back\\slash \\N \\t"]],
  ["'\\N'", ["\\N"]],
  ["chr(8) || chr(12) || chr(11)", ["\b\f\v"]],
  ["''", [""]],
  ["NULL", [null]],
  ["'é€😀'", ["é€😀"]],
];
/** The same values as PostgreSQL's COPY writes them. */
const AWKWARD_LINES = [
  "tab\\there",
  "line\\nbreak\\r\\n",
  "back\\\\slash \\\\N \\\\t",
  "\\\\N",
  "\\b\\f\\v",
  "",
  "\\N",
  "é€😀",
];

describe("COPY's text format", () => {
  it("decodes what it encodes, whatever the text", () => {
    fc.assert(
      fc.property(fc.array(fc.option(fc.string({ unit: "binary" }), { nil: null }), { minLength: 1 }), (row) => {
        expect(decodeCopyLine(encodeCopyLine(row))).toEqual(row);
      }),
    );
  });
});

describe.each(DATABASE_KINDS)("copyRows on %s", (kind) => {
  let t: TestDatabase;
  const tenants: string[] = [];

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    for (let i = 0; i < 4; i++) tenants.push((await createTestTenant(t.db, { slug: slug(), name: "Acme" })).id);
  });
  afterAll(() => t?.close());

  it("streams each row as the line COPY writes, NULL as \\N, in the statement's order", async () => {
    const values = AWKWARD.map(([expr], i) => `(${i}, ${expr})`).join(", ");
    const lines: Buffer[] = [];
    const count = await t.db.withSnapshot((s) =>
      s.copyRows(`SELECT v.n, v.x FROM (VALUES ${values}) v(n, x) ORDER BY v.n`, (line) => {
        lines.push(Buffer.from(line));
      }),
    );
    expect(count).toBe(AWKWARD.length);
    expect(lines.map(decodeCopyLine)).toEqual(AWKWARD.map(([, row], i) => [String(i), ...row]));
    expect(lines.map(String)).toEqual(AWKWARD_LINES.map((line, i) => `${i}\t${line}\n`));
  });

  it("writes every type as its text output, as PostgreSQL's COPY does", async () => {
    const lines: string[] = [];
    await t.db.withSnapshot((s) =>
      s.copyRows(
        "SELECT '01a20c42-5426-725c-a4e9-2f1aead1ecd2'::uuid, 9007199254740993::bigint, 2::smallint, " +
          `'{"n": 1.50, "a": [true, null]}'::jsonb, ARRAY['01a20c42-5426-725c-a4e9-2f1aead1ecd2', NULL]::uuid[], ` +
          "'2026-11-24 10:00:00.12+00'::timestamptz AT TIME ZONE 'UTC', 1.0::numeric, true",
        (line) => {
          lines.push(String(line));
        },
      ),
    );
    expect(lines).toEqual([
      "01a20c42-5426-725c-a4e9-2f1aead1ecd2\t9007199254740993\t2\t" +
        '{"a": [true, null], "n": 1.50}\t{01a20c42-5426-725c-a4e9-2f1aead1ecd2,NULL}\t' +
        "2026-11-24 10:00:00.12\t1.0\tt\n",
    ]);
  });

  it("reads more rows than one page, in order, and counts them", async () => {
    const seen: number[] = [];
    const count = await t.db.withSnapshot((s) =>
      // Ordered by the number, not by its text (the output column of the same name): 10 after 9.
      s.copyRows("SELECT g.n, repeat('x', g.n % 7) FROM generate_series(1, 2500) g(n) ORDER BY g.n", (line) => {
        const [n, x] = decodeCopyLine(line);
        seen.push(Number(n));
        expect(x).toBe("x".repeat(Number(n) % 7));
      }),
    );
    expect(count).toBe(2500);
    expect(seen).toEqual(Array.from({ length: 2500 }, (_, i) => i + 1));
  });

  it("ends with the error onLine threw, after the statement, and the transaction is still usable", async () => {
    let calls = 0;
    const after = await t.db.withSnapshot(async (s) => {
      const read = s.copyRows("SELECT n FROM generate_series(1, 10) n", () => {
        calls += 1;
        throw new Error("stop");
      });
      await expect(read).rejects.toThrow("stop");
      return s.copyRows("SELECT 'still'", () => {});
    });
    expect(calls).toBe(1);
    expect(after).toBe(1);
  });

  it("visits every tenant once with its own view, several at once where the engine can", async () => {
    const seen = new Map<string, string[]>();
    const sessions = new Set<string>();
    let open = 0;
    let most = 0;
    await t.db.withSnapshot((s) =>
      s.forEachTenant(
        async (id, _tx, copyRows) => {
          open += 1;
          most = Math.max(most, open);
          const rows: string[] = [];
          // Long enough for the other transactions to connect and take the next tenants meanwhile.
          const sql = "SELECT current_setting('app.tenant_id', true), current_user, pg_backend_pid(), pg_sleep(0.3)";
          await copyRows(sql, (line) => {
            const [tenant, role, pid] = decodeCopyLine(line);
            rows.push(tenant as string, role as string);
            sessions.add(pid as string);
          });
          expect(seen.has(id)).toBe(false);
          seen.set(id, rows);
          open -= 1;
        },
        { concurrency: 3 },
      ),
    );
    for (const id of tenants) expect(seen.get(id)).toEqual([id, "charter_app"]);
    if (kind === "postgres") {
      expect(most).toBeGreaterThan(1);
      expect(sessions.size).toBeGreaterThan(1);
    } else {
      expect([most, sessions.size]).toEqual([1, 1]);
    }
  });

  it("runs every statement of a visit in its tenant, whichever comes first, even several at once", async () => {
    const seen: [string, string][] = [];
    const tenantOf = (tx: Tx) =>
      sql<{ t: string }>`SELECT current_setting('app.tenant_id', true) AS t`.execute(tx).then((r) => r.rows[0]?.t);
    const copied = (copyRows: CopyRows) => {
      let tenant = "";
      return copyRows("SELECT current_setting('app.tenant_id', true)", (line) => {
        tenant = decodeCopyLine(line)[0] as string;
      }).then(() => tenant);
    };
    let visits = 0;
    await t.db.withSnapshot(async (s) => {
      await s.forEachTenant(
        async (id, tx, copyRows) => {
          // In turn: a statement first, a copy first, both at once, and nothing at all (the next visit must
          // still be switched to its own tenant).
          const turn = visits++ % 4;
          if (turn === 0) seen.push([id, (await tenantOf(tx)) as string], [id, await copied(copyRows)]);
          if (turn === 1) seen.push([id, await copied(copyRows)], [id, (await tenantOf(tx)) as string]);
          if (turn === 2) {
            const both = await Promise.all([tenantOf(tx), copied(copyRows), tenantOf(tx)]);
            for (const tenant of both) seen.push([id, tenant as string]);
          }
        },
        { concurrency: 3 },
      );
      // Back in the platform view afterwards.
      expect(await tenantOf(s.tx)).toBe("");
    });
    expect(visits).toBeGreaterThanOrEqual(tenants.length);
    expect(seen.length).toBeGreaterThan(0);
    for (const [id, tenant] of seen) expect(tenant).toBe(id);
  });

  it("throws a visit's error after the visits under way, and starts no more", async () => {
    const visited: string[] = [];
    const failure = new Error("visit failed");
    const outcome = t.db.withSnapshot(async (s) => {
      await s.forEachTenant(
        async (id) => {
          visited.push(id);
          if (visited.length === 1) throw failure;
        },
        { concurrency: 2 },
      );
    });
    await expect(outcome).rejects.toBe(failure);
    expect(visited.length).toBeLessThanOrEqual(2);
  });

  it("plans without bitmap scans in every transaction of a snapshot that asks for index-order reads", async () => {
    const setting = (copyRows: CopyRows) => {
      let value = "";
      return copyRows("SELECT current_setting('enable_bitmapscan')", (line) => {
        value = String(line).trim();
      }).then(() => value);
    };
    const seen: string[] = [];
    await t.db.withSnapshot(
      async (s) => {
        seen.push(await setting(s.copyRows));
        await s.forEachTenant(
          async (_id, _tx, copyRows) => {
            seen.push(await setting(copyRows));
          },
          { concurrency: 3 },
        );
      },
      { indexOrderReads: true },
    );
    expect(new Set(seen)).toEqual(new Set(["off"]));
    expect(await t.db.withSnapshot((s) => setting(s.copyRows))).toBe("on");
  });

  if (kind === "postgres") {
    it("the transactions visiting at once share the snapshot: a tenant committed meanwhile is seen by none", async () => {
      const other = await t.open({ migrate: false });
      try {
        const counts: string[] = [];
        await t.db.withSnapshot(async (s) => {
          await createTenant(
            other,
            systemClock,
            { slug: slug(), name: "Late" },
            createTestKeyRing(other),
            createTestAudit(other),
          );
          await s.copyRows("SELECT count(*) FROM tenants", (line) => {
            counts.push(String(line));
          });
          await s.forEachTenant(
            (_id, _tx, copyRows) =>
              copyRows("SELECT count(*) FROM tenants", (line) => {
                counts.push(String(line));
              }).then(() => {}),
            { concurrency: 3 },
          );
        });
        expect(new Set(counts).size).toBe(1);
        expect(counts.length).toBeGreaterThan(tenants.length);
      } finally {
        await other.close();
      }
    });
  }
});
