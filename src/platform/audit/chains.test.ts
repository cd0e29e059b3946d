import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { TextRow } from "../db/index.ts";
import { StreamedEvent } from "./chains.ts";
import { storedEventHash } from "./event.ts";

/**
 * Verification hashes each streamed row straight from its columns' text (StreamedEvent.hashAt) instead of
 * building the event the driver reads and hashing that. The two must agree on every row whatever its
 * columns hold — a row the short path would hash differently is either a false alarm or, worse, an edit
 * that verifies — so rows are generated with every column free: ordinary values, NULLs, quotes,
 * backslashes, controls, non-ASCII, uuid lists with NULL or quoted elements, JSON with fractions or deep
 * nesting, versions other than 1, malformed hashes.
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
const json = fc.oneof(
  fc.constant("{}"),
  fc.jsonValue().map((v) => JSON.stringify(v)),
  fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 3 })).map((v) => JSON.stringify(v)),
  fc.constantFrom('{"n": 3.5}', '{"a": {"b": [1, null, true]}}', `${"[".repeat(70)}${"]".repeat(70)}`, "not json"),
  fc.constant(null),
);
const at = fc.oneof(
  fc.constantFrom("2026-04-01T08:00:00.123000", "2026-04-01T08:00:00.123456", "2026-04-01T08:00:00.000000"),
  text,
);

const row = fc.tuple(
  id, // id
  text, // chain_id
  fc.integer({ min: 1, max: 1_000 }).map(String), // seq
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
    fc.assert(
      fc.property(row, fc.option(fc.uuid(), { nil: null }), fc.integer({ min: 1, max: 1_000 }), (r, tenant, seq) => {
        const streamed = new StreamedEvent(r as TextRow, tenant);
        expect(streamed.hashAt(seq)).toBe(driverHash(streamed, seq));
      }),
      { numRuns: 3_000 },
    );
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
    const hash = new StreamedEvent(base, tenant).hashAt(2);
    expect(hash).toMatch(/^[0-9a-f]{64}$/);
    expect(hash).toBe(driverHash(new StreamedEvent(base, tenant), 2));
    const edits: Record<number, string> = { 3: "2", 11: '{"n": 1}', 16: "d".repeat(64) };
    for (let column = 0; column < base.length; column++) {
      if (column === 2 || column === 17) continue; // seq is given; the stored hash is not hashed
      const edited = [...base];
      edited[column] = edits[column] ?? `${base[column] ?? "x"}x`;
      // A cause is its kind and id together: one alone reads as no cause.
      if (column === 14) edited[15] = "01a20c42-5402-71ff-bfe8-f5fa339bae07";
      if (column === 15) edited[14] = "automation-run";
      expect(new StreamedEvent(edited, tenant).hashAt(2), `column ${column}`).not.toBe(hash);
    }
  });
});
