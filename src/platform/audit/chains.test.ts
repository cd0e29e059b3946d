import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { encodeCopyLine, type TextRow } from "../db/index.ts";
import { canonicalizeAt } from "./canonical.ts";
import { StreamedEvent } from "./chains.ts";
import { storedEventHash } from "./event.ts";
import { columnEnds, LONG_WAY, lineHash, plainColumns } from "./line-hash.ts";

/**
 * Verification hashes each streamed row straight from its line's bytes (StreamedEvent.hashAt, line-hash.ts)
 * instead of building the event the driver reads and hashing that. The two must agree on every row whatever
 * its columns hold — a row the short path would hash differently is either a false alarm or, worse, an edit
 * that verifies — so rows are generated with every column free: ordinary values, NULLs, quotes,
 * backslashes, controls, non-ASCII, uuid lists with NULL or quoted elements, JSON as jsonb prints it and
 * in every other form (other spacing, duplicate names, fractions, -0, long integers, deep nesting),
 * versions other than 1, malformed hashes.
 */

const hex = fc.string({ unit: fc.constantFrom(..."0123456789abcdef"), minLength: 64, maxLength: 64 });
const odd = fc.oneof(
  fc.string({ unit: "binary" }),
  fc.string({ unit: fc.constantFrom('"', "\\", "\n", "\t", "\u0001", "é", "😀", "a", ",", "{", "}") }),
);
const text = fc.oneof(fc.constant(null), fc.stringMatching(/^[a-z][a-z0-9.-]{0,20}$/), odd);
const id = fc.oneof({ weight: 4, arbitrary: fc.uuid() }, { weight: 1, arbitrary: text });
const subjects = fc.oneof(
  fc.constant("{}"),
  fc.array(fc.uuid(), { minLength: 1, maxLength: 3 }).map((ids) => `{${ids.join(",")}}`),
  fc.constantFrom("{NULL}", '{"a b"}', `{${"0".repeat(8)},NULL}`, "{{1}}", "nonsense", "{}x"),
  fc.constant(null),
);
/** A JSON value as jsonb prints it: `, ` and `: ` between items, names by length then bytes. */
function jsonbText(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(jsonbText).join(", ")}]`;
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  const names = Object.keys(value).sort((a, b) => a.length - b.length || (a < b ? -1 : a > b ? 1 : 0));
  const members = names.map((n) => `${JSON.stringify(n)}: ${jsonbText((value as Record<string, unknown>)[n])}`);
  return `{${members.join(", ")}}`;
}
const plainName = fc.stringMatching(/^[a-zA-Z_][a-zA-Z0-9_ ]{0,8}$/);
const plainJson = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.constantFrom(null, true, false, 0, -1, 7, 999_999_999_999_999, -999_999_999_999_999),
    fc.integer(),
    fc.stringMatching(/^[ -~]{0,12}$/),
    fc.array(tie("value"), { maxLength: 4 }),
    fc.dictionary(plainName, tie("value"), { maxKeys: 5 }),
  ),
}));
/** JSON the short path must refuse or write exactly: near misses of jsonb's form, and values at the limits. */
const trickyJson = fc.oneof(
  fc.constantFrom(
    '{"n": 3.5}',
    '{"n": 1.0}',
    '{"n": -0}',
    '{"n": 0123}',
    '{"n": -012}',
    '{"n": 1234567890123456}',
    '{"n": 9007199254740993}',
    '{"n": 9999999999999999}',
    '{"n": -999999999999999}',
    '{"n": 1e3}',
    '{"a": 1, }',
    '{"a": 1, "a": 2}',
    '{"b": 1, "a": 2, "b": 3}',
    '{"a": {"x": 1, "x": 1}}',
    "[1, ]",
    "[, 1]",
    "[1,, 2]",
    '{"a":1}',
    '{"a": 1,"b": 2}',
    '{"a" : 1}',
    "{ }",
    "[ ]",
    '{"a": [1, 2}',
    '{"a": [1, 2], "b": {"d": [], "c": {}}}',
    '{"a": "x\u0001y"}',
    '"x"',
    "12",
    "tru",
    "nul",
    '{"a": "x"',
    '{"a"}',
    `${"[".repeat(70)}${"]".repeat(70)}`,
    `${"[".repeat(33)}${"]".repeat(33)}`,
    `${"[".repeat(31)}${"]".repeat(31)}`,
    "not json",
  ),
  // A near miss inside an ordinary object: a member put through one of the edits above.
  fc
    .tuple(fc.dictionary(plainName, plainJson.value, { minKeys: 1, maxKeys: 4 }), fc.integer({ min: 0, max: 5 }))
    .map(([value, edit]) => {
      const text = jsonbText(value);
      return [
        text.replace(": ", ":"),
        text.replace(/\}$/, ', "zz": -0}'),
        text.replace(/^\{/, '{"zz": 07, '),
        text.replace(/^\{("[^"]*")/, "{$1: 1, $1"),
        text.replace(/\}$/, ', "zz": 12345678901234567}'),
        text.replace(/^\{/, `{"zz": ${"[".repeat(40)}${"]".repeat(40)}, `),
      ][edit] as string;
    }),
);
const json = fc.oneof(
  { weight: 2, arbitrary: fc.constant("{}") },
  { weight: 6, arbitrary: plainJson.value.map(jsonbText) },
  { weight: 2, arbitrary: fc.dictionary(plainName, plainJson.value, { maxKeys: 6 }).map(jsonbText) },
  fc.jsonValue().map(jsonbText),
  fc.jsonValue().map((v) => JSON.stringify(v)),
  trickyJson,
  fc.constant(null),
);
const at = fc.oneof(
  fc.constantFrom("2026-04-01T08:00:00.123000", "2026-04-01T08:00:00.123456", "2026-04-01T08:00:00.000000"),
  text,
);

const row = fc.tuple(
  id, // id
  text, // chain_id
  fc.oneof({ weight: 9, arbitrary: fc.integer({ min: 1, max: 1_000 }).map(String) }, fc.constant(null)), // seq
  fc.oneof({ weight: 5, arbitrary: fc.constant("1") }, { weight: 1, arbitrary: fc.constantFrom("2", "01", "x") }),
  text, // stream
  text, // actor_kind
  id, // actor_id
  text, // action
  text, // target_type
  id, // target_id
  subjects,
  json, // details
  json, // personal
  text, // request_id
  text, // cause_kind
  id, // cause_id
  fc.oneof({ weight: 5, arbitrary: hex }, { weight: 1, arbitrary: text }), // prev_hash
  hex, // hash
  at,
);

const name = fc.stringMatching(/^[a-z][a-z0-9._-]{0,20}$/);
const nullable = <T>(value: fc.Arbitrary<T>) => fc.oneof({ weight: 4, arbitrary: value }, fc.constant(null));
/** A row as appends write them: every column in its usual form, at most one of them odd. */
const usualRow = fc
  .tuple(
    fc.uuid(), // id
    fc.uuid().map((tenant) => `tenant/${tenant}/changes`), // chain_id
    fc.integer({ min: 1, max: 1_000 }).map(String), // seq
    fc.constant("1"), // v
    fc.constantFrom("changes", "security", "access"), // stream
    fc.constantFrom("user", "system", "api-key"), // actor_kind
    nullable(fc.uuid()), // actor_id
    name, // action
    name, // target_type
    nullable(fc.uuid()), // target_id
    fc.array(fc.uuid(), { maxLength: 3 }).map((ids) => `{${ids.join(",")}}`), // subject_ids
    fc.oneof({ weight: 3, arbitrary: plainJson.value.map(jsonbText) }, trickyJson), // details
    fc.oneof(fc.constant("{}"), fc.dictionary(fc.uuid(), fc.base64String()).map(jsonbText), trickyJson), // personal
    nullable(name), // request_id
    nullable(name), // cause_kind
    nullable(fc.uuid()), // cause_id
    hex, // prev_hash
    hex, // hash
    fc.constantFrom("2026-04-01T08:00:00.123000", "2026-04-01T08:00:00.123456", "2026-04-01T08:00:00.000000"),
  )
  .chain((r) =>
    fc.oneof(
      fc.constant(r as TextRow),
      fc
        // Not seq (2): a bigint column always holds an integer, and the stream reads it before anything else.
        .tuple(
          fc.integer({ min: 0, max: r.length - 1 }).filter((c) => c !== 2),
          fc.oneof(text, json, subjects),
        )
        .map(([column, value]) => r.map((v, i) => (i === column ? value : v)) as TextRow),
    ),
  );

/** The line COPY writes for a row (newline included). */
const lineOf = (r: TextRow) => encodeCopyLine(r);

/** The long way: the event the driver reads, hashed as verification hashes events; undefined where it cannot be. */
function driverHash(streamed: StreamedEvent, seq: number): string | undefined {
  try {
    const event = streamed.event();
    return event && storedEventHash(event, seq);
  } catch {
    return undefined;
  }
}

describe("a streamed row's hash", () => {
  it("is the hash of the event the driver reads, for any columns", () => {
    let written = 0;
    fc.assert(
      fc.property(
        fc.oneof(row, usualRow),
        fc.option(fc.uuid(), { nil: null }),
        fc.integer({ min: 1, max: 1_000 }),
        (r, tenant, seq) => {
          const line = lineOf(r as TextRow);
          const streamed = new StreamedEvent(line, tenant);
          const expected = driverHash(streamed, seq);
          expect(streamed.hashAt(seq)).toBe(expected);
          // The short path itself, wherever it answers: never another hash than the driver's event gives.
          const ends = columnEnds();
          if (plainColumns(line, ends)) {
            const tenantText = Buffer.from(canonicalizeAt(tenant, "$.tenant", 1));
            const hash = lineHash(line, ends, tenantText, seq);
            if (hash !== LONG_WAY) {
              written += 1;
              expect(hash).toBe(expected);
            }
          }
        },
      ),
      { numRuns: 5_000 },
    );
    // Enough rows of the usual shape were generated for the short path to be tested, not only skipped.
    expect(written).toBeGreaterThan(600);
  });

  it("is defined for an ordinary row, and changes with any column", () => {
    const base: TextRow = [
      "01a20c42-5426-725c-a4e9-2f1aead1ecd2",
      "tenant/01a20c42-4069-7246-bb31-53c896381671/changes",
      "2",
      "1",
      "changes",
      "user",
      "0190a4f2-7c1e-7d3a-9b2c-4e5f6a7b8c9d",
      "record.updated",
      "contact",
      "01a20c42-5402-71ff-bfe8-f5fa339bae06",
      "{0190a4f2-7c1e-7d3a-9b2c-000000000001}",
      '{"n": 0, "fields": ["email", "phone"], "module": "contacts"}',
      "{}",
      "req-0",
      null,
      null,
      "e".repeat(64),
      "f".repeat(64),
      "2026-11-24T06:33:18.214000",
    ];
    const tenant = "01a20c42-4069-7246-bb31-53c896381671";
    const line = lineOf(base);
    const ends = columnEnds();
    expect(plainColumns(line, ends)).toBe(true);
    const hash = lineHash(line, ends, Buffer.from(`"${tenant}"`), 2);
    expect(hash).toMatch(/^[0-9a-f]{64}$/);
    expect(hash).toBe(driverHash(new StreamedEvent(line, tenant), 2));
    const edits: Record<number, string> = { 3: "2", 11: '{"n": 1}', 16: "d".repeat(64) };
    for (let column = 0; column < base.length; column++) {
      if (column === 2 || column === 17) continue; // seq is given; the stored hash is not hashed
      const edited = [...base];
      edited[column] = edits[column] ?? `${base[column] ?? "x"}x`;
      // A cause is its kind and id together: one alone reads as no cause.
      if (column === 14) edited[15] = "01a20c42-5402-71ff-bfe8-f5fa339bae07";
      if (column === 15) edited[14] = "automation-run";
      expect(new StreamedEvent(lineOf(edited), tenant).hashAt(2), `column ${column}`).not.toBe(hash);
    }
  });
});
