import { hash } from "node:crypto";

/**
 * An event's hash written straight from its row as COPY's text format gives it (chains.ts streams events
 * so), byte by byte into one buffer, with no string per column: most of what verification costs per event.
 *
 * It takes only the rows whose text needs no decoding and whose every member it can write exactly as the
 * canonical form would (canonical.ts), and answers LONG_WAY for anything else, so that the caller decodes
 * the row and hashes the event the driver would read: ASCII only (no decoding), no backslash but a whole
 * `\N` column (no COPY escapes), strings with no `"` or control character (no JSON escapes), a uuid list of
 * plain ids, `details` and `personal` in the exact form jsonb prints (`{"b": 1, "a": [true, "x"]}`, strings
 * with no backslash, integers of at most 15 digits), version 1, a previous hash of 64 lower-case hex digits.
 * Whenever it answers, the answer is the hash of the event the driver reads from the same row (a
 * property test holds the two equal for rows with every column free).
 */

/** The columns of a streamed row, in order (chains.ts selects them so). */
export const COLUMN = {
  id: 0,
  chain: 1,
  seq: 2,
  v: 3,
  stream: 4,
  actorKind: 5,
  actorId: 6,
  action: 7,
  targetType: 8,
  targetId: 9,
  subjects: 10,
  details: 11,
  personal: 12,
  request: 13,
  causeKind: 14,
  causeId: 15,
  prev: 16,
  hash: 17,
  at: 18,
} as const;
export const COLUMN_COUNT = 19;

/** The answer for a row this does not write: decode it and hash the driver's event instead. */
export const LONG_WAY = Symbol("long way");

const TAB = 9;
const NEWLINE = 10;
const QUOTE = 34;
const COMMA = 44;
const DASH = 45;
const ZERO = 48;
const NINE = 57;
const LOWER_A = 97;
const LOWER_F = 102;
const COLON = 58;
const SPACE = 32;
const BACKSLASH = 92;
const N = 78;
const OPEN_ARRAY = 91;
const CLOSE_ARRAY = 93;
const OPEN_OBJECT = 123;
const CLOSE_OBJECT = 125;
/** jsonb is written at most this deep here (the canonical form allows 64 counted from the event). */
const MAX_JSON_DEPTH = 32;

/** The slot of a line's `ends` (columnEnds) that holds which columns have a `"` in them, a bit each. */
const QUOTES = COLUMN_COUNT;

/** Room for what plainColumns finds in a line: where each column ends, and which hold a quote. */
export const columnEnds = () => new Int32Array(COLUMN_COUNT + 1);

/**
 * Where each column of `line` ends (the index of the tab or newline after it), into `ends` (columnEnds),
 * with which columns hold a `"`, and whether the line is one this writes from: exactly COLUMN_COUNT
 * columns, ASCII only, no control character but the separators, and no backslash but whole `\N` columns
 * (so no column has an escape to decode). One pass over the bytes.
 */
export function plainColumns(line: Buffer, ends: Int32Array): boolean {
  const last = line.length - 1;
  if (line[last] !== NEWLINE) return false;
  let column = 0;
  let quotes = 0;
  for (let at = 0; at < last; at++) {
    const byte = line[at] as number;
    if (byte > QUOTE && byte < 128 && byte !== BACKSLASH) continue;
    if (byte === TAB) {
      if (column === COLUMN_COUNT - 1) return false;
      ends[column++] = at;
    } else if (byte === QUOTE) quotes |= 1 << column;
    else if (byte === BACKSLASH) {
      // `\N` alone in its column: a tab or the line's start before it, a tab or the newline after it.
      const after = line[at + 2];
      if (line[at + 1] !== N || (at > 0 && line[at - 1] !== TAB) || (after !== TAB && after !== NEWLINE)) return false;
    } else if (byte < SPACE || byte > 127) return false;
  }
  if (column !== COLUMN_COUNT - 1) return false;
  ends[column] = last;
  ends[QUOTES] = quotes;
  return true;
}

/** Where a column of a line plainColumns read starts. */
export const columnStart = (ends: Int32Array, column: number) => (column === 0 ? 0 : (ends[column - 1] as number) + 1);

