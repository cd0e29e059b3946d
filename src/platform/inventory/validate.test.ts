import { describe, expect, it } from "vitest";
import type { ColumnEntry, Inventory, SubjectLocator, TableInventory } from "./types.ts";
import { validateInventory } from "./validate.ts";

const keep = { anchor: "subscription-ended", duration: "P90D", action: "delete" } as const;

const system = (purpose: string): ColumnEntry => ({
  category: "crm",
  personal: false,
  purpose,
  legalBasis: "none",
  keyScope: null,
  erasure: { action: "none" },
  retention: keep,
});

const email: ColumnEntry = {
  category: "crm",
  personal: true,
  purpose: "contacting the person",
  legalBasis: "legitimate-interest",
  keyScope: "subject",
  erasure: { action: "crypto-shred" },
  retention: keep,
};

const people: TableInventory = {
  table: "people",
  owner: "tenant",
  row: "a person in the CRM",
  subject: { kind: "column", column: "id", of: "crm-subject" },
  columns: { tenant_id: system("tenant"), id: system("identifies the person"), email },
};

const notes: TableInventory = {
  table: "notes",
  owner: "tenant",
  row: "a note about a person",
  subject: {
    kind: "path",
    via: [{ column: "person_id", references: { table: "people", column: "id" }, link: "foreign-key" }],
    of: "crm-subject",
  },
  columns: {
    tenant_id: system("tenant"),
    person_id: system("the person the note is about"),
    body: { ...email, purpose: "what was said" },
  },
};

const inventory = (...tables: TableInventory[]): Inventory => [{ module: "probe", tables }];

/** The valid inventory with one column of `people` replaced. */
function withColumn(column: string, entry: Partial<ColumnEntry>): Inventory {
  const base = people.columns[column] ?? email;
  return inventory({ ...people, columns: { ...people.columns, [column]: { ...base, ...entry } } }, notes);
}

function withNotesSubject(subject: SubjectLocator): Inventory {
  return inventory(people, { ...notes, subject });
}

