import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { CanonicalFormError, canonicalize, type JsonValue } from "./canonical.ts";

/** JSON values inside the canonical form: no floating point, strings without lone surrogates. */
const json: fc.Arbitrary<JsonValue> = fc.letrec<{ value: JsonValue }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small" },
    fc.constant(null),
    fc.boolean(),
    fc.maxSafeInteger(),
    fc.string({ unit: "grapheme" }),
    fc.string({ unit: "binary" }),
    fc.array(tie("value"), { maxLength: 5 }),
    fc.dictionary(fc.string({ unit: "binary" }), tie("value"), { maxKeys: 5 }),
  ),
})).value;

/** The same value with every object's properties inserted in reverse order. */
function reversed(value: JsonValue): JsonValue {
  if (Array.isArray(value)) return value.map(reversed);
  if (value === null || typeof value !== "object") return value;
  // fromEntries defines own properties: assigning would turn a "__proto__" key into a prototype change.
  return Object.fromEntries(
    Object.keys(value)
      .reverse()
      .map((key) => [key, reversed(value[key] as JsonValue)]),
  );
}

describe("canonical form (RFC 8785, no floating point)", () => {
  it("does not depend on the order properties were inserted in", () => {
    fc.assert(fc.property(json, (value) => canonicalize(reversed(value)) === canonicalize(value)));
  });

  it("keeps a member named __proto__ as a member, as JSON.parse reads it", () => {
    expect(canonicalize(JSON.parse('{"b":2,"__proto__":{"x":1}}'))).toBe('{"__proto__":{"x":1},"b":2}');
  });

  it("is idempotent: parsing the canonical text and canonicalizing again gives the same text", () => {
    fc.assert(
      fc.property(json, (value) => {
        const text = canonicalize(value);
        expect(canonicalize(JSON.parse(text))).toBe(text);
        expect(JSON.parse(text)).toEqual(JSON.parse(JSON.stringify(value)));
      }),
    );
  });

  it("refuses floating-point numbers, NaN, infinities and integers beyond the safe range, anywhere", () => {
    const bad = fc.oneof(
      fc.double({ noInteger: true }),
      fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 2 ** 53, -(2 ** 53)),
    );
    fc.assert(
      fc.property(bad, fc.string(), (number, key) => {
        expect(() => canonicalize(number)).toThrow(CanonicalFormError);
        expect(() => canonicalize({ [key]: [1, number] })).toThrow(CanonicalFormError);
      }),
    );
  });

  it("refuses undefined, functions, bigints, symbols, non-plain objects, holes and lone surrogates", () => {
    for (const value of [
      undefined,
      { a: undefined },
      [1, undefined],
      () => 1,
      10n,
      Symbol("s"),
      new Date(0),
      new Map(),
      Buffer.from("x"),
      // biome-ignore lint/suspicious/noSparseArray: the hole is what is refused
      [1, , 2],
      "\ud800",
      { "\udc00": 1 },
      { [Symbol("k")]: 1 },
    ]) {
      expect(() => canonicalize(value), String(typeof value)).toThrow(CanonicalFormError);
    }
  });

  it("sorts property names by UTF-16 code units (RFC 8785 §3.2.3) and escapes strings as §3.2.2.2", () => {
    const value = {
      "\u20ac": "Euro Sign",
      "\r": "Carriage Return",
      "\ufb33": "Hebrew Letter Dalet With Dagesh",
      "1": "One",
      "\ud83d\ude00": "Emoji: Grinning Face",
      "\u0080": "Control",
      "\u00f6": "Latin Small Letter O With Diaeresis",
    };
    // Object.keys would put "1" first (an array index): the order is read from the text.
    expect(canonicalize(value)).toBe(
      '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis",' +
        '"\u20ac":"Euro Sign","\ud83d\ude00":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}',
    );
    expect(canonicalize({ b: [true, null, -0, 9007199254740991], a: '\u0000\b\t\n\f\r"\\/\u001f\u007f é' })).toBe(
      '{"a":"\\u0000\\b\\t\\n\\f\\r\\"\\\\/\\u001f\u007f é","b":[true,null,0,9007199254740991]}',
    );
  });
});
