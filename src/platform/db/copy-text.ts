/**
 * COPY's text format, one row per line (each ending in a newline): columns separated by tabs, `\N` for NULL, and a backslash before
 * each backslash, tab, line break and the other controls PostgreSQL escapes (b f n r t v). PostgreSQL writes
 * it for `COPY … TO STDOUT`; the PGlite engine writes the same lines from its rows (encodeCopyLine), so
 * readers of Engine.copyRows see one format on both databases.
 */

/** One row: each column's text, null for NULL. */
export type TextRow = (string | null)[];

const ESCAPES: Readonly<Record<string, string>> = { b: "\b", f: "\f", n: "\n", r: "\r", t: "\t", v: "\v" };
const UNESCAPES: Readonly<Record<string, string>> = {
  "\\": "\\\\",
  "\b": "\\b",
  "\f": "\\f",
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\v": "\\v",
};
const ESCAPED = /\\(.)/gs;
const NEEDS_ESCAPE = /[\\\b\f\n\r\t\v]/g;

/** A line, its newline included, as its columns' text. */
export function decodeCopyLine(line: Buffer): TextRow {
  const fields: TextRow = line.toString("utf8", 0, line.length - 1).split("\t");
  for (let i = 0; i < fields.length; i++) {
    const field = fields[i] as string;
    if (field === "\\N") fields[i] = null;
    else if (field.includes("\\")) fields[i] = field.replace(ESCAPED, (_, c: string) => ESCAPES[c] ?? c);
  }
  return fields;
}

/** The line, its newline included, that PostgreSQL writes for a row whose columns have this text. */
export function encodeCopyLine(row: TextRow): Buffer {
  const fields = row.map((field) =>
    field === null ? "\\N" : field.replace(NEEDS_ESCAPE, (c) => UNESCAPES[c] as string),
  );
  return Buffer.from(`${fields.join("\t")}\n`, "utf8");
}