/**
 * A column of 1 to 15 decimal digits (always a safe integer) as its number, read where it lies; -1 for
 * anything else (then the caller reads it as text).
 */
export function columnDigits(line: Buffer, ends: Int32Array, column: number): number {
  const from = columnStart(ends, column);
  const to = ends[column] as number;
  if (to - from < 1 || to - from > 15) return -1;
  let n = 0;
  for (let i = from; i < to; i++) {
    const digit = (line[i] as number) - ZERO;
    if (digit < 0 || digit > 9) return -1;
    n = n * 10 + digit;
  }
  return n;
}

/** Whether the column holds COPY's NULL, `\N`. */
export function isNull(line: Buffer, ends: Int32Array, column: number): boolean {
  const from = columnStart(ends, column);
  return (ends[column] as number) - from === 2 && line[from] === BACKSLASH && line[from + 1] === N;
}

let out = Buffer.allocUnsafe(4096);
let pos = 0;

const latin1 = (text: string) => Buffer.from(text, "latin1");
const TEXT = {
  action: latin1('{"action":'),
  actorId: latin1(',"actor":{"id":'),
  actorKind: latin1(',"kind":'),
  at: latin1(',"at":"'),
  cause: latin1('Z","cause":'),
  causeId: latin1('{"id":'),
  causeKind: latin1(',"kind":'),
  chain: latin1(',"chain":'),
  details: latin1(',"details":'),
  id: latin1(',"id":'),
  personal: latin1(',"personal":'),
  prev: latin1(',"prev":"'),
  request: latin1('","request":'),
  seq: latin1(',"seq":'),
  stream: latin1(',"stream":'),
  subjects: latin1(',"subjects":['),
  targetId: latin1('],"target":{"id":'),
  targetType: latin1(',"type":'),
  tenant: latin1(',"tenant":'),
  v: latin1(',"v":1}'),
  null: latin1("null"),
};

// The loops copy through locals: the module's `out` and `pos` would be loaded and stored at every byte.
function put(bytes: Uint8Array): void {
  const buffer = out;
  let at = pos;
  for (let i = 0; i < bytes.length; i++) buffer[at++] = bytes[i] as number;
  pos = at;
}

/** Bytes `from`…`to` of the line as they are (plainColumns refused control characters in it). */
function raw(line: Buffer, from: number, to: number): void {
  const buffer = out;
  let at = pos;
  for (let i = from; i < to; i++) buffer[at++] = line[i] as number;
  pos = at;
}

/** A text column as a JSON string, or null; false for one with a quote (JSON would escape it). */
function text(line: Buffer, ends: Int32Array, column: number): boolean {
  if (isNull(line, ends, column)) put(TEXT.null);
  else if (((ends[QUOTES] as number) & (1 << column)) !== 0) return false;
  else {
    out[pos++] = QUOTE;
    raw(line, columnStart(ends, column), ends[column] as number);
    out[pos++] = QUOTE;
  }
  return true;
}

/** The end of the JSON string starting at `from` (its closing quote's index + 1), or -1. */
function stringEnd(line: Buffer, from: number, to: number): number {
  for (let at = from + 1; at < to; at++) if (line[at] === QUOTE) return at + 1;
  return -1;
}

/** The end of the value starting at `from` without writing it, or -1: strings and brackets matched. */
function valueEnd(line: Buffer, from: number, to: number): number {
  const first = line[from];
  if (first === QUOTE) return stringEnd(line, from, to);
  if (first !== OPEN_ARRAY && first !== OPEN_OBJECT) {
    let at = from;
    while (at < to && line[at] !== COMMA && line[at] !== CLOSE_ARRAY && line[at] !== CLOSE_OBJECT) at++;
    return at;
  }
  let depth = 0;
  for (let at = from; at < to; at++) {
    const byte = line[at];
    if (byte === QUOTE) {
      at = stringEnd(line, at, to) - 1;
      if (at < 0) return -1;
    } else if (byte === OPEN_ARRAY || byte === OPEN_OBJECT) depth++;
    else if ((byte === CLOSE_ARRAY || byte === CLOSE_OBJECT) && --depth === 0) return at + 1;
  }
  return -1;
}

/**
 * Two quoted names (their quotes included in from…end) compared as the canonical form sorts names:
 * for ASCII, by their bytes, a prefix first.
 */
