import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { CSV_COLUMNS, csvField, csvRecord, eventRecord } from "./csv.ts";
import type { EventView } from "./service.ts";
import { parseCsv } from "./testing.ts";

/** What a spreadsheet would start a formula with (OWASP, CSV injection). */
const FORMULA = /^[=+\-@\t\r]/;
const expectedCell = (value: string) => (FORMULA.test(value) ? `'${value}` : value);

/** Strings rich in what breaks CSV or starts a formula, beside arbitrary Unicode. */
const tricky = fc.oneof(
  fc.string({ unit: fc.constantFrom("=", "+", "-", "@", "\t", "\r", "\n", '"', ",", ";", "'", " ", "a", "é", "😀") }),
  fc.string({ unit: "binary" }),
);

describe("CSV (RFC 4180, safe against formula injection)", () => {
  it("reads back every value exactly, apostrophe-prefixed where a spreadsheet would see a formula", () => {
    fc.assert(
      fc.property(fc.array(fc.array(tricky, { minLength: 1, maxLength: 6 }), { maxLength: 8 }), (rows) => {
        const text = rows.map(csvRecord).join("");
        const parsed = parseCsv(text);
        expect(parsed).toEqual(rows.map((row) => row.map(expectedCell)));
        for (const cell of parsed.flat()) expect(cell).not.toMatch(FORMULA);
      }),
      { numRuns: 500 },
    );
  });

  it("quotes every field, so a separator in a value never starts a cell, in any locale", () => {
    expect(csvField("a;=1+1")).toBe('"a;=1+1"');
    expect(csvField('say "hi", then')).toBe('"say ""hi"", then"');
    expect(csvField('=HYPERLINK("http://evil")')).toBe('"\'=HYPERLINK(""http://evil"")"');
    expect(csvField("-2+3")).toBe('"\'-2+3"');
    expect(csvField("\tcmd")).toBe('"\'\tcmd"');
    expect(csvField("")).toBe('""');
    expect(csvRecord(["a", "b"])).toBe('"a","b"\r\n');
  });

  it("writes an event as one record in the header's columns, details as canonical JSON", () => {
    const event: EventView = {
      id: "019a0000-0000-7000-8000-000000000001",
      chain: "tenant/019a0000-0000-7000-8000-0000000000aa/changes",
      stream: "changes",
      seq: 7,
      at: "2026-04-01T09:00:00.000Z",
      actor: { kind: "user", id: "019a0000-0000-7000-8000-000000000002" },
      action: "record.updated",
      target: { type: "contact", id: null },
      subjects: ["019a0000-0000-7000-8000-000000000003", "019a0000-0000-7000-8000-000000000004"],
      details: { z: 1, fields: ["name"], note: "=cmd" },
      requestId: "@SUM(A1)",
      cause: null,
      hash: "a".repeat(64),
    };
    const [header, record] = parseCsv(csvRecord(CSV_COLUMNS) + eventRecord(event));
    expect(header).toEqual([...CSV_COLUMNS]);
    const cells = Object.fromEntries(CSV_COLUMNS.map((column, i) => [column, record?.[i]]));
    expect(cells).toEqual({
      id: event.id,
      at: event.at,
      chain: event.chain,
      stream: "changes",
      seq: "7",
      actor_kind: "user",
      actor_id: event.actor.id,
      action: "record.updated",
      target_type: "contact",
      target_id: "",
      subjects: event.subjects.join(" "),
      details: '{"fields":["name"],"note":"=cmd","z":1}',
      request_id: "'@SUM(A1)",
      cause_kind: "",
      cause_id: "",
      hash: event.hash,
    });
  });
});

describe("the test's CSV reader", () => {
  it("refuses what RFC 4180 does not allow, so the property above cannot pass on a lenient reading", () => {
    expect(() => parseCsv('"a"b\r\n')).toThrow(/after a closing quote/);
    expect(() => parseCsv('a"b\r\n')).toThrow(/inside an unquoted field/);
    expect(() => parseCsv("a\nb\r\n")).toThrow(/bare line break/);
    expect(() => parseCsv('"a\r\n')).toThrow(/unterminated/);
    expect(() => parseCsv('"a","b"')).toThrow(/CRLF/);
    expect(parseCsv('"a ""q""","",x\r\n')).toEqual([['a "q"', "", "x"]]);
  });
});