describe("validateInventory", () => {
  it("accepts a consistent inventory", () => {
    expect(validateInventory(inventory(people, notes))).toEqual([]);
  });

  it("accepts a blind index of an encrypted column of its row, and rejects one of anything else", () => {
    const index = (of: string, kind = "email") =>
      withColumn("email_index", {
        ...system("finds the person by address"),
        blindIndexOf: { column: of, kind } as never,
      });
    expect(validateInventory(index("email"))).toEqual([]);
    expect(validateInventory(index("address"))).toEqual([
      "people.email_index: the blind index of address, which is not a column of people",
    ]);
    expect(validateInventory(index("id"))).toEqual([
      "people.email_index: the blind index of id, which is not encrypted",
    ]);
    expect(validateInventory(index("email", "name"))).toEqual(['people.email_index: unknown blind index kind "name"']);
  });

  it("rejects a legal hold on a column encrypted under a key that erasure destroys", () => {
    expect(validateInventory(withColumn("email", { erasure: { action: "keep-under-legal-hold" } }))).toEqual([
      "people.email: kept under legal hold but encrypted under the subject key, which erasure destroys",
    ]);
    const underTenantKey = withColumn("email", { keyScope: "tenant", erasure: { action: "keep-under-legal-hold" } });
    expect(validateInventory(underTenantKey)).toEqual([]);
  });

  it("rejects crypto-shred without encryption, or under a key erasure of the subject keeps", () => {
    expect(validateInventory(withColumn("email", { keyScope: null }))).toEqual([
      "people.email: crypto-shred on a column that is not encrypted",
    ]);
    expect(validateInventory(withColumn("email", { keyScope: "tenant" }))).toEqual([
      "people.email: crypto-shred under the tenant key, which erasure of a crm-subject keeps",
    ]);
  });

  it("rejects personal data with legal basis none, and a basis on non-personal data", () => {
    expect(validateInventory(withColumn("email", { legalBasis: "none" }))).toEqual([
      'people.email: personal data with legal basis "none"',
    ]);
    expect(validateInventory(withColumn("id", { legalBasis: "contract" }))).toEqual([
      'people.id: non-personal column with legal basis "contract"',
    ]);
  });

  it("rejects a non-personal column with a personal erasure action, and personal data erasure leaves alone", () => {
    expect(validateInventory(withColumn("id", { erasure: { action: "delete" } }))).toEqual([
      'people.id: non-personal column with erasure action "delete"',
    ]);
    expect(validateInventory(withColumn("email", { keyScope: null, erasure: { action: "none" } }))).toEqual([
      'people.email: personal data with erasure action "none"',
    ]);
  });

  it("rejects retention from an unknown anchor, a malformed duration and an unknown action", () => {
    const bad = {
      anchor: "row-touched",
      duration: "90 days",
      action: "archive",
    } as unknown as ColumnEntry["retention"];
    expect(validateInventory(withColumn("id", { retention: bad }))).toEqual([
      'people.id: retention from unknown anchor "row-touched"',
      'people.id: retention duration "90 days" is not an ISO 8601 duration',
      'people.id: unknown retention action "archive"',
    ]);
    for (const duration of ["P", "PT", "P1DT", "P-1D", "p90d"]) {
      expect(validateInventory(withColumn("id", { retention: { ...keep, duration } }))).toHaveLength(1);
    }
    for (const duration of ["P90D", "P7Y", "P1Y6M", "PT1H", "P2W", "P1DT12H"]) {
      expect(validateInventory(withColumn("id", { retention: { ...keep, duration } }))).toEqual([]);
    }
  });

  it("rejects subject locators that name unknown tables or columns", () => {
    const hop = (column: string, table: string, target: string) => ({
      column,
      references: { table, column: target },
      link: "foreign-key" as const,
    });
    expect(
      validateInventory(
        withNotesSubject({ kind: "path", via: [hop("person_id", "persons", "id")], of: "crm-subject" }),
      ),
    ).toEqual(["table notes: subject path step 1 references unknown table persons"]);
    expect(
      validateInventory(
        withNotesSubject({ kind: "path", via: [hop("person_id", "people", "uuid")], of: "crm-subject" }),
      ),
    ).toEqual(["table notes: subject path step 1 references unknown column people.uuid"]);
    expect(
      validateInventory(
        withNotesSubject({
          kind: "path",
          via: [hop("author_id", "people", "id"), hop("owner_id", "people", "id")],
          of: "crm-subject",
        }),
      ),
    ).toEqual([
      "table notes: subject path step 1 starts at notes.author_id, which is not declared",
      "table notes: subject path step 2 starts at people.owner_id, which is not declared",
    ]);
    expect(validateInventory(withNotesSubject({ kind: "column", column: "subject", of: "crm-subject" }))).toEqual([
      "table notes: subject column subject is not a column of notes",
    ]);
  });

  it("rejects a subject-key column on a table without a subject, or whose rows belong to someone else", () => {
    const orphan = { ...notes, subject: { kind: "none" } as const };
    expect(validateInventory(inventory(people, orphan))).toEqual([
      "notes.body: crypto-shred, but its rows belong to no subject whose erasure destroys a key",
      "notes.body: encrypted under a subject key, but its rows belong to no subject",
    ]);
    const users = { ...people, subject: { kind: "column", column: "id", of: "user" } as const };
    expect(validateInventory(inventory(users, notes))).toEqual(
      expect.arrayContaining(["people.email: encrypted under a subject key, but its rows belong to user"]),
    );
  });

  it("rejects tenant and platform key scopes that tenant deletion could not honour", () => {
    const platformTable = { ...people, owner: "platform" as const, columns: { id: people.columns.id as ColumnEntry } };
    const tenantKeyed = {
      ...platformTable,
      subject: { kind: "none" } as const,
      columns: {
        id: { ...email, keyScope: "tenant", erasure: { action: "delete" } } as ColumnEntry,
      },
    };
    expect(validateInventory(inventory(tenantKeyed))).toEqual([
      "people.id: encrypted under a tenant key on a platform table that belongs to no tenant",
    ]);
    expect(validateInventory(withColumn("email", { keyScope: "platform", erasure: { action: "delete" } }))).toEqual([
      "people.email: encrypted under the platform key on a tenant table: deleting the tenant would not shred it",
    ]);
  });

  it("rejects personal data that nothing would ever remove", () => {
    const orphan = { ...notes, subject: { kind: "none" } as const };
    const body: ColumnEntry = { ...email, keyScope: null, erasure: { action: "delete" }, retention: null };
    expect(validateInventory(inventory(people, { ...orphan, columns: { ...notes.columns, body } }))).toEqual([
      "notes.body: personal data that no subject can be found by and no retention removes: it would be kept forever",
    ]);
  });

  it("rejects tenancy that contradicts the owner, duplicate tables and unknown vocabulary", () => {
    const { tenant_id: _, ...withoutTenant } = people.columns;
    expect(validateInventory(inventory({ ...people, columns: withoutTenant }, notes))).toEqual([
      "tenant table people declares no tenant_id column",
    ]);
    expect(validateInventory(inventory({ ...people, owner: "platform", columns: people.columns }, notes))).toEqual(
      expect.arrayContaining(["platform table people declares a tenant_id column"]),
    );
    expect(validateInventory([...inventory(people, notes), { module: "again", tables: [notes] }])).toEqual([
      "table notes is declared twice (again in module again)",
    ]);
    const odd = {
      category: "gossip",
      legalBasis: "whim",
      keyScope: "friend",
      erasure: { action: "anonymise", strategy: "blur" },
      purpose: " ",
    } as unknown as Partial<ColumnEntry>;
    expect(validateInventory(withColumn("email", odd))).toEqual(
      expect.arrayContaining([
        'people.email: unknown category "gossip"',
        "people.email: no purpose",
        'people.email: unknown legal basis "whim"',
        'people.email: unknown anonymisation strategy "blur"',
        'people.email: unknown key scope "friend"',
      ]),
    );
  });
});