function compareNames(line: Buffer, quotedA: number, quotedAEnd: number, quotedB: number, quotedBEnd: number): number {
  const aLength = quotedAEnd - quotedA - 2;
  const bLength = quotedBEnd - quotedB - 2;
  const shorter = Math.min(aLength, bLength);
  for (let i = 1; i <= shorter; i++) {
    const difference = (line[quotedA + i] as number) - (line[quotedB + i] as number);
    if (difference !== 0) return difference;
  }
  return aLength - bLength;
}

/** An integer as jsonb prints it and String(n) writes it: at most 15 digits (always safe), no -0. */
function integer(line: Buffer, from: number, to: number): boolean {
  const digits = line[from] === DASH ? from + 1 : from;
  const count = to - digits;
  if (count < 1 || count > 15 || (line[digits] === ZERO && (count > 1 || digits > from))) return false;
  for (let i = digits; i < to; i++) {
    const byte = line[i] as number;
    if (byte < ZERO || byte > NINE) return false;
  }
  return true;
}

const LITERALS = ["null", "true", "false"].map(latin1);

function literal(line: Buffer, from: number, to: number): boolean {
  for (const word of LITERALS) {
    if (word.length !== to - from) continue;
    let i = 0;
    while (i < word.length && line[from + i] === word[i]) i++;
    if (i === word.length) return true;
  }
  return false;
}

/**
 * The JSON value jsonb printed at `from`…`to` in canonical form: no spaces, members sorted by name. False
 * for anything not in the exact form jsonb prints (other spacing, a duplicate name, a fraction, an escape).
 */
function json(line: Buffer, from: number, to: number, depth: number): boolean {
  if (depth > MAX_JSON_DEPTH) return false;
  const first = line[from];
  if (first === QUOTE) {
    // A string as it is: stringEnd found its closing quote, so none lies between.
    if (stringEnd(line, from, to) !== to) return false;
    raw(line, from, to);
    return true;
  }
  if (first === OPEN_ARRAY) return array(line, from, to, depth);
  if (first === OPEN_OBJECT) return object(line, from, to, depth);
  const numeric = first === DASH || ((first as number) >= ZERO && (first as number) <= NINE);
  if (!(numeric ? integer(line, from, to) : literal(line, from, to))) return false;
  raw(line, from, to);
  return true;
}

/** `[a, b]` as `[a,b]`; every element present (no `[1, ]`). */
function array(line: Buffer, from: number, to: number, depth: number): boolean {
  if (line[to - 1] !== CLOSE_ARRAY) return false;
  out[pos++] = OPEN_ARRAY;
  if (to - from > 2) {
    for (let at = from + 1; ; ) {
      const end = valueEnd(line, at, to - 1);
      if (end <= at || !json(line, at, end, depth + 1)) return false;
      if (end === to - 1) break;
      if (line[end] !== COMMA || line[end + 1] !== SPACE) return false;
      out[pos++] = COMMA;
      at = end + 2;
    }
  }
  out[pos++] = CLOSE_ARRAY;
  return true;
}

/**
 * The members of the objects being written, innermost last: four numbers each (name start and end, quotes
 * included, value start and end). One array for all, so that an object costs no allocation.
 */
let members = new Int32Array(256);
let membersTop = 0;

/** `{"b": 1, "a": 2}` as `{"a":2,"b":1}`; every member present, no name twice. */
function object(line: Buffer, from: number, to: number, depth: number): boolean {
  if (line[to - 1] !== CLOSE_OBJECT) return false;
  const base = membersTop;
  const written = readMembers(line, from, to) && writeMembers(line, base, depth);
  membersTop = base;
  return written;
}

/** The object's members onto `members`, in jsonb's order. */
function readMembers(line: Buffer, from: number, to: number): boolean {
  for (let at = from + 1; to - from > 2; ) {
    if (line[at] !== QUOTE) return false;
    const nameEnd = stringEnd(line, at, to - 1);
    if (nameEnd < 0 || line[nameEnd] !== COLON || line[nameEnd + 1] !== SPACE) return false;
    const valueEnds = valueEnd(line, nameEnd + 2, to - 1);
    if (valueEnds <= nameEnd + 2) return false;
    if (membersTop + 4 > members.length) {
      const grown = new Int32Array(2 * members.length);
      grown.set(members);
      members = grown;
    }
    members[membersTop++] = at;
    members[membersTop++] = nameEnd;
    members[membersTop++] = nameEnd + 2;
    members[membersTop++] = valueEnds;
    if (valueEnds === to - 1) break;
    if (line[valueEnds] !== COMMA || line[valueEnds + 1] !== SPACE) return false;
    at = valueEnds + 2;
  }
  return true;
}

