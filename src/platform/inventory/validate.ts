import { BLIND_INDEX_KINDS } from "../crypto/blind-index.ts";
import {
  ANONYMISE_STRATEGIES,
  CATEGORIES,
  type ColumnEntry,
  ERASURE_ACTIONS,
  type Inventory,
  KEY_SCOPES,
  type KeyScope,
  LEGAL_BASES,
  RETENTION_ACTIONS,
  RETENTION_ANCHORS,
  SUBJECT_KINDS,
  type SubjectKind,
  type SubjectLocator,
  type TableInventory,
} from "./types.ts";

// Years, months, weeks, days, then an optional time part; at least one component.
const ISO_DURATION = /^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$/;

/** The key that erasing a subject of each kind destroys (ARCHITECTURE "Keys"). */
const KEY_DESTROYED_BY_ERASURE: Record<SubjectKind, KeyScope> = {
  "crm-subject": "subject",
  user: "person",
  tenant: "tenant",
};

const includes = <T extends string>(list: readonly T[], value: string): value is T =>
  (list as readonly string[]).includes(value);

/** All tables of an inventory, in module order. */
export function inventoryTables(inventory: Inventory): TableInventory[] {
  return inventory.flatMap((m) => m.tables);
}

/**
 * Checks an inventory for contradictions and returns each problem in words (empty when consistent).
 * Runs on data, so it also catches values that only a cast would let past the types.
 */
export function validateInventory(inventory: Inventory): string[] {
  const problems: string[] = [];
  const tables = new Map<string, TableInventory>();
  for (const m of inventory) {
    for (const t of m.tables) {
      if (tables.has(t.table)) problems.push(`table ${t.table} is declared twice (again in module ${m.module})`);
      tables.set(t.table, t);
    }
  }
  for (const t of tables.values()) problems.push(...tableProblems(t, tables));
  return problems;
}

function tableProblems(t: TableInventory, tables: ReadonlyMap<string, TableInventory>): string[] {
  const problems: string[] = [];
  const name = t.table;
  const hasTenantId = "tenant_id" in t.columns;
  if (t.owner === "tenant" && !hasTenantId) problems.push(`tenant table ${name} declares no tenant_id column`);
  if (t.owner === "platform" && hasTenantId) problems.push(`platform table ${name} declares a tenant_id column`);
  problems.push(...locatorProblems(`table ${name}`, t, t.subject, tables));
  for (const [column, entry] of Object.entries(t.columns)) {
    problems.push(...columnProblems(t, column, entry, tables));
  }
  return problems;
}

function locatorProblems(
  where: string,
  t: TableInventory,
  locator: SubjectLocator,
  tables: ReadonlyMap<string, TableInventory>,
): string[] {
  if (locator.kind === "none") return [];
  const problems: string[] = [];
  if (!includes(SUBJECT_KINDS, locator.of)) problems.push(`${where}: unknown subject kind "${locator.of}"`);
  if (locator.kind === "column") {
    if (!(locator.column in t.columns)) {
      problems.push(`${where}: subject column ${locator.column} is not a column of ${t.table}`);
    }
    return problems;
  }
  let from: TableInventory | undefined = t;
  for (const [i, hop] of locator.via.entries()) {
    if (from && !(hop.column in from.columns)) {
      problems.push(
        `${where}: subject path step ${i + 1} starts at ${from.table}.${hop.column}, which is not declared`,
      );
    }
    const target = tables.get(hop.references.table);
    if (!target) {
      problems.push(`${where}: subject path step ${i + 1} references unknown table ${hop.references.table}`);
    } else if (!(hop.references.column in target.columns)) {
      problems.push(
        `${where}: subject path step ${i + 1} references unknown column ${hop.references.table}.${hop.references.column}`,
      );
    }
    from = target;
  }
  return problems;
}

