/**
 * The canonical form of audit events: RFC 8785 (JSON Canonicalization Scheme), restricted to values
 * without floating-point numbers, so that anyone can recompute an event's hash with any JSON library and a
 * few lines of code (no number formatting algorithm needed).
 *
 * - The value is a JSON value: null, true, false, a number, a string, an array or an object.
 * - Numbers are integers in the safe range (−(2^53 − 1) … 2^53 − 1), written in decimal with no exponent,
 *   no fraction and no leading zeros, as JavaScript's String(n) writes them (−0 is written 0). Any other
 *   number (a fraction, NaN, ±Infinity, beyond the safe range) is refused.
 * - Strings are written as ECMAScript's JSON.stringify writes them, which is RFC 8785 §3.2.2.2: `"` and `\`
 *   escaped, \b \f \n \r \t as such, other controls below U+0020 as \u00xx in lower-case hex, everything
 *   else as itself in UTF-8. A string with a lone surrogate is refused (RFC 8785 needs I-JSON text).
 * - Objects are written with their properties sorted by name, comparing the names as arrays of UTF-16 code
 *   units (RFC 8785 §3.2.3), with no whitespace anywhere.
 * - Arrays keep their order.
 * - Refused: undefined (as a value, a property or an array element), functions, symbols, bigints, objects
 *   that are not plain (Date, Map, class instances, Buffer), sparse arrays, and nesting deeper than 64.
 */

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export class CanonicalFormError extends TypeError {
  override name = "CanonicalFormError";
}

const MAX_DEPTH = 64;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function string(value: string, path: string): string {
  if (LONE_SURROGATE.test(value)) throw new CanonicalFormError(`${path}: a string with a lone surrogate`);
  return JSON.stringify(value);
}

function write(value: unknown, path: string, depth: number): string {
  if (value === null) return "null";
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "number":
      if (!Number.isSafeInteger(value)) {
        throw new CanonicalFormError(`${path}: ${value} is not an integer in the safe range (no floating point)`);
      }
      return String(value);
    case "string":
      return string(value, path);
    case "object":
      break;
    default:
      throw new CanonicalFormError(`${path}: a ${typeof value} is not a JSON value`);
  }
  if (depth >= MAX_DEPTH) throw new CanonicalFormError(`${path}: nested deeper than ${MAX_DEPTH}`);
  if (Array.isArray(value)) {
    const items: string[] = [];
    for (let i = 0; i < value.length; i++) {
      if (!(i in value)) throw new CanonicalFormError(`${path}[${i}]: a hole in an array`);
      items.push(write(value[i], `${path}[${i}]`, depth + 1));
    }
    return `[${items.join(",")}]`;
  }
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) {
    throw new CanonicalFormError(`${path}: only plain objects are JSON objects`);
  }
  if (Object.getOwnPropertySymbols(value).length > 0) {
    throw new CanonicalFormError(`${path}: an object with symbol keys`);
  }
  // The default sort compares UTF-16 code units, which is what RFC 8785 asks for.
  const names = Object.keys(value).sort();
  const members = names.map((name) => {
    const member = (value as Record<string, unknown>)[name];
    return `${string(name, path)}:${write(member, `${path}.${name}`, depth + 1)}`;
  });
  return `{${members.join(",")}}`;
}

/**
 * The canonical text of a value found at `path`, `depth` levels inside the value being canonicalized: for a
 * writer that knows the outer shape (event.ts) and hands the rest here, with the same checks and errors
 * as canonicalize of the whole.
 */
export function canonicalizeAt(value: unknown, path: string, depth: number): string {
  return typeof value === "string" ? string(value, path) : write(value, path, depth);
}

/** The canonical text of a JSON value; throws CanonicalFormError for anything outside the form above. */
export function canonicalize(value: unknown): string {
  return write(value, "$", 0);
}

/** The canonical form as UTF-8 bytes: what a hash is taken over. */
export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalize(value), "utf8");
}