/** The members from `base` up sorted by name (insertion sort: objects are small), then written. */
function writeMembers(line: Buffer, base: number, depth: number): boolean {
  const end = membersTop;
  for (let i = base + 4; i < end; i += 4) {
    const name = members[i] as number;
    const nameEnd = members[i + 1] as number;
    const value = members[i + 2] as number;
    const valueEnds = members[i + 3] as number;
    let j = i - 4;
    for (; j >= base && compareNames(line, members[j] as number, members[j + 1] as number, name, nameEnd) > 0; j -= 4) {
      members.copyWithin(j + 4, j, j + 4);
    }
    members[j + 4] = name;
    members[j + 5] = nameEnd;
    members[j + 6] = value;
    members[j + 7] = valueEnds;
  }
  out[pos++] = OPEN_OBJECT;
  for (let i = base; i < end; i += 4) {
    const name = members[i] as number;
    const nameEnd = members[i + 1] as number;
    if (i > base) {
      if (compareNames(line, members[i - 4] as number, members[i - 3] as number, name, nameEnd) === 0) return false;
      out[pos++] = COMMA;
    }
    raw(line, name, nameEnd);
    out[pos++] = COLON;
    if (!json(line, members[i + 2] as number, members[i + 3] as number, depth + 1)) return false;
  }
  out[pos++] = CLOSE_OBJECT;
  return true;
}

/** A jsonb column (`details`, `personal`), one level inside the event. */
function jsonColumn(line: Buffer, ends: Int32Array, column: number): boolean {
  const from = columnStart(ends, column);
  const to = ends[column] as number;
  return to > from && json(line, from, to, 1);
}

/** `{}` or a uuid list of plain ids (hex digits and dashes) as the array of strings it is. */
function subjects(line: Buffer, ends: Int32Array): boolean {
  const from = columnStart(ends, COLUMN.subjects);
  const to = ends[COLUMN.subjects] as number;
  if (line[from] !== OPEN_OBJECT || line[to - 1] !== CLOSE_OBJECT || to - from < 2) return false;
  if (to - from === 2) return true;
  out[pos++] = QUOTE;
  let element = 0;
  for (let i = from + 1; i < to - 1; i++) {
    const byte = line[i] as number;
    if (byte === COMMA) {
      if (element === 0) return false;
      element = 0;
      out[pos++] = QUOTE;
      out[pos++] = COMMA;
      out[pos++] = QUOTE;
      continue;
    }
    if (!((byte >= ZERO && byte <= NINE) || (byte >= LOWER_A && byte <= LOWER_F) || byte === DASH)) return false;
    out[pos++] = byte;
    element++;
  }
  if (element === 0) return false;
  out[pos++] = QUOTE;
  return true;
}

const HEX_VALUE = new Int8Array(256).fill(-1);
for (let i = 0; i < 16; i++) HEX_VALUE["0123456789abcdef".charCodeAt(i)] = i;

/** The previous hash: 64 lower-case hex digits, as its 32 bytes at the start of the buffer. */
function previous(line: Buffer, ends: Int32Array): boolean {
  const from = columnStart(ends, COLUMN.prev);
  if ((ends[COLUMN.prev] as number) - from !== 64) return false;
  for (let i = 0; i < 32; i++) {
    const high = HEX_VALUE[line[from + 2 * i] as number] as number;
    const low = HEX_VALUE[line[from + 2 * i + 1] as number] as number;
    if ((high | low) < 0) return false;
    out[i] = (high << 4) | low;
  }
  return true;
}

