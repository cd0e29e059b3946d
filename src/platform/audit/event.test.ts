import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { canonicalize, type JsonObject, type JsonValue } from "./canonical.ts";
import { ACTOR_KINDS, type AuditEvent, canonicalEvent, checkNewEvent, STREAMS } from "./event.ts";

/** Keys that trip naive writers: prototype names, empty, non-ASCII, astral, escapes, near-sort-order twins. */
const oddKey = fc.oneof(
  fc.constantFrom(
    "__proto__",
    "constructor",
    "toString",
    "",
    "é",
    "e\u0301",
    "\u{1F600}",
    "\uFFFF",
    "a\u0000",
    '"',
    "\\",
  ),
  fc.string({ unit: "binary" }),
);

const json: fc.Arbitrary<JsonValue> = fc.letrec<{ value: JsonValue }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small" },
    fc.constant(null),
    fc.boolean(),
    fc.maxSafeInteger(),
    fc.string({ unit: "grapheme" }),
    fc.string({ unit: "binary" }),
    fc.array(tie("value"), { maxLength: 4 }),
    fc.dictionary(oddKey, tie("value"), { maxKeys: 4 }),
  ),
})).value;

const object: fc.Arbitrary<JsonObject> = fc.dictionary(oddKey, json, { maxKeys: 5 });
const uuid = fc.uuid();
const hash = fc.stringMatching(/^[0-9a-f]{64}$/);

/** Events of version 1's shape, as record builds them and as verify reads them back from the database. */
const event: fc.Arbitrary<AuditEvent> = fc.record({
  v: fc.constant(1 as const),
  id: uuid,
  chain: fc.string({ unit: "binary" }),
  tenant: fc.option(uuid, { nil: null }),
  stream: fc.constantFrom(...STREAMS),
  seq: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  at: fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
  actor: fc.record({ kind: fc.constantFrom(...ACTOR_KINDS), id: fc.option(uuid, { nil: null }) }),
  action: fc.string({ unit: "grapheme" }),
  target: fc.record({ type: fc.string({ unit: "binary" }), id: fc.option(uuid, { nil: null }) }),
  subjects: fc.array(uuid, { maxLength: 4 }),
  details: object,
  personal: fc.dictionary(oddKey, fc.string({ unit: "binary" }), { maxKeys: 3 }),
  request: fc.option(fc.string({ unit: "grapheme" }), { nil: null }),
  cause: fc.option(fc.record({ kind: fc.string(), id: uuid }), { nil: null }),
  prev: hash,
});

/** The writer's text, or the error it throws: the same as canonicalize's either way. */
function outcome(write: (value: AuditEvent) => string, value: unknown): string {
  try {
    return write(value as AuditEvent);
  } catch (error) {
    return `${(error as Error).name}: ${(error as Error).message}`;
  }
}

function nested(depth: number): JsonObject {
  let value: JsonObject = {};
  for (let i = 0; i < depth; i++) value = { x: value };
  return value;
}

describe("canonicalEvent, the writer specialised to version 1", () => {
  it("writes exactly canonicalize's text for any event of version 1's shape", () => {
    fc.assert(
      fc.property(event, (e) => {
        expect(canonicalEvent(e)).toBe(canonicalize(e));
      }),
      { numRuns: 500 },
    );
  });

  it("matches canonicalize on empty objects and arrays, a null-prototype details, and a __proto__ member", () => {
    const base = fc.sample(event, { numRuns: 1, seed: 7 })[0] as AuditEvent;
    const details = Object.assign(Object.create(null) as JsonObject, { b: [], a: {} });
    const cases: AuditEvent[] = [
      { ...base, details: {}, personal: {}, subjects: [] },
      { ...base, details },
      { ...base, details: JSON.parse('{"__proto__":{"z":1},"y":"\\u00e9\\ud83d\\ude00"}') as JsonObject },
    ];
    for (const e of cases) expect(canonicalEvent(e)).toBe(canonicalize(e));
  });

  it("gives canonicalize's text or canonicalize's error for anything else", () => {
    const base = fc.sample(event, { numRuns: 1, seed: 11 })[0] as AuditEvent;
    const { cause: _, ...missing } = base;
    class Actor {
      kind = "user";
      id = null;
    }
    const holes = ["a"];
    holes.length = 2;
    const others: unknown[] = [
      { ...base, extra: 1 },
      missing,
      { ...base, [Symbol("s")]: 1 },
      { ...base, actor: new Actor() },
      { ...base, actor: { kind: "user", id: null, role: "x" } },
      { ...base, target: { type: "contact" } },
      { ...base, cause: { kind: "run", id: base.id, extra: true } },
      { ...base, subjects: holes },
      { ...base, subjects: [1, "a"] },
      { ...base, subjects: "a" },
      { ...base, seq: 1.5 },
      { ...base, request: undefined },
      { ...base, at: "\uD800" },
      { ...base, subjects: ["\uDC00"] },
      { ...base, details: { a: 0.5 } },
      // canonicalize refuses nesting deeper than 64 from the event down, not from details down.
      { ...base, details: nested(62) },
      { ...base, details: nested(63) },
      Object.assign(Object.create(null) as object, base),
      [base],
      null,
    ];
    for (const value of others) {
      expect(outcome(canonicalEvent, value)).toBe(outcome(canonicalize, value));
    }
    // The list above exercises both outcomes: some are written, some refused.
    const refused = others.filter((value) => outcome(canonicalize, value).startsWith("CanonicalFormError"));
    expect(refused.length).toBeGreaterThan(5);
    expect(refused.length).toBeLessThan(others.length);
  });
});

describe("checkNewEvent and the hash agree on how deep details may nest", () => {
  const nested = (levels: number): JsonObject => {
    let value: JsonObject = {};
    for (let i = 0; i < levels; i++) value = { a: value };
    return value;
  };
  const hashable = (details: JsonObject) => {
    try {
      canonicalEvent({
        v: 1,
        id: "0190a000-0000-7000-8000-000000000000",
        chain: "tenant/x/changes",
        tenant: null,
        stream: "changes",
        seq: 1,
        at: "2026-01-01T00:00:00.000Z",
        actor: { kind: "system", id: null },
        action: "probe.depth",
        target: { type: "probe", id: null },
        subjects: [],
        details,
        personal: {},
        request: null,
        cause: null,
        prev: "0".repeat(64),
      });
      return true;
    } catch {
      return false;
    }
  };
  const accepted = (details: JsonObject) => {
    try {
      checkNewEvent({
        tenantId: null,
        stream: "security",
        actor: { kind: "system", id: null },
        action: "probe.depth",
        target: { type: "probe", id: null },
        details,
      });
      return true;
    } catch {
      return false;
    }
  };

  it("accepts exactly the details that can be hashed, at and around the limit", () => {
    const verdicts = [60, 61, 62, 63, 64].map((levels) => [accepted(nested(levels)), hashable(nested(levels))]);
    for (const [accept, hash] of verdicts) expect(accept).toBe(hash);
    expect(verdicts.map(([accept]) => accept)).toContain(true);
    expect(verdicts.map(([accept]) => accept)).toContain(false);
  });
});
