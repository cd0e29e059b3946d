import { canonicalize } from "../../platform/audit/index.ts";
import type { EventView } from "./service.ts";

/**
 * The audit log as CSV (RFC 4180: CRLF line ends, a header row, quotes doubled inside quoted fields), made
 * safe to open in a spreadsheet (CSV injection, OWASP): a cell that starts with = + - @ TAB or CR would be
 * read as a formula there, so it gets a leading apostrophe, which spreadsheets take as "text follows". Every
 * field is quoted, so a separator inside a value (a comma, or the semicolon some locales split on) never
 * starts a cell of its own.
 */

const FORMULA_START = /^[=+\-@\t\r]/;

/** One field, quoted, with a leading apostrophe when a spreadsheet would take it for a formula. */
export function csvField(value: string): string {
  const text = FORMULA_START.test(value) ? `'${value}` : value;
  return `"${text.replaceAll('"', '""')}"`;
}

/** One record, ending in CRLF. */
export function csvRecord(fields: readonly string[]): string {
  return `${fields.map(csvField).join(",")}\r\n`;
}

export const CSV_COLUMNS = [
  "id",
  "at",
  "chain",
  "stream",
  "seq",
  "actor_kind",
  "actor_id",
  "action",
  "target_type",
  "target_id",
  "subjects",
  "details",
  "request_id",
  "cause_kind",
  "cause_id",
  "hash",
] as const;

/** An event's record, in the order of CSV_COLUMNS: subjects space-separated, details as canonical JSON. */
export function eventRecord(event: EventView): string {
  return csvRecord([
    event.id,
    event.at,
    event.chain,
    event.stream,
    String(event.seq),
    event.actor.kind,
    event.actor.id ?? "",
    event.action,
    event.target.type,
    event.target.id ?? "",
    event.subjects.join(" "),
    canonicalize(event.details),
    event.requestId ?? "",
    event.cause?.kind ?? "",
    event.cause?.id ?? "",
    event.hash,
  ]);
}