/** `at` as to_char wrote it (microseconds), as the event's time: milliseconds when the rest is 000. */
function at(line: Buffer, ends: Int32Array): boolean {
  const from = columnStart(ends, COLUMN.at);
  let to = ends[COLUMN.at] as number;
  if (isNull(line, ends, COLUMN.at)) return false;
  if (to - from >= 3 && line[to - 1] === ZERO && line[to - 2] === ZERO && line[to - 3] === ZERO) to -= 3;
  if (((ends[QUOTES] as number) & (1 << COLUMN.at)) !== 0) return false;
  raw(line, from, to);
  return true;
}

/** A non-negative safe integer as String(n) writes it. */
function decimal(n: number): boolean {
  if (!Number.isSafeInteger(n) || n < 0) return false;
  let length = 1;
  for (let rest = n; rest >= 10; rest = Math.floor(rest / 10)) length++;
  let rest = n;
  for (let at = pos + length - 1; at >= pos; at--) {
    out[at] = ZERO + (rest % 10);
    rest = Math.floor(rest / 10);
  }
  pos += length;
  return true;
}

/** A pair `{"id":…,"<b>":…}` of two text columns. */
function pair(line: Buffer, ends: Int32Array, id: number, second: Uint8Array, b: number): boolean {
  if (!text(line, ends, id)) return false;
  put(second);
  if (!text(line, ends, b)) return false;
  out[pos++] = CLOSE_OBJECT;
  return true;
}

function write(line: Buffer, ends: Int32Array, tenant: Uint8Array, seq: number): boolean {
  const v = columnStart(ends, COLUMN.v);
  if (ends[COLUMN.v] !== v + 1 || line[v] !== ZERO + 1) return false;
  // The stored sequence is not hashed (`seq` is), but the driver reads no event from a row without one.
  if (isNull(line, ends, COLUMN.seq)) return false;
  if (!previous(line, ends)) return false;
  pos = 32;
  put(TEXT.action);
  if (!text(line, ends, COLUMN.action)) return false;
  put(TEXT.actorId);
  if (!pair(line, ends, COLUMN.actorId, TEXT.actorKind, COLUMN.actorKind)) return false;
  put(TEXT.at);
  if (!at(line, ends)) return false;
  put(TEXT.cause);
  if (isNull(line, ends, COLUMN.causeKind) || isNull(line, ends, COLUMN.causeId)) put(TEXT.null);
  else {
    put(TEXT.causeId);
    if (!pair(line, ends, COLUMN.causeId, TEXT.causeKind, COLUMN.causeKind)) return false;
  }
  put(TEXT.chain);
  if (!text(line, ends, COLUMN.chain)) return false;
  put(TEXT.details);
  if (!jsonColumn(line, ends, COLUMN.details)) return false;
  put(TEXT.id);
  if (!text(line, ends, COLUMN.id)) return false;
  put(TEXT.personal);
  if (!jsonColumn(line, ends, COLUMN.personal)) return false;
  put(TEXT.prev);
  raw(line, columnStart(ends, COLUMN.prev), ends[COLUMN.prev] as number);
  put(TEXT.request);
  if (!text(line, ends, COLUMN.request)) return false;
  put(TEXT.seq);
  if (!decimal(seq)) return false;
  put(TEXT.stream);
  if (!text(line, ends, COLUMN.stream)) return false;
  put(TEXT.subjects);
  if (!subjects(line, ends)) return false;
  put(TEXT.targetId);
  if (!pair(line, ends, COLUMN.targetId, TEXT.targetType, COLUMN.targetType)) return false;
  put(TEXT.tenant);
  put(tenant);
  put(TEXT.v);
  return true;
}

/**
 * The hash of the row's event at sequence `seq` (storedEventHash of the event the driver reads), for a line
 * plainColumns accepted, with the `ends` it found; `tenant` is the tenant's canonical text (`"…"` or
 * `null`). LONG_WAY where the row is not in the form this writes.
 */
export function lineHash(line: Buffer, ends: Int32Array, tenant: Uint8Array, seq: number): string | typeof LONG_WAY {
  // Every member is at most twice its column's length (a uuid list's `,` becomes `","`), plus the names.
  const room = 32 + 2 * line.length + tenant.length + 512;
  if (room > out.length) out = Buffer.allocUnsafe(Math.max(room, 2 * out.length));
  if (!write(line, ends, tenant, seq)) return LONG_WAY;
  return hash("sha256", out.subarray(0, pos), "hex");
}