function blindIndexProblems(t: TableInventory, index: NonNullable<ColumnEntry["blindIndexOf"]>): string[] {
  const source = t.columns[index.column];
  if (!source) return [`the blind index of ${index.column}, which is not a column of ${t.table}`];
  const problems: string[] = [];
  if (source.keyScope === null) problems.push(`the blind index of ${index.column}, which is not encrypted`);
  if (!includes(BLIND_INDEX_KINDS, index.kind)) problems.push(`unknown blind index kind "${index.kind}"`);
  return problems;
}

function columnProblems(
  t: TableInventory,
  column: string,
  c: ColumnEntry,
  tables: ReadonlyMap<string, TableInventory>,
): string[] {
  const where = `${t.table}.${column}`;
  const problems: string[] = [];
  const fail = (text: string) => problems.push(`${where}: ${text}`);
  const subject = c.subject ?? t.subject;
  const subjectKind = subject.kind === "none" ? undefined : subject.of;
  if (c.subject) problems.push(...locatorProblems(`column ${where}`, t, c.subject, tables));

  if (!includes(CATEGORIES, c.category)) fail(`unknown category "${c.category}"`);
  if (c.purpose.trim() === "") fail("no purpose");
  if (c.legalBasis !== "none" && !includes(LEGAL_BASES, c.legalBasis)) fail(`unknown legal basis "${c.legalBasis}"`);
  if (c.personal && c.legalBasis === "none") fail('personal data with legal basis "none"');
  if (!c.personal && c.legalBasis !== "none") fail(`non-personal column with legal basis "${c.legalBasis}"`);

  const action = c.erasure.action;
  if (!includes(ERASURE_ACTIONS, action)) fail(`unknown erasure action "${action}"`);
  if (c.erasure.action === "anonymise" && !includes(ANONYMISE_STRATEGIES, c.erasure.strategy)) {
    fail(`unknown anonymisation strategy "${c.erasure.strategy}"`);
  }
  if (!c.personal && action !== "none") fail(`non-personal column with erasure action "${action}"`);
  if (c.personal && action === "none") fail('personal data with erasure action "none"');

  const scope = c.keyScope;
  if (scope !== null && !includes(KEY_SCOPES, scope)) fail(`unknown key scope "${scope}"`);
  if (action === "crypto-shred") {
    if (scope === null) fail("crypto-shred on a column that is not encrypted");
    else if (!subjectKind) fail("crypto-shred, but its rows belong to no subject whose erasure destroys a key");
    else if (scope !== KEY_DESTROYED_BY_ERASURE[subjectKind]) {
      fail(`crypto-shred under the ${scope} key, which erasure of a ${subjectKind} keeps`);
    }
  }
  if (action === "keep-under-legal-hold" && (scope === "subject" || scope === "person")) {
    fail(`kept under legal hold but encrypted under the ${scope} key, which erasure destroys`);
  }
  if (scope === "subject" && subjectKind !== "crm-subject") {
    fail(`encrypted under a subject key, but its rows belong to ${subjectKind ?? "no subject"}`);
  }
  if (scope === "person" && subjectKind !== "user") {
    fail(`encrypted under a person key, but its rows belong to ${subjectKind ?? "no subject"}`);
  }
  if (scope === "tenant" && t.owner !== "tenant" && subjectKind !== "tenant") {
    fail("encrypted under a tenant key on a platform table that belongs to no tenant");
  }
  if (scope === "platform" && t.owner === "tenant") {
    fail("encrypted under the platform key on a tenant table: deleting the tenant would not shred it");
  }

  if (c.blindIndexOf) problems.push(...blindIndexProblems(t, c.blindIndexOf).map((text) => `${where}: ${text}`));

  const r = c.retention;
  if (r) {
    if (!(r.anchor in RETENTION_ANCHORS)) fail(`retention from unknown anchor "${r.anchor}"`);
    if (!ISO_DURATION.test(r.duration)) fail(`retention duration "${r.duration}" is not an ISO 8601 duration`);
    if (!includes(RETENTION_ACTIONS, r.action)) fail(`unknown retention action "${r.action}"`);
  } else if (c.personal && !subjectKind) {
    fail("personal data that no subject can be found by and no retention removes: it would be kept forever");
  }
  return problems;
}
