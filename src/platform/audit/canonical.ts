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
/** A string that JSON.stringify writes as itself between quotes: printable ASCII without `"` and `\`. */
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

/**
 * A refusal on its way up: the path is built only when something is refused, one segment per level the
 * error passes, so the text written for an accepted value allocates no paths (hashing is most of what
 * verification costs).
 */
class Refusal extends Error {
  readonly reason: string;
  /** Innermost first. */
  readonly segments: string[] = [];
  constructor(reason: string) {
    super(reason);
    this.reason = reason;
  }
}

function within(error: unknown, segment: string): unknown {
  if (error instanceof Refusal) error.segments.push(segment);
  return error;
}

function string(value: string): string {
  if (PLAIN.test(value)) return `"${value}"`;
  if (LONE_SURROGATE.test(value)) throw new Refusal("a string with a lone surrogate");
  return JSON.stringify(value);
}

function write(value: unknown, depth: number): string {
  if (value === null) return "null";
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "number":
      if (!Number.isSafeInteger(value)) {
        throw new Refusal(`${value} is not an integer in the safe range (no floating point)`);
      }
      return String(value);
    case "string":
      return string(value);
    case "object":
      break;
    default:
      throw new Refusal(`a ${typeof value} is not a JSON value`);
  }
  if (depth >= MAX_DEPTH) throw new Refusal(`nested deeper than ${MAX_DEPTH}`);
  if (Array.isArray(value)) {
    let text = "[";
    for (let i = 0; i < value.length; i++) {
      if (!(i in value)) throw within(new Refusal("a hole in an array"), `[${i}]`);
      try {
        text += i === 0 ? write(value[i], depth + 1) : `,${write(value[i], depth + 1)}`;
      } catch (error) {
        throw within(error, `[${i}]`);
      }
    }
    return `${text}]`;
  }
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) throw new Refusal("only plain objects are JSON objects");
  if (Object.getOwnPropertySymbols(value).length > 0) throw new Refusal("an object with symbol keys");
  // The default sort compares UTF-16 code units, which is what RFC 8785 asks for.
  const names = Object.keys(value);
  if (names.length > 1) names.sort();
  let text = "{";
  for (let i = 0; i < names.length; i++) {
    const name = names[i] as string;
    // A refused name is reported at the object, as before any member is written.
    const key = string(name);
    try {
      text += `${i === 0 ? "" : ","}${key}:${write((value as Record<string, unknown>)[name], depth + 1)}`;
    } catch (error) {
      throw within(error, `.${name}`);
    }
  }
  return `${text}}`;
}

/**
 * The canonical text of a value found at `path`, `depth` levels inside the value being canonicalized: for a
 * writer that knows the outer shape (event.ts) and hands the rest here, with the same checks and errors
 * as canonicalize of the whole.
 */
export function canonicalizeAt(value: unknown, path: string, depth: number): string {
  try {
    return typeof value === "string" ? string(value) : write(value, depth);
  } catch (error) {
    if (!(error instanceof Refusal)) throw error;
    throw new CanonicalFormError(`${path}${error.segments.reverse().join("")}: ${error.reason}`);
  }
}

/** The canonical text of a JSON value; throws CanonicalFormError for anything outside the form above. */
export function canonicalize(value: unknown): string {
  return canonicalizeAt(value, "$", 0);
}

/** The canonical form as UTF-8 bytes: what a hash is taken over. */
export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalize(value), "utf8");
}
